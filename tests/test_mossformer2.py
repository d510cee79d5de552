"""MossFormer2_SE_48K: release layout, parity with the ClearVoice references, decode paths, training.

Parity references: tests/data/clearvoice/MossFormer2_SE_48K.parity.npz (tests/data/README.md). The
released-size model is built once per module; everything else uses a tiny variant.
"""

import copy
import hashlib
import json
import math
import warnings

import numpy as np
import pytest
import torch

from se import torchaudio_ops
from se.audio import audio_norm
from se.models import build_network, get_entry
from se.models.kernels import accelerate
from se.models.mossformer2 import MossFormer2SE
from release_checkpoints import load_manifest, release_state_dict, write_release_checkpoint

NAME = "MossFormer2_SE_48K"
TINY = dict(num_blocks=2, width=64, query_key_dim=32, fsmn_inner=32)


def tol(ref: np.ndarray, rel: float) -> float:
    return rel * max(1.0, float(np.abs(ref).max()))


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.fixture(scope="module")
def manifest(clearvoice_data):
    return load_manifest(clearvoice_data, NAME)


@pytest.fixture(scope="module")
def parity(clearvoice_data):
    return np.load(clearvoice_data / f"{NAME}.parity.npz")


@pytest.fixture(scope="module")
def release_sd(manifest, release_fill):
    """A release-format state dict: exactly the manifest's keys, filled by tests/release_fill.py; the
    constants (rotary freqs, inv_freq) are OUR module's constructed values."""
    ours = MossFormer2SE().state_dict()
    constants = {k: v for k, v in ours.items() if release_fill.keeps_constructed_value(k)}
    return release_state_dict(manifest, constants, release_fill)


@pytest.fixture(scope="module")
def release_model(release_sd, tmp_path_factory):
    """The released-size model loaded from a release checkpoint file ({'model': sd}, module. prefix)."""
    path = write_release_checkpoint(tmp_path_factory.mktemp("ckpt") / "last_best.pt", release_sd, module_prefix=True)
    sd = torch.load(path, map_location="cpu")["model"]
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    model = MossFormer2SE()
    model.load_state_dict(MossFormer2SE.convert_clearvoice_state_dict(sd), strict=True)
    return accelerate(NAME, model).eval()  # kernels unless SE_KERNELS=reference


def tiny(seed: int = 0, **kw) -> MossFormer2SE:
    """A tiny model with the kernels (the plain reference forward under SE_KERNELS=reference)."""
    torch.manual_seed(seed)
    return accelerate(NAME, MossFormer2SE(**{**TINY, **kw}))


