"""Enhancement with an exported model (se.export): ONNX Runtime or TorchScript backends.

An export dir holds the exported waveform step and ``export.json``. The runtime builds the
network object named there (its decode code: normalisation, padding, segments, the
ClearVoice path) and replaces only its waveform step by the exported file, so every backend
runs the same decode code (se.enhance and each network's ``clearvoice_decode``) and only the
network arithmetic differs:

* FRCRN_SE_16K: ``forward`` (the decode paths use ``forward(x)[1]``, the waveform);
* MossFormerGAN_SE_16K: ``waveform``;
* MossFormer2_SE_48K: ``_mask_wave`` (fbank without dither: ``--fbank-dither`` must be 0).

``--backend torch --model-dir DIR`` loads the TorchScript file of a TorchScript export, or
the checkpoint an ONNX export names (with the usual speed kernels).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from se.export import ExportError, read_export_json

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")


def session_options(threads: int | None = None):
    """The onnxruntime session options of every exported-model session.

    onnxruntime's defaults otherwise, on purpose: graph optimisation ORT_ENABLE_ALL, sequential
    execution, the CPU memory arena, spinning intra-op threads. Measured against them
    (tests/benchmarks/bench_ort_ab.py, FRCRN release size, 10 s, 2 threads, interleaved): no
    spinning was slower (RTF 0.81 vs 0.73); an optimised-model cache (optimized_model_filepath)
    would only shorten session creation, not decoding.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = session_options(threads)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None


class ExportedStep:
    """The exported file as a function of a (B, L) tensor -> (B, L') float32 tensor."""

    def __init__(self, path: str | Path, fmt: str, threads: int | None = None):
        self.path, self.fmt = Path(path), fmt
        if not self.path.is_file():
            raise ExportError(f"{self.path}: exported model file not found")
        if fmt == "onnx":
            self.session = _session(self.path, threads)
            self.input = self.session.get_inputs()[0].name
        elif fmt == "torchscript":
            try:
                self.module = torch.jit.load(str(self.path), map_location="cpu").eval()
            except Exception as exc:
                raise ExportError(f"{self.path}: not a loadable TorchScript file ({exc})") from None
        else:
            raise ExportError(f"{self.path}: unknown export format {fmt!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fmt == "onnx":
            out = self.session.run(None, {self.input: x.detach().cpu().float().numpy()})[0]
            return torch.from_numpy(out)
        with torch.no_grad():
            return self.module(x.detach().cpu().float())


def attach(model, network: str, step: ExportedStep):
    """Replaces ``model``'s waveform step by ``step`` (instance attributes; in place)."""
    if network == "FRCRN_SE_16K":
        model.forward = lambda x: [None, step(x), None]
    elif network == "MossFormerGAN_SE_16K":
        model.waveform = step
    elif network == "MossFormer2_SE_48K":
        def mask_wave(wave: torch.Tensor, dither: float) -> torch.Tensor:
            if dither != 0.0:
                raise ValueError(f"the exported model computes its fbank without dither; use --fbank-dither 0 "
                                 f"(got {dither})")
            y = step(wave)  # (B, fft_len + hop * (S - 1))
            return F.pad(y, (0, max(0, wave.shape[-1] - y.shape[-1])))[:, : wave.shape[-1]]
        model._mask_wave = mask_wave
    else:
        raise ExportError(f"network {network} has no export runtime")
    return model


def load_exported(model_dir, backend: str = "onnxruntime", threads: int | None = None, device="cpu"):
    """(model, info) for an export dir: the network object with the exported step attached, or
    (torch backend, ONNX export) the checkpoint it names."""
    from se.checkpoint import load_network
    from se.models import get_entry

    meta = read_export_json(model_dir)
    name, fmt = meta["network"], meta["format"]
    path = Path(model_dir) / meta["file"]
    info = {"network": name, "file": str(path), "format": f"export ({fmt})"}
    if backend == "torch" and fmt == "onnx":
        checkpoint = meta.get("checkpoint")
        if checkpoint:  # written relative to the export dir
            checkpoint = Path(model_dir) / checkpoint
        if not checkpoint or not checkpoint.is_file():
            raise ExportError(f"{model_dir}: --backend torch needs the checkpoint export.json names ({checkpoint}), "
                              "which is not there; use --backend onnxruntime")
        return load_network(checkpoint, name, device)
    if backend == "onnxruntime" and fmt != "onnx":
        raise ExportError(f"{model_dir}: a {fmt} export; --backend onnxruntime needs an ONNX export "
                          "(or use --backend torch)")
    try:
        entry = get_entry(name)
    except ValueError as exc:
        raise ExportError(f"{model_dir}/export.json: {exc}") from None
    step = ExportedStep(path, fmt, threads)
    with torch.device("cpu"):
        model = entry.network_class()(**meta.get("network_kwargs", {})).eval()
    return attach(model, name, step), info


def load_for_enhance(checkpoint, model_dir, backend: str, network: str | None, device, threads: int | None):
    """What se.bin.enhance runs: a checkpoint (torch) or an export dir (any backend)."""
    from se.checkpoint import load_network

    if threads:
        torch.set_num_threads(threads)
    if model_dir is None:
        if backend != "torch":
            raise ExportError(f"--backend {backend} needs --model-dir (a package of se.bin.package or an "
                              "export dir of se.bin.export)")
        return load_network(checkpoint, network, device)
    if (Path(model_dir) / "package.json").is_file():  # a model package: its model.pt, or its onnx/ export
        from se.package import package_checkpoint

        if backend == "torch":
            return load_network(package_checkpoint(model_dir), network, device)
        model_dir = Path(model_dir) / "onnx"
    model, info = load_exported(model_dir, backend, threads, device)
    if network and info["network"] != network:
        raise ExportError(f"{model_dir}: an export of {info['network']}, but --network {network} was asked for")
    return model, info
