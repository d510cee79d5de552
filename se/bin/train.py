"""Train a network (single process, or under torchrun for DDP).

    python -m se.bin.train --config conf/train_frcrn.yaml --train-data data/train \
        --valid-data data/valid --exp-dir exp/frcrn [--init FILE] [--start-over] [--key value ...]

Any config key can be overridden as ``--key value`` (type-checked; unknown keys are errors).
Re-running the same command in an exp dir with a ``last_checkpoint`` resumes from it exactly;
``--start-over`` ignores it. A ClearVoice train YAML works as --config: its tr_list/cv_list
(2-column lists) are used when --train-data/--valid-data are not given. A config with a
``simulation:`` block (se/simulation.py) simulates the training data on the fly: no --train-data.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from se import cli
from se import config as config_lib
from se.allocator import retain_freed_memory
from se.data import make_data_dir, read_clearvoice_list
from se.provenance import write_provenance

log = logging.getLogger("se.train")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m se.bin.train", description=__doc__.split("\n\n")[0],
        epilog="Any other --key value pair overrides the config key of that name.",
    )
    p.add_argument("--config", help="YAML config (ours or a ClearVoice train YAML)")
    p.add_argument("--train-data", help="training data dir (wav.scp, spk1.scp, utt2num_samples); not with a "
                   "simulation: block in the config, which simulates the training data on the fly")
    p.add_argument("--valid-data", help="validation data dir")
    p.add_argument("--exp-dir", required=True, help="experiment dir (checkpoints, logs, config.yaml)")
    p.add_argument("--init", help="fine-tune from this checkpoint (= init_checkpoint_path)")
    p.add_argument("--start-over", action="store_true", help="ignore exp-dir/last_checkpoint")
    p.add_argument("--check-only", action="store_true",
                   help="check the config, the data dirs' lists and a resume, write nothing, start nothing")
    return p


def data_dir_from_list(list_file: str, exp_dir: Path, name: str, rate: int) -> str:
    """A ClearVoice list becomes a data dir under exp_dir/data/<name> (written once)."""
    out = exp_dir / "data" / name
    if not (out / "wav.scp").is_file():
        log.info("importing ClearVoice list %s into %s", list_file, out)
        make_data_dir(read_clearvoice_list(list_file), out, rate)
    return str(out)


def _main(argv: list[str]) -> int:
    args, rest = get_parser().parse_known_args(argv)
    from se.trainer import Trainer, check_resume, resolve_config, setup_distributed, setup_logging

    retain_freed_memory()  # CPU training: reuse freed tensor memory (se/allocator.py)
    dist = setup_distributed()
    setup_logging(dist)
    try:
        overrides = config_lib.parse_overrides(rest)
        if args.init:
            overrides["init_checkpoint_path"] = args.init
        conf = resolve_config(config_lib.load(args.config, overrides))
        exp_dir = cli.check_output_dir(args.exp_dir, "--exp-dir")
        if args.check_only:
            from se.data import DataDir

            for d in (args.train_data, args.valid_data):
                if d:
                    DataDir(d)  # the lists only; se.bin.validate_data_dir checks the audio
            last = check_resume(conf, exp_dir, args.start_over)
            print(f"se.bin.train: OK: {'would resume from ' + str(last) if last else 'would start from scratch'}")
            return 0
        exp_dir.mkdir(parents=True, exist_ok=True)
        train_dir, valid_dir = args.train_data, args.valid_data
        if conf["simulation"]:
            from se.simulation import parse_config

            parse_config(conf["simulation"], args.config or "command line")  # bad keys: error naming the file
            if train_dir:
                raise config_lib.ConfigError(
                    "--train-data and a simulation: block in the config exclude each other (the block "
                    "simulates the training data); drop one of them"
                )
        elif not train_dir:
            if not conf["tr_list"]:
                raise config_lib.ConfigError(
                    "give --train-data (a data dir), tr_list or a simulation: block in the config"
                )
            train_dir = data_dir_from_list(conf["tr_list"], exp_dir, "train", conf["sampling_rate"])
        if not valid_dir:
            if not conf["cv_list"]:
                raise config_lib.ConfigError("give --valid-data (a data dir) or cv_list in the config")
            valid_dir = data_dir_from_list(conf["cv_list"], exp_dir, "valid", conf["sampling_rate"])
        trainer = Trainer(conf, train_dir, valid_dir, str(exp_dir), dist, start_over=args.start_over)
        for key, value in trainer.network_kwargs().items():  # record the STFT settings used
            if key in conf and not conf[key]:
                conf[key] = value
        # resume (or refuse to) before anything is written: a refused resume leaves the exp dir
        # exactly as it was, config.yaml and provenance included
        trainer.resume_or_init()
        if dist.is_main:
            config_lib.save(conf, exp_dir / "config.yaml")
            command = sys.argv if argv == [a for a in sys.argv[1:] if a != "--debug"] else ["se.bin.train", *argv]
            write_provenance(exp_dir / "train_provenance.yaml", command)
        trainer.fit()
    except FloatingPointError as exc:  # training diverged (repeated non-finite updates)
        raise cli.UserError(str(exc)) from exc
    finally:
        import torch.distributed as torch_dist

        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="se.bin.train")


if __name__ == "__main__":
    sys.exit(main())
