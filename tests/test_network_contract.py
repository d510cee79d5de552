"""The network contract (se/models/__init__.py, se/models/network.py): every registered network
declares what the tools read plainly (``causal``, ``inference_dither``, ...), and the registry
refuses a class that does not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import se.models
from se.models import NetworkEntry, get_entry, network_names, register
from se.models.example import register as register_example
from se.models.network import CONTRACT, Network, missing_contract
from helpers import TINY_FRCRN


@pytest.fixture
def registry(monkeypatch):
    """The registry with the example network added, restored after the test."""
    monkeypatch.setattr(se.models, "_REGISTRY", dict(se.models._REGISTRY))
    register_example()
    return se.models._REGISTRY


def test_every_registered_network_declares_the_contract(registry):
    assert set(network_names()) == {"FRCRN_SE_16K", "MossFormer2_SE_48K", "MossFormerGAN_SE_16K",
                                    "Example_Mask_SE_16K"}
    dithers = {}
    for name in network_names():
        cls = get_entry(name).network_class()
        assert issubclass(cls, Network) and missing_contract(cls) == [], name
        assert cls.sampling_rate == get_entry(name).sampling_rate
        with torch.device("meta"):  # the released sizes, no memory: the attributes an instance has
            model = cls()
        assert model.causal is False, name  # every release is non-causal
        dithers[name] = model.inference_dither
    # only MossFormer2 has an fbank front end (deterministic by default)
    assert dithers == {"FRCRN_SE_16K": None, "MossFormer2_SE_48K": 0.0, "MossFormerGAN_SE_16K": None,
                       "Example_Mask_SE_16K": None}


def test_causal_is_a_constructor_choice_of_frcrn():
    from se.models.frcrn import FRCRN

    with torch.device("meta"):
        assert FRCRN(causal=True).causal is True
        assert FRCRN(causal=0).causal is False  # a bool, whatever the config gave


class _PlainModule(nn.Module):  # has loss/enhance, but is no Network
    sampling_rate = 16000
    CONFIG_KEYS: dict = {}

    def loss(self, noisy, clean):
        return noisy.sum(), {}

    def enhance(self, noisy):
        return noisy


class _NoRate(Network):  # a Network that forgot its rate and conversion
    CONFIG_KEYS: dict = {}

    def loss(self, noisy, clean):
        return noisy.sum(), {}

    def enhance(self, noisy):
        return noisy


@pytest.mark.parametrize("cls_name, lacks", [
    ("_PlainModule", ["subclass of se.models.network.Network", "causal", "inference_dither", "config_kwargs",
                      "from_config", "convert_clearvoice_state_dict"]),
    ("_NoRate", ["sampling_rate", "convert_clearvoice_state_dict"]),
])
def test_the_registry_refuses_a_network_without_the_contract(registry, cls_name, lacks):
    assert missing_contract(globals()[cls_name]) == lacks
    register(NetworkEntry("Broken_SE_16K", __name__, cls_name, 16000))
    with pytest.raises(TypeError, match=f"network Broken_SE_16K .*{cls_name}.* lacks: {', '.join(lacks)}$"):
        get_entry("Broken_SE_16K").network_class()


def test_contract_names_what_the_tools_read():
    assert {"causal", "inference_dither", "sampling_rate"} <= set(CONTRACT)
    assert Network.causal is False and Network.inference_dither is None
    assert list(Network().state_dict()) == []  # the base class adds no parameters


def test_tools_read_causal_plainly():
    """A causal network is refused by the exporter and streamed by se.enhance; the released one
    is exportable and refused by the streamer."""
    from se.export import unsupported_reason
    from se.models.frcrn import FRCRN
    from se.stream import StreamingEnhancer

    assert "causal (streaming) FRCRN" in unsupported_reason(FRCRN(**TINY_FRCRN, causal=True))
    assert unsupported_reason(FRCRN(**TINY_FRCRN)) is None
    with pytest.raises(ValueError, match="streaming needs a causal FRCRN"):
        StreamingEnhancer(FRCRN(**TINY_FRCRN).eval())
