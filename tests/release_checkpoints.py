"""Build ClearVoice release-format checkpoints from the state-dict manifests (for tests).

A release checkpoint is ``{'model': state_dict}`` holding exactly the manifest's keys, filled
with the rule of tests/release_fill.py. Constants (STFT kernels, rotary frequencies)
keep their constructed values: they are taken from OUR module's state dict (after mapping our
keys to release keys with ``release_constants``) so a wrong construction fails the parity test.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def load_manifest(clearvoice_data: Path, name: str) -> dict:
    return json.loads((Path(clearvoice_data) / f"{name}.state_dict.json").read_text())


def release_state_dict(manifest: dict, constants: dict[str, torch.Tensor], release_fill) -> dict:
    """The manifest's keys, in its order, filled by the parity rule.

    ``constants``: release key -> constructed tensor for every entry the fill keeps.
    """
    pf = release_fill
    aliases = {e["key"]: e.get("alias_of") or e["key"] for e in manifest["entries"]}
    out = {}
    for e in manifest["entries"]:
        key, shape = e["key"], tuple(e["shape"])
        dtype = getattr(torch, e["dtype"])
        if pf.keeps_constructed_value(key):
            if key not in constants:
                raise KeyError(f"constant {key} not provided by our module")
            value = constants[key].detach().clone().to(dtype)
            if tuple(value.shape) != shape:
                raise ValueError(f"{key}: our constant has shape {tuple(value.shape)}, manifest {shape}")
            out[key] = value
        else:
            out[key] = pf.fill_tensor(aliases[key], shape, dtype)
    return out


def write_release_checkpoint(path: Path, state_dict: dict, module_prefix: bool = False) -> Path:
    if module_prefix:
        state_dict = {f"module.{k}": v for k, v in state_dict.items()}
    torch.save({"model": state_dict}, path)
    return path


# network -> the name of its release manifest in tests/data/clearvoice
RELEASES = {
    "FRCRN_SE_16K": "FRCRN_SE_16K",
    "MossFormer2_SE_48K": "MossFormer2_SE_48K",
    "MossFormerGAN_SE_16K": "MossFormerGAN_SE_16K_generator",
}


def release_checkpoint(network, clearvoice_data, release_fill, path, prefix=False):
    """A release-format checkpoint of ``network`` at ``path``: the manifest's keys filled by the
    parity rule, constants from our constructed module (``prefix``: keys under ``module.``)."""
    from se.models import build_network

    model = build_network(network, {})
    ours = model.state_dict()
    manifest = load_manifest(clearvoice_data, RELEASES[network])
    constants = {}
    for e in manifest["entries"]:
        if release_fill.keeps_constructed_value(e["key"]):
            # aliased constants (a rotary table shared by every layer) come from the first key
            src = e["key"] if e["key"] in ours else e.get("alias_of")
            constants[e["key"]] = ours[src]
    sd = release_state_dict(manifest, constants, release_fill)
    return write_release_checkpoint(path, sd, module_prefix=prefix)
