"""FRCRN_SE_16K: release-checkpoint parity, the reference decode path, aligned enhancement,
training loss and error branches.

Parity and training-path tests run twice: on the plain reference forward (se/models/frcrn.py,
what ``SE_KERNELS=reference`` selects) and with the speed kernels of
se/models/kernels/frcrn.py (what build_network selects by default).

Parity references: tests/data/clearvoice (tests/data/README.md).  The released-size
model is loaded from a release-format checkpoint built from the manifest and filled with
tests/release_fill.py, so the key mapping is exercised on every run.
"""

import copy
import math

import numpy as np
import pytest
import torch
from benchmarks.bench_frcrn import literal_forward
from helpers import assert_close
from release_checkpoints import load_manifest, release_state_dict, write_release_checkpoint

from se.audio import audio_norm
from se.bin import enhance
from se.models import build_network
from se.models import kernels as kernel_select
from se.models.frcrn import FRCRN, _si_snr
from se.models.kernels import frcrn as frcrn_kernels

NAME = "FRCRN_SE_16K"
CONSTANT_KEYS = ("stft.weight", "istft.weight", "istft.window", "istft.enframe")
NPZ_CONSTANTS = {"stft.weight": "stft_weight", "istft.weight": "istft_weight",
                 "istft.window": "istft_window"}
FILL_SUM = 70456.06927200018  # fingerprint of the filled release state dict (tests/data/README.md)
TRAINABLE = 13_141_844  # FRCRN_SE_16K.md §1
TINY = {"channels": 8, "fsmn_hidden": 8, "lorder": 20}


@pytest.fixture(scope="module")
def manifest(clearvoice_data):
    return load_manifest(clearvoice_data, NAME)


@pytest.fixture(scope="module")
def parity(clearvoice_data):
    return dict(np.load(clearvoice_data / f"{NAME}.parity.npz"))


@pytest.fixture(scope="module")
def release_sd(manifest, release_fill):
    """Release-format state dict (all 1692 manifest keys, aliases included), parity-filled;
    the constants are OUR constructed kernels."""
    ours = FRCRN().state_dict()
    return release_state_dict(manifest, {k: ours[k] for k in CONSTANT_KEYS}, release_fill)


