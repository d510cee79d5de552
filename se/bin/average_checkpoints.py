"""Average the N best checkpoints of an experiment (by validation loss) into one model file.

    python -m se.bin.average_checkpoints --exp-dir exp/frcrn --num 5 [--out exp/frcrn/model.avg5.pt]

As ESPnet does: floating-point parameters and buffers are averaged, integer buffers (e.g.
BatchNorm's num_batches_tracked) are taken from the best checkpoint. The output is a
self-describing checkpoint ({'model', 'network', 'network_kwargs', 'sampling_rate', ...})
that se.bin.enhance and steps/enhance.sh --checkpoint accept.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from se import cli
from se.checkpoint import CheckpointError, atomic_torch_save, list_checkpoints, read_pointer, torch_load

log = logging.getLogger("se.average_checkpoints")


def best_checkpoints(exp_dir: Path, num: int) -> list[Path]:
    """The ``num`` best checkpoints present in exp_dir, by the validation loss they recorded."""
    last = read_pointer(exp_dir, "last_checkpoint")
    if last is None:
        raise CheckpointError(f"{exp_dir}: no last_checkpoint (train first)")
    history = torch_load(last).get("trainer", {}).get("history", {})
    present = {p.name: p for p in list_checkpoints(exp_dir)}
    scored = sorted((loss, name) for name, loss in history.items() if name in present)
    if not scored:
        raise CheckpointError(f"{exp_dir}: no checkpoint with a validation loss")
    if len(scored) < num:
        log.warning("%s: only %d validated checkpoints are kept, averaging those", exp_dir, len(scored))
    return [present[name] for _, name in scored[:num]]


def average(files: list[Path]) -> dict:
    states = [torch_load(f) for f in files]
    base = states[0]
    for f, s in zip(files, states):
        if s.get("network") != base.get("network") or s.get("network_kwargs") != base.get("network_kwargs"):
            raise CheckpointError(f"{f}: another network or size than {files[0]}")
    avg = {}
    for key, value in base["model"].items():
        if value.is_floating_point():
            avg[key] = sum(s["model"][key].double() for s in states).div(len(states)).to(value.dtype)
        else:
            avg[key] = value.clone()
    out = {k: base[k] for k in ("network", "network_kwargs", "sampling_rate", "config") if k in base}
    out.update(model=avg, epoch=base.get("epoch"), step=base.get("step"),
               averaged_from=[f.name for f in files])
    return out


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m se.bin.average_checkpoints", description=__doc__.split("\n\n")[0])
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--num", type=cli.positive_int, default=5, help="how many best checkpoints to average")
    p.add_argument("--out", help="output file (default EXP/model.avg<N>.pt)")
    args = p.parse_args(argv)
    cli.setup_logging()
    exp = Path(args.exp_dir)
    if not exp.is_dir():
        raise CheckpointError(f"{exp}: experiment dir not found")
    files = best_checkpoints(exp, args.num)
    out = Path(args.out) if args.out else exp / f"model.avg{args.num}.pt"
    # never over a file the average is made from, a pointer or another checkpoint of the run
    keep = [exp / "last_checkpoint", exp / "last_best_checkpoint", *list_checkpoints(exp)]
    cli.check_output_file(out, "--out", [*files, *keep])
    atomic_torch_save(average(files), out)
    log.info("averaged %s into %s", ", ".join(f.name for f in files), out)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="se.bin.average_checkpoints")


if __name__ == "__main__":
    sys.exit(main())
