"""What one network does in one training step; the loop around it lives in se.trainer.

The trainer is the same for every network. A network that trains with one model, one loss
and one optimiser uses :class:`TrainStep` as is; a network that needs more (the GAN's
discriminator) subclasses it and is named in its registry entry (``train_step``).

Contract with the trainer: the trainer calls only what :class:`TrainStep` declares below
(attributes and methods, each with a default and a docstring); a subclass overrides what it
needs and never adds a hook the trainer would have to probe for.
* ``modules``: name -> nn.Module. ``"model"`` is the enhancement network (saved under the
  checkpoint key ``model``, ClearVoice's name). Others are saved under their own name.
* ``optimizers``: name -> optimiser, saved as ``optimizer`` for "model" and
  ``optimizer_<name>`` otherwise (GAN: ``optimizer_disc`` per ClearVoice).
* ``micro_step(noisy, clean, scale)``: forward, loss, ``backward(loss * scale)``
  (scale = 1 / accumulation); returns the UN-scaled loss parts as floats.
* ``update(loss_finite)``: clip gradients once per update, then step every optimiser or none
  (a decision every process shares); returns gradient norms and the outcome flags
  ``nonfinite`` / ``scaler_overflow``.
* ``check_world_size(n)``: refuses a number of processes the step cannot train with.
* ``valid_step(noisy, clean)``: no gradients; returns parts including ``loss``.
* ``build_optimizers()``, ``state_dict()`` / ``load_state_dict(state)``: optimisers after
  the weights are loaded; every module's and optimiser's state for checkpoints.
* ``init_extra(path)``: after the trainer loaded the model from ``init_checkpoint_path``,
  the step may load its other modules (default: nothing).
* ``loss_forward_for_ddp``: True (default) -> DistributedDataParallel wraps
  ``LossForward(model)``; False -> it wraps the model itself (the step calls its forward).
* ``sync_batchnorm(module, on_gpu)``: batch statistics over every process.
* ``network``, ``set_train(mode)``, ``current_learning_rate()``,
  ``scale_learning_rates(factor)``: the plain network, train/eval mode, the learning rate
  logged and halved on plateaus.
* set by the trainer: ``autocast`` (mixed precision), ``grad_scaler`` (fp16) and
  ``any_process(flags)`` (an all-reduce under DDP).
"""

from __future__ import annotations

