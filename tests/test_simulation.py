"""On-the-fly degradation simulator (se/simulation.py), se.bin.simulate and local/simulate_rirs.py.

A tiny fixture made here: speech-like signals, white/pink noise and pyroomacoustics RIRs at 16 kHz.
"""

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import correlate, welch

from se.audio import AudioError
from se.data import DataDirError, ShardedSampler, SourceDir, collate, item_rng, read_scp, write_source_dir
from se.simulation import (FULL_SCALE, SimulatedDataset, SimulationError, Simulator, active_frames, bandwidth_limit,
                           clip, codec, parse_config, reverberate, snr_on_active)
from se.bin import simulate as simulate_cli
from helpers import tone_pair

REPO = Path(__file__).resolve().parents[1]
FS = 16000


def speech_signal(seconds: float, seed: int) -> np.ndarray:
    """Speech-like: harmonic bursts separated by silences (so that activity matters)."""
    _, clean = tone_pair(seconds, FS, seed)
    gate = (np.arange(len(clean)) // int(0.4 * FS)) % 3 != 2  # 0.4 s pauses
    return clean * gate


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    speech, noise = {}, {}
    for i in range(4):
        x = speech_signal(1.2 + 0.4 * i, seed=i)
        path = root / "speech" / f"s{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, x, FS, subtype="FLOAT")
        speech[f"s{i}"] = (str(path), len(x))
    rng = np.random.default_rng(5)
    for i in range(3):
        x = rng.standard_normal(int(FS * (0.5 + 0.3 * i)))
        if i == 1:  # pink-ish
            x = np.cumsum(x) * 0.05
            x -= x.mean()
        path = root / "noise" / f"n{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * x / np.std(x), FS, subtype="FLOAT")
        noise[f"n{i}"] = (str(path), len(x))
    for name, items in (("speech", speech), ("noise", noise)):
        write_source_dir(root / f"{name}_dir", {k: v[0] for k, v in items.items()},
                         {k: v[1] for k, v in items.items()}, FS)
    spec = importlib.util.spec_from_file_location("simulate_rirs", REPO / "local/simulate_rirs.py")
    simulate_rirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(simulate_rirs)
    assert simulate_rirs.main(["--fs", str(FS), "--num", "3", "--seed", "1", "--rt60", "0.2", "0.4",
                               "--out-dir", str(root / "rir_dir")]) == 0
    return root


def block(root: Path, **kw) -> dict:
    b = {"speech": [{"data": str(root / "speech_dir")}], "noise": [{"data": str(root / "noise_dir"), "weight": 2.0}],
         "rir": [{"data": str(root / "rir_dir")}], "p_reverb": 0.0}
    b.update(kw)
    return b


def simulator(root: Path, **kw) -> Simulator:
    return Simulator(parse_config(block(root, **kw), "test.yaml"), FS)


def test_simulate_rirs_writes_a_source_dir(sources):
    rir = SourceDir(sources / "rir_dir")
    assert rir.sampling_rate == FS and len(rir) == 3
    for path, n in zip(rir.paths, rir.num_samples):
        h, fs = sf.read(path)
        assert fs == FS and len(h) == n and np.max(np.abs(h)) == pytest.approx(1.0)
    rows = (sources / "rir_dir/rirs.tsv").read_text().splitlines()
    assert len(rows) == 4 and all(0.2 <= float(r.split("\t")[4]) <= 0.4 for r in rows[1:])


def test_measured_snr_is_the_drawn_snr_without_effects(sources):
    sim = simulator(sources, snr_db=[-5, 20])
    for i in range(6):
        noisy, target, draws = sim.simulate(item_rng(3, 0, i), FS)
        assert not draws["reverb"] and draws["codec"] is None
        assert snr_on_active(target, noisy - target, FS) == pytest.approx(draws["snr_db"], abs=0.1)
        # the SNR is on ACTIVE speech: over the whole segment (pauses included) it is lower
        whole = 10 * np.log10(np.mean(target**2) / np.mean((noisy - target) ** 2))
        assert whole < draws["snr_db"] - 0.5


def test_activity_rule():
    x = np.zeros(FS)
    x[: FS // 2] = 0.1
    x[FS // 2 : FS // 2 + 320] = 0.1 * 10 ** (-39 / 20)  # one 20 ms frame 39 dB down: active
    x[FS // 2 + 320 : FS // 2 + 640] = 0.1 * 10 ** (-41 / 20)  # 41 dB down: not active
    mask = active_frames(x, FS)
    assert mask[: FS // 2 + 320].all() and not mask[FS // 2 + 320 :].any()


def test_same_seed_same_items_across_runs_workers_and_resume(sources):
    kw = dict(p_reverb=0.5, codec={"p": 0.5}, packet_loss={"p": 0.5}, items_per_epoch=6)
    a = SimulatedDataset(simulator(sources, **kw), FS, seed=9)
    b = SimulatedDataset(simulator(sources, **kw), FS, seed=9)
    a.set_epoch(1)
    b.set_epoch(1)
    assert len(a) == 6
    for i in range(len(a)):
        assert torch.equal(a[i]["noisy"], b[i]["noisy"]) and torch.equal(a[i]["clean"], b[i]["clean"])
    a.set_epoch(2)
    assert not torch.equal(a[0]["noisy"], b[0]["noisy"])  # another epoch, other draws

    def batches(workers, skip=0):
        ds = SimulatedDataset(simulator(sources, **kw), FS, seed=9)
        sampler = ShardedSampler(len(ds), seed=9)
        ds.set_epoch(1)
        sampler.set_epoch(1, skip=skip)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers,
                                             collate_fn=collate)
        return [b for b in loader]

    serial, parallel, resumed = batches(0), batches(2), batches(0, skip=2)
    assert len(serial) == 3
    for x, y in zip(serial, parallel):
        assert torch.equal(x["noisy"], y["noisy"]) and torch.equal(x["clean"], y["clean"])
        assert torch.equal(x["index"], y["index"])
    for x, y in zip(serial[1:], resumed):  # resuming after the first batch sees the same items
        assert torch.equal(x["noisy"], y["noisy"]) and torch.equal(x["index"], y["index"])


def test_early_reflection_target_is_aligned(sources):
    rir = SourceDir(sources / "rir_dir")
    h, _ = sf.read(rir.paths[0])
    h = np.concatenate([np.zeros(300), h])  # a longer direct-path delay
    dry = speech_signal(1.0, seed=7)
    reverberant, target = reverberate(dry, h, FS, early_reflection_ms=50)
    assert len(reverberant) == len(target) == len(dry)

    def lag(x, y):
        c = correlate(x, y, "full")  # c[k + len(y) - 1] = sum x[n + k] y[n]
        return int(np.argmax(c)) - (len(y) - 1)

    assert lag(reverberant, target) == 0 and lag(target, dry) == 0
    assert not np.allclose(reverberant, target)  # the late tail is gone from the target
    late = reverberant - target
    assert np.sum(late**2) > 0.01 * np.sum(target**2)
    # the same through the simulator (p_reverb 1, high SNR): noisy and target aligned
    sim = simulator(sources, p_reverb=1.0, snr_db=[30, 30])
    noisy, target, draws = sim.simulate(item_rng(0, 0, 1), FS)
    assert draws["reverb"] and draws["rir_id"].startswith("rir_")
    assert lag(noisy, target) == 0


def test_no_sample_above_full_scale(sources):
    sim = simulator(sources, level_dbfs=[-3, 0], snr_db=[-5, -5], clipping={"p": 0.5}, p_reverb=0.5)
    limited = 0
    for i in range(6):
        noisy, target, draws = sim.simulate(item_rng(1, 0, i), FS)
        peak = max(np.max(np.abs(noisy)), np.max(np.abs(target)))
        assert peak <= FULL_SCALE
        if peak == pytest.approx(FULL_SCALE, abs=1e-6):
            limited += 1
            assert 20 * np.log10(np.sqrt(np.mean(noisy**2))) < draws["level_dbfs"]
        else:
            level = 20 * np.log10(np.sqrt(np.mean(noisy.astype(float) ** 2)))
            assert level == pytest.approx(draws["level_dbfs"], abs=1e-4)
    assert limited >= 1  # the scaling was lowered at least once (speech peaks ~ 10x its RMS)


def band_energy_above(x, cutoff):
    """Fraction of the power above ``cutoff`` Hz (Welch PSD, Hann windows of 1024)."""
    f, psd = welch(x, FS, nperseg=1024)
    return psd[f > cutoff].sum() / psd.sum()


def test_bandwidth_limitation_removes_energy_above_the_cutoff(sources):
    x = np.random.default_rng(0).standard_normal(FS)
    y = bandwidth_limit(x, FS, 8000)
    assert len(y) == len(x)
    assert band_energy_above(x, 4000) > 0.45
    assert band_energy_above(y, 4050) < 1e-6  # soxr VHQ: nothing left above 4 kHz
    assert np.corrcoef(y, x)[0, 1] > 0.65  # the band below is kept
    sim = simulator(sources, bandwidth_limitation={"p": 1.0, "rates": [8000, 12000]})
    wideband = simulator(sources)
    for i in range(4):
        noisy, target, draws = sim.simulate(item_rng(2, 0, i), FS)
        reference, target_ref, ref_draws = wideband.simulate(item_rng(2, 0, i), FS)  # the item without the effect
        cutoff = draws["bandwidth_rate"] / 2
        assert draws["bandwidth_rate"] in (8000, 12000)
        assert band_energy_above(reference, cutoff + 50) > 1e-3
        assert band_energy_above(noisy, cutoff + 50) < 1e-6
        assert np.allclose(target / draws["gain"], target_ref / ref_draws["gain"])  # the target stays clean


def test_clipping_hits_the_drawn_level(sources):
    x = speech_signal(1.0, seed=3)
    y, level = clip(x, 0.3)
    assert level == pytest.approx(0.3 * np.max(np.abs(x)))
    assert np.max(np.abs(y)) == pytest.approx(level)
    assert np.count_nonzero(np.abs(y) == level) > 10
    unclipped = np.abs(x) < level
    assert np.array_equal(y[unclipped], x[unclipped])
    sim = simulator(sources, clipping={"p": 1.0, "threshold": [0.2, 0.5]})
    noisy, _, draws = sim.simulate(item_rng(2, 0, 0), FS)
    assert 0.2 <= draws["clip_threshold"] <= 0.5
    assert np.max(np.abs(noisy)) == pytest.approx(draws["clip_level"] * draws["gain"], rel=1e-9)


@pytest.mark.parametrize("fmt", ["mp3", "vorbis", "opus"])
def test_codec_changes_but_keeps_the_signal(fmt):
    x = speech_signal(1.0, seed=4) + 0.01 * np.random.default_rng(1).standard_normal(FS)
    y = codec(x, FS, fmt, 0.8)
    assert len(y) == len(x)
    err = np.sum((y - x) ** 2) / np.sum(x**2)
    assert err > 1e-4  # lossy
    assert np.corrcoef(x, y)[0, 1] > 0.9  # aligned and close


def test_packet_loss_zeros_exactly_the_drawn_frames(sources):
    sim = simulator(sources, packet_loss={"p": 1.0, "loss_rate": [0.2, 0.3], "frame_ms": 20})
    noisy, _, draws = sim.simulate(item_rng(4, 0, 2), FS)
    lost = {int(k) for k in draws["lost_frames"].split(",")}
    frames = noisy.reshape(-1, 320)
    assert lost and 0.1 < len(lost) / len(frames) < 0.45
    for k, frame in enumerate(frames):
        assert np.all(frame == 0) == (k in lost), k


def test_simulate_cli_writes_a_set_that_matches_its_tsv(sources, tmp_path, caplog, capsys):
    import yaml

    conf = tmp_path / "sim.yaml"
    conf.write_text(yaml.safe_dump({"network": "FRCRN_SE_16K", "simulation": block(sources, snr_db=[0, 10])}))
    out = tmp_path / "valid"
    args = ["--config", str(conf), "--seed", "3", "--num", "5", "--out-dir", str(out)]
    with caplog.at_level(logging.INFO):
        assert simulate_cli.main(args) == 0
    assert "5/5 utterances" in caplog.text and "ETA" in caplog.text
    rows = [line.split("\t") for line in (out / "simulation.tsv").read_text().splitlines()]
    header, rows = rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
    assert len(rows) == 5 and {"snr_db", "measured_snr_db", "speech_id", "noise", "level_dbfs", "gain"} <= set(header)
    wav, spk1, lengths = read_scp(out / "wav.scp"), read_scp(out / "spk1.scp"), read_scp(out / "utt2num_samples")
    assert (out / "fs").read_text().strip() == str(FS)
    speech = SourceDir(sources / "speech_dir")
    for r in rows:
        noisy, fs1 = sf.read(wav[r["utt"]])
        clean, fs2 = sf.read(spk1[r["utt"]])
        assert fs1 == fs2 == int(r["fs"]) == FS
        n = speech.num_samples[speech.ids.index(r["speech_id"])]  # --length 0: whole speech files
        assert len(noisy) == len(clean) == int(lengths[r["utt"]]) == int(r["num_samples"]) == n
        measured = snr_on_active(clean, noisy - clean, FS)
        assert measured == pytest.approx(float(r["measured_snr_db"]), abs=0.01)
        assert measured == pytest.approx(float(r["snr_db"]), abs=0.1)
        assert np.array_equal(clean.astype(np.float32), sf.read(spk1[r["utt"]], dtype="float32")[0])
    # the same arguments give the same set; an existing set is refused without --overwrite
    first = sf.read(wav[rows[0]["utt"]])[0]
    capsys.readouterr()
    assert simulate_cli.main(args) == 1
    assert "already holds a simulated set" in capsys.readouterr().err
    assert simulate_cli.main(args + ["--overwrite", "--length", "0.5"]) == 0
    assert all(int(v) == FS // 2 for v in read_scp(out / "utt2num_samples").values())
    assert not np.array_equal(first[: FS // 2], sf.read(wav[rows[0]["utt"]])[0])  # cropped anew


@pytest.mark.parametrize("change, message", [
    ({"snr": [0, 5]}, "unknown key simulation.snr."),
    ({"snr_db": [10, 0]}, "simulation.snr_db must be [low, high] with low <= high"),
    ({"snr_db": 5}, "simulation.snr_db must be a range"),
    ({"p_reverb": 1.5}, "simulation.p_reverb must be in [0.0, 1.0]"),
    ({"codec": {"p": 0.1, "formats": ["aac"]}}, "simulation.codec.formats must be a non-empty list of mp3"),
    ({"clipping": {"p": 0.1, "level": 0.5}}, "unknown key simulation.clipping.level"),
    ({"packet_loss": {"p": 0.1, "loss_rate": [0.1, 2.0]}}, "simulation.packet_loss.loss_rate must be in"),
    ({"noise": []}, "simulation.noise must be a list"),
    ({"speech": [{"data": "x", "weight": -1}]}, "simulation.speech[0].weight must be >= 0.0"),
    ({"rir": [], "p_reverb": 0.3}, "no simulation.rir sources"),
])
def test_bad_config_keys_give_one_line_errors(sources, change, message):
    with pytest.raises(SimulationError) as err:
        parse_config(block(sources, **change), "conf/x.yaml")
    assert str(err.value).startswith("conf/x.yaml: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_sources_and_cli_errors(sources, tmp_path, capsys):
    with pytest.raises(SimulationError, match="bandwidth_limitation.rates .* none is below the sample rate 16000"):
        simulator(sources, bandwidth_limitation={"p": 0.5, "rates": [16000, 22050]})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "wav.scp").write_text("a /x/a.wav\nb /x/b.wav\n")
    (bad / "utt2num_samples").write_text("a 100\nb ten\n")
    (bad / "fs").write_text("16000\n")
    with pytest.raises(DataDirError, match=r"utt2num_samples line 2: expected a positive sample count, got 'ten'"):
        SourceDir(bad)
    (bad / "utt2num_samples").write_text("a 100\n")
    with pytest.raises(DataDirError, match=r"wav.scp line 2: b is missing from .*utt2num_samples"):
        SourceDir(bad)
    conf = tmp_path / "sim.yaml"
    conf.write_text("speech: [{data: %s}]\nnoise: [{data: %s}]\np_reverb: 0\nlevel: 3\n"
                    % (sources / "speech_dir", sources / "noise_dir"))
    args = ["--config", str(conf), "--seed", "0", "--num", "2", "--out-dir", str(tmp_path / "o")]
    capsys.readouterr()
    assert simulate_cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"se.bin.simulate: error: {conf}: unknown key simulation.level")
    assert not (tmp_path / "o").exists()


def test_train_cli_takes_the_block_instead_of_train_data(sources, tmp_path, capsys):
    import yaml

    from se.bin import train as train_cli

    conf = tmp_path / "train_sim.yaml"
    conf.write_text(yaml.safe_dump({"network": "FRCRN_SE_16K", "simulation": block(sources)}))
    args = ["--config", str(conf), "--valid-data", str(tmp_path / "valid"), "--exp-dir", str(tmp_path / "exp")]
    assert train_cli.main(args + ["--train-data", str(tmp_path / "train")]) == 1
    assert "--train-data and a simulation: block in the config exclude each other" in capsys.readouterr().err
    conf.write_text(yaml.safe_dump({"network": "FRCRN_SE_16K", "simulation": block(sources, snr=[1, 2])}))
    assert train_cli.main(args) == 1
    assert f"{conf}: unknown key simulation.snr." in capsys.readouterr().err


def test_unreadable_source_file_names_the_scp_line(sources, tmp_path, capsys):
    speech = SourceDir(sources / "speech_dir")
    paths = dict(zip(speech.ids, speech.paths))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    paths["s2"] = str(broken)
    write_source_dir(tmp_path / "speech_dir", paths, dict(zip(speech.ids, speech.num_samples)), FS)
    sim = simulator(sources, speech=[{"data": str(tmp_path / "speech_dir")}])
    with pytest.raises(AudioError, match=r"broken.wav: not a readable audio file .*\(.*speech_dir/wav.scp line 3\)"):
        for i in range(20):
            sim.simulate(item_rng(0, 0, i), FS)
    # se.bin.simulate: one error line, and the audio it had written is removed (no half-written set)
    conf = tmp_path / "sim.yaml"
    conf.write_text("speech: [{data: %s}]\nnoise: [{data: %s}]\np_reverb: 0\n"
                    % (tmp_path / "speech_dir", sources / "noise_dir"))
    out = tmp_path / "set"
    capsys.readouterr()
    assert simulate_cli.main(["--config", str(conf), "--seed", "0", "--num", "20", "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wav.scp line 3" in err and "Traceback" not in err
    assert out.is_dir() and not any(out.iterdir())


def test_training_items_are_normalised_like_paired_data(sources):
    from se.audio import norm_gain

    raw = SimulatedDataset(simulator(sources, normalize=False, level_dbfs=[-40, -10]), FS, seed=2)
    normed = SimulatedDataset(simulator(sources, level_dbfs=[-40, -10]), FS, seed=2)
    levels = []
    for i in range(4):
        a, b = raw[i], normed[i]
        gain = norm_gain(a["noisy"].numpy())
        assert b["draws"]["train_gain"] == pytest.approx(gain, rel=1e-6)
        assert torch.allclose(b["noisy"], a["noisy"] * gain, rtol=1e-5, atol=1e-7)
        assert torch.allclose(b["clean"], a["clean"] * gain, rtol=1e-5, atol=1e-7)  # one gain: the SNR is kept
        assert norm_gain(b["noisy"].numpy()) == pytest.approx(1.0, rel=1e-4)  # at -25 dB already
        levels.append(20 * np.log10(a["noisy"].norm().item() / np.sqrt(FS)))
    assert max(levels) - min(levels) > 3  # the raw items keep their drawn levels
