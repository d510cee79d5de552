"""Write EXP/RESULTS.md (ESPnet style) from the score dirs of an experiment.

    python -m se.bin.make_results --exp-dir EXP --scores-root EXP/scores [--cmd "..."] \
        [--compare LABEL=OTHER_EXP/scores ...]

Expects ``SCORES_ROOT/<test_set>/noisy/`` (the unprocessed input scored against the clean
references: the baseline row) and ``SCORES_ROOT/<test_set>/enhanced/``, each written by
steps/score.sh or ``python -m se.bin.score``. RESULTS.md holds the date, versions, git sha
(``git describe --always --dirty`` of this repository), the commands (each score dir's ``cmd``
file plus every ``--cmd``), and per test set: a table with the noisy, enhanced and difference
rows, the rates the metrics were computed at, a scatter plot of per-utterance PESQ WB and
SI-SDR (enhanced vs noisy), and spectrograms (noisy / enhanced / clean) of the utterances with
the best, median and worst SI-SDR improvement. Images go to EXP/images/.
``--compare LABEL=SCORES_ROOT`` adds the enhanced row of another experiment scored on the same
test sets (same utterances, checked) to each table, e.g. a causal model beside its offline
counterpart.
"""

from __future__ import annotations

import argparse
import datetime
import io
import math
import sys
from pathlib import Path

from se.cli import UserError, check_output_dir, run as run_cli

BASELINE, SYSTEM = "noisy", "enhanced"


class ResultsError(UserError):
    """A missing or inconsistent input; the message names the path."""


def find_test_sets(scores_root: Path) -> list[str]:
    sets = sorted(d.name for d in scores_root.iterdir() if d.is_dir() and (d / SYSTEM).is_dir())
    if not sets:
        raise ResultsError(f"{scores_root}: no <test_set>/{SYSTEM}/ score dirs found (run steps/score.sh first)")
    return sets


def load_set(scores_root: Path, test_set: str) -> dict:
    from se.results import read_scores_dir, read_summary

    out = {}
    for kind in (BASELINE, SYSTEM):
        d = scores_root / test_set / kind
        hint = " (score the unprocessed noisy input too: it is the baseline row)" if kind == BASELINE else ""
        try:
            columns, rows = read_scores_dir(d, ("summary.json", "scores.tsv"), f"not found{hint}")
        except ValueError as exc:
            raise ResultsError(str(exc)) from exc
        out[kind] = {"dir": d, "summary": read_summary(d / "summary.json"), "columns": columns, "rows": rows}
    return out


def read_scp(path: Path) -> dict[str, str]:
    """utt -> path of a score dir's ref.scp/est.scp ({} when the file is not there)."""
    from se.data import DataDirError, read_scp as read

    if not path.is_file():
        return {}
    try:
        return read(path)
    except DataDirError as exc:
        raise ResultsError(str(exc)) from None


def metric_descriptions(columns: list[str]) -> list[str]:
    """Markdown list: what each scored column is (se.metrics.METRICS, the one table)."""
    from se.metrics import metric_info

    info = metric_info()
    return [f"- `{c}`: {info[c]}" for c in columns if c in info]


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def load_compare(spec: str, test_set: str, data: dict) -> tuple[str, dict]:
    """``LABEL=SCORES_ROOT`` -> (label, enhanced summary of that experiment on ``test_set``),
    checked to cover the same utterances as this experiment."""
    from se.results import read_scores_dir, read_summary

    label, sep, root = spec.partition("=")
    if not sep or not label or not root:
        raise ResultsError(f"--compare {spec!r}: expected LABEL=SCORES_ROOT, e.g. offline=exp/FRCRN_SE_16K/scores")
    d = Path(root) / test_set / SYSTEM
    try:
        _, rows = read_scores_dir(d, ("summary.json", "scores.tsv"),
                                  f"not found (--compare {spec}: score that experiment on {test_set} first)")
    except ValueError as exc:
        raise ResultsError(str(exc)) from exc
    if set(rows) != set(data[SYSTEM]["rows"]):
        raise ResultsError(f"{d / 'scores.tsv'}: not the same utterances as {data[SYSTEM]['dir'] / 'scores.tsv'} "
                           f"({len(rows)} vs {len(data[SYSTEM]['rows'])}); compare experiments on one test set")
    return label, read_summary(d / "summary.json")


