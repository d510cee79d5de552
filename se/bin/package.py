"""Package a trained experiment as a model folder to publish (model card, manifest, exports).

    python -m se.bin.package --exp-dir exp/frcrn --out-dir models/frcrn_voicebank \
        [--checkpoint FILE | --average N] [--licence apache-2.0] [--formats onnx,torchscript]

The folder holds model.pt (the experiment's best checkpoint, a given one, or the average of
its N best; weights only), config.yaml, onnx/ and torchscript/ exports (se.export), a
package.json manifest and a README.md model card (network, training data and hours, training
command, git sha, the RESULTS.md tables, sampling rate, licence); see se/package.py. It is
written whole or not at all. ``python -m se.bin.enhance --model-dir DIR`` enhances with it.
"""

from __future__ import annotations

import argparse
import sys

from se import cli
from se.package import EXPORT_FORMATS, build_package


def formats_arg(text: str) -> list[str]:
    if text == "none":
        return []
    formats = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in EXPORT_FORMATS]
    if bad or not formats:
        raise argparse.ArgumentTypeError(f"expected 'none' or a comma-separated list of {', '.join(EXPORT_FORMATS)}, "
                                         f"got {text!r}")
    return formats


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m se.bin.package", description=__doc__.split("\n\n")[0])
    p.add_argument("--exp-dir", required=True, help="trained experiment dir (config.yaml, checkpoints)")
    p.add_argument("--out-dir", required=True, help="package folder to create (must not exist, or be empty)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", help="this checkpoint file (default: the experiment's last_best_checkpoint)")
    which.add_argument("--average", type=cli.positive_int, metavar="N",
                       help="the average of the experiment's N best checkpoints (se.bin.average_checkpoints)")
    p.add_argument("--licence", "--license", dest="licence",
                   help="licence of the weights for the card and the hub, e.g. apache-2.0, cc-by-4.0")
    p.add_argument("--formats", type=formats_arg, default=list(EXPORT_FORMATS),
                   help=f"exports to include: comma-separated {', '.join(EXPORT_FORMATS)} or none (default: all)")
    return p


def _main(argv: list[str]) -> int:
    args = get_parser().parse_args(argv)
    cli.setup_logging()
    cli.check_output_dir(args.out_dir, "--out-dir")
    manifest = build_package(args.exp_dir, args.out_dir, args.checkpoint, args.average, args.licence, args.formats)
    hours = [f"{s['set']} {s['hours']:.4g} h" for s in manifest["training"]["data"] if s["hours"] is not None]
    print(f"se.bin.package: wrote {args.out_dir} ({manifest['network']}, {manifest['checkpoint']['source']}; "
          f"{', '.join(hours) or 'training hours unknown'}; exports: {', '.join(manifest['exports']) or 'none'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="se.bin.package")


if __name__ == "__main__":
    sys.exit(main())
