"""egs/dns_challenge on a fixture in the real DNS 5 fullband layout, and local/prepare_dns.py.

The fixture (made here, 16-bit wavs of 1-2 s): datasets_fullband/clean_fullband/read_speech with
LibriVox-style names (book_<b>_chp_<c>_reader_<r>_<i>.wav, 4 readers at 48 kHz) and
vctk_wav48_silence_trimmed/<spk>/<spk>_<n>_mic1.wav (3 speakers); noise_fullband/ with 6 flat
audioset/freesound-like files; impulse_responses/ with SLR26-style simulated RIRs and SLR28-style
real RIRs (2-channel, pyroomacoustics rooms) plus an isotropic-noise recording that must not be
taken for a RIR; test_set/synthetic/{no_reverb,with_reverb}/{noisy,clean} pairs named
*_fileid_<n>.wav and a dev_testset/ of real recordings without clean references.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import TINY_FRCRN_ARGS, copy_recipe, tone_pair
from se.data import DataDir, SourceDir, read_scp

REPO = Path(__file__).resolve().parents[1]
PREPARE = REPO / "local" / "prepare_dns.py"
READERS = ["00133", "02261", "06709", "11255"]
VCTK = ["p225", "p226", "s5"]


def _local_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "local" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wav(path: Path, x: np.ndarray, fs: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, fs, subtype="PCM_16")


def make_dns_fixture(root: Path, synthetic: tuple = ("no_reverb", "with_reverb")) -> Path:
    """The DNS 5 fullband layout under root/datasets_fullband (and test sets beside it)."""
    base = root / "datasets_fullband"
    seed = 0
    for r, reader in enumerate(READERS):
        for i in range(2):
            seed += 1
            name = f"book_{1000 + r:05d}_chp_{i + 1:04d}_reader_{reader}_{i}.wav"
            _wav(base / "clean_fullband/read_speech" / name, tone_pair(1.0 + 0.25 * i, 48000, seed)[1], 48000)
    for spk in VCTK:
        seed += 1
        _wav(base / f"clean_fullband/vctk_wav48_silence_trimmed/{spk}/{spk}_001_mic1.wav",
             tone_pair(1.2, 48000, seed)[1], 48000)
    rng = np.random.default_rng(0)
    for i, name in enumerate(["-0aBcD1eF2g_30.wav", "AudioSet_Fan_0001.wav", "door_knock_12.wav",
                              "freesound_0007.wav", "freesound_1123.wav", "rain-3.wav"]):  # fmt: skip
        t = np.arange(int(1.5 * 48000)) / 48000
        noise = 0.05 * rng.standard_normal(len(t)) * (1 + np.sin(2 * np.pi * (i + 1) * t))
        _wav(base / "noise_fullband" / name, noise, 48000)
    sim = _local_module("simulate_rirs")
    ir = base / "impulse_responses"
    for i in range(4):  # SLR26-style: 16 kHz mono simulated RIRs
        rir = sim.room_rir(sim.draw_room(np.random.default_rng([7, i]), (0.2, 0.4)), 16000)
        room = ir / f"SLR26/simulated_rirs_16k/smallroom/Room{i + 1:03d}"
        room.mkdir(parents=True)
        sf.write(room / f"Room{i + 1:03d}-00001.wav", rir / np.max(np.abs(rir)) * 0.9, 16000, subtype="FLOAT")
    real = ir / "SLR28/RIRS_NOISES/real_rirs_isotropic_noises"  # 2-channel RIRs beside noise recordings
    rir = sim.room_rir(sim.draw_room(np.random.default_rng([8, 0]), (0.3, 0.5)), 16000)
    stereo = np.stack([rir, np.roll(rir, 3)], axis=1) / np.max(np.abs(rir)) * 0.9
    real.mkdir(parents=True)
    sf.write(real / "RVB2014_type1_rir_largeroom1_far_angla.wav", stereo, 16000, subtype="FLOAT")
    sf.write(real / "RVB2014_type1_noise_largeroom1_1.wav", 0.01 * rng.standard_normal((16000, 2)), 16000)
    # official synthetic test sets (16 kHz pairs) and real recordings without references
    for kind in synthetic:
        for n in (3, 11):
            seed += 1
            noisy, clean = tone_pair(1.0, 16000, seed, snr_db=5)
            d = root / "test_set/synthetic" / kind
            _wav(d / "noisy" / f"clnsp{n}_babble_{seed}_snr5_tl-25_fileid_{n}.wav", noisy, 16000)
            _wav(d / "clean" / f"clean_fileid_{n}.wav", clean, 16000)
    for n in range(2):
        seed += 1
        _wav(root / "dev_testset" / f"real_recording_{n}.wav", tone_pair(1.0, 48000, seed)[0], 48000)
    return root


@pytest.fixture(scope="module")
def dns_root(tmp_path_factory):
    return make_dns_fixture(tmp_path_factory.mktemp("dns") / "dns5")


def run_py(*args, check=True):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(PREPARE), *map(str, args)],
                         capture_output=True, text=True, env=env)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


# ---------------------------------------------------------------------------- local/prepare_dns.py


def test_prepare_source_dirs(dns_root, tmp_path):
    prepare_dns = _local_module("prepare_dns")
    out, dump = tmp_path / "data", tmp_path / "dump"
    prepare_dns.prepare(dns_root, out, dump, ["read_speech", "vctk_wav48_silence_trimmed", "noise_fullband",
                                              "impulse_responses"], [16000], 0.25, 0.25, 0, {}, 1)  # fmt: skip
    clean = {s: SourceDir(out / "16k" / f"clean_{s}") for s in ("train", "valid", "test")}
    # speaker-disjoint: every speaker in exactly one set; ids and speakers as documented
    speakers = {s: set(d.utt2spk.values()) for s, d in clean.items()}
    assert not (speakers["train"] & speakers["valid"]) and not (speakers["train"] & speakers["test"])
    assert not (speakers["valid"] & speakers["test"])
    everyone = set().union(*speakers.values())
    assert everyone == {f"read_speech-{r}" for r in READERS} | {f"vctk_wav48_silence_trimmed-{s}" for s in VCTK}
    assert sum(len(d) for d in clean.values()) == 8 + 3
    assert "read_speech-book_01002_chp_0002_reader_06709_1" in {i for d in clean.values() for i in d.ids}
    # 48 kHz speech resampled once into the dump, with the corpus layout below it
    d = clean["train"]
    assert d.sampling_rate == 16000
    for path, n in zip(d.paths, d.num_samples):
        assert path.startswith(str((dump / "16k" / "datasets_fullband").resolve()))
        info = sf.info(path)
        assert info.samplerate == 16000 and info.frames == n
    # noise split by file; RIRs: 5 files (the isotropic noise left out), channel 0 of the 2-channel one
    noise = [SourceDir(out / "16k" / f"noise_{s}") for s in ("train", "valid", "test")]
    assert sorted(len(x) for x in noise) == [2, 2, 2]  # round(0.25 x 6) each for valid and test
    rirs = {}
    for s in ("train", "valid", "test"):
        d = SourceDir(out / "16k" / f"rir_{s}")
        rirs.update(zip(d.ids, d.paths))
    assert len(rirs) == 5 and not any(i.endswith("RVB2014_type1_noise_largeroom1_1") for i in rirs)
    real = rirs["impulse_responses-SLR28-RIRS_NOISES-real_rirs_isotropic_noises-RVB2014_type1_rir_largeroom1_far_angla"]
    x, _ = sf.read(real)
    src, _ = sf.read(dns_root / "datasets_fullband/impulse_responses/SLR28/RIRS_NOISES/real_rirs_isotropic_noises"
                     / "RVB2014_type1_rir_largeroom1_far_angla.wav")
    np.testing.assert_allclose(x, src[:, 0], atol=1e-7)
    # an unmatched speaker pattern is reported, and each such file becomes its own speaker
    prepare_dns.prepare(dns_root, tmp_path / "d2", dump, ["read_speech"], [16000], 0.25, 0.25, 0,
                        {"read_speech": r"speaker(\d+)"}, 1)
    spk = SourceDir(tmp_path / "d2/16k/clean_train").utt2spk
    assert all(v.startswith("read_speech-file_") for v in spk.values())


def test_official_test_sets(dns_root, tmp_path):
    out = run_py("test-sets", dns_root, "--out-dir", tmp_path / "data", "--dump-dir", tmp_path / "dump",
                 "--rates", "16000", "--nj", "1")
    made = out.stdout.split()
    assert made == ["dns_synthetic_no_reverb", "dns_synthetic_with_reverb", "dns_dev_testset"]
    paired = DataDir(tmp_path / "data/16k/dns_synthetic_with_reverb")
    assert [u.utt for u in paired.utterances] == ["fileid_00003", "fileid_00011"]
    assert paired.utterances[1].clean.endswith("clean_fileid_11.wav") and "fileid_11" in paired.utterances[1].noisy
    dev = tmp_path / "data/16k/dns_dev_testset"
    assert not (dev / "spk1.scp").exists()
    assert [sf.info(p).samplerate for p in read_scp(dev / "wav.scp").values()] == [16000, 16000]


def test_download_lists_unpacks_and_verifies(tmp_path):
    """The real archive list (nothing contacted), then a local fixture served by a fake wget."""
    out = subprocess.run(["bash", str(REPO / "local/download_dns5.sh"), "--list-only", "true", "--subsets",
                          "read_speech impulse_responses", str(tmp_path / "dl")],
                         capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO),
                                                                  PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()[1:]
    assert len(lines) == 22
    base = "https://dnschallengepublic.blob.core.windows.net/dns5archive/V5_training_dataset"
    assert lines[0] == f"read_speech {base}/Track1_Headset/read_speech.tgz.partaa {tmp_path}/dl/archives/read_speech.tgz.partaa"
    assert lines[-1].startswith(f"impulse_responses {base}/datasets_fullband.impulse_responses_000.tar.bz2 ")
    bad = run_py("urls", "--subsets", "read_speech clean_speech", check=False)
    assert bad.returncode == 1 and "unknown subset(s) clean_speech" in bad.stderr

    # server: read_speech as a gzip tar split in two parts, with a different folder prefix
    server = tmp_path / "server"
    src = tmp_path / "src/datasets_fullband/clean_fullband/read_speech"
    for i, reader in enumerate(READERS[:3]):
        _wav(src / f"book_0000{i}_chp_0001_reader_{reader}_0.wav", tone_pair(0.3, 16000, i)[1], 16000)
    blob = tmp_path / "read_speech.tgz"
    with tarfile.open(blob, "w:gz") as tar:
        tar.add(src.parent.parent, arcname="datasets_fullband")
    data = blob.read_bytes()
    (server / "Track1_Headset").mkdir(parents=True)
    (server / "Track1_Headset/read_speech.tgz.partaa").write_bytes(data[: len(data) // 2])
    (server / "Track1_Headset/read_speech.tgz.partab").write_bytes(data[len(data) // 2 :])
    for c in "cdefghijklmnopqrstu":  # the other parts of the real list: empty, a gzip stream ends before
        (server / f"Track1_Headset/read_speech.tgz.parta{c}").write_bytes(b"")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "wget").write_text(
        "#!/bin/bash\n"
        'while [ $# -gt 1 ]; do case $1 in -O) out=$2; shift ;; esac; shift; done\n'
        f'cp "{server}/${{1#*V5_training_dataset/}}" "$out"\n'
    )
    (bin_dir / "wget").chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    dl = tmp_path / "dl"
    res = subprocess.run(["bash", str(REPO / "local/download_dns5.sh"), "--subsets", "read_speech", str(dl)],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    got = sorted(p.name for p in (dl / "datasets_fullband/clean_fullband/read_speech").iterdir())
    assert got == sorted(p.name for p in src.iterdir()) and (dl / ".done.read_speech").is_file()
    assert "3 audio files, checksums OK" in res.stderr
    again = subprocess.run(["bash", str(REPO / "local/download_dns5.sh"), "--subsets", "read_speech", str(dl)],
                           capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "skipping" in again.stdout

    # a truncated archive is refused and nothing is moved into place
    (dl / ".done.read_speech").unlink()
    shutil.rmtree(dl / "datasets_fullband")
    (dl / "archives/read_speech.tgz.partab").write_bytes(data[len(data) // 2 : -40])
    res = subprocess.run(["bash", str(REPO / "local/download_dns5.sh"), "--subsets", "read_speech", str(dl)],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 1 and "damaged or incomplete archive" in res.stderr
    assert not (dl / "datasets_fullband/clean_fullband/read_speech").exists()


# ---------------------------------------------------------------------------- the recipe


def test_dns_recipe_stages_1_to_5(tmp_path):
    # official sets: the noisy-only dev_testset (paired ones are prepared like test_sim; see above)
    dns_root = make_dns_fixture(tmp_path / "dns5", synthetic=())
    recipe = copy_recipe(tmp_path, "dns_challenge")
    env = {k: v for k, v in os.environ.items() if k != "DNS_ROOT"}
    env["OMP_NUM_THREADS"] = "2"
    args = ["--dns_root", str(dns_root), "--subsets", "read_speech vctk_wav48_silence_trimmed noise_fullband "
            "impulse_responses", "--valid_fraction", "0.25", "--test_fraction", "0.25", "--num_valid", "3",
            "--num_test", "3", "--sim_length", "1", "--nj", "1", "--metrics", "si_sdr,lsd",
            "--noref_metrics", "plcmos", "--train_args", TINY_FRCRN_ARGS]  # fmt: skip
    res = subprocess.run(["bash", str(recipe / "run.sh"), *args], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "Successfully finished" in res.stdout
    data = recipe / "data"
    for rate in ("16k", "48k"):
        assert SourceDir(data / rate / "clean_train").sampling_rate == int(rate[:2]) * 1000
    tsv = (data / "16k/test_sim/simulation.tsv").read_text().splitlines()
    assert len(tsv) == 4 and "measured_snr_db" in tsv[0]
    assert (data / "16k/official_test_sets").read_text().split() == ["dns_dev_testset"]
    results = (recipe / "exp/FRCRN_SE_16K/RESULTS.md").read_text()
    for s in ("## test_sim", "## dns_dev_testset"):
        assert s in results, s
    exp = recipe / "exp/FRCRN_SE_16K/scores"
    assert (exp / "test_sim/enhanced/scores.tsv").read_text().split("\n")[0] == "utt_id\tsi_sdr\tlsd"
    assert (exp / "dns_dev_testset/enhanced/scores.tsv").read_text().split("\n")[0] == "utt_id\tplcmos"
    assert len(read_scp(recipe / "exp/FRCRN_SE_16K/enhanced/dns_dev_testset/wav.scp")) == 2
    # a re-run skips every finished stage
    again = subprocess.run(["bash", str(recipe / "run.sh"), *args, "--stage", "1", "--stop_stage", "4"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skipping") >= 3 + 2  # stages 1, 2, 3 and the two enhanced sets
