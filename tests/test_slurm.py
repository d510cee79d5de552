"""steps/slurm.sh on a real Slurm: a private two-node cluster on this machine (two slurmd, one fake
GPU each) started by tests/slurm_cluster.sh for the session and stopped after it. Skipped, with the
reason, only where the cluster cannot start (not root, no apt-get, the packages not installable).
The option translation through a Slurm config is tested without a cluster."""

import fcntl
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from se import jobs

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "steps" / "slurm.sh"
CLUSTER = REPO / "tests" / "slurm_cluster.sh"
CLUSTER_DIR = Path(os.environ.get("SE_SLURM_DIR", "/tmp/se_slurm_cluster"))



def sh(args, cwd=None, env=None, timeout=120):
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def slurm_env(request):
    """Start the cluster (stopped again at the end of the session); the env that reaches it."""
    env = {**os.environ, "SE_SLURM_DIR": str(CLUSTER_DIR)}
    # One session at a time on this machine: the cluster's folder and ports are fixed.
    lock = open(f"{CLUSTER_DIR}.lock", "w")
    deadline = time.time() + 300
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.time() > deadline:
                pytest.fail(f"{CLUSTER_DIR}.lock is held by another test session for 300 s")
            time.sleep(0.5)

    def stop():
        result = sh([CLUSTER, "stop"], env=env)
        lock.close()
        assert result.returncode == 0, result.stderr

    sh([CLUSTER, "stop"], env=env)  # a cluster left over by an interrupted session
    request.addfinalizer(stop)
    started = sh([CLUSTER, "start", "2"], env=env, timeout=600)
    if started.returncode == 77:
        reason = started.stderr.strip().splitlines()[-1]
        print(reason, file=sys.stderr)
        pytest.skip(reason)
    assert started.returncode == 0, f"{started.stdout}\n{started.stderr}"
    return {**env, "SLURM_CONF": str(CLUSTER_DIR / "slurm.conf")}


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def check_log(path: Path, code: int) -> list[str]:
    """The log's header and trailer are there; return the job's output lines."""
    lines = log_lines(path)
    assert lines[1].startswith("# Started at "), lines
    assert lines[2].startswith("# Running on "), lines
    assert lines[-2].startswith("# Accounting: time="), lines
    assert lines[-1].startswith(f"# Ended (code {code}) at "), lines
    return lines[3:-2]


def test_single_job(slurm_env, tmp_path):
    log = tmp_path / "log" / "one.log"
    result = sh([SLURM, log, "echo hello from job $SLURM_ARRAY_TASK_ID | tr a-z A-Z"],
                env=slurm_env)
    assert result.returncode == 0, result.stderr
    assert log_lines(log)[0] == "# echo hello from job $SLURM_ARRAY_TASK_ID | tr a-z A-Z"
    assert check_log(log, 0) == ["HELLO FROM JOB 1"]


def test_array_job(slurm_env, tmp_path):
    result = sh([SLURM, "--mem", "100M", "JOB=1:3", "--num-threads", "1", tmp_path / "a.JOB.log",
                 "echo", "task JOB", "$SLURM_ARRAY_TASK_ID", ">", tmp_path / "out.JOB"],
                env=slurm_env)
    assert result.returncode == 0, result.stderr
    for n in (1, 2, 3):
        assert log_lines(tmp_path / f"a.{n}.log")[0] == f"# echo 'task {n}' '$SLURM_ARRAY_TASK_ID' > {tmp_path}/out.{n}"
        assert check_log(tmp_path / f"a.{n}.log", 0) == []
        assert (tmp_path / f"out.{n}").read_text() == f"task {n} $SLURM_ARRAY_TASK_ID\n"
    assert (tmp_path / "q" / "a.sh").is_file()


def test_failing_array_job(slurm_env, tmp_path):
    result = sh([SLURM, "JOB=1:3", tmp_path / "f.JOB.log", "echo job JOB; [ JOB != 2 ] || exit 3"],
                env=slurm_env)
    assert result.returncode == 1
    assert f"1 / 3 failed, log is in {tmp_path}/f.*.log" in result.stderr
    assert check_log(tmp_path / "f.2.log", 3) == ["job 2"]
    assert check_log(tmp_path / "f.3.log", 0) == ["job 3"]


def test_max_jobs_run(slurm_env, tmp_path):
    stamps = tmp_path / "stamps"
    result = sh([SLURM, "--max-jobs-run", "1", "JOB=1:3", tmp_path / "m.JOB.log",
                 f"s=$(date +%s.%N); sleep 0.3; echo $s $(date +%s.%N) >> {stamps}"], env=slurm_env)
    assert result.returncode == 0, result.stderr
    spans = sorted(tuple(map(float, line.split())) for line in stamps.read_text().splitlines())
    assert len(spans) == 3
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2))  # one after the other


