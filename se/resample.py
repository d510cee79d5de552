"""THE resampler of the code base: soxr 'VHQ' (very high quality), for everything.

Data preparation (once per corpus), enhancement I/O at another rate than the network's, the
copies the metrics are computed on (se.metrics: PESQ WB at 16 kHz, PESQ NB at 8 kHz, ...) and
so the PESQ logged during training all resample with ``resample``. Training itself never
resamples: data directories are prepared at the network's rate.
"""

from __future__ import annotations

from importlib.metadata import version

import numpy as np
import soxr

RESAMPLER = f"soxr {version('soxr')} VHQ (se.resample)"


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """``x`` (1-D, or 2-D with time first) from ``rate_in`` to ``rate_out`` Hz, float64;
    the input itself when the rates are equal."""
    if rate_in == rate_out:
        return np.asarray(x)
    return soxr.resample(np.asarray(x, dtype=np.float64), int(rate_in), int(rate_out), quality="VHQ")


def _resample_file(job: tuple) -> tuple[str, int]:
    """Worker of resample_files: (src, dst, rate[, subtype]) -> (dst, clipped samples)."""
    from se.audio import read_audio, write_audio

    src, dst, rate = job[:3]
    subtype = job[3] if len(job) > 3 else "PCM_16"
    x, rate_in = read_audio(src, mono=False)  # channel 0 of a multi-channel file
    return dst, write_audio(dst, resample(x, rate_in, rate), rate, subtype=subtype)


def resample_files(jobs: list[tuple], nj: int, log=None) -> None:
    """Resample src -> dst (channel 0, written atomically) for every job whose dst is missing.

    ``jobs``: ``(src, dst, rate)`` or ``(src, dst, rate, subtype)``; ``nj`` processes; progress
    and ETA are logged every 10 s. A dst that exists is a finished file (atomic writes), so an
    interrupted run resumes. ``rate`` equal to the source rate copies channel 0 unchanged.
    """
    import logging
    import multiprocessing
    import time
    from pathlib import Path

    log = log or logging.getLogger(__name__)
    todo = [j for j in jobs if not Path(j[1]).is_file()]
    if len(todo) < len(jobs):
        log.info("%d of %d files already resampled (kept)", len(jobs) - len(todo), len(jobs))
    if not todo:
        return
    for d in {str(Path(j[1]).parent) for j in todo}:
        Path(d).mkdir(parents=True, exist_ok=True)
    nj = max(1, min(nj, len(todo)))
    log.info("resampling %d files to %d Hz (soxr VHQ) in %d processes", len(todo), todo[0][2], nj)
    t0, clipped, last_log = time.time(), [], 0.0
    with multiprocessing.get_context("fork").Pool(nj) as pool:
        for done, (dst, n_clipped) in enumerate(pool.imap_unordered(_resample_file, todo, chunksize=4), 1):
            if n_clipped:
                clipped.append((dst, n_clipped))
            elapsed = time.time() - t0
            if done == len(todo) or elapsed - last_log >= 10:
                last_log = elapsed
                eta = elapsed / done * (len(todo) - done)
                log.info("resampled %d/%d files (%.0f%%), elapsed %.0f s, ETA %.0f s",
                         done, len(todo), 100 * done / len(todo), elapsed, eta)
    if clipped:
        log.warning("%d resampled files had samples beyond full scale, limited when written as PCM_16 "
                    "(e.g. %s: %d samples)", len(clipped), clipped[0][0], clipped[0][1])
