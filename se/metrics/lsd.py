"""Log-spectral distance (LSD), the URGENT 2025 challenge definition, at the native rate.

Used to see what bandwidth limitation and codecs remove: energy missing from a band of the
estimate shows up as a large log-power ratio in that band, whatever the waveform alignment.

    y' = a y with a = <s, y> / (<y, y> + eps)          (least-squares gain; level does not count)
    S, Y' = |STFT| of s and y': periodic Hann window of round(0.032 fs) samples, hop
            round(0.016 fs), FFT size = window, frames centred (n_fft // 2 zeros padded each side)
    LSD = mean over frames t of sqrt( mean over bins f of ln( S^2 / (Y' + eps)^2 + eps )^2 )

with eps = 1e-8 (natural logarithm, unitless; 0 for identical signals). Bins where the
reference is exactly zero contribute ln(eps)^2, as in the challenge's scorer, so digital silence
in the reference weighs heavily: score speech, not padded files.
"""

from __future__ import annotations

import numpy as np

from se.metrics.common import Undefined, finite_or_undefined

EPS = 1e-8
WIN_S = 0.032
HOP_S = 0.016


def _magnitude(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT| (frames, n_fft // 2 + 1) with centred frames and a periodic Hann window."""
    pad = n_fft // 2
    x = np.pad(x, (pad, pad))
    n_frames = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    return np.abs(np.fft.rfft(x[idx] * window, axis=1))


def lsd(ref: np.ndarray, est: np.ndarray, fs: int) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    est = np.asarray(est, dtype=np.float64)
    n_fft, hop = int(round(WIN_S * fs)), int(round(HOP_S * fs))
    if len(ref) < n_fft:
        raise Undefined(f"LSD: {len(ref)} samples, shorter than one {n_fft}-sample frame")
    est = est * (np.dot(ref, est) / (np.dot(est, est) + EPS))
    s, y = _magnitude(ref, n_fft, hop), _magnitude(est, n_fft, hop)
    d = np.log(s**2 / (y + EPS) ** 2 + EPS) ** 2
    return finite_or_undefined(np.mean(np.sqrt(np.mean(d, axis=1))), "LSD")
