"""Shell plumbing: steps/parse_options.sh, the local job runner steps/run.sh, cmd.sh and the
torchrun launcher steps/train.sh (with steps/lib/torchrun_node.sh). Fast: no torch, no Slurm."""

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "steps" / "run.sh"
TRAIN = REPO / "steps" / "train.sh"
TORCHRUN_NODE = REPO / "steps" / "lib" / "torchrun_node.sh"


def sh(args, cwd=None, env=None, timeout=60):
    """Run a command; return the CompletedProcess with text stdout/stderr."""
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ---------------------------------------------------------------- steps/parse_options.sh

OPTIONS_SCRIPT = f"""#!/usr/bin/env bash
set -euo pipefail
# number of parallel jobs
nj=4
# first stage to run
foo_bar=3
overwrite=false  # recompute existing outputs
# a value with spaces
title="a b"
help_message="Usage: $0 [options] <dir>
e.g.: $0 --nj 2 data/x"
. {REPO}/steps/parse_options.sh
printf '%s\\n' "nj=$nj" "foo_bar=$foo_bar" "overwrite=$overwrite" "title=$title" "args=$*" "nargs=$#"
"""


@pytest.fixture
def options_script(tmp_path):
    script = tmp_path / "opts.sh"
    script.write_text(OPTIONS_SCRIPT)
    script.chmod(0o755)
    return script


def parsed(result) -> dict:
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


def test_parse_options_defaults(options_script):
    values = parsed(sh([options_script]))
    assert values == {"nj": "4", "foo_bar": "3", "overwrite": "false", "title": "a b", "args": "",
                      "nargs": "0"}


def test_parse_options_sets_dashed_names_and_keeps_positionals(options_script):
    values = parsed(sh([options_script, "--foo-bar", "7", "--nj=2", "--title=x=y z", "--overwrite",
                        "true", "data/a", "--not-an-option"]))
    assert values["foo_bar"] == "7"
    assert values["nj"] == "2"
    assert values["title"] == "x=y z"
    assert values["overwrite"] == "true"
    assert values["args"] == "data/a --not-an-option"
    assert values["nargs"] == "2"


def test_parse_options_double_dash_ends_options(options_script):
    values = parsed(sh([options_script, "--nj", "1", "--", "--nj", "5"]))
    assert values["nj"] == "1"
    assert values["args"] == "--nj 5"


def test_parse_options_empty_value(options_script):
    assert parsed(sh([options_script, "--title", ""]))["title"] == ""


@pytest.mark.parametrize("args, message", [
    (["--no-such", "1"], "unknown option --no-such"),
    (["--path", "/x"], "unknown option --path"),   # a shell variable, but not a declared option
    (["--overwrite", "yes"], "option --overwrite takes true or false, not 'yes'"),
    (["--overwrite=1"], "option --overwrite takes true or false, not '1'"),
    (["--nj"], "option --nj needs a value"),
    (["--nj", "2", "--foo-bar"], "option --foo-bar needs a value"),
])
def test_parse_options_rejects(options_script, args, message):
    result = sh([options_script, *args])
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_parse_options_help(options_script, flag):
    result = sh([options_script, "--nj", "9", flag])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"Usage: {options_script} [options] <dir>\ne.g.: ")
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  --")}
    assert list(lines) == ["--nj", "--foo-bar", "--overwrite", "--title", "--config"]
    # defaults, not the values given before --help, and the comment of each option
    assert lines["--nj"].split("#")[0].split() == ["--nj", "4"]
    assert lines["--nj"].endswith("# number of parallel jobs")
    assert lines["--foo-bar"].endswith("# first stage to run")
    assert lines["--overwrite"].split("#")[0].split() == ["--overwrite", "false"]
    assert lines["--overwrite"].endswith("# recompute existing outputs")
    assert "--title 'a b'" in lines["--title"]
    assert "nj=" not in out  # the script did not go on


