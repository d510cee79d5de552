"""Trainer: exact resume after kill -9, DDP validation equality, fine-tuning init, health."""

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from se import checkpoint as ckpt
from helpers import TINY_FRCRN_YAML, train_cmd, train_env, train_in_process


@pytest.fixture(scope="module")
def data(tiny_train_data):
    return tiny_train_data


def final_model(exp) -> dict:
    return torch.load(ckpt.read_pointer(exp, "last_checkpoint"), weights_only=False)


@pytest.fixture(scope="module")
def trained(trained_frcrn):
    """The session's tiny trained experiment (6 updates = epoch 1; tests/conftest.py):
    read here, or copied before a test resumes it."""
    return trained_frcrn


# with the default tensorboard examples: their logging must not disturb the resumed RNG streams
KILL_STEPS = ("--max_steps", "10", "--checkpoint_save_freq", "5", "--max_epoch", "3", "--valid_utterances_to_log", "3")


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """10 updates of KILL_STEPS without interruption: validated at the end of epoch 1 (update 6)
    and at update 10, a plain checkpoint at update 5. The reference of the killed run; the
    averaging test resumes a copy of it."""
    ref = tmp_path_factory.mktemp("uninterrupted") / "ref"
    subprocess.run(train_cmd(data, ref, *KILL_STEPS), env=train_env(), check=True, capture_output=True)
    return ref


def test_resume_after_kill_is_exact(data, uninterrupted, tmp_path):
    steps, ref = list(KILL_STEPS), uninterrupted
    assert (ref / "tensorboard").is_dir()  # the examples were logged

    exp = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(data, exp, *steps), env=train_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        target = (exp / "last_checkpoint").is_file() and (exp / "last_checkpoint").read_text().strip()
        if target == "model.ckpt-1-5.pt":
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed"
    assert ckpt.read_pointer(exp, "last_checkpoint").name == "model.ckpt-1-5.pt"

    out = subprocess.run(train_cmd(data, exp, *steps), env=train_env(), check=True, capture_output=True, text=True)
    assert "resumed from" in out.stderr and "update 5" in out.stderr
    a, b = final_model(ref), final_model(exp)
    assert a["step"] == b["step"] == 10
    # 6 batches per epoch: max_steps 10 stops inside epoch 2, which the checkpoint says
    assert (a["trainer"]["epoch"], a["trainer"]["batch_in_epoch"]) == (1, 4)
    assert ckpt.read_pointer(ref, "last_checkpoint").name == "model.ckpt-2-10.pt"
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(a["optimizer"]["state"][0][k], b["optimizer"]["state"][0][k])
    assert a["trainer"]["best_valid_loss"] == b["trainer"]["best_valid_loss"]


def test_checkpoint_is_self_describing_and_enhance_reads_it(trained):
    exp = trained
    state = final_model(exp)
    for key in ("model", "optimizer", "epoch", "step", "network", "network_kwargs", "sampling_rate",
                "config", "rng", "trainer"):
        assert key in state, key
    assert state["network_kwargs"]["channels"] == 4 and state["sampling_rate"] == 16000
    assert (exp / "config.yaml").is_file() and (exp / "train_provenance.yaml").is_file()
    from se.checkpoint import load_network

    model, info = load_network(exp)
    assert info["format"] == "ours" and model.unet.encoder0.conv.conv_re.out_channels == 4
    with pytest.raises(ckpt.CheckpointError, match="checkpoint of network FRCRN_SE_16K, but --network"):
        load_network(exp, "MossFormer2_SE_48K")


