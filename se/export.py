"""Export a network to ONNX or TorchScript for deployment: waveform in, waveform out.

    export_model("exp/frcrn", "FRCRN_SE_16K", "onnx", "deploy/frcrn")  # -> deploy/frcrn/model.onnx

What is exported is each network's *waveform step*, the one function every decode path of
se.enhance calls (normalisation, padding and segmenting stay in Python and are shared by
every backend, see se.onnx_backend):

====================  =============================================  ==========================
network               exported function (B, L) -> (B, L')            replaces, in the runtime
====================  =============================================  ==========================
FRCRN_SE_16K          conv-STFT, both U-Nets, mask, conv-iSTFT        ``forward(x)[1]``
MossFormerGAN_SE_16K  centred STFT, compression, network, uncentred   ``waveform(x)``
                      iSTFT: L' = (L // hop) * hop + fft_len
MossFormer2_SE_48K    Kaldi fbank + deltas, STFT, mask, iSTFT of the  ``_mask_wave(x, 0)``
                      frames: L' = fft_len + hop * (S - 1)
====================  =============================================  ==========================

The network is built with its plain reference forward (kernels=False: no speed kernels, see
se.models.kernels), with a few submodules swapped for forms that compute the same function and
that onnxruntime runs faster or more accurately (:func:`export_friendly`). ONNX has no complex
tensors and no fbank, so the STFT, iSTFT and fbank of MossFormerGAN and MossFormer2 are written
here as fixed convolutions with the same numbers (:class:`DftAnalysis`, :class:`DftSynthesis`,
:class:`FbankGraph`); FRCRN's STFT is a convolution already. The export is checked:
onnx.checker, then the exported file is run on two signals of other shapes than the traced one
and compared with the torch step (max difference written to export.json).

Out dir: ``model.onnx`` (or ``model.int8.onnx`` with ``quantize='int8'``, dynamic int8
weights) or ``model.pt`` (TorchScript), and ``export.json``: network, rate, kwargs, the
normalisation and decode settings, format, versions, the source checkpoint and its sha256.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from se.atomic import atomic_write_text
from se.cli import UserError
from se.models.frcrn import ComplexFsmnL1

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
QUANTIZE = ("int8",)
OPSET = 17
EXPORT_JSON = "export.json"
TRACE_SECONDS = 0.5  # the test signal (B=2) the export traces
CHECKS = ((2, 1.0), (1, 1.37))  # (batch, seconds) of the test signals run after it: other shapes


class ExportError(UserError, ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# STFT, iSTFT and fbank as fixed convolutions (torch.stft / istft semantics, real tensors)
# ---------------------------------------------------------------------------------------------
def _padded_window(window: torch.Tensor, n_fft: int) -> torch.Tensor:
    """torch.stft's window placement: a shorter window is centred in n_fft samples (float64)."""
    left = (n_fft - window.shape[0]) // 2
    return F.pad(window.double(), (left, n_fft - window.shape[0] - left))


