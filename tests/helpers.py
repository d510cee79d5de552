"""Small audio fixtures shared by tests: deterministic speech-like pairs and data dirs."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from se.data import make_data_dir

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # what tests/data/README.md describes
CLEARVOICE_DATA = DATA / "clearvoice"
SCORING_DATA = DATA / "scoring"


def tone_pair(seconds: float, fs: int, seed: int, snr_db: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(seconds * fs)
    t = np.arange(n) / fs
    f0 = rng.uniform(100, 200) * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / fs
    clean = sum(np.sin(h * phase) / h for h in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    clean = 0.1 * clean / np.sqrt(np.mean(clean**2))
    noise = rng.standard_normal(n)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2)) * 10 ** (-snr_db / 20)
    return clean + noise, clean


def write_pairs(root: Path, count: int, seconds: float, fs: int, seed: int = 0, prefix: str = "utt") -> dict:
    pairs = {}
    for i in range(count):
        noisy, clean = tone_pair(seconds * (1 + 0.1 * (i % 3)), fs, seed + i)
        utt = f"{prefix}{i:03d}"
        npath, cpath = root / "noisy" / f"{utt}.wav", root / "clean" / f"{utt}.wav"
        npath.parent.mkdir(parents=True, exist_ok=True)
        cpath.parent.mkdir(parents=True, exist_ok=True)
        sf.write(npath, noisy, fs, subtype="FLOAT")
        sf.write(cpath, clean, fs, subtype="FLOAT")
        pairs[utt] = (str(npath), str(cpath))
    return pairs


def assert_close(ours, ref, rel: float) -> None:
    """Same shape and max |ours - ref| <= rel * max(1, max |ref|), compared in float64."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    bound = rel * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= bound, f"max |diff| {err:.3g} > {bound:.3g}"


def make_dir(root: Path, name: str, count: int, seconds: float, fs: int, seed: int = 0):
    pairs = write_pairs(root / "audio" / name, count, seconds, fs, seed, prefix=f"{name}_")
    return make_data_dir(pairs, root / "data" / name, fs)


# se.bin.train options of the recipe tests: a tiny FRCRN_SE_16K and a handful of steps on CPU
TINY_FRCRN_ARGS = ("--max_steps 2 --batch_size 2 --effec_batch_size 2 --num_workers 0 --valid_utterances_to_log 0 "
                   "--network_kwargs '{channels: 4, fsmn_hidden: 4, se_reduction: 2, lorder: 3}'")


# ------------------------------------------------------------------------------------------
# the tiny trained experiment (tests/conftest.py trains it once per session: trained_frcrn)
# ------------------------------------------------------------------------------------------
TINY_FRCRN = {"channels": 4, "fsmn_hidden": 4, "se_reduction": 2, "lorder": 3}
TINY_FRCRN_YAML = "{channels: 4, fsmn_hidden: 4, se_reduction: 2, lorder: 3}"


def make_train_valid(root: Path, train: int = 12, valid: int = 5, seconds: float = 0.6,
                     valid_seed: int = 100) -> Path:
    """``train`` training and ``valid`` validation pairs of ``seconds`` at 16 kHz as data dirs
    ``<root>/data/{train,valid}`` (default: 12 and 5 of 0.6 s)."""
    make_dir(root, "train", train, seconds, 16000, seed=1)
    make_dir(root, "valid", valid, seconds, 16000, seed=valid_seed)
    return root / "data"


def train_cmd(data: Path, exp: Path, *extra: str, python=(sys.executable,)) -> list[str]:
    """``se.bin.train`` of a tiny FRCRN_SE_16K on ``data`` (make_train_valid) into ``exp``."""
    return [*python, "-m", "se.bin.train", "--train-data", str(data / "train"), "--valid-data",
            str(data / "valid"), "--exp-dir", str(exp), "--network", "FRCRN_SE_16K",
            "--network_kwargs", TINY_FRCRN_YAML, "--max_length", "0.5", "--batch_size", "2", "--num_workers", "1",
            "--init_learning_rate", "0.003", "--print_freq", "1", "--seed", "3",
            # no tensorboard examples (PESQ, plots: seconds per validation) unless a test asks for them
            "--valid_utterances_to_log", "0", *extra]


def train_env() -> dict:
    """Environment of a training subprocess: this checkout importable, one thread, no torchrun rank."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    return env


def train_in_process(cmd: list[str]) -> tuple[int, str]:
    """A :func:`train_cmd` command run by ``se.bin.train.main`` in this process: (exit status,
    what it wrote on stderr: its log and its one-line error). For tests of what the trainer does
    or refuses, not of the process itself: no interpreter and torch start (seconds each on 2
    cores). What the trainer sets for its process (the root logger, deterministic algorithms)
    is restored afterwards."""
    import contextlib
    import io
    import logging

    import torch

    from se.bin import train

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = train.main(cmd[cmd.index("se.bin.train") + 1:])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    return code, err.getvalue()


def train_tiny_frcrn(data: Path, exp: Path) -> Path:
    """Trains the tiny FRCRN 6 updates into ``exp``: exactly epoch 1 (12 items / batch 2)."""
    code, err = train_in_process(train_cmd(data, exp, "--max_steps", "6"))
    assert code == 0, err[-3000:]
    return exp


def copy_recipe(tmp_path: Path, name: str) -> Path:
    """A copy of egs/NAME at TMP_PATH/egs/NAME (no data, exp, downloads or dump), whose path.sh
    and cmd.sh two levels up source the repository's, like the original's."""
    recipe = tmp_path / "egs" / name
    shutil.copytree(REPO / "egs" / name, recipe, ignore=shutil.ignore_patterns("data", "exp", "downloads", "dump"))
    for f in ("path.sh", "cmd.sh"):
        (tmp_path / f).write_text(f'. "{REPO}/{f}"\n')
    return recipe


# ---------------------------------------------------------------------------------------------
# small 16 kHz files and data dirs for the bad-input matrix and data-dir checks
# ---------------------------------------------------------------------------------------------
FS = 16000


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    return tone_pair(seconds, FS, seed)[1]


def noisy_of(clean: np.ndarray, seed: int = 0, snr_db: float = 5.0) -> np.ndarray:
    n = np.random.default_rng(seed + 99).standard_normal(len(clean))
    return clean + n * np.sqrt(np.mean(clean**2) / np.mean(n**2)) * 10 ** (-snr_db / 20)


def wav(path: Path, x, rate: int = FS, subtype: str = "FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate, subtype=subtype)
    return path


def make_pairs(root: Path, count: int = 3, seconds: float = 0.5) -> dict[str, tuple[Path, Path]]:
    pairs = {}
    for i in range(count):
        c = speech(seconds, i)
        u = f"u{i}"
        pairs[u] = (wav(root / "noisy" / f"{u}.wav", noisy_of(c, i)), wav(root / "clean" / f"{u}.wav", c))
    return pairs


def write_data_dir(d: Path, pairs: dict, lengths: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "wav.scp").write_text("".join(f"{u} {pairs[u][0]}\n" for u in sorted(pairs)))
    (d / "spk1.scp").write_text("".join(f"{u} {pairs[u][1]}\n" for u in sorted(pairs)))
    lengths = lengths or {u: sf.info(str(pairs[u][0])).frames if os.path.exists(pairs[u][0]) else 8000 for u in pairs}
    (d / "utt2num_samples").write_text("".join(f"{u} {lengths[u]}\n" for u in sorted(pairs)))
    (d / "fs").write_text(f"{FS}\n")
    return d
