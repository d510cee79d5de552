"""The bad-input matrix: every CLI (se.bin.* and the recipes' option parsing) given what users
really have. For each case: the exit status, that the message names the file or option, that no
traceback is printed, and that every file that existed before is byte-identical afterwards.

CLIs run in-process (``main(argv)``, SystemExit caught, stderr and log records captured); a few
cases run the real entry point in a subprocess to prove it behaves the same.
Set BAD_INPUT_TABLE=FILE to append one row per case (case, rc, named, traceback, unchanged).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import FS, make_pairs, noisy_of, speech, wav, write_data_dir

REPO = Path(__file__).resolve().parents[1]
TINY_FRCRN = {"channels": 4, "fsmn_hidden": 4, "se_reduction": 2, "lorder": 3}
TINY_YAML = "{channels: 4, fsmn_hidden: 4, se_reduction: 2, lorder: 3}"


# --------------------------------------------------------------------------- fixtures
def bad_file(path: Path, kind: str) -> Path:
    """A file of one bad kind at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 8000
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "nonaudio":
        path.write_text("this is not audio\n" * 50)
    elif kind == "stereo":
        wav(path, np.stack([speech(0.5), speech(0.5, 1)], 1))
    elif kind == "rate":
        wav(path, speech(0.5)[: n // 2], 8000)
    elif kind in ("nan", "inf"):
        x = speech(0.5)
        x[1000:1010] = np.nan if kind == "nan" else np.inf
        wav(path, x)
    elif kind == "short":
        wav(path, speech(0.5)[:100])
    elif kind == "silent":
        wav(path, np.zeros(n))
    elif kind == "truncated":  # a copy cut short: the header still says 16000 samples
        wav(path, speech(1.0))
        path.write_bytes(path.read_bytes()[: 44 + 4 * 8000])
    else:
        raise ValueError(kind)
    return path


def tiny_checkpoint(path: Path, nan: bool = False) -> Path:
    from se.models import build_network, network_kwargs

    torch.manual_seed(0)
    model = build_network("FRCRN_SE_16K", {"network_kwargs": TINY_FRCRN})
    state = model.state_dict()
    if nan:  # a diverged model: every output sample is NaN
        for k, v in state.items():
            if v.is_floating_point() and v.dim() > 1:
                v.fill_(float("nan"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "network": "FRCRN_SE_16K", "sampling_rate": FS,
                "network_kwargs": network_kwargs("FRCRN_SE_16K", {"network_kwargs": TINY_FRCRN})}, path)
    return path


# --------------------------------------------------------------------------- running a CLI


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Result:
    def __init__(self, rc, text, traceback_shown):
        self.rc, self.text, self.traceback = rc, text, traceback_shown


def run_inprocess(module: str, argv: list[str]) -> Result:
    import importlib

    mod = importlib.import_module(module)
    err, out = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    root.addHandler(handler)
    shown = False
    try:
        with redirect_stderr(err), redirect_stdout(out):
            try:
                rc = mod.main(argv)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # escaped main(): the real entry point would print a traceback
                err.write(traceback.format_exc())
                rc, shown = "exception", True
    finally:
        root.removeHandler(handler)
    text = err.getvalue() + out.getvalue()
    return Result(rc, text, shown or "Traceback (most recent call last)" in text)


def run_subprocess(cmd: list[str], cwd: Path | None = None) -> Result:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    text = p.stderr + p.stdout
    return Result(p.returncode, text, "Traceback (most recent call last)" in text)


def record(case: str, res: Result, named: bool, unchanged: bool) -> None:
    table = os.environ.get("BAD_INPUT_TABLE")
    if table:
        first = " ".join(res.text.strip().splitlines()[-1:])[:160] if res.text.strip() else ""
        with open(table, "a") as f:
            f.write(f"{case}\t{res.rc}\t{named}\t{res.traceback}\t{unchanged}\t{first}\n")


def check(case: str, res: Result, before: dict, root: Path, rc=1, names=(), new_files_ok=False) -> None:
    """The four assertions of the matrix (+ no new files left behind by a failed run)."""
    after = snapshot(root)
    unchanged = all(after.get(k) == v for k, v in before.items())
    if rc != 0 and not new_files_ok:
        unchanged = unchanged and set(after) == set(before)
    named = all(n in res.text for n in names)
    record(case, res, named, unchanged)
    want_rc = (res.rc == rc) if rc == 0 else (isinstance(res.rc, int) and res.rc != 0)
    assert want_rc, f"{case}: exit status {res.rc}, expected {rc}\n{res.text[-2000:]}"
    assert not res.traceback, f"{case}: traceback printed\n{res.text[-3000:]}"
    assert named, f"{case}: message does not name {names}\n{res.text[-2000:]}"
    assert unchanged, f"{case}: files changed: " + str(
        sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)))


