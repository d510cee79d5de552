#!/usr/bin/env python3
"""One short GPU measurement per network: samples/s, peak GPU memory, data-loading time per step.

    PYTHONPATH=. python tests/gpu/bench_train_gpu.py [--steps 8] [--out results.json]

For each network at its released size and its reference training batch (FRCRN_SE_16K 4 x 1 s,
MossFormerGAN_SE_16K 1 x 2 s, MossFormer2_SE_48K 4 x 4 s) and for fp32 and bf16, runs the real
trainer pieces (se.trainer.Trainer: data loader with workers, the network's train step,
clipping, optimiser) on a synthetic data dir made here: 2 warm-up updates, then ``--steps``
timed updates. Data time = time spent waiting for the next batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from se import config  # noqa: E402
from se.data import make_data_dir  # noqa: E402
from se.trainer import Dist, Trainer, resolve_config  # noqa: E402

SETUPS = {
    "FRCRN_SE_16K": dict(batch_size=4, max_length=1.0, rate=16000),
    "MossFormerGAN_SE_16K": dict(batch_size=1, max_length=2.0, rate=16000),
    "MossFormer2_SE_48K": dict(batch_size=4, max_length=4.0, rate=48000),
}


def make_corpus(root: Path, rate: int, count: int, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    pairs = {}
    for i in range(count):
        n = int(seconds * rate)
        t = np.arange(n) / rate
        clean = 0.1 * np.sin(2 * np.pi * 150 * t * (1 + 0.1 * np.sin(2 * np.pi * t))) * (np.sin(2 * np.pi * 3 * t) > 0)
        noisy = clean + 0.03 * rng.standard_normal(n)
        d = root / f"audio{rate}"
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / f"n{i}.wav", noisy, rate, subtype="FLOAT")
        sf.write(d / f"c{i}.wav", clean, rate, subtype="FLOAT")
        pairs[f"u{i:03d}"] = (str(d / f"n{i}.wav"), str(d / f"c{i}.wav"))
    make_data_dir(pairs, root / f"data{rate}", rate)
    return root / f"data{rate}"


def measure(network: str, precision: str, data: Path, exp: Path, steps: int) -> dict:
    s = SETUPS[network]
    conf = resolve_config(config.load(None, {
        "network": network, "batch_size": s["batch_size"], "max_length": s["max_length"],
        "precision": precision, "num_workers": 4, "init_learning_rate": 1e-4,
    }))
    dist = Dist(device=torch.device("cuda", 0))
    trainer = Trainer(conf, str(data), str(data), str(exp), dist, start_over=True)
    trainer.resume_or_init()
    step = trainer.train_step
    for m in step.modules.values():
        m.train()
    torch.cuda.reset_peak_memory_stats()
    it = iter(trainer.train_loader)
    data_t, step_t, samples = [], [], 0
    for i in range(steps + 2):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(trainer.train_loader)
            batch = next(it)
        t1 = time.perf_counter()
        d = {k: v.to(dist.device, non_blocking=True) for k, v in batch.items() if k != "index"}
        step.micro_step(d.pop("noisy"), d.pop("clean"), 1.0, **d)
        step.update()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= 2:
            data_t.append(t1 - t0)
            step_t.append(t2 - t1)
            samples += batch["noisy"].shape[0]
    total = sum(data_t) + sum(step_t)
    out = {
        "network": network, "precision": precision, "batch": s["batch_size"], "seconds": s["max_length"],
        "samples_per_s": samples / total, "step_s_median": float(np.median(step_t)),
        "data_wait_s_per_step": float(np.mean(data_t)),
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    del trainer, step
    torch.cuda.empty_cache()
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--out", default="")
    p.add_argument("--networks", nargs="*", default=list(SETUPS))
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: this script measures GPU training", file=sys.stderr)
        return 1
    print(torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpora = {rate: make_corpus(tmp, rate, 24, 4.5) for rate in (16000, 48000)}
        for network in args.networks:
            for precision in ("fp32", "bf16"):
                r = measure(network, precision, corpora[SETUPS[network]["rate"]], tmp / f"exp_{network}_{precision}",
                            args.steps)
                results.append(r)
                print(json.dumps(r), flush=True)
    print(f"{'network':<22}{'prec':<6}{'batch':>6}{'samples/s':>11}{'step s':>9}{'data s':>9}{'peak GiB':>10}")
    for r in results:
        print(f"{r['network']:<22}{r['precision']:<6}{r['batch']:>6}{r['samples_per_s']:>11.2f}"
              f"{r['step_s_median']:>9.3f}{r['data_wait_s_per_step']:>9.4f}{r['peak_gpu_mem_gib']:>10.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
