"""MossFormerGAN_SE_16K: release-checkpoint parity (generator and discriminator), the reference
decode path (all with the registry's speed kernels, or the plain reference forward with
SE_KERNELS=reference; the kernels themselves: tests/test_kernels_mossformer_gan.py), aligned
enhancement, the GAN training step (fixes of the reference's defects),
parallel PESQ, release discriminator lookup and error branches.

References: tests/data/clearvoice (tests/data/README.md; the two manifests
and MossFormerGAN_SE_16K.parity.npz).  The released-size networks are loaded from
release-format checkpoints built from the manifests and filled by tests/release_fill.py.
"""

import hashlib
import logging

import numpy as np
import pytest
import torch
from helpers import assert_close
from release_checkpoints import load_manifest, release_state_dict, write_release_checkpoint

from se.models import build_network, get_entry, resolve
from se.models.metric_discriminator import MetricDiscriminator
from se.models.mossformer_gan import (
    GANTrainStep,
    MossFormerGAN,
    find_release_discriminator,
    load_release_discriminator,
    time_domain_estimate,
)
from se.pesq_pool import PesqPool, batch_pesq

NAME = "MossFormerGAN_SE_16K"
GEN = "MossFormerGAN_SE_16K_generator"
DISC = "MossFormerGAN_SE_16K_discriminator"
# fingerprints of the filled release state dicts (tests/data/README.md)
FINGERPRINTS = {
    GEN: (115620.39309780524, "c845196afd78374bb30f59518d66cc6b5017e28de0bdbe72dc8a1e6c0fe74081"),
    DISC: (13288.185791047612, "978284db89f8e0b5fb67bd2a75b4f25cced9130771b87474d232bfdd3b958e7c"),
}
TRAINABLE = {GEN: 3_128_447, DISC: 8_121_331}  # MossFormerGAN_SE_16K.md
TINY_G = {"num_channel": 8, "num_blocks": 1, "dropout": 0.0}
TINY_D = {"ndf": 2, "num_conformers": 1, "pool_hidden": 8}


def _fingerprint(sd):
    h = hashlib.sha256()
    total = 0.0
    for k, v in sd.items():
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
        total += float(v.double().sum())
    return total, h.hexdigest()


def _release_sd(clearvoice_data, release_fill, name, module):
    """Manifest keys filled by the parity rule; constants (rotary freqs) from OUR module."""
    manifest = load_manifest(clearvoice_data, name)
    ours = module.state_dict()
    constants = {e["key"]: ours[e["key"]] for e in manifest["entries"]
                 if release_fill.keeps_constructed_value(e["key"])}
    return manifest, release_state_dict(manifest, constants, release_fill)


@pytest.fixture(scope="module")
def ref(clearvoice_data):
    return np.load(clearvoice_data / f"{NAME}.parity.npz")


@pytest.fixture(scope="module")
def release_generator(clearvoice_data, release_fill, tmp_path_factory):
    """Released-size generator loaded from a release-format file ({'model': ...}, module. prefix)."""
    manifest, sd = _release_sd(clearvoice_data, release_fill, GEN, MossFormerGAN())
    assert _fingerprint(sd)[1] == FINGERPRINTS[GEN][1]
    path = write_release_checkpoint(tmp_path_factory.mktemp("gen") / "release.pt", sd, module_prefix=True)
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    model = build_network(NAME, {})
    model.load_state_dict(MossFormerGAN.convert_clearvoice_state_dict(state))
    return model.eval()


@pytest.fixture(scope="module")
def release_discriminator(clearvoice_data, release_fill):
    _, sd = _release_sd(clearvoice_data, release_fill, DISC, MetricDiscriminator())
    disc = MetricDiscriminator()
    disc.load_state_dict(MetricDiscriminator.convert_clearvoice_state_dict(sd))
    return disc.eval()


