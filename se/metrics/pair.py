"""Score one (reference, estimate) pair: input checks, rate copies, every requested metric.

Policies (also in summary.json and the score CLI's help):

- Estimate with NaN/Inf samples: every metric undefined.
- Reference with NaN/Inf samples, or an all-zero (silent) reference: every reference-based
  metric undefined; the no-reference metrics are still computed on the estimate.
- Length mismatch: if the lengths differ by at most ``max_len_diff`` seconds both signals are
  trimmed to the shorter (enhancement front-ends often add or drop a few samples of STFT
  padding) and a "trimmed" note is kept; a larger difference means the files do not belong
  together, so the reference-based metrics are undefined ("length_mismatch").
- Each metric sees the pair at the rate of its row in ``se.metrics.METRICS``: the native
  samples, or a copy made by ``se.resample.resample`` (made once per rate and pair).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import se.metrics as table
from se.metrics.common import Undefined
from se.resample import RESAMPLER, resample


@dataclass
class PairResult:
    """``values``: column -> float (NaN when undefined); ``notes``: (kind, message) pairs."""

    values: dict[str, float]
    notes: list[tuple[str, str]] = field(default_factory=list)


class _Copies:
    """Lazily made, cached resampled copies of one signal pair (``ref`` None: estimate only).

    ``clip``: the estimate copies are clipped to [-1, 1] (``peak``: their largest magnitude before).
    """

    def __init__(self, ref: np.ndarray | None, est: np.ndarray, fs: int, clip: bool = False):
        self.fs, self.clip, self.peak = fs, clip, 0.0
        self._native = (ref, est)
        self._cache: dict[int, tuple[np.ndarray | None, np.ndarray]] = {}

    def at(self, rate: int | None) -> tuple[np.ndarray | None, np.ndarray]:
        rate = self.fs if rate is None else rate
        if rate not in self._cache:
            ref, est = self._native
            if rate != self.fs:
                ref = None if ref is None else resample(ref, self.fs, rate)
                est = resample(est, self.fs, rate)
            if self.clip:
                self.peak = max(self.peak, float(np.max(np.abs(est), initial=0.0)))
                est = np.clip(est, -1.0, 1.0)
            self._cache[rate] = (ref, est)
        return self._cache[rate]


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


def _compute(metrics: list, copies: _Copies, values: dict, notes: list) -> None:
    """Fill ``values`` for ``metrics`` (rows of the table), computing what they need first.

    Metrics that share a function are computed in one call; a failure (Undefined or a library
    error) leaves NaN and a note for the requested columns, never an exception.
    """
    todo = {m.column for m in metrics} | {n for m in metrics for n in m.needs}
    known: dict[str, float] = {}
    why: dict[str, str] = {}  # column -> why it is undefined
    done: set[str] = set()
    for m in table.METRICS:  # table order: what a metric needs comes before it
        if m.column not in todo or m.column in done:
            continue
        group = [r.column for r in table.METRICS if r.function is m.function and r.column in todo]
        done.update(group)
        asked = [c for c in group if c in values]
        try:
            if not m.upsample and copies.fs < m.rate:
                raise Undefined(f"native rate {copies.fs} Hz is below {m.rate / 1000:g} kHz")
            ref, est = copies.at(m.rate)
            out = m.function(ref, est, m.rate or copies.fs, *(known[n] for n in m.needs))
        except Undefined as exc:
            kind, reason = "undefined", str(exc)
        except Exception as exc:  # a library failure on one pair must not end the run
            kind, reason = "error", f"{type(exc).__name__}: {exc}"
        else:
            out = out if isinstance(out, dict) else {m.column: out}
            for c in group:
                known[c] = float(out[c])
                if c in values:
                    values[c] = known[c]
            missing = [f"{n} ({why[n]})" for n in m.needs if n in why]
            nan_asked = [c for c in asked if math.isnan(values[c])]
            if missing and nan_asked:
                notes.append(("undefined", f"{','.join(nan_asked)}: need {', '.join(missing)}"))
            continue
        for c in group:
            known[c], why[c] = math.nan, reason
        if asked:
            notes.append((kind, f"{','.join(asked)}: {reason}"))


def score_pair(
    ref: np.ndarray | None, est: np.ndarray, fs: int, columns: list[str], max_len_diff: float = 0.1
) -> PairResult:
    """Compute ``columns`` for one pair sampled at ``fs`` Hz (1-D arrays).

    ``ref`` None: no clean reference (only no-reference columns may be asked for).
    """
    rows = table.by_column()
    unknown = [c for c in columns if c not in rows]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}")
    values = {c: math.nan for c in columns}
    notes: list[tuple[str, str]] = []
    with_ref = [rows[c] for c in columns if rows[c].reference]
    without_ref = [rows[c] for c in columns if not rows[c].reference]
    if ref is None and with_ref:
        raise ValueError(f"{', '.join(m.column for m in with_ref)} need a reference signal")
    est = np.asarray(est, dtype=np.float64).reshape(-1)
    bad = int(np.count_nonzero(~np.isfinite(est)))
    if bad:
        notes.append(("nonfinite_est", f"estimate has {bad} NaN/Inf samples: every metric undefined"))
        return PairResult(values, notes)

    if with_ref:
        ref = np.asarray(ref, dtype=np.float64).reshape(-1)
        problem = _reference_problem(ref, est, fs, max_len_diff)
        if problem:
            notes.append(problem)
        else:
            n = min(len(ref), len(est))
            if len(ref) != len(est):
                notes.append(("trimmed", f"reference {len(ref)} vs estimate {len(est)} samples: both trimmed to {n}"))
            _compute(with_ref, _Copies(ref[:n], est[:n], fs), values, notes)

    if without_ref:  # the models score the waveform as a 16-bit file would hold it
        copies = _Copies(None, est, fs, clip=True)
        for m in without_ref:
            copies.at(m.rate)
        if copies.peak > 1.0:
            notes.append(("clipped_for_dnsmos",
                          f"estimate peak {copies.peak:.3f} > 1: clipped to [-1, 1] for the no-reference metrics"))
        _compute(without_ref, copies, values, notes)
    return PairResult(values, notes)


def metric_value(column: str, ref: np.ndarray | None, est: np.ndarray, fs: int) -> float:
    """One column of ``score_pair`` for one pair at ``fs`` Hz: exactly the scorer's value, NaN
    when undefined (e.g. ``metric_value("pesq_wb", clean, enhanced, 48000)`` for training logs)."""
    return score_pair(ref, est, fs, [column]).values[column]


def rates_used(native_rates: list[int], columns: list[str]) -> dict:
    """The rate each of ``columns`` was computed at (native: the list of native rates), and the
    resampler of the copies."""
    native = sorted(set(int(r) for r in native_rates))
    rows = table.by_column()
    return {
        "native": native,
        **{c: (native if rows[c].rate is None else rows[c].rate) for c in columns},
        "resampler": RESAMPLER,
    }
