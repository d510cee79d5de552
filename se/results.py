"""Score files and provenance shared by se.bin.score and se.bin.make_results.

Files of a scores dir D (written by ``python -m se.bin.score``):

- ``scores.tsv``: header ``utt_id`` + one column per metric, one row per utterance sorted by
  id; undefined values are ``nan``; floats in shortest round-trip form.
- ``summary.json``: per metric the mean over defined values and the number of utterances where
  it was undefined, problem counts, rates used, implementations and versions.
- ``summary.md``: the same as a Markdown table.
- ``notes.tsv``: ``utt_id kind message`` for every trimmed file or undefined value.
- ``ref.scp``, ``est.scp``: the scored pairs (absolute paths), ``cmd``: the command.

Every file is written to a temp file and renamed (se.atomic); summary.json is removed first and written
last, so a dir with a summary.json holds one complete run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

# Packages whose versions go into summary.json and RESULTS.md (se.provenance.versions).
VERSIONED_PACKAGES = (
    "torch", "torchaudio", "numpy", "scipy", "soundfile", "pesq", "pystoi", "fast_bss_eval",
    "speechmos", "onnxruntime", "librosa", "soxr",
)  # fmt: skip


def format_value(v: float) -> str:
    return "nan" if math.isnan(v) else repr(float(v))


def scores_tsv(columns: list[str], rows: dict[str, dict[str, float]]) -> str:
    lines = ["\t".join(["utt_id", *columns])]
    for utt in sorted(rows):
        lines.append("\t".join([utt, *(format_value(rows[utt][c]) for c in columns)]))
    return "\n".join(lines) + "\n"


def read_scores_tsv(path: str | os.PathLike) -> tuple[list[str], dict[str, dict[str, float]]]:
    """(columns, {utt: {column: value}}); raises ValueError naming the file and line."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t")[0] != "utt_id":
        raise ValueError(f"{path}: line 1: expected a header starting with utt_id")
    columns = lines[0].split("\t")[1:]
    rows: dict[str, dict[str, float]] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(columns) + 1:
            raise ValueError(f"{path}: line {n}: {len(fields)} fields, expected {len(columns) + 1}")
        if fields[0] in rows:
            raise ValueError(f"{path}: line {n}: duplicate utt_id {fields[0]}")
        try:
            rows[fields[0]] = {c: float(v) for c, v in zip(columns, fields[1:])}
        except ValueError as exc:
            raise ValueError(f"{path}: line {n}: {exc}") from exc
    return columns, rows


def summarize(columns: list[str], rows: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Per column: mean over defined (finite) values, number defined and undefined."""
    out = {}
    for c in columns:
        vals = [rows[u][c] for u in rows if math.isfinite(rows[u][c])]
        out[c] = {
            "mean": (math.fsum(vals) / len(vals)) if vals else None,
            "defined": len(vals),
            "undefined": len(rows) - len(vals),
        }
    return out


def summary_markdown(summary: dict) -> str:
    """summary.json as Markdown: a table of means and undefined counts, then rates."""
    lines = [
        f"# Scores: {summary['est']}",
        "",
        f"- reference: `{summary['ref']}`" if summary.get("ref") else "- reference: none (no-reference metrics only)",
        f"- utterances: {summary['n_utts']}",
        "",
        "| metric | mean | undefined |",
        "| --- | ---: | ---: |",
    ]
    for name, m in summary["metrics"].items():
        mean = "n/a" if m["mean"] is None else f"{m['mean']:.4f}"
        lines.append(f"| {name} | {mean} | {m['undefined']} |")
    lines.append("")
    lines.append(f"Rates: {rates_sentence(summary['rates'])}")
    if summary.get("problems"):
        lines.append("")
        lines.append("Problems (utterances): " + ", ".join(f"{k} {v}" for k, v in summary["problems"].items()))
    return "\n".join(lines) + "\n"


def rates_sentence(rates: dict) -> str:
    """summary.json's rates as text, columns grouped by rate, e.g. 'pesq_wb/stoi at 16 kHz copies;
    pesq_nb at 8 kHz copies; si_sdr/lsd at 48 kHz (native); resampler: soxr ... VHQ'."""

    def khz(r) -> str:
        return f"{r / 1000:g} kHz"

    by_rate: dict[str, list[str]] = {}
    for name, rate in rates.items():
        if name in ("native", "resampler"):
            continue
        if isinstance(rate, list):
            where = f"{'/'.join(khz(r) for r in rate) or 'the native rate'} (native)"
        else:
            where = f"{khz(rate)} copies"
        by_rate.setdefault(where, []).append(name)
    parts = [f"{'/'.join(names)} at {where}" for where, names in by_rate.items()]
    return "; ".join(parts + [f"resampler: {rates.get('resampler', 'unknown')}"])


def read_scores_dir(d: str | os.PathLike, files: tuple[str, ...], missing: str
                    ) -> tuple[list[str], dict[str, dict[str, float]]]:
    """(columns, rows) of ``d/scores.tsv`` once score dir ``d`` holds every file of ``files``.

    Raises ValueError ``<d>/<file>: <missing>`` for the first file that is not there, or
    naming the scores.tsv line that is wrong (:func:`read_scores_tsv`)."""
    for name in files:
        if not (Path(d) / name).is_file():
            raise ValueError(f"{Path(d) / name}: {missing}")
    return read_scores_tsv(Path(d) / "scores.tsv")


def read_summary(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
