#!/usr/bin/env python3
"""GPU acceptance: every network trains, validates, resumes and enhances on CUDA (one command).

    PYTHONPATH=. python tests/gpu/acceptance.py [--networks ...] [--precisions fp32 bf16 fp16]
        [--steps 3] [--enhance-seconds 60] [--out results.json] [--dry-run]

For each network at its released size and reference training batch (FRCRN_SE_16K 4 x 1 s,
MossFormerGAN_SE_16K 1 x 2 s, MossFormer2_SE_48K 4 x 4 s) and each precision, the real
trainer (se.trainer.Trainer) runs two epochs of ``--steps`` updates on a synthetic data dir,
with validation and example logging (audio, spectrogram, SI-SDR/PESQ to tensorboard) after
each epoch and a checkpoint at each epoch end; the run must end with finite losses (fp16:
grad-scaler overflow skips are allowed, non-finite updates are not) and a best checkpoint.
Then the fp32 checkpoint of each network enhances a ``--enhance-seconds`` file on the GPU
through se.bin.enhance (peak memory), and where two GPUs exist a ``torchrun
--nproc_per_node 2`` smoke run trains each network for 2 updates. A table of samples/s and
peak GPU memory per case closes the run; the exit status is non-zero when any case failed.

``--dry-run`` checks the arguments and every import and prints the planned cases (no GPU
needed; the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PRECISIONS = ("fp32", "bf16", "fp16")


def get_parser() -> argparse.ArgumentParser:
    from tests.gpu.bench_train_gpu import SETUPS

    p = argparse.ArgumentParser(prog="tests/gpu/acceptance.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", nargs="+", default=list(SETUPS), help="networks to check (default: all)")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), help="fp32, bf16 and/or fp16")
    p.add_argument("--steps", type=int, default=3, help="updates per epoch (two epochs)")
    p.add_argument("--enhance-seconds", type=float, default=60.0, help="length of the enhanced file")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    p.add_argument("--dry-run", action="store_true", help="check arguments and imports, print the plan, exit")
    return p


def check_args(p: argparse.ArgumentParser, args) -> None:
    from tests.gpu.bench_train_gpu import SETUPS

    for name in args.networks:
        if name not in SETUPS:
            p.error(f"--networks: unknown network {name!r}; choose from {', '.join(SETUPS)}")
    for prec in args.precisions:
        if prec not in PRECISIONS:
            p.error(f"--precisions: unknown precision {prec!r}; choose from {', '.join(PRECISIONS)}")
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.enhance_seconds <= 0:
        p.error("--enhance-seconds must be positive")


def plan(args) -> list[str]:
    cases = [f"{n} {prec}: 2 epochs x {args.steps} updates, validation + examples, checkpoints"
             for n in args.networks for prec in args.precisions]
    cases += [f"{n} enhance: {args.enhance_seconds:g} s file on cuda" for n in args.networks]
    cases += [f"{n} torchrun --nproc_per_node 2: 2 updates (needs 2 GPUs)" for n in args.networks]
    return cases


def train_case(network: str, precision: str, corpus: Path, exp: Path, steps: int) -> dict:
    import torch

    from se import config
    from se.trainer import Dist, Trainer, resolve_config
    from tests.gpu.bench_train_gpu import SETUPS

    s = SETUPS[network]
    conf = resolve_config(config.load(None, {
        "network": network, "batch_size": s["batch_size"], "max_length": s["max_length"],
        "precision": precision, "num_workers": 4, "init_learning_rate": 1e-4, "max_epoch": 2,
        "valid_utterances_to_log": 1, "print_freq": 1, "pesq_workers": 2, "valid_pesq": True,
    }))
    dist = Dist(device=torch.device("cuda", 0))
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(conf, str(corpus / "train"), str(corpus / "valid"), str(exp), dist, start_over=True)
    trainer.resume_or_init()
    train_s = []
    run_epoch = trainer.train_one_epoch

    def timed_epoch():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run_epoch()
        torch.cuda.synchronize()
        train_s.append(time.perf_counter() - t0)

    trainer.train_one_epoch = timed_epoch
    t0 = time.perf_counter()
    trainer.fit()
    total_s = time.perf_counter() - t0
    p = trainer.progress
    from se.checkpoint import read_pointer

    ok = (p.epoch == 2 and p.skipped_steps == 0 and read_pointer(exp, "last_best_checkpoint") is not None
          and any((exp / "tensorboard").iterdir()))
    out = {"case": f"{network} {precision}", "ok": ok, "updates": p.global_step, "overflow_skips": p.overflow_steps,
           "nonfinite_skips": p.skipped_steps, "best_valid_loss": p.best_valid_loss,
           "samples_per_s": 2 * steps * s["batch_size"] / max(1e-9, sum(train_s)),
           "seconds": total_s, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    del trainer
    torch.cuda.empty_cache()
    return out


def enhance_case(network: str, exp: Path, seconds: float, tmp: Path) -> dict:
    import numpy as np
    import torch

    from se.audio import write_audio
    from se.bin import enhance
    from se.models import network_sampling_rate

    rate = network_sampling_rate(network)
    rng = np.random.default_rng(0)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = 0.1 * np.sin(2 * np.pi * 150 * t) * (np.sin(2 * np.pi * 3 * t) > 0) + 0.03 * rng.standard_normal(n)
    wav = tmp / f"long_{network}.wav"
    write_audio(wav, x, rate, "FLOAT")
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rc = enhance.main(["--checkpoint", str(exp), "--input", str(wav), "--output-dir", str(tmp / f"enh_{network}"),
                       "--device", "cuda"])
    elapsed = time.perf_counter() - t0
    ok = rc == 0 and (tmp / f"enh_{network}" / wav.name).is_file()
    return {"case": f"{network} enhance {seconds:g}s", "ok": ok, "seconds": elapsed,
            "samples_per_s": 1.0 / max(1e-9, elapsed), "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def torchrun_case(network: str, corpus: Path, exp: Path) -> dict:
    from tests.gpu.bench_train_gpu import SETUPS

    s = SETUPS[network]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "se.bin.train", "--train-data", str(corpus / "train"), "--valid-data", str(corpus / "valid"),
           "--exp-dir", str(exp), "--network", network, "--batch_size", str(s["batch_size"]),
           "--max_length", str(s["max_length"]), "--max_steps", "2", "--num_workers", "2",
           "--valid_utterances_to_log", "1", "--precision", "bf16"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                         timeout=600)
    ok = out.returncode == 0 and "2 processes x batch" in out.stderr
    if not ok:
        print(out.stderr[-3000:], file=sys.stderr)
    return {"case": f"{network} torchrun x2", "ok": ok, "seconds": time.perf_counter() - t0,
            "samples_per_s": float("nan"), "peak_gib": float("nan")}


def make_corpus(root: Path, network: str, steps: int) -> Path:
    """Synthetic train (``steps`` batches) and valid (2 utterances) data dirs: <root>/{train,valid}."""
    from tests.gpu.bench_train_gpu import SETUPS, make_corpus as bench_corpus

    s = SETUPS[network]
    root = root / network
    for name, count, seconds in (("train", steps * s["batch_size"], s["max_length"] + 0.5), ("valid", 2, 3.0)):
        made = bench_corpus(root / f"{name}_audio", s["rate"], count, seconds)
        made.rename(root / name)
    return root


def run_guarded(fn, *args) -> dict:
    try:
        return fn(*args)
    except Exception:
        traceback.print_exc()
        return {"case": f"{fn.__name__} {args[0]}", "ok": False, "seconds": float("nan"),
                "samples_per_s": float("nan"), "peak_gib": float("nan")}


def main(argv: list[str] | None = None) -> int:
    p = get_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    import torch

    import se.bin.enhance  # noqa: F401  (the imports every case needs)
    import se.bin.train  # noqa: F401
    import se.trainer  # noqa: F401
    import torch.distributed.run  # noqa: F401
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401

    if args.dry_run:
        for case in plan(args):
            print(case)
        print("dry run: arguments and imports checked")
        return 0
    if not torch.cuda.is_available():
        print("tests/gpu/acceptance.py: no CUDA device; run it on a GPU machine (or use --dry-run)", file=sys.stderr)
        return 1
    print(torch.cuda.get_device_name(0), "torch", torch.__version__, "GPUs:", torch.cuda.device_count(), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for network in args.networks:
            corpus = make_corpus(tmp / "corpus", network, args.steps)
            for precision in args.precisions:
                exp = tmp / f"exp_{network}_{precision}"
                results.append(run_guarded(train_case, network, precision, corpus, exp, args.steps))
                print(json.dumps(results[-1]), flush=True)
            fp_exp = tmp / f"exp_{network}_{args.precisions[0]}"
            results.append(run_guarded(enhance_case, network, fp_exp, args.enhance_seconds, tmp))
            print(json.dumps(results[-1]), flush=True)
            if torch.cuda.device_count() >= 2:
                results.append(run_guarded(torchrun_case, network, corpus, tmp / f"ddp_{network}"))
            else:
                print(f"{network} torchrun x2: skipped, {torch.cuda.device_count()} GPU(s)", flush=True)
    print(f"\n{'case':<36}{'ok':>4}{'samples/s':>11}{'seconds':>9}{'peak GiB':>10}")
    for r in results:
        print(f"{r['case']:<36}{'yes' if r['ok'] else 'NO':>4}{r['samples_per_s']:>11.2f}{r['seconds']:>9.1f}"
              f"{r['peak_gib']:>10.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
