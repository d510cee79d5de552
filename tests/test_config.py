import pytest

from se import config


def test_defaults_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("network: FRCRN_SE_16K\nbatch_size: 8\nmode: train\nuse_cuda: 1\n")  # ClearVoice keys ok
    conf = config.load(f, config.parse_overrides(["--max-steps", "3", "--init_learning_rate=2e-4",
                                                  "--sync_batchnorm", "false"]))
    assert conf["batch_size"] == 8 and conf["max_steps"] == 3
    assert conf["init_learning_rate"] == pytest.approx(2e-4) and conf["sync_batchnorm"] is False
    assert "mode" not in conf


@pytest.mark.parametrize("args, msg", [
    (["--batch_size", "four"], "batch_size must be an integer"),
    (["--no_such_key", "1"], "unknown config key 'no_such_key'"),
    (["--sync_batchnorm", "maybe"], "must be true or false"),
    (["--max_length"], "--max_length needs a value"),
    (["positional"], "expected --key value"),
])
def test_bad_overrides_rejected(args, msg):
    with pytest.raises(config.ConfigError, match=msg):
        config.load(None, config.parse_overrides(args))


def test_unknown_key_in_file_names_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("batch_sise: 4\n")
    with pytest.raises(config.ConfigError, match=r"c.yaml: unknown config key 'batch_sise'"):
        config.load(f)
    with pytest.raises(config.ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.yaml")


def test_network_kwargs_from_yaml_string():
    conf = config.load(None, {"network_kwargs": "{channels: 16}"})
    assert conf["network_kwargs"] == {"channels": 16}


def test_save_roundtrip(tmp_path):
    conf = config.load(None, {"batch_size": 2})
    config.save(conf, tmp_path / "config.yaml")
    again = config.load(tmp_path / "config.yaml")
    assert again == conf


def test_network_keys_belong_to_their_network(tmp_path, caplog):
    """num_mels is MossFormer2_SE_48K's key (its CONFIG_KEYS): typed and range-checked there,
    ignored with a warning naming the owner anywhere else; the command-line network decides."""
    conf = config.load(None, {"network": "MossFormer2_SE_48K", "num_mels": "40"})
    assert conf["num_mels"] == 40 and conf["fbank_dither"] == 1.0 and "gan_loss_mode" not in conf
    assert "num_mels" not in config.load(None) and config.load(None)["network"] == "FRCRN_SE_16K"
    gan = config.load(None, {"network": "MossFormerGAN_SE_16K"})
    assert (gan["gan_loss_mode"], gan["pesq_workers"], gan["discriminator_kwargs"]) == ("fixed", 2, {})
    assert "num_mels" not in config.load(None, {"num_mels": "forty"})
    assert "command line: ignoring num_mels='forty': a key of MossFormer2_SE_48K, not of FRCRN_SE_16K" in caplog.text
    with pytest.raises(config.ConfigError, match="num_mels must be >= 1, got 0"):
        config.load(None, {"network": "MossFormer2_SE_48K", "num_mels": 0})
    with pytest.raises(config.ConfigError, match="valid_pesq must be true or false"):
        config.load(None, {"network": "MossFormerGAN_SE_16K", "valid_pesq": "maybe"})
    with pytest.raises(config.ConfigError, match="unknown network 'Nope'; choose one of"):
        config.load(None, {"network": "Nope"})
    f = tmp_path / "c.yaml"
    f.write_text("network: MossFormerGAN_SE_16K\ngan_loss_mode: clearvoice\n")
    assert config.load(f)["gan_loss_mode"] == "clearvoice"
    assert "gan_loss_mode" not in config.load(f, {"network": "FRCRN_SE_16K"})  # not a key of FRCRN
    with pytest.raises(config.ConfigError, match="command line: unknown config key 'num_mel'. Known keys: "):
        config.load(None, {"network": "MossFormer2_SE_48K", "num_mel": 40})


@pytest.mark.parametrize("name, bad", [("FRCRN_SE_16K", "chanels"), ("MossFormer2_SE_48K", "depth"),
                                       ("MossFormerGAN_SE_16K", "channels")])
def test_one_network_kwargs_check_for_every_network(name, bad):
    """se.models.constructor_kwargs: the same one-line error for every network, and keys set
    through config keys (win_len, num_mels) are not network_kwargs."""
    from se.models import get_entry, network_kwargs

    cls = get_entry(name).network_class()
    with pytest.raises(config.ConfigError, match=rf"^network_kwargs: unknown key '{bad}' for {name}; allowed: \w+"):
        network_kwargs(name, {"network_kwargs": {bad: 1}})
    with pytest.raises(config.ConfigError, match=f"unknown key 'win_len' for {name}"):
        network_kwargs(name, {"network_kwargs": {"win_len": 512}})
    kwargs = network_kwargs(name, {"win_len": 0, "win_type": ""})  # 0 / "": the network's default
    assert kwargs == network_kwargs(name, {}) and cls(**kwargs).win_len == kwargs["win_len"] > 0