@pytest.fixture(scope="module")
def released(release_sd, tmp_path_factory):
    """Released-size FRCRN loaded from a DDP-style ({'model': {'module.' + key: ...}}) file."""
    path = tmp_path_factory.mktemp("ckpt") / "last_best_checkpoint.pt"
    write_release_checkpoint(path, release_sd, module_prefix=True)
    state = torch.load(path, map_location="cpu")["model"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = FRCRN()
    model.load_state_dict(FRCRN.convert_clearvoice_state_dict(state))
    return model.eval()


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return FRCRN(**{**TINY, **kw})


IMPLS = ["kernels", "reference"]


def _as(impl, model):
    """A copy of a reference-forward ``model`` with the speed kernels or without."""
    model = copy.deepcopy(model)
    return frcrn_kernels.accelerate(model) if impl == "kernels" else model


# ---------------------------------------------------------------------------------------------
# layout, constants, checkpoint conversion
# ---------------------------------------------------------------------------------------------
def test_state_dict_is_the_manifest_without_aliases(manifest):
    model = FRCRN()
    ours = model.state_dict()
    canonical = [e for e in manifest["entries"] if not e.get("alias_of")]
    assert list(ours) == [e["key"] for e in canonical]
    for e in canonical:
        assert list(ours[e["key"]].shape) == e["shape"], e["key"]
        assert ours[e["key"]].dtype == getattr(torch, e["dtype"]), e["key"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == TRAINABLE
    assert not model.stft.weight.requires_grad and not model.istft.weight.requires_grad


def test_constants_match_reference(clearvoice_data):
    ours = FRCRN().state_dict()
    ref = np.load(clearvoice_data / f"{NAME}.constants.npz")
    for key, name in NPZ_CONSTANTS.items():
        np.testing.assert_allclose(ours[key].numpy(), ref[name], rtol=0, atol=1e-6, err_msg=key)
    assert torch.equal(ours["istft.enframe"], torch.eye(640)[:, None, :])


def test_parity_fill_fingerprint(release_sd, manifest):
    assert list(release_sd) == [e["key"] for e in manifest["entries"]]
    total = sum(float(v.double().sum()) for v in release_sd.values())
    assert abs(total - FILL_SUM) < 1e-6


def test_convert_accepts_either_key_set(release_sd):
    canonical = FRCRN.convert_clearvoice_state_dict(release_sd)
    assert set(canonical) == set(FRCRN().state_dict())
    only_canonical = {k: v for k, v in release_sd.items() if FRCRN.canonical_key(k) == k}
    assert FRCRN.convert_clearvoice_state_dict(only_canonical).keys() == canonical.keys()
    aliased = {FRCRN.canonical_key(k) for k in release_sd if FRCRN.canonical_key(k) != k}
    only_aliases = {k: v for k, v in release_sd.items() if k not in aliased}
    converted = FRCRN.convert_clearvoice_state_dict(only_aliases)
    assert all(torch.equal(converted[k], canonical[k]) for k in canonical)


def test_convert_rejects_bad_state_dicts(release_sd):
    sd = dict(release_sd)
    sd["unet.encoders.2.conv.conv_re.bias"] = sd["unet.encoders.2.conv.conv_re.bias"] + 1
    with pytest.raises(ValueError, match="unet.encoders.2.conv.conv_re.bias"):
        FRCRN.convert_clearvoice_state_dict(sd)
    sd = dict(release_sd)
    del sd["unet2.linear.conv_im.bias"]
    with pytest.raises(ValueError, match=r"1 missing keys \['unet2.linear.conv_im.bias'\]"):
        FRCRN.convert_clearvoice_state_dict(sd)
    sd = dict(release_sd)
    sd["unet.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 unexpected keys \['unet.extra.weight'\]"):
        FRCRN.convert_clearvoice_state_dict(sd)


# ---------------------------------------------------------------------------------------------
# numerical parity with the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_forward_parity_float64(released, parity, impl):
    model = _as(impl, released).double()
    with torch.no_grad():
        spec, wav, mask = model(torch.from_numpy(parity["forward_input"]).double())
    assert_close(spec, parity["forward_est_spec_f64"], 1e-9)
    assert_close(wav, parity["forward_est_wav_f64"], 1e-9)
    assert_close(mask, parity["forward_est_mask_f64"], 1e-9)


@pytest.mark.parametrize("impl", IMPLS)
def test_clearvoice_decode_parity_float32(released, parity, impl):
    released = _as(impl, released)
    raw = parity["decode_raw_input"]
    x, scalar = audio_norm(raw)
    np.testing.assert_array_equal(x.astype(np.float32), parity["decode_normalized_input"])
    assert scalar == pytest.approx(float(parity["decode_scalar"]), rel=1e-12)
    model_out = released.decode_normalized(x.astype(np.float32))
    assert model_out.dtype == np.float32
    assert_close(model_out, parity["decode_model_output"], 2e-4)
    out = released.clearvoice_decode(raw)
    assert out.dtype == np.float64
    assert_close(out, parity["decode_output"], 2e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_enhance_cli_clearvoice_compat_parity(release_sd, parity, impl, tmp_path, monkeypatch):
    """se.bin.enhance --clearvoice-compat (2e-4), with kernels and with SE_KERNELS=reference."""
    import soundfile as sf

    if impl == "reference":
        monkeypatch.setenv(kernel_select.ENV, "reference")
    calls = []
    real = frcrn_kernels.accelerate
    monkeypatch.setattr(frcrn_kernels, "accelerate", lambda model: calls.append(1) or real(model))
    ckpt = write_release_checkpoint(tmp_path / "release.pt", release_sd, module_prefix=True)
    wav = tmp_path / "in" / "parity_input.wav"
    wav.parent.mkdir()
    sf.write(wav, parity["decode_raw_input"], 16000, subtype="FLOAT")
    assert enhance.main(["--network", NAME, "--checkpoint", str(ckpt), "--input", str(wav),
                         "--output-dir", str(tmp_path / "out"), "--clearvoice-compat",
                         "--output-subtype", "FLOAT"]) == 0
    assert len(calls) == (impl == "kernels")
    y, fs = sf.read(tmp_path / "out" / "parity_input.wav")
    assert fs == 16000
    assert_close(y, parity["decode_output"], 2e-4)


def test_segmented_decode_follows_the_reference_windows():
    model = _tiny().eval()
    x = np.random.default_rng(3).standard_normal(15000).astype(np.float32) * 0.05
    out = model.decode_normalized(x, one_time_decode_length=0.5, decode_window=0.5,
                                  windows_per_batch=3)
    # reference with 0.5 s windows: window 8000, stride 6000, give_up 1000;
    # (15000 - 8000) % 6000 != 0 -> pad 15000 - 6000 zeros; windows run one by one
    padded = np.concatenate([x, np.zeros(15000 - 6000, np.float32)])
    ref = np.zeros(padded.shape[0])
    with torch.no_grad():
        for i in range(0, padded.shape[0] - 8000 + 1, 6000):
            w = model(torch.from_numpy(padded[i : i + 8000])[None])[1][0].numpy()
            lo = 0 if i == 0 else 1000
            ref[i + lo : i + 7000] = w[lo:7000]
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# training path: same arithmetic as a literal transcription of the reference layout
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_training_forward_and_gradients_match_literal_reference(impl):
    ours = _as(impl, _tiny(seed=1).double().train())
    lit = copy.deepcopy(ours)
    lit.forward = lambda x: literal_forward(lit, x)
    rng = np.random.default_rng(0)
    noisy = torch.from_numpy(rng.standard_normal((2, 3000)) * 0.1)
    clean = torch.from_numpy(rng.standard_normal((2, 3000)) * 0.05)
    loss_a, parts_a = ours.loss(noisy, clean)
    loss_b, parts_b = lit.loss(noisy, clean)
    loss_a.backward()
    loss_b.backward()
    assert float(loss_a.detach()) == pytest.approx(float(loss_b.detach()), rel=1e-10)
    for key in parts_a:
        assert float(parts_a[key]) == pytest.approx(float(parts_b[key]), rel=1e-10)
    grads_b = dict(lit.named_parameters())
    for name, p in ours.named_parameters():
        q = grads_b[name]
        if p.grad is None:  # the spec's unused modules (and the frozen STFT kernels)
            assert q.grad is None or not q.grad.any(), name
            continue
        # (conv biases before a training-mode BN have zero gradient: rounding noise ~1e-14)
        bound = 1e-9 * float(q.grad.abs().max()) + 1e-12
        assert float((p.grad - q.grad).abs().max()) <= bound, name
    for (name, a), b in zip(ours.named_buffers(), lit.buffers()):  # BN running statistics
        assert torch.allclose(a.double(), b.double(), rtol=1e-10, atol=1e-12), name
    assert int(ours.unet.encoder3.bn.bn_im.num_batches_tracked) == 1


def test_unused_modules_get_no_gradient():
    model = _tiny().train()
    loss, _ = model.loss(torch.randn(2, 4000) * 0.1, torch.randn(2, 4000) * 0.1)
    loss.backward()
    for unet in (model.unet, model.unet2):
        for name in ("fsmn_enc0", "fsmn_dec6", "se_layer_enc6", "se_layer_dec5"):
            assert all(p.grad is None for p in getattr(unet, name).parameters()), name
    used = [p for n, p in model.named_parameters() if p.requires_grad and not any(
        d in n for d in ("fsmn_enc0", "fsmn_dec6", "se_layer_enc6", "se_layer_dec5"))]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in used)


def test_loss_terms_follow_the_spec():
    model = _tiny()
    rng = np.random.default_rng(1)
    noisy = rng.standard_normal((2, 4000)) * 0.1
    clean = noisy * 0.5 + rng.standard_normal((2, 4000)) * 0.02
    clean[0, 1000:1200] *= 40  # some mask targets beyond +-2
    n, c = torch.from_numpy(noisy), torch.from_numpy(clean)
    frames = (4000 - 640) // 320 + 1
    zero_mask = torch.zeros(2, 642, frames, dtype=torch.float64)
    cmask = float(model.double()._cmask_loss(n, c, zero_mask))
    # independent numpy CIRM target: symmetric Hann, no centring, >2 -> 1, <-2 -> -1
    win = np.hanning(640)
    idx = np.arange(640)[None, :] + 320 * np.arange(frames)[:, None]
    s, y = np.fft.rfft(clean[:, idx] * win, axis=-1), np.fft.rfft(noisy[:, idx] * win, axis=-1)
    power = np.abs(y) ** 2 + 1e-8
    target = np.stack([(s.real * y.real + s.imag * y.imag) / power,
                       (s.imag * y.real - s.real * y.imag) / power])
    assert (np.abs(target) > 2).any()
    target = np.where(target > 2, 1.0, np.where(target < -2, -1.0, target))
    assert cmask == pytest.approx(640 * 2 * np.mean(target**2), rel=1e-9)
    # SI-SNR: a scaled copy of the reference is near-perfect (limited by EPS); the formula
    ref = torch.from_numpy(clean)
    assert float(_si_snr(3 * ref, ref).min()) > 60
    e, r = noisy[0] - noisy[0].mean(), clean[0] - clean[0].mean()
    st = (e @ r) * r / (r @ r + 1e-6)
    manual = 10 * np.log10((st @ st) / ((e - st) @ (e - st) + 1e-6) + 1e-6)
    assert float(_si_snr(n, ref)[0]) == pytest.approx(manual, rel=1e-9)


def test_loss_parts_and_backward():
    model = _tiny().train()
    noisy = torch.randn(4, 16000) * 0.1
    loss, parts = model.loss(noisy, 0.7 * noisy)
    assert set(parts) == {"cmask", "si_snr"}
    assert torch.isfinite(loss)
    assert float(loss.detach()) == pytest.approx(float(parts["cmask"] - parts["si_snr"]))
    loss.backward()
    assert model.unet.encoder1.conv.conv_re.weight.grad is not None


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_autocast_step_keeps_spectra_and_fsmn_in_float32(impl):
    model = _as(impl, _tiny()).train()
    noisy = torch.randn(2, 4000) * 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.stft(noisy).dtype == torch.float32
        loss, parts = model.loss(noisy, 0.5 * noisy)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------------
# aligned enhancement (our default path) vs the reference's edge defects
# ---------------------------------------------------------------------------------------------
def _identity_model():
    """Tiny FRCRN whose mask is exactly 1 + 0j: both U-Net outputs are the constant
    atanh(0.5) (real) / 0 (imag), so the network is the fixed STFT -> iSTFT round trip."""
    model = _tiny().eval()
    b = math.atanh(0.5) / 2
    with torch.no_grad():
        for unet in (model.unet, model.unet2):
            unet.linear.conv_re.weight.zero_()
            unet.linear.conv_im.weight.zero_()
            unet.linear.conv_re.bias.fill_(b)  # real bias b_re - b_im = atanh(0.5)
            unet.linear.conv_im.bias.fill_(-b)  # imag bias b_re + b_im = 0
    return model


@pytest.mark.parametrize("length", [5, 700, 16000, 16321, 33333])
def test_enhance_keeps_length_and_every_sample(length):
    model = _identity_model()
    x = torch.from_numpy(np.random.default_rng(length).standard_normal((2, length)) * 0.1).float()
    y = model.enhance(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=0, atol=2e-5)  # incl. both ends
    assert float(y[0, 0]) != 0.0


def test_reference_paths_drop_samples_that_enhance_keeps():
    model = _identity_model()
    x = torch.from_numpy(np.random.default_rng(7).standard_normal((1, 16321)) * 0.1).float()
    with torch.no_grad():
        wav = model(x)[1]  # the reference's forward / inference
    assert wav.shape[-1] == 16321 - (16321 - 640) % 320  # the last 1 sample is dropped
    assert float(wav[0, 0]) == 0.0  # 0 / (0 + 1e-8)
    aligned = model.enhance(x)
    head_err = float((aligned[0, :320] - x[0, :320]).abs().max())
    assert float((wav[0, :320] - x[0, :320]).abs().max()) > 100 * head_err
    assert float((aligned[0, -320:] - x[0, -320:]).abs().max()) < 2e-5
    decoded = model.clearvoice_decode(x[0].double().numpy())
    assert decoded.shape == (16321,) and decoded[0] == 0.0


def test_enhance_is_deterministic_and_leaves_no_graph():
    model = _tiny().eval()
    x = torch.randn(3, 5000, requires_grad=True)
    a, b = model.enhance(x), model.enhance(x)
    assert torch.equal(a, b) and not a.requires_grad


# ---------------------------------------------------------------------------------------------
# shapes, configs, errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels,batch,length", [(8, 1, 640), (16, 2, 16000), (8, 3, 7777)])
def test_tiny_shapes(channels, batch, length):
    model = FRCRN(channels=channels).eval()
    frames = (length - 640) // 320 + 1
    with torch.no_grad():
        spec, wav, mask = model(torch.randn(batch, length) * 0.1)
    assert spec.shape == mask.shape == (batch, 642, frames)
    assert wav.shape == (batch, (frames - 1) * 320 + 640)
    assert model.enhance(torch.randn(batch, length)).shape == (batch, length)


def test_long_sequences_use_several_memory_blocks():
    # 64 frames -> the bottleneck time FSMN sees 71 steps: 2 memory blocks of 36 (one padded)
    model = _as("kernels", _tiny(seed=2).double().eval())
    x = torch.randn(1, 63 * 320 + 640, dtype=torch.float64) * 0.1
    with torch.no_grad():
        ours = model(x)
        ref = literal_forward(model, x)
    for a, b in zip(ours, ref):
        assert_close(a, b, 1e-9)


def test_bad_input_rank_raises_with_shape():
    model = _tiny()
    with pytest.raises(ValueError, match=r"\(16000,\)"):
        model(torch.zeros(16000))
    with pytest.raises(ValueError, match=r"\(1, 1, 16000\)"):
        model.enhance(torch.zeros(1, 1, 16000))
    with pytest.raises(ValueError, match=r"\(2, 100\)"):
        model(torch.zeros(2, 100))
    with pytest.raises(ValueError, match=r"\(1, 2\)"):
        model.clearvoice_decode(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="one shape"):
        model.loss(torch.zeros(2, 1000), torch.zeros(2, 999))


def test_config_kwargs_and_errors():
    conf = {"win_len": 640, "win_inc": 320, "fft_len": 640, "win_type": "hanning",
            "network_kwargs": {"channels": 16}}
    kwargs = FRCRN.config_kwargs(conf)
    assert kwargs["channels"] == 16 and kwargs["lorder"] == 20 and kwargs["win_type"] == "hanning"
    model = build_network(NAME, {**conf, "one_time_decode_length": 20})
    assert isinstance(model, FRCRN) and model.one_time_decode_length == 20
    assert model.unet.encoder1.conv.conv_re.weight.shape == (16, 16, 5, 2)
    with pytest.raises(ValueError, match="chanels"):
        FRCRN.from_config({"network_kwargs": {"chanels": 16}})
    with pytest.raises(ValueError, match="fft_len 512"):
        FRCRN.from_config({"fft_len": 512, "win_len": 512, "win_inc": 256})
    with pytest.raises(ValueError, match="not a scipy window"):
        FRCRN(win_type="no-such-window", channels=8)
