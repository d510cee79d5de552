import pytest
import torch

from se import config

from se.precision import float32
from se.trainer import Dist, Trainer, resolve_config
from helpers import make_dir


def test_float32_regions_under_autocast():
    @float32
    def f(x):
        return x @ x.T, torch.is_autocast_enabled("cpu")

    x = torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, enabled = f(x.bfloat16())
        z = x @ x.T
    assert y.dtype == torch.float32 and not enabled
    assert z.dtype == torch.bfloat16


def test_bf16_training_step_on_cpu_keeps_spectra_fp32(tmp_path):
    make_dir(tmp_path, "train", 2, 0.5, 48000)
    conf = resolve_config(config.load(
        "egs/mini/conf/train_MossFormer2_SE_48K.yaml",
        {"precision": "bf16", "max_length": 0.5, "batch_size": 2, "num_workers": 0}))
    trainer = Trainer(conf, str(tmp_path / "data/train"), str(tmp_path / "data/train"), str(tmp_path / "exp"), Dist())
    trainer.resume_or_init()
    batch = next(iter(trainer.train_loader))
    parts = trainer.train_step.micro_step(batch["noisy"], batch["clean"], 1.0, features=batch["features"])
    upd = trainer.train_step.update()
    assert all(torch.isfinite(torch.tensor(v)) for v in (*parts.values(), *upd.values()))
    model = trainer.train_step.modules["model"]
    with trainer.train_step.autocast():
        assert model.stft(batch["noisy"]).dtype == torch.complex64


def test_fp16_needs_a_gpu(tmp_path):
    make_dir(tmp_path, "train", 1, 0.3, 16000)
    conf = resolve_config(config.load(None, {"precision": "fp16", "network_kwargs": {
        "channels": 4, "fsmn_hidden": 4, "se_reduction": 2, "lorder": 3}, "max_length": 0.3}))
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: fp16 is allowed")
    with pytest.raises(config.ConfigError, match="fp16 needs a GPU"):
        Trainer(conf, str(tmp_path / "data/train"), str(tmp_path / "data/train"), str(tmp_path / "exp"), Dist())


def test_bad_precision_rejected():
    with pytest.raises(config.ConfigError, match="precision must be fp32, bf16 or fp16"):
        resolve_config(config.load(None, {"precision": "fp8"}))

