"""se.export / se.bin.export and the exported-model backends of se.bin.enhance.

Exports are slow (tens of seconds each on 2 cores): each is made once per module and shared.
Tolerance of exported vs torch: 1e-4 x max(1, max |ref|) (float32); the CLI chain on the
ClearVoice parity input must reproduce the reference decode within 2e-4 x max(1, max |ref|).
"""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from se.bin import enhance
from se.bin import export as export_cli
from se.enhance import enhance_clearvoice, enhance_signal
from se.checkpoint import file_sha256
from se.export import (DftAnalysis, DftSynthesis, FbankGraph, FrequencyFsmnOnMap, RowDepthwiseConv1d,
                       RowDepthwiseConv2d, export_friendly, export_model)
from se.features import FbankFeatures
from se.models import build_network, network_kwargs
from se.onnx_backend import load_exported
from release_checkpoints import release_checkpoint

TINY = {
    "FRCRN_SE_16K": {"channels": 8, "fsmn_hidden": 8, "lorder": 20},
    "MossFormerGAN_SE_16K": {"num_channel": 8, "num_blocks": 1, "dropout": 0.0},
    # groups of 32 frames: the 2.3 s test signal spans several attention groups
    "MossFormer2_SE_48K": {"num_blocks": 2, "width": 64, "query_key_dim": 32, "fsmn_inner": 32, "group_size": 32},
}


def _close(ours, ref, rel):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    err, bound = float(np.abs(ours - ref).max()), rel * max(1.0, float(np.abs(ref).max()))
    assert err <= bound, f"max |diff| {err:.3g} > {bound:.3g}"


def speech_like(seconds, rate, seed=0):
    from helpers import tone_pair

    return tone_pair(seconds, rate, seed)[0]


def _tiny_checkpoint(path, network):
    torch.manual_seed(0)
    conf = {"network_kwargs": TINY[network]}
    model = build_network(network, conf, kernels=False)
    torch.save({"model": model.state_dict(), "network": network, "sampling_rate": model.sampling_rate,
                "network_kwargs": network_kwargs(network, conf)}, path)
    return path


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    """network -> (checkpoint, {format: export dir}); FRCRN ONNX through the CLI."""
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for network in TINY:
        ckpt = _tiny_checkpoint(root / f"{network}.pt", network)
        dirs = {}
        for fmt in ("onnx", "torchscript"):
            d = root / f"{network}-{fmt}"
            if network == "FRCRN_SE_16K" and fmt == "onnx":
                assert export_cli.main(["--checkpoint", str(ckpt), "--format", fmt, "--out-dir", str(d)]) == 0
            else:
                export_model(ckpt, network, fmt, d)
            dirs[fmt] = d
        out[network] = (ckpt, dirs)
    return out


# ---------------------------------------------------------------------------------------------
# the export-friendly STFT, iSTFT and fbank
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("center", [True, False])
def test_dft_analysis_and_synthesis_match_torch_stft(center):
    n_fft, hop = 400, 100
    window = torch.hamming_window(n_fft, periodic=False)
    x = torch.from_numpy(speech_like(0.5, 16000)).float()[None]
    ref = torch.stft(x.double(), n_fft, hop, window=window.double(), center=center, return_complex=True)
    re, im = DftAnalysis(n_fft, hop, window, center)(x)
    _close(re, ref.real, 1e-5)
    _close(im, ref.imag, 1e-5)
    y = DftSynthesis(n_fft, hop, window)(ref.real.float(), ref.imag.float())
    want = torch.istft(ref, n_fft, hop, window=window.double(), center=False)
    _close(y, want, 1e-5)


def test_fbank_graph_matches_kaldi_features():
    feats = FbankFeatures(dither=0.0)
    x = torch.from_numpy(speech_like(0.3, 48000, seed=3) * 32768).float()[None]
    ref = feats(x.double())  # float64 reference
    ours = FbankGraph(feats)(x)
    assert ours.shape == ref.shape == (1, feats.num_frames(x.shape[1]), 180)
    _close(ours, ref, 2e-4)


# ---------------------------------------------------------------------------------------------
# the export-friendly forms of depthwise convolutions and of FRCRN's frequency FSMN
# ---------------------------------------------------------------------------------------------
def _swapped(module, x):
    """(module(x), the module after export_friendly, its output) in float64."""
    holder = torch.nn.Sequential(module.double())
    x = x.double()
    with torch.no_grad():
        ref = holder(x)
        export_friendly(holder)
        return ref, holder[0], holder(x)