# --------------------------------------------------------------------------- se.bin.enhance


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    tiny_checkpoint(d / "tiny.pt")
    tiny_checkpoint(d / "nan.pt", nan=True)
    (d / "truncated.pt").write_bytes((d / "tiny.pt").read_bytes()[:5000])
    return d


ENHANCE_FILE_CASES = ["missing", "empty", "nonaudio", "stereo", "nan", "inf", "silent"]


@pytest.mark.parametrize("compat", [False, True], ids=["default", "compat"])
@pytest.mark.parametrize("kind", ENHANCE_FILE_CASES)
def test_enhance_bad_file(kind, compat, ckpt_dir, tmp_path):
    bad = bad_file(tmp_path / "in dir" / "bad file.wav", kind)
    wav(tmp_path / "in dir" / "good.wav", speech(0.5))
    out = tmp_path / "out"
    out.mkdir()
    (out / "good.wav").write_bytes(b"an earlier result")
    before = snapshot(tmp_path)
    target = bad if kind == "missing" else tmp_path / "in dir"
    res = run_inprocess("se.bin.enhance", ["--checkpoint", str(ckpt_dir / "tiny.pt"), "--input", str(target),
                                           "--output-dir", str(out)] + (["--clearvoice-compat"] if compat else []))
    if kind == "silent":  # not an error: silence in, silence out, and a warning naming the file
        assert res.rc == 0 and "bad file.wav: digitally silent input" in res.text, res.text
        assert not np.any(sf.read(str(out / "bad file.wav"))[0]) and sf.info(str(out / "bad file.wav")).frames == 8000
        record(f"enhance {'compat ' if compat else ''}{kind}", res, True, True)
        return
    check(f"enhance {'compat ' if compat else ''}{kind}", res, before, tmp_path, names=["bad file.wav"])


def test_enhance_spaces_in_paths_work(ckpt_dir, tmp_path):
    x = wav(tmp_path / "my input" / "a b.wav", speech(0.5))
    scp = tmp_path / "my input" / "w.scp"
    scp.write_text(f"utt1 {x}\n")
    before = snapshot(tmp_path)
    res = run_inprocess("se.bin.enhance", ["--checkpoint", str(ckpt_dir / "tiny.pt"), "--input", str(scp),
                                           "--output-dir", str(tmp_path / "my out")])
    check("enhance spaces", res, before, tmp_path, rc=0)
    assert sf.info(str(tmp_path / "my out" / "utt1.wav")).frames == 8000


@pytest.mark.parametrize("case", ["dup_ids", "same_output_name", "malformed_scp", "out_uncreatable", "out_is_input",
                                  "wrong_network", "truncated_ckpt", "missing_ckpt", "cuda", "segment_length", "overlap",
                                  "num_jobs", "nan_model"])