def test_resume_refuses_other_network_size(data, trained, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(trained, exp)  # a trained experiment (3 updates) to resume
    cmd = train_cmd(data, exp, "--max_steps", "4")
    cmd[cmd.index(TINY_FRCRN_YAML)] = "{channels: 8, fsmn_hidden: 4, se_reduction: 2, lorder: 3}"
    code, err = train_in_process(cmd)
    assert code == 1 and "cannot resume" in err and "--start-over" in err
    code, err = train_in_process(cmd + ["--start-over"])
    assert code == 0, err


def test_torchrun_two_processes_validation_equals_single(data, tmp_path):
    exp = tmp_path / "ddp"
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    out = subprocess.run(train_cmd(data, exp, "--max_steps", "3", python=torchrun), env=train_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 processes x batch 2 x accumulation 1 = effective batch 4" in out.stderr
    files = sorted(p.name for p in exp.iterdir() if p.name.startswith("model.ckpt"))
    assert files == ["model.ckpt-1-3.pt"]  # one set of checkpoints (rank 0 only)
    state = final_model(exp)
    ddp_valid = state["trainer"]["history"]["model.ckpt-1-3.pt"]

    from se import config
    from se.trainer import Dist, Trainer, resolve_config
    from se.checkpoint import init_from_checkpoint

    conf = resolve_config(config.load(exp / "config.yaml"))
    trainer = Trainer(conf, str(data / "train"), str(data / "valid"), str(tmp_path / "single"), Dist())
    trainer.train_step.modules["model"].load_state_dict(state["model"])
    trainer.train_step.build_optimizers()
    single = trainer.validate()
    assert single["utterances"] == 5
    assert single["loss"] == pytest.approx(ddp_valid, rel=1e-6)
    del init_from_checkpoint


def test_init_prints_key_table_and_refuses_mostly_empty(data, tmp_path, capsys):
    from se.models import build_network

    model = build_network("FRCRN_SE_16K", {"network_kwargs": {"channels": 4, "fsmn_hidden": 4,
                                                              "se_reduction": 2, "lorder": 3}})
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    full = tmp_path / "full.pt"
    torch.save({"model": sd}, full)
    lines = []
    counts = ckpt.init_from_checkpoint(model, full, 0.9, print_fn=lines.append)
    assert counts["fraction"] == 1.0 and any("loaded" in l for l in lines)
    partial = tmp_path / "partial.pt"
    torch.save({"model": {k: v for k, v in list(sd.items())[:10]}}, partial)
    lines = []
    with pytest.raises(ckpt.CheckpointError, match=r"only \d+\.\d% of the model's trainable parameters loaded"):
        ckpt.init_from_checkpoint(model, partial, 0.9, print_fn=lines.append)
    table = "\n".join(lines)
    assert "missing" in table and "unexpected" in table and "shape-mismatched" in table
    # through the CLI: a mostly-empty init is refused with exit 1
    code, err = train_in_process(train_cmd(data, tmp_path / "ft", "--max_steps", "1", "--init", str(partial)))
    assert code == 1 and "only" in err and "missing" in err
    code, err = train_in_process(train_cmd(data, tmp_path / "ft2", "--max_steps", "1", "--init", str(full)))
    assert code == 0 and "loaded 100.0% of the trainable parameters" in err
    assert "lr=1.00e-04" in err  # finetune_learning_rate


def test_non_finite_updates_are_skipped_then_stop(data, tmp_path):
    code, err = train_in_process(train_cmd(data, tmp_path / "nan", "--max_steps", "5", "--init_learning_rate",
                                           "1e30", "--max_bad_steps", "2"))
    assert code == 1
    assert "update 2: non-finite loss, update skipped" in err  # update 1 made the weights huge
    assert "utterances of this process's batch: train_" in err  # the offending batch named
    assert "non-finite updates in a row (max_bad_steps)" in err


def test_bad_data_dir_is_a_clear_error(data, tmp_path):
    cmd = train_cmd(data, tmp_path / "x", "--max_steps", "1")
    cmd[cmd.index(str(data / "train"))] = str(tmp_path / "nope")
    code, err = train_in_process(cmd)
    assert code == 1 and "nope: data directory not found" in err


def test_average_best_checkpoints(data, uninterrupted, tmp_path):
    exp = tmp_path / "avg"
    shutil.copytree(uninterrupted, exp)  # validated at updates 6 and 10
    # resumed to the end of epoch 3: validated again at updates 12 and 18
    code, err = train_in_process(train_cmd(data, exp, "--max_epoch", "3", "--keep_best", "3",
                                           "--valid_utterances_to_log", "1"))
    assert code == 0, err[-3000:]
    from se.bin import average_checkpoints

    assert average_checkpoints.main(["--exp-dir", str(exp), "--num", "2"]) == 0
    history = final_model(exp)["trainer"]["history"]
    assert len(history) == 4 and final_model(exp)["step"] == 18  # the 2 best of 4 validated checkpoints
    best2 = sorted(history, key=history.get)[:2]
    a, b = (torch.load(exp / n, weights_only=False)["model"] for n in best2)
    avg = torch.load(exp / "model.avg2.pt", weights_only=False)
    key = "unet.encoder1.conv.conv_re.weight"
    torch.testing.assert_close(avg["model"][key], (a[key] + b[key]) / 2)
    assert avg["averaged_from"] == best2 and avg["network"] == "FRCRN_SE_16K"
    from se.checkpoint import load_network

    model, info = load_network(exp / "model.avg2.pt")
    assert info["format"] == "ours"
    assert average_checkpoints.main(["--exp-dir", str(tmp_path / "nothing"), "--num", "2"]) == 1


def test_max_steps_at_an_epoch_boundary_closes_the_epoch(trained):
    """12 utterances / batch 2 = 6 batches: stopping at update 6 ends epoch 1 (stopping inside
    an epoch: test_resume_after_kill_is_exact)."""
    state = final_model(trained)  # --max_steps 6
    assert (state["trainer"]["epoch"], state["trainer"]["batch_in_epoch"]) == (1, 0)
    assert ckpt.read_pointer(trained, "last_checkpoint").name == "model.ckpt-1-6.pt"
