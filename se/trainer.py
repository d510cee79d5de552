"""The one trainer for every network (torchrun-native DDP, accumulation, exact resume).

Small functions, in the order they run: ``setup_distributed`` -> ``build_train_step`` ->
``build_loaders`` -> ``Trainer.resume_or_init`` -> ``Trainer.fit`` (``train_one_epoch``,
``validate``, ``save``). What a network computes in a step lives in se.train_step (or the
network's own step class named in the registry); tensorboard media in se.tensorboard_media;
this file owns the loop (about 670 lines: the loop with its fault handling, exact resume and
DDP kept in one file that reads top to bottom).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from se import checkpoint as ckpt
from se import cli
from se import config as config_lib
from se.data import DataDir, DataDirError, SegmentDataset, ShardedSampler, collate
from se.models import build_network, get_entry, network_kwargs, resolve, same_network_kwargs
from se.tensorboard_media import TrainingBoard
from se.train_step import LossForward, TrainStep

log = logging.getLogger("se.train")


# ------------------------------------------------------------------------------------------
# distributed setup
# ------------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(timeout_s: int = 600) -> Dist:
    """Reads torchrun's RANK / LOCAL_RANK / WORLD_SIZE; NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # a timeout turns a crashed or hung rank into an error instead of a silent hang
        torch_dist.init_process_group(
            backend, timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    return Dist(rank, local_rank, world, device)


def all_reduce_sum(values: list[float], dist: Dist) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    if dist.enabled:
        torch_dist.all_reduce(t)
    return t.tolist()


def any_process(flags: list[bool], dist: Dist) -> list[bool]:
    """Per flag: True when it is True on any process (one all-reduce), so that every process
    takes the same decision."""
    return [v > 0 for v in all_reduce_sum([float(f) for f in flags], dist)]


def all_gather(obj, dist: Dist) -> list:
    """Every process's ``obj`` (picklable), in rank order."""
    if not dist.enabled:
        return [obj]
    out = [None] * dist.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def setup_logging(dist: Dist) -> None:
    level = logging.INFO if dist.is_main else logging.WARNING
    fmt = f"%(asctime)s (%(name)s:{dist.rank}) %(levelname)s: %(message)s"
    cli.setup_logging(level, fmt)


# ------------------------------------------------------------------------------------------
# building
# ------------------------------------------------------------------------------------------


def resolve_config(conf: dict) -> dict:
    """Fills network-dependent defaults (sampling rate) and checks batch arithmetic."""
    entry = get_entry(conf["network"])
    if not conf["sampling_rate"]:
        conf["sampling_rate"] = entry.sampling_rate
    if conf["sampling_rate"] != entry.sampling_rate:
        raise config_lib.ConfigError(
            f"sampling_rate {conf['sampling_rate']} does not match {entry.name} ({entry.sampling_rate} Hz)"
        )
    if conf["precision"] not in ("fp32", "bf16", "fp16"):
        raise config_lib.ConfigError(f"precision must be fp32, bf16 or fp16, got {conf['precision']!r}")
    if conf["batch_size"] < 1:
        raise config_lib.ConfigError("batch_size must be >= 1")
    return conf


def accumulation_steps(conf: dict, world_size: int) -> int:
    """effec_batch_size = batch_size x processes x accumulation (ClearVoice's accu_grad)."""
    if not conf["accu_grad"]:
        return 1
    per_update = conf["batch_size"] * world_size
    if conf["effec_batch_size"] % per_update:
        raise config_lib.ConfigError(
            f"effec_batch_size {conf['effec_batch_size']} is not a multiple of batch_size x processes "
            f"= {conf['batch_size']} x {world_size}"
        )
    return max(1, conf["effec_batch_size"] // per_update)


def build_train_step(conf: dict, dist: Dist) -> TrainStep:
    """The network and its training step (the registry's ``train_step`` class, else TrainStep)."""
    torch.manual_seed(conf["seed"])  # identical initial weights on every rank
    model = build_network(conf["network"], conf)
    entry = get_entry(conf["network"])
    step_cls = resolve(entry.train_step) if entry.train_step else TrainStep
    train_step = step_cls(model, conf, dist.device)
    train_step.check_world_size(dist.world_size)
    train_step.any_process = functools.partial(any_process, dist=dist)
    for module in train_step.modules.values():
        module.to(dist.device)
    seed_process(conf["seed"], dist)
    return train_step


def seed_process(seed: int, dist: Dist) -> None:
    """Seeds this process's global RNG streams (python, numpy, torch, its CUDA device) with
    ``seed`` offset by the rank: dropout masks differ between GPUs. What must agree on every
    process does not use them: initial weights are drawn before (build_train_step), data order and
    crops come from (seed, epoch, item) (se.data.item_rng, ShardedSampler)."""
    rank_seed = seed + 1000003 * dist.rank
    random.seed(rank_seed)
    np.random.seed(rank_seed % 2**32)
    torch.manual_seed(rank_seed)  # also every CUDA device's generator


def set_deterministic(enabled: bool) -> None:
    """``deterministic: true``: deterministic kernels (cuDNN, cuBLAS, torch ops), so a resumed
    GPU run repeats an uninterrupted one exactly (slower); ops without a deterministic
    implementation warn."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reproducibility
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def distribute(train_step: TrainStep, conf: dict, dist: Dist) -> None:
    """Wraps every module of the step in DistributedDataParallel (after optimisers exist)."""
    if not dist.enabled:
        return
    from torch.nn.parallel import DistributedDataParallel as DDP

    for name, module in list(train_step.modules.items()):
        if conf["sync_batchnorm"]:
            module = train_step.sync_batchnorm(module, on_gpu=dist.device.type == "cuda")
        target = LossForward(module) if name == "model" and train_step.loss_forward_for_ddp else module
        train_step.modules[name] = DDP(
            target,
            device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
            find_unused_parameters=True,  # released architectures carry dead parameters
        )


def data_features(conf: dict):
    """A network's data-pipeline feature function (computed in loader workers), or None."""
    entry = get_entry(conf["network"])
    return resolve(entry.data_features)(conf) if entry.data_features else None


def build_loaders(conf: dict, train_dir: str, valid_dir: str, dist: Dist):
    rate = conf["sampling_rate"]
    segment = int(round(conf["max_length"] * rate))
    features = data_features(conf)
    valid = DataDir(valid_dir)
    if conf["simulation"]:  # on-the-fly degradations (se/simulation.py) instead of paired data
        from se.simulation import SimulatedDataset, Simulator, parse_config

        simulator = Simulator(parse_config(conf["simulation"], "config simulation block"), rate)
        train_set = SimulatedDataset(simulator, segment, conf["seed"], features=features)
        train = None
        log.info("training items simulated on the fly (se/simulation.py): %d per epoch from %d speech files, "
                 "%d noise files, %d RIRs", len(train_set), simulator.num_speech_files,
                 sum(len(s) for _, s in simulator.noise), sum(len(s) for _, s in simulator.rir))
    else:
        train = DataDir(train_dir)
        train_set = SegmentDataset(train, rate, segment, conf["seed"], random_crop=True, features=features,
                                   skip_unreadable=True)
    for d in (train, valid) if train is not None else (valid,):
        if d.sampling_rate and d.sampling_rate != rate:
            raise config_lib.ConfigError(
                f"{d.path}: data at {d.sampling_rate} Hz but {conf['network']} needs {rate} Hz; prepare "
                f"the data at {rate} Hz (data preparation stage)"
            )
    valid_set = SegmentDataset(valid, rate, segment, conf["seed"], random_crop=False, features=features)
    train_sampler = ShardedSampler(len(train_set), dist.rank, dist.world_size, conf["seed"], shuffle=True, pad=True)
    valid_sampler = ShardedSampler(len(valid_set), dist.rank, dist.world_size, shuffle=False, pad=False)

    def loader(ds, sampler):
        return torch.utils.data.DataLoader(
            ds, batch_size=conf["batch_size"], sampler=sampler, num_workers=conf["num_workers"],
            collate_fn=collate, drop_last=False, pin_memory=dist.device.type == "cuda",
            # own generator: creating an iterator must not consume the global RNG, or a
            # resumed run would diverge from an uninterrupted one
            generator=torch.Generator().manual_seed(conf["seed"]),
            persistent_workers=False,
        )

    return loader(train_set, train_sampler), loader(valid_set, valid_sampler)


def check_resumable(state: dict, path: Path, conf: dict) -> None:
    """Refuses to resume from a checkpoint of another network or size (the message names it;
    kwargs a checkpoint does not list are the constructor's defaults)."""
    name = conf["network"]
    old_kwargs, new_kwargs = state.get("network_kwargs") or {}, network_kwargs(name, conf)
    for key, old, new in (("network", state.get("network"), name), ("network_kwargs", old_kwargs, new_kwargs)):
        same = old == new if key == "network" else same_network_kwargs(name, old, new)
        if not same:
            raise ckpt.CheckpointError(
                f"{path}: cannot resume: the checkpoint has {key}={old!r} but the config says {new!r}. "
                "Use another --exp-dir, or --start-over to train from scratch here."
            )


def check_resume(conf: dict, exp_dir: Path, start_over: bool = False) -> Path | None:
    """The checkpoint training would resume from (None: none), checked with check_resumable;
    reads only (steps/train.sh calls it through ``se.bin.train --check-only`` before it starts
    a job, so that a refused resume leaves the exp dir, its log included, as it was)."""
    if start_over or not conf["train_from_last_checkpoint"]:
        return None
    last = ckpt.read_pointer(exp_dir, "last_checkpoint") if Path(exp_dir).is_dir() else None
    if last is not None:
        check_resumable(ckpt.torch_load(last), last, conf)
    return last


# ------------------------------------------------------------------------------------------
# RNG state
# ------------------------------------------------------------------------------------------


def rng_state(device: torch.device) -> dict:
    """This process's RNG streams: python, numpy, torch (CPU) and its own CUDA device's."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device.type == "cuda" and isinstance(cuda, torch.Tensor):  # older files: a list of all devices
        torch.cuda.set_rng_state(cuda, device)


def restore_rng_states(state: dict, conf: dict, dist: Dist) -> None:
    """Each process restores its own RNG streams from a checkpoint's ``rng_per_rank``; with
    another number of processes than the checkpoint's, the extra ones are seeded afresh."""
    states = state.get("rng_per_rank") or [state["rng"]]
    if len(states) != dist.world_size:
        log.warning("the checkpoint holds the RNG states of %d process(es), this run has %d: random "
                    "streams (dropout) differ from an uninterrupted run", len(states), dist.world_size)
    if dist.rank < len(states):
        set_rng_state(states[dist.rank], dist.device)
    else:
        seed_process(conf["seed"] + state.get("step", 0), dist)


# ------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------


@dataclass
class Progress:
    epoch: int = 0  # current epoch (0-based)
    global_step: int = 0  # optimiser updates done
    batch_in_epoch: int = 0  # batches of the current epoch already consumed
    best_valid_loss: float = math.inf
    bad_epochs: int = 0
    bad_steps_in_row: int = 0
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient
    overflow_steps: int = 0  # fp16 grad-scaler overflow skips (not failures)
    bad_files: list = field(default_factory=list)  # unreadable training files met (skipped)
    stopped_early: bool = False  # early stopping happened: a re-run does not train on
    history: dict = field(default_factory=dict)  # checkpoint file -> valid loss

    @classmethod
    def from_state(cls, state: dict) -> "Progress":
        """From a checkpoint's ``trainer`` entry (files before the rename say ``step``)."""
        state = dict(state)
        if "step" in state:
            state["global_step"] = state.pop("step")
        return cls(**state)


class Trainer:
    def __init__(self, conf: dict, train_dir: str, valid_dir: str, exp_dir: str, dist: Dist,
                 start_over: bool = False):
        self.conf = conf
        self.dist = dist
        self.exp_dir = Path(exp_dir)
        self.start_over = start_over
        self.accum = accumulation_steps(conf, dist.world_size)
        set_deterministic(conf["deterministic"])
        self.train_step = build_train_step(conf, dist)
        self.train_loader, self.valid_loader = build_loaders(conf, train_dir, valid_dir, dist)
        self.progress = Progress()
        self.board: TrainingBoard | None = None  # rank 0's tensorboard, opened by fit()
        self.global_step_at_start = 0  # updates done before this run (for the ETA)
        self._setup_precision()

    # -- setup ----------------------------------------------------------------------------
    def _setup_precision(self) -> None:
        precision = self.conf["precision"]
        if precision == "fp32":
            return
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        device_type = self.dist.device.type
        if precision == "fp16" and device_type != "cuda":
            raise config_lib.ConfigError("precision fp16 needs a GPU; use bf16 or fp32 on CPU")
        self.train_step.autocast = functools.partial(torch.autocast, device_type=device_type, dtype=dtype)
        if precision == "fp16":
            self.train_step.grad_scaler = torch.amp.GradScaler("cuda")

    def resume_or_init(self) -> None:
        """Resume from exp_dir/last_checkpoint, else load init_checkpoint_path (fine-tuning)."""
        last = None if self.start_over or not self.conf["train_from_last_checkpoint"] else ckpt.read_pointer(
            self.exp_dir, "last_checkpoint"
        )
        train_step = self.train_step
        if last is not None:
            state = ckpt.torch_load(last)
            self._check_same_setup(state, last)
            train_step.build_optimizers()
            train_step.load_state_dict(state)
            if train_step.grad_scaler is not None and state.get("grad_scaler"):
                train_step.grad_scaler.load_state_dict(state["grad_scaler"])
            self.progress = Progress.from_state(state["trainer"])
            restore_rng_states(state, self.conf, self.dist)
            log.info("resumed from %s (epoch %d, update %d, %d batches into the epoch)", last,
                     self.progress.epoch + 1, self.progress.global_step, self.progress.batch_in_epoch)
        else:
            if self.conf["init_checkpoint_path"]:
                ckpt.init_from_checkpoint(
                    train_step.network, self.conf["init_checkpoint_path"], self.conf["min_init_loaded_fraction"],
                    print_fn=log.info,
                )
                train_step.init_extra(self.conf["init_checkpoint_path"])
            train_step.build_optimizers()
        distribute(train_step, self.conf, self.dist)

    def _check_same_setup(self, state: dict, path: Path) -> None:
        check_resumable(state, path, self.conf)
        old_acc = state.get("config", {}).get("batch_size"), state.get("world_size"), state.get("accum")
        new_acc = self.conf["batch_size"], self.dist.world_size, self.accum
        if old_acc != new_acc:
            log.warning("resuming with batch/processes/accumulation %s instead of %s: the data order "
                        "and results will differ from an uninterrupted run", new_acc, old_acc)

    def network_kwargs(self) -> dict:
        return network_kwargs(self.conf["network"], self.conf)

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, valid_loss: float | None) -> None:
        """Rank 0 writes the checkpoint (with every process's RNG state), then the pointers.

        A failing write (full disk, I/O error) leaves the previous checkpoint and the pointer
        files as they were and stops training with a CheckpointError."""
        rng_per_rank = all_gather(rng_state(self.dist.device), self.dist)  # on every process
        if not self.dist.is_main:
            return
        p = self.progress
        # a non-finite validation loss is never the best
        is_best = valid_loss is not None and math.isfinite(valid_loss) and valid_loss <= p.best_valid_loss
        # ClearVoice's model.ckpt-<epoch>-<step>.pt, epoch counted from 1 (the current one when
        # saved inside an epoch, the finished one at its end)
        epoch = p.epoch + (1 if p.batch_in_epoch else 0)
        name = ckpt.checkpoint_name(epoch, p.global_step)
        if valid_loss is not None and math.isfinite(valid_loss):  # averaging ranks by it
            p.history[name] = valid_loss
        state = self.train_step.state_dict()
        state.update(
            epoch=epoch, step=p.global_step, network=self.conf["network"], network_kwargs=self.network_kwargs(),
            sampling_rate=self.conf["sampling_rate"], config=dict(self.conf), trainer=vars(p).copy(),
            rng=rng_per_rank[0], rng_per_rank=rng_per_rank, world_size=self.dist.world_size, accum=self.accum,
            grad_scaler=self.train_step.grad_scaler.state_dict() if self.train_step.grad_scaler is not None else None,
        )
        previous = ckpt.read_pointer(self.exp_dir, "last_checkpoint")
        try:
            path = ckpt.save_checkpoint(self.exp_dir, state, is_best, self.conf["keep_checkpoints"],
                                        self.conf["keep_best"])
        except OSError as exc:
            kept = f"{previous} and the pointer files are unchanged" if previous else "no checkpoint was written"
            raise ckpt.CheckpointError(
                f"{self.exp_dir / name}: cannot write the checkpoint ({exc}); {kept}. Free space or fix the "
                "disk, then re-run the same command to resume from the last checkpoint"
            ) from None
        log.info("saved %s%s", path, " (best so far)" if is_best else "")

    # -- training -------------------------------------------------------------------------
    def _no_sync(self, sync: bool):
        """Skip DDP's all-reduce on micro-steps that do not end an update."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        stack = contextlib.ExitStack()
        if not sync:
            for module in self.train_step.modules.values():
                if isinstance(module, DDP):
                    stack.enter_context(module.no_sync())
        return stack

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.dist.device, non_blocking=True) for k, v in batch.items()
                if k not in ("index", "bad_files")}

    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_loader.sampler.epoch_indices()) / self.conf["batch_size"])

    def total_updates(self) -> int:
        per_epoch = math.ceil(self.batches_per_epoch() / self.accum)
        total = per_epoch * self.conf["max_epoch"]
        return min(total, self.conf["max_steps"]) if self.conf["max_steps"] else total

    def reached_max_steps(self) -> bool:
        return bool(self.conf["max_steps"]) and self.progress.global_step >= self.conf["max_steps"]

    def train_one_epoch(self) -> None:
        p, conf = self.progress, self.conf
        sampler = self.train_loader.sampler
        sampler.set_epoch(p.epoch, skip=p.batch_in_epoch * conf["batch_size"])
        self.train_loader.dataset.set_epoch(p.epoch)
        self.train_step.set_train(True)
        num_batches = p.batch_in_epoch + len(self.train_loader)
        sums: dict[str, float] = {}
        count = 0
        t_start, samples = time.time(), 0
        total = self.total_updates()
        pending = None  # the update being accumulated: buffers before it, finiteness, items
        for batch in self.train_loader:
            p.batch_in_epoch += 1
            is_update = p.batch_in_epoch % self.accum == 0 or p.batch_in_epoch == num_batches
            if pending is None:
                pending = {"buffers": self._snapshot_buffers(), "finite": True, "index": [], "bad_files": []}
            pending["index"] += batch["index"].tolist()
            pending["bad_files"] += batch.get("bad_files", [])
            data = self._to_device(batch)
            with self._no_sync(is_update):
                parts = self.train_step.micro_step(data.pop("noisy"), data.pop("clean"), 1.0 / self.accum, **data)
            pending["finite"] &= all(math.isfinite(v) for v in parts.values())
            samples += batch["noisy"].shape[0] * self.dist.world_size
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if not is_update:
                continue
            upd = self.train_step.update(loss_finite=pending["finite"])
            p.global_step += 1
            self._after_update(upd, pending)
            pending = None
            if p.global_step % conf["print_freq"] == 0 or p.global_step == 1:
                self._log_train(sums, count, upd, samples, t_start, total)
                sums, count = {}, 0
            if self.reached_max_steps():
                break  # fit() validates and saves
            if conf["checkpoint_save_freq"] and p.global_step % conf["checkpoint_save_freq"] == 0:
                self.save(None)

    def _snapshot_buffers(self) -> list[torch.Tensor]:
        """Copies of every module buffer (BatchNorm running statistics and counts, ...): the
        forward pass changes them before the loss is known."""
        return [b.detach().clone() for m in self.train_step.modules.values() for b in m.buffers()]

    def _restore_buffers(self, saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for b, old in zip((b for m in self.train_step.modules.values() for b in m.buffers()), saved):
                b.copy_(old)

    def _after_update(self, upd: dict[str, float], pending: dict) -> None:
        """Bookkeeping of one update: a skipped one leaves no trace in the modules' buffers
        (the optimisers were not stepped, see TrainStep.update); max_bad_steps in a row, or
        more unreadable files than max_bad_files, stop training (on every process alike)."""
        p, conf = self.progress, self.conf
        self._count_bad_files(pending["bad_files"])
        if upd.get("scaler_overflow"):
            self._restore_buffers(pending["buffers"])
            p.overflow_steps += 1
            log.info("update %d: fp16 gradient overflow, update skipped and loss scale lowered to %g "
                     "(%d such skips in all)", p.global_step, self.train_step.grad_scaler.get_scale(), p.overflow_steps)
            return
        if not upd.get("nonfinite"):
            p.bad_steps_in_row = 0
            return
        self._restore_buffers(pending["buffers"])
        p.bad_steps_in_row += 1
        p.skipped_steps += 1
        data = self.train_loader.dataset.data
        utts = sorted({data.utterances[i].utt for i in pending["index"]})
        log.warning("update %d: non-finite %s, update skipped, weights, buffers and optimiser state kept "
                    "(%d in a row, %d in all); utterances of this process's batch: %s", p.global_step,
                    "loss" if not pending["finite"] else "gradient", p.bad_steps_in_row, p.skipped_steps,
                    " ".join(utts))
        if p.bad_steps_in_row >= conf["max_bad_steps"]:
            raise FloatingPointError(
                f"{p.bad_steps_in_row} non-finite updates in a row (max_bad_steps); lower the "
                "learning rate, check the data, or use precision fp32"
            )

    def _count_bad_files(self, new: list[str]) -> None:
        """Unreadable training files (skipped by the dataset) are named once and counted on
        every process alike; more than ``max_bad_files`` stop training with the list."""
        p = self.progress
        known = set(p.bad_files)
        new = sorted(set(new) - known)
        if not any_process([bool(new)], self.dist)[0]:
            return
        for found in all_gather(new, self.dist):
            for item in found:
                if item not in known:
                    known.add(item)
                    p.bad_files.append(item)
                    log.warning("skipped an unreadable training file (%d so far): %s", len(p.bad_files), item)
        if len(p.bad_files) > self.conf["max_bad_files"]:
            raise DataDirError(
                f"{len(p.bad_files)} unreadable training files (more than max_bad_files "
                f"{self.conf['max_bad_files']}); fix or remove them from the data dir (or raise max_bad_files "
                "to train without them):\n  "
                + "\n  ".join(p.bad_files)
            )

    def _log_train(self, sums, count, upd, samples, t_start, total) -> None:
        p = self.progress
        elapsed = max(1e-9, time.time() - t_start)
        rate = samples / elapsed
        updates_left = max(0, total - p.global_step)
        sec_per_update = elapsed / max(1, p.global_step - self.global_step_at_start)
        eta = datetime.timedelta(seconds=int(updates_left * sec_per_update))
        parts = " ".join(f"{k}={v / max(1, count):.4f}" for k, v in sorted(sums.items()))
        log.info("epoch %d update %d/%d %s grad_norm=%.3f lr=%.2e %.1f samples/s ETA %s",
                 p.epoch + 1, p.global_step, total, parts, upd.get("grad_norm", float("nan")), self.train_step.current_learning_rate(), rate, eta)
        if self.board is not None:
            means = {k: v / max(1, count) for k, v in sums.items()}
            self.board.scalars("train", {**means, **upd, "lr": self.train_step.current_learning_rate(),
                                         "samples_per_s": rate}, p.global_step)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean of every loss part over the whole validation set, exact under sharding.

        ``nonfinite_utterances`` counts the utterances of batches with a non-finite loss part;
        they stay in the means (a non-finite mean is never taken as the best)."""
        if self.dist.enabled:
            # every rank validates rank 0's model: BatchNorm running statistics are per rank
            for module in self.train_step.modules.values():
                for buf in module.buffers():
                    torch_dist.broadcast(buf, 0)
        self.train_step.set_train(False)
        sums: dict[str, float] = {}
        n = bad = 0
        for batch in self.valid_loader:
            data = self._to_device(batch)
            b = batch["noisy"].shape[0]
            parts = self.train_step.valid_step(data.pop("noisy"), data.pop("clean"), **data)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * b
            n += b
            bad += b if not all(math.isfinite(v) for v in parts.values()) else 0
        keys = sorted(sums)
        totals = all_reduce_sum([sums[k] for k in keys] + [float(bad), float(n)], self.dist)
        count = totals[-1]
        self.train_step.set_train(True)
        return ({k: totals[i] / max(1.0, count) for i, k in enumerate(keys)}
                | {"nonfinite_utterances": totals[-2], "utterances": count})

    def end_of_epoch(self, valid: dict[str, float]) -> bool:
        """Plateau bookkeeping; returns True when training should stop early."""
        p, conf = self.progress, self.conf
        loss = valid["loss"]
        if not math.isfinite(loss):
            log.warning("epoch %d validation: loss is NOT FINITE (%g; %d of %d utterances in batches with "
                        "non-finite losses): never taken as the best checkpoint", p.epoch + 1, loss,
                        valid.get("nonfinite_utterances", 0), valid.get("utterances", 0))
        improved = math.isfinite(loss) and loss < p.best_valid_loss
        if improved:
            p.best_valid_loss = loss
            p.bad_epochs = 0
        else:
            p.bad_epochs += 1
            if conf["lr_halve_patience"] and p.bad_epochs % conf["lr_halve_patience"] == 0:
                self.train_step.scale_learning_rates(0.5)
                log.info("no improvement for %d epochs: learning rate halved to %.2e", p.bad_epochs, self.train_step.current_learning_rate())
        log.info("epoch %d validation: %s (best %.4f)%s", p.epoch + 1,
                 " ".join(f"{k}={v:.4f}" for k, v in sorted(valid.items())), p.best_valid_loss,
                 "" if improved else f", {p.bad_epochs} epoch(s) without improvement")
        if self.board is not None:
            self.board.scalars("valid", valid, p.global_step)
        return bool(conf["early_stop_patience"]) and p.bad_epochs >= conf["early_stop_patience"]

    def fit(self) -> None:
        conf, p = self.conf, self.progress
        if self.dist.is_main:
            self.board = TrainingBoard(self.exp_dir / "tensorboard", conf["sampling_rate"],
                                       conf["valid_utterances_to_log"])
        log.info("%s: %d processes x batch %d x accumulation %d = effective batch %d; %d updates planned",
                 conf["network"], self.dist.world_size, conf["batch_size"], self.accum,
                 conf["batch_size"] * self.dist.world_size * self.accum, self.total_updates())
        self.global_step_at_start = p.global_step
        if p.stopped_early:
            log.info("training in %s stopped early already (best validation loss %.4f); use --start-over "
                     "to train again", self.exp_dir, p.best_valid_loss)
            return
        stop = self.reached_max_steps()
        while not stop and p.epoch < conf["max_epoch"]:
            self.train_one_epoch()
            epoch_done = not self.reached_max_steps() or p.batch_in_epoch >= self.batches_per_epoch()
            valid = self.validate()
            if self.board is not None:
                examples = self.board.log_valid_examples(
                    self.train_step.network, self.valid_loader.dataset.data.utterances, self.dist.device,
                    p.global_step)
                log.info("validation examples: %s", " ".join(f"{k}={v:.3f}" for k, v in examples.items()) or "none")
            stop = self.end_of_epoch(valid)
            if epoch_done:
                p.epoch += 1
                p.batch_in_epoch = 0
            p.stopped_early = stop
            self.save(valid["loss"])
            stop = stop or self.reached_max_steps()
        if self.board is not None:
            self.board.close()
        log.info("training finished after %d updates (%d epochs); best validation loss %.4f",
                 p.global_step, p.epoch, p.best_valid_loss)

