"""Checkpoints: ClearVoice's directory convention, self-describing, written atomically.

An experiment directory holds ``model.ckpt-<epoch>-<step>.pt`` files and two pointer files,
``last_checkpoint`` and ``last_best_checkpoint``, naming a checkpoint file on their first
line (ClearVoice's tooling reads them the same way). Each checkpoint is a ``torch.save`` dict
with ClearVoice's keys (``model``, ``optimizer``, ``epoch``, ``step``) plus what makes it
self-describing and exactly resumable: ``network``, ``network_kwargs``, ``sampling_rate``,
``config``, ``trainer`` (position, plateau state), ``rng`` and, for GANs,
``discriminator`` / ``optimizer_disc``.

Files are written to a temporary name and renamed; pointer files are updated last, so a kill
at any moment leaves either the previous or the new checkpoint, never a dangling pointer.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import torch

from se.atomic import atomic_write, atomic_write_text
from se.cli import UserError

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^model\.ckpt-(\d+)-(\d+)\.pt$")


class CheckpointError(UserError, ValueError):
    pass


def atomic_torch_save(obj, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks (checkpoints, packaged files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_name(epoch: int, step: int) -> str:
    return f"model.ckpt-{epoch}-{step}.pt"


def read_pointer(exp_dir: str | Path, name: str = "last_checkpoint") -> Path | None:
    """The checkpoint a pointer file names, or None when there is no pointer."""
    pointer = Path(exp_dir) / name
    if not pointer.is_file():
        return None
    lines = pointer.read_text().split()
    if not lines:
        raise CheckpointError(f"{pointer}: empty pointer file")
    target = Path(lines[0])
    if not target.is_absolute():
        target = Path(exp_dir) / target
    if not target.is_file():
        raise CheckpointError(f"{pointer}: names {target}, which does not exist")
    return target


def torch_load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    return obj


def strip_prefixes(state: dict) -> dict:
    """Drops DistributedDataParallel's ``module.`` and torch.compile's ``_orig_mod.``."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def model_state_from_file(obj: dict, key: str = "model") -> dict:
    """ClearVoice files: a bare state dict or ``{'model': state_dict, ...}``."""
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
        return strip_prefixes(obj[key])
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return strip_prefixes(obj)
    raise CheckpointError(f"no '{key}' state dict in the checkpoint")


def resolve_checkpoint(path: str | Path) -> Path:
    """A file, or an experiment dir (its last_best_checkpoint, else last_checkpoint)."""
    path = Path(path)
    if path.is_dir():
        for name in ("last_best_checkpoint", "last_checkpoint"):
            target = read_pointer(path, name)
            if target is not None:
                return target
        raise CheckpointError(f"{path}: no last_best_checkpoint or last_checkpoint in this directory")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def load_network(path: str | Path, network: str | None = None, device="cpu", kernels: bool | None = None):
    """Builds and loads a network for inference from our checkpoint or a ClearVoice file.

    Our checkpoints name their network and kwargs; a ClearVoice release file needs
    ``network``. Returns (model in eval mode, info dict). ``kernels``: see se.models.kernels.
    """
    from se.models import build_network, get_entry
    from se.models.kernels import accelerate

    file = resolve_checkpoint(path)
    obj = torch_load(file)
    ours = isinstance(obj, dict) and "network" in obj and "model" in obj
    if ours:
        if network and obj["network"] != network:
            raise CheckpointError(
                f"{file}: checkpoint of network {obj['network']}, but --network {network} was asked for"
            )
        name = obj["network"]
        model = accelerate(name, get_entry(name).network_class()(**obj.get("network_kwargs", {})), kernels)
    else:
        if not network:
            raise CheckpointError(f"{file}: a ClearVoice release file; say which network it is (--network)")
        name = network
        model = build_network(name, {}, kernels)  # release files hold the released architecture
    state = model_state_from_file(obj)
    load_into(model, state, file, name, release_format=not ours)
    model.to(device).eval()
    return model, {"network": name, "file": str(file), "format": "ours" if ours else "clearvoice"}


def load_into(model: torch.nn.Module, state: dict, file, name: str, release_format: bool = True) -> None:
    """Strict load (release files through the network's key mapping); a mismatch names the
    file and the keys."""
    state = strip_prefixes(state)
    if release_format:
        try:
            state = type(model).convert_clearvoice_state_dict(state)
        except ValueError as exc:
            raise CheckpointError(f"{file}: not a {name} checkpoint: {exc}") from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        def head(keys):
            return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {head(unexpected)}")
        if shapes:
            parts.append(
                "shape mismatch: "
                + head([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes])
            )
        raise CheckpointError(f"{file}: does not fit network {name} ({'; '.join(parts)})")
    model.load_state_dict(state)