def test_enhance_bad_option(case, ckpt_dir, tmp_path):
    a = wav(tmp_path / "in" / "a.wav", speech(0.5))
    scp = tmp_path / "in" / "w.scp"
    scp.write_text(f"a {a}\n")
    (tmp_path / "afile").write_text("x")
    ckpt, inp, out, extra, names = ckpt_dir / "tiny.pt", tmp_path / "in", tmp_path / "out", [], []
    if case == "dup_ids":
        scp.write_text(f"a {a}\na {a}\n")
        inp, names = scp, ["w.scp line 2", "a"]
    elif case == "same_output_name":
        wav(tmp_path / "in" / "a.flac", speech(0.5), subtype="PCM_16")
        names = ["a.flac", "a.wav"]
    elif case == "malformed_scp":
        scp.write_text(f"a {a}\nonlyone\n")
        inp, names = scp, ["w.scp line 2"]
    elif case == "out_uncreatable":
        out, names = tmp_path / "afile" / "sub", ["afile"]
    elif case == "out_is_input":
        inp, out, names = a, tmp_path / "in", ["a.wav", "overwrite the input"]
    elif case == "wrong_network":
        extra, names = ["--network", "MossFormerGAN_SE_16K"], ["tiny.pt", "MossFormerGAN_SE_16K"]
    elif case == "truncated_ckpt":
        ckpt, names = ckpt_dir / "truncated.pt", ["truncated.pt"]
    elif case == "missing_ckpt":
        ckpt, names = tmp_path / "none.pt", ["none.pt"]
    elif case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("CUDA present: --device cuda is valid here")
        extra, names = ["--device", "cuda"], ["--device", "cuda"]
    elif case == "segment_length":
        extra, names = ["--segment-length", "-1"], ["--segment-length"]
    elif case == "overlap":
        extra, names = ["--segment-length", "1", "--segment-overlap", "1"], ["--segment-overlap"]
    elif case == "num_jobs":
        extra, names = ["--num-jobs", "0"], ["--num-jobs"]
    elif case == "nan_model":
        ckpt, names = ckpt_dir / "nan.pt", ["a.wav", "not finite"]
    before = snapshot(tmp_path)
    res = run_inprocess("se.bin.enhance", ["--checkpoint", str(ckpt), "--input", str(inp), "--output-dir", str(out),
                                           *extra])
    check(f"enhance {case}", res, before, tmp_path, names=names)


def test_enhance_nan_model_float_output(ckpt_dir, tmp_path):
    """A non-finite model output never becomes a FLOAT file either."""
    wav(tmp_path / "in" / "a.wav", speech(0.5))
    before = snapshot(tmp_path)
    res = run_inprocess("se.bin.enhance", ["--checkpoint", str(ckpt_dir / "nan.pt"), "--input", str(tmp_path / "in"),
                                           "--output-dir", str(tmp_path / "out"), "--output-subtype", "FLOAT"])
    check("enhance nan_model FLOAT", res, before, tmp_path, names=["a.wav"])


# --------------------------------------------------------------------------- se.bin.score


@pytest.mark.parametrize("case", ["missing", "empty", "nonaudio", "stereo", "rate", "nan", "inf", "dup_ids",
                                  "mismatched_ids", "out_uncreatable", "out_is_input", "nj", "metrics",
                                  "max_len_diff"])
def test_score_bad_input(case, tmp_path):
    pairs = make_pairs(tmp_path / "a b")
    ref = tmp_path / "ref.scp"
    est = tmp_path / "est.scp"
    ref.write_text("".join(f"{u} {pairs[u][1]}\n" for u in sorted(pairs)))
    est.write_text("".join(f"{u} {pairs[u][0]}\n" for u in sorted(pairs)))
    (tmp_path / "afile").write_text("x")
    out, extra, names, rc = tmp_path / "scores", ["--metrics", "si_sdr", "--nj", "1"], [], 1
    if case in ("missing", "empty", "nonaudio", "stereo", "rate", "nan", "inf"):
        bad = bad_file(tmp_path / "bad est.wav", kind=case)
        est.write_text(est.read_text().replace(str(pairs["u1"][0]), str(bad)))
        names = ["bad est.wav"]
        if case in ("nan", "inf"):
            names = ["bad est.wav", "NaN/Inf"]
        if case == "rate":
            extra += ["--fs", str(FS)]
    elif case == "dup_ids":
        est.write_text(est.read_text() + f"u1 {pairs['u1'][0]}\n")
        names = ["est.scp line 4", "u1"]
    elif case == "mismatched_ids":
        est.write_text(est.read_text().replace("u2 ", "u9 "))
        names = ["u9", "u2"]
    elif case == "out_uncreatable":
        out, names = tmp_path / "afile" / "x", ["afile"]
    elif case == "out_is_input":
        # the references live in the output dir under the name of an output file
        out = tmp_path / "scores"
        out.mkdir()
        ref = out / "ref.scp"
        ref.write_text((tmp_path / "ref.scp").read_text())
        names = ["ref.scp"]
    elif case == "nj":
        extra, names = ["--nj", "0"], ["--nj"]
    elif case == "metrics":
        extra, names = ["--metrics", "pesq,bogus"], ["bogus"]
    elif case == "max_len_diff":
        extra, names = ["--max-len-diff", "-1", "--nj", "1"], ["--max-len-diff"]
    before = snapshot(tmp_path)
    res = run_inprocess("se.bin.score", ["--ref", str(ref), "--est", str(est), "--out-dir", str(out), *extra])
    check(f"score {case}", res, before, tmp_path, rc=rc, names=names)
    if rc == 0:
        from se.results import read_scores_tsv

        _, rows = read_scores_tsv(out / "scores.tsv")
        assert np.isnan(rows["u1"]["si_sdr"]) and np.isfinite(rows["u0"]["si_sdr"])
        assert "nonfinite_est" in (out / "notes.tsv").read_text()


