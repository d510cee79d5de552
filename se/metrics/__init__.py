"""Speech-enhancement metrics: THE table of metrics, one module per family, one entry point per pair.

``METRICS`` below is the only list of metrics. Everything else is derived from it: the columns
of scores.tsv (``COLUMNS``, in table order), the names accepted by ``--metrics`` (``GROUPS``),
the rate each metric is computed at (``rates_used``), the help of ``python -m se.bin.score`` and
the metric descriptions of summary.json and RESULTS.md (``metric_info``). Adding a metric means
writing its function in a metric module and adding a row here.

``score_pair`` (pair.py) turns one (reference, estimate) pair into one row; a value that does
not exist for the pair (silent reference, too short, ...) is NaN with a note, never an
exception. ``metric_value(column, ref, est, fs)`` is the same computation for one column (e.g.
the PESQ logged during training, so that it equals the scorer's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from se.metrics import composite, dnsmos, lsd, pesq_mos, plcmos, sdr, stoi

NATIVE = None  # Metric.rate of metrics computed at the native rate of the files


@dataclass(frozen=True)
class Metric:
    """One column of scores.tsv.

    ``function(ref, est, rate, *needs)`` gets the pair at ``rate`` (a copy made by se.resample, or
    the files' own samples when ``rate`` is NATIVE; ``ref`` is None for no-reference metrics) and
    returns the value, or ``{column: value}`` for every metric that shares the function (they
    are computed in one call). It raises ``Undefined`` when the value does not exist for the pair.
    ``needs``: columns computed first (even when not asked for) whose values are passed on.
    ``upsample`` False: undefined when the native rate is below ``rate``, not computed on an
    upsampled copy. No-reference metrics see the estimate clipped to [-1, 1].
    """

    column: str
    group: str  # family: a --metrics name that selects it, unless it is also a column's name
    rate: int | None
    function: Callable
    description: str
    reference: bool = True
    needs: tuple[str, ...] = ()
    upsample: bool = True


_PESQ = "ITU-T P.862 reference C code (pesq package)"
_LOIZOU = "Loizou's composite.m (2nd ed.)"
_DNSMOS = "no reference, speechmos ONNX models (Reddy 2022), no level normalisation"


def _dnsmos(ref, est, fs: int) -> dict[str, float]:  # one call gives the four DNSMOS columns
    return dnsmos.dnsmos(est)


METRICS: tuple[Metric, ...] = (
    Metric("pesq_wb", "pesq", 16000, lambda r, e, fs: pesq_mos.pesq_wb(r, e),
           f"PESQ wideband MOS-LQO, P.862.2 without corrigendum 2, {_PESQ}", upsample=False),
    Metric("pesq_nb", "pesq", 8000, lambda r, e, fs: pesq_mos.pesq_nb(r, e),
           f"PESQ narrowband MOS-LQO, P.862.1, {_PESQ}"),
    Metric("stoi", "stoi", 16000, lambda r, e, fs: stoi.stoi(r, e, fs),
           "STOI (Taal 2011), pystoi"),
    Metric("estoi", "stoi", 16000, lambda r, e, fs: stoi.stoi(r, e, fs, extended=True),
           "extended STOI (Jensen & Taal 2016), pystoi"),
    Metric("si_sdr", "energy", NATIVE, lambda r, e, fs: sdr.si_sdr(r, e),
           "scale-invariant SDR of zero-mean signals (Le Roux 2019), dB"),
    Metric("snr", "energy", NATIVE, lambda r, e, fs: sdr.snr(r, e),
           "SNR 10 log10(|s|^2 / |s - y|^2), dB"),
    Metric("sdr", "energy", NATIVE, lambda r, e, fs: sdr.bss_sdr(r, e),
           "BSS-Eval SDR with a 512-tap filter (fast_bss_eval), dB"),
    *(Metric(column, "composite", 16000, composite.composite, f"{what}; {_LOIZOU}", needs=("pesq_wb",))
      for column, what in (
          ("csig", "Csig, predicted signal distortion MOS (1-5) from LLR, WSS and pesq_wb"),
          ("cbak", "Cbak, predicted background intrusiveness MOS (1-5) from WSS, segSNR and pesq_wb"),
          ("covl", "Covl, predicted overall quality MOS (1-5) from LLR, WSS and pesq_wb"),
          ("llr", "log-likelihood ratio of LPC models, mean of the best 95% of frames"),
          ("wss", "weighted-slope spectral distance (Klatt 1982), mean of the best 95% of frames"),
          ("segsnr", "segmental SNR, frames clamped to [-10, 35] dB"),
      )),
    Metric("lsd", "lsd", NATIVE, lsd.lsd,
           "log-spectral distance, URGENT 2025 definition (gain-matched, 32/16 ms Hann STFT, natural log)"),
    *(Metric(column, "dnsmos", 16000, _dnsmos, f"{what}; {_DNSMOS}", reference=False)
      for column, what in (
          ("dnsmos_sig", "DNSMOS P.835 speech signal quality"),
          ("dnsmos_bak", "DNSMOS P.835 background noise quality"),
          ("dnsmos_ovrl", "DNSMOS P.835 overall quality"),
          ("dnsmos_p808", "DNSMOS P.808 MOS"),
      )),
    Metric("plcmos", "plcmos", 16000, lambda r, e, fs: plcmos.plcmos(e),
           f"PLCMOS v2 (Mack 2023), no reference: speechmos plcmos_v2.onnx, mean of {plcmos.RATERS} fixed "
           f"rater embeddings", reference=False),
)  # fmt: skip


def _groups(metrics: tuple[Metric, ...]) -> dict[str, tuple[str, ...]]:
    """--metrics names besides the columns: all, each family, noref and nodnsmos."""
    columns = tuple(m.column for m in metrics)
    groups = {"all": columns}
    for m in metrics:
        groups[m.group] = groups.get(m.group, ()) + (m.column,)
    groups["noref"] = tuple(m.column for m in metrics if not m.reference)  # DNSMOS and PLCMOS
    groups["nodnsmos"] = tuple(m.column for m in metrics if m.reference)  # every reference-based metric
    # a family named like one of its columns (stoi, lsd, plcmos) is not a group: the name is the column
    return {g: cols for g, cols in groups.items() if g not in columns}


def check_table(metrics: tuple[Metric, ...]) -> None:
    """Raises ValueError when the table is inconsistent (run at import and by the tests)."""
    seen: dict[str, Metric] = {}
    for m in metrics:
        if m.column in seen:
            raise ValueError(f"metric {m.column} is in the table twice")
        for need in m.needs:
            if need not in seen or not seen[need].reference:
                raise ValueError(f"metric {m.column} needs {need}, which must be an earlier reference metric")
        seen[m.column] = m
    for m in metrics:  # all rows known now: a family may be named like a later column
        if m.group in seen and seen[m.group].group != m.group:
            raise ValueError(f"family {m.group} of {m.column} has the name of a column of another family")


check_table(METRICS)


def columns() -> tuple[str, ...]:
    """scores.tsv columns in table order."""
    return tuple(m.column for m in METRICS)


def groups() -> dict[str, tuple[str, ...]]:
    return _groups(METRICS)


def by_column() -> dict[str, Metric]:
    return {m.column: m for m in METRICS}


def no_reference() -> frozenset[str]:
    """Columns computed from the estimate alone: the only ones for sets without a clean reference."""
    return frozenset(m.column for m in METRICS if not m.reference)


def parse_metrics(spec: str) -> list[str]:
    """``"pesq,stoi,si_sdr"`` -> columns in table order; unknown names raise ValueError."""
    cols, grps = columns(), groups()
    wanted: set[str] = set()
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            continue
        if name in grps:
            wanted.update(grps[name])
        elif name in cols:
            wanted.add(name)
        else:
            raise ValueError(
                f"unknown metric '{name}'; choose from {', '.join(cols)} or the groups {', '.join(grps)}"
            )
    if not wanted:
        raise ValueError("no metric selected")
    return [c for c in cols if c in wanted]


def metric_info() -> dict[str, str]:
    """column -> description with the rate it is computed at (summary.json, RESULTS.md)."""

    def rate(m: Metric) -> str:
        if m.rate is NATIVE:
            return "native rate"
        return f"{m.rate / 1000:g} kHz copy" + ("" if m.upsample else ", never upsampled")

    return {m.column: f"{m.description}; {rate(m)}" for m in METRICS}


from se.metrics.common import Undefined  # noqa: E402
from se.metrics.pair import PairResult, metric_value, rates_used, score_pair  # noqa: E402

__all__ = [
    "METRICS", "NATIVE", "Metric", "PairResult", "Undefined", "by_column", "check_table", "columns", "groups",
    "metric_info", "metric_value", "no_reference", "parse_metrics", "rates_used", "score_pair",
]  # fmt: skip