# ---------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("name,cls", [(GEN, MossFormerGAN), (DISC, MetricDiscriminator)])
def test_state_dict_layout_equals_manifest(clearvoice_data, name, cls):
    manifest = load_manifest(clearvoice_data, name)
    sd = cls().state_dict()
    assert list(sd) == [e["key"] for e in manifest["entries"]]  # same keys, same order
    for e in manifest["entries"]:
        assert list(sd[e["key"]].shape) == e["shape"], e["key"]
        assert str(sd[e["key"]].dtype) == f"torch.{e['dtype']}", e["key"]
    model = cls()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == TRAINABLE[name]


@pytest.mark.parametrize("name,cls", [(GEN, MossFormerGAN), (DISC, MetricDiscriminator)])
def test_release_fill_fingerprints(clearvoice_data, release_fill, name, cls):
    _, sd = _release_sd(clearvoice_data, release_fill, name, cls())
    total, sha = _fingerprint(sd)
    assert total == pytest.approx(FINGERPRINTS[name][0], rel=1e-12)
    assert sha == FINGERPRINTS[name][1]


# ---------------------------------------------------------------------------------- parity
def test_generator_forward_float64_parity(release_generator, ref):
    # the registry's network: with its speed kernels, or the plain forward (SE_KERNELS=reference)
    model = build_network(NAME, {}).double().eval()
    model.load_state_dict(release_generator.state_dict())
    with torch.no_grad():
        real, imag = model(torch.from_numpy(ref["forward_input"]).double())
    assert_close(real.numpy(), ref["forward_out_real_f64"], 1e-9)
    assert_close(imag.numpy(), ref["forward_out_imag_f64"], 1e-9)


def test_discriminator_float64_parity(release_discriminator, ref):
    disc = MetricDiscriminator().double().eval()
    disc.load_state_dict(release_discriminator.state_dict())
    with torch.no_grad():
        x = torch.from_numpy(ref["disc_input_x"]).double()
        y = torch.from_numpy(ref["disc_input_y"]).double()
        out = disc(x, y)
        out_xx = disc(x, x)
    assert_close(out.numpy(), ref["disc_output_f64"], 1e-9)
    assert_close(out_xx.numpy(), ref["disc_output_xx"], 2e-4)


def test_clearvoice_decode_parity(release_generator, ref):
    y = release_generator.clearvoice_decode(ref["decode_raw_input"])
    assert y.dtype == np.float64 and y.shape == ref["decode_output"].shape
    assert_close(y, ref["decode_output"], 2e-4)


def test_spectrum_matches_reference_input(release_generator, ref):
    x = torch.from_numpy(ref["forward_waveform"])
    c = MossFormerGAN.norm_factor(x)
    assert_close(c[:, 0].numpy(), ref["forward_c"], 1e-6)
    assert_close(release_generator.spectrum(x * c).numpy(), ref["forward_input"], 1e-5)


# ---------------------------------------------------------------------------------- alignment
class _SpectralIdentity(MossFormerGAN):
    """Generator whose output equals its input spectrum: isolates the signal path."""

    def forward(self, x):
        return [x[:, 0:1], x[:, 1:2]]


def test_enhance_is_aligned_and_keeps_length():
    model = _SpectralIdentity(num_channel=4, num_blocks=0)
    x = torch.randn(2, 16037, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.1
    y = model.double().enhance(x)
    assert y.shape == x.shape
    assert_close(y.numpy(), x.numpy(), 1e-9)  # no delay, last samples present


def test_clearvoice_pass_is_delayed_by_half_a_window():
    model = _SpectralIdentity(num_channel=4, num_blocks=0).double()
    x = torch.randn(1, 16000, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.1
    with torch.no_grad():
        y = model._clearvoice_pass(x)
    assert y.shape == x.shape
    assert_close(y[0, 200:].numpy(), x[0, :-200].numpy(), 1e-9)  # the reference's 200-sample delay


def test_clearvoice_segmented_decode_stitches_windows():
    """> 10 s after padding: 1 s windows every 0.75 s, kept [2000, 14000) of each."""
    model = _SpectralIdentity(num_channel=4, num_blocks=0)
    n = 176000  # 11 s -> padded to 196000 (the reference's padding rule), 16 windows
    assert MossFormerGAN.clearvoice_padded_length(n) == 196000
    raw = np.random.default_rng(3).standard_normal(n) * 0.05
    y = model.clearvoice_decode(raw)
    assert y.shape == (n,)
    assert_close(y[200:], raw[:-200], 1e-5)  # float32 path, delayed by 200 samples everywhere


@pytest.mark.parametrize("n,want", [(8000, 16000), (16000, 28000), (27999, 28000), (28000, 28000),
                                    (30000, 48000), (40000, 40000), (160000, 160000)])
def test_clearvoice_padding_rule(n, want):
    assert MossFormerGAN.clearvoice_padded_length(n) == want


# ---------------------------------------------------------------------------------- GAN step
def _pair(batch, seconds=1.0, seed=0, fs=16000):
    rng = np.random.default_rng(seed)
    n = int(seconds * fs)
    t = np.arange(n) / fs
    noisy, clean = [], []
    for _ in range(batch):
        f0 = rng.uniform(110, 170) * (1 + 0.1 * np.sin(2 * np.pi * 1.7 * t))
        ph = 2 * np.pi * np.cumsum(f0) / fs
        s = sum(np.sin(h * ph) / h for h in range(1, 10)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) ** 2
        s = 0.1 * s / np.sqrt(np.mean(s**2))
        noise = rng.standard_normal(n) * 0.03
        clean.append(s)
        noisy.append(s + noise)
    return (torch.tensor(np.array(noisy), dtype=torch.float32),
            torch.tensor(np.array(clean), dtype=torch.float32))


def _step(mode="fixed", workers=0, **conf):
    base = {"network": NAME, "init_learning_rate": 1e-3, "weight_decay": 0.0, "clip_grad_norm": 10.0,
            "network_kwargs": TINY_G, "discriminator_kwargs": TINY_D, "gan_loss_mode": mode,
            "pesq_workers": workers}
    base.update(conf)
    torch.manual_seed(0)
    model = build_network(NAME, base)
    step = resolve(get_entry(NAME).train_step)(model, base, torch.device("cpu"))
    step.build_optimizers()
    return step


def _disc_grads(step):
    return [None if p.grad is None else p.grad.clone() for p in step.modules["discriminator"].parameters()]


def test_registry_builds_gan_step_with_clearvoice_checkpoint_keys():
    step = _step()
    assert isinstance(step, GANTrainStep) and not step.loss_forward_for_ddp
    assert set(step.modules) == {"model", "discriminator"}
    assert set(step.optimizers) == {"model", "disc"}
    assert set(step.state_dict()) == {"model", "discriminator", "optimizer", "optimizer_disc"}
    assert step.optimizers["disc"].param_groups[0]["lr"] == pytest.approx(1e-3)
    # the frozen rotary frequencies are not optimised
    n_opt = sum(p.numel() for g in step.optimizers["model"].param_groups for p in g["params"])
    model = step.modules["model"]
    assert n_opt == sum(p.numel() for p in model.parameters()) - sum(
        m.rotary_pos_emb.freqs.numel() for m in model.modules() if hasattr(m, "rotary_pos_emb"))


def test_time_loss_uses_predicted_real_part():
    model = MossFormerGAN(**TINY_G)
    noisy, clean = _pair(1)
    S = model.spectrum(clean)
    real = S[:, 0:1].clone().requires_grad_()
    imag = S[:, 1:2].clone().requires_grad_()
    est = time_domain_estimate(model, real, imag, S, clean.shape[-1], "fixed")
    (g_real,) = torch.autograd.grad(est.abs().sum(), [real])
    assert g_real.abs().max() > 0  # the fixed time loss trains the real part
    assert_close(est.detach().numpy(), clean.numpy(), 1e-4)  # and is aligned with the clean signal
    est_cv = time_domain_estimate(model, real, imag, S, clean.shape[-1], "clearvoice")
    assert not est_cv.requires_grad or torch.autograd.grad(
        est_cv.abs().sum(), [real], allow_unused=True)[0] is None  # reference bug 1


@pytest.mark.parametrize("mode", ["fixed", "clearvoice"])
def test_discriminator_gradients_are_those_of_its_own_loss(mode):
    step = _step(mode)
    for m in step.modules.values():
        m.eval()  # deterministic: no dropout, BatchNorm running statistics
    noisy, clean = _pair(2, seed=1)
    parts = step.micro_step(noisy, clean, 1.0)
    assert parts["pesq_failed"] == 0 and np.isfinite(parts["loss_disc"])
    got = _disc_grads(step)
    # L_D alone, recomputed from scratch
    from se.models.mossformer_gan import generator_pass

    with torch.no_grad():
        t = generator_pass(step.modules["model"], noisy, clean, mode)
    q = batch_pesq(list(t["s"].numpy()), list(t["est_wave"].numpy()), workers=0)
    loss_d, _ = step.discriminator_loss(t["clean_mag"], t["est_mag"],
                                        torch.tensor((q - 1) / 3.5, dtype=torch.float32))
    params = list(step.modules["discriminator"].parameters())
    want = torch.autograd.grad(loss_d, params, allow_unused=True)
    same = all((a is None and b is None) or (a is not None and b is not None and torch.allclose(a, b, atol=1e-7))
               for a, b in zip(got, want))
    # fixed: no gradient of L_G reaches D; clearvoice reproduces the reference's leak (bug 3)
    assert same == (mode == "fixed")


def test_discriminator_updates_without_accumulation():
    step = _step()
    before_d = [p.detach().clone() for p in step.modules["discriminator"].parameters()]
    before_g = [p.detach().clone() for p in step.modules["model"].parameters()]
    noisy, clean = _pair(2, seed=2)
    parts = step.micro_step(noisy, clean, 1.0)
    upd = step.update()
    assert np.isfinite(upd["grad_norm"]) and np.isfinite(upd["grad_norm_disc"])
    assert {"loss", "loss_ri", "loss_mag", "loss_time", "loss_adv", "loss_disc", "pesq_failed"} <= set(parts)
    assert any(not torch.equal(a, p) for a, p in zip(before_d, step.modules["discriminator"].parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(before_g, step.modules["model"].parameters()))
    assert all(p.grad is None for p in step.modules["discriminator"].parameters())  # zeroed


def test_odd_sized_last_batch():
    step = _step()
    for batch, scale in ((3, 0.5), (1, 0.5)):  # accumulation over a full and a short batch
        noisy, clean = _pair(batch, seed=batch)
        parts = step.micro_step(noisy, clean, scale)
        assert all(np.isfinite(v) for v in parts.values())
    assert np.isfinite(step.update()["grad_norm_disc"])


def test_silent_clean_item_is_dropped_from_the_metric_term_only():
    step = _step(workers=2)  # through the process pool
    seen = []
    disc = step.modules["discriminator"]
    disc.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    noisy, clean = _pair(2, seed=4)
    clean[1] = 0.0  # a silent crop: PESQ raises for it
    noisy[1] = torch.randn(noisy.shape[-1]) * 0.01
    parts = step.micro_step(noisy, clean, 1.0)
    assert parts["pesq_failed"] == 1 and np.isfinite(parts["pesq"]) and np.isfinite(parts["loss_disc"])
    # adversarial D(S, S_hat), D(S, S), then D(S, S_hat) for both items with weight 0 for the
    # failed one (the same forwards on every process, whatever PESQ returns)
    assert seen == [2, 2, 2]
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in disc.parameters())
    # the reference skips the whole batch for both networks
    step = _step("clearvoice")
    parts = step.micro_step(noisy, clean, 1.0)
    assert parts["skipped"] == 1 and parts["pesq_failed"] == 1
    assert all(p.grad is None for m in step.modules.values() for p in m.parameters())


def test_valid_step_reports_generator_losses_and_pesq():
    step = _step(valid_pesq=True)
    for m in step.modules.values():
        m.eval()  # as the trainer does before validating
    noisy, clean = _pair(2, seed=5)
    parts = step.valid_step(noisy, clean)
    model = step.modules["model"]
    with torch.no_grad():
        loss, lparts = model.loss(noisy, clean)
    assert parts["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert set(lparts) == {"loss_ri", "loss_mag", "loss_time"} and "pesq" in parts


# ---------------------------------------------------------------------------------- PESQ pool
def test_batch_pesq_parallel_equals_serial_with_nan_for_failures():
    noisy, clean = _pair(2, seed=6)
    refs = [clean[0].numpy(), np.zeros(16000, np.float32)]
    ests = [noisy[0].numpy(), noisy[1].numpy()]
    par = batch_pesq(refs, ests, workers=2)
    ser = PesqPool(workers=0).map(refs, ests)
    assert np.isfinite(par[0]) and np.isnan(par[1])
    assert par[0] == ser[0]
    job = PesqPool(workers=0).submit(refs[:1], ests[:1])
    assert job.result()[0] == ser[0]
    with pytest.raises(ValueError, match="2 references but 1 estimates"):
        PesqPool(workers=0).submit(refs, ests[:1])


# ---------------------------------------------------------------------------------- checkpoints
def test_load_release_discriminator(tmp_path, caplog):
    sd = MetricDiscriminator(**TINY_D).state_dict()
    gen = tmp_path / "a" / "model.ckpt-3-100.pt"
    gen.parent.mkdir()
    torch.save({"model": {}}, gen)
    assert find_release_discriminator(gen) is None and load_release_discriminator(gen) is None
    # what ClearVoice's trainer writes: listed on the 2nd line of last_checkpoint
    torch.save({"discriminator": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
               gen.parent / "discriminator.ckpt-3-100.pt")
    (gen.parent / "last_checkpoint").write_text("model.ckpt-3-100.pt\ndiscriminator.ckpt-3-100.pt\n")
    got = load_release_discriminator(gen)
    assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    # what its fine-tuning reads: X.disc.pt beside X.pt
    x = tmp_path / "init.pt"
    torch.save({"model": {}}, x)
    torch.save({"discriminator": sd}, tmp_path / "init.disc.pt")
    assert find_release_discriminator(x) == tmp_path / "init.disc.pt"
    # the step's fine-tuning hook loads it, or says clearly that there is none
    step = _step(discriminator_kwargs=TINY_D)
    step.init_extra(x)
    assert all(torch.equal(step.modules["discriminator"].state_dict()[k], sd[k]) for k in sd)
    lone = tmp_path / "b" / "lone.pt"
    lone.parent.mkdir()
    torch.save({"model": {}}, lone)
    with caplog.at_level(logging.WARNING):
        step.init_extra(lone)
    assert "no discriminator found" in caplog.text and "starts from scratch" in caplog.text


def test_convert_reports_missing_and_unexpected_keys():
    sd = MossFormerGAN().state_dict()
    sd.pop("mask_decoder.prelu_out.weight")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys: \[mask_decoder.prelu_out.weight\].*unexpected keys: \[extra.weight\]"):
        MossFormerGAN.convert_clearvoice_state_dict(sd)
    dsd = MetricDiscriminator().state_dict()
    dsd.pop("sigmoid.slope")
    with pytest.raises(ValueError, match=r"missing keys: \[sigmoid.slope\]"):
        MetricDiscriminator.convert_clearvoice_state_dict(dsd)


# ---------------------------------------------------------------------------------- config / errors
def test_from_config_and_errors():
    conf = {"win_len": 400, "win_inc": 100, "fft_len": 400, "win_type": "hamming", "network_kwargs": TINY_G}
    kwargs = MossFormerGAN.config_kwargs(conf)  # every constructor keyword (self-describing checkpoints)
    assert kwargs == {**kwargs, "win_len": 400, "win_inc": 100, "fft_len": 400, "win_type": "hamming", **TINY_G}
    assert kwargs["n_head"] == 4 and kwargs["checkpoint_blocks"] is True
    model = MossFormerGAN.from_config(conf)
    assert len(model.blocks) == 1
    # resolved configs say 0 / "" for "the network's default"; inference-YAML decode keys
    other = MossFormerGAN.from_config({"win_len": 0, "win_type": "", "network_kwargs": TINY_G,
                                       "one_time_decode_length": 20})
    assert other.win_len == 400 and other.one_time_decode_length == 20.0
    with pytest.raises(ValueError, match="win_type"):
        MossFormerGAN.from_config({"win_type": "kaiser"})
    with pytest.raises(ValueError, match="network_kwargs: unknown key 'channels' for MossFormerGAN_SE_16K; allowed: "):
        MossFormerGAN.from_config({"network_kwargs": {"channels": 3}})
    with pytest.raises(ValueError, match=r"expects \(B, 2, T, 201\), got \(2, 161, 201\)"):
        model(torch.zeros(2, 161, 201))
    with pytest.raises(ValueError, match=r"enhance expects \(B, L\), got shape \(16000,\)"):
        model.enhance(torch.zeros(16000))
    with pytest.raises(ValueError, match=r"clearvoice_decode expects \(L,\), got shape \(1, 16000\)"):
        model.clearvoice_decode(np.zeros((1, 16000)))
    disc = MetricDiscriminator(**TINY_D)
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 1, F, T\), got \(2, 201, 40\)"):
        disc(torch.zeros(2, 201, 40), torch.zeros(2, 201, 40))
    with pytest.raises(ValueError, match="at least 15 frames"):
        disc(torch.zeros(1, 1, 201, 10), torch.zeros(1, 1, 201, 10))
    with pytest.raises(ValueError, match="gan_loss_mode"):
        _step("cmgan")


# ---------------------------------------------------------------------------------- memory
def test_freed_heap_is_released_by_the_training_layer_not_the_network(monkeypatch):
    """malloc_trim: after each recomputed block (hooks of the GAN step) and after each update
    (the training loop's se.allocator.release_after_step), only on the CPU with tuned malloc."""
    from se import allocator

    calls = []
    monkeypatch.setattr(allocator, "release_free_memory", lambda: calls.append(1) or True)
    noisy, clean = _pair(1, seconds=0.5, seed=7)
    monkeypatch.setattr(allocator, "_applied", None)  # malloc not tuned: nothing to release
    step = _step()
    step.micro_step(noisy, clean, 1.0)
    step.update()
    assert calls == [] and allocator.release_after_step(torch.device("cpu")) is False
    monkeypatch.setattr(allocator, "_applied", allocator.DEFAULT_TRIM_THRESHOLD)
    step = _step()
    step.micro_step(noisy, clean, 1.0)
    # after the one block's forward (its recomputation in backward stops at the last tensor
    # backward needs, before the block returns)
    assert len(calls) == 1
    with torch.no_grad():
        step.modules["model"](step.modules["model"].spectrum(noisy))  # no autograd: none
    assert len(calls) == 1
    assert allocator.release_after_step(torch.device("cuda", 0)) is False and len(calls) == 1
    assert allocator.release_after_step(torch.device("cpu")) is True and len(calls) == 2
    for h in step._release_hooks:
        h.remove()
    step.micro_step(noisy, clean, 1.0)  # the network alone never trims
    assert len(calls) == 2
