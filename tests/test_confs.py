"""Every recipe training config (egs/*/conf/train_*.yaml) is dry-run built.

Nothing is trained: the config is loaded with the type-checked schema, resolved like the trainer
does (sampling rate, batch arithmetic), and its network is built on the meta device (no weights
are allocated, so even the 55M-parameter MossFormer2_SE_48K takes about a second).
"""

from pathlib import Path

import pytest
import torch

from se import config
from se.simulation import parse_config as parse_simulation
from se.models import build_network, network_kwargs, network_sampling_rate
from se.trainer import accumulation_steps, resolve_config

REPO = Path(__file__).resolve().parents[1]
CONFS = sorted(REPO.glob("egs/*/conf/train_*.yaml"))


def model_is_causal(name, conf) -> bool:
    with torch.device("meta"):
        return bool(getattr(build_network(name, conf), "causal", False))


def test_recipes_have_configs():
    recipes = {p.parent.parent.name for p in CONFS}
    assert {"mini", "voicebank_demand"} <= recipes, recipes


@pytest.mark.parametrize("path", CONFS, ids=[str(p.relative_to(REPO / "egs")) for p in CONFS])
def test_config_builds(path):
    conf = resolve_config(config.load(path))  # unknown keys and bad types are errors
    name = conf["network"]
    # recipes pick conf/train_<network>.yaml (train_sim_<network>.yaml: simulated data) by --network;
    # variants (--conf) are train_<network>_<what>.yaml
    assert path.stem in (f"train_{name}", f"train_sim_{name}") or path.stem.startswith(f"train_{name}_")
    if conf["simulation"] or path.stem.startswith("train_sim_"):
        parse_simulation(conf["simulation"], str(path))  # keys and values checked, data dirs not opened
    if path.stem.endswith("_causal"):
        assert model_is_causal(name, conf), f"{path}: a _causal config without network_kwargs causal: true"
    assert conf["sampling_rate"] == network_sampling_rate(name)

    kwargs = network_kwargs(name, conf)
    assert kwargs, f"{path}: no network kwargs resolved"
    with torch.device("meta"):
        model = build_network(name, conf)
    assert sum(p.numel() for p in model.parameters()) > 0

    # batch arithmetic on one process: effec_batch_size = batch_size x accumulation steps
    accum = accumulation_steps(conf, 1)
    if conf["accu_grad"]:
        assert conf["batch_size"] * accum == conf["effec_batch_size"], (
            f"{path}: effec_batch_size {conf['effec_batch_size']} is not batch_size x accumulation"
        )
    else:
        assert accum == 1
    segment = conf["max_length"] * conf["sampling_rate"]
    assert segment >= 1 and float(segment).is_integer(), f"{path}: max_length gives {segment} samples"
    assert conf["clip_grad_norm"] >= 0 and conf["init_learning_rate"] > 0 and conf["max_epoch"] >= 1


def test_config_with_wrong_rate_is_rejected(tmp_path):
    f = tmp_path / "train_FRCRN_SE_16K.yaml"
    f.write_text("network: FRCRN_SE_16K\nsampling_rate: 48000\n")
    with pytest.raises(config.ConfigError, match="does not match FRCRN_SE_16K"):
        resolve_config(config.load(f))


def test_config_with_bad_accumulation_is_rejected(tmp_path):
    f = tmp_path / "train_FRCRN_SE_16K.yaml"
    f.write_text("network: FRCRN_SE_16K\nbatch_size: 4\naccu_grad: 1\neffec_batch_size: 10\n")
    with pytest.raises(config.ConfigError, match="not a multiple of batch_size"):
        accumulation_steps(resolve_config(config.load(f)), 1)
