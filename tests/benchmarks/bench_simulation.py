#!/usr/bin/env python3
"""On-the-fly simulation (se/simulation.py): training segments/s through the real DataLoader, and the
cost of each stage.

    PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_simulation.py [--items 400] [--workers 2]

Two settings, as in issue 13: 4 s segments at 48 kHz and 2 s segments at 16 kHz, both with
p_reverb 0.3 and every channel effect at p 0.1 (bandwidth limitation, clipping, codec, packet
loss). Sources made here: 16-bit PCM WAV like prepared corpora, speech-like files of 6-10 s,
noise files of 10 s, pyroomacoustics RIRs (local/simulate_rirs.py, RT60 0.3-0.9 s).

1. Throughput: se.simulation.SimulatedDataset in a torch DataLoader (``--workers`` processes,
   batch 4, se.data.collate, se.data.ShardedSampler), timed from the first batch (worker start-up
   excluded) to the last; and segments per CPU-second of all processes (this one and the
   workers, start-up included), which does not depend on what else the machine runs: twice
   it is the rate two otherwise idle cores give.
2. Stage costs: the simulator in this process with every stage forced on (p_reverb 1, each
   effect p 1): CPU milliseconds per call (Simulator.stage_seconds) of read (speech, noise and RIR files), reverberation (two
   FFT convolutions), mixing (active-speech SNR), each effect and level scaling; and the
   expected cost per item at the training probabilities.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from se.data import ShardedSampler, collate, item_rng, write_source_dir  # noqa: E402
from se.simulation import SimulatedDataset, Simulator, parse_config  # noqa: E402
from tests.helpers import tone_pair  # noqa: E402

EFFECTS = ("bandwidth_limitation", "clipping", "codec", "packet_loss")


def make_sources(root: Path, fs: int, num_speech: int, num_noise: int, num_rirs: int) -> dict:
    rng = np.random.default_rng(fs)
    speech, noise = {}, {}
    for i in range(num_speech):
        _, x = tone_pair(rng.uniform(6, 10), fs, seed=i)
        path = root / "speech" / f"s{i:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, x, fs, subtype="PCM_16")
        speech[f"s{i:03d}"] = (str(path), len(x))
    for i in range(num_noise):
        x = rng.standard_normal(10 * fs)
        if i % 2:
            x = np.cumsum(x)
            x -= np.linspace(x[0], x[-1], len(x))
        path = root / "noise" / f"n{i:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * x / np.max(np.abs(x)), fs, subtype="PCM_16")
        noise[f"n{i:03d}"] = (str(path), len(x))
    for name, items in (("speech_dir", speech), ("noise_dir", noise)):
        write_source_dir(root / name, {k: v[0] for k, v in items.items()}, {k: v[1] for k, v in items.items()}, fs)
    spec = importlib.util.spec_from_file_location("simulate_rirs", REPO / "local/simulate_rirs.py")
    rirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rirs)
    rirs.main(["--fs", str(fs), "--num", str(num_rirs), "--seed", "0", "--rt60", "0.3", "0.9",
               "--out-dir", str(root / "rir_dir")])
    return {"speech": [{"data": str(root / "speech_dir")}], "noise": [{"data": str(root / "noise_dir")}],
            "rir": [{"data": str(root / "rir_dir")}]}


def training_block(sources: dict, fs: int, p_reverb=0.3, p_effect=0.1, items=400) -> dict:
    rates = [8000, 16000, 24000] if fs == 48000 else [8000, 12000]
    return {**sources, "items_per_epoch": items, "p_reverb": p_reverb,
            "bandwidth_limitation": {"p": p_effect, "rates": rates}, "clipping": {"p": p_effect},
            "codec": {"p": p_effect}, "packet_loss": {"p": p_effect}}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader workers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def loader_rate(block: dict, fs: int, seconds: float, workers: int, items: int) -> tuple[float, float]:
    """(segments/s of wall-clock time from the first batch on, segments per CPU-second of all
    processes over the whole run, worker start-up included)."""
    sim = Simulator(parse_config(block, "bench"), fs)
    ds = SimulatedDataset(sim, int(seconds * fs), seed=1)
    sampler = ShardedSampler(len(ds), seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers,
                                         collate_fn=collate, prefetch_factor=4 if workers else None)
    count, t_first = 0, None
    cpu0 = cpu_seconds()
    for batch in loader:
        if t_first is None:
            t_first = time.perf_counter()
            continue
        count += len(batch["index"])
    wall = time.perf_counter() - t_first
    del loader  # workers exit and are reaped: their CPU time is counted
    return count / wall, len(ds) / (cpu_seconds() - cpu0)


def stage_costs(sources: dict, fs: int, seconds: float, items: int) -> dict:
    """CPU ms per call of each stage, with every stage on."""
    sim = Simulator(parse_config(training_block(sources, fs, 1.0, 1.0), "bench"), fs)
    n = int(seconds * fs)
    for i in range(3):  # warm-up (codec libraries, FFT plans)
        sim.simulate(item_rng(7, 0, i), n)
    sim.stage_seconds.clear()
    for i in range(items):
        sim.simulate(item_rng(7, 1, i), n)
    return {k: 1000 * v / items for k, v in sim.stage_seconds.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=400, help="items per throughput run")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--stage-items", type=int, default=40, help="items for the stage costs")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"CPU cores available: {len(os.sched_getaffinity(0))}, DataLoader workers: {args.workers}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for fs, seconds in ((48000, 4.0), (16000, 2.0)):
            root = Path(tmp) / str(fs)
            t0 = time.perf_counter()
            sources = make_sources(root, fs, num_speech=24, num_noise=8, num_rirs=8)
            print(f"\n{fs} Hz, {seconds:g} s segments (sources made in {time.perf_counter() - t0:.0f} s)", flush=True)
            for label, p_reverb, p_effect in (("p_reverb 0.3, each effect p 0.1", 0.3, 0.1),
                                              ("noise only (no reverb, no effects)", 0.0, 0.0)):
                block = training_block(sources, fs, p_reverb, p_effect, items=args.items)
                rate, per_cpu_s = loader_rate(block, fs, seconds, args.workers, args.items)
                print(f"  DataLoader, {label}: {rate:7.1f} segments/s wall-clock; {per_cpu_s:6.1f} segments "
                      f"per CPU-second (x 2 = {2 * per_cpu_s:6.1f}/s on 2 idle cores)", flush=True)
            costs = stage_costs(sources, fs, seconds, args.stage_items)
            prob = {"read": 1.0, "mix": 1.0, "scaling": 1.0, "reverberation": 0.3, **{e: 0.1 for e in EFFECTS}}
            print(f"  stage costs, CPU ms per call (every stage on, {args.stage_items} items, one process):")
            expected = 0.0
            for stage in ("read", "reverberation", "mix", *EFFECTS, "scaling"):
                ms = costs.get(stage, 0.0)  # read: speech, noise and (always, here) the RIR file
                expected += prob[stage] * ms
                print(f"    {stage:22s} {ms:8.2f} ms   x p {prob[stage]:.1f} = {prob[stage] * ms:7.2f} ms/item")
            print(f"    expected per item at the training probabilities: {expected:.1f} ms "
                  f"(= {1000 / expected:.0f} items/s per core)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
