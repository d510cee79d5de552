"""Check that two audio files hold the same signal within a tolerance (e.g. two backends' outputs).

    python -m se.bin.compare_audio REFERENCE.wav OTHER.wav [--tolerance 1e-4]

Passes (exit status 0) when max|other - reference| <= tolerance x max(1, max|reference|), the
parity rule of the onnxruntime backend against the torch one; prints the maximum difference
either way. The files must have the same rate and length.
"""

from __future__ import annotations

import argparse

import numpy as np

from se import cli


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m se.bin.compare_audio", description=__doc__.split("\n\n")[0],
        epilog="e.g.: python -m se.bin.compare_audio enhanced/torch/utt1.wav enhanced/onnxruntime/utt1.wav")
    p.add_argument("reference")
    p.add_argument("other")
    p.add_argument("--tolerance", type=cli.positive_float, default=1e-4,
                   help="allowed max difference relative to max(1, max|reference|) (default 1e-4)")
    return p


def _main(argv: list[str]) -> int:
    from se.audio import read_audio

    args = get_parser().parse_args(argv)
    ref, ref_rate = read_audio(args.reference, dtype="float64")
    other, other_rate = read_audio(args.other, dtype="float64")
    if ref_rate != other_rate or len(ref) != len(other):
        raise cli.UserError(f"{args.other}: {len(other)} samples at {other_rate} Hz, but {args.reference} "
                            f"has {len(ref)} at {ref_rate} Hz; compare outputs of the same input")
    diff = float(np.abs(other - ref).max()) if len(ref) else 0.0
    allowed = args.tolerance * max(1.0, float(np.abs(ref).max()) if len(ref) else 0.0)
    verdict = "same" if diff <= allowed else "DIFFERENT"
    print(f"se.bin.compare_audio: {verdict}: max difference {diff:.3g} (allowed {allowed:.3g}) "
          f"between {args.reference} and {args.other}")
    return 0 if diff <= allowed else 1


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="se.bin.compare_audio")


if __name__ == "__main__":
    raise SystemExit(main())
