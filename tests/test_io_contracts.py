"""One atomic writer (se.atomic), one scp reader (se.data.read_scp), one resampler (se.resample)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO

from se.atomic import atomic_write, atomic_write_text, publish

# --------------------------------------------------------------------------- atomic writer


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_file_is_0644_under_umask_022(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "x\n")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert (tmp_path / "a.txt").read_text() == "x\n"


def test_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640


def test_failing_writer_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "scores.tsv"
    atomic_write_text(target, "old\n")

    def half_then_fail(f):
        f.write(b"new partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.tsv"]


def test_failing_rename_leaves_no_temp_and_no_new_file(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "summary.json", "old\n")

    def boom(*_):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="rename failed"):
        atomic_write_text(tmp_path / "new.txt", "x\n")
    with pytest.raises(OSError, match="rename failed"):
        atomic_write_text(tmp_path / "summary.json", "new\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    assert (tmp_path / "summary.json").read_text() == "old\n"


def test_file_and_directory_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_text(tmp_path / "a.txt", "x\n")
    assert synced == [False, True]  # the file, then its directory after the rename


def test_publish_moves_a_finished_folder(tmp_path):
    (tmp_path / ".stage").mkdir()
    (tmp_path / ".stage" / "f").write_text("1")
    publish(tmp_path / ".stage", tmp_path / "done")
    assert (tmp_path / "done" / "f").read_text() == "1"
    assert not (tmp_path / ".stage").exists()


def test_cli_writes_stdin_atomically(tmp_path, umask_022):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "d" / "cmd"
    res = subprocess.run([sys.executable, "-m", "se.atomic", str(out)], input=b"run.sh --stage 3\n",
                         env=env, capture_output=True)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == b"run.sh --stage 3\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    res = subprocess.run([sys.executable, "-m", "se.atomic"], input="", env=env, capture_output=True, text=True)
    assert res.returncode == 1 and "usage" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        res = subprocess.run([sys.executable, "-m", "se.atomic", str(tmp_path / "ro" / "x")], input="x",
                             env=env, capture_output=True, text=True)
    finally:
        os.chmod(tmp_path / "ro", 0o700)
    if os.geteuid() != 0:  # root writes anywhere
        assert res.returncode == 1 and "cannot write" in res.stderr and "Traceback" not in res.stderr
        assert list((tmp_path / "ro").iterdir()) == []


# --------------------------------------------------------------------------- one scp reader


def test_scorer_and_results_read_scp_files_like_data_dirs(tmp_path, capsys):
    """se.bin.score and se.bin.make_results report a bad scp line exactly as se.data.read_scp does."""
    from se.bin import make_results
    from se.bin import score as score_cli
    from se.data import DataDirError, read_scp

    bad = tmp_path / "wav.scp"
    bad.write_text("a /x/a.wav\nb\n")
    with pytest.raises(DataDirError) as want:
        read_scp(bad)
    assert "wav.scp line 2: expected '<utt> <value>'" in str(want.value)
    assert score_cli.main(["--est", str(bad), "--out-dir", str(tmp_path / "o")]) == 1
    assert str(want.value) in capsys.readouterr().err
    with pytest.raises(make_results.ResultsError, match="wav.scp line 2"):
        make_results.read_scp(bad)
    bad.write_text("a /x/a.wav\na /x/b.wav\n")
    with pytest.raises(DataDirError) as want:
        read_scp(bad)
    assert score_cli.main(["--est", str(bad), "--out-dir", str(tmp_path / "o")]) == 1
    assert str(want.value) in capsys.readouterr().err
    assert make_results.read_scp(tmp_path / "absent.scp") == {}


# --------------------------------------------------------------------------- one resampler


@pytest.mark.parametrize("fs", [16000, 48000])
def test_training_pesq_equals_the_scorers(tmp_path, capsys, fs):
    """PESQ logged in training (se.pesq_pool, se.metrics.metric_value) == se.bin.score's, exactly."""
    import soundfile as sf
    from helpers import SCORING_DATA

    from se.audio import read_audio
    from se.bin import score as score_cli
    from se.metrics import metric_value
    from se.pesq_pool import PesqPool, pesq_one
    from se.resample import resample
    from se.results import read_scores_tsv

    clean, rate = sf.read(SCORING_DATA / "speech.wav", dtype="float64")
    noisy, _ = sf.read(SCORING_DATA / "speech_bab_0dB.wav", dtype="float64")
    enhanced = clean + 0.3 * (noisy - clean)
    for name, x in (("clean", clean), ("enhanced", enhanced)):
        (tmp_path / name).mkdir()
        sf.write(tmp_path / name / "u1.wav", resample(x, rate, fs), fs, subtype="PCM_16")
    assert score_cli.main(["--ref", str(tmp_path / "clean"), "--est", str(tmp_path / "enhanced"),
                           "--out-dir", str(tmp_path / "s"), "--metrics", "pesq_wb", "--nj", "1"]) == 0
    capsys.readouterr()
    scored = read_scores_tsv(tmp_path / "s" / "scores.tsv")[1]["u1"]["pesq_wb"]
    ref, _ = read_audio(tmp_path / "clean" / "u1.wav")
    est, _ = read_audio(tmp_path / "enhanced" / "u1.wav")
    assert 1.0 < scored < 4.64
    assert pesq_one(ref, est, fs) == scored
    assert metric_value("pesq_wb", ref, est, fs) == scored
    # the GAN / validation batches: float32 rows in an in-process pool
    assert PesqPool(workers=0).map([ref.astype(np.float32)], [est.astype(np.float32)], fs)[0] == scored
    # undefined (silent estimate): NaN, as the scorer writes it
    assert np.isnan(pesq_one(ref, np.zeros_like(est), fs))


def test_every_resampling_goes_through_se_resample():
    """No other resampling routine in the package: se.resample.resample is the only one."""
    offenders = []
    for path in sorted((REPO / "se").rglob("*.py")) + sorted((REPO / "local").rglob("*.py")):
        if path.name == "resample.py" and path.parent.name == "se":
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ("resample_poly", "soxr.", "import soxr", "librosa.resample", "torchaudio.functional.resample",
                       "scipy.signal.resample", "Resample("):
            if needle in text:
                offenders.append(f"{path.relative_to(REPO)}: {needle}")
    assert offenders == []
