"""The deterministic weight fill behind the parity references (tests/data/README.md).

The parity arrays in tests/data/clearvoice were produced by the ClearVoice reference code with
every state-dict entry set by a rule that depends only on the entry's key and shape, so our
networks can be filled identically without any released checkpoint. This module implements
that rule; the fingerprint tests (sum and SHA-256 of a filled state dict) prove that it draws
the same numbers.

For an entry ``key`` of shape ``shape`` (``name`` = the text after the last dot), using a
CPU ``torch.Generator`` seeded with ``zlib.crc32(key)`` and float32 draws:

* constants (STFT/iSTFT kernels, rotary and positional frequencies) keep the value the
  module constructs (:func:`keeps_constructed_value`);
* ``num_batches_tracked`` -> 0;  ``running_mean`` -> 0.1 N(0, 1);
  ``running_var`` -> 4 (1 + 0.1 U(0, 1));  ``bias``/``beta`` -> 0.1 N(0, 1);
* ``gamma`` (except the per-head ``qk_offset_scale`` gains) -> 1 + 0.1 N(0, 1);
* rank >= 2 -> N(0, 1) / sqrt(fan_in), fan_in = prod(shape[1:]), doubled for the real and
  imaginary halves of FRCRN's complex layers;
* rank <= 1 gains (``weight``, ``g``, ``scale``, ``slope``) -> 1 + 0.1 N(0, 1);
* anything else -> 0.1 N(0, 1).

Several keys that name one tensor (aliases) all take the value drawn for the first of them
(``alias_of`` in the manifests).
"""

from __future__ import annotations

import math
import zlib

import torch

CONSTANT_KEYS = {"stft.weight", "istft.weight", "istft.window", "istft.enframe", "mossformer.pos_enc.inv_freq"}
CONSTANT_SUFFIXES = ("rotary_pos_emb.freqs",)
COMPLEX_HALVES = {"conv_re", "conv_im", "tconv_re", "tconv_im", "fsmn_re_L1", "fsmn_im_L1", "fsmn_re_L2", "fsmn_im_L2"}
GAIN_NAMES = {"weight", "gamma", "g", "scale", "slope"}


def keeps_constructed_value(key: str) -> bool:
    return key in CONSTANT_KEYS or key.endswith(CONSTANT_SUFFIXES)


def fill_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The value of entry ``key`` (its canonical name when aliased) of the given shape."""
    shape = tuple(shape)
    name = key.rsplit(".", 1)[-1]
    if name == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.int64).to(dtype)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))

    def normal():
        return torch.randn(shape, generator=g)

    if name == "running_mean":
        value = 0.1 * normal()
    elif name == "running_var":
        value = 4 * (1 + 0.1 * torch.rand(shape, generator=g))
    elif name in ("bias", "beta"):
        value = 0.1 * normal()
    elif name == "gamma" and "qk_offset_scale" not in key:
        value = 1 + 0.1 * normal()
    elif len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        if COMPLEX_HALVES.intersection(key.split(".")):
            fan_in *= 2
        value = normal() / math.sqrt(fan_in)
    elif name in GAIN_NAMES:
        value = 1 + 0.1 * normal()
    else:
        value = 0.1 * normal()
    return value.to(dtype)
