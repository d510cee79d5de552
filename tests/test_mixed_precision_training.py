"""Every network trains under --precision bf16 (CPU autocast) for two epochs on a subset of the
mini corpus, validating and logging examples in both epochs, and its checkpoint enhances the
mini test set through se.bin.enhance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
# tiny sizes: on CPUs without native bf16, autocast bf16 runs several times slower than fp32
TINY = {
    "FRCRN_SE_16K": "{channels: 4, fsmn_hidden: 4, se_reduction: 2, lorder: 3}",
    "MossFormerGAN_SE_16K": "{num_channel: 4, num_blocks: 1, approx_qk_dim: 16}",
    "MossFormer2_SE_48K": "{num_blocks: 1, width: 32, query_key_dim: 16, fsmn_inner: 16, fsmn_lorder: 3}",
}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """The first 2 utterances of each set of the mini corpus, as data dirs, at 16 and 48 kHz."""
    from se.bin import make_data_dir

    root = tmp_path_factory.mktemp("mini")
    for fs in (16000, 48000):
        corpus = root / f"corpus{fs}"
        subprocess.run([sys.executable, str(REPO / "local/make_mini_corpus.py"), "--out-dir", str(corpus),
                        "--fs", str(fs), "--max-per-set", "2"], check=True, capture_output=True)
        for s in ("train", "valid", "test"):
            assert make_data_dir.main(["--noisy-dir", str(corpus / s / "noisy"), "--clean-dir",
                                       str(corpus / s / "clean"), "--out", str(root / f"data{fs}" / s),
                                       "--fs", str(fs)]) == 0
    return root


def scalar_steps(exp: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(exp / "tensorboard"), size_guidance={"audio": 0, "scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    out = {t: [e.step for e in acc.Scalars(t)] for t in tags["scalars"]}
    out.update({t: [e.step for e in acc.Audio(t)] for t in tags["audio"]})
    return out


@pytest.mark.parametrize("network", sorted(TINY))
def test_bf16_two_epochs_with_validation_examples_then_enhance(mini, tmp_path, network, capsys):
    from se.bin import enhance, train
    from se.checkpoint import read_pointer, torch_load
    from se.models import network_sampling_rate

    fs = network_sampling_rate(network)
    data, exp = mini / f"data{fs}", tmp_path / "exp"
    rc = train.main(["--config", str(REPO / f"egs/mini/conf/train_{network}.yaml"), "--train-data",
                     str(data / "train"), "--valid-data", str(data / "valid"), "--exp-dir", str(exp),
                     "--precision", "bf16", "--network_kwargs", TINY[network], "--max_epoch", "2",
                     "--max_length", "0.5", "--batch_size", "1", "--num_workers", "0", "--pesq_workers", "0",
                     "--valid_utterances_to_log", "1", "--print_freq", "1", "--max_bad_steps", "1"])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    state = torch_load(read_pointer(exp))
    assert state["config"]["precision"] == "bf16" and state["step"] == 4 and state["trainer"]["epoch"] == 2
    assert state["trainer"]["skipped_steps"] == 0 and np.isfinite(state["trainer"]["best_valid_loss"])
    # validation and example logging after each epoch (updates 2 and 4)
    steps = scalar_steps(exp)
    assert steps["valid/loss"] == [2, 4] and steps["valid/examples_si_sdr"] == [2, 4]
    assert steps["valid_audio/mini_valid_000/enhanced"] == [2, 4]
    assert err.count("validation examples: examples_si_sdr=") == 2
    # the checkpoint enhances the mini test set
    out = tmp_path / "enhanced"
    assert enhance.main(["--checkpoint", str(exp), "--input", str(data / "test" / "wav.scp"),
                         "--output-dir", str(out)]) == 0
    for name in ("mini_test_000", "mini_test_001"):
        x, rate = sf.read(out / f"{name}.wav")
        ref = sf.info(str(mini / f"corpus{fs}" / "test" / "noisy" / f"{name}.wav"))
        assert rate == fs and len(x) == ref.frames and np.isfinite(x).all() and np.abs(x).max() > 0


# fp16: CPU autocast supports it; MossFormerGAN_SE_16K is left out here (CPU fp16 convolutions
# took ~50 s for one step of the tiny generator); tests/gpu/acceptance.py covers all on a GPU
@pytest.mark.parametrize("network,kwargs", [
    ("FRCRN_SE_16K", {"channels": 4, "fsmn_hidden": 4, "se_reduction": 2, "lorder": 3}),
    ("MossFormer2_SE_48K", {"num_blocks": 1, "width": 32, "query_key_dim": 16, "fsmn_inner": 16,
                            "fsmn_lorder": 3}),
])
def test_fp16_updates_with_the_grad_scaler_under_cpu_autocast(network, kwargs):
    import functools

    import torch

    from se import config
    from se.trainer import Dist, build_train_step, data_features, resolve_config
    from helpers import tone_pair

    conf = resolve_config(config.load(None, {"network": network, "network_kwargs": kwargs, "fbank_dither": 0.0}))
    step = build_train_step(conf, Dist())
    step.build_optimizers()
    step.autocast = functools.partial(torch.autocast, device_type="cpu", dtype=torch.float16)
    step.grad_scaler = torch.amp.GradScaler("cpu")  # what the trainer sets up for fp16 (on CUDA)
    noisy, clean = (torch.from_numpy(x).float()[None] for x in tone_pair(0.3, conf["sampling_rate"], seed=1))
    features = data_features(conf)
    extra = {} if features is None else {"features": features(noisy[0].numpy(), np.random.default_rng(0))[None]}
    before = [p.detach().clone() for p in step.modules["model"].parameters()]
    outcomes = []
    for _ in range(20):  # early overflow skips lower the scale until an update goes through
        parts = step.micro_step(noisy, clean, 1.0, **extra)
        assert all(np.isfinite(v) for v in parts.values())
        upd = step.update(loss_finite=True)
        assert upd["nonfinite"] == 0
        outcomes.append(upd["scaler_overflow"])
        if not upd["scaler_overflow"]:
            break
    assert outcomes[-1] == 0 and step.grad_scaler.get_scale() == 65536.0 / 2 ** (len(outcomes) - 1)
    after = list(step.modules["model"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # the update was applied
    for m in step.modules.values():
        m.eval()
    assert np.isfinite(step.valid_step(noisy, clean, **extra)["loss"])
