"""Faults during training leave no trace and end with a message: a skipped (non-finite)
update, non-finite validation, a checkpoint write failing part-way, a crashed process, and
unreadable training files."""

from __future__ import annotations

import copy
import errno
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from se import checkpoint as ckpt
from se import config
from se.data import DataDirError
from se.trainer import Dist, Trainer, resolve_config
from helpers import make_dir, make_train_valid

REPO = Path(__file__).resolve().parents[1]
TINY = {"channels": 4, "fsmn_hidden": 4, "se_reduction": 2, "lorder": 3}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_train_valid(tmp_path_factory.mktemp("data"), train=4, valid=2, seconds=0.4, valid_seed=50)


def trainer(data, exp, train="train", **overrides) -> Trainer:
    conf = resolve_config(config.load(None, {
        "network_kwargs": TINY, "max_length": 0.3, "batch_size": 2, "num_workers": 0, "seed": 3,
        "print_freq": 1, "valid_utterances_to_log": 0, **overrides}))
    return Trainer(conf, str(data / train), str(data / "valid"), str(exp), Dist())


def full_state(t: Trainer) -> dict:
    return copy.deepcopy({"model": t.train_step.modules["model"].state_dict(),
                          "optimizer": t.train_step.optimizers["model"].state_dict()})


def assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_skipped_update_leaves_weights_batchnorm_and_optimiser_as_they_were(data, tmp_path, caplog):
    t = trainer(data, tmp_path / "exp", max_epoch=1)
    t.resume_or_init()
    micro_step, calls, before = t.train_step.micro_step, [], {}

    def nan_second_batch(noisy, clean, scale, **extra):
        calls.append(1)
        if len(calls) == 2:  # state after update 1; this batch's loss is non-finite
            before.update(full_state(t))
            noisy = noisy * float("nan")
        return micro_step(noisy, clean, scale, **extra)

    t.train_step.micro_step = nan_second_batch
    with caplog.at_level(logging.WARNING, logger="se.train"):
        t.train_one_epoch()
    assert len(calls) == 2 and t.progress.skipped_steps == 1
    after = full_state(t)
    bn = "unet.encoder0.bn.bn_re"
    assert int(after["model"][f"{bn}.num_batches_tracked"]) == 1  # the forward of batch 2 undone
    assert_same(after, before)  # weights, running mean/var, counts, Adam moments and step
    # the offending batch's utterances are named
    line = next(r.getMessage() for r in caplog.records if "update skipped" in r.getMessage())
    assert "update 2: non-finite loss" in line
    utts = re.search(r"batch: (.*)$", line).group(1).split()
    assert len(utts) == 2 and all(u.startswith("train_") for u in utts)


def test_non_finite_validation_is_reported_and_never_best(data, tmp_path, caplog):
    t = trainer(data, tmp_path / "exp", max_epoch=2)
    t.resume_or_init()
    valid_step = t.train_step.valid_step

    def nan_in_epoch_2(noisy, clean, **extra):
        if t.progress.epoch == 1:
            noisy = noisy * float("nan")
        return valid_step(noisy, clean, **extra)

    t.train_step.valid_step = nan_in_epoch_2
    with caplog.at_level(logging.WARNING, logger="se.train"):
        t.fit()
    history = t.progress.history
    assert list(history) == ["model.ckpt-1-2.pt"] and math.isfinite(history["model.ckpt-1-2.pt"])
    assert ckpt.read_pointer(tmp_path / "exp", "last_best_checkpoint").name == "model.ckpt-1-2.pt"
    assert ckpt.read_pointer(tmp_path / "exp", "last_checkpoint").name == "model.ckpt-2-4.pt"
    assert t.progress.best_valid_loss == history["model.ckpt-1-2.pt"]
    assert "epoch 2 validation: loss is NOT FINITE (nan; 2 of 2 utterances" in caplog.text


def train_args(data, exp, *extra):
    return ["--train-data", str(data / "train"), "--valid-data", str(data / "valid"), "--exp-dir", str(exp),
            "--network_kwargs", str(TINY), "--max_length", "0.3", "--batch_size", "2", "--num_workers", "0",
            "--valid_utterances_to_log", "0", "--seed", "3", *extra]