# --------------------------------------------------------------------------- se.bin.make_data_dir


@pytest.mark.parametrize("case", ["missing_dir", "missing", "empty", "nonaudio", "stereo", "rate", "nan", "inf",
                                  "unmatched", "dup_ids_list", "out_uncreatable", "out_is_input", "spaces"])
def test_make_data_dir_bad_input(case, tmp_path):
    pairs = make_pairs(tmp_path / "corpus")
    nd, cd = tmp_path / "corpus" / "noisy", tmp_path / "corpus" / "clean"
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "data" / "train"
    # an earlier data dir at the destination: a failed run must leave it as it was
    write_data_dir(out, {"old": pairs["u0"]})
    argv, names, rc = ["--noisy-dir", str(nd), "--clean-dir", str(cd)], [], 1
    if case == "missing_dir":
        argv[1], names = str(tmp_path / "nowhere"), ["nowhere"]
    elif case in ("missing", "empty", "nonaudio", "stereo", "rate", "nan", "inf"):
        if case == "missing":  # a list naming a file that is not there
            lst = tmp_path / "list.txt"
            lst.write_text(f"{pairs['u0'][0]} {pairs['u0'][1]}\n{tmp_path}/gone.wav {pairs['u1'][1]}\n")
            argv, names = ["--clearvoice-list", str(lst)], ["gone.wav"]
        else:
            bad_file(nd / "u1.wav", case)
            names = ["u1.wav"]
            if case == "rate":
                argv += ["--fs", str(FS)]
    elif case == "unmatched":
        wav(nd / "extra.wav", speech(0.5))
        names = ["extra.wav"]
    elif case == "dup_ids_list":
        lst = tmp_path / "list.txt"
        lst.write_text(f"{pairs['u0'][0]} {pairs['u0'][1]}\n{pairs['u0'][0]} {pairs['u0'][1]}\n")
        argv, names = ["--clearvoice-list", str(lst)], ["list.txt line 2"]
    elif case == "out_uncreatable":
        out, names = tmp_path / "afile" / "d", ["afile"]
    elif case == "out_is_input":
        lst = out / "wav.scp"  # the list given as input is a file the tool would write
        lst.write_text(f"{pairs['u0'][0]} {pairs['u0'][1]}\n")
        argv, names = ["--clearvoice-list", str(lst)], ["wav.scp"]
    elif case == "spaces":
        sp = tmp_path / "my corpus"
        make_pairs(sp)
        argv, rc = ["--noisy-dir", str(sp / "noisy"), "--clean-dir", str(sp / "clean")], 0
        out = tmp_path / "my data"
    before = snapshot(tmp_path)
    res = run_inprocess("se.bin.make_data_dir", [*argv, "--out", str(out)])
    check(f"make_data_dir {case}", res, before, tmp_path, rc=rc, names=names)


# --------------------------------------------------------------------------- se.bin.validate_data_dir


@pytest.mark.parametrize("case", ["missing_dir", "missing", "empty", "nonaudio", "stereo", "rate", "nan", "inf",
                                  "short", "silent", "truncated", "dup_ids", "mismatched_ids", "length", "swapped", "unrelated",
                                  "nj"])
