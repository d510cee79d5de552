"""Network registry: one place that maps a network name to its builder.

Every network module registers a :class:`NetworkEntry` with :func:`register`. A network class
implements this contract (see se/models/frcrn.py for the reference implementation):

* ``sampling_rate`` (class attribute): the rate the network works at.
* ``from_config(conf: dict) -> nn.Module`` (classmethod): builds the network from the
  resolved training config (ClearVoice key names such as ``win_len``, ``win_inc``,
  ``fft_len``, ``win_type`` plus network-specific size keys; missing keys take the released
  architecture's values). ``config_kwargs(conf) -> dict`` returns the constructor kwargs it
  used, which checkpoints store so that they are self-describing.
* ``loss(noisy, clean) -> (loss, parts)``: training loss for a (B, L) batch in which
  noisy and clean carry the SAME gain; ``parts`` maps names to float tensors for logging.
* ``enhance(noisy) -> Tensor``: aligned, deterministic enhancement of a normalised (B, L)
  float batch; returns (B, L).
* ``clearvoice_decode(raw: np.ndarray) -> np.ndarray``: the reference decode path
  (audio_norm, padding, one-pass/segmented decoding, de-normalisation) on raw float64
  samples at the network's rate; the ``--clearvoice-compat`` mode of se.bin.enhance.
* ``convert_clearvoice_state_dict(sd) -> sd`` (staticmethod): maps a release-format state
  dict (``module.`` prefix already stripped) to this module's keys.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class NetworkEntry:
    name: str
    module: str  # python module that defines it (imported lazily)
    cls_name: str
    sampling_rate: int
    # name of the training-step class in se.trainer / the network module ("" = supervised)
    train_step: str = ""
    # 'pkg.module:accelerate' swapping in speed kernels (se/models/kernels); "" = none
    kernels: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def network_class(self):
        return getattr(importlib.import_module(self.module), self.cls_name)


_REGISTRY: dict[str, NetworkEntry] = {
    "FRCRN_SE_16K": NetworkEntry(
        "FRCRN_SE_16K", "se.models.frcrn", "FRCRN", 16000, kernels="se.models.kernels.frcrn:accelerate"
    ),
    "MossFormer2_SE_48K": NetworkEntry(
        "MossFormer2_SE_48K", "se.models.mossformer2", "MossFormer2SE", 48000,
        kernels="se.models.kernels.mossformer2:accelerate",
    ),
    "MossFormerGAN_SE_16K": NetworkEntry(
        "MossFormerGAN_SE_16K",
        "se.models.mossformer_gan",
        "MossFormerGAN",
        16000,
        train_step="se.models.mossformer_gan:GANTrainStep",
        kernels="se.models.kernels.mossformer_gan:accelerate",
    ),
}


def network_names() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> NetworkEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        from se.config import ConfigError

        raise ConfigError(
            f"unknown network '{name}'; choose one of: {', '.join(network_names())}"
        ) from None


def check_kwargs(cls, kwargs, label: str) -> dict:
    """Type-checks user-given constructor kwargs (a nested config mapping such as
    network_kwargs) against the defaults of ``cls.__init__``; unknown keys and wrong types are
    ConfigErrors naming ``label.key``."""
    from se.config import ConfigError

    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{label} must be a mapping of name: value, got {kwargs!r}")
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    for key, value in kwargs.items():
        if key not in params:
            raise ConfigError(f"{label}: unknown key '{key}' for {cls.__name__}; allowed: {', '.join(sorted(params))}")
        default = params[key].default
        if default is inspect.Parameter.empty or default is None:
            continue
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        elif isinstance(default, str):
            ok, want = isinstance(value, str), "a string"
        elif isinstance(default, (tuple, list)):
            ok, want = isinstance(value, (tuple, list)), "a list"
        else:
            ok, want = True, ""
        if not ok:
            raise ConfigError(f"{label}.{key} must be {want} (default {default!r}), got {value!r}")
    return kwargs


def _user_kwargs(name: str, conf: dict | None) -> dict:
    cls = get_entry(name).network_class()
    return check_kwargs(cls, (conf or {}).get("network_kwargs"), "network_kwargs")


def build_network(name: str, conf: dict | None = None, kernels: bool | None = None):
    """Build network ``name`` from a config dict (released architecture when empty), with
    its speed kernels unless ``kernels`` is False (None: see se.models.kernels).

    Bad ``network_kwargs`` (unknown keys, wrong types, values the constructor rejects) are
    ConfigErrors naming the key."""
    from se.config import ConfigError

    user = _user_kwargs(name, conf)
    try:
        model = get_entry(name).network_class().from_config(network_conf(conf))
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as exc:
        if not user or isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"network_kwargs {user} do not build a {name}: {exc}") from exc
    from se.models.kernels import accelerate

    return accelerate(name, model, kernels)


def network_kwargs(name: str, conf: dict | None = None) -> dict:
    """The full constructor kwargs ``build_network(name, conf)`` uses (stored in checkpoints)."""
    from se.config import ConfigError

    _user_kwargs(name, conf)
    try:
        return get_entry(name).network_class().config_kwargs(network_conf(conf))
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from exc


_DEFAULT_IF_EMPTY = ("sampling_rate", "win_type", "win_len", "win_inc", "fft_len")


def network_conf(conf: dict | None) -> dict:
    """Drops config keys left at 0 / "": they mean "the network's default"."""
    return {k: v for k, v in (conf or {}).items() if not (k in _DEFAULT_IF_EMPTY and not v)}


def network_sampling_rate(name: str) -> int:
    return get_entry(name).sampling_rate


def resolve(path: str) -> Callable:
    """'pkg.module:attr' -> attr."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
