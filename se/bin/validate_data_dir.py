"""Check data dirs completely and report every problem found (not only the first).

    python -m se.bin.validate_data_dir data/train data/valid [--fs 16000] [--nj 4]

A paired dir (wav.scp noisy, spk1.scp clean, utt2num_samples, fs) or a source dir (no spk1.scp:
wav.scp, utt2num_samples, fs, optional utt2spk = speech) is checked line by line and every
file is read to its end, block by block (bounded memory), in --nj processes with a progress
bar. Each problem is printed on its own line naming the file and the scp line. Errors make the
exit status 1; warnings do not. Per dir and signal, the effective bandwidth is reported.
"""

from __future__ import annotations

import argparse
import sys

from se import cli

log_prefix = "se.bin.validate_data_dir"


def get_parser() -> argparse.ArgumentParser:
    from se.validate import Limits, cpu_count

    d = Limits()
    p = argparse.ArgumentParser(
        prog="python -m se.bin.validate_data_dir", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"""errors (exit status 1):
  missing, empty, unreadable or non-audio files; not mono; another rate than fs (or --fs)
  NaN or Inf samples
  digital silence: peak below --silence-dbfs ({d.silence_dbfs:g} dBFS)
  shorter than one analysis window: --min-duration ({d.min_duration_s:g} s)
  a length other than utt2num_samples says, or than the other file of the pair
  duplicate ids, ids missing from wav.scp / spk1.scp / utt2num_samples / utt2spk
  unrelated pair: correlation of noisy and clean below --min-correlation ({d.min_correlation:g}; a -20 dB
    SNR mixture still correlates at 0.1)
  swapped pair: the clean file has more energy than the noisy one AND an estimated SNR lower by
    more than {d.swap_snr_margin_db:g} dB
warnings:
  clipping: more than --max-clipped ({100 * d.max_clipped_fraction:g}%) of the samples at or beyond
    --clip-level ({d.clip_level:g}) of full scale
  clean file carrying noise (spk1.scp files; source dirs with utt2spk): estimated SNR below
    --clean-snr-db ({d.clean_snr_db:g} dB). Estimated SNR = 95th minus 10th percentile of the
    energies of 20 ms frames (digitally silent frames excluded)
  narrow band: the effective bandwidth is below {d.narrowband_ratio:g} of the Nyquist frequency
    (e.g. a 48 kHz set that is upsampled 16 kHz audio). Effective bandwidth = the highest
    frequency whose long-term average power (32 ms Hann frames, smoothed over 1/64 of the band)
    is within --bandwidth-floor-db ({d.bandwidth_floor_db:g} dB) of the spectral peak
e.g.: python -m se.bin.validate_data_dir data/16k/train data/16k/valid --fs 16000 --nj 4""",
    )
    p.add_argument("data_dir", nargs="+")
    p.add_argument("--fs", type=cli.positive_int, default=None, help="expected sample rate")
    p.add_argument("--nj", type=cli.positive_int, default=min(4, cpu_count()), help="parallel processes")
    p.add_argument("--min-duration", type=cli.nonneg_float, default=d.min_duration_s, metavar="S")
    p.add_argument("--silence-dbfs", type=float, default=d.silence_dbfs, metavar="DB")
    p.add_argument("--clip-level", type=cli.fraction, default=d.clip_level)
    p.add_argument("--max-clipped", type=cli.fraction, default=d.max_clipped_fraction, metavar="FRACTION")
    p.add_argument("--min-correlation", type=cli.fraction, default=d.min_correlation)
    p.add_argument("--clean-snr-db", type=float, default=d.clean_snr_db, metavar="DB")
    p.add_argument("--bandwidth-floor-db", type=cli.positive_float, default=d.bandwidth_floor_db, metavar="DB")
    p.add_argument("--lists-only", action="store_true", help="check the lists only, open no audio (fast)")
    return p


def _main(argv: list[str]) -> int:
    from se.validate import Limits, check_data_dir

    args = get_parser().parse_args(argv)
    limits = Limits(min_duration_s=args.min_duration, silence_dbfs=args.silence_dbfs, clip_level=args.clip_level,
                    max_clipped_fraction=args.max_clipped, min_correlation=args.min_correlation,
                    clean_snr_db=args.clean_snr_db, bandwidth_floor_db=args.bandwidth_floor_db)
    failed = 0
    for d in args.data_dir:
        report = check_data_dir(d, args.fs, limits, nj=args.nj, check_audio=not args.lists_only, progress=True)
        for problem in report.problems:
            print(f"{log_prefix}: {problem}", file=sys.stderr)
        hours = report.samples / (report.rate or 1) / 3600
        bands = ", ".join(f"{role} {bw / 1000:.1f} kHz" for role, bw in report.bandwidth_hz.items())
        status = "OK" if not report.errors else f"{len(report.errors)} error(s)"
        print(f"{d}: {status}, {len(report.warnings)} warning(s); {report.kind} dir, {report.utterances} "
              f"utterances, {hours:.2f} h at {report.rate or '?'} Hz" + (f"; effective bandwidth: {bands}" if bands else ""))
        failed += bool(report.errors)
    if failed:
        print(f"{log_prefix}: error: {failed} of {len(args.data_dir)} data dir(s) have errors (listed above)",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog=log_prefix)


if __name__ == "__main__":
    sys.exit(main())
