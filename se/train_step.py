"""What one network does in one training step; the loop around it lives in se.trainer.

The trainer is the same for every network. A network that trains with one model, one loss
and one optimiser uses :class:`TrainStep` as is; a network that needs more (the GAN's
discriminator) subclasses it and is named in its registry entry (``train_step``).

Contract with the trainer:
* ``modules``: name -> nn.Module. ``"model"`` is the enhancement network (saved under the
  checkpoint key ``model``, ClearVoice's name). Others are saved under their own name.
* ``optimizers``: name -> optimiser, saved as ``optimizer`` for "model" and
  ``optimizer_<name>`` otherwise (GAN: ``optimizer_disc`` per ClearVoice).
* ``micro_step(noisy, clean, scale)``: forward, loss, ``backward(loss * scale)``
  (scale = 1 / accumulation); returns the UN-scaled loss parts as floats.
* ``update()``: clip gradients once per update, step every optimiser, zero grads.
* ``valid_step(noisy, clean)``: no gradients; returns parts including ``loss``.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(module, "module") and isinstance(module.module, nn.Module):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


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

    def __init__(self, model: nn.Module, conf: dict, device: torch.device):
        self.conf = conf
        self.device = device
        self.modules: dict[str, nn.Module] = {"model": model}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.autocast = contextlib.nullcontext  # set by the trainer for mixed precision
        self.grad_scaler = None  # torch.amp.GradScaler for fp16, set by the trainer

    # -- building -------------------------------------------------------------------------
    def learning_rate(self) -> float:
        """Fine-tuning (an init checkpoint) uses finetune_learning_rate, else init_learning_rate."""
        if self.conf.get("init_checkpoint_path") and self.conf.get("finetune_learning_rate"):
            return float(self.conf["finetune_learning_rate"])
        return float(self.conf["init_learning_rate"])

    def build_optimizers(self) -> None:
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
        with self.autocast():
            loss, parts = self.forward_loss(noisy, clean, **extra)
        self.backward(loss.float() * scale)
        out = {k: float(v.detach()) for k, v in parts.items()}
        out["loss"] = float(loss.detach())
        return out

    def backward(self, loss: torch.Tensor) -> None:
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
        else:
            loss.backward()

    def clip_and_step(self, name: str) -> float:
        """Unscale (fp16), clip to clip_grad_norm, step optimiser ``name``; returns grad norm."""
        opt = self.optimizers[name]
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(opt)
        params = [p for g in opt.param_groups for p in g["params"]]
        clip = float(self.conf.get("clip_grad_norm", 0.0) or 0.0)
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
        if self.grad_scaler is None and not torch.isfinite(norm):
            opt.zero_grad(set_to_none=True)  # non-finite gradients: skip this update
            return float(norm)
        if self.grad_scaler is not None:
            self.grad_scaler.step(opt)
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        return float(norm)

    def update(self) -> dict[str, float]:
        norm = self.clip_and_step("model")
        if self.grad_scaler is not None:
            self.grad_scaler.update()
        return {"grad_norm": norm}

    @torch.no_grad()
    def valid_step(self, noisy: torch.Tensor, clean: torch.Tensor, **extra) -> dict[str, float]:
        with self.autocast():
            loss, parts = unwrap(self.modules["model"]).loss(noisy, clean, **extra)
        out = {k: float(v) for k, v in parts.items()}
        out["loss"] = float(loss)
        return out

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        out = {}
        for name, module in self.modules.items():
            out[name] = unwrap(module).state_dict()
        for name, opt in self.optimizers.items():
            out["optimizer" if name == "model" else f"optimizer_{name}"] = opt.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        for name, module in self.modules.items():
            unwrap(module).load_state_dict(state[name])
        for name, opt in self.optimizers.items():
            key = "optimizer" if name == "model" else f"optimizer_{name}"
            if key in state:
                opt.load_state_dict(state[key])