def test_export_friendly_forms_compute_the_same():
    from se.models.frcrn import ComplexFsmnL1

    torch.manual_seed(0)
    nn = torch.nn
    cases = [  # (module, input, the class export_friendly gives it)
        (nn.Conv1d(6, 6, 5, padding=2, groups=6, bias=False), torch.randn(2, 6, 11), RowDepthwiseConv1d),
        (nn.Conv1d(6, 6, 4, padding=0, groups=6), torch.randn(1, 6, 9), RowDepthwiseConv1d),
        (nn.Conv2d(6, 6, (5, 1), padding=(2, 0), groups=6, bias=False), torch.randn(2, 6, 11, 1), RowDepthwiseConv2d),
        (nn.Conv2d(6, 6, (3, 1), padding=(1, 1), groups=6), torch.randn(2, 6, 7, 3), RowDepthwiseConv2d),
        (ComplexFsmnL1(4, 8, 3), torch.randn(2, 8, 9, 5), FrequencyFsmnOnMap),
        # left as they are: not depthwise, strided, a (1, K) kernel (already a row)
        (nn.Conv1d(6, 6, 3, padding=1, groups=3), torch.randn(2, 6, 11), nn.Conv1d),
        (nn.Conv1d(6, 6, 3, stride=2, groups=6), torch.randn(2, 6, 11), nn.Conv1d),
        (nn.Conv2d(6, 6, (1, 3), padding=(0, 1), groups=6), torch.randn(2, 6, 4, 7), nn.Conv2d),
        (nn.Conv2d(1, 1, 1), torch.randn(2, 1, 4, 7), nn.Conv2d),
    ]
    for module, x, cls in cases:
        ref, swapped, out = _swapped(module, x)
        assert type(swapped) is cls, (module, type(swapped))
        assert out.shape == ref.shape and float((out - ref).abs().max()) < 1e-12, module


def test_exported_frcrn_moves_no_feature_map(tiny_exports):
    """FRCRN's frequency FSMNs run on the (B, 2C, F, T) map in the export: no 4-D Transpose
    (onnxruntime's Transpose of those maps took 38% of the exported release-size FRCRN's time)."""
    import onnx

    graph = onnx.load(str(tiny_exports["FRCRN_SE_16K"][1]["onnx"] / "model.onnx")).graph
    perms = [list(a.ints) for n in graph.node if n.op_type == "Transpose" for a in n.attribute if a.name == "perm"]
    assert not [p for p in perms if len(p) == 4], perms