def test_parse_options_config_file(options_script, tmp_path):
    conf = tmp_path / "x.conf"
    conf.write_text("# comment\nnj=8\n\noverwrite=true\ntitle='from conf'\n")
    values = parsed(sh([options_script, "--nj", "2", "--config", conf, "pos"]))
    assert values["nj"] == "2"  # the command line wins, wherever --config stands
    assert values["overwrite"] == "true"
    assert values["title"] == "from conf"
    assert values["args"] == "pos"


@pytest.mark.parametrize("text, message", [
    ("bogus=1\n", "unknown option 'bogus'"),
    ("overwrite=maybe\n", "option --overwrite takes true or false"),
    ("echo hi\n", "expected name=value"),
])
def test_parse_options_bad_config_file(options_script, tmp_path, text, message):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    result = sh([options_script, "--config", conf])
    assert result.returncode == 1
    assert message in result.stderr
    assert sh([options_script, "--config", tmp_path / "missing.conf"]).returncode == 1


def test_parse_options_declared_config_is_a_plain_option(tmp_path):
    script = tmp_path / "s.sh"
    script.write_text(f"# training config\nconfig=\n. {REPO}/steps/parse_options.sh\necho \"$config\"\n")
    result = sh(["bash", script, "--config", "conf/x.yaml"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "conf/x.yaml"


def test_parse_options_after_the_script_changed_directory(tmp_path):
    """Recipes cd to their own dir before parsing; they are often started from elsewhere."""
    (tmp_path / "egs" / "x").mkdir(parents=True)
    script = tmp_path / "egs" / "x" / "run.sh"
    script.write_text(f"""#!/usr/bin/env bash
set -euo pipefail
# first stage to run
stage=0
cd "$(dirname "$0")"
. {REPO}/steps/parse_options.sh
echo "stage=$stage in $PWD"
""")
    script.chmod(0o755)
    result = sh(["egs/x/run.sh", "--stage", "3"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"stage=3 in {script.parent}"
    help_lines = sh(["egs/x/run.sh", "--help"], cwd=tmp_path).stdout.splitlines()
    assert help_lines[1].split() == ["--stage", "0", "#", "first", "stage", "to", "run"]


# ---------------------------------------------------------------- steps/run.sh


def test_run_help():
    result = sh([RUN, "--help"])
    assert result.returncode == 0
    assert "steps/run.sh   [options] [JOB=1:N] LOGFILE command ..." in result.stdout


def test_run_single_job_log_header_and_trailer(tmp_path):
    log = tmp_path / "new" / "dir" / "one.log"  # the runner creates the log dir
    result = sh([RUN, log, "echo", "hello world"])
    assert result.returncode == 0, result.stderr
    lines = log_lines(log)
    assert lines[0] == "# echo 'hello world'"
    assert lines[1].startswith("# Started at ")
    assert lines[2].startswith("# Running on ")
    assert lines[3] == "hello world"
    assert lines[-2].startswith("# Accounting: time=") and "threads=1" in lines[-2]
    assert lines[-1].startswith("# Ended (code 0) at ")


def test_run_substitutes_job_in_log_and_command(tmp_path):
    result = sh([RUN, "JOB=1:3", tmp_path / "log" / "x.JOB.log", "echo", "job JOB of JOBS",
                 ">", tmp_path / "out.JOB.txt"])
    assert result.returncode == 0, result.stderr
    for n in (1, 2, 3):
        assert log_lines(tmp_path / "log" / f"x.{n}.log")[0] == \
            f"# echo 'job {n} of JOBS' > {tmp_path}/out.{n}.txt"
        assert (tmp_path / f"out.{n}.txt").read_text() == f"job {n} of JOBS\n"


def test_run_any_range_name_and_options_around_it(tmp_path):
    result = sh([RUN, "--mem", "2G", "SPLIT=4:5", "--gpu", "1", tmp_path / "s.SPLIT.log",
                 "echo part SPLIT"])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.glob("s.*.log")) == ["s.4.log", "s.5.log"]
    assert "part 5" in log_lines(tmp_path / "s.5.log")


def test_run_quoting_pipes_and_redirects(tmp_path):
    out = tmp_path / "count"
    # one argument: bash code as it is
    assert sh([RUN, tmp_path / "a.log", f"echo a b c | wc -w > {out}"]).returncode == 0
    assert out.read_text().strip() == "3"
    # several arguments: each stays one argument, bare operators stay operators
    assert sh([RUN, tmp_path / "b.log", "printf", "%s\\n", "x y", "$HOME", "|", "wc", "-l"]).returncode == 0
    lines = log_lines(tmp_path / "b.log")
    assert lines[0] == "# printf '%s\\n' 'x y' '$HOME' | wc -l"
    assert lines[3].strip() == "2"


def test_run_array_jobs_run_in_parallel_up_to_max_jobs_run(tmp_path):
    def spans(max_jobs, seconds):
        stamps = tmp_path / f"stamps{max_jobs}"
        result = sh([RUN, "--max-jobs-run", max_jobs, "JOB=1:3", tmp_path / f"p{max_jobs}.JOB.log",
                     f"s=$(date +%s.%N); sleep {seconds}; echo $s $(date +%s.%N) >> {stamps}"])
        assert result.returncode == 0, result.stderr
        return sorted(tuple(map(float, line.split())) for line in stamps.read_text().splitlines())

    parallel = spans(3, 1.0)
    assert len(parallel) == 3
    assert max(start for start, _ in parallel) < min(end for _, end in parallel)  # all overlap
    serial = spans(1, 0.2)
    assert all(serial[i][1] <= serial[i + 1][0] for i in range(2))  # one after the other


def test_run_failure_message_and_exit_code(tmp_path):
    result = sh([RUN, "JOB=1:3", tmp_path / "f.JOB.log", "[ JOB != 2 ] || exit 3"])
    assert result.returncode == 1
    assert f"1 / 3 failed, log is in {tmp_path}/f.*.log" in result.stderr
    assert log_lines(tmp_path / "f.2.log")[-1].startswith("# Ended (code 3) at ")
    assert log_lines(tmp_path / "f.1.log")[-1].startswith("# Ended (code 0) at ")
    single = sh([RUN, tmp_path / "g.log", "false"])
    assert single.returncode == 1
    assert f"1 / 1 failed, log is in {tmp_path}/g.log" in single.stderr


@pytest.mark.parametrize("args, message", [
    (["JOB=1:2", "one.log", "true"], "2 jobs would share one log: put JOB in one.log"),
    (["JOB=3:2", "x.JOB.log", "true"], "empty job range"),
    (["x.log"], "expected a LOGFILE and a command"),
    (["--num-nodes", "2", "x.log", "true"], "--num-nodes above 1 needs a cluster"),
    (["--max-jobs-run", "0", "x.log", "true"], "--max-jobs-run takes a positive integer"),
    (["x.log", "true", "--gpu"], None),  # after LOGFILE everything is the command: runs fine
])
def test_run_usage_errors(tmp_path, args, message):
    result = sh([RUN, *args], cwd=tmp_path)
    if message is None:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 1
    assert message in result.stderr
    assert "Usage: steps/run.sh" in result.stderr


def test_run_signal_stops_the_jobs(tmp_path):
    proc = subprocess.Popen([str(RUN), "JOB=1:2", str(tmp_path / "k.JOB.log"), "sleep 30"],
                            stderr=subprocess.PIPE, text=True)
    for _ in range(100):  # wait until both jobs started
        if all((tmp_path / f"k.{n}.log").exists() for n in (1, 2)):
            break
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by signal 15" in err
    for n in (1, 2):
        assert log_lines(tmp_path / f"k.{n}.log")[-1].startswith("# Ended (code 143)")


# ---------------------------------------------------------------- cmd.sh


def source_cmd(backend, cwd):
    script = f"set -euo pipefail; . {REPO}/cmd.sh; echo \"$train_cmd|$decode_cmd|$score_cmd|$SE_ROOT\""
    env = {k: v for k, v in os.environ.items() if k not in ("SE_ROOT", "train_cmd")}
    if backend is not None:
        env["cmd_backend"] = backend
    return sh(["bash", "-c", script], cwd=cwd, env=env)


@pytest.mark.parametrize("backend, runner", [
    (None, f"{REPO}/steps/run.sh"),
    ("local", f"{REPO}/steps/run.sh"),
    ("slurm", f"{REPO}/steps/slurm.sh --config {REPO}/conf/slurm.conf"),
])
def test_cmd_sh_backends(tmp_path, backend, runner):
    result = source_cmd(backend, cwd=tmp_path)  # sourced from elsewhere, as from egs/<corpus>/
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{runner}|{runner}|{runner}|{REPO}"


def test_cmd_sh_rejects_unknown_backend(tmp_path):
    result = source_cmd("sge", cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown cmd_backend 'sge' (expected local or slurm)" in result.stderr
    assert result.stdout == ""


def test_job_runners_keep_the_runners_given(tmp_path):
    """A recipe's --train-cmd/--decode-cmd/--score-cmd win over cmd.sh's; the empty ones take cmd.sh's."""
    script = (f'set -euo pipefail; SE_ROOT={REPO}; . {REPO}/steps/lib/common.sh; train_cmd="my.sh --mem 1G"; '
              'decode_cmd=; score_cmd=; job_runners; echo "$train_cmd|$decode_cmd|$score_cmd"')
    env = {k: v for k, v in os.environ.items() if not k.endswith("_cmd")}
    result = sh(["bash", "-c", script], cwd=tmp_path, env={**env, "cmd_backend": "slurm"})
    slurm = f"{REPO}/steps/slurm.sh --config {REPO}/conf/slurm.conf"
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"my.sh --mem 1G|{slurm}|{slurm}"
    wrong = sh(["bash", "-c", script], cwd=tmp_path, env={**env, "cmd_backend": "sge"})
    assert wrong.returncode == 1 and "unknown cmd_backend 'sge'" in wrong.stderr and wrong.stdout == ""


# ---------------------------------------------------------------- steps/train.sh


@pytest.fixture
def recipe(tmp_path):
    """A recipe dir with config and data dirs, and a bin dir with fake torchrun and scontrol."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "x.yaml").write_text("network: x\n")
    for name in ("train", "valid"):
        (tmp_path / "data" / name).mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {
        "torchrun": 'echo "torchrun $*"; echo "node=${SLURM_NODEID:-none}"\n',
        "scontrol": '[ "$1 $2" = "show hostnames" ] && printf "gpu07\\ngpu08\\n"\n',
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "train_cmd"}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return tmp_path, env


DATA_ARGS = ["--config", "conf/x.yaml", "--train-data", "data/train", "--valid-data", "data/valid",
             "--exp-dir", "exp/x"]
TRAINER = ["-m", "se.bin.train", "--config", "conf/x.yaml", "--train-data", "data/train",
           "--valid-data", "data/valid", "--exp-dir", "exp/x"]


def dry_run(recipe, *args):
    cwd, env = recipe
    result = sh([TRAIN, "--dry-run", "true", *args], cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{TRAIN} --dry-run true")  # echo "$0 $@"
    return shlex.split(lines[-1])


def test_train_single_node_cpu(recipe):
    assert dry_run(recipe, *DATA_ARGS, "--", "--lr", "1e-3", "--name", "a b") == [
        str(RUN), "--gpu", "0", "exp/x/log/train.log",
        "torchrun", "--standalone", "--nnodes", "1", "--nproc_per_node", "1",
        *TRAINER, "--lr", "1e-3", "--name", "a b"]


def test_train_single_node_processes(recipe):
    cmd = dry_run(recipe, "--nproc-per-node", "2", *DATA_ARGS)
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2"
    cmd = dry_run(recipe, "--cmd", "steps/slurm.sh --mem 8G", "--ngpu", "4", *DATA_ARGS)
    assert cmd[:5] == ["steps/slurm.sh", "--mem", "8G", "--gpu", "4"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "4"
    assert "torch.distributed.launch" not in " ".join(cmd)


def test_train_multi_node_submission(recipe):
    cmd = dry_run(recipe, "--cmd", "steps/slurm.sh", "--ngpu", "4", "--num-nodes", "2", *DATA_ARGS)
    assert cmd == ["steps/slurm.sh", "--gpu", "4", "--num-nodes", "2", "exp/x/log/train.log",
                   str(TORCHRUN_NODE), "--nnodes", "2", "--nproc-per-node", "4", "--rdzv-port", "",
                   "--", *TRAINER]


def test_train_without_train_data(recipe):
    """A config with a simulation: block trains without --train-data (se.bin.train checks the config)."""
    args = [a for a in DATA_ARGS if a not in ("--train-data", "data/train")]
    trainer = [a for a in TRAINER if a not in ("--train-data", "data/train")]
    assert dry_run(recipe, *args)[-len(trainer):] == trainer


def test_torchrun_node_under_slurm(recipe):
    cwd, env = recipe
    env = {**env, "SLURM_JOB_ID": "4242", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]",
           "SLURM_JOB_NUM_NODES": "2"}
    result = sh([TORCHRUN_NODE, "--dry-run", "true", "--nnodes", "2", "--nproc-per-node", "4",
                 "--", *TRAINER], cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout) == [
        "torchrun", "--nnodes", "2", "--nproc_per_node", "4", "--node_rank", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", "gpu07:29642", "--rdzv_id", "4242", *TRAINER]
    port = sh([TORCHRUN_NODE, "--dry-run", "true", "--nnodes", "2", "--rdzv-port", "31000", "--",
               "x.py"], cwd=cwd, env=env)
    assert "--rdzv_endpoint gpu07:31000" in port.stdout
    wrong = sh([TORCHRUN_NODE, "--nnodes", "3", "--", "x.py"], cwd=cwd, env=env)
    assert wrong.returncode == 1 and "has 2 nodes, not --nnodes 3" in wrong.stderr
    outside = sh([TORCHRUN_NODE, "--nnodes", "2", "--", "x.py"], cwd=cwd, env=recipe[1])
    assert outside.returncode == 1 and "SLURM_JOB_ID is not set" in outside.stderr


def test_train_runs_through_the_local_runner(recipe):
    cwd, env = recipe
    result = sh([TRAIN, *DATA_ARGS, "--", "--max-epochs", "1"], cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert "trained in exp/x" in result.stdout and "Successfully finished" in result.stdout
    lines = log_lines(cwd / "exp" / "x" / "log" / "train.log")
    assert lines[0].startswith("# torchrun --standalone --nnodes 1 --nproc_per_node 1 -m se.bin.train")
    assert "torchrun --standalone --nnodes 1 --nproc_per_node 1 " + " ".join(TRAINER[:2]) in lines[3]
    assert lines[3].endswith("--exp-dir exp/x --max-epochs 1")
    assert lines[-1].startswith("# Ended (code 0)")


@pytest.mark.parametrize("args, message", [
    (DATA_ARGS[2:], "--config, --valid-data and --exp-dir are required"),
    (["--config", "conf/none.yaml", *DATA_ARGS[2:]], "no config file conf/none.yaml"),
    ([*DATA_ARGS[:2], "--train-data", "data/none", *DATA_ARGS[4:]], "no data dir data/none"),
    (["--ngpu", "x", *DATA_ARGS], "option --ngpu takes an integer, not 'x'"),  # steps/parse_options.sh
    (["--ngpu", "2", "--nproc-per-node", "3", *DATA_ARGS], "more than the 2 GPUs"),
    (["--num-nodes", "2", *DATA_ARGS], "--num-nodes above 1 needs a cluster"),  # local runner
])
def test_train_rejects(recipe, args, message):
    cwd, env = recipe
    result = sh([TRAIN, *args], cwd=cwd, env=env)
    assert result.returncode == 1
    assert message in result.stderr
    if "cluster" not in message and "option" not in message:
        assert "e.g.:" in result.stderr


# ---------------------------------------------------------------- the step contract, --help

STEPS = [REPO / "steps" / f"{name}.sh" for name in ("train", "enhance", "score")]
OPTION_SCRIPTS = [*STEPS, REPO / "steps" / "lib" / "torchrun_node.sh", *sorted(REPO.glob("local/*.sh")),
                  *sorted(REPO.glob("egs/*/run.sh"))]


@pytest.mark.parametrize("script", STEPS, ids=lambda p: p.name)
def test_step_contract(script, tmp_path):
    """echo "$0 $@" first; usage with an e.g. line and exit 1 on wrong arguments; inputs checked;
    the success line (steps/lib/common.sh) last."""
    wrong = sh([script], cwd=tmp_path)
    assert wrong.returncode == 1
    assert wrong.stdout.splitlines()[0] == f"{script} "
    assert "Usage: " in wrong.stderr and "e.g.: " in wrong.stderr
    helped = sh([script, "--help"], cwd=tmp_path)
    assert helped.returncode == 0 and helped.stdout.splitlines()[0] == f"{script} --help"
    assert "e.g.: " in helped.stdout
    source = script.read_text().rstrip().splitlines()
    assert source[-1] == "success"
    assert any("steps/lib/common.sh" in line for line in source[:20])
    (tmp_path / "exp").mkdir()
    missing = {"train": ["--config", "none.yaml", "--valid-data", "v", "--exp-dir", "exp"],
               "enhance": ["exp", "data/none", "out"], "score": ["data/none.scp", "est.scp", "out"]}
    result = sh([script, *missing[script.stem]], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[0].endswith(
        {"train": "no config file none.yaml", "enhance": "data/none/wav.scp not found; run the data preparation "
         "stage first", "score": "data/none.scp not found"}[script.stem])
    assert "Successfully finished" not in result.stdout


def help_options(script: Path) -> dict[str, str]:
    """--help's option lines: {--name: comment}."""
    env = {k: v for k, v in os.environ.items() if k not in ("DNS_ROOT", "VBD_ROOT")}
    result = sh([script, "--help"], env=env)
    assert result.returncode == 0, result.stderr
    assert "e.g.: " in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("  --")]
    assert not [line for line in lines if str(REPO) in line], "a default names a path of this machine"
    return {line.split()[0]: line.split("  # ", 1)[1] for line in lines}


@pytest.mark.parametrize("script", OPTION_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_help_lists_only_declared_options(script):
    """Every option --help lists is a declared one: it has its comment and the script uses it (a
    variable set above parse_options.sh by accident, such as a path, would show up here)."""
    options = help_options(script)
    assert options, script
    text = script.read_text()
    body = text[text.index("parse_options.sh"):]
    for option, comment in options.items():
        assert comment != "(no comment)", f"{script}: {option} is not a declared option"
        if option == "--config" and "config=" not in text:
            continue  # parse_options' own --config FILE
        name = option[2:].replace("-", "_")
        if name in ("stage", "stop_stage") and "in_stages " in body:
            continue  # read by in_stages (steps/lib/common.sh)
        assert re.search(rf"\$\{{?{name}\b", body), f"{script}: {option} is declared but never used"
    assert all("_" not in option for option in options), options


@pytest.mark.parametrize("runner", ["run.sh", "slurm.sh"])
def test_runner_help(runner):
    result = sh([REPO / "steps" / runner, "--help"])
    assert result.returncode == 0 and "e.g.: steps/run.sh JOB=1:4" in result.stdout
