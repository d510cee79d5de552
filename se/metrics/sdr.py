"""Energy-ratio metrics at the native sample rate (dB).

- ``si_sdr``: scale-invariant SDR (Le Roux et al. 2019) of zero-mean signals:
  ``a = <y, s> / <s, s>``, ``SI-SDR = 10 log10(|a s|^2 / |a s - y|^2)``.
- ``snr``: plain ``10 log10(|s|^2 / |s - y|^2)`` (no mean removal, no scaling).
- ``bss_sdr``: BSS-Eval SDR (Vincent et al. 2006) with a 512-tap distortion filter, through
  ``fast_bss_eval`` (its defaults: no mean removal, direct solve).

Non-finite results (identical signals give +inf) are reported as undefined.
"""

from __future__ import annotations

import numpy as np

from se.metrics.common import Undefined, finite_or_undefined


def si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    n = min(len(ref), len(est))
    s = np.asarray(ref[:n], dtype=np.float64)
    y = np.asarray(est[:n], dtype=np.float64)
    s = s - s.mean()
    y = y - y.mean()
    ss = np.dot(s, s)
    if ss == 0.0:
        raise Undefined("SI-SDR: reference is constant")
    if not np.any(y):
        raise Undefined("SI-SDR: estimate is constant")
    target = (np.dot(y, s) / ss) * s
    err = target - y
    with np.errstate(divide="ignore", invalid="ignore"):
        return finite_or_undefined(10.0 * np.log10(np.dot(target, target) / np.dot(err, err)), "SI-SDR")


def snr(ref: np.ndarray, est: np.ndarray) -> float:
    s = np.asarray(ref, dtype=np.float64)
    y = np.asarray(est, dtype=np.float64)
    noise = s - y
    with np.errstate(divide="ignore", invalid="ignore"):
        return finite_or_undefined(10.0 * np.log10(np.dot(s, s) / np.dot(noise, noise)), "SNR")


def bss_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    import fast_bss_eval

    s = np.asarray(ref, dtype=np.float64)[None, :]
    y = np.asarray(est, dtype=np.float64)[None, :]
    if not np.any(y):
        raise Undefined("BSS-Eval SDR: estimate is all zeros")
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = fast_bss_eval.sdr(s, y)
    except (np.linalg.LinAlgError, ValueError) as exc:
        raise Undefined(f"BSS-Eval SDR: {type(exc).__name__} ({exc})") from exc
    return finite_or_undefined(np.asarray(value).reshape(-1)[0], "BSS-Eval SDR")
