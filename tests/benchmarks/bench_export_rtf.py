#!/usr/bin/env python
"""Enhancement RTF of a 10 s file per network: the reference implementation, our torch backend
and our onnxruntime backend (plain and dynamic int8), in ONE run, on the same thread count.

Every case runs the reference decode path (audio normalisation, padding, one-pass or segmented
decoding, de-normalisation): ours through ``clearvoice_decode`` (the ``--clearvoice-compat`` mode
of se.bin.enhance; torch with the speed kernels, or the exported file attached by
se.onnx_backend), the reference through ClearerVoice-Studio's own ``decode_one_audio``, run
unmodified from a checkout OUTSIDE this repository (a baseline only; nothing of it is imported
by the toolkit). Networks are the released architectures with random weights (run time does not
depend on the weight values); each case runs in its own process, min of --runs after a warm-up.

The reference needs its own dependencies (einops, rotary_embedding_torch, torchinfo, librosa,
yamlargparse, pydub): give their folder with --reference-pythonpath (e.g. made with
``pip install --target DIR ...``).

e.g.: PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_export_rtf.py --reference-dir ../scratch/ClearerVoice-Studio/clearvoice --reference-pythonpath ../scratch/refdeps
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NETWORKS = ("FRCRN_SE_16K", "MossFormerGAN_SE_16K", "MossFormer2_SE_48K")
CASES = ("reference", "torch", "onnxruntime", "onnxruntime_int8")

REFERENCE_CODE = r"""
import argparse, json, sys, time
import numpy as np, torch, yaml
network, seconds, runs, threads, cfgdir = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
from clearvoice.utils.decode import decode_one_audio
args = argparse.Namespace(**yaml.safe_load(open(f"{cfgdir}/{network}.yaml")))
args.mode, args.task = "inference", "speech_enhancement"
if network == "FRCRN_SE_16K":
    from clearvoice.models.frcrn_se.frcrn import FRCRN_SE_16K as Wrapper
elif network == "MossFormer2_SE_48K":
    from clearvoice.models.mossformer2_se.mossformer2_se_wrapper import MossFormer2_SE_48K as Wrapper
else:
    from clearvoice.models.mossformer_gan_se.generator import MossFormerGAN_SE_16K as Wrapper
model = Wrapper(args).model.eval()
x = (0.05 * np.random.default_rng(0).standard_normal((1, int(seconds * args.sampling_rate)))).astype(np.float32)
times = []
with torch.no_grad():
    for i in range(runs + 1):
        t = time.perf_counter(); decode_one_audio(model, "cpu", x, args); dt = time.perf_counter() - t
        if i:
            times.append(dt)
print(json.dumps({"seconds": min(times)}))
"""


def _ours(network: str, case: str, seconds: float, runs: int, threads: int, work: Path) -> float:
    """Seconds of one clearvoice_decode of a ``seconds`` long file (min over ``runs``)."""
    import numpy as np
    import torch

    from se.allocator import retain_freed_memory
    from se.models import build_network, get_entry

    retain_freed_memory()  # as se.bin.enhance does at start-up (se/allocator.py)
    torch.set_num_threads(threads)
    rate = get_entry(network).sampling_rate
    if case == "torch":
        model = build_network(network).eval()
    else:
        from se.onnx_backend import load_exported

        model, _ = load_exported(work / case, "onnxruntime", threads)
    x = 0.05 * np.random.default_rng(0).standard_normal(int(seconds * rate))
    times = []
    with torch.no_grad():
        for i in range(runs + 1):
            t = time.perf_counter()
            model.clearvoice_decode(x)
            if i:
                times.append(time.perf_counter() - t)
    return min(times)


def _export(network: str, work: Path) -> None:
    import torch

    from se.export import export_model
    from se.models import build_network

    torch.manual_seed(0)
    checkpoint = work / "release.pt"  # release format: {'model': state_dict}
    torch.save({"model": build_network(network, kernels=False).state_dict()}, checkpoint)
    export_model(checkpoint, network, "onnx", work / "onnxruntime")
    export_model(checkpoint, network, "onnx", work / "onnxruntime_int8", quantize="int8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", default=",".join(NETWORKS))
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reference-dir", help="ClearerVoice-Studio's clearvoice/ folder (holds the clearvoice package)")
    p.add_argument("--reference-pythonpath", default="", help="folder(s) with the reference's extra dependencies")
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: NETWORK CASE WORKDIR
    a = p.parse_args()
    if a.one:
        network, case, work = a.one
        print(json.dumps({"seconds": _ours(network, case, a.seconds, a.runs, a.threads, Path(work))}))
        return
    cases = a.cases.split(",")
    if "reference" in cases and not a.reference_dir:
        sys.exit("bench_export_rtf: --reference-dir is needed for the reference case (or leave it out of --cases)")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    rows = []
    for network in a.networks.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            if any(c.startswith("onnxruntime") for c in cases):
                _export(network, Path(tmp))
            row = {"network": network}
            for case in cases:
                if case == "reference":
                    ref = Path(a.reference_dir).resolve()
                    cmd = [sys.executable, "-c", REFERENCE_CODE, network, str(a.seconds), str(a.runs), str(a.threads),
                           str(ref / "clearvoice" / "config" / "inference")]
                    paths = [str(ref), *filter(None, a.reference_pythonpath.split(os.pathsep))]
                    run_env = dict(env, PYTHONPATH=os.pathsep.join(paths + [p for p in sys.path if "site-packages" in p]))
                    out = subprocess.run(cmd, env=run_env, cwd=tmp, capture_output=True, text=True)
                else:
                    cmd = [sys.executable, __file__, "--one", network, case, tmp, "--seconds", str(a.seconds),
                           "--runs", str(a.runs), "--threads", str(a.threads)]
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"bench_export_rtf: {network} {case} failed:\n{out.stderr[-3000:]}")
                row[case] = json.loads(out.stdout.strip().splitlines()[-1])["seconds"] / a.seconds
                print(f"{network:22s} {case:18s} RTF {row[case]:.4f}", flush=True)
            rows.append(row)
    print(f"\nRTF of a {a.seconds:g} s file, {a.threads} threads (speed-up vs the reference in brackets):")
    print("| network | " + " | ".join(cases) + " |")
    print("|---|" + "---|" * len(cases))
    for row in rows:
        cells = []
        for case in cases:
            speed = f" ({row['reference'] / row[case]:.1f}x)" if "reference" in row and case != "reference" else ""
            cells.append(f"{row[case]:.4f}{speed}")
        print(f"| {row['network']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
