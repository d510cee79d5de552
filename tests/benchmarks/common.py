"""What the per-network CPU benchmarks share: timed runs and the JSON record of one case."""

from __future__ import annotations

import resource
import statistics
import time

import torch


def time_runs(fn, runs: int, device: torch.device | None = None) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of ``runs`` calls of ``fn`` after one warm-up call;
    on a CUDA ``device`` each call is timed up to its end (synchronised)."""

    def sync():
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    sync()
    walls, cpus = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return walls, cpus


def case_record(case: str, literal: bool, walls: list[float], cpus: list[float], seconds: float | None) -> dict:
    """The fields every case line has: median wall time, the real-time factor for ``seconds``
    of audio (None: not an enhancement case), every run's wall and CPU time, peak RSS."""
    med = statistics.median(walls)
    return {
        "case": case,
        "impl": "literal" if literal else "ours",
        "median_s": round(med, 3),
        "rtf": round(med / seconds, 3) if seconds else None,
        "runs_s": [round(w, 3) for w in walls],
        "cpu_s": [round(c, 3) for c in cpus],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }
