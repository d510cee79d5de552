#!/usr/bin/env python3
"""Training-data loading: segments/s of our dataset vs reading whole files and cutting.

    PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_data_loading.py [--seconds 10 3] [--files 40]

Same files, same process, alternating runs. "ClearVoice way": read the whole noisy and clean
files, normalise each separately (audio_norm over the whole file), then cut a random 1 s
segment. Ours: se.data.SegmentDataset (reads only the segment with soundfile start/frames,
one gain for both). Files are 16-bit PCM WAV at 16 kHz, like the prepared corpora.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from se.audio import audio_norm  # noqa: E402
from se.data import SegmentDataset, make_data_dir  # noqa: E402

RATE = 16000
SEGMENT = RATE  # 1 s, FRCRN's max_length


def clearvoice_way(data, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    u = data.utterances[index]
    noisy, _ = sf.read(u.noisy, dtype="float64")
    clean, _ = sf.read(u.clean, dtype="float64")
    noisy, _ = audio_norm(noisy)
    clean, _ = audio_norm(clean)
    start = int(rng.integers(0, len(noisy) - SEGMENT + 1))
    return noisy[start:start + SEGMENT].astype(np.float32), clean[start:start + SEGMENT].astype(np.float32)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, nargs="+", default=[10.0, 3.0])
    p.add_argument("--files", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.seconds:
            root = Path(tmp) / f"s{seconds}"
            pairs = {}
            for i in range(args.files):
                n = int(seconds * RATE)
                x = 0.1 * rng.standard_normal(n)
                for kind in ("noisy", "clean"):
                    path = root / kind / f"u{i:03d}.wav"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    sf.write(path, x, RATE, subtype="PCM_16")
                pairs[f"u{i:03d}"] = (str(root / "noisy" / f"u{i:03d}.wav"), str(root / "clean" / f"u{i:03d}.wav"))
            data = make_data_dir(pairs, root / "data", RATE)
            ours = SegmentDataset(data, RATE, SEGMENT, seed=0)
            t_ours, t_ref = [], []
            for r in range(args.rounds):
                ours.set_epoch(r)
                t0 = time.perf_counter()
                for i in range(len(data)):
                    ours[i]
                t_ours.append(time.perf_counter() - t0)
                crop_rng = np.random.default_rng(r)
                t0 = time.perf_counter()
                for i in range(len(data)):
                    clearvoice_way(data, i, crop_rng)
                t_ref.append(time.perf_counter() - t0)
            ours_rate = len(data) / np.median(t_ours)
            ref_rate = len(data) / np.median(t_ref)
            print(f"{seconds:>5.1f} s files: ours {ours_rate:8.1f} segments/s, whole-file-then-cut "
                  f"{ref_rate:8.1f} segments/s, speed-up {ours_rate / ref_rate:.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