# ------------------------------------------------------------------------------------------
# release layout and parity
# ------------------------------------------------------------------------------------------
def test_state_dict_layout(manifest):
    model = MossFormer2SE()
    sd = model.state_dict()
    entries = manifest["entries"]
    assert list(sd) == [e["key"] for e in entries]  # same keys, same order
    for e in entries:
        assert tuple(sd[e["key"]].shape) == tuple(e["shape"]), e["key"]
        assert str(sd[e["key"]].dtype).removeprefix("torch.") == e["dtype"], e["key"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == manifest["trainable_parameters"] == 55_262_154
    # one shared rotary embedding: every layer's freqs is the same (frozen) tensor
    freqs = [v for k, v in sd.items() if k.endswith("rotary_pos_emb.freqs")]
    assert len(freqs) == 24 and all(f.data_ptr() == freqs[0].data_ptr() for f in freqs)
    rotary = model.mossformer.mdl.intra_mdl.mossformerM.layers[0].rotary_pos_emb
    assert not rotary.freqs.requires_grad


def test_constants_match_the_release_construction():
    model = MossFormer2SE(**TINY)
    from rotary_embedding_torch import RotaryEmbedding

    rotary = model.mossformer.mdl.intra_mdl.mossformerM.layers[0].rotary_pos_emb
    assert torch.equal(rotary.freqs, RotaryEmbedding(dim=32).freqs)
    width = TINY["width"]
    ref = 1.0 / (10000 ** (torch.arange(0, width, 2).float() / width))
    assert torch.equal(model.mossformer.pos_enc.inv_freq, ref)


def test_parity_fingerprint(manifest, release_sd):
    """The filled release state dict equals the one the references were made with (tests/data/README.md)."""
    assert list(release_sd) == [e["key"] for e in manifest["entries"]]
    total = sum(float(v.double().sum()) for v in release_sd.values())
    sha = hashlib.sha256()
    for k, v in release_sd.items():
        sha.update(k.encode())
        sha.update(v.numpy().tobytes())
    assert total == pytest.approx(26271.709942261237, abs=1e-6)
    assert sha.hexdigest() == "495d095ae61db41208ea06dbe640d39650a65449ae7ea9d277717175ee9ac17c"
    first = release_sd["mossformer.norm.weight"][:3].tolist()
    assert first == pytest.approx([1.08462489, 0.90321881, 0.98952860], abs=1e-7)


def test_convert_clearvoice_state_dict_errors(release_sd):
    sd = dict(release_sd)
    # only one of the 24 aliased freqs entries is enough
    for k in [k for k in sd if k.endswith("rotary_pos_emb.freqs")][1:]:
        del sd[k]
    assert len(MossFormer2SE.convert_clearvoice_state_dict(sd)) == 929
    bad = dict(release_sd)
    del bad["mossformer.prelu.weight"]
    bad["mossformer.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \['mossformer.prelu.weight'\].*unexpected keys "
                                         r"\['mossformer.extra.weight'\]"):
        MossFormer2SE.convert_clearvoice_state_dict(bad)


def test_forward_float64_parity(release_model, parity):
    model64 = copy.deepcopy(release_model).double()
    x = torch.from_numpy(parity["forward_input"]).double()
    with torch.no_grad():
        out = model64(x)
    assert isinstance(out, list) and len(out) == 1
    ref = parity["forward_mask_f64"]
    assert out[0].shape == ref.shape == (2, 121, 961)
    assert max_diff(out[0].numpy(), ref) <= tol(ref, 1e-9)


def test_forward_float32_parity(release_model, parity):
    with torch.no_grad():
        mask = release_model(torch.from_numpy(parity["forward_input"]))[0]
    ref = parity["forward_mask"]
    assert mask.dtype == torch.float32
    assert max_diff(mask.numpy(), ref) <= tol(ref, 2e-4)


def test_clearvoice_decode_parity(release_model, parity):
    raw = parity["decode_raw_input"]
    out = release_model.clearvoice_decode(raw)
    assert out.dtype == np.float64 and out.shape == raw.shape
    assert max_diff(out, parity["decode_output"]) <= tol(parity["decode_output"], 2e-4)
    # intermediate results of the decode path
    normed, scalar = audio_norm(raw)
    assert scalar == pytest.approx(float(parity["decode_scalar"]), rel=1e-12)
    assert max_diff(normed.astype(np.float32), parity["decode_normalized_input"]) == 0
    feats = release_model.input_features(normed.astype(np.float32), dither=0.0)
    assert max_diff(feats.numpy(), parity["decode_fbank"]) <= 1e-5
    with torch.no_grad():
        mask = release_model(feats[None])[0]
    assert max_diff(mask.numpy(), parity["decode_mask"]) <= tol(parity["decode_mask"], 2e-4)
    ref_model_out = parity["decode_model_output"]
    assert max_diff(out / scalar, ref_model_out) <= tol(ref_model_out, 2e-4)
    # the release's center=False iSTFT: 48000 samples = 121 frames exactly, nothing zeroed here


# ------------------------------------------------------------------------------------------
# training precision (the kernels themselves: tests/test_kernels_mossformer2.py)
# ------------------------------------------------------------------------------------------
def test_float32_training_gradients_match_float64():
    """The float32 training path (oneDNN GEMMs, custom backward passes with the kernels) against
    float64, with several attention groups (group_size 32 on 121 frames)."""
    model = tiny(3, dropout=0.0, group_size=32).train()
    model.fbank_dither = 0.0
    model64 = copy.deepcopy(model).double()
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 48000, generator=g) * 0.1
    clean = noisy * 0.5 + torch.randn(2, 48000, generator=g) * 0.01
    loss32, _ = model.loss(noisy, clean)
    loss32.backward()
    loss64, _ = model64.loss(noisy.double(), clean.double())
    loss64.backward()
    assert loss32.item() == pytest.approx(loss64.item(), rel=1e-4)
    for (name, p32), p64 in zip(model.named_parameters(), model64.parameters()):
        if p32.grad is None:
            assert p64.grad is None, name
            continue
        scale = float(p64.grad.abs().max())
        assert max_diff(p32.grad, p64.grad) <= 2e-3 * scale + 1e-9, name


