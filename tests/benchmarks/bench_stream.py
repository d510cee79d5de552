#!/usr/bin/env python
"""Per-hop compute time of the causal FRCRN streamed by se.stream.StreamingEnhancer.

The signal (pseudo audio) arrives one 20 ms hop at a time, as from a sound card; every hop's
compute (STFT frame, both U-Nets one frame, iSTFT, overlap-add) is timed.  Reported per width:
mean, 99th percentile and worst hop (wall clock, and the thread's CPU time, which a loaded
machine inflates less), RTF (mean / 20 ms), the hops slower than real time, and the
multiply-adds per hop from the layer tables.
Target (issue 17): p99 under 10 ms on ONE CPU thread.  1 s of audio is streamed first as a
warm-up (then reset()).  Run time does not depend on the weight values (random init).

e.g.: PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_stream.py              # released width
      PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_stream.py --channels 128 64 48 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time

import numpy as np
import torch

from se.models.frcrn import _DECODER_KERNELS, _ENCODER_KERNELS, FRCRN, _frequency_sizes
from se.stream import StreamingEnhancer, hop_statistics


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    return f"{name} ({'AVX-512' if 'avx512' in out else 'AVX2 only'})"


def macs_per_hop(channels: int, hidden: int, lorder: int = 20) -> float:
    """Multiply-adds of one hop (both U-Nets, one frame), from the layer tables: the floor of
    the compute whatever the implementation (SE MLPs, STFTs and the mask are negligible)."""
    sizes = _frequency_sizes(321)  # F after each encoder: 321, 159, 78, 37, 17, 7, 2, 1
    c, macs = channels, 0
    for i, (k, _) in enumerate(_ENCODER_KERNELS):  # output bins x (2 taps x 2Cin x kF) x 2Cout
        macs += sizes[i + 1] * (2 * 2 * (1 if i == 0 else c) * k) * 2 * c
    for i, (k, _) in enumerate(_DECODER_KERNELS):  # input bins x (2 taps x 2Cin) x kF x 2Cout
        macs += sizes[7 - i] * (2 * 2 * (c if i == 0 else 2 * c)) * k * 2 * (1 if i == 6 else c)
    fsmn_bins = sizes[1:7] + sizes[1:7]  # fsmn_enc1..6 and fsmn_dec0..5 see the same sizes
    macs += sum(f * (8 * c * hidden + 4 * c * lorder) for f in fsmn_bins)  # 2 planes x 2 FSMNs
    macs += 2 * (8 * c * hidden + 4 * c * lorder)  # bottleneck time FSMN, 2 layers, 1 bin
    return 2 * macs  # two U-Nets


def run(channels: int, seconds: float, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = FRCRN(channels=channels, causal=True).eval()  # fsmn_hidden = channels, as released
    enhancer = StreamingEnhancer(model)
    rng = np.random.default_rng(seed)
    hop = enhancer.hop
    warm = (rng.standard_normal(16000) * 0.05).astype(np.float32)
    for start in range(0, len(warm), hop):
        enhancer.process(warm[start : start + hop])
    enhancer.flush()
    enhancer.hop_seconds.clear()
    t = np.arange(int(16000 * seconds)) / 16000
    x = (0.1 * np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 3 * t))
         + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    cpu = []  # this thread's CPU time per hop: what the wall time is once other processes wait
    for start in range(0, len(x), hop):
        before = time.thread_time()
        enhancer.process(x[start : start + hop])  # exactly one hop per call (after warm-up)
        cpu.append(time.thread_time() - before)
    stats = hop_statistics(enhancer.hop_seconds, hop / model.sampling_rate)
    cpu_stats = hop_statistics(cpu, hop / model.sampling_rate)
    stats.update({f"cpu_{k}": cpu_stats[k] for k in ("mean_ms", "p99_ms", "worst_ms")})
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"channels": channels, "params_M": round(params / 1e6, 2),
            "gmac_per_hop": round(macs_per_hop(channels, channels) / 1e9, 3), "seconds": seconds,
            **{k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, nargs="+", default=[128], help="widths (released: 128)")
    p.add_argument("--seconds", type=float, default=60.0, help="audio streamed per width")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.threads} thread(s), CPU: {_cpu()}", flush=True)
    for channels in args.channels:
        print(json.dumps(run(channels, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
