#!/usr/bin/env python
"""A/B timing of onnxruntime settings for the exported networks: session options and int8 recipes.

Each variant is (model file, session options). All variants of a network are loaded in ONE
process and timed interleaved (A B C A B C ...) on the same 10 s file through the network's
``clearvoice_decode`` (the decode of bench_export_rtf.py), --runs rounds after a warm-up; the
table gives each variant's median RTF and its ratio to the first variant (the baseline), so
that load on a shared machine hits every variant alike. Int8 variants also report their
fidelity: SI-SDR (dB) of their output against the fp32 file's on a speech-like noisy input.

Int8 variants are made here from the fp32 export with onnxruntime.quantization.quantize_dynamic:
  int8          se.export's recipe (the baseline of the int8 rows)
  int8_conv     also Conv (ConvInteger)
  int8_pc       per-channel weight scales
  int8_rr       reduce_range (7-bit weights)
  int8_u8       QUInt8 weights
  int8_pre      quant_pre_process (shape inference + ORT graph optimisation) first
Session variants of the fp32 file: fp32 (se.onnx_backend's options), fp32_nospin (no spinning
of idle intra-op threads), fp32_basic (graph optimisation level ORT_ENABLE_BASIC instead of
ALL), fp32_noarena (no CPU memory arena), fp32_env (use_env_allocators).

e.g.: PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_ort_ab.py --export-dir /tmp/frcrn-fp32 \
          --variants fp32,fp32_nospin,int8,int8_conv
(--export-dir: an fp32 ONNX export dir of se.bin.export)
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QUANT = {
    "int8": {},
    "int8_conv": {"op_types_to_quantize": ["MatMul", "Gemm", "Conv"]},
    "int8_pc": {"per_channel": True},
    "int8_rr": {"reduce_range": True},
    "int8_u8": {"weight_type": "QUInt8"},
    "int8_pre": {"preprocess": True},
}
SESSION = {
    "fp32": {},
    "fp32_nospin": {"config": {"session.intra_op.allow_spinning": "0"}},
    "fp32_basic": {"level": "ORT_ENABLE_BASIC"},
    "fp32_noarena": {"enable_cpu_mem_arena": False},
    "fp32_env": {"config": {"session.use_env_allocators": "1"}},
}


def quantize(src: Path, dst: Path, recipe: dict) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from se.export import quantize_int8

    recipe = dict(recipe)
    if not recipe:
        quantize_int8(src, dst)  # exactly the export's recipe
        return
    if recipe.pop("preprocess", False):
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = dst.with_suffix(".pre.onnx")
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        src = pre
    weight = getattr(QuantType, recipe.pop("weight_type", "QInt8"))
    ops = recipe.pop("op_types_to_quantize", ["MatMul", "Gemm"])
    quantize_dynamic(str(src), str(dst), weight_type=weight, op_types_to_quantize=ops, **recipe)


def session_options(spec: dict, threads: int):
    import onnxruntime as ort

    from se.onnx_backend import session_options as ours

    options = ours(threads)
    if "level" in spec:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, spec["level"])
    if "enable_cpu_mem_arena" in spec:
        options.enable_cpu_mem_arena = spec["enable_cpu_mem_arena"]
    for key, value in spec.get("config", {}).items():
        options.add_session_config_entry(key, value)
    return options


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export-dir", required=True, help="fp32 ONNX export dir (se.bin.export)")
    p.add_argument("--variants", default="fp32,int8")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    import onnxruntime as ort
    import torch

    from se.allocator import retain_freed_memory
    from se.export import read_export_json
    from se.metrics import metric_value
    from se.onnx_backend import load_exported

    logging.basicConfig(level=logging.WARNING)
    retain_freed_memory()
    torch.set_num_threads(a.threads)
    variants = a.variants.split(",")
    unknown = [v for v in variants if v not in QUANT and v not in SESSION]
    if unknown:
        sys.exit(f"bench_ort_ab: unknown variants {unknown}; known: {', '.join([*SESSION, *QUANT])}")
    meta = read_export_json(a.export_dir)
    src = Path(a.export_dir) / meta["file"]
    rate = meta["sampling_rate"]
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            path, spec = src, SESSION.get(v, {})
            if v in QUANT:
                path = Path(tmp) / f"{v}.onnx"
                quantize(src, path, QUANT[v])
            model, _ = load_exported(a.export_dir, "onnxruntime", a.threads)
            # the attached step object: replace its session (the closures of attach() read it)
            step = _attached_step(model, meta["network"])
            step.session = ort.InferenceSession(str(path), session_options(spec, a.threads),
                                                providers=["CPUExecutionProvider"])
            models[v] = model
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from helpers import tone_pair

        noisy = tone_pair(3.0, rate, seed=7, snr_db=5.0)[0]
        with torch.no_grad():
            outs = {v: m.clearvoice_decode(noisy) for v, m in models.items()}
        x = 0.05 * np.random.default_rng(0).standard_normal(int(a.seconds * rate))
        times = {v: [] for v in variants}
        with torch.no_grad():
            for v in variants:  # warm-up
                models[v].clearvoice_decode(x)
            for _ in range(a.runs):
                for v in variants:
                    t = time.perf_counter()
                    models[v].clearvoice_decode(x)
                    times[v].append((time.perf_counter() - t) / a.seconds)
    base = statistics.median(times[variants[0]])
    fp32_out = outs.get("fp32")
    rows = []
    print(f"{meta['network']}: RTF of a {a.seconds:g} s file, {a.threads} threads, median of {a.runs} interleaved")
    print("| variant | RTF | vs first | runs | SI-SDR vs fp32 (dB) |\n|---|---|---|---|---|")
    for v in variants:
        med = statistics.median(times[v])
        fid = metric_value("si_sdr", fp32_out, outs[v], rate) if fp32_out is not None and v in QUANT else float("nan")
        rows.append({"variant": v, "rtf": med, "ratio": med / base, "runs": times[v], "si_sdr_vs_fp32": fid})
        print(f"| {v} | {med:.4f} | {med / base:.3f} | {' '.join(f'{t:.4f}' for t in times[v])} | {fid:.2f} |")
    print(json.dumps({"network": meta["network"], "threads": a.threads, "rows": rows}))


def _attached_step(model, network: str):
    """The ExportedStep that se.onnx_backend.attach put on ``model``."""
    if network == "MossFormerGAN_SE_16K":
        return model.waveform
    fn = model.forward if network == "FRCRN_SE_16K" else model._mask_wave
    for cell in fn.__closure__ or ():
        if hasattr(cell.cell_contents, "session"):
            return cell.cell_contents
    raise RuntimeError(f"no exported step found on the {network} model")


if __name__ == "__main__":
    from se.cli import UserError

    try:
        main()
    except UserError as exc:  # a bad checkpoint, export dir or data dir: one line
        sys.exit(f"bench_ort_ab: {exc}")