def test_validate_data_dir_bad_input(case, tmp_path):
    pairs = make_pairs(tmp_path / "corpus", count=3, seconds=1.0)
    d = tmp_path / "data" / "train"
    names, argv = [], []
    if case == "missing_dir":
        d, names = tmp_path / "nowhere", ["nowhere"]
    elif case in ("missing", "empty", "nonaudio", "stereo", "rate", "nan", "inf", "short", "silent", "truncated"):
        bad = bad_file(tmp_path / "corpus" / "bad clean.wav", case)
        pairs["u1"] = (pairs["u1"][0], bad)
        write_data_dir(d, pairs, {u: sf.info(str(pairs[u][0])).frames for u in pairs})
        names = ["bad clean.wav", "spk1.scp line 2"]
    else:
        write_data_dir(d, pairs)
        if case == "dup_ids":
            with open(d / "wav.scp", "a") as f:
                f.write(f"u1 {pairs['u1'][0]}\n")
            names = ["wav.scp line 4", "u1"]
        elif case == "mismatched_ids":
            (d / "spk1.scp").write_text((d / "spk1.scp").read_text().replace("u2 ", "u7 "))
            names = ["u2", "u7"]
        elif case == "length":
            (d / "utt2num_samples").write_text((d / "utt2num_samples").read_text().replace("u2 16000", "u2 15000"))
            names = ["utt2num_samples line 3", "u2"]
        elif case == "swapped":
            n, c = pairs["u1"]
            write_data_dir(d, {**pairs, "u1": (c, n)})
            names = ["u1", "swapped"]
        elif case == "unrelated":
            other = wav(tmp_path / "other.wav", noisy_of(speech(1.0, 7), 7, 30))  # another utterance
            write_data_dir(d, {**pairs, "u1": (other, pairs["u1"][1])})
            names = ["u1", "correlat"]
        elif case == "nj":
            argv, names = ["--nj", "0"], ["--nj"]
    before = snapshot(tmp_path)
    res = run_inprocess("se.bin.validate_data_dir", [str(d), "--fs", str(FS), *argv])
    check(f"validate_data_dir {case}", res, before, tmp_path, names=names)


# --------------------------------------------------------------------------- se.bin.train


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train data")
    for name, count in (("train", 4), ("valid", 2)):
        pairs = make_pairs(root / "audio" / name, count, 0.5)
        write_data_dir(root / name, pairs)
    return root


