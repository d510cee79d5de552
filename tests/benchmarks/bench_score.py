"""Time se.bin.score on N generated 3 s pairs with --nj 2, without DNSMOS and with it.

    PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_score.py [--n 100] [--fs 48000] [--nj 2]

The pairs are tests/data/scoring/speech.wav (3.1 s) circularly shifted, scaled and mixed with white
noise at random SNRs, written as 16-bit WAV at --fs. Prints the wall time of each run
(including process start-up and model loading), the wall time per utterance, the CPU time
per utterance (user + system of the scoring processes, less sensitive to other load on a shared
machine) and the wall time extrapolated to the 824 VoiceBank test files, measured and as it
would be on --nj idle cores (CPU time / nj).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

REPO = Path(__file__).resolve().parents[2]
SPEECH = REPO / "tests" / "data" / "scoring" / "speech.wav"


def make_pairs(root: Path, n: int, fs: int, seed: int = 0) -> tuple[Path, Path]:
    x, rate = sf.read(SPEECH, dtype="float64")
    if fs != rate:
        g = np.gcd(fs, rate)
        x = resample_poly(x, fs // g, rate // g)
    rng = np.random.default_rng(seed)
    clean, noisy = root / "clean", root / "noisy"
    clean.mkdir(parents=True)
    noisy.mkdir(parents=True)
    for i in range(n):
        c = np.roll(x, rng.integers(len(x))) * rng.uniform(0.2, 0.9)
        noise = rng.standard_normal(len(c))
        noise *= np.sqrt(np.sum(c**2) / np.sum(noise**2) / 10 ** (rng.uniform(-5, 15) / 10))
        y = c + noise
        y *= min(1.0, 0.99 / np.max(np.abs(y)))
        sf.write(clean / f"utt{i:04d}.wav", c, fs, subtype="PCM_16")
        sf.write(noisy / f"utt{i:04d}.wav", y, fs, subtype="PCM_16")
    return clean, noisy


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100, help="number of pairs")
    p.add_argument("--fs", type=int, default=48000, help="sample rate of the generated files")
    p.add_argument("--nj", type=int, default=2, help="scoring processes")
    p.add_argument("--metrics", default="nodnsmos;all", help="runs to time: --metrics values separated by ';'")
    args = p.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        clean, noisy = make_pairs(Path(tmp), args.n, args.fs)
        print(f"{args.n} pairs of {sf.info(str(clean / 'utt0000.wav')).duration:.2f} s at {args.fs} Hz, --nj {args.nj}")
        for metrics in args.metrics.split(";"):
            out = Path(tmp) / f"scores_{metrics}"
            cmd = [sys.executable, "-m", "se.bin.score", "--ref", str(clean), "--est", str(noisy),
                   "--out-dir", str(out), "--metrics", metrics, "--nj", str(args.nj)]  # fmt: skip
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            print(
                f"--metrics {metrics:9s}: {wall:6.1f} s wall ({wall / args.n * 1000:5.0f} ms/utt), "
                f"{cpu:6.1f} s CPU ({cpu / args.n * 1000:5.0f} ms/utt); 824 files: ~{wall / args.n * 824:4.0f} s "
                f"measured, ~{cpu / args.n * 824 / args.nj:4.0f} s on {args.nj} idle cores"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