# ------------------------------------------------------------------------------------------
# decode paths
# ------------------------------------------------------------------------------------------
def spec_decode(model: MossFormer2SE, raw: np.ndarray, window: int, stride: int, one_time: int) -> np.ndarray:
    """The reference decode path written from the spec (section 3), with torchaudio's fbank."""
    x, scalar = audio_norm(raw)
    audio = x.astype(np.float32) * np.float32(32768)
    length = len(audio)
    hamming = torch.hamming_window(1920, periodic=False)

    def one(seg: torch.Tensor) -> np.ndarray:
        fb = torchaudio_ops.kaldi_fbank(seg[None], dither=0.0, frame_length=40.0, frame_shift=8.0,
                                        num_mel_bins=60, sample_frequency=48000, window_type="hamming")
        d1 = torchaudio_ops.compute_deltas(fb.T)
        d2 = torchaudio_ops.compute_deltas(d1)
        with torch.no_grad():
            mask = model(torch.cat([fb, d1.T, d2.T], 1)[None])[-1][0]  # (S, F)
        spec = torch.stft(seg, 1920, 384, 1920, window=hamming, center=False, return_complex=True)
        with warnings.catch_warnings():  # the release's iSTFT zero-pads its tail (and torch says so)
            warnings.filterwarnings("ignore", "The length of signal is shorter")
            return torch.istft(spec * mask.T, 1920, 384, 1920, window=hamming, center=False,
                               length=len(seg)).numpy()

    if length <= one_time:
        return (one(torch.from_numpy(audio)) / 32768)[:length] * scalar
    t = length
    if t < window:
        audio = np.concatenate([audio, np.zeros(window - t)])
    elif t < window + stride:
        audio = np.concatenate([audio, np.zeros(window + stride - t)])
    elif (t - window) % stride:
        audio = np.concatenate([audio, np.zeros(t - (t - window) // stride * stride)])
    audio = torch.from_numpy(audio).float()
    outputs = np.zeros(len(audio))
    give_up = (window - stride) // 2
    idx = 0
    while idx + window <= len(audio):
        seg = one(audio[idx : idx + window])
        if idx == 0:
            outputs[: window - give_up] = seg[:-give_up]
        else:
            outputs[idx + give_up : idx + window - give_up] = seg[-window:][give_up:-give_up]
        idx += stride
    return (outputs / 32768)[:length] * scalar


@pytest.mark.parametrize("seconds", [0.08, 0.15, 0.3, 0.325])
def test_segmented_decode_shortened_window(seconds):
    """Segmented decoding (window 0.1 s, stride 0.075 s, give-up 600 samples) in all padding cases:
    shorter than a window, shorter than window + stride, unaligned, aligned (0.325 s)."""
    model = tiny(1).eval()
    raw = np.random.default_rng(int(seconds * 1000)).standard_normal(int(seconds * 48000)) * 0.1
    out = model.clearvoice_decode(raw, one_time_decode_length=0.05, decode_window=0.1)
    ref = spec_decode(model, raw, window=4800, stride=3600, one_time=2400)
    assert out.shape == raw.shape and out.dtype == np.float64
    assert max_diff(out, ref) <= 1e-6 * max(1.0, float(np.abs(ref).max()))


def test_one_pass_decode_zeroes_the_tail_and_enhance_does_not():
    model = tiny(2).eval()
    length = 50000  # (50000 - 1920) % 384 = 80 samples after the last frame
    raw = np.random.default_rng(0).standard_normal(length) * 0.1
    cv = model.clearvoice_decode(raw)
    assert max_diff(cv, spec_decode(model, raw, 192000, 144000, 960000)) <= 1e-6
    assert np.all(cv[-80:] == 0) and np.abs(cv[-200:-80]).max() > 0
    x, _ = audio_norm(raw)
    y = model.enhance(torch.from_numpy(x).float()[None])
    assert y.shape == (1, length) and float(y[0, -80:].abs().min()) > 0


@pytest.mark.parametrize("length", [1000, 1920, 2000, 2304, 48000, 48001, 50000])
def test_enhance_exact_length(length):
    model = tiny(4)
    noisy = torch.randn(2, length, generator=torch.Generator().manual_seed(length)) * 0.05
    out = model.enhance(noisy)
    assert out.shape == (2, length) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    tail = min(383, length)
    assert float(out[:, -tail:].abs().amax(1).min()) > 0  # the tail is not zeroed
    assert model.training  # enhance restores the mode
    # deterministic with the default inference dither 0
    assert torch.equal(out, model.enhance(noisy))
    # batch items are independent
    torch.testing.assert_close(model.enhance(noisy[1:]), out[1:], atol=1e-6, rtol=1e-4)


def test_enhance_dither_option():
    model = tiny(5).eval()
    noisy = torch.zeros(1, 6000)
    noisy[0, 3000:] = torch.randn(3000) * 0.1  # digital silence first: dither matters
    base = model.enhance(noisy)
    model.inference_dither = 1.0  # what se.bin.enhance --fbank-dither sets
    torch.manual_seed(0)
    a = model.enhance(noisy)
    torch.manual_seed(0)
    b = model.enhance(noisy)
    assert torch.equal(a, b) and not torch.equal(a, base)
    assert not torch.equal(model.enhance(noisy, dither=0.0) - base, a - base)


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def test_tiny_loss_backward_step():
    model = tiny(6).train()
    g = torch.Generator().manual_seed(1)
    noisy = torch.randn(2, 48000, generator=g) * 0.1
    clean = noisy * 0.7
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss, parts = model.loss(noisy, clean)
    assert loss.dim() == 0 and torch.isfinite(loss) and set(parts) == {"psm"}
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    opt.step()


def test_loss_with_precomputed_features():
    """Workers compute the features (input_features with their generator); the loss accepts them."""
    model = tiny(7).eval()
    noisy = torch.randn(2, 20000, generator=torch.Generator().manual_seed(2)) * 0.1
    clean = noisy * 0.3
    feats = model.input_features(noisy.numpy()[0], generator=torch.Generator().manual_seed(3))
    feats2 = model.input_features(noisy[0], generator=torch.Generator().manual_seed(3))
    assert torch.equal(feats, feats2) and feats.shape == (48, 180)
    model.fbank_dither = 0.0
    feats0 = model.input_features(noisy)
    l_internal, _ = model.loss(noisy, clean)
    l_given, _ = model.loss(noisy, clean, features=feats0)
    assert torch.equal(l_internal, l_given)
    with pytest.raises(ValueError, match="do not match"):
        model.loss(noisy, clean, features=feats0[:, :-1])


def test_data_features_hook_for_loader_workers():
    """se.trainer.data_features(conf) -> picklable fn(noisy_segment, item_rng) run in the workers."""
    import pickle

    conf = {"network": NAME, "sampling_rate": 48000, "win_len": 0, "win_inc": 0, "fft_len": 0, "win_type": "",
            "num_mels": 60, "fbank_dither": 1.0}  # 0 / "" = the network's default
    fn = pickle.loads(pickle.dumps(MossFormer2SE.data_features(conf)))
    noisy = np.zeros(48000, dtype=np.float32)  # digital silence: dither decides everything
    a = fn(noisy, np.random.default_rng([1, 0, 5]))
    b = fn(noisy, np.random.default_rng([1, 0, 5]))
    c = fn(noisy, np.random.default_rng([1, 0, 6]))
    assert a.shape == (121, 180) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    fn0 = MossFormer2SE.data_features({**conf, "fbank_dither": 0.0})
    x = np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1
    model = tiny(0)
    assert torch.equal(fn0(x, np.random.default_rng(0)), model.input_features(x, dither=0.0))


def test_psm_target_formula():
    g = torch.Generator().manual_seed(0)
    y = torch.complex(torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g))
    s = torch.complex(torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)) * 0.5
    target, weight = MossFormer2SE.psm_target(y, s)
    yn, sn = y.numpy().astype(np.complex128), s.numpy().astype(np.complex128)
    cos = np.real(yn / (np.abs(yn) + 1e-6) * np.conj(sn / (np.abs(sn) + 1e-6)))
    ref = np.clip(np.abs(sn) ** 2 / (np.abs(yn) ** 2 + 1e-6) * cos, 0, 1)
    np.testing.assert_allclose(target.numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(weight.numpy(), np.abs(yn) / (np.abs(yn).max(1, keepdims=True) + 1e-6), atol=1e-6)
    # loss = 0.5 * sum((mask - target)^2 * weight) / (B * S) for a zero mask
    assert float(target.min()) >= 0 and float(target.max()) <= 1


# ------------------------------------------------------------------------------------------
# construction and errors
# ------------------------------------------------------------------------------------------
def test_registry_and_config():
    assert get_entry(NAME).network_class() is MossFormer2SE
    conf = {"win_len": 1920, "win_inc": 384, "fft_len": 1920, "win_type": "hamming", "num_mels": 60,
            "sampling_rate": 48000, "network_kwargs": {"num_blocks": 1, "width": 32, "query_key_dim": 16,
                                                       "fsmn_inner": 16}}
    model = build_network(NAME, conf)
    assert isinstance(model, MossFormer2SE) and len(model.mossformer.mdl.intra_mdl.mossformerM.layers) == 1
    kwargs = MossFormer2SE.config_kwargs(conf)
    assert kwargs["width"] == 32 and kwargs["win_len"] == 1920
    assert isinstance(MossFormer2SE(**kwargs), MossFormer2SE)
    json.dumps(kwargs)  # storable in checkpoints
    with pytest.raises(ValueError, match="network_kwargs: unknown key 'depth' for MossFormer2_SE_48K; allowed: "):
        MossFormer2SE.from_config({"network_kwargs": {"depth": 3}})
    with pytest.raises(ValueError, match="48000 Hz"):
        MossFormer2SE.from_config({"sampling_rate": 16000})


def test_bad_input_errors():
    model = tiny(8)
    with pytest.raises(ValueError, match=r"\(121, 180\)"):
        model(torch.zeros(121, 180))
    with pytest.raises(ValueError, match=r"\(1, 121, 60\)"):
        model(torch.zeros(1, 121, 60))
    with pytest.raises(ValueError, match="no frames"):
        model(torch.zeros(1, 0, 180))
    with pytest.raises(ValueError, match=r"\(48000,\)"):
        model.enhance(torch.zeros(48000))
    with pytest.raises(ValueError, match=r"\(2, 100\) and \(2, 99\)"):
        model.loss(torch.zeros(2, 100), torch.zeros(2, 99))
    with pytest.raises(ValueError, match=r"\(1, 4000\)"):
        model.clearvoice_decode(np.zeros((1, 4000)))


def test_tiny_variant_trains_fast():
    """The tiny variant runs a batch-2 x 1 s step quickly (generous bound: the machine is shared)."""
    import time

    model = tiny(9).train()
    noisy = torch.randn(2, 48000) * 0.1
    model.loss(noisy, noisy * 0.5)[0].backward()  # warm-up
    start = time.perf_counter()
    loss, _ = model.loss(noisy, noisy * 0.5)
    loss.backward()
    assert time.perf_counter() - start < 10.0
    assert math.isfinite(loss.item())
