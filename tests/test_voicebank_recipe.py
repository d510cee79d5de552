"""egs/voicebank_demand end to end on a fixture corpus with VoiceBank-DEMAND's exact layout.

The fixture has the four folders and <speaker>_<nnn>.wav names of the real corpus at 48 kHz,
3 utterances per speaker: training speakers p226 and p287 (held out as valid by default) plus
p239 and p240, test speakers p232 and p257. One tiny FRCRN_SE_16K runs stages 0-5 on CPU; the
other tests cover re-runs, missing inputs, the download path, damaged archives and the
ClearVoice-list path.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from se import config
from se.audio import audio_info
from se.data import DataDir, read_scp
from se.models import get_entry, network_kwargs
from helpers import tone_pair

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "egs" / "voicebank_demand" / "run.sh"
PREPARE = REPO / "local" / "prepare_voicebank_demand.py"
FOLDERS = {"train": ("noisy_trainset_28spk_wav", "clean_trainset_28spk_wav"),
           "test": ("noisy_testset_wav", "clean_testset_wav")}
SPEAKERS = {"train": ["p226", "p239", "p240", "p287"], "test": ["p232", "p257"]}
UTTS = 3
N_TRAIN = len(SPEAKERS["train"]) * UTTS
N_TEST = len(SPEAKERS["test"]) * UTTS
TINY_FRCRN = ("--max_steps 2 --batch_size 2 --effec_batch_size 2 --num_workers 0 --valid_utterances_to_log 0 "
              "--network_kwargs '{channels: 4, fsmn_hidden: 4, se_reduction: 2, lorder: 3}'")
FAST_METRICS = "pesq_wb stoi si_sdr"


def make_corpus(root: Path) -> dict[str, int]:
    """The fixture corpus (16-bit 48 kHz wavs, 0.5-1 s); returns {utt: samples}."""
    lengths, seed = {}, 0
    for part, speakers in SPEAKERS.items():
        noisy_dir, clean_dir = (root / f for f in FOLDERS[part])
        noisy_dir.mkdir(parents=True)
        clean_dir.mkdir(parents=True)
        for spk in speakers:
            for i in range(1, UTTS + 1):
                seed += 1
                n = 24000 + (7919 * seed) % 24000 + 1  # lengths that 48 -> 16 kHz does not divide
                noisy, clean = tone_pair(n / 48000 + 1e-7, 48000, seed)
                utt = f"{spk}_{i:03d}"
                sf.write(noisy_dir / f"{utt}.wav", noisy, 48000, subtype="PCM_16")
                sf.write(clean_dir / f"{utt}.wav", clean, 48000, subtype="PCM_16")
                lengths[utt] = n
    return lengths


def zip_corpus(corpus: Path, out: Path) -> None:
    """The four DataShare archives (each holds <name>/<utt>.wav)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in sum(FOLDERS.values(), ()):
        with zipfile.ZipFile(out / f"{name}.zip", "w") as z:
            for wav in sorted((corpus / name).iterdir()):
                z.write(wav, f"{name}/{wav.name}")


def run_recipe(work: Path, *args, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "VBD_ROOT"}
    cmd = [RUN, "--datadir", work / "data", "--dumpdir", work / "dump", "--expdir", work / "exp",
           "--nj", "2", *args]
    return subprocess.run([str(a) for a in cmd], capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})})


