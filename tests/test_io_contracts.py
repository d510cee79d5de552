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
    def boom(*_):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="rename failed"):
        atomic_write_text(tmp_path / "new.txt", "x\n")
    assert list(tmp_path.iterdir()) == []


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
