"""Export a trained network (or a ClearVoice release checkpoint) to ONNX or TorchScript.

    python -m se.bin.export --network FRCRN_SE_16K --checkpoint exp/frcrn/model.avg5.pt \
        --format onnx --out-dir deploy/frcrn [--quantize int8]

Writes DIR/model.onnx (model.int8.onnx with --quantize int8) or DIR/model.pt (TorchScript) and
DIR/export.json; the exported file is the network's waveform step (see se/export.py), checked
with onnx.checker and run against the torch model before export.json is written. Enhance with
it: python -m se.bin.enhance --backend onnxruntime --model-dir DIR --input ... --output-dir ...
"""

from __future__ import annotations

import argparse
import logging
import sys

from se import cli
from se.export import FORMATS, QUANTIZE, export_model
from se.models import network_names


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m se.bin.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--network", choices=network_names(), help="network (required for ClearVoice files)")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (ours, averaged or ClearVoice) or experiment dir")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--quantize", choices=QUANTIZE, help="dynamic int8 weights (ONNX only)")
    args = p.parse_args(argv)
    cli.setup_logging()
    path = export_model(args.checkpoint, args.network, args.format, args.out_dir, args.quantize)
    logging.getLogger("se.export").info("wrote %s and %s", path, path.parent / "export.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="se.bin.export")


if __name__ == "__main__":
    sys.exit(main())
