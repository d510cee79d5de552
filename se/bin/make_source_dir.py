"""Write a source data dir (one signal per id: speech, noise or RIRs) from folders of audio.

    python -m se.bin.make_source_dir --audio-dir DIR [--audio-dir DIR2 ...] --out OUT --fs FS \
        [--resample-dir RDIR] [--utt2spk-regex REGEX] [--first-channel] [--holdout VALID TEST] [--nj N]

Every .wav/.flac below each --audio-dir (recursively, hidden files skipped) becomes one entry.
The id is the path relative to its --audio-dir without the extension, '/' replaced by '-' and
whitespace by '_'; with several --audio-dir the id starts with the folder's name
(``read_speech-book_00001_chp_0009_reader_06709_0``). Two files with one id are an error.

OUT gets ``wav.scp`` (``<id> <absolute path>``), ``utt2num_samples``, ``fs`` and, with
--utt2spk-regex, ``utt2spk`` (se.data.write_source_dir: sorted, atomic, only after every file
passed its checks; read with se.data.SourceDir). Files at FS Hz and mono are used where they are. Files at another rate are resampled
ONCE (se.resample, soxr VHQ) in --nj processes into RDIR/<relative path>.wav (default
OUT/wav); finished files are kept, so an interrupted run resumes. Multi-channel files are refused
unless --first-channel (RIR corpora): then channel 0 is written to RDIR and used.

--holdout VALID TEST writes OUT_train, OUT_valid and OUT_test instead of OUT: those fractions of
the speakers (with --utt2spk-regex: no speaker in two sets) or of the files, at least one each
(se.bin.make_source_dir.split_ids, seeded by --seed); resampled files go to one RDIR (default
OUT/wav) for all three.

--utt2spk-regex is searched in the relative path (with '/' separators); the speaker is the group
named ``spk``, else the first group that took part in the match, else the whole match. A file it
does not match is an error.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from se import cli
from se.audio import AudioError, audio_info
from se.data import DataDirError

log = logging.getLogger("se.make_source_dir")

AUDIO_SUFFIXES = (".wav", ".flac")


@dataclass(frozen=True)
class Source:
    """One audio file found below an --audio-dir."""

    id: str
    path: str  # absolute path of the original
    rel: str  # relative path (posix, with the folder name when several --audio-dir)


def scan_audio(audio_dirs: list[str | Path], prefix: str | None = None) -> list[Source]:
    """Every audio file below ``audio_dirs``, sorted by id; errors on missing dirs and id clashes.

    Relative paths (and so ids) start with each folder's name when there are several folders,
    or with ``prefix`` when given.
    """
    found: dict[str, Source] = {}
    for d in audio_dirs:
        d = Path(d)
        lead = prefix if prefix is not None else d.resolve().name if len(audio_dirs) > 1 else ""
        if not d.is_dir():
            raise DataDirError(f"{d}: audio directory not found")
        n_before = len(found)
        for root, dirs, files in os.walk(d, followlinks=True):
            dirs[:] = sorted(x for x in dirs if not x.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or not name.lower().endswith(AUDIO_SUFFIXES):
                    continue
                path = Path(root) / name
                rel = path.relative_to(d).as_posix()
                if lead:
                    rel = f"{lead}/{rel}"
                utt = re.sub(r"\s+", "_", rel.rsplit(".", 1)[0].replace("/", "-"))
                if utt in found:
                    raise DataDirError(
                        f"{path}: id '{utt}' is also the id of {found[utt].path}; rename one of them"
                        + (" or give the folders different names" if lead and prefix is None else "")
                    )
                found[utt] = Source(utt, str(path.resolve()), rel)
        if len(found) == n_before:
            raise DataDirError(f"{d}: no {'/'.join(AUDIO_SUFFIXES)} files below this directory")
    return [found[k] for k in sorted(found)]


def speakers(sources: list[Source], regex: str) -> dict[str, str]:
    """id -> speaker from ``regex`` searched in each relative path."""
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise DataDirError(f"--utt2spk-regex {regex!r}: not a regular expression ({exc})") from None
    out = {}
    for s in sources:
        m = pattern.search(s.rel)
        if m is None:
            raise DataDirError(f"{s.path}: --utt2spk-regex {regex!r} does not match its path {s.rel!r}")
        if "spk" in pattern.groupindex:
            spk = m.group("spk")
        else:
            spk = next((g for g in m.groups() if g is not None), m.group(0))
        if not spk or re.search(r"\s", spk):
            raise DataDirError(f"{s.path}: --utt2spk-regex gives the speaker {spk!r} (empty or with spaces)")
        out[s.id] = spk
    return out


def split_ids(keys: list[str], valid_fraction: float, test_fraction: float, seed: int, salt: str = "") -> dict[str, str]:
    """key -> 'train' | 'valid' | 'test' by a permutation seeded with (seed, crc32(salt)).

    valid and test get round(fraction x number of keys) keys, at least one each (when their
    fraction is above 0) once there are 3 or more keys; fewer keys all go to train.
    """
    import zlib

    import numpy as np

    keys = sorted(keys)
    n = len(keys)
    n_valid = n_test = 0
    if n >= 3:
        n_valid = max(1, round(valid_fraction * n)) if valid_fraction > 0 else 0
        n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
        if n_valid + n_test >= n:
            n_valid, n_test = min(n_valid, 1), min(n_test, 1)
    order = np.random.default_rng([seed, zlib.crc32(salt.encode())]).permutation(n)
    out = {}
    for rank, i in enumerate(order):
        out[keys[i]] = "valid" if rank < n_valid else "test" if rank < n_valid + n_test else "train"
    return out


def split_sources(sources: list[Source], utt2spk: dict[str, str] | None, valid_fraction: float,
                  test_fraction: float, seed: int, salt: str = "") -> dict[str, list[Source]]:
    """train/valid/test lists; with ``utt2spk`` by speaker (no speaker in two sets), else by file."""
    group = (lambda s: utt2spk[s.id]) if utt2spk else (lambda s: s.id)  # noqa: E731
    which = split_ids(sorted({group(s) for s in sources}), valid_fraction, test_fraction, seed, salt)
    out: dict[str, list[Source]] = {"train": [], "valid": [], "test": []}
    for s in sources:
        out[which[group(s)]].append(s)
    return out


def make_source_dir(
    sources: list[Source],
    out: str | Path,
    fs: int,
    resample_dir: str | Path | None = None,
    utt2spk: dict[str, str] | None = None,
    first_channel: bool = False,
    nj: int = 1,
) -> dict[str, int]:
    """Check every file, resample what is not at ``fs`` Hz mono, write OUT; returns id -> samples."""
    from tqdm import tqdm

    from se.data import write_source_dir
    from se.resample import resample_files

    if not sources:
        raise DataDirError(f"{out}: no audio files to write")
    out = Path(out)
    rdir = Path(resample_dir) if resample_dir else out / "wav"
    paths: dict[str, str] = {}
    lengths: dict[str, int] = {}
    jobs = []
    rates: dict[int, int] = {}
    for s in tqdm(sources, desc="checking audio", unit="file", file=sys.stderr, mininterval=2.0,
                  disable=len(sources) < 1000):
        info = audio_info(s.path)
        if info.channels != 1 and not first_channel:
            raise AudioError(f"{s.path}: {info.channels} channels, expected mono (for RIRs give --first-channel)")
        if info.frames == 0:
            raise AudioError(f"{s.path}: no samples")
        rates[info.samplerate] = rates.get(info.samplerate, 0) + 1
        if info.samplerate == fs and info.channels == 1:
            paths[s.id] = s.path
            lengths[s.id] = int(info.frames)
        else:
            dst = (rdir / s.rel).with_suffix(".wav").resolve()
            paths[s.id] = str(dst)
            subtype = "FLOAT" if first_channel else "PCM_16"  # RIR tails need more than 16 bits
            jobs.append((s.path, str(dst), fs, subtype))
    log.info("%d files (%s): %d used as they are, %d to resample/extract to %d Hz mono in %s",
             len(sources), ", ".join(f"{r} Hz: {n}" for r, n in sorted(rates.items())),
             len(sources) - len(jobs), len(jobs), fs, rdir)
    if jobs:
        resample_files(jobs, nj, log)
        # the true lengths of what was written
        by_dst = {dst: utt for utt, dst in paths.items()}
        for _src, dst, _rate, _sub in jobs:
            lengths[by_dst[dst]] = int(audio_info(dst).frames)
    if not utt2spk:
        (out / "utt2spk").unlink(missing_ok=True)  # never a stale speaker map from an earlier run
    write_source_dir(out, paths, lengths, fs, utt2spk)
    return lengths


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m se.bin.make_source_dir", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--audio-dir", action="append", required=True, help="folder scanned recursively (repeatable)")
    p.add_argument("--out", required=True, help="source data dir to write")
    p.add_argument("--fs", type=cli.positive_int, required=True, help="sample rate of the source dir")
    p.add_argument("--resample-dir", default=None, help="where resampled files go (default OUT/wav)")
    p.add_argument("--utt2spk-regex", default=None, help="speaker from the relative path (group 'spk', else first group, else match)")
    p.add_argument("--first-channel", action="store_true", help="use channel 0 of multi-channel files (RIRs)")
    p.add_argument("--holdout", type=float, nargs=2, metavar=("VALID", "TEST"), default=None,
                   help="write OUT_train, OUT_valid and OUT_test: these fractions of the speakers (with "
                   "--utt2spk-regex) or files held out for validation and test")
    p.add_argument("--seed", type=int, default=0, help="seed of the --holdout split")
    p.add_argument("--nj", type=cli.positive_int, default=1, help="resampling processes")
    args = p.parse_args(argv)
    cli.setup_logging()
    sources = scan_audio(args.audio_dir)
    utt2spk = speakers(sources, args.utt2spk_regex) if args.utt2spk_regex else None
    if args.holdout is None:
        parts = {"": sources}
    else:
        valid, test = args.holdout
        if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
            raise DataDirError(f"--holdout {valid} {test}: fractions must be in [0, 1) with a sum below 1")
        parts = {f"_{k}": v for k, v in split_sources(sources, utt2spk, valid, test, args.seed).items()}
        wanted = {"_train": 1.0, "_valid": valid, "_test": test}
        empty = [k[1:] for k, v in parts.items() if not v and wanted[k] > 0]
        if empty:
            unit = "speakers" if utt2spk else "files"
            raise DataDirError(f"{args.audio_dir[0]}: too few {unit} ({len(sources)} files) for a "
                               f"{'/'.join(empty)} set; need 3 or more {unit}")
    rdir = args.resample_dir or str(Path(args.out) / "wav")  # one resampled copy for all parts
    for suffix, part in parts.items():
        if not part:
            continue
        out = f"{args.out}{suffix}"
        spk = {s.id: utt2spk[s.id] for s in part} if utt2spk else None
        make_source_dir(part, out, args.fs, rdir, spk, args.first_channel, args.nj)
        extra = f", {len(set(spk.values()))} speakers" if spk else ""
        log.info("%s: %d files at %d Hz%s", out, len(part), args.fs, extra)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="se.bin.make_source_dir")


if __name__ == "__main__":
    sys.exit(main())
