"""The base class of every network: the attributes the tools read, declared in one place.

Every network class subclasses :class:`Network` (the contract is in se/models/__init__.py;
se/models/example.py is a small complete network). The tools read these attributes plainly
(``model.causal``), never by probing whether a network happens to have them, and the registry
checks them when it hands out a network class (:func:`missing_contract`).
"""

from __future__ import annotations

from torch import nn

from se.models import ConfigKey, build_from_config, constructor_kwargs

# what a network class must have; the registry's check and tests/test_network_contract.py read it
CONTRACT = ("sampling_rate", "CONFIG_KEYS", "causal", "inference_dither", "config_kwargs", "from_config",
            "loss", "enhance", "convert_clearvoice_state_dict")


class Network(nn.Module):
    """Base class of the networks (adds no parameters: the state-dict keys are the subclass's).

    Declared by every subclass (class attributes):
        sampling_rate: the rate the network works at.
        CONFIG_KEYS: the network's own configuration keys ({} when it has none).

    Declared here, with the value most networks have; a subclass overrides them (as a class
    attribute, or per instance in ``__init__`` when a constructor argument decides):
        causal: True when output sample t depends on input samples up to t only; the tools
            then run it hop by hop (se.stream) and batch pieces of any length. [False]
        inference_dither: the fbank dither its ``enhance`` uses, for a network with an fbank
            front end (se.bin.enhance --fbank-dither sets it); None: no fbank front end, the
            option does not apply. [None]
    """

    sampling_rate: int
    CONFIG_KEYS: dict[str, ConfigKey]
    causal: bool = False
    inference_dither: float | None = None

    @classmethod
    def config_kwargs(cls, conf: dict) -> dict:
        """Constructor kwargs of a resolved config (se.models.constructor_kwargs)."""
        return constructor_kwargs(cls, conf)

    @classmethod
    def from_config(cls, conf: dict) -> "Network":
        """Network of a resolved config (se.models.build_from_config)."""
        return build_from_config(cls, conf)


def missing_contract(cls) -> list[str]:
    """What network class ``cls`` lacks of the contract ([] when nothing): not a
    :class:`Network` subclass, or the names in :data:`CONTRACT` it does not have."""
    missing = [] if isinstance(cls, type) and issubclass(cls, Network) else ["subclass of se.models.network.Network"]
    return missing + [name for name in CONTRACT if not hasattr(cls, name)]
