"""Job runners behind steps/run.sh (this machine) and steps/slurm.sh (Slurm), after Kaldi's run.pl
and slurm.pl. Standard library only; the wrappers run this file as a script (python3 -I).

  steps/run.sh   [options] [JOB=1:N] LOGFILE command ...
  steps/slurm.sh [options] [JOB=1:N] LOGFILE command ...
e.g.: steps/run.sh JOB=1:4 exp/x/log/enhance.JOB.log python -m se.bin.enhance --checkpoint exp/x --num-jobs 4 --job JOB --input data/test/wav.scp --output-dir exp/x/enhanced
      steps/slurm.sh --gpu 1 --mem 16G exp/x/log/train.log torchrun --standalone --nproc_per_node 1 -m se.bin.train --config conf/x.yaml --exp-dir exp/x

Options (--name value or --name=value; before or after JOB=a:b):
  --max-jobs-run N   run at most N of the jobs at once (local default: the number of cores)
  --num-nodes M      Slurm: M nodes per job, the command runs once on each of them through srun
                     (one task per node); local: 1 only
  --config FILE      Slurm: option translation file (default: conf/slurm.conf of this repo)
  --gpu N, --mem M, --num-threads N, any --name value:
                     Slurm: translated to sbatch options through the config file, an option that
                     it does not list is an error; local: accepted and ignored, as in run.pl, so a
                     recipe runs unchanged on either backend

JOB=a:b (any NAME=a:b, or NAME=a for one job) runs jobs a..b; the word NAME is replaced by the job
number in LOGFILE and in the command. A command given as one argument is bash code, used as it is:
'a | b > c' pipes and redirects. A command of several arguments is quoted argument by argument,
except the bare shell operators (|, >, &&, ... as in Kaldi's `\\|`), which stay operators.
Each job's log starts with '# <command>', '# Started at <date>', '# Running on <host>', then the
output (stdout and stderr) and ends with '# Accounting: time=<s> threads=<n>' and
'# Ended (code <n>) at <date>, elapsed time <s> seconds'. When a job fails, the runner prints
'<k> / <n> failed, log is in <LOGFILE with * for JOB>' on stderr and exits 1.
Slurm: the jobs run in the submitting directory, with its environment (sbatch --export=ALL), so the
repo, the data and the logs must be on a file system that the nodes share (as for Kaldi). The
runner writes <log dir>/q/<name>.{sh,json} (the batch script and the jobs), Slurm's own output goes
to <log dir>/q/<name>.<job>.out, and the runner polls `scontrol show job` until the jobs end.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = {"local": "steps/run.sh", "slurm": "steps/slurm.sh"}
JOB_RANGE = re.compile(r"([A-Za-z_]\w*)=(\d+)(?::(\d+))?")
# Arguments that stay shell syntax when a command comes as several arguments.
SHELL_OPERATORS = {"|", "|&", "||", "&&", ";", "<", ">", ">>", "2>", "2>>", "&>", "2>&1"}
# Slurm job states that may still change; any other state is final.
SLURM_ACTIVE_STATES = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD",
}


class RunnerError(Exception):
    """A failure before the jobs run (bad config, sbatch refused); the message is for the user."""


class UsageError(RunnerError):
    """A wrong runner command line; the message and the usage are shown."""


@dataclass
class Task:
    """One job of a request: its number, log file and bash command (NAME already substituted)."""

    job_id: int
    log: Path
    command: str


@dataclass
class Request:
    """A parsed runner command line."""

    options: dict[str, str]
    tasks: list[Task]
    log_pattern: str  # LOGFILE with '*' for the job number, for messages


def join_command(args: list[str]) -> str:
    """One argument is bash code as it is; several are quoted one by one, except shell operators."""
    if len(args) == 1:
        return args[0]
    return " ".join(a if a in SHELL_OPERATORS else shlex.quote(a) for a in args)


def parse_args(argv: list[str]) -> Request:
    """Split `[options] [NAME=a:b] [options] LOGFILE command ...` into options and tasks."""
    options: dict[str, str] = {}
    job_range = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and len(arg) > 2:
            if "=" in arg:
                name, value = arg[2:].split("=", 1)
                i += 1
            elif i + 1 < len(argv):
                name, value = arg[2:], argv[i + 1]
                i += 2
            else:
                raise UsageError(f"option {arg} needs a value")
            options[name.replace("-", "_")] = value
        elif job_range is None and (match := JOB_RANGE.fullmatch(arg)):
            job_range = match.groups()
            i += 1
        else:
            break
    if len(argv) - i < 2:
        raise UsageError("expected a LOGFILE and a command")
    log, command = argv[i], argv[i + 1:]

    if job_range is None:
        return Request(options, [Task(1, Path(log), join_command(command))], log)
    name, first, last = job_range[0], int(job_range[1]), int(job_range[2] or job_range[1])
    if first > last:
        raise UsageError(f"empty job range {name}={first}:{last}")
    word = re.compile(rf"\b{name}\b")
    if last > first and not word.search(log):
        raise UsageError(f"{last - first + 1} jobs would share one log: put {name} in {log}")
    tasks = [
        Task(n, Path(word.sub(str(n), log)), join_command([word.sub(str(n), a) for a in command]))
        for n in range(first, last + 1)
    ]
    return Request(options, tasks, word.sub("*", log))


def positive_int(options: dict[str, str], name: str, default: int) -> int:
    value = options.get(name, str(default))
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"--{name.replace('_', '-')} takes a positive integer, not '{value}'")
    return int(value)


# Jobs running now (their process groups), so that a signal to the runner stops them.
_running: set[subprocess.Popen] = set()
_stop_signal = 0


def _stop_jobs(signum, frame) -> None:
    """Signal handler: start no more jobs and pass the signal on (KILL from the second one)."""
    global _stop_signal
    sig = signal.SIGKILL if _stop_signal else signal.SIGTERM
    _stop_signal = signum
    for proc in list(_running):
        _kill_group(proc, sig)


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _date() -> str:
    return time.strftime("%a %b %d %H:%M:%S %Z %Y")


def run_task(task: Task, threads: int, launcher: Sequence[str] = ()) -> int | None:
    """Run one job with bash (through `launcher`, e.g. srun, if given) into its log.

    Returns its exit code (128 + N when killed by signal N), or None when the runner was
    stopped before the job started.
    """
    if _stop_signal:
        return None
    task.log.parent.mkdir(parents=True, exist_ok=True)
    with open(task.log, "w") as log:
        log.write(f"# {task.command}\n# Started at {_date()}\n# Running on {socket.gethostname()}\n")
    start = time.time()
    with open(task.log, "a") as log:  # append mode: the job's output and the trailer follow
        proc = subprocess.Popen(
            [*launcher, "bash", "-c", task.command],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        _running.add(proc)
        if _stop_signal:  # the signal came between the check above and Popen
            _kill_group(proc, signal.SIGTERM)
        code = proc.wait()
        _running.discard(proc)
        if code < 0:
            code = 128 - code
        elapsed = int(time.time() - start)
        log.write(f"# Accounting: time={elapsed} threads={threads}\n")
        log.write(f"# Ended (code {code}) at {_date()}, elapsed time {elapsed} seconds\n")
    return code


def report(prog: str, request: Request, codes: list[int | None]) -> int:
    """Print `k / n failed, log is in ...` when a job failed; return the runner's exit code."""
    if _stop_signal:
        print(f"{prog}: stopped by signal {_stop_signal}, logs are in {request.log_pattern}",
              file=sys.stderr)
        return 128 + _stop_signal
    failed = sum(code != 0 for code in codes)
    if failed:
        print(f"{prog}: {failed} / {len(codes)} failed, log is in {request.log_pattern}",
              file=sys.stderr)
        return 1
    return 0


