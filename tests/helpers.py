"""Small audio fixtures shared by tests: deterministic speech-like pairs and data dirs."""

from __future__ import annotations

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


def make_dir(root: Path, name: str, count: int, seconds: float, fs: int, seed: int = 0):
    pairs = write_pairs(root / "audio" / name, count, seconds, fs, seed, prefix=f"{name}_")
    return make_data_dir(pairs, root / "data" / name, fs)
