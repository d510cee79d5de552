"""Shared pieces of the metric families: the Undefined signal and the resampler."""

from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import resample_poly

# Every metric that is not computed at the native rate sees a copy made by this resampler.
RESAMPLER = "scipy.signal.resample_poly (polyphase FIR, Kaiser window beta=5.0)"


class Undefined(Exception):
    """A metric has no value for this pair; the message says why (e.g. silent reference).

    The scorer writes NaN for the metric, counts it and records the message; it is never an
    error of the whole run.
    """


def resample(x: np.ndarray, fs_in: int, fs_out: int) -> np.ndarray:
    """Polyphase resampling ``fs_in`` -> ``fs_out`` (float64 in and out).

    16 kHz -> 8 kHz is ``resample_poly(x, 1, 2)``: the convention of the golden PESQ NB value
    in tests/data/scoring/golden_scores.json.
    """
    x = np.asarray(x, dtype=np.float64)
    if fs_in == fs_out:
        return x
    g = gcd(int(fs_in), int(fs_out))
    return resample_poly(x, int(fs_out) // g, int(fs_in) // g)


def finite_or_undefined(value: float, what: str) -> float:
    """Return ``value`` as float, or raise Undefined if it is NaN or infinite."""
    value = float(value)
    if not np.isfinite(value):
        raise Undefined(f"{what} is {value}")
    return value