class DftAnalysis(nn.Module):
    """torch.stft(x, n_fft, hop, window, center, onesided) as one conv1d: (B, L) -> real, imag
    (B, F, T), F = n_fft // 2 + 1; ``center`` pads n_fft // 2 samples by reflection."""

    def __init__(self, n_fft: int, hop: int, window: torch.Tensor, center: bool):
        super().__init__()
        n, k = np.arange(n_fft), np.arange(n_fft // 2 + 1)
        angle = 2 * np.pi * np.outer(k, n) / n_fft  # (F, n_fft)
        win = _padded_window(window, n_fft).numpy()
        kernel = np.concatenate([np.cos(angle), -np.sin(angle)]) * win  # (2F, n_fft)
        self.register_buffer("kernel", torch.from_numpy(kernel[:, None, :]).float())
        self.hop, self.center, self.pad = hop, center, n_fft // 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.unsqueeze(1)  # (B, 1, L)
        if self.center:
            h = F.pad(h, (self.pad, self.pad), mode="reflect")
        spec = F.conv1d(h, self.kernel, stride=self.hop)  # (B, 2F, T)
        bins = spec.shape[1] // 2
        return spec[:, :bins], spec[:, bins:]


class DftSynthesis(nn.Module):
    """torch.istft(..., center=False) of onesided real, imag (B, F, T): windowed inverse DFT
    overlap-added by a transposed conv, divided by the overlap-added squared window.
    -> (B, (T - 1) * hop + n_fft). As irfft, the imaginary parts of bins 0 and n_fft / 2 are
    ignored."""

    def __init__(self, n_fft: int, hop: int, window: torch.Tensor):
        super().__init__()
        n, k = np.arange(n_fft), np.arange(n_fft // 2 + 1)
        weight = np.full(len(k), 2.0)
        weight[0] = 1.0
        if n_fft % 2 == 0:
            weight[-1] = 1.0
        angle = 2 * np.pi * np.outer(k, n) / n_fft  # (F, n_fft)
        win = _padded_window(window, n_fft).numpy()
        kernel = np.concatenate([np.cos(angle), -np.sin(angle)]) * np.tile(weight, 2)[:, None] / n_fft * win
        self.register_buffer("kernel", torch.from_numpy(kernel[:, None, :]).float())  # (2F, 1, n_fft)
        self.register_buffer("window_sq", torch.from_numpy(win[None, None, :] ** 2).float())
        self.hop = hop

    def forward(self, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose1d(torch.cat([real, imag], 1), self.kernel, stride=self.hop)  # (B, 1, L')
        ones = torch.ones_like(real[:1, :1])  # (1, 1, T)
        envelope = F.conv_transpose1d(ones, self.window_sq, stride=self.hop)  # (1, 1, L')
        return (y / envelope).squeeze(1)


class FbankGraph(nn.Module):
    """se.features.FbankFeatures (dither 0) as fixed convolutions: (B, L) -> (B, S, 3M).

    Per frame, DC removal, pre-emphasis (x[-1] := x[0]), window and the zero-padded DFT are one
    linear map of the frame, so they are one conv1d (stride = hop) with that map's rows; then
    power, mel bank, log floor and the regression deltas as se.features computes them.
    """

    def __init__(self, features):
        super().__init__()
        from se.features import FLT_EPSILON, PREEMPHASIS, _window

        win, n_fft = features.win_len, features.n_fft
        frame = np.eye(win) - 1.0 / win  # remove_dc_offset: (win, win) acting on column frames
        emph = np.eye(win) - PREEMPHASIS * np.eye(win, k=-1)
        emph[0, 0] = 1.0 - PREEMPHASIS  # x[-1] := x[0]
        window = _window(features.win_type, win, torch.float64).numpy()
        k, n = np.arange(n_fft // 2 + 1), np.arange(win)
        angle = 2 * np.pi * np.outer(k, n) / n_fft  # (F, win): the zero padding adds nothing
        dft = np.concatenate([np.cos(angle), -np.sin(angle)])  # (2F, win)
        kernel = dft @ np.diag(window) @ emph @ frame  # (2F, win)
        self.register_buffer("kernel", torch.from_numpy(kernel[:, None, :]).float())
        banks = features._constants(torch.float32, torch.device("cpu"))[1]  # (F, M)
        self.register_buffer("banks", banks.clone())
        self.hop, self.floor = features.win_inc, FLT_EPSILON

    @staticmethod
    def deltas(x: torch.Tensor) -> torch.Tensor:
        """torchaudio compute_deltas (window 5, replicate padding) along the last axis."""
        padded = F.pad(x, (2, 2), mode="replicate")
        length = x.shape[-1]
        return (2 * (padded[..., 4:4 + length] - padded[..., :length])
                + (padded[..., 3:3 + length] - padded[..., 1:1 + length])) / 10.0

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = F.conv1d(wave.unsqueeze(1), self.kernel, stride=self.hop)  # (B, 2F, S)
        bins = spec.shape[1] // 2
        power = spec[:, :bins] ** 2 + spec[:, bins:] ** 2  # (B, F, S)
        fbank = torch.clamp(torch.matmul(power.transpose(1, 2), self.banks), min=self.floor).log()  # (B, S, M)
        fbank = fbank.transpose(1, 2)  # (B, M, S)
        delta = self.deltas(fbank)
        return torch.cat((fbank, delta, self.deltas(delta)), 1).transpose(1, 2)  # (B, S, 3M)


class InstanceNorm(nn.Module):
    """nn.InstanceNorm2d (affine, no running stats) with its statistics summed in float64.

    Swapped in for the export only (same parameters): onnxruntime sums a float32 mean over the
    T x F plane (1e5 values) far less accurately than torch (errors up to 5e-4 of a unit after
    the norm, in MossFormerGAN's dense encoder, which its ClearVoice decode path amplified past
    the tolerance); in float64 the exported norm agrees with torch's to float32 rounding.
    """

    def __init__(self, norm: nn.InstanceNorm2d):
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, F)
        x64 = x.double()
        centred = x64 - x64.mean((2, 3), keepdim=True)
        var = (centred * centred).mean((2, 3), keepdim=True)
        y = (centred / torch.sqrt(var + self.eps)).to(x.dtype)
        return y * self.weight[:, None, None] + self.bias[:, None, None]


class RowDepthwiseConv1d(nn.Conv1d):
    """A depthwise nn.Conv1d computed as a 2-D convolution of a (B, C, 1, S) row with a (1, K)
    kernel: the same numbers, and onnxruntime's kernel for that form is 2.8x faster than for the
    1-D one (C = 2048, K = 17, 2 threads). Swapped in for the export by changing the class, so
    the parameters and attributes stay those of the module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, S)
        y = F.conv2d(x.unsqueeze(2), self.weight.unsqueeze(2), self.bias, padding=(0, self.padding[0]),
                     groups=self.groups)
        return y.squeeze(2)


class RowDepthwiseConv2d(nn.Conv2d):
    """A depthwise nn.Conv2d with a (K, 1) kernel along the height of a (B, C, S, 1) map (the
    FSMN memories), computed along the width of the transposed (B, C, 1, S) map instead: the
    same numbers, faster in onnxruntime (see RowDepthwiseConv1d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, S, W)
        row = x.squeeze(3).unsqueeze(2) if x.shape[3] == 1 else x.transpose(2, 3)  # (B, C, W, S)
        y = F.conv2d(row, self.weight.squeeze(3).unsqueeze(2), self.bias,  # (C, 1, 1, K)
                     padding=(self.padding[1], self.padding[0]), groups=self.groups)
        return y.squeeze(2).unsqueeze(3) if x.shape[3] == 1 else y.transpose(2, 3)


def _fsmn_on_map(fsmn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """FRCRN's UniDeepFsmn with its sequence along F of a (B, C, F, T) map, without moving it:
    the linear layers as 1x1 convolutions, the causal memory as a (K, 1) depthwise one."""
    hidden = F.relu(F.conv2d(x, fsmn.linear.weight[:, :, None, None], fsmn.linear.bias))
    p = F.conv2d(hidden, fsmn.project.weight[:, :, None, None])  # (B, C, F, T)
    taps = fsmn.conv1.kernel_size[0]
    memory = F.conv2d(F.pad(p, (0, 0, taps - 1, 0)), fsmn.conv1.weight, groups=fsmn.conv1.groups)
    return x + (p + memory)


class FrequencyFsmnOnMap(ComplexFsmnL1):
    """FRCRN's frequency FSMN (ComplexFsmnL1) computed on the (B, 2C, F, T) map itself: the same
    numbers without the two (B, 2C, F, T) <-> (B T, F, 2C) permutations, which onnxruntime's
    Transpose runs at well under 1 GB/s (they were 38% of the exported FRCRN's time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2C, F, T)
        x_r, x_i = x.chunk(2, 1)
        real = _fsmn_on_map(self.fsmn_re_L1, x_r) - _fsmn_on_map(self.fsmn_im_L1, x_i)
        imag = _fsmn_on_map(self.fsmn_re_L1, x_i) + _fsmn_on_map(self.fsmn_im_L1, x_r)
        return torch.cat([real, imag], 1)


def _plain_depthwise(conv: nn.Module, dims: int) -> bool:
    """An nn.ConvNd with groups == channels > 1, stride and dilation 1, zero padding and more
    than one tap along its first axis."""
    return (conv.groups == conv.in_channels == conv.out_channels > 1 and conv.kernel_size[0] > 1
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.stride == (1,) * dims and conv.dilation == (1,) * dims)


def export_friendly(module: nn.Module) -> nn.Module:
    """Replaces (in place) the submodules whose ONNX form is less accurate (InstanceNorm) or
    slower in onnxruntime (FRCRN's frequency FSMN: FrequencyFsmnOnMap; depthwise convolutions
    along a sequence: RowDepthwiseConv1d/2d) by forms that compute the same function."""
    for name, child in module.named_children():
        if type(child) is ComplexFsmnL1:
            child.__class__ = FrequencyFsmnOnMap
        elif isinstance(child, nn.InstanceNorm2d) and child.affine and not child.track_running_stats:
            setattr(module, name, InstanceNorm(child))
        elif type(child) is nn.Conv1d and _plain_depthwise(child, 1):
            child.__class__ = RowDepthwiseConv1d
        elif type(child) is nn.Conv2d and _plain_depthwise(child, 2) and child.kernel_size[1] == 1:
            child.__class__ = RowDepthwiseConv2d
        else:
            export_friendly(child)
    return module


# ---------------------------------------------------------------------------------------------
# the exported waveform steps
# ---------------------------------------------------------------------------------------------
class FrcrnStep(nn.Module):
    """FRCRN: (B, L) normalised -> (B, (T - 1) * hop + win_len), ``model(x)[1]``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[1]


class GanStep(nn.Module):
    """MossFormerGAN ``waveform``: centred STFT -> |z|^0.3 compression -> network ->
    decompression -> uncentred iSTFT. (B, L) scaled by c -> (B, (L // hop) * hop + fft_len)."""

    def __init__(self, model):
        super().__init__()
        from se.models.mossformer_gan import COMPRESS

        self.model, self.compress = model, COMPRESS
        self.stft = DftAnalysis(model.fft_len, model.win_inc, model.window, center=True)
        self.istft = DftSynthesis(model.fft_len, model.win_inc, model.window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        re, im = self.stft(x)  # (B, F, T)
        mag = torch.sqrt(re * re + im * im)
        # |z|^0.3 (cos, sin)(angle z) = z |z|^-0.7; z = 0 maps to 0
        scale = torch.where(mag > 0, mag.pow(self.compress) / torch.clamp(mag, min=1e-30), torch.zeros_like(mag))
        spec = torch.stack((re * scale, im * scale), 1).transpose(2, 3)  # (B, 2, T, F)
        real, imag = self.model(spec)  # (B, 1, T, F) each
        real, imag = real.squeeze(1).transpose(1, 2), imag.squeeze(1).transpose(1, 2)  # (B, F, T)
        scale = torch.sqrt(real * real + imag * imag).pow(1.0 / self.compress - 1.0)  # |w|^(1/0.3 - 1)
        return self.istft(real * scale, imag * scale)


class Mf2Step(nn.Module):
    """MossFormer2 ``_mask_wave`` without dither: (B, L) x 32768 -> fbank ‖ Δ ‖ ΔΔ -> mask ->
    masked STFT -> iSTFT of the frames, (B, fft_len + hop * (S - 1)) (the runtime pads to L)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.fbank = FbankGraph(model.features)
        self.stft = DftAnalysis(model.fft_len, model.win_inc, model.stft_window, center=False)
        self.istft = DftSynthesis(model.fft_len, model.win_inc, model.stft_window)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        mask = self.model(self.fbank(wave))[-1].transpose(1, 2)  # (B, F, S)
        re, im = self.stft(wave)  # (B, F, S)
        return self.istft(re * mask, im * mask)


STEPS = {"FRCRN_SE_16K": FrcrnStep, "MossFormerGAN_SE_16K": GanStep, "MossFormer2_SE_48K": Mf2Step}


def step_module(model, network: str) -> nn.Module:
    return STEPS[network](model).eval()


def check_input(network: str, rate: int, seconds: float = TRACE_SECONDS, batch: int = 2) -> torch.Tensor:
    """A deterministic speech-like test signal (B <= 2) of ``seconds``, in the step's scale."""
    from se.features import MAX_WAV_VALUE

    x = _test_signal(int(seconds * rate), rate)[:batch]
    return x * (MAX_WAV_VALUE if network == "MossFormer2_SE_48K" else 1.0)


def _test_signal(n: int, rate: int) -> torch.Tensor:
    t = np.arange(n) / rate
    rng = np.random.default_rng(n)
    out = []
    for f0 in (120.0, 210.0):
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))) / rate
        x = sum(np.sin(h * phase) / h for h in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
        out.append(0.1 * x + 0.02 * rng.standard_normal(n))
    return torch.from_numpy(np.stack(out)).float()


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def _network_kwargs(file: Path, info: dict) -> dict:
    if info["format"] != "ours":
        return {}  # release files hold the released architecture
    from se.checkpoint import torch_load

    return dict(torch_load(file).get("network_kwargs") or {})


def _export_onnx(step: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python ints taken from shapes
        torch.onnx.export(step, (x,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch", 1: "samples"},
                                        "output": {0: "batch", 1: "out_samples"}})
    import onnx

    onnx.checker.check_model(str(path))


def _export_torchscript(step: nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(step, (x,), check_trace=False)
    traced.save(str(path))


def quantize_int8(path: Path, out: Path) -> None:
    """se.bin.export's --quantize int8: dynamic int8 (QInt8, per-tensor) weights of MatMul/Gemm.

    Matrix products only: the fixed STFT / iSTFT / fbank convolutions and the networks' convs
    stay float32. Measured alternatives (tests/benchmarks/bench_ort_ab.py, FRCRN release size,
    10 s, 2 threads): also Conv (ConvInteger) ran 5x slower than this recipe with less fidelity
    (33.7 vs 48.6 dB SI-SDR to fp32); quant_pre_process first gave no clear speed-up (45.9 dB);
    per_channel ran at the same speed (52.5 dB).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # onnxruntime.quantization logs every tensor at INFO
    try:
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)


def decode_settings(model) -> dict:
    """What the shared decode code (se.enhance) reads from the network, for export.json."""
    keys = ("win_len", "win_inc", "fft_len", "one_time_decode_length", "decode_window")
    return {k: getattr(model, k) for k in keys if isinstance(getattr(model, k, None), (int, float))}


def unsupported_reason(model) -> str | None:
    """Why the network ``model`` cannot be exported yet (None: it can)."""
    if model.causal:
        return "a causal (streaming) FRCRN, whose export is not supported yet (stream it with se.bin.stream_enhance)"
    return None


def export_model(checkpoint, network: str | None, fmt: str, out_dir, quantize: str | None = None) -> Path:
    """Exports ``checkpoint`` (ours, averaged or a ClearVoice release file; an experiment dir
    takes its best checkpoint) to ``out_dir``; returns the path of the exported model file.

    ``network`` is needed for release files and checked against our checkpoints.
    """
    from se.checkpoint import file_sha256, load_network
    from se.enhance import OVERLAP_SECONDS, SEGMENT_SECONDS
    from se.models import get_entry
    from se.models.kernels import accelerate
    from se.onnx_backend import ExportedStep

    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if quantize is not None and (quantize not in QUANTIZE or fmt != "onnx"):
        raise ExportError(f"--quantize {quantize}: only 'int8' with --format onnx")
    model, info = load_network(checkpoint, network, "cpu", kernels=False)
    name, file = info["network"], Path(info["file"])
    reason = unsupported_reason(model)
    if reason:
        raise ExportError(f"{file}: {reason}")
    rate = get_entry(name).sampling_rate
    step = step_module(model, name)
    export_friendly(step)
    x = check_input(name, rate)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ("model.onnx" if fmt == "onnx" else "model.pt")
    log.info("exporting %s from %s (%s) to %s", name, file, info["format"], target)
    if fmt == "onnx":
        _export_onnx(step, x, target)
    else:
        _export_torchscript(step, x, target)
    # the exported file against the torch step on shapes other than the traced one; the step now
    # runs the speed kernels (tested equal to the plain forward it was exported from): quicker
    accelerate(name, model)
    exported, checks = ExportedStep(target, fmt), {}
    for batch, seconds in CHECKS:
        xs = check_input(name, rate, seconds, batch)
        with torch.no_grad():
            ref = step(xs).numpy()
        out = exported(xs).numpy()
        if out.shape != ref.shape:
            raise ExportError(f"{target}: the exported model gives shape {out.shape} for {tuple(xs.shape)}, "
                              f"torch {ref.shape}")
        checks[f"{batch}x{xs.shape[1]}"] = float(np.abs(out - ref).max() / max(1.0, float(np.abs(ref).max())))
    log.info("exported model vs torch, max |diff| / max(1, max |ref|): %s", checks)
    if quantize:
        quantized = out_dir / "model.int8.onnx"
        quantize_int8(target, quantized)
        target.unlink()
        target = quantized
    import onnx
    import onnxruntime

    meta = {
        "network": name,
        "sampling_rate": rate,
        "network_kwargs": _network_kwargs(file, info),
        "format": fmt,
        "file": target.name,
        "quantize": quantize,
        "step": " ".join(STEPS[name].__doc__.split("\n\n")[0].split()),
        "normalisation": "se.enhance: one gain to -25 dB RMS (se.audio.norm_gain) in and out; "
                         "--clearvoice-compat: the network's clearvoice_decode",
        "segmenting": {"segment_length_s": SEGMENT_SECONDS, "segment_overlap_s": OVERLAP_SECONDS,
                       "clearvoice": decode_settings(model)},
        # relative to the export dir (no machine path; a package's onnx/ names ../model.pt)
        "checkpoint": os.path.relpath(file.resolve(), out_dir.resolve()),
        "checkpoint_format": info["format"],
        "checkpoint_sha256": file_sha256(file),
        "check_max_rel_diff": checks,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "opset": OPSET},
    }
    atomic_write_text(out_dir / EXPORT_JSON, json.dumps(meta, indent=2) + "\n")
    return target


def read_export_json(model_dir) -> dict:
    path = Path(model_dir) / EXPORT_JSON
    if not Path(model_dir).is_dir():
        raise ExportError(f"{model_dir}: --model-dir is not a directory")
    if not path.is_file():
        raise ExportError(f"{model_dir}: no {EXPORT_JSON} or package.json here, so not a model package or export "
                          "dir (make one with python -m se.bin.package or python -m se.bin.export)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: not readable JSON ({exc})") from None
    missing = [k for k in ("network", "format", "file") if k not in meta]
    if missing:
        raise ExportError(f"{path}: missing {', '.join(missing)}")
    return meta
