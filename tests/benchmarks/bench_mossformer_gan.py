#!/usr/bin/env python
"""CPU timings and peak memory of MossFormerGAN_SE_16K: one GAN training step, enhancement.

Cases (each runs in its own subprocess so that its peak RSS is its own):
  train    GANTrainStep.micro_step + update at the released size, batch 1 x 2 s crop:
           c-normalisation, STFT, generator, PESQ in the persistent process pool (overlapping
           the generator backward), 0.1 RI + 0.9 mag + 0.2 time + 0.05 adversarial loss,
           discriminator loss, clip, two AdamW steps.  Also reports the PESQ compute time
           (the share of the step it would take if it ran serially) and how long the step
           actually waited for it.  (TIMINGS.md reference: 29.56 s, 16.6 GB.)
  enhance  enhance() (our aligned default path) of a 10 s 16 kHz file; RTF = time / 10 s.
  decode   clearvoice_decode() (the reference decode path) of the same file
           (TIMINGS.md reference: RTF 10.5, 5.6 GB).
The generator is built as the registry builds it: with its speed kernels
(se/models/kernels/mossformer_gan.py), or the plain forward with SE_KERNELS=reference.
With --baseline each case also runs the plain reference forward (se/models/mossformer_gan_blocks.py:
full n x n and A x A maps kept for backward, no block checkpointing), so the speed-up and
memory saving can be measured on the same (possibly busy) machine.  Outputs of both are
identical up to float rounding.  Run time does not depend on the weight values.

Each JSON line has the median wall time, every run's wall and process CPU time, the peak RSS
of the case process (PESQ workers excluded), the thread count, the malloc mode and the 1-minute
load average.  ``--malloc retain`` (default) tunes glibc malloc as se.bin.enhance / se.bin.train
do (se/allocator.py); ``--malloc default`` leaves it as the reference code runs.

e.g.: PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_mossformer_gan.py --runs 3 --baseline
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from se import allocator
from se.allocator import retain_freed_memory
from se.allocator import release_after_step
from se.models.kernels import accelerate
from se.models.mossformer_gan import GANTrainStep, MossFormerGAN
from tests.benchmarks.common import case_record, time_runs

NAME = "MossFormerGAN_SE_16K"


def build_generator(kwargs: dict, literal: bool) -> MossFormerGAN:
    """The generator as the registry builds it (speed kernels unless SE_KERNELS=reference);
    ``literal``: the plain reference forward with every activation kept (no checkpointing)."""
    if literal:
        return MossFormerGAN(**{**kwargs, "checkpoint_blocks": False})
    return accelerate(NAME, MossFormerGAN(**kwargs))


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------
def _pseudo_audio(seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 140 * (1 + 0.1 * np.sin(2 * np.pi * 1.7 * t))
    ph = 2 * np.pi * np.cumsum(f0) / 16000
    speech = sum(np.sin(k * ph) / k for k in range(1, 20)) * (1 + np.sin(2 * np.pi * 4 * t))
    return 0.1 * speech / np.std(speech)


def run_case(case: str, runs: int, baseline: bool, pesq_workers: int, device: str = "cpu",
             train_seconds: float = 2.0, audio_seconds: float = 10.0, kwargs: dict | None = None) -> dict:
    torch.manual_seed(777)
    device = torch.device(device)
    extra = {}
    try:
        import pesq  # noqa: F401
    except ImportError:
        extra["pesq"] = "unavailable: every PESQ is NaN, the metric term is dropped"
    if case == "train":
        conf = {"init_learning_rate": 5e-4, "disc_learning_rate": 1e-3, "weight_decay": 1e-5,
                "clip_grad_norm": 10.0, "pesq_workers": pesq_workers}
        model = build_generator(kwargs or {}, baseline).to(device)
        step = GANTrainStep(model, conf, device)
        step.build_optimizers()
        for m in step.modules.values():
            m.train()
        clean = torch.from_numpy(_pseudo_audio(train_seconds)).float()[None]
        noisy = clean + 0.03 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
        waits = []
        from se import pesq_pool

        orig_result = pesq_pool.PesqJob.result

        def timed_result(job):
            t0 = time.perf_counter()
            out = orig_result(job)
            waits.append(time.perf_counter() - t0)
            return out

        pesq_pool.PesqJob.result = timed_result

        def fn():
            step.micro_step(noisy, clean, 1.0)
            step.update()
            release_after_step(device)  # as the training loop does after each update

        walls, cpus = time_runs(fn, runs, device)
        # PESQ compute time of one step's batch, serially in this process
        with torch.no_grad():
            s = MossFormerGAN.norm_factor(noisy) * clean
            est = model.enhance(noisy.to(device)).cpu() * MossFormerGAN.norm_factor(noisy)
        t0 = time.perf_counter()
        score = pesq_pool.pesq_one(s[0].numpy(), est[0].numpy())
        pesq_s = time.perf_counter() - t0
        # an untrained generator's output is far from speech and PESQ gives up early; the
        # noisy input is what a (partly) trained generator's estimate costs
        t0 = time.perf_counter()
        pesq_noisy = pesq_pool.pesq_one(s[0].numpy(), (MossFormerGAN.norm_factor(noisy) * noisy)[0].numpy())
        pesq_s = max(pesq_s, time.perf_counter() - t0)
        med = statistics.median(walls)
        extra = {**extra, "pesq_value": round(score, 3), "pesq_noisy_value": round(pesq_noisy, 3),
                 "pesq_compute_s": round(pesq_s, 3), "pesq_share_if_serial": round(pesq_s / med, 3),
                 "pesq_wait_s_median": round(statistics.median(waits[1:] or waits), 3),
                 "pesq_workers": pesq_workers}
        seconds = None
    else:
        model = build_generator(kwargs or {}, baseline).to(device).eval()
        n = int(16000 * audio_seconds)
        raw = _pseudo_audio(audio_seconds) + 0.03 * np.random.default_rng(99).standard_normal(n)
        if case == "decode":
            fn = lambda: model.clearvoice_decode(raw)  # noqa: E731
        else:
            x = torch.from_numpy(raw).float()[None].to(device)
            fn = lambda: model.enhance(x)  # noqa: E731
        walls, cpus = time_runs(fn, runs, device)
        seconds = audio_seconds
    return {
        **case_record(case, baseline, walls, cpus, seconds),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "malloc": "retain" if allocator.retaining() else "default",
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "device": str(device),
        "network_kwargs": kwargs or {},
        **({"cuda_peak_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2)}
           if device.type == "cuda" else {}),
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="train,enhance,decode", help="comma list of train,enhance,decode")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per case after one warm-up")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--pesq-workers", type=int, default=2, help="PESQ worker processes (train case)")
    ap.add_argument("--baseline", action="store_true", help="also time the plain reference forward")
    ap.add_argument("--device", default="cpu", help="torch device (cuda: GPU timing, CUDA peak memory)")
    ap.add_argument("--train-seconds", type=float, default=2.0, help="training crop (released: 2 s)")
    ap.add_argument("--audio-seconds", type=float, default=10.0, help="enhanced file length")
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY of the case processes ('' = leave unset). PASSIVE keeps "
                         "idle OpenMP threads from spinning, which on a shared, busy machine made "
                         "2-thread runs several times slower")
    ap.add_argument("--malloc", choices=["retain", "default"], default="retain",
                    help="retain: se.allocator.retain_freed_memory() as the command-line tools do; "
                         "default: glibc's own behaviour (mmap/unmap of every large tensor)")
    ap.add_argument("--network-kwargs", default="{}", help='JSON, e.g. \'{"checkpoint_blocks": false}\'')
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    ap.add_argument("--literal", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        if args.malloc == "retain":
            retain_freed_memory()
        print(json.dumps(run_case(args.one, args.runs, args.literal, args.pesq_workers, args.device,
                                  args.train_seconds, args.audio_seconds,
                                  json.loads(args.network_kwargs))), flush=True)
        return
    cases = [c for c in args.cases.split(",") if c]
    bad = set(cases) - {"train", "enhance", "decode"}
    if bad:
        ap.error(f"unknown case(s): {', '.join(sorted(bad))}")
    for case in cases:
        for literal in ([False, True] if args.baseline else [False]):
            cmd = [sys.executable, __file__, "--one", case, "--runs", str(args.runs),
                   "--threads", str(args.threads), "--pesq-workers", str(args.pesq_workers),
                   "--device", args.device, "--train-seconds", str(args.train_seconds),
                   "--audio-seconds", str(args.audio_seconds), "--network-kwargs", args.network_kwargs,
                   "--malloc", args.malloc]
            if literal:
                cmd.append("--literal")
            env = dict(os.environ)
            if args.omp_wait_policy:
                env["OMP_WAIT_POLICY"] = args.omp_wait_policy
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if res.returncode != 0:
                print(json.dumps({"case": case, "impl": "literal" if literal else "ours",
                                  "error": res.stderr.strip().splitlines()[-1:]}), flush=True)
                continue
            print(res.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
