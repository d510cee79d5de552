"""Composite measures Csig, Cbak, Covl and their parts LLR, WSS and segSNR.

A re-implementation of ``composite.m`` from P. C. Loizou, *Speech Enhancement: Theory and
Practice*, 2nd ed. (2013), following the MATLAB code's arithmetic (golden values from the
unmodified MATLAB code in tests/data/scoring/golden_scores.json):

- both signals are trimmed to the shorter length and ``eps`` (2^-52) is added to every sample;
- frames of ``win = round(0.030 fs)`` samples, hop ``floor(win / 4)``,
  ``floor((L - win) / hop)`` frames (MATLAB ``1:num_frames`` with
  ``num_frames = L/hop - win/hop``), window ``0.5 (1 - cos(2 pi n / (win + 1)))``, n = 1..win;
- WSS (Klatt 1982): 25 Gaussian critical-band filters on the FFT power spectrum
  (``n_fft = 2^nextpow2(2 win)``), band energies in dB floored at 1e-10, Kmax = 20,
  Klocmax = 1, per-frame distortion normalised by the sum of the weights. Energies are NOT
  divided by 32768 (that variant makes WSS depend on the input scale);
- LLR: LPC order 10 below 10 kHz and 16 otherwise (Levinson-Durbin on the frame's
  autocorrelation), ``log(a_p R_c a_p' / a_c R_c a_c')``;
- LLR and WSS: mean of the lowest ``round(0.95 N)`` frame values (MATLAB round);
- segSNR: mean over all frames of ``10 log10(E_s / (E_n + eps) + eps)`` clamped to [-10, 35];
- Loizou's regressions with the PESQ value (here WB MOS-LQO at 16 kHz), clamped to [1, 5]:
  ``Csig = 3.093 - 1.029 LLR + 0.603 PESQ - 0.009 WSS``,
  ``Cbak = 1.634 + 0.478 PESQ - 0.007 WSS + 0.063 segSNR``,
  ``Covl = 1.594 + 0.805 PESQ - 0.512 LLR - 0.007 WSS``.

Shape legend: N: frames, W: window length, K: FFT bins, B: critical bands.
"""

from __future__ import annotations

import math

import numpy as np

from se.metrics.common import Undefined

ALPHA = 0.95  # fraction of frames kept for LLR and WSS
EPS = np.finfo(np.float64).eps  # MATLAB eps
SEGSNR_MIN, SEGSNR_MAX = -10.0, 35.0
WSS_KMAX, WSS_KLOCMAX = 20.0, 1.0

# Klatt's critical bands: centre frequencies and bandwidths (Hz), from composite.m.
CENT_FREQ = np.array([
    50.0000, 120.000, 190.000, 260.000, 330.000, 400.000, 470.000, 540.000, 617.372, 703.378,
    798.717, 904.128, 1020.38, 1148.30, 1288.72, 1442.54, 1610.70, 1794.16, 1993.93, 2211.08,
    2446.71, 2701.97, 2978.04, 3276.17, 3597.63,
])
BANDWIDTH = np.array([
    70.0000, 70.0000, 70.0000, 70.0000, 70.0000, 70.0000, 70.0000, 77.3724, 86.0056, 95.3398,
    105.411, 116.256, 127.914, 140.423, 153.823, 168.154, 183.457, 199.776, 217.153, 235.631,
    255.255, 276.072, 298.126, 321.465, 346.136,
])


def matlab_round(x: float) -> int:
    """MATLAB round for x >= 0 (half away from zero), unlike Python's round (half to even)."""
    return int(math.floor(x + 0.5))


def composite_from_parts(llr: float, wss: float, segsnr: float, pesq: float) -> dict[str, float]:
    """Loizou's regressions, each clamped to [1, 5]."""
    csig = 3.093 - 1.029 * llr + 0.603 * pesq - 0.009 * wss
    cbak = 1.634 + 0.478 * pesq - 0.007 * wss + 0.063 * segsnr
    covl = 1.594 + 0.805 * pesq - 0.512 * llr - 0.007 * wss
    return {k: float(min(5.0, max(1.0, v))) for k, v in (("csig", csig), ("cbak", cbak), ("covl", covl))}


def _framing(fs: int, length: int) -> tuple[int, int, int, np.ndarray]:
    """(win, hop, n_frames, window (W,)) as composite.m computes them."""
    win = matlab_round(30.0 * fs / 1000.0)
    hop = win // 4
    n_frames = (length - win) // hop if length >= win else 0
    n = np.arange(1, win + 1, dtype=np.float64)
    window = 0.5 * (1.0 - np.cos(2.0 * np.pi * n / (win + 1)))
    return win, hop, n_frames, window


