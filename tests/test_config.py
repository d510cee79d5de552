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