def test_checkpoint_write_failing_part_way_keeps_the_previous_one(data, tmp_path, monkeypatch, capsys):
    from se.bin import train

    exp = tmp_path / "exp"
    assert train.main(train_args(data, exp, "--max_epoch", "1")) == 0
    first = exp / "model.ckpt-1-2.pt"
    assert ckpt.read_pointer(exp).name == first.name
    names = sorted(p.name for p in exp.iterdir())

    def checkpoint_files():  # config.yaml / provenance are rewritten by every run, by design
        return {p.name: p.read_bytes() for p in exp.iterdir() if p.name.startswith(("model.", "last_"))}

    before = checkpoint_files()

    real_save = torch.save

    def disk_full_part_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04" + bytes(4096))  # part of the file reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full_part_way)
    capsys.readouterr()
    assert train.main(train_args(data, exp, "--max_epoch", "2")) == 1
    err = capsys.readouterr().err
    assert "model.ckpt-2-4.pt: cannot write the checkpoint ([Errno 28] No space left on device)" in err
    assert f"{first} and the pointer files are unchanged" in err and "Traceback" not in err
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    # nothing half-written; the earlier checkpoint and the pointers are as they were
    assert sorted(p.name for p in exp.iterdir()) == names  # no temporary file left behind
    assert checkpoint_files() == before
    assert ckpt.torch_load(ckpt.read_pointer(exp))["step"] == 2
    # and the same command resumes from it
    assert train.main(train_args(data, exp, "--max_epoch", "2")) == 0
    assert "resumed from" in capsys.readouterr().err
    assert ckpt.read_pointer(exp).name == "model.ckpt-2-4.pt"


def test_unreadable_training_files_are_named_counted_and_limited(data, tmp_path, caplog):
    root = tmp_path / "bad"
    make_dir(root, "train", 6, 0.4, 16000, seed=7)
    broken = sorted((root / "audio/train/noisy").glob("*.wav"))[1:3]
    for f in broken:
        f.write_bytes(b"this is not a wav file" * 10)
    bad_data = root / "data"
    (bad_data / "valid").symlink_to(data / "valid")
    t = trainer(bad_data, tmp_path / "ok", max_epoch=1, max_bad_files=2)
    t.resume_or_init()
    with caplog.at_level(logging.WARNING, logger="se.train"):
        t.fit()
    assert len(t.progress.bad_files) == 2
    assert sorted(str(f) for f in broken) == sorted(m.split(":")[0] for m in t.progress.bad_files)
    assert caplog.text.count("skipped an unreadable training file") == 2
    assert t.progress.global_step == 3  # 6 items, batch 2: every batch full (the next readable item stands in)

    t = trainer(bad_data, tmp_path / "stop", max_epoch=1, max_bad_files=1)
    t.resume_or_init()
    with pytest.raises(DataDirError, match=r"2 unreadable training files \(more than max_bad_files 1\)") as exc:
        t.fit()
    assert all(str(f) in str(exc.value) for f in broken)


def _descendants(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out += [int(p.name), *_descendants(int(p.name))]
    return out


def _rank_of(pid: int) -> str | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((e[5:].decode() for e in env if e.startswith(b"RANK=")), None)


def test_a_crashed_process_ends_the_job_with_an_error(data, tmp_path):
    log_file = tmp_path / "stderr.txt"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "se.bin.train", *train_args(data, tmp_path / "exp", "--max_epoch", "1000", "--print_freq", "1")]
    with open(log_file, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 120
        while "update 1/" not in log_file.read_text() and time.time() < deadline:
            assert proc.poll() is None, log_file.read_text()[-2000:]
            time.sleep(0.2)
        rank1 = [p for p in _descendants(proc.pid) if _rank_of(p) == "1"]
        assert rank1, "no process with RANK=1 found"
        os.kill(rank1[0], signal.SIGKILL)
        killed = time.time()
        rc = proc.wait(timeout=90)  # well within the process-group timeout (600 s)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc != 0 and time.time() - killed < 90
    assert "Signal 9" in log_file.read_text() or "SIGKILL" in log_file.read_text()