def _frames(x: np.ndarray, win: int, hop: int, n_frames: int, window: np.ndarray) -> np.ndarray:
    """Windowed frames (N, W)."""
    idx = hop * np.arange(n_frames)[:, None] + np.arange(win)[None, :]
    return x[idx] * window[None, :]


def _crit_filters(fs: int, n_fft: int) -> np.ndarray:
    """Gaussian critical-band weights (B, K/2); weights below -30 dB set to zero."""
    max_freq = fs / 2.0
    half = n_fft // 2
    j = np.arange(half, dtype=np.float64)
    min_factor = math.exp(-30.0 / (2.0 * 2.303))
    bw_min = BANDWIDTH[0]
    filters = np.empty((len(CENT_FREQ), half))
    for i, (fc, bw_hz) in enumerate(zip(CENT_FREQ, BANDWIDTH)):
        f0 = math.floor(fc / max_freq * half)
        bw = bw_hz / max_freq * half
        norm_factor = math.log(bw_min) - math.log(bw_hz)
        f = np.exp(-11.0 * ((j - f0) / bw) ** 2 + norm_factor)
        filters[i] = f * (f > min_factor)
    return filters


def _loc_peaks(energy: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Nearest spectral peak energy for each band 1..B-1 (N, B-1), composite.m's search.

    MATLAB (1-based, slope(n) = energy(n+1) - energy(n), n = 1..B-1): if slope(i) > 0, step
    right while n < B and slope(n) > 0, peak = energy(n-1); else step left while n > 0 and
    slope(n) <= 0, peak = energy(n+1).
    """
    n_frames, nb = energy.shape  # nb = B bands, slopes 1..B-1
    # 1-based helpers with sentinels: right[n] = first m >= n with slope(m) <= 0, else B.
    right = np.full((n_frames, nb + 1), nb, dtype=np.int64)
    for n in range(nb - 1, 0, -1):
        right[:, n] = np.where(slope[:, n - 1] <= 0, n, right[:, n + 1])
    # left[n] = last m <= n with slope(m) > 0, else 0.
    left = np.zeros((n_frames, nb), dtype=np.int64)
    for n in range(1, nb):
        left[:, n] = np.where(slope[:, n - 1] > 0, n, left[:, n - 1])
    i = np.arange(1, nb)  # band index 1..B-1
    rows = np.arange(n_frames)[:, None]
    # energy(k) (1-based) = energy[:, k-1]
    peak_right = energy[rows, right[:, i] - 1 - 1]  # energy(n - 1)
    peak_left = energy[rows, left[:, i] + 1 - 1]  # energy(n + 1)
    return np.where(slope > 0, peak_right, peak_left)


def wss_frames(clean: np.ndarray, proc: np.ndarray, fs: int) -> np.ndarray:
    """Per-frame weighted spectral slope distance (N,)."""
    win, hop, n_frames, window = _framing(fs, len(clean))
    if n_frames < 1:
        return np.zeros(0)
    n_fft = 2 ** math.ceil(math.log2(2 * win))
    half = n_fft // 2
    filters = _crit_filters(fs, n_fft)  # (B, K/2)
    out = []
    for x in (clean, proc):
        spec = np.abs(np.fft.rfft(_frames(x, win, hop, n_frames, window), n_fft)) ** 2  # (N, K/2+1)
        energy = spec[:, :half] @ filters.T  # (N, B)
        out.append(10.0 * np.log10(np.maximum(energy, 1e-10)))
    e_c, e_p = out
    slope_c = e_c[:, 1:] - e_c[:, :-1]  # (N, B-1)
    slope_p = e_p[:, 1:] - e_p[:, :-1]
    peak_c = _loc_peaks(e_c, slope_c)
    peak_p = _loc_peaks(e_p, slope_p)
    w_c = (WSS_KMAX / (WSS_KMAX + e_c.max(axis=1, keepdims=True) - e_c[:, :-1])) * (
        WSS_KLOCMAX / (WSS_KLOCMAX + peak_c - e_c[:, :-1])
    )
    w_p = (WSS_KMAX / (WSS_KMAX + e_p.max(axis=1, keepdims=True) - e_p[:, :-1])) * (
        WSS_KLOCMAX / (WSS_KLOCMAX + peak_p - e_p[:, :-1])
    )
    w = (w_c + w_p) / 2.0
    return np.sum(w * (slope_c - slope_p) ** 2, axis=1) / np.sum(w, axis=1)


def _lpc(frames: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation (N, P+1) and LPC polynomial [1, -a] (N, P+1), composite.m's lpcoeff."""
    n_frames, win = frames.shape
    r = np.stack([np.sum(frames[:, : win - k] * frames[:, k:], axis=1) for k in range(order + 1)], axis=1)
    a = np.ones((n_frames, order))
    err = r[:, 0].copy()
    for i in range(order):  # MATLAB i = 1..P is i + 1 here
        past = a[:, :i].copy()
        sum_term = np.sum(past * r[:, i:0:-1], axis=1)  # a_past(1:i-1) .* R(i:-1:2)
        k = (r[:, i + 1] - sum_term) / err
        a[:, i] = k
        if i > 0:
            a[:, :i] = past - k[:, None] * past[:, ::-1]
        err = (1.0 - k * k) * err
    return r, np.concatenate([np.ones((n_frames, 1)), -a], axis=1)


def llr_frames(clean: np.ndarray, proc: np.ndarray, fs: int) -> np.ndarray:
    """Per-frame log-likelihood ratio (N,)."""
    win, hop, n_frames, window = _framing(fs, len(clean))
    if n_frames < 1:
        return np.zeros(0)
    order = 10 if fs < 10000 else 16
    r_c, a_c = _lpc(_frames(clean, win, hop, n_frames, window), order)
    _, a_p = _lpc(_frames(proc, win, hop, n_frames, window), order)
    lag = np.abs(np.arange(order + 1)[:, None] - np.arange(order + 1)[None, :])
    toe = r_c[:, lag]  # (N, P+1, P+1) toeplitz(R_clean)
    num = np.einsum("ni,nij,nj->n", a_p, toe, a_p)
    den = np.einsum("ni,nij,nj->n", a_c, toe, a_c)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(num / den)


def segsnr_frames(clean: np.ndarray, proc: np.ndarray, fs: int) -> np.ndarray:
    """Per-frame segmental SNR in dB, clamped to [-10, 35] (N,)."""
    win, hop, n_frames, window = _framing(fs, len(clean))
    if n_frames < 1:
        return np.zeros(0)
    c = _frames(clean, win, hop, n_frames, window)
    p = _frames(proc, win, hop, n_frames, window)
    signal = np.sum(c**2, axis=1)
    noise = np.sum((c - p) ** 2, axis=1)
    snr = 10.0 * np.log10(signal / (noise + EPS) + EPS)
    return np.clip(snr, SEGSNR_MIN, SEGSNR_MAX)


def _trimmed_mean(values: np.ndarray) -> float:
    """Mean of the lowest round(0.95 N) values (NaN sorts last, as in MATLAB)."""
    v = np.sort(values)
    return float(np.mean(v[: matlab_round(len(v) * ALPHA)]))


def composite_parts(clean: np.ndarray, proc: np.ndarray, fs: int) -> dict[str, float]:
    """LLR, WSS and segSNR of two signals at rate ``fs``.

    Raises Undefined when the signals are shorter than one 30 ms frame.
    """
    n = min(len(clean), len(proc))
    clean = np.asarray(clean[:n], dtype=np.float64) + EPS
    proc = np.asarray(proc[:n], dtype=np.float64) + EPS
    win = matlab_round(30.0 * fs / 1000.0)
    if (n - win) // (win // 4) < 1:
        raise Undefined(f"composite: {n} samples give no full 30 ms frame at {fs} Hz")
    # round(0.95 N) >= 1 needs N >= 1 frame (round(0.95) = 1).
    return {
        "llr": _trimmed_mean(llr_frames(clean, proc, fs)),
        "wss": _trimmed_mean(wss_frames(clean, proc, fs)),
        "segsnr": float(np.mean(segsnr_frames(clean, proc, fs))),
    }


def composite(clean: np.ndarray, proc: np.ndarray, fs: int, pesq: float) -> dict[str, float]:
    """Csig, Cbak, Covl, LLR, WSS and segSNR; ``pesq`` is the WB MOS-LQO of the same pair.

    With a NaN ``pesq`` the three composites are NaN and the parts are still returned.
    """
    parts = composite_parts(clean, proc, fs)
    if not np.isfinite(pesq):
        return {"csig": math.nan, "cbak": math.nan, "covl": math.nan, **parts}
    return {**composite_from_parts(parts["llr"], parts["wss"], parts["segsnr"], pesq), **parts}