def run_local(request: Request) -> int:
    """Run the jobs on this machine, at most --max-jobs-run at once."""
    options = request.options
    if positive_int(options, "num_nodes", 1) > 1:
        raise UsageError("--num-nodes above 1 needs a cluster: use steps/slurm.sh")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    max_jobs = positive_int(options, "max_jobs_run", cores or 1)
    threads = positive_int(options, "num_threads", 1)
    with ThreadPoolExecutor(max_workers=min(max_jobs, len(request.tasks))) as pool:
        codes = list(pool.map(lambda task: run_task(task, threads), request.tasks))
    return report(PROGRAMS["local"], request, codes)


@dataclass
class SlurmConfig:
    """conf/slurm.conf: how runner options become sbatch options.

    Lines (# starts a comment):
      command sbatch --export=ALL      the submit command and its fixed options
      default name=value               value used when an option is not given
      option name=value args ...       args for exactly that value (none: add nothing)
      option name=* args ...           args for any other value, $0 replaced by the value
    """

    path: Path
    command: list[str]
    defaults: dict[str, str]
    rules: dict[str, dict[str, list[str]]]

    @classmethod
    def read(cls, path: Path) -> SlurmConfig:
        if not path.is_file():
            raise RunnerError(f"no Slurm config {path}")
        command, defaults, rules = ["sbatch"], {}, {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = shlex.split(line, comments=True)
            if not words:
                continue
            where = f"{path}:{number}"
            if words[0] == "command" and len(words) > 1:
                command = words[1:]
            elif words[0] in ("default", "option") and len(words) > 1 and "=" in words[1]:
                name, value = words[1].split("=", 1)
                if words[0] == "default":
                    if len(words) > 2:
                        raise RunnerError(f"{where}: 'default' takes only name=value: {line}")
                    defaults[name] = value
                else:
                    rules.setdefault(name, {})[value] = words[2:]
            else:
                raise RunnerError(f"{where}: expected 'command ...', 'default name=value' or "
                                 f"'option name=value args...', got: {line}")
        return cls(path, command, defaults, rules)

    def sbatch_options(self, options: dict[str, str]) -> list[str]:
        """Translate the runner's options (and the defaults) into sbatch options."""
        args = []
        for name, value in {**self.defaults, **options}.items():
            flag = "--" + name.replace("_", "-")
            if name not in self.rules:
                raise RunnerError(f"unknown option {flag}: {self.path} has no 'option {name}=' line")
            rule = self.rules[name]
            if value in rule:
                args += rule[value]
            elif "*" in rule:
                args += [word.replace("$0", value) for word in rule["*"]]
            else:
                raise RunnerError(f"{flag} {value}: {self.path} allows only {sorted(rule)}")
        return args


def run_slurm(request: Request) -> int:
    """Submit the jobs as one sbatch array job, wait for it, and check the logs."""
    prog = PROGRAMS["slurm"]
    options = dict(request.options)
    conf = SlurmConfig.read(Path(options.pop("config", REPO / "conf" / "slurm.conf")))
    # Options of the runner itself; the others are translated by the config.
    own = {name: options.pop(name) for name in ("num_nodes", "max_jobs_run") if name in options}
    num_nodes = positive_int(own, "num_nodes", 1)
    throttle = f"%{positive_int(own, 'max_jobs_run', 1)}" if "max_jobs_run" in own else ""
    threads = positive_int({**conf.defaults, **options}, "num_threads", 1)

    tasks = request.tasks
    qdir = tasks[0].log.parent / "q"
    qdir.mkdir(parents=True, exist_ok=True)
    for task in tasks:  # an old log must not pass for the result of a job that never ran
        task.log.parent.mkdir(parents=True, exist_ok=True)
        task.log.unlink(missing_ok=True)
    base = re.sub(r"\.log$", "", Path(request.log_pattern).name).replace(".*", "").replace("*", "")
    base = base or "job"
    spec = qdir / f"{base}.json"
    spec.write_text(json.dumps({
        "num_nodes": num_nodes,
        "threads": threads,
        "tasks": {str(t.job_id): {"log": str(t.log.resolve()), "command": t.command} for t in tasks},
    }, indent=1))
    script = qdir / f"{base}.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"# {prog}: runs job $SLURM_ARRAY_TASK_ID of {spec.name} into its log\n"
        f"exec {shlex.quote(sys.executable)} -I {shlex.quote(str(Path(__file__).resolve()))} "
        f"task {shlex.quote(str(spec.resolve()))} \"$SLURM_ARRAY_TASK_ID\"\n"
    )
    sbatch = [
        *conf.command, *conf.sbatch_options(options), "--parsable", f"--job-name={base}",
        f"--output={qdir / base}.%a.out", f"--array={tasks[0].job_id}-{tasks[-1].job_id}{throttle}",
    ]
    if num_nodes > 1:
        sbatch += [f"--nodes={num_nodes}", "--ntasks-per-node=1"]
    sbatch.append(str(script))
    submitted = subprocess.run(sbatch, capture_output=True, text=True)
    if submitted.returncode != 0:
        raise RunnerError(f"{shlex.join(sbatch)} failed:\n{submitted.stderr.strip()}")
    slurm_id = submitted.stdout.strip().split(";")[0]

    def cancel(signum, frame):
        subprocess.run(["scancel", slurm_id], capture_output=True)
        print(f"{prog}: stopped by signal {signum}; cancelled Slurm job {slurm_id}", file=sys.stderr)
        sys.exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, cancel)
    states = wait_for_slurm_job(slurm_id)

    codes = []
    for task in tasks:
        code = exit_code_in_log(task.log)
        if code is None:
            state = states.get(task.job_id, "unknown")
            print(f"{prog}: job {task.job_id} (Slurm job {slurm_id}_{task.job_id}, state {state}) "
                  f"wrote no exit code to {task.log}; see also {qdir / base}.{task.job_id}.out",
                  file=sys.stderr)
        codes.append(code)
    return report(prog, request, codes)


