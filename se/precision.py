"""Mixed precision: the parts that must stay in float32 (STFT/iSTFT, losses, metric targets).

Training with ``precision: bf16 | fp16`` runs the networks under torch.autocast; functions
decorated with :func:`float32` run with autocast disabled and their floating-point tensor
arguments cast to float32, so spectra, masks targets and losses keep full precision.
"""

from __future__ import annotations

import functools

import torch


def _to_float32(x):
    if torch.is_tensor(x) and x.is_floating_point() and x.dtype != torch.float64:
        return x.float()
    return x


def float32(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not (torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")):
            return fn(*args, **kwargs)
        args = [_to_float32(a) for a in args]
        kwargs = {k: _to_float32(v) for k, v in kwargs.items()}
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*args, **kwargs)

    return wrapper
