"""Keep freed heap memory for reuse (glibc malloc tuning for the CPU tensor allocator).

PyTorch's CPU tensors come straight from malloc.  glibc serves every block above its mmap
threshold (at most 32 MiB) with a fresh mmap and unmaps it on free, so each large
temporary (MossFormerGAN's attention and feature tensors are 50-200 MB at 10 s of audio)
is faulted in page by page and zeroed by the kernel again on every allocation: 7.5 million
page faults and about 40 % of the wall time of a MossFormerGAN_SE_16K enhancement of a 10 s
file on 2 CPU threads.  With mmap disabled for the heap (``M_MMAP_MAX = 0``) freed blocks
stay in the process and are reused, and glibc never trims the top of the heap by itself
(``M_TRIM_THRESHOLD`` at its largest value, 2 GiB - 1): with the earlier threshold of 256 MiB,
freeing a few of those tensors at the top of the heap crossed it, the heap was trimmed and the
next call faulted it all in again (3.3 million page faults and 6-7 s of system time per 10 s
MossFormerGAN_SE_16K enhancement; none with the larger threshold, and a lower peak RSS).  When
the heap grows it asks the kernel for ``M_TOP_PAD`` (256 MiB) more.  Values are unchanged.
The price is resident memory: freed blocks are kept, and glibc cannot always fit a new
aligned block into an old hole, so the peak RSS of that enhancement went from 2.2 to about
3-3.5 GB.
``release_free_memory()`` hands free heap pages back on request.  The training layer uses it
(CPU training with retained memory only; networks never call it themselves):
``release_after_step()`` after each optimiser update, and ``release_after_each(modules)``
after each run of the given modules, e.g. the recomputed (checkpointed) blocks of
MossFormerGAN, where glibc otherwise kept several GB of freed, fragmented heap resident (peak
RSS of a 2 s MossFormerGAN_SE_16K step 7.6 GB without, 6.3 GB with).

``retain_freed_memory()`` is called by se.bin.enhance and se.bin.train at start-up.  Set
``SE_RETAIN_FREED_MEMORY=0`` to leave malloc alone.  Elsewhere than glibc it does nothing.
The equivalent setting for any process is the environment variable
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647:glibc.malloc.top_pad=268435456``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_TOP_PAD = -2
M_MMAP_MAX = -4
DEFAULT_TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int)
TOP_PAD = 256 << 20

_applied: int | None = None


def retain_freed_memory(trim_threshold: int = DEFAULT_TRIM_THRESHOLD) -> bool:
    """Tune glibc malloc to keep freed memory; True when applied (idempotent)."""
    global _applied
    if os.environ.get("SE_RETAIN_FREED_MEMORY", "1").strip() in ("0", "false", "no"):
        return False
    if _applied == trim_threshold:
        return True
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if (mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, int(trim_threshold)) != 1
            or mallopt(M_TOP_PAD, TOP_PAD) != 1):
        log.debug("mallopt refused the settings; malloc left as it is")
        return False
    _applied = trim_threshold
    return True


def retaining() -> bool:
    """True when retain_freed_memory() has tuned malloc in this process."""
    return _applied is not None


def release_free_memory() -> bool:
    """Hand free heap pages back to the OS now (glibc ``malloc_trim(0)``); False elsewhere.

    The freed pages are faulted in (zero-filled) again when the heap grows back, so this
    is for the points between units of work, not inside them.
    """
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


@functools.lru_cache(maxsize=None)
def _glibc_function(name: str):
    """A function of the C library on Linux, None elsewhere or when it lacks it (e.g. musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def release_after_step(device) -> bool:
    """After an optimiser update: hand the freed heap back when training ran on the CPU with
    retained memory (the tensors alive between steps are a fraction of a step's peak, e.g.
    < 1.5 GB of a MossFormerGAN_SE_16K step's 6 GB); True when memory was released."""
    if getattr(device, "type", str(device).split(":")[0]) != "cpu" or not retaining():
        return False
    return release_free_memory()


def release_after_each(modules, device) -> list:
    """Training on the CPU with retained memory: release the freed heap after every run of
    each of ``modules`` with autograd in training mode (its forward, and its recomputation in
    backward when it is checkpointed).  Returns the hook handles (``.remove()`` undoes it);
    none elsewhere."""
    if getattr(device, "type", str(device).split(":")[0]) != "cpu" or not retaining():
        return []

    def hook(module, args, output):
        if module.training and _grad_enabled():
            release_free_memory()

    return [m.register_forward_hook(hook) for m in modules]


def _grad_enabled() -> bool:
    import torch

    return torch.is_grad_enabled()
