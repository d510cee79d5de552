"""STOI (Taal et al. 2011) and extended STOI (Jensen & Taal 2016) through ``pystoi``.

The scorer passes 16 kHz copies; pystoi resamples them to its internal 10 kHz. pystoi returns
1e-5 (with a RuntimeWarning) when fewer than 30 frames remain after removing silent frames;
that value is not a score, so it is reported as undefined instead.
"""

from __future__ import annotations

import warnings

import numpy as np

from se.metrics.common import Undefined, finite_or_undefined


def stoi(ref: np.ndarray, est: np.ndarray, fs: int, extended: bool = False) -> float:
    from pystoi import stoi as _stoi

    name = "eSTOI" if extended else "STOI"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = _stoi(ref, est, fs, extended=extended)
    for w in caught:
        if "Not enough STFT frames" in str(w.message):
            raise Undefined(f"{name}: fewer than 30 non-silent 25.6 ms frames (signal too short or silent)")
    return finite_or_undefined(value, name)