def init_from_checkpoint(model: torch.nn.Module, path: str | Path, min_fraction: float, key: str = "model",
                         print_fn=print) -> dict:
    """Fine-tuning init: load what fits, print a table, refuse a mostly-empty load.

    Accepts our checkpoints and ClearVoice release files (bare or {'model': ...}, with
    ``module.``/``_orig_mod.`` prefixes). Returns counts.
    """
    file = resolve_checkpoint(path)
    obj = torch_load(file)
    try:
        state = model_state_from_file(obj, key)
    except CheckpointError as exc:
        raise CheckpointError(f"{file}: {exc}") from None
    try:
        state = type(model).convert_clearvoice_state_dict(state) if key == "model" else state
    except ValueError:
        pass  # partial / foreign layouts: compared key by key below
    own = model.state_dict()
    loaded, missing, mismatched = [], [], []
    for k, v in own.items():
        if k not in state:
            missing.append(k)
        elif tuple(state[k].shape) != tuple(v.shape):
            mismatched.append(k)
        else:
            loaded.append(k)
    unexpected = [k for k in state if k not in own]
    numel = lambda keys: sum(own[k].numel() for k in keys)  # noqa: E731
    # the share is counted over trainable parameters (not buffers or fixed STFT kernels)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    frac = sum(own[k].numel() for k in loaded if k in trainable) / max(1, sum(own[k].numel() for k in trainable))
    rows = [
        ("loaded", len(loaded), numel(loaded)),
        ("missing", len(missing), numel(missing)),
        ("unexpected", len(unexpected), sum(state[k].numel() for k in unexpected)),
        ("shape-mismatched", len(mismatched), numel(mismatched)),
    ]
    print_fn(f"init from {file} ({key}):")
    print_fn(f"  {'keys':<18}{'count':>8}{'elements':>14}")
    for label, count, elems in rows:
        print_fn(f"  {label:<18}{count:>8}{elems:>14}")
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
        for k in keys[:10]:
            print_fn(f"    {label}: {k}")
        if len(keys) > 10:
            print_fn(f"    {label}: ... {len(keys) - 10} more")
    print_fn(f"  loaded {100 * frac:.1f}% of the trainable parameters")
    if frac < min_fraction:
        raise CheckpointError(
            f"{file}: only {100 * frac:.1f}% of the {key}'s trainable parameters loaded (< {100 * min_fraction:.0f}%, "
            "min_init_loaded_fraction); is it a checkpoint of this network and size?"
        )
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return {"loaded": len(loaded), "missing": len(missing), "unexpected": len(unexpected),
            "mismatched": len(mismatched), "fraction": frac}


def list_checkpoints(exp_dir: str | Path) -> list[Path]:
    files = [p for p in Path(exp_dir).iterdir() if CKPT_RE.match(p.name)]
    return sorted(files, key=lambda p: tuple(int(x) for x in CKPT_RE.match(p.name).groups())[::-1])


def save_checkpoint(exp_dir: str | Path, state: dict, is_best: bool, keep: int, keep_best: int) -> Path:
    """Writes the checkpoint, then the pointers, then prunes old files."""
    exp_dir = Path(exp_dir)
    path = exp_dir / checkpoint_name(state["epoch"], state["step"])
    atomic_torch_save(state, path)
    if is_best:
        atomic_write_text(exp_dir / "last_best_checkpoint", path.name + "\n")
    atomic_write_text(exp_dir / "last_checkpoint", path.name + "\n")
    prune(exp_dir, keep, keep_best, state.get("trainer", {}).get("history", {}))
    return path


def prune(exp_dir: Path, keep: int, keep_best: int, history: dict) -> None:
    """Keep the ``keep`` newest and the ``keep_best`` best (by valid loss) checkpoints."""
    files = list_checkpoints(exp_dir)
    protected = set(files[-keep:]) if keep > 0 else set()
    scored = [(history[p.name], p) for p in files if p.name in history]
    protected |= {p for _, p in sorted(scored)[:keep_best]}
    for name in ("last_checkpoint", "last_best_checkpoint"):
        target = read_pointer(exp_dir, name)
        if target is not None:
            protected.add(target)
    for p in files:
        if p not in protected:
            p.unlink(missing_ok=True)
