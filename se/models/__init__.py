"""Network registry: one place that maps a network name to its builder.

The released networks are the :class:`NetworkEntry` rows of ``_REGISTRY`` below; another
network is added with :func:`register`. A network class subclasses
:class:`se.models.network.Network` and implements this contract (se/models/example.py is a
small complete example; se/models/frcrn.py the reference implementation); the registry checks
it when it hands out the class (:meth:`NetworkEntry.network_class`). Required:

* ``sampling_rate`` (class attribute): the rate the network works at.
* ``CONFIG_KEYS`` (class attribute): the network's own configuration keys, name ->
  :class:`ConfigKey` (``{}`` when it has none). They join the global keys of se/config.py in
  a config that names this network, and only there.
* ``causal`` (bool) and ``inference_dither`` (float, or None without an fbank front end):
  declared by ``Network`` as False and None; a network that differs overrides them (FRCRN
  sets ``causal`` from its constructor, MossFormer2 has an fbank dither). The tools read
  them plainly: a causal network is streamed hop by hop (se.stream), and
  ``se.bin.enhance --fbank-dither`` sets ``inference_dither`` when it is not None.
* ``from_config(conf) -> nn.Module`` and ``config_kwargs(conf) -> dict`` (classmethods):
  inherited from ``Network`` (``build_from_config(cls, conf)`` and
  ``constructor_kwargs(cls, conf)``); the kwargs are stored in checkpoints (self-describing),
  see :func:`constructor_kwargs`.
* ``loss(noisy, clean) -> (loss, parts)``: training loss for a (B, L) batch in which
  noisy and clean carry the SAME gain; ``parts`` maps names to float tensors for logging.
* ``enhance(noisy) -> Tensor``: aligned, deterministic enhancement of a normalised (B, L)
  float batch; returns (B, L).
* ``convert_clearvoice_state_dict(sd) -> sd`` (staticmethod): maps a release-format state
  dict (``module.`` prefix already stripped) to this module's keys; fine-tuning
  (``init_checkpoint_path``) calls it. A network without a ClearVoice release returns ``sd``.

Optional (each named in the registry entry or used only by the tool that needs it):

* ``clearvoice_decode(raw: np.ndarray) -> np.ndarray``: the reference decode path
  (audio_norm, padding, one-pass/segmented decoding, de-normalisation) on raw float64
  samples at the network's rate; only ``se.bin.enhance --clearvoice-compat`` calls it.
* a training-step class (``NetworkEntry.train_step``) when one model, one loss and one
  optimiser are not enough (se/train_step.py), a data-pipeline feature function
  (``NetworkEntry.data_features``) and speed kernels (``NetworkEntry.kernels``).
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
    # 'pkg.module:Class.method' returning the data-pipeline feature function computed in the
    # loader workers (fn(conf) -> picklable fn(noisy_segment, rng)); "" = none
    data_features: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def network_class(self):
        """The network class, checked against the contract (TypeError naming what it lacks)."""
        from se.models.network import missing_contract

        cls = getattr(importlib.import_module(self.module), self.cls_name)
        missing = missing_contract(cls)
        if missing:
            raise TypeError(f"network {self.name} ({self.module}.{self.cls_name}) does not implement the network "
                            f"contract of se/models/__init__.py; it lacks: {', '.join(missing)}")
        return cls


_REGISTRY: dict[str, NetworkEntry] = {
    "FRCRN_SE_16K": NetworkEntry(
        "FRCRN_SE_16K", "se.models.frcrn", "FRCRN", 16000, kernels="se.models.kernels.frcrn:accelerate"
    ),
    "MossFormer2_SE_48K": NetworkEntry(
        "MossFormer2_SE_48K", "se.models.mossformer2", "MossFormer2SE", 48000,
        kernels="se.models.kernels.mossformer2:accelerate",
        data_features="se.models.mossformer2:MossFormer2SE.data_features",
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


def register(entry: NetworkEntry) -> None:
    """Adds (or replaces) a network in the registry, e.g. a network of your own."""
    _REGISTRY[entry.name] = entry


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


# ------------------------------------------------------------------------------------------
# configuration: global signal keys, the network's own keys, network_kwargs
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigKey:
    """One configuration key of a network (``CONFIG_KEYS = {"num_mels": ConfigKey(60, ...)}``).

    default: its value when the config does not set it; its type is the key's type.
    help: one line, shown with the other keys.
    kwarg: True: the network's constructor keyword of the same name; False: read elsewhere
        (the network's training step reads ``conf[key]``).
    minimum, maximum: allowed range of a numeric key (None: unbounded).
    """

    default: Any
    help: str
    kwarg: bool = True
    minimum: float | None = None
    maximum: float | None = None


# global keys every network reads when its constructor takes them; 0 / "" = the network's default
SIGNAL_KEYS = ("sampling_rate", "win_type", "win_len", "win_inc", "fft_len")
# inference-YAML keys of the ClearVoice decode path, set on the built network when given
DECODE_KEYS = ("decode_window", "one_time_decode_length")


def check_kwargs(cls, kwargs, label: str, owner: str = "", allowed: list[str] | None = None) -> dict:
    """Type-checks user-given constructor kwargs (a nested config mapping such as
    network_kwargs) against the defaults of ``cls.__init__``; keys outside ``allowed`` (default:
    every constructor keyword) and wrong types are ConfigErrors naming ``label.key`` and
    ``owner`` (default: the class name)."""
    from se.config import ConfigError

    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{label} must be a mapping of name: value, got {kwargs!r}")
    params = _constructor_params(cls)
    allowed = sorted(params) if allowed is None else allowed
    for key, value in kwargs.items():
        if key not in allowed:
            raise ConfigError(f"{label}: unknown key '{key}' for {owner or cls.__name__}; allowed: {', '.join(allowed)}")
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


def _constructor_params(cls) -> dict[str, inspect.Parameter]:
    return {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}


def _registered_name(cls) -> str:
    """The registry name of network class ``cls`` (its class name when not registered)."""
    for entry in _REGISTRY.values():
        if (entry.module, entry.cls_name) == (cls.__module__, cls.__name__):
            return entry.name
    return cls.__name__


def constructor_kwargs(cls, conf: dict | None) -> dict:
    """The constructor kwargs of network class ``cls`` for a resolved config, the same way for
    every network: the constructor's defaults, then the global signal keys it takes (0 / ""
    keep the default), then its own ``CONFIG_KEYS`` with ``kwarg`` True, then
    ``network_kwargs`` (size keys). ``network_kwargs`` may not name a key that is set through
    a config key, nor anything the constructor does not take (ConfigError naming the key, the
    network and the allowed keys)."""
    conf = conf or {}
    params = _constructor_params(cls)
    kwargs = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    from_keys = [k for k in SIGNAL_KEYS if k in params]
    from_keys += [k for k, key in cls.CONFIG_KEYS.items() if key.kwarg and k in params]
    for k in from_keys:
        if k in conf and (conf[k] or k not in SIGNAL_KEYS):
            kwargs[k] = conf[k]
    allowed = [k for k in params if k not in from_keys and k not in DECODE_KEYS]
    kwargs.update(check_kwargs(cls, conf.get("network_kwargs"), "network_kwargs", _registered_name(cls), allowed))
    return kwargs


def build_from_config(cls, conf: dict | None):
    """``cls(**constructor_kwargs(cls, conf))``, then the inference-YAML decode keys
    (``decode_window``, ``one_time_decode_length``, seconds) when the config gives them."""
    model = cls(**constructor_kwargs(cls, conf))
    for key in DECODE_KEYS:
        if (conf or {}).get(key):
            setattr(model, key, float(conf[key]))
    return model


def network_config_keys(name: str) -> dict[str, ConfigKey]:
    """Network ``name``'s own configuration keys (its ``CONFIG_KEYS``)."""
    return get_entry(name).network_class().CONFIG_KEYS


