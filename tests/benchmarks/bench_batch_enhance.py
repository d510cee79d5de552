#!/usr/bin/env python
"""Files per second of se.bin.enhance, file by file vs --batch-size, on VoiceBank-length files.

``--files`` files of 2-4 s (uniform lengths, 16 kHz or the network's rate, pseudo speech in
noise) are enhanced through the command-line tool (reading, resampling checks and writing
included) with the released architecture and random weights (run time does not depend on the
weight values). Configurations: file by file (--batch-size 1, no padding: the default), then
``--length-quantum Q`` at batch size 1 and at each ``--batch-sizes`` (the padding is the same
at every batch size, so these outputs are equal; the difference to the first run is the
padding's). One untimed warm-up run on 2 files comes first. Prints one JSON line per
configuration and a summary; the process's CPU time is printed too (on a machine shared with
other jobs, files per CPU second is steadier than files per second).

e.g.: PYTHONPATH=. OMP_NUM_THREADS=2 tools/venv/bin/python tests/benchmarks/bench_batch_enhance.py --files 100
      PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_batch_enhance.py --files 16 --device cuda --batch-sizes 8 32
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from se.bin import enhance
from se.models import build_network, get_entry, network_kwargs, network_names


def write_files(root: Path, count: int, rate: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        n = int(rng.uniform(2.0, 4.0) * rate)
        t = np.arange(n) / rate
        x = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 200) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
        sf.write(root / f"f{i:04d}.wav", x + 0.02 * rng.standard_normal(n), rate, subtype="FLOAT")
    return root


def timed(checkpoint: Path, inputs: Path, out: Path, device: str, *extra: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    code = enhance.main(["--checkpoint", str(checkpoint), "--input", str(inputs), "--output-dir", str(out),
                         "--output-subtype", "FLOAT", "--device", device, *extra])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    if code != 0:
        raise SystemExit(f"se.bin.enhance failed ({code})")
    return time.perf_counter() - t0, time.process_time() - c0


def max_diff(a: Path, b: Path) -> float:
    return max(float(np.abs(sf.read(p)[0] - sf.read(b / p.name)[0]).max()) for p in a.glob("*.wav"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--network", default="FRCRN_SE_16K", choices=network_names())
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    p.add_argument("--length-quantum", type=float, default=0.5, help="seconds (--length-quantum of se.bin.enhance)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.INFO)  # se.bin.enhance's per-file log lines
    rate = get_entry(args.network).sampling_rate
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = build_network(args.network, {})
        checkpoint = tmp / "released_random.pt"
        torch.save({"model": model.state_dict(), "network": args.network, "sampling_rate": rate,
                    "network_kwargs": network_kwargs(args.network, {})}, checkpoint)
        del model
        inputs = write_files(tmp / "in", args.files, rate)
        warm = write_files(tmp / "warm", 2, rate, seed=1)
        timed(checkpoint, warm, tmp / "warm_out", args.device)
        audio_s = sum(sf.info(f).duration for f in inputs.glob("*.wav"))
        q = ["--length-quantum", str(args.length_quantum)]
        configs = [("file by file", []), (f"batch 1, quantum {args.length_quantum:g} s", ["--batch-size", "1", *q])]
        configs += [(f"batch {b}, quantum {args.length_quantum:g} s", ["--batch-size", str(b), *q])
                    for b in args.batch_sizes]
        results = []
        for i, (label, extra) in enumerate(configs):
            seconds, cpu = timed(checkpoint, inputs, tmp / f"out{i}", args.device, *extra)
            row = {"config": label, "files": args.files, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                   "files_per_cpu_s": round(args.files / cpu, 3),
                   "files_per_s": round(args.files / seconds, 3), "rtf": round(seconds / audio_s, 4),
                   "max_diff_to_batch_1": round(max_diff(tmp / f"out{i}", tmp / "out1"), 8) if i > 1 else None}
            results.append(row)
            print(json.dumps(row), flush=True)
    base = results[0]["files_per_s"]
    print(f"{args.network}, {args.files} files ({audio_s:.0f} s of audio), {args.device}, {args.threads} threads: "
          + "; ".join(f"{r['config']} {r['files_per_s']:.2f} files/s (x{r['files_per_s'] / base:.2f})" for r in results))


if __name__ == "__main__":
    main()
