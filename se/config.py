"""Training configuration: ClearVoice-compatible YAML keys, defaults, type-checked overrides.

A config is a flat dict. Keys keep ClearVoice's train-YAML names where they exist, so a
ClearVoice config file works as ``--config``; keys that ClearVoice files carry but that have
no meaning here are accepted and reported (CLEARVOICE_IGNORED). Any other unknown key is an
error, in the file and on the command line alike.

SCHEMA holds the keys of every training run. A network's own keys (MossFormer2's fbank, the
GAN's discriminator) are declared by the network (its ``CONFIG_KEYS``, se/models/__init__.py)
and belong to a config only when it names that network; in a config of another network they
are ignored with a warning.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import yaml

from se.cli import UserError

log = logging.getLogger(__name__)

# key: (default, help). The default's type is the key's type (None: string or null).
SCHEMA: dict[str, tuple[object, str]] = {
    # network and signal
    "network": ("FRCRN_SE_16K", "network name (se.models registry)"),
    "network_kwargs": ({}, "size hyperparameters of the network (defaults: the release)"),
    "sampling_rate": (0, "sampling rate of the data; 0 = the network's rate"),
    "win_type": ("", "STFT window ('' = the network's default)"),
    "win_len": (0, "STFT window length in samples (0 = network default)"),
    "win_inc": (0, "STFT hop in samples (0 = network default)"),
    "fft_len": (0, "FFT size (0 = network default)"),
    # data
    "tr_list": ("", "ClearVoice 2-column training list, used when --train-data is not given"),
    "cv_list": ("", "ClearVoice 2-column validation list, used when --valid-data is not given"),
    "max_length": (1.0, "training segment length in seconds"),
    "batch_size": (4, "utterances per batch, per GPU/process"),
    "accu_grad": (0, "1: accumulate gradients up to effec_batch_size"),
    "effec_batch_size": (4, "batch per update over all processes and accumulation steps"),
    "num_workers": (2, "data loader worker processes"),
    "seed": (777, "seed of weights, data order and crops"),
    "simulation": ({}, "on-the-fly degradation simulation (se/simulation.py); empty = paired data dirs"),
    # optimisation
    "optimizer": ("adam", "adam or adamw"),
    "init_learning_rate": (1e-3, "learning rate when training from scratch"),
    "finetune_learning_rate": (1e-4, "learning rate when init_checkpoint_path is set"),
    "weight_decay": (1e-5, "weight decay (biases excluded)"),
    "clip_grad_norm": (10.0, "gradient-norm clipping, once per update (0 = off)"),
    "max_epoch": (100, "number of epochs"),
    "max_steps": (0, "stop after this many updates (0 = no limit)"),
    "lr_halve_patience": (5, "halve the LR after this many epochs without a better valid loss"),
    "early_stop_patience": (10, "stop after this many epochs without a better valid loss"),
    "precision": ("fp32", "fp32, bf16 or fp16"),
    "sync_batchnorm": (True, "convert BatchNorm to SyncBatchNorm under multi-GPU DDP"),
    "max_bad_steps": (20, "stop after this many non-finite losses/gradients in a row"),
    "max_bad_files": (0, "skip up to this many unreadable training files, then stop with their list "
                         "(0: stop at the first)"),
    "deterministic": (False, "deterministic kernels (cuDNN, cuBLAS) for exact GPU resume; slower"),
    # checkpoints
    "init_checkpoint_path": ("", "fine-tune from this checkpoint (ours or a ClearVoice release file)"),
    "min_init_loaded_fraction": (0.9, "refuse an init checkpoint that loads fewer parameters"),
    "train_from_last_checkpoint": (1, "1: resume from exp_dir/last_checkpoint when it exists"),
    "checkpoint_save_freq": (0, "also save every N updates (0 = at epoch ends only)"),
    "keep_checkpoints": (3, "keep this many recent checkpoints besides the best ones"),
    "keep_best": (3, "keep this many best checkpoints (by validation loss)"),
    "print_freq": (10, "log every N updates"),
    "valid_utterances_to_log": (3, "fixed validation utterances scored and logged to tensorboard"),
}

# Allowed ranges of numeric keys: key -> (minimum, maximum or None, what to say).
RANGES: dict[str, tuple[float, float | None]] = {
    "sampling_rate": (0, None), "win_len": (0, None), "win_inc": (0, None), "fft_len": (0, None),
    "max_length": (1e-3, None), "batch_size": (1, None),
    "accu_grad": (0, 1), "effec_batch_size": (1, None), "num_workers": (0, None), "seed": (0, None),
    "init_learning_rate": (0, None), "finetune_learning_rate": (0, None),
    "weight_decay": (0, None), "clip_grad_norm": (0, None), "max_epoch": (0, None), "max_steps": (0, None),
    "lr_halve_patience": (0, None), "early_stop_patience": (0, None),
    "max_bad_steps": (1, None), "min_init_loaded_fraction": (0, 1), "train_from_last_checkpoint": (0, 1),
    "checkpoint_save_freq": (0, None), "keep_checkpoints": (0, None), "keep_best": (0, None),
    "print_freq": (1, None), "valid_utterances_to_log": (0, None),
}

# Keys that ClearVoice train YAMLs carry and that have no meaning here.
CLEARVOICE_IGNORED = {
    "mode", "use_cuda", "num_gpu", "checkpoint_dir", "load_fbank", "tt_list", "local_rank",
    "config", "loss_threshold", "one_time_decode_length", "decode_window", "input_path",
    "output_dir", "num_spks", "world_size", "distributed", "buffer_size", "load_type",
}


class ConfigError(UserError, ValueError):
    pass


def schema(network: str) -> tuple[dict[str, tuple[object, str]], dict[str, tuple[float, float | None]]]:
    """(keys, ranges) of a config naming ``network``: SCHEMA and RANGES plus the network's own
    keys. An unknown network is a ConfigError listing the known ones."""
    from se.models import network_config_keys

    own = network_config_keys(network)
    keys = {**SCHEMA, **{k: (key.default, key.help) for k, key in own.items()}}
    ranges = {**RANGES, **{k: (key.minimum, key.maximum) for k, key in own.items() if key.minimum is not None}}
    return keys, ranges


def defaults(network: str = SCHEMA["network"][0]) -> dict:
    """Every key of a config naming ``network`` at its default."""
    conf = {k: copy.deepcopy(v[0]) for k, v in schema(network)[0].items()}
    conf["network"] = network
    return conf


def _owners(key: str) -> list[str]:
    """The networks that declare ``key`` (for the message about a key of another network)."""
    from se.models import network_config_keys, network_names

    return [name for name in network_names() if key in network_config_keys(name)]


def _coerce(key: str, value, where: str, default):
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value, 0)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
        return number
    if isinstance(default, dict):
        if isinstance(value, str):
            value = yaml.safe_load(value) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        return value
    if value is None:
        return ""
    return str(value)


def update(conf: dict, values: dict, where: str) -> dict:
    """Merge ``values`` into ``conf`` with type checks; unknown keys are errors (the keys are
    those of ``conf["network"]``, see :func:`schema`)."""
    network = conf["network"]
    keys, ranges = schema(network)
    for key, value in values.items():
        if key in CLEARVOICE_IGNORED:
            log.info("%s: ignoring ClearVoice key %s=%r (no meaning here)", where, key, value)
            continue
        if key == "network" and value != network:  # load() picks the network before the other keys
            raise ConfigError(f"{where}: network {value!r} given after the config was set up for {network}")
        if key not in keys:
            owners = _owners(key)
            if owners:  # e.g. a shared command line that sets the GAN's pesq_workers for every network
                log.warning("%s: ignoring %s=%r: a key of %s, not of %s", where, key, value, ", ".join(owners),
                            network)
                continue
            raise ConfigError(f"{where}: unknown config key '{key}'. Known keys: {', '.join(sorted(keys))}")
        conf[key] = _coerce(key, value, where, keys[key][0])
        if key in ranges:
            low, high = ranges[key]
            if conf[key] < low or (high is not None and conf[key] > high):
                span = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
                raise ConfigError(f"{where}: {key} must be {span}, got {value!r}")
    return conf


def read_yaml_mapping(path: str | Path, error: type[UserError] = ConfigError) -> dict:
    """The mapping a YAML file holds ({} for an empty file); a missing file, bad YAML (with
    its line and column) or anything but a mapping is an ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{path}{at}: not valid YAML ({what})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping of key: value lines")
    return data


def load(path: str | Path | None, overrides: dict | None = None) -> dict:
    """Defaults <- YAML file <- overrides (e.g. from ``--key value`` on the command line).

    The network (the override's, else the file's, else the default) decides which keys exist."""
    data = read_yaml_mapping(path) if path else {}
    network = (overrides or {}).get("network") or data.get("network") or SCHEMA["network"][0]
    conf = defaults(str(network))
    if data:
        update(conf, {k: v for k, v in data.items() if k != "network"}, str(path))
    if overrides:
        update(conf, overrides, "command line")
    return conf


def parse_overrides(args: list[str]) -> dict:
    """['--batch-size', '8', '--max_steps=3'] -> {'batch_size': '8', 'max_steps': '3'}."""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: expected --key value, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"command line: --{key} needs a value")
            value = args[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


def save(conf: dict, path: str | Path) -> None:
    from se.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(conf, sort_keys=True))