def results_table(data: dict, compare: list[tuple[str, dict]] = ()) -> list[str]:
    """Markdown table: noisy (baseline), enhanced, [compared systems], difference (enhanced - noisy)."""
    base, sys_ = data[BASELINE]["summary"], data[SYSTEM]["summary"]
    cols = [c for c in sys_["metrics"] if c in base["metrics"]]
    lines = [
        "| | utts | " + " | ".join(cols) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in cols) + " |",
    ]
    rows = [("noisy (input)", base), ("enhanced", sys_)] + [(f"enhanced: {label}", s) for label, s in compare]
    for label, s in rows:
        values = [_fmt(s["metrics"][c]["mean"]) if c in s["metrics"] else "n/a" for c in cols]
        lines.append(f"| {label} | {s['n_utts']} | " + " | ".join(values) + " |")
    diff = []
    for c in cols:
        a, b = base["metrics"][c]["mean"], sys_["metrics"][c]["mean"]
        diff.append("n/a" if a is None or b is None else f"{b - a:+.3f}")
    lines.append("| difference | | " + " | ".join(diff) + " |")
    undefined = [
        f"{label} {c}: {s['metrics'][c]['undefined']}"
        for label, s in ((BASELINE, base), (SYSTEM, sys_))
        for c in cols
        if s["metrics"][c]["undefined"]
    ]
    if undefined:
        lines += ["", "Undefined values (utterances, excluded from the means): " + ", ".join(undefined) + "."]
    return lines


def _savefig(fig, path: Path) -> None:
    from se.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write_bytes(path, buf.getvalue())


def scatter_plot(data: dict, path: Path, test_set: str) -> bool:
    """Per-utterance enhanced vs noisy PESQ WB and SI-SDR; False if neither was scored."""
    import matplotlib.pyplot as plt

    metrics = [m for m in ("pesq_wb", "si_sdr") if m in data[BASELINE]["columns"] and m in data[SYSTEM]["columns"]]
    if not metrics:
        return False
    base, enh = data[BASELINE]["rows"], data[SYSTEM]["rows"]
    utts = sorted(set(base) & set(enh))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.5), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        x = [base[u][m] for u in utts]
        y = [enh[u][m] for u in utts]
        ax.scatter(x, y, s=8, alpha=0.6)
        finite = [v for v in x + y if math.isfinite(v)]
        if finite:
            lo, hi = min(finite), max(finite)
            ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="y = x")
            ax.legend(loc="lower right")
        ax.set_xlabel(f"noisy {m}")
        ax.set_ylabel(f"enhanced {m}")
        ax.set_title(f"{test_set}: {m} per utterance")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
    return True


