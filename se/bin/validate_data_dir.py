"""Check a data dir completely: every pair exists, is readable, mono, at the rate, equal length.

    python -m se.bin.validate_data_dir data/train [--fs 16000]
"""

from __future__ import annotations

import argparse
import logging
import sys

from se.audio import AudioError
from se.data import DataDirError, validate_data_dir

log = logging.getLogger("se.validate_data_dir")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m se.bin.validate_data_dir", description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", nargs="+")
    p.add_argument("--fs", type=int, default=None, help="expected sample rate")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(name)s) %(levelname)s: %(message)s")
    for d in args.data_dir:
        try:
            data = validate_data_dir(d, args.fs)
        except (DataDirError, AudioError) as exc:
            log.error("%s", exc)
            return 1
        hours = sum(u.num_samples for u in data.utterances) / (data.sampling_rate or args.fs or 1) / 3600
        log.info("%s: OK, %d utterances, %.2f h", d, len(data), hours)
    return 0


if __name__ == "__main__":
    sys.exit(main())
