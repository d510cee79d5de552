"""Score one (reference, estimate) pair: input checks, rate copies, every requested metric.

Policies (also in summary.json and the score CLI's help):

- Estimate with NaN/Inf samples: every metric undefined.
- Reference with NaN/Inf samples, or an all-zero (silent) reference: every reference-based
  metric undefined; DNSMOS (no reference) is still computed on the estimate.
- Length mismatch: if the lengths differ by at most ``max_len_diff`` seconds both signals are
  trimmed to the shorter (enhancement front-ends often add or drop a few samples of STFT
  padding) and a "trimmed" note is kept; a larger difference means the files do not belong
  together, so the reference-based metrics are undefined ("length_mismatch").
- PESQ, STOI, composite, DNSMOS and PLCMOS see 16 kHz copies (PESQ NB an 8 kHz copy) made with
  ``common.resample``; SI-SDR, SNR, BSS-Eval SDR and LSD use the native rate. Wideband PESQ (and so
  Csig/Cbak/Covl) is undefined for native rates below 16 kHz.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from se.metrics import DNSMOS, GROUPS, NO_REFERENCE
from se.metrics.common import RESAMPLER, Undefined, resample

METRIC_RATE = 16000  # rate of the copies for PESQ WB, STOI, composite, DNSMOS
NB_RATE = 8000  # rate of the copies for PESQ NB


@dataclass
class PairResult:
    """``values``: column -> float (NaN when undefined); ``notes``: (kind, message) pairs."""

    values: dict[str, float]
    notes: list[tuple[str, str]] = field(default_factory=list)


class _Copies:
    """Lazily made, cached resampled copies of one signal pair."""

    def __init__(self, ref: np.ndarray, est: np.ndarray, fs: int):
        self.fs = fs
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {fs: (ref, est)}

    def at(self, rate: int) -> tuple[np.ndarray, np.ndarray]:
        if rate not in self._cache:
            ref, est = self._cache[self.fs]
            self._cache[rate] = (resample(ref, self.fs, rate), resample(est, self.fs, rate))
        return self._cache[rate]


def _run(values: dict, notes: list, cols: list[str], fn: Callable[[], dict[str, float]]) -> None:
    """Fill ``cols`` from ``fn()``; an Undefined or any other failure leaves NaN and a note."""
    try:
        out = fn()
    except Undefined as exc:
        notes.append(("undefined", f"{','.join(cols)}: {exc}"))
        return
    except Exception as exc:  # a library failure on one pair must not end the run
        notes.append(("error", f"{','.join(cols)}: {type(exc).__name__}: {exc}"))
        return
    for c in cols:
        values[c] = float(out[c])


def _reference_problem(ref, est, fs, max_len_diff) -> tuple[str, str] | None:
    bad = int(np.count_nonzero(~np.isfinite(ref)))
    if bad:
        return "nonfinite_ref", f"reference has {bad} NaN/Inf samples: reference-based metrics undefined"
    if len(ref) != len(est):
        diff = abs(len(ref) - len(est))
        if diff > max_len_diff * fs:
            return "length_mismatch", (
                f"reference {len(ref)} vs estimate {len(est)} samples ({diff / fs:.3f} s apart, "
                f"more than --max-len-diff {max_len_diff} s): reference-based metrics undefined"
            )
    if not np.any(ref):
        return "silent_reference", "reference is all zeros: reference-based metrics undefined"
    return None


def score_pair(
    ref: np.ndarray | None, est: np.ndarray, fs: int, columns: list[str], max_len_diff: float = 0.1
) -> PairResult:
    """Compute ``columns`` for one pair sampled at ``fs`` Hz (1-D arrays).

    ``ref`` None: no clean reference (only the NO_REFERENCE columns may be asked for).
    """
    values = {c: math.nan for c in columns}
    notes: list[tuple[str, str]] = []
    if ref is None:
        need = [c for c in columns if c not in NO_REFERENCE]
        if need:
            raise ValueError(f"{', '.join(need)} need a reference signal")
    else:
        ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    est = np.asarray(est, dtype=np.float64).reshape(-1)
    bad = int(np.count_nonzero(~np.isfinite(est)))
    if bad:
        notes.append(("nonfinite_est", f"estimate has {bad} NaN/Inf samples: every metric undefined"))
        return PairResult(values, notes)

    ref_cols = [c for c in columns if c not in NO_REFERENCE]
    if ref_cols:
        problem = _reference_problem(ref, est, fs, max_len_diff)
        if problem:
            notes.append(problem)
        else:
            n = min(len(ref), len(est))
            if len(ref) != len(est):
                notes.append(("trimmed", f"reference {len(ref)} vs estimate {len(est)} samples: both trimmed to {n}"))
            _score_with_reference(_Copies(ref[:n], est[:n], fs), ref_cols, values, notes)

    noref_cols = [c for c in columns if c in NO_REFERENCE]
    if noref_cols:
        from se.metrics.dnsmos import dnsmos
        from se.metrics.plcmos import plcmos

        x16 = resample(est, fs, METRIC_RATE)
        peak = float(np.max(np.abs(x16))) if x16.size else 0.0
        if peak > 1.0:
            notes.append(("clipped_for_dnsmos", f"estimate peak {peak:.3f} > 1: clipped to [-1, 1] for DNSMOS/PLCMOS"))
            x16 = np.clip(x16, -1.0, 1.0)
        dns_cols = [c for c in noref_cols if c in DNSMOS]
        if dns_cols:
            _run(values, notes, dns_cols, lambda: dnsmos(x16))
        if "plcmos" in noref_cols:
            _run(values, notes, ["plcmos"], lambda: plcmos(x16))
    return PairResult(values, notes)


def _score_with_reference(sig: _Copies, cols: list[str], values: dict, notes: list) -> None:
    from se.metrics import composite as comp
    from se.metrics import pesq_mos, sdr, stoi

    want = set(cols)
    fs = sig.fs
    composite_cols = [c for c in GROUPS["composite"] if c in want]

    # PESQ WB is also the PESQ term of the composite measures.
    pesq_wb = math.nan
    pesq_wb_reason = ""
    if "pesq_wb" in want or composite_cols:
        try:
            if fs < METRIC_RATE:
                raise Undefined(f"PESQ wb: native rate {fs} Hz is below 16 kHz")
            pesq_wb = pesq_mos.pesq_wb(*sig.at(METRIC_RATE))
        except Undefined as exc:
            pesq_wb_reason = str(exc)
        except Exception as exc:
            pesq_wb_reason = f"PESQ wb: {type(exc).__name__}: {exc}"
        if "pesq_wb" in want:
            if pesq_wb_reason:
                notes.append(("undefined", f"pesq_wb: {pesq_wb_reason}"))
            values["pesq_wb"] = pesq_wb
    if "pesq_nb" in want:
        _run(values, notes, ["pesq_nb"], lambda: {"pesq_nb": pesq_mos.pesq_nb(*sig.at(NB_RATE))})
    if "stoi" in want:
        _run(values, notes, ["stoi"], lambda: {"stoi": stoi.stoi(*sig.at(METRIC_RATE), METRIC_RATE)})
    if "estoi" in want:
        _run(
            values, notes, ["estoi"],
            lambda: {"estoi": stoi.stoi(*sig.at(METRIC_RATE), METRIC_RATE, extended=True)},
        )  # fmt: skip
    if "si_sdr" in want:
        _run(values, notes, ["si_sdr"], lambda: {"si_sdr": sdr.si_sdr(*sig.at(fs))})
    if "snr" in want:
        _run(values, notes, ["snr"], lambda: {"snr": sdr.snr(*sig.at(fs))})
    if "sdr" in want:
        _run(values, notes, ["sdr"], lambda: {"sdr": sdr.bss_sdr(*sig.at(fs))})
    if "lsd" in want:
        from se.metrics.lsd import lsd

        _run(values, notes, ["lsd"], lambda: {"lsd": lsd(*sig.at(fs), fs)})
    if composite_cols:
        _run(values, notes, composite_cols, lambda: comp.composite(*sig.at(METRIC_RATE), METRIC_RATE, pesq_wb))
        regression_cols = [c for c in ("csig", "cbak", "covl") if c in composite_cols]
        if regression_cols and pesq_wb_reason:
            notes.append(("undefined", f"{','.join(regression_cols)}: need PESQ wb ({pesq_wb_reason})"))


def rates_used(native_rates: list[int]) -> dict:
    """The rate each metric was computed at, for summary.json and RESULTS.md."""
    native = sorted(set(int(r) for r in native_rates))
    return {
        "native": native,
        "pesq_wb": METRIC_RATE,
        "pesq_nb": NB_RATE,
        "stoi": METRIC_RATE,
        "estoi": METRIC_RATE,
        "composite": METRIC_RATE,
        "dnsmos": METRIC_RATE,
        "plcmos": METRIC_RATE,
        "si_sdr": native,
        "lsd": native,
        "snr": native,
        "sdr": native,
        "resampler": RESAMPLER,
    }


def metric_info() -> dict[str, str]:
    """One line per metric family: implementation and version."""
    from importlib.metadata import version

    from se.metrics.dnsmos import dnsmos_version
    from se.metrics.pesq_mos import pesq_version
    from se.metrics.plcmos import plcmos_version

    return {
        "pesq": pesq_version(),
        "stoi": f"pystoi {version('pystoi')} (stoi: Taal 2011, estoi: Jensen & Taal 2016)",
        "si_sdr": "zero-mean scale-invariant SDR (Le Roux 2019), dB, native rate",
        "snr": "10 log10(|s|^2 / |s - y|^2), dB, native rate",
        "sdr": f"fast_bss_eval {version('fast_bss_eval')} sdr (BSS-Eval, 512-tap filter), dB, native rate",
        "composite": "Loizou composite.m (2nd ed.) re-implemented in se/metrics/composite.py; PESQ term = pesq_wb",
        "lsd": "log-spectral distance (URGENT 2025 definition: gain-matched, 32/16 ms Hann STFT, natural log), "
        "native rate; se/metrics/lsd.py",
        "dnsmos": dnsmos_version(),
        "plcmos": plcmos_version(),
    }