def pick_examples(data: dict) -> list[tuple[str, str, float]]:
    """(label, utt, SI-SDR improvement) for the best, median and worst improvement."""
    base, enh = data[BASELINE]["rows"], data[SYSTEM]["rows"]
    if "si_sdr" not in data[BASELINE]["columns"] or "si_sdr" not in data[SYSTEM]["columns"]:
        return []
    gains = sorted(
        (enh[u]["si_sdr"] - base[u]["si_sdr"], u)
        for u in set(base) & set(enh)
        if math.isfinite(enh[u]["si_sdr"]) and math.isfinite(base[u]["si_sdr"])
    )
    if not gains:
        return []
    picks = [("best", gains[-1]), ("median", gains[(len(gains) - 1) // 2]), ("worst", gains[0])]
    return [(label, utt, gain) for label, (gain, utt) in picks]


def spectrogram_plot(data: dict, path: Path, test_set: str) -> list[tuple[str, str, float]]:
    """Rows best/median/worst, columns noisy/enhanced/clean; returns the picks ([] if none)."""
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.signal import stft

    from se.audio import read_audio

    picks = pick_examples(data)
    noisy_scp = read_scp(data[BASELINE]["dir"] / "est.scp")
    enh_scp = read_scp(data[SYSTEM]["dir"] / "est.scp")
    clean_scp = read_scp(data[SYSTEM]["dir"] / "ref.scp")
    picks = [p for p in picks if p[1] in noisy_scp and p[1] in enh_scp and p[1] in clean_scp]
    if not picks:
        return []
    fig, axes = plt.subplots(len(picks), 3, figsize=(11, 2.6 * len(picks)), squeeze=False)
    for row, (label, utt, gain) in enumerate(picks):
        for col, (name, scp) in enumerate((("noisy", noisy_scp), ("enhanced", enh_scp), ("clean", clean_scp))):
            ax = axes[row][col]
            x, fs = read_audio(scp[utt])
            nfft = 512 if fs <= 16000 else 1024 if fs <= 24000 else 2048
            f, t, z = stft(x.astype(np.float64), fs=fs, nperseg=nfft, noverlap=nfft * 3 // 4)
            db = 20.0 * np.log10(np.abs(z) + 1e-8)
            ax.imshow(
                db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80, vmax=db.max(),
                extent=(t[0], t[-1], f[0] / 1000, f[-1] / 1000),
            )  # fmt: skip
            ax.set_title(f"{label} ({gain:+.1f} dB SI-SDR): {name}", fontsize=9)
            ax.set_xlabel("time (s)")
            ax.set_ylabel("kHz")
    fig.suptitle(f"{test_set}: utterances by SI-SDR improvement")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
    return picks


def read_cmds(scores_root: Path, test_sets: list[str]) -> list[str]:
    """The ``cmd`` files of SCORES_ROOT, SCORES_ROOT/<test_set> and its score dirs, in that order."""
    files = [scores_root / "cmd"]
    for ts in test_sets:
        files += [scores_root / ts / "cmd", scores_root / ts / BASELINE / "cmd", scores_root / ts / SYSTEM / "cmd"]
    return [f.read_text(encoding="utf-8").strip() for f in files if f.is_file()]


def make_results(exp_dir: Path, scores_root: Path, cmds: list[str], compare: list[str] = ()) -> str:
    """Build RESULTS.md text and write the images; returns the text."""
    import matplotlib

    matplotlib.use("Agg")

    from se.provenance import git_sha, versions
    from se.results import VERSIONED_PACKAGES, rates_sentence

    test_sets = find_test_sets(scores_root)
    sets = {ts: load_set(scores_root, ts) for ts in test_sets}
    images = exp_dir / "images"
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    vers = versions(VERSIONED_PACKAGES)
    lines = [
        f"<!-- Generated by python -m se.bin.make_results at {now}; do not edit by hand. -->",
        f"# RESULTS: {exp_dir.name}",
        "",
        "## Environment",
        "",
        f"- date: `{now}`",
        f"- git: `{git_sha()}`",
        "- versions: " + ", ".join(f"{k} `{v}`" for k, v in vers.items()),
        "",
        "## Commands",
        "",
        "```bash",
        *(cmds + read_cmds(scores_root, test_sets) or ["# (no command recorded)"]),
        "```",
    ]
    for ts, data in sets.items():
        lines += ["", f"## {ts}", ""]
        lines += results_table(data, [load_compare(spec, ts, data) for spec in compare])
        rates = data[SYSTEM]["summary"].get("rates")
        if rates:
            lines += ["", f"Rates: {rates_sentence(rates)}."]
        lines += ["", "Metrics:", ""] + metric_descriptions(list(data[SYSTEM]["summary"]["metrics"])) + [""]
        lines += [
            f"Scores: `{data[BASELINE]['dir']}` (noisy), `{data[SYSTEM]['dir']}` (enhanced).",
        ]
        if scatter_plot(data, images / f"{ts}_scatter.png", ts):
            lines += ["", f"![{ts}: per-utterance PESQ WB and SI-SDR, enhanced vs noisy](images/{ts}_scatter.png)"]
        picks = spectrogram_plot(data, images / f"{ts}_spectrograms.png", ts)
        if picks:
            lines += [
                "",
                "Spectrograms (noisy / enhanced / clean), by SI-SDR improvement: "
                + ", ".join(f"{label} `{utt}` ({gain:+.2f} dB)" for label, utt, gain in picks)
                + ".",
                "",
                f"![{ts}: spectrograms of the best, median and worst utterance](images/{ts}_spectrograms.png)",
            ]
    return "\n".join(lines) + "\n"


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m se.bin.make_results",
        description=__doc__.split("\n\n")[0],
        epilog="e.g.: python -m se.bin.make_results --exp-dir exp/frcrn --scores-root exp/frcrn/scores "
        "--cmd './run.sh --stage 5'",
    )
    p.add_argument("--exp-dir", required=True, help="experiment dir; RESULTS.md and images/ are written here")
    p.add_argument("--scores-root", default=None, help="dir of <test_set>/{noisy,enhanced}/ (default: EXP/scores)")
    p.add_argument("--cmd", action="append", default=[], help="a command to list in RESULTS.md (repeatable)")
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=SCORES_ROOT",
                   help="add another experiment's enhanced row (same test sets) to the tables (repeatable)")
    args = p.parse_args(argv)
    from se.atomic import atomic_write_text

    exp_dir = Path(args.exp_dir)
    scores_root = Path(args.scores_root) if args.scores_root else exp_dir / "scores"
    if not scores_root.is_dir():
        raise ResultsError(f"{scores_root}: no such directory (run steps/score.sh first)")
    check_output_dir(exp_dir, "--exp-dir")
    text = make_results(exp_dir, scores_root, args.cmd, args.compare)
    atomic_write_text(exp_dir / "RESULTS.md", text)
    print(f"wrote {exp_dir / 'RESULTS.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, prog="se.bin.make_results")


if __name__ == "__main__":
    sys.exit(main())