# ---------------------------------------------------------------------------------------------
# tiny networks: every backend against torch, both decode paths
# ---------------------------------------------------------------------------------------------
DECODES = {  # the decode paths of se.enhance, each backend against the torch model
    "segmented": lambda m, x, rate: enhance_signal(m, x, rate, rate // 4),  # cross-faded segments
    "one pass": lambda m, x, rate: enhance_signal(m, x, 10 * rate, rate),
    "clearvoice": lambda m, x, rate: enhance_clearvoice(m, x),
}


@pytest.fixture(scope="module")
def torch_decodes(tiny_exports):
    """network -> (rate, 2.3 s input, {decode path: output of the torch model}), computed on
    first use and shared by the ONNX and TorchScript tests of the network."""
    from se.checkpoint import load_network

    cache = {}

    def get(network):
        if network not in cache:
            model, _ = load_network(tiny_exports[network][0], network, kernels=False)
            rate = model.sampling_rate
            x = speech_like(2.3, rate, seed=1)
            cache[network] = rate, x, {name: run(model, x, rate) for name, run in DECODES.items()}
        return cache[network]

    return get


@pytest.mark.parametrize("network", list(TINY))
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_backends_match_torch(tiny_exports, torch_decodes, network, fmt):
    ckpt, dirs = tiny_exports[network]
    rate, x, refs = torch_decodes(network)
    runtime, info = load_exported(dirs[fmt], "onnxruntime" if fmt == "onnx" else "torch", threads=2)
    assert info["network"] == network
    meta = json.loads((dirs[fmt] / "export.json").read_text())
    assert meta["format"] == fmt and meta["sampling_rate"] == rate
    assert meta["network_kwargs"] == network_kwargs(network, {"network_kwargs": TINY[network]})
    assert meta["segmenting"]["segment_length_s"] == 10.0 and meta["checkpoint_sha256"] == file_sha256(ckpt)
    assert all(v <= 1e-4 for v in meta["check_max_rel_diff"].values())
    for name, run in DECODES.items():
        _close(run(runtime, x, rate), refs[name], 1e-4)


def test_torch_backend_on_an_onnx_export_loads_its_checkpoint(tiny_exports, tmp_path):
    ckpt, dirs = tiny_exports["FRCRN_SE_16K"]
    wav = tmp_path / "in.wav"
    sf.write(wav, speech_like(1.2, 16000), 16000, subtype="FLOAT")
    outs = {}
    for backend, source in (("torch", ["--checkpoint", str(ckpt)]),
                            ("torch", ["--model-dir", str(dirs["onnx"])]),
                            ("onnxruntime", ["--model-dir", str(dirs["onnx"]), "--threads", "1"])):
        out = tmp_path / f"out-{len(outs)}"
        assert enhance.main([*source, "--backend", backend, "--input", str(wav), "--output-dir", str(out),
                             "--output-subtype", "FLOAT"]) == 0
        outs[len(outs)] = sf.read(out / "in.wav")[0]
    np.testing.assert_array_equal(outs[0], outs[1])
    _close(outs[2], outs[0], 1e-4)


# ---------------------------------------------------------------------------------------------
# the released architecture from a release-format checkpoint: CLI chain vs the parity reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("network", list(TINY))
def test_release_export_cli_chain_reproduces_parity_reference(network, clearvoice_data, release_fill, tmp_path):
    ckpt = release_checkpoint(network, clearvoice_data, release_fill, tmp_path / "release.pt", prefix=True)
    model_dir = tmp_path / "export"
    assert export_cli.main(["--network", network, "--checkpoint", str(ckpt), "--format", "onnx",
                            "--out-dir", str(model_dir)]) == 0
    meta = json.loads((model_dir / "export.json").read_text())
    assert meta["checkpoint_format"] == "clearvoice" and len(meta["checkpoint_sha256"]) == 64
    ref = np.load(clearvoice_data / f"{network}.parity.npz")
    wav = tmp_path / "in.wav"
    sf.write(wav, ref["decode_raw_input"], meta["sampling_rate"], subtype="FLOAT")
    out = tmp_path / "out"
    assert enhance.main(["--backend", "onnxruntime", "--model-dir", str(model_dir), "--clearvoice-compat",
                         "--output-subtype", "FLOAT", "--input", str(wav), "--output-dir", str(out)]) == 0
    _close(sf.read(out / "in.wav")[0], ref["decode_output"], 2e-4)


# ---------------------------------------------------------------------------------------------
# errors: one line, non-zero, no traceback
# ---------------------------------------------------------------------------------------------
def _one_line_error(capsys, code, match):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err and "Traceback" not in "\n".join(err), err
    assert match in err[-1] and err[-1].startswith("se.bin."), err[-1]


def test_bad_inputs_are_one_line_errors(tiny_exports, tmp_path, capsys):
    ckpt, dirs = tiny_exports["FRCRN_SE_16K"]
    code = export_cli.main(["--checkpoint", str(tmp_path / "missing.pt"), "--out-dir", str(tmp_path / "x")])
    _one_line_error(capsys, code, "checkpoint not found")
    code = export_cli.main(["--checkpoint", str(ckpt), "--network", "MossFormer2_SE_48K", "--out-dir",
                            str(tmp_path / "x")])
    _one_line_error(capsys, code, "checkpoint of network FRCRN_SE_16K")
    wav = tmp_path / "in.wav"
    sf.write(wav, speech_like(0.5, 16000), 16000)
    (tmp_path / "empty").mkdir()
    code = enhance.main(["--backend", "onnxruntime", "--model-dir", str(tmp_path / "empty"), "--input", str(wav),
                         "--output-dir", str(tmp_path / "o")])
    _one_line_error(capsys, code, "no export.json")
    code = enhance.main(["--backend", "onnxruntime", "--checkpoint", str(ckpt), "--input", str(wav),
                         "--output-dir", str(tmp_path / "o")])
    _one_line_error(capsys, code, "needs --model-dir")
    code = enhance.main(["--backend", "onnxruntime", "--model-dir", str(dirs["torchscript"]), "--input", str(wav),
                         "--output-dir", str(tmp_path / "o")])
    _one_line_error(capsys, code, "needs an ONNX export")


def test_int8_quantized_export_runs(tiny_exports, tmp_path):
    ckpt, _ = tiny_exports["FRCRN_SE_16K"]
    path = export_model(ckpt, None, "onnx", tmp_path / "int8", quantize="int8")
    meta = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert path.name == meta["file"] == "model.int8.onnx" and meta["quantize"] == "int8"
    assert not (tmp_path / "int8" / "model.onnx").exists()
    import onnx

    types = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "MatMulInteger" in types or "DynamicQuantizeLinear" in types, types
    runtime, _ = load_exported(tmp_path / "int8")
    x = speech_like(1.0, 16000)
    y = enhance_signal(runtime, x, 16000 * 10, 16000)
    assert y.shape == x.shape and np.isfinite(y).all() and np.abs(y).max() > 0