TRAIN_CASES = ["unknown_key_file", "unknown_key_cli", "wrong_type_top", "wrong_type_nested", "unknown_key_nested",
               "bad_yaml", "missing_data", "wrong_rate_data", "nan_in_data", "exp_uncreatable", "truncated_init",
               "wrong_network_init", "refused_resume", "max_epoch_negative"]


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_bad_input(case, train_data, tmp_path):
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"network: FRCRN_SE_16K\nnetwork_kwargs: {TINY_YAML}\nmax_length: 0.25\nbatch_size: 2\n"
                    "num_workers: 0\nmax_steps: 1\nmax_epoch: 1\n")
    (tmp_path / "afile").write_text("x")
    train, valid, exp = train_data / "train", train_data / "valid", tmp_path / "exp"
    extra, names = [], []
    if case == "unknown_key_file":
        conf.write_text(conf.read_text() + "bacth_size: 3\n")
        names = ["conf.yaml", "bacth_size"]
    elif case == "unknown_key_cli":
        extra, names = ["--bacth_size", "3"], ["bacth_size"]
    elif case == "wrong_type_top":
        extra, names = ["--batch_size", "two"], ["batch_size", "two"]
    elif case == "wrong_type_nested":
        conf.write_text(conf.read_text().replace("channels: 4", "channels: four"))
        names = ["channels", "four"]
    elif case == "unknown_key_nested":
        conf.write_text(conf.read_text().replace("channels: 4", "chanels: 4"))
        names = ["chanels"]
    elif case == "bad_yaml":
        conf.write_text("network: [unclosed\n")
        names = ["conf.yaml"]
    elif case == "missing_data":
        train, names = tmp_path / "nodata", ["nodata"]
    elif case == "wrong_rate_data":
        (tmp_path / "d8").mkdir()
        for f in ("wav.scp", "spk1.scp", "utt2num_samples"):
            (tmp_path / "d8" / f).write_bytes((train / f).read_bytes())
        (tmp_path / "d8" / "fs").write_text("8000\n")
        train, names = tmp_path / "d8", ["d8", "8000"]
    elif case == "nan_in_data":
        pairs = make_pairs(tmp_path / "nanaudio", 2, 0.5)
        x = speech(0.5)
        x[::50] = np.nan  # wherever the crop falls
        wav(pairs["u1"][0], x)
        train, names = write_data_dir(tmp_path / "dnan", pairs), ["u1.wav"]
        extra = ["--num_workers", "1"]  # found by a DataLoader worker
    elif case == "exp_uncreatable":
        exp, names = tmp_path / "afile" / "exp", ["afile"]
    elif case == "truncated_init":
        (tmp_path / "t.pt").write_bytes(b"PK\x03\x04 truncated")
        extra, names = ["--init", str(tmp_path / "t.pt")], ["t.pt"]
    elif case == "wrong_network_init":
        torch.save({"model": {"generator.weight": torch.zeros(3)}}, tmp_path / "other.pt")
        extra, names = ["--init", str(tmp_path / "other.pt")], ["other.pt"]
    elif case == "refused_resume":
        exp.mkdir()
        tiny = tiny_checkpoint(exp / "model.ckpt-1-5.pt")
        obj = torch.load(tiny, weights_only=False)
        obj["network_kwargs"] = {**obj["network_kwargs"], "channels": 8}
        torch.save(obj, tiny)
        (exp / "last_checkpoint").write_text("model.ckpt-1-5.pt\n")
        (exp / "config.yaml").write_text("earlier: config\n")
        (exp / "train_provenance.yaml").write_text("earlier: provenance\n")
        names = ["model.ckpt-1-5.pt", "cannot resume"]
    elif case == "max_epoch_negative":
        extra, names = ["--max_epoch", "-3"], ["max_epoch"]
    before = snapshot(tmp_path)
    res = run_inprocess("se.bin.train", ["--config", str(conf), "--train-data", str(train), "--valid-data",
                                         str(valid), "--exp-dir", str(exp), *extra])
    check(f"train {case}", res, before, tmp_path, names=names, new_files_ok=case not in ("refused_resume",))


# --------------------------------------------------------------------------- average / results


