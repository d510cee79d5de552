"""Write a FIXED simulated set (validation / test) with the training simulator (se/simulation.py).

    python -m se.bin.simulate --config SIM.yaml --seed S --num N --out-dir DIR [--length SECONDS] [--fs FS]

SIM.yaml is a training config with a ``simulation:`` block, or a file holding only the block's
keys. Utterance i is drawn from ``se.data.item_rng(S, 0, i)``: the same arguments always give the
same set. Writes DIR/noisy/<utt>.wav (the input), DIR/clean/<utt>.wav (the target: dry or
early-reflection speech), a paired data dir in DIR itself (wav.scp, spk1.scp, utt2num_samples, fs;
usable as --valid-data and by steps/enhance.sh / steps/score.sh) and DIR/simulation.tsv: one row
per utterance with every draw and ``measured_snr_db``, the SNR of the written files (target
against noisy - target, on the target's active speech; reverberation and effects lower it
below the drawn ``snr_db``). Audio is written as 32-bit float WAV.

--speech/--noise/--rir DIR replace the block's sources (e.g. the held-out speakers and noises of a
training config's block). --length 0 (default) keeps each drawn speech file whole; --fs defaults to the rate of the
first speech source. A DIR that already holds a set is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from se import cli
from se.audio import write_audio
from se.atomic import atomic_write_text
from se.data import SourceDir, item_rng, write_scp
from se.simulation import SimulationError, Simulator, load_block, parse_config, snr_on_active

log = logging.getLogger("se.simulate")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m se.bin.simulate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML: a training config with a simulation: block, or only its keys")
    p.add_argument("--seed", type=int, required=True, help="seed of the set (use different seeds for valid and test)")
    p.add_argument("--num", type=int, required=True, help="number of utterances")
    p.add_argument("--out-dir", required=True, help="output dir (audio, data dir files, simulation.tsv)")
    p.add_argument("--length", type=float, default=0.0, help="seconds per utterance (0 = whole speech files)")
    p.add_argument("--fs", type=int, default=0, help="sample rate (0 = the rate of the first speech source)")
    p.add_argument("--speech", action="append", metavar="DIR",
                   help="replace the block's speech sources by these source dirs (weight 1; repeatable), e.g. "
                   "the validation speakers of a training config")
    p.add_argument("--noise", action="append", metavar="DIR", help="replace the block's noise sources (repeatable)")
    p.add_argument("--rir", action="append", metavar="DIR", help="replace the block's RIR sources (repeatable)")
    p.add_argument("--prefix", default="sim", help="utterance ids are <prefix>_<index>")
    p.add_argument("--overwrite", action="store_true", help="replace a set already in --out-dir")
    return p


def tsv_value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def holds_set(out: Path) -> bool:
    return any((out / name).exists() for name in ("wav.scp", "simulation.tsv", "noisy", "clean"))


def run(args) -> int:
    if args.num < 1:
        raise SimulationError(f"--num must be at least 1, got {args.num}")
    if args.length < 0:
        raise SimulationError(f"--length must be >= 0 seconds, got {args.length}")
    out = Path(args.out_dir)
    if holds_set(out) and not args.overwrite:
        raise SimulationError(
            f"{out}: already holds a simulated set (or a partial one: wav.scp, simulation.tsv, noisy/ or "
            "clean/); use --overwrite to replace it"
        )
    block = dict(load_block(args.config))
    for key in ("speech", "noise", "rir"):
        if getattr(args, key):
            block[key] = [{"data": d, "weight": 1.0} for d in getattr(args, key)]
    config = parse_config(block, args.config)
    fs = args.fs or SourceDir(config.speech[0].data).sampling_rate
    sim = Simulator(config, fs)
    length = int(round(args.length * fs)) or None

    for name in ("wav.scp", "spk1.scp", "utt2num_samples", "fs", "simulation.tsv"):
        (out / name).unlink(missing_ok=True)  # a partial set never looks complete
    for name in ("noisy", "clean"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    width = max(4, len(str(args.num - 1)))
    rows, noisy_scp, clean_scp, lengths = [], {}, {}, {}
    t_start = last = time.time()
    try:
        for i in range(args.num):
            noisy, target, draws = sim.simulate(item_rng(args.seed, 0, i), length)  # float32, as written
            utt = f"{args.prefix}_{i:0{width}d}"
            npath, cpath = out / "noisy" / f"{utt}.wav", out / "clean" / f"{utt}.wav"
            write_audio(npath, noisy, fs, "FLOAT")
            write_audio(cpath, target, fs, "FLOAT")
            clean64 = target.astype(np.float64)
            measured = snr_on_active(clean64, noisy.astype(np.float64) - clean64, fs)
            rows.append({"utt": utt, **draws, "measured_snr_db": measured})
            noisy_scp[utt], clean_scp[utt], lengths[utt] = npath.resolve(), cpath.resolve(), len(noisy)
            now = time.time()
            if now - last >= 10 or i + 1 == args.num:
                last = now
                eta = (now - t_start) / (i + 1) * (args.num - i - 1)
                log.info("%d/%d utterances, %.1f s elapsed, ETA %.0f s", i + 1, args.num, now - t_start, eta)
    except BaseException:
        for name in ("noisy", "clean"):  # no half-written set
            shutil.rmtree(out / name, ignore_errors=True)
        raise

    columns = list(rows[0])
    text = "\t".join(columns) + "\n" + "".join("\t".join(tsv_value(r[c]) for c in columns) + "\n" for r in rows)
    write_scp(out / "spk1.scp", clean_scp)
    write_scp(out / "utt2num_samples", lengths)
    atomic_write_text(out / "fs", f"{fs}\n")
    atomic_write_text(out / "simulation.tsv", text)
    write_scp(out / "wav.scp", noisy_scp)  # last: a set is complete once wav.scp exists
    seconds = sum(lengths.values()) / fs
    log.info("wrote %d utterances (%.1f s of audio at %d Hz) to %s", args.num, seconds, fs, out)
    return 0


def _main(argv: list[str]) -> int:
    args = get_parser().parse_args(argv)
    cli.setup_logging()
    return run(args)


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="se.bin.simulate")


if __name__ == "__main__":
    sys.exit(main())