def fixture_counts(corpus: Path | None = None) -> list:
    args = ["--expected_train", N_TRAIN, "--expected_test", N_TEST]
    return args if corpus is None else ["--vbd_root", corpus, *args]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("vbd") / "VoiceBank-DEMAND"
    return root, make_corpus(root)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """Stages 0-5 with a tiny FRCRN_SE_16K; returns (work dir, recipe command, its result)."""
    work = tmp_path_factory.mktemp("run")
    args = [*fixture_counts(corpus[0]), "--train_args", TINY_FRCRN, "--metrics", FAST_METRICS]
    result = run_recipe(work, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, args, result


# ---------------------------------------------------------------------------- end to end


def test_data_dirs_at_16k_and_48k(corpus, trained):
    root, lengths = corpus
    data = trained[0] / "data"
    expected = {
        "train": {u for u in lengths if u.split("_")[0] in ("p239", "p240")},
        "valid": {u for u in lengths if u.split("_")[0] in ("p226", "p287")},  # held out
        "test": {u for u in lengths if u.split("_")[0] in ("p232", "p257")},
    }
    for rate in (16000, 48000):
        for name, utts in expected.items():
            d = DataDir(data / f"{rate // 1000}k" / name)
            assert d.sampling_rate == rate
            assert {u.utt for u in d.utterances} == utts
            part = "test" if name == "test" else "train"
            for u in d.utterances:
                assert Path(u.noisy).name == Path(u.clean).name == f"{u.utt}.wav"
                assert Path(u.noisy).parent.name == FOLDERS[part][0]
                assert Path(u.clean).parent.name == FOLDERS[part][1]
                for path in (u.noisy, u.clean):
                    info = audio_info(path)
                    assert (info.samplerate, info.frames) == (rate, u.num_samples)
                if rate == 48000:  # the native rate: the corpus files themselves
                    assert Path(u.noisy) == root / FOLDERS[part][0] / f"{u.utt}.wav"
                    assert u.num_samples == lengths[u.utt]
                else:  # resampled once into the dump dir
                    assert Path(u.noisy).is_relative_to(trained[0] / "dump" / "16k")
                    assert u.num_samples == round(lengths[u.utt] / 3)


def test_resampled_copies_are_high_quality(corpus, trained):
    from se.resample import resample

    root, _ = corpus
    x48, _ = sf.read(root / "clean_testset_wav" / "p232_001.wav")
    x16, rate = sf.read(trained[0] / "dump" / "16k" / "clean_testset_wav" / "p232_001.wav")
    assert rate == 16000
    np.testing.assert_allclose(x16, resample(x48, 48000, 16000), atol=2.0**-15)  # soxr VHQ, PCM_16


def test_training_enhancement_and_results(trained):
    work, _, result = trained
    exp = work / "exp" / "FRCRN_SE_16K"
    conf = config.load(exp / "config.yaml")
    assert conf["network"] == "FRCRN_SE_16K" and conf["max_steps"] == 2 and conf["sampling_rate"] == 16000
    assert conf["network_kwargs"] == {"channels": 4, "fsmn_hidden": 4, "se_reduction": 2, "lorder": 3}
    assert conf["seed"] == 777 and conf["clip_grad_norm"] == 10.0  # the rest from the recipe conf
    assert (exp / "last_best_checkpoint").is_file()
    enhanced = read_scp(exp / "enhanced" / "test" / "wav.scp")
    assert len(enhanced) == N_TEST
    assert all(audio_info(p).samplerate == 16000 for p in enhanced.values())
    results = (exp / "RESULTS.md").read_text()
    for text in ("| noisy (input) | 6 |", "| enhanced | 6 |", "pesq_wb", "stoi", "si_sdr",
                 "--network_kwargs", "scores/test/noisy"):
        assert text in results, text
    for stage in range(6):
        assert f"Stage {stage}:" in result.stdout
    assert "Successfully finished" in result.stdout


def test_rerun_skips_finished_stages(trained):
    work, args, _ = trained
    exp = work / "exp" / "FRCRN_SE_16K"
    before = {p: p.stat().st_mtime_ns for p in (work / "data" / "16k" / "train" / "wav.scp",
                                                   exp / "last_best_checkpoint",
                                                   exp / "enhanced" / "test" / "p232_001.wav")}
    result = run_recipe(work, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("skipping") == 7, result.stdout  # stages 0-4, two score dirs
    assert before == {p: p.stat().st_mtime_ns for p in before}
    assert (exp / "RESULTS.md").is_file()


def test_data_prep_rerun_without_markers_is_safe(trained):
    """Stages 1-2 run again: the resampled files are kept and the data dirs come out the same."""
    work, args, _ = trained
    data = work / "data"
    scps = {p: p.read_text() for p in sorted(data.glob("*/*/*.scp"))}
    for marker in (data / ".stage1.done", data / ".stage2.done"):
        marker.unlink()
    result = run_recipe(work, *args, "--stage", "1", "--stop_stage", "2")
    assert result.returncode == 0, result.stderr
    assert "36 of 36 files already resampled (kept)" in result.stderr
    assert scps == {p: p.read_text() for p in scps}


# ---------------------------------------------------------------------------- missing inputs


@pytest.mark.parametrize("stage, message", [
    (1, "run stage 0 first"),
    (2, "run stage 1 first"),
    (3, "run stage 1 first"),
    (4, "run stage 3 first"),
    (5, "run stage 4 first"),
])
def test_stage_without_its_inputs_names_the_stage_to_run(corpus, tmp_path, stage, message):
    result = run_recipe(tmp_path, *fixture_counts(corpus[0]), "--stage", stage, "--stop_stage", stage)
    assert result.returncode == 1
    assert message in result.stdout + result.stderr


def test_unknown_network(tmp_path):
    result = run_recipe(tmp_path, "--network", "Nope")
    assert result.returncode == 1
    assert "no conf/train_Nope.yaml" in result.stdout and "FRCRN_SE_16K" in result.stdout


# ---------------------------------------------------------------------------- stage 0


def test_layout_check_names_the_problem(corpus, tmp_path):
    result = run_recipe(tmp_path, "--vbd_root", corpus[0], "--stop_stage", "0")  # real counts expected
    assert result.returncode == 1
    assert f"clean_trainset_28spk_wav: {N_TRAIN} wav files, expected 11572" in result.stderr
    assert "datashare.ed.ac.uk" in result.stderr
    result = run_recipe(tmp_path, "--vbd_root", tmp_path / "none", "--stop_stage", "0")
    assert result.returncode == 1 and "noisy_testset_wav: folder not found" in result.stderr


@pytest.fixture
def fake_wget(corpus, tmp_path):
    """A wget on PATH that 'downloads' from local archives, or fails like a machine offline."""
    archives = tmp_path / "server"
    zip_corpus(corpus[0], archives)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "wget").write_text(
        "#!/bin/bash\n"
        'while [ $# -gt 1 ]; do case $1 in -O) out=$2; shift ;; esac; shift; done\n'
        '[ -z "${OFFLINE:-}" ] || { echo "wget: unable to resolve host address" >&2; exit 4; }\n'
        f'cp "{archives}/$(basename "$1")" "$out"\n'
    )
    (bin_dir / "wget").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, archives


def test_download_verifies_and_unpacks(fake_wget, tmp_path):
    env, _ = fake_wget
    corpus = tmp_path / "dl"
    args = ["--download_dir", corpus, *fixture_counts(), "--stop_stage", "0"]
    result = run_recipe(tmp_path, *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    for part, folders in FOLDERS.items():
        for folder in folders:
            assert len(list((corpus / folder).glob("*.wav"))) == len(SPEAKERS[part]) * UTTS
            assert (corpus / folder / ".done").is_file()
    assert "integrity OK" in result.stderr
    again = run_recipe(tmp_path, *args, env=env)
    assert again.returncode == 0 and "skipping" in again.stdout


def test_offline_download_says_what_to_fetch(fake_wget, tmp_path):
    env, _ = fake_wget
    result = run_recipe(tmp_path, "--download_dir", tmp_path / "dl", "--stop_stage", "0",
                        env={**env, "OFFLINE": "1"})
    assert result.returncode == 1
    for text in ("could not download clean_trainset_28spk_wav.zip", "https://datashare.ed.ac.uk/handle/10283/2791",
                 "noisy_testset_wav.zip", "--vbd-root"):
        assert text in result.stderr, text
    assert not (tmp_path / "dl" / "clean_trainset_28spk_wav").exists()


def test_damaged_archive_is_not_unpacked(fake_wget, tmp_path):
    """Archives put into the download dir by hand are verified before anything is extracted."""
    _, archives = fake_wget
    corpus = tmp_path / "dl"
    corpus.mkdir()
    for zip_file in archives.iterdir():
        (corpus / zip_file.name).write_bytes(zip_file.read_bytes())
    damaged = corpus / "clean_trainset_28spk_wav.zip"
    blob = bytearray(damaged.read_bytes())
    blob[200] ^= 0xFF  # inside the first member's audio
    damaged.write_bytes(bytes(blob))
    result = run_recipe(tmp_path, "--download_dir", corpus, *fixture_counts(), "--stop_stage", "0",
                        env={"OFFLINE": "1"})  # nothing to download
    assert result.returncode == 1
    assert "fails the CRC check" in result.stderr
    assert not (corpus / "clean_trainset_28spk_wav").exists()


def test_archive_with_the_wrong_count_is_not_unpacked(fake_wget, tmp_path, capsys):
    _, archives = fake_wget
    rc = load_prepare_module().main(["unpack", str(archives / "clean_testset_wav.zip"), str(tmp_path / "c"),
                                     "--expected", "824"])
    assert rc == 1
    assert f"clean_testset_wav.zip: {N_TEST} wav files, expected 824" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------- stage 1 pieces


def test_clearvoice_lists_replace_the_corpus(trained, corpus, tmp_path):
    """Train/valid from 2-column lists; the test set still comes from the corpus."""
    dump = trained[0] / "dump" / "16k"
    lists = {}
    for name, speakers in (("train", ["p239", "p240"]), ("valid", ["p226"])):
        lines = [f"{dump / 'noisy_trainset_28spk_wav' / f'{s}_00{i}.wav'} "
                 f"{dump / 'clean_trainset_28spk_wav' / f'{s}_00{i}.wav'} 0.7\n"
                 for s in speakers for i in range(1, UTTS + 1)]
        lists[name] = tmp_path / f"{name}.scp"
        lists[name].write_text("".join(lines))
    result = run_recipe(tmp_path, *fixture_counts(corpus[0]), "--stop_stage", "2",
                        "--train_list", lists["train"], "--valid_list", lists["valid"])
    assert result.returncode == 0, result.stdout + result.stderr
    data = tmp_path / "data"
    assert {u.utt for u in DataDir(data / "16k" / "valid").utterances} == {"p226_001", "p226_002", "p226_003"}
    assert len(DataDir(data / "16k" / "train")) == 6
    assert len(DataDir(data / "16k" / "test")) == N_TEST
    assert not (data / "48k").exists()  # only the network's rate


def load_prepare_module():
    spec = importlib.util.spec_from_file_location("prepare_voicebank_demand", PREPARE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_missing_valid_speaker(corpus, tmp_path, capsys):
    prep = load_prepare_module()
    rc = prep.main(["prepare", str(corpus[0]), "--out-dir", str(tmp_path / "data"), "--dump-dir",
                    str(tmp_path / "dump"), "--valid-speakers", "p226 p999", "--rates", "48000"])
    assert rc == 1
    assert "no utterances of the validation speaker(s) p999" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------- configs

REFERENCE = {  # ClearVoice's training hyperparameters (config/train/*.yaml of ClearerVoice-Studio)
    "FRCRN_SE_16K": dict(
        optimizer="adam", init_learning_rate=1e-3, finetune_learning_rate=1e-4, weight_decay=1e-5,
        batch_size=4, accu_grad=1, effec_batch_size=12, max_length=1.0, clip_grad_norm=10.0,
        max_epoch=100, win_len=640, win_inc=320, fft_len=640, win_type="hanning", seed=777),
    "MossFormerGAN_SE_16K": dict(
        optimizer="adamw", init_learning_rate=5e-4, finetune_learning_rate=1e-4, disc_learning_rate=1e-3,
        weight_decay=1e-5, batch_size=1, accu_grad=1, effec_batch_size=2, max_length=2.0,
        clip_grad_norm=10.0, win_len=400, win_inc=100, fft_len=400, win_type="hamming", seed=777),
    "MossFormer2_SE_48K": dict(
        optimizer="adam", init_learning_rate=5e-4, finetune_learning_rate=5e-5, weight_decay=0.0,
        batch_size=4, accu_grad=1, effec_batch_size=8, max_length=4.0, clip_grad_norm=10.0,
        win_len=1920, win_inc=384, fft_len=1920, win_type="hamming", num_mels=60, seed=777),
}


@pytest.mark.parametrize("network", sorted(REFERENCE))
def test_configs_reproduce_the_reference(network):
    conf = config.load(RUN.parent / "conf" / f"train_{network}.yaml")
    for key, value in REFERENCE[network].items():
        assert conf[key] == (value if isinstance(value, str) else pytest.approx(value)), key
    assert conf["network"] == network
    # the released architecture, so that --init can start from a ClearVoice release file
    init = get_entry(network).network_class().__init__
    defaults = {k: p.default for k, p in inspect.signature(init).parameters.items() if p.default is not p.empty}
    assert {**defaults, **network_kwargs(network, conf)} == {**defaults, **network_kwargs(network, {})}
