"""PESQ MOS-LQO through the ``pesq`` package (ITU-T P.862 reference C code, ludlows wrapper).

- ``pesq_wb``: P.862.2 wideband MOS-LQO on 16 kHz signals.
- ``pesq_nb``: P.862.1 narrowband MOS-LQO on 8 kHz signals (the scorer makes 8 kHz copies; the
  package's own "nb at 16 kHz" convention gives other values and is not used).

The package implements P.862.2 without corrigendum 2 (values differ slightly from tools that
apply it); its version goes into every summary.json (se.results.VERSIONED_PACKAGES).
"""

from __future__ import annotations

import numpy as np

from se.metrics.common import Undefined


def _pesq(fs: int, ref: np.ndarray, est: np.ndarray, mode: str) -> float:
    import pesq

    if not np.any(est):
        raise Undefined(f"PESQ {mode}: estimate is all zeros")
    try:
        return float(pesq.pesq(fs, ref, est, mode))
    except pesq.PesqError as exc:  # NoUtterancesError, BufferTooShortError, ...
        raise Undefined(f"PESQ {mode}: {type(exc).__name__} ({exc})") from exc


def pesq_wb(ref16: np.ndarray, est16: np.ndarray) -> float:
    """P.862.2 wideband MOS-LQO of 16 kHz signals of equal length."""
    return _pesq(16000, ref16, est16, "wb")


def pesq_nb(ref8: np.ndarray, est8: np.ndarray) -> float:
    """P.862.1 narrowband MOS-LQO of 8 kHz signals of equal length."""
    return _pesq(8000, ref8, est8, "nb")