@pytest.mark.parametrize("case", ["missing_exp", "truncated", "num", "out_is_input", "out_uncreatable"])
def test_average_checkpoints_bad_input(case, tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    tiny = tiny_checkpoint(exp / "model.ckpt-1-5.pt")
    obj = torch.load(tiny, weights_only=False)
    obj["trainer"] = {"history": {"model.ckpt-1-5.pt": 0.5}}
    torch.save(obj, tiny)
    (exp / "last_checkpoint").write_text("model.ckpt-1-5.pt\n")
    (tmp_path / "afile").write_text("x")
    argv, names = ["--exp-dir", str(exp)], []
    if case == "missing_exp":
        argv, names = ["--exp-dir", str(tmp_path / "noexp")], ["noexp"]
    elif case == "truncated":
        tiny.write_bytes(tiny.read_bytes()[:3000])
        names = ["model.ckpt-1-5.pt"]
    elif case == "num":
        argv, names = argv + ["--num", "0"], ["--num"]
    elif case == "out_is_input":
        argv, names = argv + ["--out", str(tiny)], ["model.ckpt-1-5.pt"]
    elif case == "out_uncreatable":
        argv, names = argv + ["--out", str(tmp_path / "afile" / "avg.pt")], ["afile"]
    before = snapshot(tmp_path)
    res = run_inprocess("se.bin.average_checkpoints", argv)
    check(f"average_checkpoints {case}", res, before, tmp_path, names=names)


@pytest.mark.parametrize("case", ["missing_root", "exp_uncreatable"])
def test_make_results_bad_input(case, tmp_path):
    (tmp_path / "afile").write_text("x")
    exp, root, names = tmp_path / "exp", tmp_path / "exp" / "scores", []
    exp.mkdir()
    if case == "missing_root":
        names = ["scores"]
    else:
        root.mkdir(parents=True)
        exp, names = tmp_path / "afile" / "exp", ["afile"]
    before = snapshot(tmp_path)
    res = run_inprocess("se.bin.make_results", ["--exp-dir", str(exp), "--scores-root", str(root)])
    check(f"make_results {case}", res, before, tmp_path, names=names)


# --------------------------------------------------------------------------- real entry points


def test_real_entry_point_same_behaviour(ckpt_dir, tmp_path):
    """python -m se.bin.enhance in a subprocess (the train entry point: the steps/train.sh test)."""
    bad = bad_file(tmp_path / "in" / "bad.wav", "nan")
    cmd = ["-m", "se.bin.enhance", "--checkpoint", str(ckpt_dir / "tiny.pt"), "--input", str(bad),
           "--output-dir", str(tmp_path / "out")]
    before = snapshot(tmp_path)
    res = run_subprocess([sys.executable, *cmd])
    check("subprocess enhance_nan", res, before, tmp_path, names=["bad.wav", "NaN"])
    assert res.text.count("se.bin.enhance: error: ") == 1


# --------------------------------------------------------------------------- recipes' option parsing

RECIPE = """#!/usr/bin/env bash
set -euo pipefail
# first stage
stage=0
# last stage
stop_stage=3
# jobs
nj=2
# a weight
alpha=0.5
# a flag
flag=false
# a name
name=x
. "{root}/steps/parse_options.sh"
if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then echo stage1 >> "{out}"; fi
echo "Successfully finished"
"""


@pytest.mark.parametrize("case", [("--stage", "abc"), ("--stop-stage", "1x"), ("--nj", "two"), ("--alpha", "0.5.1"),
                                  ("--flag", "yes"), ("--bogus", "1"), ("--stage", "")],
                         ids=["stage", "stop_stage", "nj", "float", "bool", "unknown", "empty_stage"])
def test_recipe_options_are_checked(case, tmp_path):
    out = tmp_path / "stages.txt"
    script = tmp_path / "run.sh"
    script.write_text(RECIPE.format(root=REPO, out=out))
    before = snapshot(tmp_path)
    res = run_subprocess(["bash", str(script), *case])
    check(f"recipe {case[0]} {case[1]!r}", res, before, tmp_path, names=[case[0]])
    assert "Successfully finished" not in res.text


def test_recipe_good_options_still_work(tmp_path):
    out = tmp_path / "stages.txt"
    script = tmp_path / "run.sh"
    script.write_text(RECIPE.format(root=REPO, out=out))
    res = run_subprocess(["bash", str(script), "--stage", "1", "--nj", "4", "--alpha", "1e-3", "--name", "a b"])
    assert res.rc == 0 and out.read_text() == "stage1\n", res.text
    res = run_subprocess(["bash", str(script), "--stage", "-1", "--alpha=.25"])
    assert res.rc == 0, res.text


@pytest.mark.parametrize("script, option, value", [
    ("egs/mini/run.sh", "--stage", "one"), ("egs/voicebank_demand/run.sh", "--stop-stage", "5b"),
    ("steps/score.sh", "--nj", "four"), ("steps/score.sh", "--max-len-diff", "0.1s"),
    ("steps/enhance.sh", "--nj", "2.5"), ("steps/train.sh", "--num-nodes", "two")])
def test_real_scripts_reject_malformed_numbers(script, option, value, tmp_path):
    res = run_subprocess(["bash", str(REPO / script), option, value])
    record(f"{script} {option} {value}", res, option in res.text, True)
    assert res.rc == 1 and f"option {option} takes" in res.text and value in res.text, res.text
    assert "Successfully finished" not in res.text and "Traceback" not in res.text


# --------------------------------------------------------------------------- config levels, --debug


@pytest.mark.parametrize("kwargs, message", [
    ({"ndf": "wide"}, "discriminator_kwargs.ndf must be an integer (default 16), got 'wide'"),
    ({"attn_dropout": True}, "discriminator_kwargs.attn_dropout must be a number"),
    ({"ndff": 8}, "discriminator_kwargs: unknown key 'ndff' for MetricDiscriminator"),
    ([1, 2], "discriminator_kwargs must be a mapping"),
])
def test_discriminator_kwargs_are_type_checked(kwargs, message):
    from se.config import ConfigError
    from se.models.mossformer_gan import MossFormerGAN

    with pytest.raises(ConfigError) as exc:
        MossFormerGAN.discriminator_kwargs({"discriminator_kwargs": kwargs})
    assert message in str(exc.value)


def test_debug_shows_the_traceback(ckpt_dir, tmp_path):
    a = wav(tmp_path / "a.wav", speech(0.5))
    argv = ["--checkpoint", str(tmp_path / "none.pt"), "--input", str(a), "--output-dir", str(tmp_path / "o")]
    assert run_inprocess("se.bin.enhance", argv).rc == 1
    res = run_inprocess("se.bin.enhance", [*argv, "--debug"])
    assert res.rc == "exception" and "CheckpointError: " in res.text and "none.pt: checkpoint not found" in res.text


def test_cli_maps_user_errors_to_one_line(capsys):
    import errno

    from se import cli
    from se.audio import AudioError

    def worker_error(argv):  # what a DataLoader re-raises: the worker's traceback inside the message
        raise AudioError("Caught AudioError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                         "last):\n  File \"x.py\", line 1, in f\nse.audio.AudioError: /d/a.wav (wav.scp line 7): "
                         "3 non-finite (NaN) samples")

    def disk_full(argv):
        raise OSError(errno.ENOSPC, "No space left on device")

    def missing(argv):
        open("/nonexistent-dir/x.txt", "w")

    def bug(argv):
        raise KeyError("internal")

    assert cli.run(worker_error, [], prog="t") == 1
    assert capsys.readouterr().err == "t: error: /d/a.wav (wav.scp line 7): 3 non-finite (NaN) samples\n"
    assert cli.run(disk_full, [], prog="t") == 1
    assert "t: error: No space left on device (errno 28)" in capsys.readouterr().err
    assert cli.run(missing, [], prog="t") == 1
    assert capsys.readouterr().err == "t: error: /nonexistent-dir/x.txt: No such file or directory\n"
    with pytest.raises(KeyError):  # a true internal error keeps its traceback
        cli.run(bug, [], prog="t")


