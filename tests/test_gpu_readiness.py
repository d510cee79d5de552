"""What a first GPU run would meet, shown on CPU: mixed precision (CPU autocast), caches and
inference tensors, multi-process GAN steps, synchronised complex BatchNorm, grad-scaler-aware
updates, per-process RNG states, deterministic mode, and the GPU acceptance script's dry run.

Multi-process cases run two gloo processes (torch.multiprocessing, spawn) in one test each.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from se import config
from se.models import build_network, get_entry, resolve
from se.trainer import Dist, Trainer, build_train_step, resolve_config, set_deterministic
from helpers import make_train_valid, tone_pair

REPO = Path(__file__).resolve().parents[1]
FRCRN_TINY = {"channels": 4, "fsmn_hidden": 4, "se_reduction": 2, "lorder": 3}
GAN_TINY = {"num_channel": 8, "num_blocks": 1, "dropout": 0.0}
DISC_TINY = {"ndf": 2, "num_conformers": 1, "pool_hidden": 8}


# ------------------------------------------------------------------------------------------
# two gloo processes
# ------------------------------------------------------------------------------------------
def _rank_main(fn, rank: int, world: int, init: str, out: str, args) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                                  timeout=datetime.timedelta(seconds=60))
    try:
        torch.save(fn(rank, world, *args), f"{out}/result{rank}.pt")
    except BaseException:
        Path(f"{out}/error{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        torch_dist.destroy_process_group()


def run_two_processes(fn, tmp_path: Path, *args, timeout: float = 240) -> list:
    """fn(rank, world, *args) in two gloo processes; returns their results in rank order."""
    out = tmp_path / "ranks"
    out.mkdir()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(fn, r, 2, f"file://{out}/pg", str(out), args))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
    errors = "\n".join(f.read_text() for f in sorted(out.glob("error*.txt")))
    assert all(p.exitcode == 0 for p in procs), f"exit codes {[p.exitcode for p in procs]}\n{errors}"
    return [torch.load(out / f"result{r}.pt", weights_only=False) for r in range(2)]


def _scenarios_rank(rank: int, world: int, data: Path, root: Path) -> dict:
    """Every two-process scenario in one pair of processes (one start-up); a failing scenario
    is recorded and the next one runs (GAN last: on failure its collectives diverge)."""
    out = {}
    for name, fn in (("sync_bn", _sync_bn_rank), ("agree", _agree_rank), ("resume", _resume_rank),
                     ("gan", _gan_rank)):
        try:
            out[name] = fn(rank, world, data, root)
        except Exception:
            out[name] = {"error": traceback.format_exc()}
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_train_valid(tmp_path_factory.mktemp("data"), train=4, valid=2, seconds=0.4, valid_seed=50)


@pytest.fixture(scope="module")
def two_processes(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    return {"ranks": run_two_processes(_scenarios_rank, root, data, root), "root": root}


def outcome(two_processes, name: str) -> list:
    results = [r[name] for r in two_processes["ranks"]]
    for rank, r in enumerate(results):
        assert "error" not in r, f"process {rank}, {name}:\n{r['error']}"
    return results


# ------------------------------------------------------------------------------------------
# MossFormerGAN: autocast validation, inference-mode caches
# ------------------------------------------------------------------------------------------
def test_gan_validates_under_autocast_bf16_and_trains_after_inference_mode():
    from se.models.mossformer_gan import MossFormerGAN

    torch.manual_seed(0)
    model = MossFormerGAN(**GAN_TINY)
    noisy, clean = (torch.from_numpy(x).float()[None] for x in tone_pair(0.3, 16000, seed=1))
    model.eval()
    with torch.no_grad():
        ref, _ = model.loss(noisy, clean)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # failed: float32 buffer, bf16 scores
            loss, parts = model.loss(noisy, clean)
    assert torch.isfinite(loss) and float(loss) == pytest.approx(float(ref), rel=0.05)
    with torch.inference_mode():  # enhancement (validation examples) fills the rotary cache
        model.enhance(noisy)
    model.train()
    loss, _ = model.loss(noisy, clean)  # failed: "Inference tensors cannot be saved for backward"
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_blocked_attention_under_autocast_matches_float32():
    from se.models.kernels.mossformer_gan import relu_square_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 40, 8, generator=g) for _ in range(3))
    ref = relu_square_attention(q, k, v, 0.1, zero_diag=True, block_elements=200)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = relu_square_attention(q, k, v, 0.1, zero_diag=True, block_elements=200,
                                    out=torch.ones(3, 40, 8))
    torch.testing.assert_close(out.float(), ref + 1, rtol=0.03, atol=0.03)


# ------------------------------------------------------------------------------------------
# GAN under DDP with one process's PESQ failing; clearvoice mode refused
# ------------------------------------------------------------------------------------------
def _gan_rank(rank: int, world: int, data: Path, root: Path) -> dict:
    from se.trainer import distribute

    conf = {"network": "MossFormerGAN_SE_16K", "network_kwargs": GAN_TINY, "discriminator_kwargs": DISC_TINY,
            "gan_loss_mode": "fixed", "pesq_workers": 0, "init_learning_rate": 1e-3, "weight_decay": 0.0,
            "clip_grad_norm": 10.0, "seed": 5, "sync_batchnorm": True}
    dist = Dist(rank, rank, world)
    step = build_train_step(conf, dist)
    step.build_optimizers()
    distribute(step, conf, dist)
    failed = []
    for i in range(2):
        noisy, clean = (torch.from_numpy(x).float()[None] for x in tone_pair(0.5, 16000, seed=10 * rank + i))
        if rank == 1:
            clean = torch.zeros_like(clean)  # silent crop: PESQ fails for this process's only item
        parts = step.micro_step(noisy, clean, 1.0)
        failed.append(parts["pesq_failed"])
        upd = step.update(loss_finite=all(np.isfinite(v) for v in parts.values()))
        assert not upd["nonfinite"]
    return {"failed": failed, "disc": [p.detach().clone() for p in step.modules["discriminator"].parameters()]}


def test_gan_two_processes_one_with_all_pesq_failed(two_processes):
    r0, r1 = outcome(two_processes, "gan")
    assert r0["failed"] == [0.0, 0.0] and r1["failed"] == [1.0, 1.0]
    for a, b in zip(r0["disc"], r1["disc"]):  # DDP kept the discriminators identical
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gan_failed_pesq_items_have_zero_weight():
    step = _gan_step()
    disc = step.modules["discriminator"]
    g = torch.Generator().manual_seed(1)
    clean_mag, est_mag = torch.rand(3, 1, 20, 21, generator=g), torch.rand(3, 1, 20, 21, generator=g)
    q = torch.tensor([0.5, float("nan"), 0.2])
    torch.manual_seed(7)  # D's dropout masks, replayed below
    loss, n_failed = step.discriminator_loss(clean_mag, est_mag, q)
    torch.manual_seed(7)
    with torch.no_grad():  # the failed item still goes through D (its BatchNorm statistics)
        pred_max = disc(clean_mag, clean_mag).flatten()
        pred = disc(clean_mag, est_mag).flatten()[[0, 2]]
    want = ((pred_max - 1) ** 2).mean() + ((pred - q[[0, 2]]) ** 2).mean()  # mean over valid items
    assert n_failed == 1 and loss.item() == pytest.approx(float(want), rel=1e-5)
    torch.manual_seed(7)
    loss, n_failed = step.discriminator_loss(clean_mag, est_mag, torch.full((3,), float("nan")))
    assert n_failed == 3 and loss.item() == pytest.approx(float(((pred_max - 1) ** 2).mean()), rel=1e-5)


def _gan_step(**conf):
    base = {"network": "MossFormerGAN_SE_16K", "network_kwargs": GAN_TINY, "discriminator_kwargs": DISC_TINY,
            "pesq_workers": 0, "seed": 1, "init_learning_rate": 1e-3, **conf}
    torch.manual_seed(0)
    step = resolve(get_entry(base["network"]).train_step)(build_network(base["network"], base), base,
                                                           torch.device("cpu"))
    step.build_optimizers()
    return step


def test_clearvoice_gan_mode_refused_with_two_processes():
    conf = {"network": "MossFormerGAN_SE_16K", "network_kwargs": GAN_TINY, "discriminator_kwargs": DISC_TINY,
            "gan_loss_mode": "clearvoice", "seed": 1}
    with pytest.raises(ValueError, match="gan_loss_mode clearvoice .* one process"):
        build_train_step(conf, Dist(0, 0, 2))
    build_train_step(conf, Dist())  # one process: allowed


# ------------------------------------------------------------------------------------------
# FRCRN complex BatchNorm synchronised over processes
# ------------------------------------------------------------------------------------------
def _bn_inputs(rank: int):
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(2 + rank, 6, 5, 7, generator=g) * (1 + 2 * rank) + 3 * rank  # other data per rank
    w = torch.randn(x.shape, generator=g)  # loss weights
    return x, w


def _bn_module():
    from se.models.frcrn import ComplexBatchNorm2d

    torch.manual_seed(0)
    bn = ComplexBatchNorm2d(3)
    with torch.no_grad():
        for p in bn.parameters():
            p.uniform_(0.5, 1.5)
    return bn


def _sync_bn_rank(rank: int, world: int, data: Path, root: Path) -> dict:
    from se.train_step import TrainStep

    bn = TrainStep.sync_batchnorm(_bn_module(), on_gpu=False).train()
    x, w = _bn_inputs(rank)
    x.requires_grad_(True)
    y = bn(x)
    (y * w).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "param_grads": [p.grad for p in bn.parameters()],
            "buffers": {k: v.clone() for k, v in bn.state_dict().items()}}


def test_frcrn_sync_batchnorm_gives_union_statistics(two_processes):
    results = outcome(two_processes, "sync_bn")
    # reference: one process, the union of both batches
    bn = _bn_module().train()
    (x0, w0), (x1, w1) = _bn_inputs(0), _bn_inputs(1)
    x = torch.cat([x0, x1]).requires_grad_(True)
    y = bn(x)
    (y * torch.cat([w0, w1])).sum().backward()
    parts = [slice(0, len(x0)), slice(len(x0), None)]
    for r, res in enumerate(results):
        torch.testing.assert_close(res["y"], y.detach()[parts[r]], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(res["x_grad"], x.grad[parts[r]], rtol=1e-4, atol=1e-4)
        for k, v in bn.state_dict().items():  # running mean/var (unbiased) and counts
            torch.testing.assert_close(res["buffers"][k], v, rtol=1e-5, atol=1e-5)
    for i, p in enumerate(bn.parameters()):  # weight/bias gradients: the sum over processes
        torch.testing.assert_close(results[0]["param_grads"][i] + results[1]["param_grads"][i], p.grad,
                                   rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------
# updates: grad-scaler overflow vs non-finite loss, decided alike on every process
# ------------------------------------------------------------------------------------------
def frcrn_trainer(data, exp, dist=None, **overrides) -> Trainer:
    conf = resolve_config(config.load(None, {
        "network_kwargs": FRCRN_TINY, "max_length": 0.3, "batch_size": 2, "num_workers": 0, "seed": 3,
        "print_freq": 1, "valid_utterances_to_log": 0, **overrides}))
    return Trainer(conf, str(data / "train"), str(data / "valid"), str(exp), dist or Dist())


def _weights(step) -> dict:
    from se.train_step import unwrap

    return {k: v.clone() for k, v in unwrap(step.modules["model"]).state_dict().items()}


def test_fp16_scaler_overflow_skips_are_not_failures(data, tmp_path):
    trainer = frcrn_trainer(data, tmp_path / "exp", max_steps=2, max_bad_steps=1, max_epoch=1)
    trainer.resume_or_init()
    # fp16's grad scaler (its CPU variant) at a scale that overflows every gradient
    trainer.train_step.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)
    before = _weights(trainer.train_step)
    trainer.fit()  # failed: counted as 2 non-finite updates > max_bad_steps 1
    p = trainer.progress
    assert (p.global_step, p.overflow_steps, p.skipped_steps) == (2, 2, 0)
    assert trainer.train_step.grad_scaler.get_scale() == 2.0 ** 125
    after = _weights(trainer.train_step)
    assert all(torch.equal(before[k], after[k]) for k in before)  # no step, buffers restored
    # an update after a micro-step without gradients touches neither the scaler nor the weights
    upd = trainer.train_step.update()  # failed: "No inf checks were recorded for this optimizer"
    assert upd["nonfinite"] == upd["scaler_overflow"] == 0 and trainer.train_step.grad_scaler.get_scale() == 2.0 ** 125


def _agree_rank(rank: int, world: int, data: Path, root: Path) -> dict:
    trainer = frcrn_trainer(data, root / "agree", Dist(rank, rank, world))
    trainer.resume_or_init()
    batch = next(iter(trainer.train_loader))
    parts = trainer.train_step.micro_step(batch["noisy"], batch["clean"], 1.0)
    # only process 1 sees a non-finite loss: both skip, neither steps
    upd = trainer.train_step.update(loss_finite=rank == 0)
    return {"parts": parts, "upd": upd, "weights": _weights(trainer.train_step)}


def test_non_finite_loss_on_one_process_skips_the_update_on_every_process(data, tmp_path, two_processes):
    results = outcome(two_processes, "agree")
    ref = frcrn_trainer(data, tmp_path / "ref")
    ref.train_step.build_optimizers()
    # the trainable weights (fixed STFT kernels are built with LAPACK, whose last bits can
    # depend on the thread count of the process that built them)
    from se.train_step import unwrap

    trainable = {k for k, v in unwrap(ref.train_step.modules["model"]).named_parameters() if v.requires_grad}
    for res in results:
        assert res["upd"]["nonfinite"] == 1.0
        assert all(torch.equal(res["weights"][k], v) for k, v in _weights(ref.train_step).items() if k in trainable)


# ------------------------------------------------------------------------------------------
# per-process RNG states, deterministic mode
# ------------------------------------------------------------------------------------------
def _resume_rank(rank: int, world: int, data: Path, root: Path) -> dict:
    exp = root / "resume"
    dist = Dist(rank, rank, world)
    trainer = frcrn_trainer(data, exp, dist, max_steps=2, max_epoch=1)
    trainer.resume_or_init()
    trainer.fit()  # saves at the end (rank 0 writes every process's RNG state)
    saved = torch.get_rng_state()
    torch_dist.barrier()
    torch.manual_seed(999)  # any other state
    resumed = frcrn_trainer(data, exp, dist, max_steps=2, max_epoch=1)
    resumed.resume_or_init()
    return {"saved": saved, "restored": torch.get_rng_state()}


def test_resume_of_two_processes_restores_each_process_rng(two_processes):
    r0, r1 = outcome(two_processes, "resume")
    exp = two_processes["root"] / "resume"
    assert not torch.equal(r0["saved"], r1["saved"])  # seeds offset by rank (dropout differs)
    for r in (r0, r1):
        assert torch.equal(r["restored"], r["saved"])  # failed for rank 1: it got rank 0's
    from se.checkpoint import read_pointer

    state = torch.load(read_pointer(exp), weights_only=False)
    assert len(state["rng_per_rank"]) == 2 and state["world_size"] == 2


def test_resume_with_fewer_processes_takes_its_own_rank_state(caplog):
    from se.trainer import restore_rng_states, rng_state

    cpu = torch.device("cpu")
    states = []
    for seed in (1, 2):  # what two processes saved
        torch.manual_seed(seed)
        states.append(rng_state(cpu))
    torch.manual_seed(3)
    restore_rng_states({"rng": states[0], "rng_per_rank": states, "step": 5}, {"seed": 0}, Dist())
    assert torch.equal(torch.get_rng_state(), states[0]["torch"])
    assert "RNG states of 2 process(es), this run has 1" in caplog.text


def test_initial_weights_agree_and_dropout_streams_differ_between_processes():
    conf = {"network": "FRCRN_SE_16K", "network_kwargs": FRCRN_TINY, "seed": 4}
    s0, s1 = build_train_step(conf, Dist(0, 0, 2)), build_train_step(conf, Dist(1, 1, 2))
    for a, b in zip(s0.modules["model"].parameters(), s1.modules["model"].parameters()):
        assert torch.equal(a, b)
    build_train_step(conf, Dist(0, 0, 2))
    a = torch.rand(4)
    build_train_step(conf, Dist(1, 1, 2))
    assert not torch.equal(a, torch.rand(4))


def test_deterministic_mode_sets_the_flags():
    old = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
           torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled()
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert config.load(None)["deterministic"] is False
    finally:
        torch.use_deterministic_algorithms(old[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[1], old[2]
        if old[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


# ------------------------------------------------------------------------------------------
# the GPU acceptance script
# ------------------------------------------------------------------------------------------
def test_gpu_acceptance_script_dry_run(capsys):
    script = REPO / "tests/gpu/acceptance.py"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(script), "--dry-run"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("FRCRN_SE_16K", "MossFormerGAN_SE_16K", "MossFormer2_SE_48K"):
        for precision in ("fp32", "bf16", "fp16"):
            assert f"{name} {precision}" in out.stdout
    assert "dry run: arguments and imports checked" in out.stdout
    from tests.gpu import acceptance

    with pytest.raises(SystemExit) as exc:
        acceptance.main(["--dry-run", "--networks", "NoSuchNet"])
    assert exc.value.code == 2 and "unknown network 'NoSuchNet'" in capsys.readouterr().err
