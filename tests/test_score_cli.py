"""se.bin.score, steps/score.sh and se.bin.make_results on small generated data sets."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import REPO, SCORING_DATA

from se.bin import make_results
from se.bin import score as score_cli
from se.resample import resample
from se.results import read_scores_tsv

FS = 16000
UTTS = ("utt_a", "utt_b", "utt_c", "utt_d")


def _speech() -> np.ndarray:
    x, fs = sf.read(SCORING_DATA / "speech.wav", dtype="float64")
    assert fs == FS
    return x


def _write_scp(path: Path, entries: dict[str, Path | str]) -> Path:
    path.write_text("".join(f"{u} {p}\n" for u, p in entries.items()))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """4 clean/noisy/enhanced 2 s pairs at 16 kHz, as dirs and scp files."""
    root = tmp_path_factory.mktemp("score_data")
    x = _speech()
    rng = np.random.default_rng(0)
    out = {k: {} for k in ("clean", "noisy", "enhanced")}
    for k in out:
        (root / k).mkdir()
    for i, utt in enumerate(UTTS):
        c = np.roll(x, 7000 * i)[: 2 * FS] * (0.4 + 0.1 * i)
        noise = rng.standard_normal(len(c))
        noise *= np.sqrt(np.sum(c**2) / np.sum(noise**2) / 10 ** ((5 * i - 5) / 10))
        for kind, sig in (("clean", c), ("noisy", c + noise), ("enhanced", c + 0.2 * noise)):
            p = root / kind / f"{utt}.wav"
            sf.write(p, sig, FS, subtype="PCM_16")
            out[kind][utt] = p
    scp = {k: _write_scp(root / f"{k}.scp", v) for k, v in out.items()}
    return {"root": root, "files": out, "scp": scp}


def _run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "se.bin.score", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _score(capsys, *args) -> tuple[int, str]:
    rc = score_cli.main(list(args))
    return rc, capsys.readouterr().err


# --------------------------------------------------------------------------- normal runs


def test_cli_agrees_with_direct_calls(data, tmp_path):
    import pesq
    from pystoi import stoi

    out = tmp_path / "scores"
    res = _run_cli("--ref", str(data["scp"]["clean"]), "--est", str(data["scp"]["noisy"]), "--out-dir", str(out),
                   "--metrics", "pesq,stoi,estoi,si_sdr", "--nj", "2")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "100%" in res.stderr  # tqdm progress bar on stderr
    columns, rows = read_scores_tsv(out / "scores.tsv")
    assert columns == ["pesq_wb", "pesq_nb", "stoi", "estoi", "si_sdr"]
    assert list(rows) == sorted(UTTS)
    for utt in UTTS:
        ref, _ = sf.read(data["files"]["clean"][utt], dtype="float64")
        deg, _ = sf.read(data["files"]["noisy"][utt], dtype="float64")
        r8, d8 = resample(ref, FS, 8000), resample(deg, FS, 8000)
        assert rows[utt]["pesq_wb"] == pesq.pesq(FS, ref, deg, "wb")
        assert rows[utt]["pesq_nb"] == pesq.pesq(8000, r8, d8, "nb")
        assert rows[utt]["stoi"] == pytest.approx(stoi(ref, deg, FS), abs=1e-12)
        assert rows[utt]["estoi"] == pytest.approx(stoi(ref, deg, FS, extended=True), abs=1e-12)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_utts"] == 4
    assert summary["metrics"]["pesq_wb"]["mean"] == pytest.approx(np.mean([rows[u]["pesq_wb"] for u in UTTS]))
    assert summary["metrics"]["pesq_wb"]["undefined"] == 0
    assert summary["rates"]["native"] == [FS] and summary["rates"]["pesq_nb"] == 8000
    assert "without corrigendum 2" in summary["implementations"]["pesq_wb"]
    assert "| pesq_wb |" in (out / "summary.md").read_text()
    assert (out / "ref.scp").read_text().splitlines()[0] == f"utt_a {data['files']['clean']['utt_a']}"
    assert "se.bin.score" in (out / "cmd").read_text()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_dir_mode_equals_scp_mode(data, tmp_path, capsys):
    args = ["--metrics", "si_sdr,snr,sdr,composite", "--nj", "1"]
    assert _score(capsys, "--ref", str(data["root"] / "clean"), "--est", str(data["root"] / "enhanced"),
                  "--out-dir", str(tmp_path / "d"), *args)[0] == 0  # fmt: skip
    assert _score(capsys, "--ref", str(data["scp"]["clean"]), "--est", str(data["scp"]["enhanced"]),
                  "--out-dir", str(tmp_path / "s"), *args)[0] == 0  # fmt: skip
    assert (tmp_path / "d" / "scores.tsv").read_text() == (tmp_path / "s" / "scores.tsv").read_text()
    assert "se.bin.score --ref" in (tmp_path / "s" / "cmd").read_text()
    assert "--metrics si_sdr,snr,sdr,composite" in (tmp_path / "s" / "cmd").read_text()
    _, rows = read_scores_tsv(tmp_path / "d" / "scores.tsv")
    assert all(math.isfinite(v) for r in rows.values() for v in r.values())


def test_split_and_merge_equal_one_run(data, tmp_path, capsys):
    common = ["--ref", str(data["scp"]["clean"]), "--est", str(data["scp"]["noisy"]), "--metrics", "si_sdr,pesq_wb",
              "--nj", "1"]  # fmt: skip
    assert _score(capsys, *common, "--out-dir", str(tmp_path / "one"))[0] == 0
    par = tmp_path / "par"
    for j in (1, 2, 3):
        assert _score(capsys, *common, "--out-dir", str(par), "--split", "3", "--job", str(j))[0] == 0
    assert _score(capsys, *common, "--out-dir", str(par), "--merge", "3")[0] == 0
    assert (par / "scores.tsv").read_text() == (tmp_path / "one" / "scores.tsv").read_text()
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    merged = json.loads((par / "summary.json").read_text())
    assert merged["metrics"] == one["metrics"] and merged["rates"] == one["rates"]
    # a part that did not finish is an error naming it
    (par / "split" / "2" / "scores.tsv").unlink()
    rc, err = _score(capsys, *common, "--out-dir", str(par), "--merge", "3")
    assert rc == 1 and "split/2/scores.tsv" in err and "job 2 of 3" in err


# --------------------------------------------------------------------------- bad input


def test_bad_signals_give_counted_undefined_values(tmp_path, capsys):
    x = _speech()[: 2 * FS]
    rng = np.random.default_rng(1)
    y = x + 0.05 * rng.standard_normal(len(x))
    d = {k: tmp_path / k for k in ("ref", "est")}
    for p in d.values():
        p.mkdir()

    def pair(utt, ref, est, subtype="PCM_16"):
        sf.write(d["ref"] / f"{utt}.wav", ref, FS, subtype="PCM_16")
        sf.write(d["est"] / f"{utt}.wav", est, FS, subtype=subtype)

    pair("good", x, y)
    pair("silent_ref", np.zeros_like(x), y)
    pair("short", x[20000:23200], y[20000:23200])  # 0.2 s
    pair("trimmed", x, y[:-400])  # 25 ms shorter: trimmed with a note
    pair("mismatch", x, y[: FS // 2])  # 1.5 s shorter: undefined
    pair("empty", x, np.zeros(0))  # a valid WAV header without samples
    out = tmp_path / "out"
    rc, err = _score(capsys, "--ref", str(d["ref"]), "--est", str(d["est"]), "--out-dir", str(out),
                     "--metrics", "pesq_wb,stoi,si_sdr", "--nj", "1")  # fmt: skip
    assert rc == 0, err
    _, rows = read_scores_tsv(out / "scores.tsv")
    assert all(math.isfinite(v) for v in rows["good"].values())
    assert all(math.isfinite(v) for v in rows["trimmed"].values())
    for utt in ("silent_ref", "mismatch", "empty"):
        assert all(math.isnan(v) for v in rows[utt].values()), utt
    assert math.isnan(rows["short"]["pesq_wb"]) and math.isnan(rows["short"]["stoi"])
    assert math.isfinite(rows["short"]["si_sdr"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_utts"] == 6
    assert summary["metrics"]["pesq_wb"]["undefined"] == 4
    assert summary["metrics"]["si_sdr"]["undefined"] == 3
    assert summary["metrics"]["si_sdr"]["mean"] == pytest.approx(
        np.mean([rows[u]["si_sdr"] for u in ("good", "short", "trimmed")])
    )
    assert summary["problems"] == {
        "silent_reference": 1, "undefined": 1, "trimmed": 1, "length_mismatch": 1,
        "read_error": 1,
    }  # fmt: skip
    notes = (out / "notes.tsv").read_text()
    assert "short\tundefined\tpesq_wb: PESQ wb: BufferTooShortError" in notes
    assert "trimmed\ttrimmed\t" in notes
    assert "empty\tread_error\t" in notes and "no samples" in notes


def test_nonfinite_audio_fails_the_run_and_names_every_file(tmp_path, capsys):
    """NaN/Inf samples never become a number: every such file is named, nothing is written."""
    x = _speech()[:FS]
    for name in ("ref", "est"):
        (tmp_path / name).mkdir()
    for utt, bad in (("a", None), ("b", np.nan), ("c", np.inf)):
        y = x.copy()
        if bad is not None:
            y[100] = bad
        sf.write(tmp_path / "ref" / f"{utt}.wav", x, FS, subtype="PCM_16")
        sf.write(tmp_path / "est" / f"{utt}.wav", y, FS, subtype="FLOAT")
    out = tmp_path / "out"
    rc, err = _score(capsys, "--ref", str(tmp_path / "ref"), "--est", str(tmp_path / "est"), "--out-dir", str(out),
                     "--metrics", "si_sdr", "--nj", "1")  # fmt: skip
    assert rc == 1
    assert "2 file(s) hold NaN/Inf samples" in err
    assert str(tmp_path / "est" / "b.wav") in err and str(tmp_path / "est" / "c.wav") in err
    assert "Traceback" not in err and not (out / "scores.tsv").exists()


def _bad_run(capsys, tmp_path, ref_entries, est_entries, *extra) -> str:
    ref = _write_scp(tmp_path / "ref.scp", ref_entries)
    est = _write_scp(tmp_path / "est.scp", est_entries)
    rc, err = _score(capsys, "--ref", str(ref), "--est", str(est), "--out-dir", str(tmp_path / "o"), "--nj", "1",
                     "--metrics", "si_sdr", *extra)  # fmt: skip
    assert rc == 1
    assert not (tmp_path / "o" / "scores.tsv").exists()
    return err


def test_unmatched_utterance_is_an_error(data, tmp_path, capsys):
    f = data["files"]
    err = _bad_run(capsys, tmp_path, {"utt_a": f["clean"]["utt_a"]},
                   {"utt_a": f["noisy"]["utt_a"], "utt_x": f["noisy"]["utt_b"]})  # fmt: skip
    assert "est.scp line 2: utterance 'utt_x'" in err and "has no reference" in err


def test_missing_file_names_file_and_line(data, tmp_path, capsys):
    f = data["files"]
    err = _bad_run(capsys, tmp_path, {"utt_a": f["clean"]["utt_a"], "utt_b": tmp_path / "gone.wav"},
                   {"utt_a": f["noisy"]["utt_a"], "utt_b": f["noisy"]["utt_b"]})  # fmt: skip
    assert "ref.scp line 2" in err and "gone.wav: file not found" in err


def test_rate_mismatch_names_both_files(data, tmp_path, capsys):
    f = data["files"]
    est8k = tmp_path / "utt_a_8k.wav"
    sf.write(est8k, np.zeros(8000) + 0.1, 8000)
    err = _bad_run(capsys, tmp_path, {"utt_a": f["clean"]["utt_a"]}, {"utt_a": est8k})
    assert str(f["clean"]["utt_a"]) in err and str(est8k) in err and "16000 Hz" in err and "8000 Hz" in err
    err = _bad_run(capsys, tmp_path, {"utt_a": f["clean"]["utt_a"]}, {"utt_a": f["noisy"]["utt_a"]}, "--fs", "48000")
    assert "--fs is 48000 Hz" in err


def test_malformed_lists_and_options(data, tmp_path, capsys):
    f = data["files"]
    bad = tmp_path / "bad.scp"
    bad.write_text(f"utt_a {f['clean']['utt_a']}\nutt_b\n")
    rc, err = _score(capsys, "--ref", str(bad), "--est", str(data["scp"]["noisy"]), "--out-dir", str(tmp_path / "o"))
    assert rc == 1 and "bad.scp line 2: expected '<utt> <value>'" in err
    bad.write_text(f"utt_a {f['clean']['utt_a']}\nutt_a {f['clean']['utt_b']}\n")
    rc, err = _score(capsys, "--ref", str(bad), "--est", str(data["scp"]["noisy"]), "--out-dir", str(tmp_path / "o"))
    assert rc == 1 and "bad.scp line 2: duplicate utterance id utt_a (first on line 1)" in err
    common = ["--ref", str(data["scp"]["clean"]), "--est", str(data["scp"]["noisy"]), "--out-dir", str(tmp_path / "o")]
    rc, err = _score(capsys, *common, "--metrics", "pesq,bogus")
    assert rc == 1 and "unknown metric 'bogus'" in err
    rc, err = _score(capsys, *common, "--split", "2")
    assert rc == 1 and "--split N and --job J go together" in err
    rc, err = _score(capsys, "--ref", str(tmp_path / "nowhere"), "--est", str(data["scp"]["noisy"]),
                     "--out-dir", str(tmp_path / "o"))  # fmt: skip
    assert rc == 1 and "nowhere: no such scp file or directory" in err


def test_cli_error_exit_code_without_traceback(data, tmp_path):
    ref = _write_scp(tmp_path / "ref.scp", {"utt_a": tmp_path / "missing.wav"})
    est = _write_scp(tmp_path / "est.scp", {"utt_a": data["files"]["noisy"]["utt_a"]})
    res = _run_cli("--ref", str(ref), "--est", str(est), "--out-dir", str(tmp_path / "o"))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "ref.scp line 1" in res.stderr and "missing.wav" in res.stderr


# --------------------------------------------------------------------------- steps/score.sh


def _bash_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def test_score_sh_runs_jobs_and_merges(data, tmp_path, capsys):
    runner = REPO / "steps" / "run.sh"
    assert runner.is_file(), "steps/run.sh (the job runner) is required"
    out = tmp_path / "scores" / "test" / "noisy"
    res = subprocess.run(
        ["bash", str(REPO / "steps" / "score.sh"), "--cmd", str(runner), "--nj", "2", "--metrics", "pesq_wb,si_sdr",
         str(data["scp"]["clean"]), str(data["scp"]["noisy"]), str(out)],  # fmt: skip
        cwd=tmp_path, env=_bash_env(), capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Successfully finished" in res.stdout
    assert sorted(p.name for p in (out / "log").iterdir()) == ["score.1.log", "score.2.log"]
    assert "# Ended (code 0)" in (out / "log" / "score.1.log").read_text()
    assert "steps/score.sh" in (out / "cmd").read_text() and "--nj 2" in (out / "cmd").read_text()
    # same values as one in-process run
    assert _score(capsys, "--ref", str(data["scp"]["clean"]), "--est", str(data["scp"]["noisy"]),
                  "--out-dir", str(tmp_path / "one"), "--metrics", "pesq_wb,si_sdr", "--nj", "1")[0] == 0  # fmt: skip
    _, got = read_scores_tsv(out / "scores.tsv")
    _, want = read_scores_tsv(tmp_path / "one" / "scores.tsv")
    assert list(got) == list(want) == sorted(UTTS)
    for utt in UTTS:  # equal up to BLAS summation order (1 thread in the jobs)
        assert got[utt] == pytest.approx(want[utt], rel=1e-12, abs=1e-12)
    assert (out / "est.scp").read_text() == (tmp_path / "one" / "est.scp").read_text()


def test_score_sh_fails_cleanly(data, tmp_path):
    ref = _write_scp(tmp_path / "ref.scp", {"utt_a": data["files"]["clean"]["utt_a"]})
    res = subprocess.run(
        ["bash", str(REPO / "steps" / "score.sh"), "--nj", "2", str(ref), str(data["scp"]["noisy"]),
         str(tmp_path / "out")],  # fmt: skip
        cwd=tmp_path, env=_bash_env(), capture_output=True, text=True, timeout=120,
    )
    assert res.returncode != 0
    assert "has no reference" in res.stderr and "utt_b" in res.stderr
    assert not (tmp_path / "out" / "summary.json").exists()
    res = subprocess.run(["bash", str(REPO / "steps" / "score.sh"), "--nj", "2", str(ref)],
                         env=_bash_env(), capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 1 and "e.g.:" in res.stderr


# --------------------------------------------------------------------------- RESULTS.md


def test_make_results(data, tmp_path, capsys):
    exp = tmp_path / "exp" / "frcrn"
    for kind in ("noisy", "enhanced"):
        assert _score(capsys, "--ref", str(data["scp"]["clean"]), "--est", str(data["scp"][kind]),
                      "--out-dir", str(exp / "scores" / "vb_test" / kind), "--metrics", "pesq_wb,stoi,si_sdr",
                      "--nj", "1")[0] == 0  # fmt: skip
    rc = make_results.main(["--exp-dir", str(exp), "--scores-root", str(exp / "scores"), "--cmd", "./run.sh --stage 6"])
    assert rc == 0
    text = (exp / "RESULTS.md").read_text()
    for needle in ("## Environment", "- git: `", "pesq `", "pystoi `", "./run.sh --stage 6", "se.bin.score",
                   "## vb_test", "| noisy (input) | 4 |", "| enhanced | 4 |", "| difference |",
                   "pesq_wb/stoi at 16 kHz copies", "si_sdr at 16 kHz (native)", "resampler: soxr", "images/vb_test_scatter.png",
                   "images/vb_test_spectrograms.png", "best `", "median `", "worst `"):  # fmt: skip
        assert needle in text, needle
    noisy = json.loads((exp / "scores/vb_test/noisy/summary.json").read_text())["metrics"]["si_sdr"]["mean"]
    enh = json.loads((exp / "scores/vb_test/enhanced/summary.json").read_text())["metrics"]["si_sdr"]["mean"]
    diff_row = next(line for line in text.splitlines() if line.startswith("| difference |"))
    assert f"{enh - noisy:+.3f}" in diff_row
    for png in ("vb_test_scatter.png", "vb_test_spectrograms.png"):
        assert (exp / "images" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the noisy baseline is required
    import shutil

    shutil.rmtree(exp / "scores" / "vb_test" / "noisy")
    assert make_results.main(["--exp-dir", str(exp)]) == 1
    assert "noisy/summary.json: not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- the metric table


def test_columns_groups_and_help_come_from_the_table(data, tmp_path, capsys):
    from se.metrics import METRICS, groups

    table = [m.column for m in METRICS]
    out = tmp_path / "all"
    assert _score(capsys, "--ref", str(data["scp"]["clean"]), "--est", str(data["scp"]["enhanced"]),
                  "--out-dir", str(out), "--metrics", "all", "--nj", "1")[0] == 0  # fmt: skip
    assert read_scores_tsv(out / "scores.tsv")[0] == table
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["metrics"]) == table
    assert set(summary["rates"]) == set(table) | {"native", "resampler"}
    help_text = " ".join(score_cli.build_parser().format_help().split())
    families = {m.group for m in METRICS}
    assert set(groups()) == {"all", "noref", "nodnsmos"} | (families - set(table))
    for g, cols in groups().items():
        assert (f"{g}: " + ", ".join(cols) in help_text) or g == "all", g
    for m in METRICS:  # every column, its rate and its description
        assert f"{m.column} {' '.join(m.description.split())}" in help_text, m.column


def test_a_new_row_in_the_table_is_scored_and_described(data, tmp_path, capsys, monkeypatch):
    """Adding a metric = a function and a row: it appears in scores.tsv, --help and RESULTS.md."""
    import se.metrics
    from se.metrics import Metric

    def peak_ratio(ref, est, fs):  # computed on 8 kHz copies
        assert fs == 8000
        return float(np.max(np.abs(est)) / np.max(np.abs(ref)))

    row = Metric("peak_ratio", "peaks", 8000, peak_ratio, "ratio of the peaks (a test metric)")
    monkeypatch.setattr(se.metrics, "METRICS", se.metrics.METRICS + (row,))
    assert "peaks: peak_ratio" in " ".join(score_cli.build_parser().format_help().split())
    exp = tmp_path / "exp"
    for kind in ("noisy", "enhanced"):
        assert _score(capsys, "--ref", str(data["scp"]["clean"]), "--est", str(data["scp"][kind]),
                      "--out-dir", str(exp / "scores" / "t" / kind), "--metrics", "si_sdr,peaks", "--nj", "1")[0] == 0
    columns, rows = read_scores_tsv(exp / "scores" / "t" / "enhanced" / "scores.tsv")
    assert columns == ["si_sdr", "peak_ratio"]
    ref, _ = sf.read(data["files"]["clean"]["utt_a"], dtype="float64")
    est, _ = sf.read(data["files"]["enhanced"]["utt_a"], dtype="float64")
    r8, e8 = resample(ref, FS, 8000), resample(est, FS, 8000)
    assert rows["utt_a"]["peak_ratio"] == np.max(np.abs(e8)) / np.max(np.abs(r8))
    summary = json.loads((exp / "scores" / "t" / "enhanced" / "summary.json").read_text())
    assert summary["rates"]["peak_ratio"] == 8000
    assert make_results.main(["--exp-dir", str(exp)]) == 0
    text = (exp / "RESULTS.md").read_text()
    assert "- `peak_ratio`: ratio of the peaks (a test metric); 8 kHz copy" in text
    assert "peak_ratio at 8 kHz copies" in text


def test_results_md_descriptions_are_the_tables(data, tmp_path, capsys, monkeypatch):
    import se.metrics
    from dataclasses import replace

    exp = tmp_path / "exp"
    for kind in ("noisy", "enhanced"):
        assert _score(capsys, "--ref", str(data["scp"]["clean"]), "--est", str(data["scp"][kind]),
                      "--out-dir", str(exp / "scores" / "t" / kind), "--metrics", "pesq_wb,si_sdr", "--nj", "1")[0] == 0
    changed = tuple(replace(m, description="CHANGED " + m.column) for m in se.metrics.METRICS)
    monkeypatch.setattr(se.metrics, "METRICS", changed)
    assert make_results.main(["--exp-dir", str(exp)]) == 0
    text = (exp / "RESULTS.md").read_text()
    assert "- `pesq_wb`: CHANGED pesq_wb; 16 kHz copy, never upsampled" in text
    assert "- `si_sdr`: CHANGED si_sdr; native rate" in text
    assert "CHANGED stoi" not in text  # only the scored columns are described
