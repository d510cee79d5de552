#!/usr/bin/env python3
"""Updates/s and samples/s of 1 vs 2 CPU processes (torchrun, gloo) on the mini corpus.

    PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_ddp_cpu.py [--steps 20]

Runs se.bin.train with the mini recipe's tiny FRCRN config for --steps updates with 1 process
(threads = cores) and with 2 processes (1 thread each), per-process batch fixed, and reports
wall time of the training loop (from the trainer's first to last update log line).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(nproc: int, steps: int, data: Path, exp: Path, batch: int) -> tuple[float, int]:
    base = [sys.executable]
    if nproc > 1:
        base += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = base + ["-m", "se.bin.train", "--config", str(REPO / "egs/mini/conf/train_FRCRN_SE_16K.yaml"),
                  "--train-data", str(data / "train"), "--valid-data", str(data / "valid"),
                  "--exp-dir", str(exp), "--max_steps", str(steps), "--print_freq", "1",
                  "--batch_size", str(batch), "--num_workers", "1"]
    threads = str(max(1, (os.cpu_count() or 2) // nproc))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=threads)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
    stamps = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f")
              for m in re.findall(r"^(\S+ \S+) \(se\.train:0\) INFO: epoch \d+ update", out, re.M)]
    return (stamps[-1] - stamps[0]).total_seconds(), len(stamps) - 1


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "mini"
        subprocess.run([sys.executable, str(REPO / "local/make_mini_corpus.py"), "--out-dir", str(corpus)],
                       check=True, capture_output=True)
        for s in ("train", "valid"):
            subprocess.run([sys.executable, "-m", "se.bin.make_data_dir", "--noisy-dir", str(corpus / s / "noisy"),
                            "--clean-dir", str(corpus / s / "clean"), "--out", str(tmp / "data" / s)],
                           check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        rows = []
        for nproc in (1, 2):
            seconds, updates = run(nproc, args.steps, tmp / "data", tmp / f"exp{nproc}", args.batch)
            samples = updates * args.batch * nproc
            rows.append((nproc, updates / seconds, samples / seconds))
            print(f"{nproc} process(es): {updates} updates in {seconds:.1f} s: {updates / seconds:.3f} updates/s, "
                  f"{samples / seconds:.2f} samples/s (batch {args.batch} per process)", flush=True)
        print(f"samples/s scaling 2 vs 1 processes: {rows[1][2] / rows[0][2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
