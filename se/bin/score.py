"""Score enhanced audio against references: PESQ, STOI, SI-SDR, composite, LSD, DNSMOS, PLCMOS, ...

    python -m se.bin.score --ref SCP|DIR --est SCP|DIR --out-dir D [--metrics LIST] [--nj N] [--fs RATE]
    python -m se.bin.score --est SCP|DIR --out-dir D [--metrics noref]     # no clean reference

Without --ref only the no-reference metrics exist (DNSMOS, PLCMOS: the group ``noref``, the
default then); asking for another one is an error. ref.scp is then not written.

Pairs are matched by utterance id: the first field of a Kaldi ``utt path`` scp line, or the
file name without extension in a directory (``*.wav``/``*.flac``). Before scoring every pair is
checked (both lists match, files exist and are readable mono audio, reference and estimate
share one sample rate, ``--fs`` if given): problems are listed with file and scp line and the
command exits 1 without scoring. Problems of the signals themselves (silent reference, NaN
samples, too short for a metric, length mismatch) give NaN values, counted in summary.json and
listed in notes.tsv; they never stop the run. Lengths that differ by at most --max-len-diff
seconds are trimmed to the shorter (noted); larger differences make the reference-based
metrics undefined.

Outputs in D (each written to a temp file and renamed): scores.tsv, summary.json, summary.md,
notes.tsv, ref.scp, est.scp, cmd. See se/results.py and se/metrics/__init__.py.

Parallel jobs (used by steps/score.sh):
    --check-only         check the pairs, write D/ref.scp and D/est.scp, print the count
    --split N --job J    score the J-th of N contiguous parts of the sorted ids into D/split/J/
    --merge N            merge D/split/1..N/ into D (checks that every pair was scored once)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from se.cli import UserError, check_output_dir, nonneg_float, positive_int, run as run_cli

AUDIO_SUFFIXES = (".wav", ".flac")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
OUTPUT_FILES = ("scores.tsv", "notes.tsv", "ref.scp", "est.scp", "summary.md", "summary.json", "cmd")


class ScoreError(UserError):
    """A problem the user must fix; the message names the file (and scp line)."""


@dataclass(frozen=True)
class Entry:
    path: str
    where: str  # "ref.scp line 3" or the directory


@dataclass(frozen=True)
class Pair:
    utt: str
    ref: Entry | None  # None: no clean reference (no-reference metrics only)
    est: Entry


# --------------------------------------------------------------------------- lists and checks


def load_list(spec: str) -> dict[str, Entry]:
    """utt id -> Entry from a Kaldi scp file or a directory of audio files."""
    p = Path(spec)
    if p.is_dir():
        out: dict[str, Entry] = {}
        for f in sorted(p.iterdir()):
            if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES:
                if f.stem in out:
                    raise ScoreError(f"{f}: utterance id '{f.stem}' also used by {out[f.stem].path}")
                out[f.stem] = Entry(str(f.resolve()), f"directory {p}")
        if not out:
            raise ScoreError(f"{p}: directory holds no {'/'.join(AUDIO_SUFFIXES)} files")
        return out
    if not p.is_file():
        raise ScoreError(f"{spec}: no such scp file or directory")
    from se.data import DataDirError, read_scp

    lines: dict[str, int] = {}
    try:
        paths = read_scp(p, lines=lines)
    except DataDirError as exc:
        raise ScoreError(str(exc)) from None
    out = {}
    for utt, path in paths.items():
        if path.endswith("|"):
            raise ScoreError(f"{spec} line {lines[utt]}: piped commands are not supported, give a file path")
        out[utt] = Entry(str(Path(path).resolve()), f"{spec} line {lines[utt]}")
    if not out:
        raise ScoreError(f"{spec}: empty scp file")
    return out


def match_pairs(ref: dict[str, Entry] | None, est: dict[str, Entry], ref_spec: str | None, est_spec: str) -> list[Pair]:
    """Pairs sorted by utt id; every id must be in both lists (``ref`` None: estimates alone)."""
    if ref is None:
        return [Pair(u, None, est[u]) for u in sorted(est)]
    errors = [f"{e.where}: utterance '{u}' ({e.path}) has no reference in {ref_spec}"
              for u, e in est.items() if u not in ref]  # fmt: skip
    errors += [f"{e.where}: utterance '{u}' ({e.path}) has no estimate in {est_spec}"
               for u, e in ref.items() if u not in est]  # fmt: skip
    if errors:
        raise ScoreError(_error_list("unmatched utterances", errors))
    return [Pair(u, ref[u], est[u]) for u in sorted(ref)]


def _error_list(what: str, errors: list[str], limit: int = 20) -> str:
    shown = errors[:limit]
    more = f"\n  ... and {len(errors) - limit} more" if len(errors) > limit else ""
    return f"{len(errors)} {what}:\n  " + "\n  ".join(shown) + more


def check_pairs(pairs: list[Pair], fs: int | None) -> list[int]:
    """Header checks of every file; returns the native rate of each pair or raises ScoreError."""
    from se.audio import AudioError, audio_info

    errors, rates = [], []
    for p in pairs:
        infos = []
        for role, e in (("reference", p.ref), ("estimate", p.est)):
            if e is None:
                continue
            try:
                info = audio_info(e.path)
            except AudioError as exc:
                errors.append(f"{e.where}: {role} of '{p.utt}': {exc}")
                continue
            if info.channels != 1:
                errors.append(f"{e.where}: {role} {e.path}: {info.channels} channels, expected mono")
            if fs is not None and info.samplerate != fs:
                errors.append(f"{e.where}: {role} {e.path}: {info.samplerate} Hz, --fs is {fs} Hz")
            infos.append(info)
        if len(infos) == 2 and infos[0].samplerate != infos[1].samplerate:
            errors.append(
                f"'{p.utt}': reference {p.ref.path} ({p.ref.where}) is {infos[0].samplerate} Hz but "
                f"estimate {p.est.path} ({p.est.where}) is {infos[1].samplerate} Hz"
            )
        rates.append(infos[-1].samplerate if infos else 0)
    if errors:
        raise ScoreError(_error_list("problems with the input files", errors))
    return rates


# --------------------------------------------------------------------------- scoring


def _score_one(task: tuple) -> tuple[str, dict[str, float], list[tuple[str, str]], int]:
    """Worker: read one pair and score it. Never raises for a problem of this pair."""
    import math

    from se.audio import AudioError, read_audio
    from se.metrics import score_pair

    pair, columns, max_len_diff = task
    undefined = {c: math.nan for c in columns}
    role = "est"
    try:
        est, fs_est = read_audio(pair.est.path, where=pair.est.where)
        role = "ref"
        ref, fs_ref = read_audio(pair.ref.path, where=pair.ref.where) if pair.ref else (None, fs_est)
        if fs_ref != fs_est:
            raise AudioError(f"{pair.ref.path} is {fs_ref} Hz but {pair.est.path} is {fs_est} Hz")
    except AudioError as exc:  # NaN/Inf samples are refused by read_audio: no metric is computed
        kind = f"nonfinite_{role}" if "non-finite" in str(exc) else "read_error"
        return pair.utt, undefined, [(kind, str(exc))], 0
    try:
        res = score_pair(ref, est, fs_ref, columns, max_len_diff=max_len_diff)
    except Exception as exc:  # a bug or library failure on one pair must not end the run
        return pair.utt, undefined, [("error", f"{type(exc).__name__}: {exc}")], fs_ref
    return pair.utt, res.values, res.notes, fs_ref


def score_all(pairs: list[Pair], columns: list[str], nj: int, max_len_diff: float, desc: str = "score"):
    """Score pairs with ``nj`` processes; returns (rows, notes, rates) keyed by utt id."""
    from tqdm import tqdm

    tasks = [(p, columns, max_len_diff) for p in pairs]
    rows, notes, rates = {}, {}, {}
    bar = tqdm(total=len(tasks), desc=desc, unit="utt", file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    nj = max(1, min(nj, len(tasks)))
    if nj == 1:
        results = map(_score_one, tasks)
        pool = None
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(nj)
        results = pool.imap_unordered(_score_one, tasks, chunksize=1)
    try:
        for utt, values, utt_notes, fs in results:
            rows[utt], notes[utt], rates[utt] = values, utt_notes, fs
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return rows, notes, rates


# --------------------------------------------------------------------------- outputs


def _write_scps(out_dir: Path, pairs: list[Pair]) -> None:
    """est.scp, and ref.scp when there are references (a stale ref.scp is removed)."""
    from se.atomic import atomic_write_text

    if pairs and pairs[0].ref is not None:
        atomic_write_text(out_dir / "ref.scp", _scp_text(pairs, "ref"))
    else:
        (out_dir / "ref.scp").unlink(missing_ok=True)
    atomic_write_text(out_dir / "est.scp", _scp_text(pairs, "est"))


def _scp_text(pairs: list[Pair], role: str) -> str:
    return "".join(f"{p.utt} {getattr(p, role).path}\n" for p in pairs)


def _notes_text(notes: dict[str, list[tuple[str, str]]]) -> str:
    lines = ["utt_id\tkind\tmessage"]
    for utt in sorted(notes):
        for kind, msg in notes[utt]:
            lines.append(f"{utt}\t{kind}\t{' '.join(msg.split())}")
    return "\n".join(lines) + "\n"


def _read_notes(path: Path) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            utt, kind, msg = line.split("\t", 2)
            out.setdefault(utt, []).append((kind, msg))
    return out


def write_outputs(out_dir: Path, args, pairs, columns, rows, notes, rates) -> dict:
    """scores.tsv, notes.tsv, summary.json, summary.md, ref.scp, est.scp (all atomic)."""
    from se.metrics import metric_info, rates_used
    from se.provenance import versions
    from se.atomic import atomic_write_text
    from se.results import VERSIONED_PACKAGES, scores_tsv, summarize, summary_markdown

    problems: dict[str, int] = {}
    for utt_notes in notes.values():
        for kind in sorted({k for k, _ in utt_notes}):
            problems[kind] = problems.get(kind, 0) + 1
    summary = {
        "ref": str(Path(args.ref).resolve()) if args.ref else None,
        "est": str(Path(args.est).resolve()),
        "n_utts": len(rows),
        "metrics": summarize(columns, rows),
        "problems": problems,
        "rates": rates_used([r for r in rates.values() if r], columns),
        "max_len_diff_s": args.max_len_diff,
        "implementations": {c: d for c, d in metric_info().items() if c in columns},
        "versions": versions(VERSIONED_PACKAGES),
    }
    # summary.json is written last: when it exists, the other files belong to the same run
    for name in ("summary.json", "summary.md"):
        (out_dir / name).unlink(missing_ok=True)
    atomic_write_text(out_dir / "scores.tsv", scores_tsv(columns, rows))
    atomic_write_text(out_dir / "notes.tsv", _notes_text(notes))
    _write_scps(out_dir, pairs)
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def split_part(pairs: list[Pair], n: int, j: int) -> list[Pair]:
    """The j-th (1-based) of n contiguous parts whose sizes differ by at most one."""
    size, extra = divmod(len(pairs), n)
    start = (j - 1) * size + min(j - 1, extra)
    return pairs[start : start + size + (1 if j <= extra else 0)]


def merge_parts(out_dir: Path, n: int, pairs: list[Pair]):
    """Read D/split/1..n/; every pair must be scored exactly once with the same columns."""
    from se.results import read_scores_dir

    columns, rows, notes, rates = None, {}, {}, {}
    for j in range(1, n + 1):
        part = out_dir / "split" / str(j)
        try:
            cols, part_rows = read_scores_dir(part, ("scores.tsv", "notes.tsv", "rates.json"),
                                              f"missing: job {j} of {n} did not finish (see its log)")
        except ValueError as exc:
            raise ScoreError(str(exc)) from exc
        if columns is None:
            columns = cols
        elif cols != columns:
            raise ScoreError(f"{part / 'scores.tsv'}: columns {cols} differ from job 1's {columns}")
        for utt in part_rows:
            if utt in rows:
                raise ScoreError(f"{part / 'scores.tsv'}: '{utt}' was already scored by another job")
        rows.update(part_rows)
        notes.update(_read_notes(part / "notes.tsv"))
        rates.update(json.loads((part / "rates.json").read_text()))
    want = {p.utt for p in pairs}
    missing, extra = sorted(want - rows.keys()), sorted(rows.keys() - want)
    if missing or extra:
        raise ScoreError(
            f"{out_dir}/split: parts do not cover the input: missing {missing[:10]} "
            f"({len(missing)}), unexpected {extra[:10]} ({len(extra)}); rerun the jobs"
        )
    return columns, rows, notes, rates


# --------------------------------------------------------------------------- CLI


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    from se.metrics import columns, groups, metric_info

    metrics = "\n".join(f"  {c:12s} {d}" for c, d in metric_info().items())
    p = argparse.ArgumentParser(
        prog="python -m se.bin.score",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"metrics (columns of scores.tsv, in order):\n{metrics}\n\n"
        "e.g.: python -m se.bin.score --ref data/test/clean.scp --est exp/x/enhanced "
        "--out-dir exp/x/scores/test/enhanced --metrics all --nj 4",
    )
    add = p.add_argument
    add("--ref", default=None,
        help="clean references: Kaldi scp ('utt path') or directory; leave out for no-reference metrics only")
    add("--est", required=True, help="estimates (enhanced or noisy): scp or directory")
    add("--out-dir", required=True, help="output directory D")
    add("--metrics", default=None,
        help=f"comma list of columns ({', '.join(columns())}) or groups "
        f"({'; '.join(f'{g}: ' + ', '.join(c) for g, c in groups().items() if g != 'all')}; all: every column) "
        "(default: all; noref without --ref)")
    add("--nj", type=positive_int, default=_cores(), help="parallel processes (default: cores)")
    add("--fs", type=positive_int, default=None,
        help="required native sample rate of every file (default: any; reference and estimate equal)")
    add("--max-len-diff", type=nonneg_float, default=0.1,
        help="trim pairs whose lengths differ by at most this many seconds (default 0.1); "
        "a larger difference makes the reference-based metrics undefined")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check-only", action="store_true",
                      help="check the pairs, write D/ref.scp and D/est.scp, print the count")
    mode.add_argument("--split", type=int, default=None, metavar="N",
                      help="score one of N parts (with --job) into D/split/JOB/")
    mode.add_argument("--merge", type=int, default=None, metavar="N", help="merge D/split/1..N into D")
    add("--job", type=positive_int, default=None, metavar="J", help="1-based part index for --split")
    return p


def run(args) -> int:
    from se.atomic import atomic_write_text
    from se.metrics import no_reference, parse_metrics

    if args.metrics is None:
        args.metrics = "all" if args.ref else "noref"
    try:
        columns = parse_metrics(args.metrics)
    except ValueError as exc:
        raise ScoreError(f"--metrics: {exc}") from exc
    if args.ref is None:
        need = [c for c in columns if c not in no_reference()]
        if need:
            raise ScoreError(
                f"--metrics: {', '.join(need)} need clean references: give --ref, or choose from the "
                f"no-reference metrics ({', '.join(sorted(no_reference()))}; group noref)"
            )
    if (args.split is None) != (args.job is None):
        raise ScoreError("--split N and --job J go together")
    if args.split is not None and not 1 <= args.job <= args.split:
        raise ScoreError(f"--job must be in 1..{args.split}, got {args.job}")
    if args.merge is not None and args.merge < 1:
        raise ScoreError(f"--merge must be >= 1, got {args.merge}")
    ref_list = load_list(args.ref) if args.ref else None
    est_list = load_list(args.est)
    # the output dir is checked before any scoring: creatable, and no output file is an input
    inputs = [args.est] + [e.path for e in est_list.values()]
    if ref_list is not None:
        inputs += [args.ref] + [e.path for e in ref_list.values()]
    out_dir = check_output_dir(args.out_dir, "--out-dir", list(OUTPUT_FILES), inputs)
    pairs = match_pairs(ref_list, est_list, args.ref, args.est)

    if args.merge is not None:
        columns_found, rows, notes, rates = merge_parts(out_dir, args.merge, pairs)
        if columns_found != columns:
            raise ScoreError(f"{out_dir}/split: parts have columns {columns_found}, --metrics asks for {columns}")
        summary = write_outputs(out_dir, args, pairs, columns, rows, notes, rates)
        print(f"merged {args.merge} parts: {summary['n_utts']} utterances -> {out_dir}/scores.tsv")
        return 0

    if args.split is not None:
        pairs = split_part(pairs, args.split, args.job)
        part = out_dir / "split" / str(args.job)
        for name in ("scores.tsv", "notes.tsv", "rates.json"):  # never merge a stale part
            (part / name).unlink(missing_ok=True)
    check_pairs(pairs, args.fs)
    if args.check_only:
        _write_scps(out_dir, pairs)
        print(len(pairs))
        return 0

    rows, notes, rates = score_all(pairs, columns, args.nj, args.max_len_diff)
    nonfinite = [msg for utt in sorted(notes) for kind, msg in notes[utt] if kind.startswith("nonfinite")]
    if nonfinite:  # NaN/Inf audio never becomes a number: the run fails, nothing is written
        raise ScoreError("\n".join(
            [f"{len(nonfinite)} file(s) hold NaN/Inf samples; fix or remove them and score again "
             "(se.bin.validate_data_dir lists every such file):", *(" ".join(m.split()) for m in nonfinite)]))
    for utt in sorted(notes):
        for kind, msg in notes[utt]:
            if kind == "read_error":
                print(f"se.bin.score: warning: {utt}: {' '.join(msg.split())} (its metrics are undefined)",
                      file=sys.stderr)
    if args.split is not None:
        from se.results import scores_tsv

        atomic_write_text(part / "notes.tsv", _notes_text(notes))
        atomic_write_text(part / "rates.json", json.dumps(rates) + "\n")
        atomic_write_text(part / "scores.tsv", scores_tsv(columns, rows))
        print(f"job {args.job}/{args.split}: {len(rows)} utterances -> {part}")
        return 0
    summary = write_outputs(out_dir, args, pairs, columns, rows, notes, rates)
    atomic_write_text(out_dir / "cmd", shlex.join([sys.executable, "-m", "se.bin.score", *args.argv]) + "\n")
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    for name, m in summary["metrics"].items():
        mean = "n/a" if m["mean"] is None else f"{m['mean']:.4f}"
        undef = f"  ({m['undefined']} undefined)" if m["undefined"] else ""
        print(f"{name:12s} {mean}{undef}")
    if summary["problems"]:
        print("problems: " + ", ".join(f"{k} {v}" for k, v in summary["problems"].items()) + " (see notes.tsv)")


def _main(argv: list[str]) -> int:
    # One BLAS/OpenMP thread per process: parallelism comes from --nj processes. Set before
    # numpy is first imported (the metric table is imported when the parser is built).
    for var in THREAD_VARS:
        os.environ.setdefault(var, "1")
    args = build_parser().parse_args(argv)
    args.argv = argv
    return run(args)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, prog="se.bin.score")


if __name__ == "__main__":
    sys.exit(main())