def test_train_sh_refused_resume_leaves_exp_dir_and_log(train_data, tmp_path):
    """Through steps/train.sh (and the real `python -m se.bin.train` entry point): the resume is
    checked before the job runner starts (and rewrites exp/log/train.log), so nothing in the exp
    dir changes."""
    exp = tmp_path / "exp"
    (exp / "log").mkdir(parents=True)
    tiny = tiny_checkpoint(exp / "model.ckpt-1-5.pt")
    (exp / "last_checkpoint").write_text("model.ckpt-1-5.pt\n")
    (exp / "log" / "train.log").write_text("the log of the earlier run\n")
    conf = tmp_path / "conf.yaml"
    conf.write_text("network: FRCRN_SE_16K\nnetwork_kwargs: {channels: 8, fsmn_hidden: 4, se_reduction: 2, lorder: 3}\n")
    before = snapshot(tmp_path)
    env_path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    res = run_subprocess(["env", f"PATH={env_path}", "bash", str(REPO / "steps" / "train.sh"), "--config", str(conf),
                          "--train-data", str(train_data / "train"), "--valid-data", str(train_data / "valid"),
                          "--exp-dir", str(exp)])
    check("steps/train.sh refused_resume", res, before, tmp_path, names=["model.ckpt-1-5.pt", "cannot resume"])
    assert tiny.is_file()


def test_a_tool_run_again_in_one_process_logs_to_the_current_stderr(monkeypatch):
    # a tool run earlier in the process (the trainer, a CLI called by a test) set up logging
    # on a stream that has been closed since, and its handler may even have been put back by
    # code that saved and restored the root handlers; the next tool must not write there
    # ("--- Logging error ---")
    import io
    import logging

    from se import cli

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", root.handlers[:])  # restored after the test
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    cli.setup_logging()
    saved = root.handlers[:]
    cli.setup_logging()  # e.g. the trainer inside tests.helpers.train_in_process ...
    root.handlers[:] = saved  # ... which then puts the earlier handlers back
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    cli.setup_logging()
    logging.getLogger("se.test").info("hello from the second run")
    assert "hello from the second run" in second.getvalue()
    assert "Logging error" not in second.getvalue()
