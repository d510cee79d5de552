#!/usr/bin/env python3
"""Simulated room impulse responses (no download): pyroomacoustics' image method in random shoebox rooms.

    local/simulate_rirs.py --fs 16000 --num 50 --seed 0 --out-dir data/16k/rir_sim [--rt60 0.2 0.8]

RIR i comes from ``numpy.random.default_rng([seed, i])``: a room of random size (length 3-10 m,
width 3-8 m, height 2.5-4 m), a reverberation time uniform in --rt60 (wall absorption and image
order from Sabine's formula, pyroomacoustics.inverse_sabine), a source and a microphone at
least 0.5 m from every wall and 0.5-3 m apart. Each RIR is scaled to a peak of 1 and written
as DIR/wav/rir_<i>.wav (32-bit float); DIR itself becomes a source data dir (wav.scp,
utt2num_samples, fs; se.data.SourceDir) plus rirs.tsv with each room's parameters.
The same arguments always give the same files.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from se import cli  # noqa: E402
from se.audio import write_audio  # noqa: E402
from se.atomic import atomic_write_text  # noqa: E402
from se.data import write_source_dir  # noqa: E402

log = logging.getLogger("simulate_rirs")

ROOM_MIN = np.array([3.0, 3.0, 2.5])  # metres
ROOM_MAX = np.array([10.0, 8.0, 4.0])
WALL_MARGIN = 0.5
DISTANCE = (0.5, 3.0)


def draw_room(rng: np.random.Generator, rt60_range: tuple[float, float]) -> dict:
    """Room size, RT60, source and microphone positions (redrawn until Sabine's formula has a
    solution and the source-microphone distance is in DISTANCE)."""
    import pyroomacoustics as pra

    while True:
        dims = rng.uniform(ROOM_MIN, ROOM_MAX)
        rt60 = float(rng.uniform(*rt60_range))
        source = rng.uniform(WALL_MARGIN, dims - WALL_MARGIN)
        mic = rng.uniform(WALL_MARGIN, dims - WALL_MARGIN)
        distance = float(np.linalg.norm(source - mic))
        if not DISTANCE[0] <= distance <= DISTANCE[1]:
            continue
        try:
            absorption, max_order = pra.inverse_sabine(rt60, dims)
        except ValueError:  # room too large for this RT60
            continue
        return {"dims": dims, "rt60": rt60, "source": source, "mic": mic, "distance": distance,
                "absorption": float(absorption), "max_order": int(max_order)}


def room_rir(room: dict, fs: int) -> np.ndarray:
    import pyroomacoustics as pra

    shoebox = pra.ShoeBox(room["dims"], fs=fs, materials=pra.Material(room["absorption"]),
                          max_order=room["max_order"])
    shoebox.add_source(room["source"])
    shoebox.add_microphone(room["mic"])
    shoebox.compute_rir()
    h = np.asarray(shoebox.rir[0][0], dtype=np.float64)
    return h / np.max(np.abs(h))


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="local/simulate_rirs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--fs", type=int, required=True, choices=(16000, 48000), help="sample rate")
    p.add_argument("--num", type=cli.positive_int, required=True, help="number of RIRs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", required=True, help="source data dir to write (wavs under <out-dir>/wav)")
    p.add_argument("--rt60", type=float, nargs=2, default=(0.2, 0.8), metavar=("MIN", "MAX"),
                   help="reverberation time range in seconds")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(name)s) %(levelname)s: %(message)s")
    if not 0.05 <= args.rt60[0] <= args.rt60[1] <= 3.0:
        raise cli.UserError(f"--rt60 must be MIN MAX with 0.05 <= MIN <= MAX <= 3.0 seconds, got {args.rt60}")
    out = Path(args.out_dir)
    paths, lengths, rows = {}, {}, []
    t_start = last = time.time()
    for i in range(args.num):
        room = draw_room(np.random.default_rng([args.seed, i]), tuple(args.rt60))
        h = room_rir(room, args.fs)
        rid = f"rir_{i:05d}"
        paths[rid] = out / "wav" / f"{rid}.wav"
        write_audio(paths[rid], h, args.fs, "FLOAT")
        lengths[rid] = len(h)
        rows.append("\t".join([rid, *(f"{v:.3f}" for v in room["dims"]), f"{room['rt60']:.3f}",
                               f"{room['distance']:.3f}", f"{room['absorption']:.4f}", str(room["max_order"])]))
        now = time.time()
        if now - last >= 10 or i + 1 == args.num:
            last = now
            eta = (now - t_start) / (i + 1) * (args.num - i - 1)
            log.info("%d/%d RIRs, ETA %.0f s", i + 1, args.num, eta)
    header = "id\tlength_m\twidth_m\theight_m\trt60_s\tdistance_m\tabsorption\tmax_order\n"
    atomic_write_text(out / "rirs.tsv", header + "\n".join(rows) + "\n")
    write_source_dir(out, {k: str(v) for k, v in paths.items()}, lengths, args.fs)
    log.info("wrote %d RIRs at %d Hz to %s", args.num, args.fs, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="local/simulate_rirs.py")


if __name__ == "__main__":
    sys.exit(main())
