"""Parallel batch PESQ in a persistent process pool (for the metric-GAN training step).

PESQ (ITU-T P.862, ``pesq`` package) is a CPU-only C routine that takes ~0.1-0.3 s per 2 s
utterance.  The GAN step needs one score per batch item before the discriminator loss.
ClearVoice starts joblib workers on every batch; here one ``ProcessPoolExecutor`` is created
once (per worker count) and reused for the whole run, and jobs are submitted asynchronously:

    job = pool.submit(refs, ests)   # right after the generator forward
    ...generator backward...        # the workers compute PESQ meanwhile
    scores = job.result()           # before the discriminator loss

Items whose PESQ cannot be computed (silent reference -> the package raises, non-finite
samples, too short, ...) get NaN; the caller decides what to do with them.

The workers import only numpy, soxr and pesq (never torch): ``pesq_one`` is the scorer's PESQ.  They are started with the
'forkserver' method (not 'fork': forking a process that runs OpenMP/torch threads is unsafe),
so, as for any multiprocessing user, a training *script* must guard its entry point with
``if __name__ == "__main__":`` (``python -m se.bin...`` modules do).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Sequence

import numpy as np


def pesq_one(ref: np.ndarray, est: np.ndarray, fs: int = 16000) -> float:
    """PESQ of one pair at ``fs`` Hz exactly as se.bin.score computes it (se.metrics.metric_value):
    wideband (``pesq_wb``, on a 16 kHz copy) for ``fs`` >= 16 kHz, else narrowband (``pesq_nb``,
    on an 8 kHz copy); NaN when it is undefined (silence, too short, non-finite samples)."""
    from se.metrics import metric_value  # numpy, soxr and pesq: no torch in the workers

    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    est = np.asarray(est, dtype=np.float64).reshape(-1)
    n = min(len(ref), len(est))
    if n == 0:
        return float("nan")
    return metric_value("pesq_wb" if fs >= 16000 else "pesq_nb", ref[:n], est[:n], fs)


class PesqJob:
    """Handle of an asynchronous batch; ``result()`` -> float64 array, NaN for failed items."""

    def __init__(self, futures: list[Future] | None = None, values: np.ndarray | None = None):
        self._futures = futures
        self._values = values

    def result(self) -> np.ndarray:
        if self._values is None:
            out = []
            for f in self._futures:
                try:
                    out.append(f.result())
                except BrokenProcessPool:
                    raise
                except Exception:
                    out.append(float("nan"))
            self._values = np.asarray(out, dtype=np.float64)
        return self._values


class PesqPool:
    """A persistent pool of ``workers`` PESQ processes (0 = compute in this process)."""

    def __init__(self, workers: int = 2, start_method: str | None = None):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = workers
        if start_method is None:
            methods = multiprocessing.get_all_start_methods()
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        self.start_method = start_method
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            ctx = multiprocessing.get_context(self.start_method)
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        return self._executor

    def submit(self, refs: Sequence[np.ndarray], ests: Sequence[np.ndarray], fs: int = 16000) -> PesqJob:
        """Start PESQ of every (ref, est) pair; returns at once (workers > 0)."""
        if len(refs) != len(ests):
            raise ValueError(f"{len(refs)} references but {len(ests)} estimates")
        refs = [np.ascontiguousarray(r, dtype=np.float32) for r in refs]
        ests = [np.ascontiguousarray(e, dtype=np.float32) for e in ests]
        if self.workers == 0:
            return PesqJob(values=np.asarray([pesq_one(r, e, fs) for r, e in zip(refs, ests)]))
        try:
            futures = [self._pool().submit(pesq_one, r, e, fs) for r, e in zip(refs, ests)]
        except BrokenProcessPool:  # a worker died (e.g. killed): start a fresh pool once
            self.close()
            futures = [self._pool().submit(pesq_one, r, e, fs) for r, e in zip(refs, ests)]
        return PesqJob(futures=futures)

    def map(self, refs, ests, fs: int = 16000) -> np.ndarray:
        return self.submit(refs, ests, fs).result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


# One persistent pool per worker count, created on first use and shut down at exit.
_POOLS: dict[int, PesqPool] = {}


def get_pool(workers: int | None = None) -> PesqPool:
    """The process-wide pool with ``workers`` processes (default: min(4, CPUs))."""
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    pool = _POOLS.get(workers)
    if pool is None:
        pool = _POOLS[workers] = PesqPool(workers)
    return pool


def submit_batch_pesq(refs, ests, fs: int = 16000, workers: int | None = None) -> PesqJob:
    """Asynchronous :func:`batch_pesq`: returns a :class:`PesqJob`."""
    return get_pool(workers).submit(refs, ests, fs)


def batch_pesq(refs, ests, fs: int = 16000, workers: int | None = None) -> np.ndarray:
    """PESQ of each (ref, est) pair in parallel -> float64 array with NaN for failed items.

    refs, ests: sequences of 1-D arrays (or 2-D arrays, one row per item).
    """
    return submit_batch_pesq(refs, ests, fs, workers).result()


@atexit.register
def _shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