def wait_for_slurm_job(slurm_id: str) -> dict[int, str]:
    """Poll `scontrol show job` until every task of the array is final; return their states."""
    start = time.time()
    while True:
        shown = subprocess.run(["scontrol", "show", "job", "-o", slurm_id],
                               capture_output=True, text=True)
        if shown.returncode != 0 and "Invalid job id" in shown.stderr:
            return {}  # already purged by slurmctld (MinJobAge): the logs tell
        states = {}
        for line in shown.stdout.splitlines():
            task_id = re.search(r"\bArrayTaskId=(\S+)", line)
            state = re.search(r"\bJobState=(\S+)", line)
            if task_id and state:
                states[task_id.group(1)] = state.group(1)
        if shown.returncode == 0 and states and not SLURM_ACTIVE_STATES & set(states.values()):
            return {int(k): v for k, v in states.items() if k.isdigit()}
        # Also when slurmctld does not answer for a while. Waits grow with the time waited (a
        # tenth of it, 0.5 s to 10 s), so short jobs are seen ending soon and long ones cost little.
        time.sleep(min(max(0.5, (time.time() - start) / 10), 10.0))


def exit_code_in_log(log: Path) -> int | None:
    """The code of the log's '# Ended (code N)' line, or None without one."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - 4096))
            tail = f.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    codes = re.findall(r"^# Ended \(code (\d+)\)", tail, flags=re.M)
    return int(codes[-1]) if codes else None


def run_slurm_task(spec_path: str, job_id: str) -> int:
    """Inside a Slurm array task: run job `job_id` of the spec written by run_slurm."""
    spec = json.loads(Path(spec_path).read_text())
    entry = spec["tasks"][job_id]
    task = Task(int(job_id), Path(entry["log"]), entry["command"])
    launcher = []
    nodes = spec["num_nodes"]
    if nodes > 1:
        launcher = ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
                    "--kill-on-bad-exit=1"]
        if "SLURM_CPUS_PER_TASK" in os.environ:  # srun does not inherit it (Slurm 22.05 - 23.02)
            launcher.append(f"--cpus-per-task={os.environ['SLURM_CPUS_PER_TASK']}")
    return run_task(task, spec["threads"], launcher) or 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "task":
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _stop_jobs)
        code = run_slurm_task(argv[1], argv[2])
        return 128 + _stop_signal if _stop_signal else code
    if not argv or argv[0] not in PROGRAMS:
        print(f"usage: {sys.argv[0]} local|slurm [options] [JOB=1:N] LOGFILE command ...",
              file=sys.stderr)
        return 1
    prog = PROGRAMS[argv[0]]
    if argv[1:2] in (["--help"], ["-h"]):
        print(__doc__)
        return 0
    try:
        request = parse_args(argv[1:])
        if argv[0] == "local":
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, _stop_jobs)
            return run_local(request)
        return run_slurm(request)
    except RunnerError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        if isinstance(e, UsageError):
            print(f"Usage: {prog} [options] [JOB=1:N] LOGFILE command ...\n"
                  f"e.g.: {prog} JOB=1:4 exp/x/log/enhance.JOB.log python -m se.bin.enhance "
                  f"--checkpoint exp/x --num-jobs 4 --job JOB ...\n(options and rules: {prog} --help)",
                  file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before any job started
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