import contextlib
import math
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind DistributedDataParallel / LossForward wrappers."""
    while isinstance(module, (DistributedDataParallel, LossForward)):
        module = module.module
    return module


@runtime_checkable
class SelfSyncingNorm(Protocol):
    """A layer that computes its own batch norm (FRCRN's complex BN calls F.batch_norm, so
    torch.nn.SyncBatchNorm.convert_sync_batchnorm cannot reach it) and synchronises its
    training-mode statistics over the processes of ``group`` (None: all) once asked to."""

    def sync_batchnorm(self, group=None) -> None: ...


def adam_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """ClearVoice's groups: biases get no weight decay, everything else ``weight_decay``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if "bias" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class LossForward(nn.Module):
    """Makes ``forward`` call ``loss`` so DistributedDataParallel can wrap a network."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module.loss(*args, **kwargs)


class TrainStep:
    """Supervised step: ``loss, parts = model.loss(noisy, clean)``."""

    #: True: DistributedDataParallel wraps LossForward(model), whose forward is model.loss.
    #: False: DDP wraps the model itself (a step that calls the network's own forward).
    loss_forward_for_ddp = True

    def __init__(self, model: nn.Module, conf: dict, device: torch.device):
        self.conf = conf
        self.device = device
        self.modules: dict[str, nn.Module] = {"model": model}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.autocast = contextlib.nullcontext  # set by the trainer for mixed precision
        self.grad_scaler = None  # torch.amp.GradScaler for fp16, set by the trainer
        # flags -> per flag "true on any process" (the trainer sets an all-reduce under DDP)
        self.any_process = lambda flags: list(flags)

    def check_world_size(self, world_size: int) -> None:
        """Raise ValueError when this step cannot train with ``world_size`` processes."""

    @property
    def network(self) -> nn.Module:
        """The enhancement network itself (no DDP wrapper)."""
        return unwrap(self.modules["model"])

    def set_train(self, mode: bool) -> None:
        """Training (True) or evaluation mode for every module."""
        for module in self.modules.values():
            module.train(mode)

    def current_learning_rate(self) -> float:
        """The network optimiser's current learning rate (first group)."""
        return self.optimizers["model"].param_groups[0]["lr"]

    def scale_learning_rates(self, factor: float) -> None:
        """Multiplies the learning rate of every group of every optimiser by ``factor``
        (ClearVoice halves only the first group)."""
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] *= factor

    def init_extra(self, init_checkpoint: str) -> None:
        """Called once the trainer loaded the network from ``init_checkpoint`` (fine-tuning):
        a step with more modules than the network loads them here. Default: nothing."""

    @staticmethod
    def sync_batchnorm(module: nn.Module, on_gpu: bool) -> nn.Module:
        """``module`` with batch statistics over every process (``sync_batchnorm: true`` under
        DDP): layers that compute their own batch norm (:class:`SelfSyncingNorm`) are asked
        to synchronise; torch BatchNorms become SyncBatchNorm on GPUs (no CPU version)."""
        for sub in module.modules():
            if isinstance(sub, SelfSyncingNorm):
                sub.sync_batchnorm()
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module) if on_gpu else module

    # -- building -------------------------------------------------------------------------
    def learning_rate(self) -> float:
        """Fine-tuning (an init checkpoint) uses finetune_learning_rate, else init_learning_rate."""
        if self.conf.get("init_checkpoint_path") and self.conf.get("finetune_learning_rate"):
            return float(self.conf["finetune_learning_rate"])
        return float(self.conf["init_learning_rate"])

    def build_optimizers(self) -> None:
        """Creates ``optimizers`` (called after the weights are loaded, before DDP)."""
        model = unwrap(self.modules["model"])
        groups = adam_param_groups(model, float(self.conf.get("weight_decay", 0.0)))
        name = self.conf.get("optimizer", "adam").lower()
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(name)
        if cls is None:
            raise ValueError(f"optimizer must be adam or adamw, got {name!r}")
        self.optimizers = {"model": cls(groups, lr=self.learning_rate())}

    # -- one step -------------------------------------------------------------------------
    def forward_loss(self, noisy: torch.Tensor, clean: torch.Tensor, **extra):
        """Loss through the (possibly DDP-wrapped) model, so gradients are all-reduced.

        ``extra``: inputs computed by the data pipeline (e.g. ``features``)."""
        model = self.modules["model"]
        if model is unwrap(model):
            return model.loss(noisy, clean, **extra)
        return model(noisy, clean, **extra)  # DDP(LossForward(model)): forward() is .loss()

    def micro_step(self, noisy: torch.Tensor, clean: torch.Tensor, scale: float, **extra) -> dict[str, float]:
        """Forward, loss and ``backward(loss * scale)`` of one batch (gradients accumulate
        until ``update``); returns the un-scaled loss parts as floats, ``loss`` included."""
        with self.autocast():
            loss, parts = self.forward_loss(noisy, clean, **extra)
        self.backward(loss.float() * scale)
        out = {k: float(v.detach()) for k, v in parts.items()}
        out["loss"] = float(loss.detach())
        return out

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, through the fp16 grad scaler when there is one."""
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
        else:
            loss.backward()

    def _unscale_and_clip(self, name: str) -> float:
        """Unscale (fp16) and clip optimiser ``name``'s gradients; returns their norm."""
        opt = self.optimizers[name]
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(opt)
        params = [p for g in opt.param_groups for p in g["params"]]
        clip = float(self.conf.get("clip_grad_norm", 0.0) or 0.0)
        return float(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf))

    def _zero_grads(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def update(self, loss_finite: bool = True) -> dict[str, float]:
        """Clip each optimiser's gradients once, then step all optimisers or none.

        Every process takes the same decision (``any_process``):
        * a non-finite loss on any process (``loss_finite`` False): nothing is unscaled or
          stepped, the grad scaler is untouched; ``nonfinite`` = 1;
        * non-finite gradients: no step; under fp16 while the scaler's scale is above 1 this is
          the scaler's ordinary overflow skip (``scaler_overflow`` = 1, the scale is backed off
          on every process alike), otherwise ``nonfinite`` = 1.
        Optimisers whose parameters got no gradient (micro-steps skipped by the network's step)
        are neither unscaled nor stepped. Returns ``grad_norm`` (model), ``grad_norm_<name>``
        (others) and the two flags.
        """
        norms = {self._norm_key(n): math.nan for n in self.optimizers}
        (bad_loss,) = self.any_process([not loss_finite])
        if bad_loss:
            self._zero_grads()
            return {**norms, "nonfinite": 1.0, "scaler_overflow": 0.0}
        active = [n for n, opt in self.optimizers.items()
                  if any(p.grad is not None for g in opt.param_groups for p in g["params"])]
        for n in active:
            norms[self._norm_key(n)] = self._unscale_and_clip(n)
        (bad_grad,) = self.any_process([not all(math.isfinite(norms[self._norm_key(n)]) for n in active)])
        scaler = self.grad_scaler if active else None  # nothing unscaled: nothing to update
        if bad_grad:
            overflow = scaler is not None and scaler.get_scale() > 1.0
            if scaler is not None:
                scaler.update(new_scale=scaler.get_scale() * scaler.get_backoff_factor())
            self._zero_grads()
            return {**norms, "nonfinite": float(not overflow), "scaler_overflow": float(overflow)}
        for n in active:
            if scaler is not None:
                scaler.step(self.optimizers[n])
            else:
                self.optimizers[n].step()
        if scaler is not None:
            scaler.update()
        self._zero_grads()
        return {**norms, "nonfinite": 0.0, "scaler_overflow": 0.0}

    @staticmethod
    def _norm_key(name: str) -> str:
        return "grad_norm" if name == "model" else f"grad_norm_{name}"

    @torch.no_grad()
    def valid_step(self, noisy: torch.Tensor, clean: torch.Tensor, **extra) -> dict[str, float]:
        """Loss parts of one validation batch (no gradients), ``loss`` included."""
        with self.autocast():
            loss, parts = unwrap(self.modules["model"]).loss(noisy, clean, **extra)
        out = {k: float(v) for k, v in parts.items()}
        out["loss"] = float(loss)
        return out

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Every module's and optimiser's state under its checkpoint key (see the contract)."""
        out = {}
        for name, module in self.modules.items():
            out[name] = unwrap(module).state_dict()
        for name, opt in self.optimizers.items():
            out["optimizer" if name == "model" else f"optimizer_{name}"] = opt.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        """Inverse of ``state_dict``; optimisers missing from ``state`` keep their state."""
        for name, module in self.modules.items():
            unwrap(module).load_state_dict(state[name])
        for name, opt in self.optimizers.items():
            key = "optimizer" if name == "model" else f"optimizer_{name}"
            if key in state:
                opt.load_state_dict(state[key])