def build_network(name: str, conf: dict | None = None, kernels: bool | None = None):
    """Build network ``name`` from a config dict (released architecture when empty), with
    its speed kernels unless ``kernels`` is False (None: see se.models.kernels).

    Bad ``network_kwargs`` (unknown keys, wrong types, values the constructor rejects) are
    ConfigErrors naming the key."""
    from se.config import ConfigError

    user = (conf or {}).get("network_kwargs")
    try:
        model = get_entry(name).network_class().from_config(conf or {})
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as exc:
        if not user or isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"network_kwargs {user} do not build a {name}: {exc}") from exc
    from se.models.kernels import accelerate

    return accelerate(name, model, kernels)


def network_kwargs(name: str, conf: dict | None = None) -> dict:
    """The full constructor kwargs ``build_network(name, conf)`` uses (stored in checkpoints)."""
    return get_entry(name).network_class().config_kwargs(conf or {})


def same_network_kwargs(name: str, a: dict, b: dict) -> bool:
    """Whether two stored ``network_kwargs`` build the same network (missing keys: defaults;
    checkpoints of older versions stored only some keys)."""
    params = _constructor_params(get_entry(name).network_class())
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **a} == {**defaults, **b}


def network_conf(conf: dict | None) -> dict:
    """Drops the signal keys left at 0 / "": they mean "the network's default"."""
    return {k: v for k, v in (conf or {}).items() if not (k in SIGNAL_KEYS and not v)}


def network_sampling_rate(name: str) -> int:
    return get_entry(name).sampling_rate


def resolve(path: str) -> Callable:
    """'pkg.module:attr' or 'pkg.module:Class.attr' -> attr."""
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj
