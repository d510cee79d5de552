"""Causal FRCRN (network_kwargs causal: true) and real-time streaming (se.stream,
se.bin.stream_enhance): plain per-layer reference, causality at every layer boundary,
hop-by-hop streaming equal to the offline output, release-checkpoint init, the CLI."""

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from benchmarks.bench_frcrn import _lit_bn_act, _lit_unet
from release_checkpoints import load_manifest, release_state_dict, write_release_checkpoint

from se.audio import norm_gain
from se import stream
from se.bin import stream_enhance
from se.checkpoint import init_from_checkpoint
from se.enhance import enhance_signal
from se.models import build_network
from se.models.frcrn import FRCRN
from se.stream import StreamingEnhancer, enhance_stream, hop_statistics

REPO = Path(__file__).resolve().parents[1]
TINY = {"channels": 6, "fsmn_hidden": 5, "se_reduction": 2, "lorder": 4}
HOP, WIN = 320, 640


def _causal(seed=0, **kw):
    torch.manual_seed(seed)
    model = FRCRN(**{**TINY, "causal": True, **kw})
    with torch.no_grad():  # non-trivial BN statistics, so that the eval-mode folding matters
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return model


def _signal(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.1 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
            + 0.03 * rng.standard_normal(t.size))


# ---------------------------------------------------------------------------------------------
# plain per-layer transcription of the causal network: real/imag planes (B, C, F, T, 2), four
# real convolutions per complex one, explicit past-side padding, per-tap transposed
# convolutions, per-frame SE running means (shares the U-Net wiring, the BN + activation and
# the FSMN transcription with the parity baseline of tests/benchmarks/bench_frcrn.py; the
# FSMNs are causal already)
# ---------------------------------------------------------------------------------------------
def _plain_encoder(block, x):  # (B, C, F, T, 2): pad one frame in the past, none in the future
    re, im = block.conv.conv_re, block.conv.conv_im

    def conv(layer, v):
        return F.conv2d(F.pad(v, (1, 0)), layer.weight, layer.bias, layer.stride)

    y = torch.stack([conv(re, x[..., 0]) - conv(im, x[..., 1]), conv(re, x[..., 1]) + conv(im, x[..., 0])], -1)
    return _lit_bn_act(block, y)


def _plain_decoder(block, x):  # out[t] = W[.., 0] in[t] + W[.., 1] in[t - 1]
    re, im = block.transconv.tconv_re, block.transconv.tconv_im

    def tconv(layer, v):
        out = F.conv_transpose2d(v, layer.weight[..., :1], layer.bias, (2, 1))
        past = F.conv_transpose2d(v, layer.weight[..., 1:], None, (2, 1))
        return out + F.pad(past, (1, 0))[..., :-1]

    y = torch.stack([tconv(re, x[..., 0]) - tconv(im, x[..., 1]), tconv(re, x[..., 1]) + tconv(im, x[..., 0])], -1)
    return _lit_bn_act(block, y)


def _plain_se(mod, x, decay):  # (B, C, F, T, 2), gate of frame t from frames <= t
    frame_means = x.mean(2)  # (B, C, T, 2)
    num, den, gates = 0.0, 0.0, []
    for t in range(x.shape[3]):
        num = num * decay + frame_means[:, :, t]
        den = den * decay + 1.0
        a_r, a_i = (num / den)[..., 0], (num / den)[..., 1]
        gates.append(torch.stack([mod.fc_r(a_r) - mod.fc_i(a_i), mod.fc_r(a_i) + mod.fc_i(a_r)], -1))
    return x * torch.stack(gates, 2)[:, :, None]  # (B, C, F, T, 2)


def _plain_unet(u, x, decay):
    return _lit_unet(u, x, _plain_encoder, _plain_decoder, lambda mod, h: _plain_se(mod, h, decay))


def _plain_forward(model, x):
    spec = F.conv1d(x.unsqueeze(1), model.stft.weight, stride=model.win_inc)  # (B, 2F, T)
    bins = spec.shape[1] // 2
    s = torch.stack([spec[:, :bins], spec[:, bins:]], -1).unsqueeze(1)  # (B, 1, F, T, 2)
    u1 = _plain_unet(model.unet, s, model.se_time_decay)
    u2 = _plain_unet(model.unet2, u1, model.se_time_decay)
    m = torch.tanh(u2) + torch.tanh(u1)
    est = torch.cat([s[..., 0] * m[..., 0] - s[..., 1] * m[..., 1],
                     s[..., 0] * m[..., 1] + s[..., 1] * m[..., 0]], 2).squeeze(1)  # (B, 2F, T)
    return est


@pytest.mark.parametrize("mode,tau", [("eval", 0.0), ("train", 0.0), ("eval", 0.3)])
def test_causal_forward_matches_plain_per_layer_float64(mode, tau):
    model = _causal(seed=1, se_time_constant=tau).double().train(mode == "train")
    plain = _causal(seed=1, se_time_constant=tau).double().train(mode == "train")
    x = torch.from_numpy(np.stack([_signal(0.3, 1), _signal(0.3, 2)]))
    with torch.no_grad():
        est, wav, _ = model(x)
        ref = _plain_forward(plain, x)
    assert est.shape == ref.shape == (2, 642, (4800 - WIN) // HOP + 1)
    assert float((est - ref).abs().max()) <= 1e-10 * float(ref.abs().max())
    assert wav.shape == (2, 4800)


def test_se_time_constant_needs_causal_and_changes_the_output():
    with pytest.raises(ValueError, match="needs causal"):
        FRCRN(**TINY, se_time_constant=0.5)
    x = torch.from_numpy(_signal(1.0))[None].float()
    with torch.no_grad():
        a = _causal().eval()(x)[1]
        b = _causal(se_time_constant=0.1).eval()(x)[1]
    assert float((a - b).abs().max()) > 1e-4  # exponential vs cumulative mean


# ---------------------------------------------------------------------------------------------
# causality: changing the input from sample t on changes no frame that ends before t, at every
# layer boundary, and no output sample before t - latency + 1
# ---------------------------------------------------------------------------------------------
def _layer_outputs(model, x):
    outs, hooks = {}, []
    for name, mod in model.named_modules():
        # the reference forward's maps are (B, C, F, T); not the SE layers' MLPs (their 4-D maps
        # are (B, T, 2, C)) nor the FSMNs' memory convs (frames in the batch axis)
        if name and ".fc_" not in name and ".fsmn_re_" not in name and ".fsmn_im_" not in name:
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: outs.setdefault(name, o) if torch.is_tensor(o) and o.dim() == 4 else None))
    with torch.no_grad():
        wav = model(x)[1]
    for h in hooks:
        h.remove()
    return outs, wav


def _first_changed_frame(a, b):
    diff = (a - b).abs().amax(dim=(0, 1, 2))  # per frame (B, C, F, T)
    changed = torch.nonzero(diff > 1e-12)
    return int(changed[0]) if len(changed) else None


def test_causal_network_is_causal_at_every_layer():
    model = _causal(seed=2).double().eval()
    x = torch.from_numpy(_signal(0.6, 3))[None]
    base, wav = _layer_outputs(model, x)
    assert len(base) >= 60  # encoders, decoders, FSMNs, SE layers, U-Nets, 1x1 convs
    rng = np.random.default_rng(0)
    for t in rng.integers(WIN, x.shape[1] - WIN, 3):
        y = x.clone()
        y[:, t:] = torch.from_numpy(rng.standard_normal(x.shape[1] - t) * 0.1)
        outs, wav2 = _layer_outputs(model, y)
        last_safe = (t - WIN) // HOP  # frame j covers samples j*HOP .. j*HOP + WIN - 1 < t
        for name, out in base.items():
            first = _first_changed_frame(out, outs[name])
            assert first is None or first > last_safe, f"{name}: frame {first} changed (t = {t})"
        assert _first_changed_frame(base["unet.encoder0"], outs["unet.encoder0"]) == last_safe + 1
        # the full output: no sample before t - latency + 1 changes; the first hop after does
        first = int(torch.nonzero((wav - wav2).abs()[0] > 1e-12)[0])
        assert t - WIN < first <= -(-(t - WIN + 1) // HOP) * HOP + 1


def test_released_network_is_not_causal():  # the check above can fail: the default looks ahead
    torch.manual_seed(2)
    model = FRCRN(**TINY).double().eval()
    x = torch.from_numpy(_signal(0.6, 3))[None]
    base, wav = _layer_outputs(model, x)
    y = x.clone()
    y[:, 6000:] = 0.0
    outs, wav2 = _layer_outputs(model, y)
    assert int(torch.nonzero((wav - wav2).abs()[0] > 1e-12)[0]) < 6000 - WIN


# ---------------------------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------------------------
def _chunks(length, rng):
    """Random chunk sizes from 1 sample to 1 s (log-uniform, so short ones occur often)."""
    sizes = []
    while sum(sizes) < length:
        sizes.append(1 if rng.random() < 0.15 else int(np.exp(rng.uniform(0, np.log(16000)))))
    return sizes


@pytest.mark.parametrize("dtype,tau,tol", [(torch.float32, 0.0, 1e-5), (torch.float64, 0.2, 1e-11)])
def test_streaming_random_chunks_equal_offline(dtype, tau, tol, monkeypatch):
    if dtype == torch.float64:  # the frequency-FSMN memory of large maps (one multiply-add per tap)
        monkeypatch.setattr(stream, "_SMALL_MAP", 0)
    model = _causal(seed=3, lorder=20, se_time_constant=tau).to(dtype).eval()
    x = _signal(1.5, 4)
    offline = model.enhance(torch.from_numpy(x).to(dtype)[None])[0].numpy()
    enhancer = StreamingEnhancer(model)
    assert enhancer.latency == WIN and enhancer.latency_ms == 40.0
    rng = np.random.default_rng(5)
    for _ in range(2 if dtype == torch.float32 else 1):  # a second pass: flush() reset every state
        outs, pos = [], 0
        for size in _chunks(len(x), rng):
            out = enhancer.process(x[pos : pos + size])
            pos = min(pos + size, len(x))
            # output sample n is returned once input sample n + latency - 1 has arrived
            done = sum(len(o) for o in outs) + len(out)
            assert done >= max(0, pos - enhancer.latency + 1) - HOP and done <= pos
            outs.append(out)
        y = np.concatenate(outs + [enhancer.flush()])
        assert y.shape == x.shape
        assert np.abs(y - offline).max() <= tol
    assert len(enhancer.hop_seconds) > len(x) // HOP


@pytest.mark.parametrize("small_map", [0, 1 << 30])  # one multiply-add per tap; one unfolded product
def test_frequency_fsmn_memory_paths_equal_a_direct_sum(small_map, monkeypatch):
    monkeypatch.setattr(stream, "_SMALL_MAP", small_map)
    gen = torch.Generator().manual_seed(0)
    lorder = 5
    taps = torch.randn(lorder, 2, 1, 6, generator=gen, dtype=torch.float64)
    for steps in (1, 2, 3, 7, 25):
        p = torch.randn(2, steps, 6, generator=gen, dtype=torch.float64)
        ref = torch.zeros_like(p)
        for s in range(steps):
            for k in range(lorder):
                if s - (lorder - 1 - k) >= 0:
                    ref[:, s] += taps[k, :, 0] * p[:, s - (lorder - 1 - k)]
        assert torch.allclose(stream._fir(p, taps), ref, rtol=0, atol=1e-12)


def test_se_block_weights_give_the_layer_gate():
    from se.models.frcrn import ComplexSELayer

    torch.manual_seed(0)
    layer = ComplexSELayer(8, 2).double()
    pooled = torch.randn(16, dtype=torch.float64)
    w1, b1, w2, b2, combine = stream._se_weights(layer)
    gate = combine @ torch.sigmoid(b2 + w2 @ torch.relu(b1 + w1 @ pooled))
    assert torch.allclose(gate, layer.gate(pooled), rtol=0, atol=1e-12)


def test_enhance_of_a_causal_model_streams_and_keeps_the_level():
    model = _causal(seed=4).eval()
    x = _signal(1.2, 6) * 0.05
    y = enhance_signal(model, x, segment=8000, overlap=800)  # segments are ignored: streamed
    gain = norm_gain(x)
    ref = enhance_stream(model, x * gain) / gain
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)
    offline = model.enhance(torch.from_numpy(x * gain).float()[None])[0].numpy() / gain
    assert np.abs(y - offline).max() <= 1e-5 / gain


def test_streaming_refuses_non_causal_or_training_models():
    with pytest.raises(ValueError, match="causal"):
        StreamingEnhancer(FRCRN(**TINY).eval())
    with pytest.raises(ValueError, match="eval mode"):
        StreamingEnhancer(_causal().train())


def test_release_checkpoint_initialises_a_causal_model(clearvoice_data, release_fill, tmp_path):
    manifest = load_manifest(clearvoice_data, "FRCRN_SE_16K")
    ours = FRCRN().state_dict()
    constants = {k: ours[k] for k in ("stft.weight", "istft.weight", "istft.window", "istft.enframe")}
    release = release_state_dict(manifest, constants, release_fill)
    path = tmp_path / "FRCRN_SE_16K.pt"
    write_release_checkpoint(path, release, module_prefix=True)
    model = build_network("FRCRN_SE_16K", {"network_kwargs": {"causal": True}})
    assert model.causal
    counts = init_from_checkpoint(model, path, 0.9, print_fn=lambda *_: None)
    assert counts["fraction"] == 1.0 and counts["mismatched"] == counts["missing"] == 0
    sd = model.state_dict()
    for key in ("unet.encoder3.conv.conv_re.weight", "unet2.decoder5.transconv.tconv_im.weight",
                "unet.se_layer_dec2.fc_r.0.weight"):
        alias = key.replace("encoder3", "encoders.3").replace("decoder5", "decoders.5")
        assert torch.equal(sd[key], release.get(key, release.get(alias)))


# ---------------------------------------------------------------------------------------------
# the command-line tool
# ---------------------------------------------------------------------------------------------
def _checkpoint(path: Path, model: FRCRN, kwargs: dict) -> Path:
    torch.save({"network": "FRCRN_SE_16K", "network_kwargs": kwargs, "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def causal_ckpt(tmp_path_factory):
    kwargs = {**TINY, "causal": True}
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "causal.pt", _causal(seed=7), kwargs), kwargs


def test_cli_file_and_stdin_pipe(causal_ckpt, tmp_path, caplog):
    ckpt, _ = causal_ckpt
    x = np.round(_signal(1.1, 8) * 32767 * 0.5) / 32768
    sf.write(tmp_path / "in.wav", x, 16000, subtype="PCM_16")
    with caplog.at_level(logging.INFO):
        rc = stream_enhance.main(["--checkpoint", str(ckpt), "--input", str(tmp_path / "in.wav"),
                                  "--output", str(tmp_path / "out.wav"), "--chunk-ms", "7"])
    assert rc == 0
    text = caplog.text
    assert "algorithmic latency 640 samples (40.0 ms)" in text
    assert "compute per hop mean" in text and "p99" in text and "worst" in text and "RTF" in text
    y, rate = sf.read(tmp_path / "out.wav")
    assert rate == 16000 and y.shape == x.shape
    model = FRCRN(**{**TINY, "causal": True})
    model.load_state_dict(torch.load(ckpt)["model"])
    model.eval()
    gain = norm_gain(x)
    ref = enhance_stream(model, x * gain) / gain
    assert np.abs(y - ref).max() <= 1.5 / 32768  # 16-bit output

    # raw 16-bit PCM through a pipe: stdin -> stdout, same samples at gain 0 dB
    pcm = np.round(x * 32768).astype("<i2")
    out = subprocess.run([sys.executable, "-m", "se.bin.stream_enhance", "--checkpoint", str(ckpt),
                          "--input", "-", "--output", "-", "--chunk-ms", "13"],
                         input=pcm.tobytes(), capture_output=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    got = np.frombuffer(out.stdout, dtype="<i2")
    assert got.size == pcm.size
    ref0 = np.clip(np.round(enhance_stream(model, pcm / 32768.0) * 32768), -32768, 32767)
    assert np.abs(got - ref0).max() <= 1
    assert b"compute per hop mean" in out.stderr and b"Traceback" not in out.stderr


def test_cli_errors_are_one_line(causal_ckpt, tmp_path, capsys):
    ckpt, _ = causal_ckpt
    released = _checkpoint(tmp_path / "released.pt", FRCRN(**TINY), dict(TINY))
    sf.write(tmp_path / "in.wav", _signal(0.5), 16000)
    cases = [
        (["--checkpoint", str(released), "--input", str(tmp_path / "in.wav"), "--output", str(tmp_path / "o.wav")],
         "needs a causal FRCRN"),
        (["--checkpoint", str(ckpt), "--input", str(tmp_path / "missing.wav"), "--output", str(tmp_path / "o.wav")],
         "missing.wav"),
        (["--checkpoint", str(ckpt), "--input", "-", "--output", "-", "--rate", "8000"], "--rate 8000"),
        (["--checkpoint", str(ckpt), "--input", "-", "--output", str(tmp_path / "o.wav")], "goes with --output -"),
        (["--checkpoint", str(ckpt), "--input", str(tmp_path / "in.wav"), "--output", str(tmp_path / "in.wav")],
         "overwrite"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert stream_enhance.main(argv) == 1
        last = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's info line
        assert last.startswith("se.bin.stream_enhance: error: ") and message in last, last
    assert not (tmp_path / "o.wav").exists()


def test_hop_statistics_and_late_hop_warning(caplog):
    enhancer = StreamingEnhancer(_causal().eval())
    monitor = stream_enhance.HopMonitor(enhancer)
    enhancer.hop_seconds[:] = [0.001] * 98 + [0.005, 0.030]  # one hop slower than 20 ms
    with caplog.at_level(logging.INFO):
        monitor.check()
        stats = monitor.report()
    assert stats["hops"] == 100 and stats["late_hops"] == 1
    assert stats["mean_ms"] == pytest.approx(1.33) and stats["worst_ms"] == pytest.approx(30.0)
    assert stats["p99_ms"] == pytest.approx(5.25)  # numpy linear interpolation between 5 and 30 ms
    assert stats["rtf"] == pytest.approx(1.33 / 20)
    assert "hop 99 took 30.0 ms, longer than real time" in caplog.text
    assert hop_statistics([], 0.02) == {"hops": 0}


# ---------------------------------------------------------------------------------------------
# RESULTS.md: another experiment's row beside this one (causal vs offline)
# ---------------------------------------------------------------------------------------------
def _scores(d: Path, rows: dict) -> None:
    import json

    from se.results import scores_tsv, summarize

    d.mkdir(parents=True)
    columns = ["si_sdr"]
    (d / "scores.tsv").write_text(scores_tsv(columns, rows))
    (d / "summary.json").write_text(json.dumps({"n_utts": len(rows), "metrics": summarize(columns, rows)}))


def test_make_results_compare_rows(tmp_path, capsys):
    from se.bin import make_results

    exp, other = tmp_path / "causal", tmp_path / "offline"
    _scores(exp / "scores/test/noisy", {"a": {"si_sdr": 1.0}, "b": {"si_sdr": 3.0}})
    _scores(exp / "scores/test/enhanced", {"a": {"si_sdr": 5.0}, "b": {"si_sdr": 7.0}})
    _scores(other / "scores/test/enhanced", {"a": {"si_sdr": 6.0}, "b": {"si_sdr": 9.0}})
    assert make_results.main(["--exp-dir", str(exp), "--compare", f"offline={other / 'scores'}"]) == 0
    table = [line for line in (exp / "RESULTS.md").read_text().splitlines() if line.startswith("| ")]
    assert table[2:] == ["| noisy (input) | 2 | 2.000 |", "| enhanced | 2 | 6.000 |",
                         "| enhanced: offline | 2 | 7.500 |", "| difference | | +4.000 |"]
    _scores(tmp_path / "fewer/scores/test/enhanced", {"a": {"si_sdr": 6.0}})
    for spec, message in ((f"{other / 'scores'}", "expected LABEL=SCORES_ROOT"),
                          (f"x={tmp_path / 'fewer/scores'}", "not the same utterances"),
                          (f"x={tmp_path / 'none'}", "summary.json: not found")):
        assert make_results.main(["--exp-dir", str(exp), "--compare", spec]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
