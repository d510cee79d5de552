"""se.validate / se.bin.validate_data_dir: every problem reported, measured statistics, streaming,
parallel jobs; non-finite audio refused by se.audio; file permissions of the atomic writer."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import soundfile as sf

from se import validate
from se.audio import AudioError, read_audio, write_audio
from se.resample import resample
from helpers import make_pairs, noisy_of, speech, wav, write_data_dir

FS = 16000


def source_dir(d, files: dict, rate: int, utt2spk: bool = False):
    d.mkdir(parents=True, exist_ok=True)
    (d / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p in sorted(files.items())))
    (d / "utt2num_samples").write_text("".join(f"{u} {sf.info(str(p)).frames}\n" for u, p in sorted(files.items())))
    (d / "fs").write_text(f"{rate}\n")
    if utt2spk:
        (d / "utt2spk").write_text("".join(f"{u} spk{u}\n" for u in sorted(files)))
    return d


def test_all_problems_reported_with_file_and_line(tmp_path, capsys):
    pairs = make_pairs(tmp_path / "c", 5, 1.0)
    x = speech(1.0, 1)
    x[5000] = np.inf
    wav(pairs["u1"][1], x)  # Inf in a clean file
    wav(pairs["u3"][0], np.zeros(FS))  # silent noisy file
    d = write_data_dir(tmp_path / "d", pairs)
    with open(d / "spk1.scp", "a") as f:
        f.write("u1 /dup.wav\n")  # a duplicate id on line 6
    report = validate.check_data_dir(d, FS)
    msgs = [p.message for p in report.errors]
    assert len(msgs) == 3, msgs
    assert any("spk1.scp line 6: duplicate utterance id u1 (first on line 2)" in m for m in msgs)
    assert any("u1.wav" in m and "spk1.scp line 2" in m and "1 non-finite (NaN/Inf) samples, the first at sample 5000"
               in m for m in msgs)
    assert any("u3.wav" in m and "wav.scp line 4" in m and "digital silence" in m for m in msgs)
    # the CLI prints each one and exits 1
    from se.bin import validate_data_dir as cli

    assert cli.main([str(d), "--nj", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("se.bin.validate_data_dir: error: ") == 4  # 3 problems + the closing line


def test_streaming_and_jobs_give_the_same_statistics(tmp_path, monkeypatch):
    pairs = make_pairs(tmp_path / "c", 4, 1.0)
    d = write_data_dir(tmp_path / "d", pairs)
    task = ("u0", [(str(pairs["u0"][0]), "w"), (str(pairs["u0"][1]), "s")], FS, FS, "", validate.Limits(),
            ["noisy", "clean"])
    _, p_big, s_big = validate.check_item(task)
    monkeypatch.setattr(validate, "BLOCK", 777)  # many small blocks, frames split across them
    _, p_small, s_small = validate.check_item(task)
    assert p_big == p_small == []
    for a, b in zip(s_big, s_small):
        assert a.frames == b.frames == FS and a.spectrum_frames == b.spectrum_frames
        np.testing.assert_allclose(a.spectrum, b.spectrum, rtol=1e-9)
        assert a.snr_db == b.snr_db and a.bandwidth_hz == b.bandwidth_hz
    one = validate.check_data_dir(d, FS, nj=1)
    two = validate.check_data_dir(d, FS, nj=2)
    # (the tone-like test signals are band-limited: a narrow-band warning is right for them)
    assert one.problems == two.problems and one.errors == [] and one.bandwidth_hz == two.bandwidth_hz
    assert one.samples == 4 * FS


def test_swapped_unrelated_and_clipped_pairs(tmp_path):
    pairs = make_pairs(tmp_path / "c", 4, 1.0)
    n1, c1 = pairs["u1"]
    other = wav(tmp_path / "other.wav", noisy_of(speech(1.0, 9), 9))
    loud = speech(1.0, 3)
    wav(pairs["u3"][0], np.clip(noisy_of(loud, 3) * 20, -1, 1))  # heavily clipped noisy file
    d = write_data_dir(tmp_path / "d", {**pairs, "u1": (c1, n1), "u2": (other, pairs["u2"][1])})
    report = validate.check_data_dir(d, FS)
    errors = [p.message for p in report.errors]
    assert len(errors) == 2, errors
    assert "u1 look swapped" in errors[0] or "u1 look swapped" in errors[1]
    unrelated = [m for m in errors if "look unrelated" in m]
    assert len(unrelated) == 1 and "u2" in unrelated[0]
    corr = float(unrelated[0].split("correlation ")[1].split()[0])
    assert abs(corr) < 0.1
    clip = [p.message for p in report.warnings if "clipping" in p.message]
    assert len(clip) == 1 and "u3.wav" in clip[0] and "wav.scp line 4" in clip[0]
    # a -5 dB mixture is related (correlation about 0.49) and not swapped
    assert not any("u0" in m for m in errors)


def test_clean_noise_estimate_and_threshold(tmp_path):
    c = speech(2.0, 1)
    files = {"clean": wav(tmp_path / "clean.wav", c), "noisy10": wav(tmp_path / "n10.wav", noisy_of(c, 1, 10.0)),
             "noisy30": wav(tmp_path / "n30.wav", noisy_of(c, 1, 30.0))}
    d = source_dir(tmp_path / "speech", files, FS, utt2spk=True)  # utt2spk: a speech source
    report = validate.check_data_dir(d, FS)
    noisy = [p.message for p in report.warnings if "carries noise" in p.message]
    assert len(noisy) == 1 and "n10.wav" in noisy[0], noisy
    snr = float(noisy[0].split("estimated SNR ")[1].split()[0])
    assert 5 < snr < 20
    # a noise source (no utt2spk) is not checked for noise
    d2 = source_dir(tmp_path / "noise", files, FS)
    assert not [p for p in validate.check_data_dir(d2, FS).warnings if "carries noise" in p.message]


def test_bandwidth_of_upsampled_48k_set(tmp_path):
    rng = np.random.default_rng(0)
    up = {f"up{i}": wav(tmp_path / f"up{i}.wav", resample(0.1 * rng.standard_normal(16000), 16000, 48000),
                        48000, "PCM_16") for i in range(2)}
    full = {f"full{i}": wav(tmp_path / f"full{i}.wav", 0.1 * rng.standard_normal(48000), 48000, "PCM_16")
            for i in range(2)}
    r_up = validate.check_data_dir(source_dir(tmp_path / "up", up, 48000), 48000)
    assert 7500 < r_up.bandwidth_hz["source"] <= 8100
    warn = [p.message for p in r_up.warnings]
    assert len(warn) == 1 and "look like upsampled audio of about 16 kHz" in warn[0]
    r_full = validate.check_data_dir(source_dir(tmp_path / "full", full, 48000), 48000)
    assert r_full.bandwidth_hz["source"] > 23000 and not r_full.warnings
    r_mix = validate.check_data_dir(source_dir(tmp_path / "mix", {**up, **full}, 48000), 48000)
    assert len(r_mix.warnings) == 1 and "2 of 4 files have an effective bandwidth below" in r_mix.warnings[0].message


def test_effective_bandwidth_definition():
    rate, bins = 16000, 257
    f = np.arange(bins) * rate / 2 / (bins - 1)
    spec = np.where(f <= 4000, 1.0, 1e-9)  # -90 dB above 4 kHz
    assert validate.effective_bandwidth(spec, rate, 60.0) == pytest.approx(4000, abs=200)
    spec = np.where(f <= 4000, 1.0, 1e-5)  # -50 dB: within 60 dB, so counted
    assert validate.effective_bandwidth(spec, rate, 60.0) == pytest.approx(8000)


def test_read_audio_refuses_non_finite_and_write_audio_never_writes_it(tmp_path):
    x = speech(0.5)
    x[100] = np.nan
    p = wav(tmp_path / "n.wav", x)
    with pytest.raises(AudioError, match=r"n.wav \(wav.scp line 3\): 1 non-finite \(NaN\) samples, the first at "
                                         r"sample 100"):
        read_audio(p, where="wav.scp line 3")
    # only the part read is checked: the crop after the NaN is fine
    assert read_audio(p, start=200)[0].shape == (7800,)
    with pytest.raises(AudioError, match="refusing to write non-finite"):
        write_audio(tmp_path / "out.wav", x, FS, "FLOAT")
    assert not (tmp_path / "out.wav").exists()


def test_files_get_normal_permissions(tmp_path):
    import torch

    from se.atomic import atomic_write_text
    from se.checkpoint import atomic_torch_save, save_checkpoint

    old = os.umask(0o022)
    try:
        write_audio(tmp_path / "a.wav", np.zeros(100), FS)
        atomic_write_text(tmp_path / "t.txt", "x\n")
        atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "m.pt")
        save_checkpoint(tmp_path / "exp", {"epoch": 1, "step": 2, "model": {}}, True, 1, 1)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 6
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_source_dirs(tmp_path):
    rng = np.random.default_rng(3)
    rir = np.zeros((4000, 2))
    rir[10, :] = 0.9
    rir[10:, :] += 0.05 * rng.standard_normal((3990, 2)) * np.exp(-np.arange(3990) / 800)[:, None]
    files = {"rir1": wav(tmp_path / "rir1.wav", rir), "rir2": wav(tmp_path / "rir2.wav", rir[:, 0] * 0.5)}
    d = source_dir(tmp_path / "rirs", files, FS)
    report = validate.check_data_dir(d, FS)
    assert report.kind == "source" and report.errors == [] and report.utterances == 2
    # a speech source (utt2spk) must be mono; ids of utt2spk must be in wav.scp; fs is required
    (d / "utt2spk").write_text("rir1 a\nrir3 b\n")
    (d / "fs").unlink()
    msgs = [p.message for p in validate.check_data_dir(d, FS).errors]
    assert any("fs: not found" in m for m in msgs)
    assert any("utt2spk line 2: utterance rir3 is not in" in m for m in msgs)
    assert any("rir1.wav" in m and "2 channels, expected mono" in m for m in msgs)
    assert len(msgs) == 3, msgs