def test_gpu_request(slurm_env, tmp_path):
    log = tmp_path / "gpu.log"
    result = sh([SLURM, "--gpu", "1", log, "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"],
                env=slurm_env)
    assert result.returncode == 0, result.stderr
    assert check_log(log, 0) == ["CUDA_VISIBLE_DEVICES=0"]


def test_multi_node_job(slurm_env, tmp_path):
    log = tmp_path / "nodes.log"
    result = sh([SLURM, "--num-nodes", "2", log, "echo node $SLURM_NODEID of $SLURM_NNODES"],
                env=slurm_env)
    assert result.returncode == 0, result.stderr
    assert sorted(check_log(log, 0)) == ["node 0 of 2", "node 1 of 2"]


def test_train_multi_node_under_slurm(slurm_env, tmp_path):
    """steps/train.sh --num-nodes 2 through steps/slurm.sh: torchrun (a fake that prints its
    arguments) runs once per node with that node's rank and the job's rendezvous."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "x.yaml").write_text("network: x\n")
    for name in ("train", "valid"):
        (tmp_path / "data" / name).mkdir(parents=True)
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "torchrun"
    fake.write_text("#!/bin/bash\necho \"torchrun $*\"\n")
    fake.chmod(0o755)
    env = {**slurm_env, "PATH": f"{tmp_path / 'bin'}:{slurm_env['PATH']}"}
    result = sh([REPO / "steps" / "train.sh", "--cmd", SLURM, "--ngpu", "1", "--num-nodes", "2",
                 "--config", "conf/x.yaml", "--train-data", "data/train", "--valid-data",
                 "data/valid", "--exp-dir", "exp/x"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    runs = [shlex.split(line) for line in check_log(tmp_path / "exp/x/log/train.log", 0)
            if line.startswith("torchrun ")]
    assert len(runs) == 2
    ranks = sorted(run[run.index("--node_rank") + 1] for run in runs)
    assert ranks == ["0", "1"]
    for run in runs:
        endpoint = run[run.index("--rdzv_endpoint") + 1]
        job_id = run[run.index("--rdzv_id") + 1]
        assert endpoint == f"node1:{29400 + int(job_id) % 1000}"
        assert run[1:5] == ["--nnodes", "2", "--nproc_per_node", "1"]
        assert run[-8:] == ["--config", "conf/x.yaml", "--train-data", "data/train",
                            "--valid-data", "data/valid", "--exp-dir", "exp/x"]


def test_sbatch_refusal_is_reported(slurm_env, tmp_path):
    result = sh([SLURM, "--num-threads", "512", tmp_path / "x.log", "true"], env=slurm_env)
    assert result.returncode == 1
    assert "--cpus-per-task=512" in result.stderr
    assert "Batch job submission failed" in result.stderr


# ---------------------------------------------------------------- no cluster needed

CONF = """# test
command sbatch --export=ALL
default partition=debug
option partition=* --partition=$0
default gpu=0
option gpu=0
option gpu=* --partition=gpu --gres=gpu:$0
option mem=* --mem=$0
option num_threads=1
option num_threads=* --cpus-per-task=$0
"""


def test_slurm_conf_translation(tmp_path):
    path = tmp_path / "slurm.conf"
    path.write_text(CONF)
    conf = jobs.SlurmConfig.read(path)
    assert conf.command == ["sbatch", "--export=ALL"]
    assert conf.sbatch_options({}) == ["--partition=debug"]
    assert conf.sbatch_options({"gpu": "2", "mem": "4G", "num_threads": "1"}) == [
        "--partition=debug", "--partition=gpu", "--gres=gpu:2", "--mem=4G"]
    assert conf.sbatch_options({"num_threads": "8", "partition": "long"}) == [
        "--partition=long", "--cpus-per-task=8"]
    with pytest.raises(jobs.RunnerError, match="unknown option --time"):
        conf.sbatch_options({"time": "1:00:00"})


def test_slurm_conf_errors(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text("option gpu\n")
    with pytest.raises(jobs.RunnerError, match="bad.conf:1: expected"):
        jobs.SlurmConfig.read(path)
    path.write_text("option gpu=0\n")
    with pytest.raises(jobs.RunnerError, match="--gpu 1: .* allows only"):
        jobs.SlurmConfig.read(path).sbatch_options({"gpu": "1"})
    shipped = jobs.SlurmConfig.read(REPO / "conf" / "slurm.conf")
    assert shipped.sbatch_options({"gpu": "1", "mem": "8G", "num_threads": "4"}) == [
        "--gres=gpu:1", "--cpus-per-task=4", "--mem=8G"]


def test_slurm_runner_without_sbatch_config(tmp_path):
    result = sh([SLURM, "--config", tmp_path / "none.conf", tmp_path / "x.log", "true"])
    assert result.returncode == 1
    assert "no Slurm config" in result.stderr
