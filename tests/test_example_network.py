"""se/models/example.py, the example of the registry contract: registered on demand, trained
two updates through the real trainer, its checkpoint loaded back by se.checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from se import checkpoint as ckpt
from se import config
from se.models import network_names
from se.models.example import NAME, MaskNet, register
from se.trainer import Dist, Trainer, resolve_config
from helpers import make_dir


@pytest.fixture(scope="module")
def registered():
    assert NAME not in network_names(), "the example network must not be in the default registry"
    register()
    return NAME


def test_example_network_trains_and_its_checkpoint_loads_back(registered, tmp_path):
    make_dir(tmp_path, "train", 4, 0.5, 16000, seed=1)
    make_dir(tmp_path, "valid", 2, 0.5, 16000, seed=9)
    conf = resolve_config(config.load(None, {
        "network": registered, "network_kwargs": {"channels": 8, "layers": 2}, "max_steps": 2, "max_epoch": 1,
        "batch_size": 2, "num_workers": 0, "max_length": 0.3, "print_freq": 1, "valid_utterances_to_log": 0}))
    assert conf["sampling_rate"] == 16000  # the network's rate, from the registry
    exp = tmp_path / "exp"
    trainer = Trainer(conf, str(tmp_path / "data" / "train"), str(tmp_path / "data" / "valid"), str(exp), Dist())
    trainer.resume_or_init()
    before = {k: v.clone() for k, v in trainer.train_step.network.state_dict().items()}
    trainer.fit()

    p = trainer.progress
    assert p.global_step == 2 and p.skipped_steps == 0 and math.isfinite(p.best_valid_loss)
    trained = trainer.train_step.network.eval()
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())  # it learned

    state = torch.load(ckpt.read_pointer(exp, "last_checkpoint"), weights_only=False)
    assert state["network"] == registered and state["network_kwargs"]["channels"] == 8
    assert state["network_kwargs"]["win_len"] == 512  # every constructor keyword is stored
    model, info = ckpt.load_network(exp)
    assert isinstance(model, MaskNet) and info["format"] == "ours"
    x = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.enhance(x), trained.enhance(x))


def test_example_network_config_errors(registered):
    with pytest.raises(config.ConfigError, match=f"network_kwargs: unknown key 'chanels' for {NAME}; allowed: "
                                                 "channels, layers, kernel"):
        MaskNet.from_config({"network_kwargs": {"chanels": 8}})
    with pytest.raises(ValueError, match="win_type must be one of"):
        MaskNet.from_config({"win_type": "kaiser"})
    with pytest.raises(ValueError, match=r"MaskNet expects \(B, L\), got shape \(16000,\)"):
        MaskNet()(torch.zeros(16000))
    model = MaskNet.from_config({"win_len": 0, "win_type": ""})  # 0 / "": the network's defaults
    assert model.win_len == 512 and model.enhance(torch.zeros(1, 1000)).shape == (1, 1000)
