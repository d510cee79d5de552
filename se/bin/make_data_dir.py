"""Write a data dir (wav.scp, spk1.scp, utt2num_samples, fs) from paired folders or a ClearVoice list.

    python -m se.bin.make_data_dir --noisy-dir D/noisy --clean-dir D/clean --out data/train [--fs 16000]
    python -m se.bin.make_data_dir --clearvoice-list tr_demand_28_spks_16k.scp --out data/train

Pairs are matched by file name; an unmatched file is an error naming it. Nothing is written
unless every pair is readable, mono, at one rate (--fs when given) and of equal length.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from se import cli
from se.data import DataDirError, make_data_dir, read_clearvoice_list

log = logging.getLogger("se.make_data_dir")


def pairs_from_dirs(noisy_dir: str, clean_dir: str) -> dict[str, tuple[str, str]]:
    def listing(d):
        d = Path(d)
        if not d.is_dir():
            raise DataDirError(f"{d}: directory not found")
        return {p.stem: str(p) for p in sorted(d.iterdir()) if p.suffix.lower() in (".wav", ".flac")}

    noisy, clean = listing(noisy_dir), listing(clean_dir)
    for utt in noisy:
        if utt not in clean:
            raise DataDirError(f"{noisy[utt]}: no file named {utt} in {clean_dir}")
    for utt in clean:
        if utt not in noisy:
            raise DataDirError(f"{clean[utt]}: no file named {utt} in {noisy_dir}")
    if not noisy:
        raise DataDirError(f"{noisy_dir}: no audio files")
    return {u: (noisy[u], clean[u]) for u in noisy}


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m se.bin.make_data_dir", description=__doc__.split("\n\n")[0])
    p.add_argument("--noisy-dir")
    p.add_argument("--clean-dir")
    p.add_argument("--clearvoice-list", help="ClearVoice 2-column list: noisy.wav clean.wav [duration]")
    p.add_argument("--out", required=True)
    p.add_argument("--fs", type=cli.positive_int, default=None, help="required sample rate")
    args = p.parse_args(argv)
    cli.setup_logging()
    if args.clearvoice_list:
        pairs = read_clearvoice_list(args.clearvoice_list)
        inputs = [args.clearvoice_list]
    elif args.noisy_dir and args.clean_dir:
        pairs = pairs_from_dirs(args.noisy_dir, args.clean_dir)
        inputs = []
    else:
        raise DataDirError("give --noisy-dir and --clean-dir, or --clearvoice-list")
    inputs += [p for pair in pairs.values() for p in pair]
    cli.check_output_dir(args.out, "--out", ["wav.scp", "spk1.scp", "utt2num_samples", "fs"], inputs)
    data = make_data_dir(pairs, args.out, args.fs)
    log.info("%s: %d utterances at %s Hz", args.out, len(data), data.sampling_rate)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="se.bin.make_data_dir")


if __name__ == "__main__":
    sys.exit(main())
