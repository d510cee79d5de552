#!/usr/bin/env python3
r"""DNS Challenge 5 (ICASSP 2023) fullband training data: archive list, unpacking, source dirs, test sets.

    local/prepare_dns.py urls [--subsets "read_speech noise_fullband impulse_responses"] [--base-url URL]
    local/prepare_dns.py unpack --subset NAME ROOT ARCHIVE [ARCHIVE ...]
    local/prepare_dns.py check-layout ROOT [--subsets ...]
    local/prepare_dns.py prepare ROOT --out-dir data --dump-dir dump [--subsets ...] [--rates "16000 48000"]
        [--valid-fraction 0.02 --test-fraction 0.02 --seed 0] [--speaker-regex SUBSET=REGEX ...] [--nj 4]
    local/prepare_dns.py test-sets ROOT --out-dir data --dump-dir dump [--rates ...] [--nj 4]

The corpus, unpacked (ROOT is the folder that holds datasets_fullband/; sizes unpacked):

    datasets_fullband/clean_fullband/<subset>/...      827 GB: read_speech 299G, german_speech 319G,
        spanish_speech 65G, french_speech 62G, italian_speech 42G, vctk_wav48_silence_trimmed 27G,
        russian_speech 12G, emotional_speech 2.4G, VocalSet_48kHz_mono 974M
    datasets_fullband/noise_fullband/*.wav             58 GB (audioset + freesound)
    datasets_fullband/impulse_responses/...            5.9 GB (SLR26 simulated, SLR28 real RIRs)

urls: one line per archive of the chosen subsets, ``<url> <subset>`` (the DNS 5 blob names of
microsoft/DNS-Challenge's download-dns-challenge-5-*.sh scripts). Nothing is contacted.
unpack: the archive parts of one subset, concatenated in the order given, are read as ONE tar
stream (gzip or bzip2) into ROOT/.unpack_<subset>/ and moved to their place only when the whole
stream decompressed with correct checksums and held audio files; members are placed below the
path component that names the subset (``read_speech``, ``noise_fullband``,
``impulse_responses``), whatever prefix the archive uses.
prepare: source data dirs (se.bin.make_source_dir) OUT_DIR/<16k|48k>/{clean,noise,rir}_{train,valid,test}.
Clean speech is split by SPEAKER (no speaker in two sets): the speaker of a file comes from a
per-subset pattern searched in its path below the subset folder:

    read_speech                 reader_(\d+)             (LibriVox reader id in the file name)
    vctk_wav48_silence_trimmed  p225_..., s5_...         (VCTK speaker, folder or file name prefix)
    VocalSet_48kHz_mono         f1_..., m11_...          (VocalSet singer)
    emotional_speech            1001_DFA_ANG_XX.wav      (CREMA-D actor, first 4 digits)
    other subsets               the first folder below the subset folder

A file the pattern does not match (or a file directly in the subset folder, for the fallback)
is its own speaker, and the number of such files is logged as a warning: check real names and
give --speaker-regex SUBSET=REGEX (group 1 or the named group ``spk`` is the speaker) when the
split must be speaker-disjoint there. Per subset --valid-fraction and --test-fraction of the
speakers (at least one each when the subset has 3 or more) go to valid and test, chosen by a
seeded permutation (se.bin.make_source_dir.split_ids); speaker ids in utt2spk are <subset>-<speaker>. Noise files and RIRs are
split by file with the same fractions. RIRs are the files below impulse_responses/ except those
named as noise recordings (``*noise*``, SLR28's ``pointsource_noises``); multi-channel RIR
files contribute channel 0. Every rate of --rates gets its own dirs; files at another rate are
resampled ONCE into DUMP_DIR/<16k|48k>/... (resumable).
test-sets: the official synthetic test sets found below ROOT: every folder ``.../synthetic/<name>``
(``no_reverb``, ``with_reverb``) holding ``noisy/`` (and ``clean/``), noisy and clean matched by
their ``fileid_<n>`` suffix, become paired data dirs OUT_DIR/<rate>/dns_synthetic_<name>; a
``dev_testset`` folder (real recordings, no clean reference) becomes the noisy-only data dir
OUT_DIR/<rate>/dns_dev_testset (wav.scp, utt2num_samples, fs). Prints the names of the sets made.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import shutil
import sys
import tarfile
import time
import zlib
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from se import cli  # noqa: E402
from se.atomic import publish  # noqa: E402

log = logging.getLogger("prepare_dns")

BASE_URL = "https://dnschallengepublic.blob.core.windows.net/dns5archive/V5_training_dataset"
SPEECH_SUBSETS = (
    "read_speech", "german_speech", "spanish_speech", "french_speech", "italian_speech",
    "vctk_wav48_silence_trimmed", "russian_speech", "emotional_speech", "VocalSet_48kHz_mono",
)  # fmt: skip
SUBSETS = SPEECH_SUBSETS + ("noise_fullband", "impulse_responses")
DEFAULT_SUBSETS = ("read_speech", "noise_fullband", "impulse_responses")
AUDIO_SUFFIXES = (".wav", ".flac")


def _parts(name: str, ext: str, letters: str) -> list[str]:
    return [f"Track1_Headset/{name}.{ext}.parta{c}" for c in letters]


# subset -> blob names below BASE_URL (DNS 5 headset-track clean speech, noise and RIR archives)
BLOBS = {
    "read_speech": _parts("read_speech", "tgz", "abcdefghijklmnopqrstu"),
    "german_speech": _parts("german_speech", "tgz", "abcdefghjlmnopqrstuvw"),
    "spanish_speech": _parts("spanish_speech", "tgz", "abcdefg"),
    "french_speech": _parts("french_speech", "tar.gz", "abcdeh"),
    "italian_speech": _parts("italian_speech", "tgz", "abcd"),
    "vctk_wav48_silence_trimmed": _parts("vctk_wav48_silence_trimmed", "tgz", "abc"),
    "russian_speech": ["Track1_Headset/russian_speech.tgz"],
    "emotional_speech": ["Track1_Headset/emotional_speech.tgz"],
    "VocalSet_48kHz_mono": ["Track1_Headset/VocalSet_48kHz_mono.tgz"],
    "noise_fullband": [f"noise_fullband/datasets_fullband.noise_fullband.audioset_{i:03d}.tar.bz2" for i in range(7)]
    + [f"noise_fullband/datasets_fullband.noise_fullband.freesound_{i:03d}.tar.bz2" for i in range(2)],
    "impulse_responses": ["datasets_fullband.impulse_responses_000.tar.bz2"],
}

SPEAKER_REGEX = {
    "read_speech": r"reader_(\d+)",
    "vctk_wav48_silence_trimmed": r"(?:^|/)([ps]\d+)[_/]",
    "VocalSet_48kHz_mono": r"(?:^|/)([fm]\d+)[_/]",
    "emotional_speech": r"(?:^|/)(\d{4})_",
}


class CorpusError(cli.UserError):
    """The corpus on disk is missing, incomplete or damaged; the message says what to do."""


def subset_dir(root: Path, subset: str) -> Path:
    """Where a subset lives in the unpacked corpus."""
    base = Path(root) / "datasets_fullband"
    return base / "clean_fullband" / subset if subset in SPEECH_SUBSETS else base / subset


def parse_subsets(text: str) -> list[str]:
    names = text.replace(",", " ").split()
    unknown = [n for n in names if n not in SUBSETS]
    if unknown or not names:
        raise CorpusError(f"--subsets: unknown subset(s) {' '.join(unknown) or '(none given)'}; choose from {' '.join(SUBSETS)}")
    return list(dict.fromkeys(names))


def rate_tag(rate: int) -> str:
    return f"{rate // 1000}k" if rate % 1000 == 0 else str(rate)


# ------------------------------------------------------------------------------------------
# stage 0: archives
# ------------------------------------------------------------------------------------------


class _Concat(io.RawIOBase):
    """The files ``paths`` read one after the other (split archives), with progress logging."""

    def __init__(self, paths: list[Path]):
        self.paths, self.index, self.f = list(paths), 0, None
        self.total = sum(p.stat().st_size for p in self.paths)
        self.done, self.t0, self.last = 0, time.time(), 0.0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while self.index < len(self.paths):
            if self.f is None:
                self.f = open(self.paths[self.index], "rb")
            n = self.f.readinto(buf)
            if n:
                self.done += n
                elapsed = time.time() - self.t0
                if elapsed - self.last >= 10:
                    self.last = elapsed
                    eta = elapsed / self.done * (self.total - self.done)
                    log.info("unpacked %.1f of %.1f GB (%.0f%%), elapsed %.0f s, ETA %.0f s",
                             self.done / 1e9, self.total / 1e9, 100 * self.done / self.total, elapsed, eta)
                return n
            self.f.close()
            self.f, self.index = None, self.index + 1
        return 0

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        super().close()


def _member_target(name: str, subset: str) -> PurePosixPath | None:
    """Path of a member below the subset folder, or None for members to skip."""
    parts = [p for p in PurePosixPath(name).parts if p not in (".", "")]
    if not parts or parts[0] == "/" or ".." in parts:
        return None
    if subset in parts:
        parts = parts[parts.index(subset) + 1 :]
    return PurePosixPath(*parts) if parts else None


def unpack(root: Path, subset: str, archives: list[Path]) -> int:
    """Verify-while-extracting into ROOT/.unpack_<subset>/, then move into place; returns the audio count."""
    missing = [str(a) for a in archives if not a.is_file()]
    if missing:
        raise CorpusError(f"archive(s) not found: {', '.join(missing)}")
    target = subset_dir(root, subset)
    tmp = root / f".unpack_{subset}"
    if tmp.exists():
        shutil.rmtree(tmp)  # the leftovers of an interrupted unpack
    tmp.mkdir(parents=True)
    n_audio = 0
    names = ", ".join(a.name for a in archives)
    log.info("%s: unpacking %d archive(s) (%.1f GB) into %s", subset, len(archives),
             sum(a.stat().st_size for a in archives) / 1e9, target)
    try:
        with _Concat(archives) as raw, tarfile.open(fileobj=io.BufferedReader(raw, 1 << 20), mode="r|*") as tar:
            for m in tar:
                rel = _member_target(m.name, subset)
                if rel is None or not m.isfile():
                    continue
                dst = tmp / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                with open(dst, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                n_audio += rel.suffix.lower() in AUDIO_SUFFIXES
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CorpusError(
            f"{names}: damaged or incomplete archive ({type(exc).__name__}: {exc}); delete it and download it again"
        ) from None
    if n_audio == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CorpusError(f"{names}: no audio files in the archive(s); not the DNS 5 {subset} archives?")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    publish(tmp, target)  # se.atomic: rename + fsync of the parent dir
    log.info("%s: %d audio files, checksums OK -> %s", subset, n_audio, target)
    return n_audio


def check_layout(root: Path, subsets: list[str]) -> None:
    problems = []
    for s in subsets:
        d = subset_dir(root, s)
        if not d.is_dir():
            problems.append(f"{d}: folder not found")
        elif not any(f.lower().endswith(AUDIO_SUFFIXES) for _r, _d, fs in os.walk(d) for f in fs):
            problems.append(f"{d}: no .wav/.flac files")
    if problems:
        raise CorpusError(
            f"{root} does not hold the DNS 5 fullband subsets {' '.join(subsets)}:\n  " + "\n  ".join(problems)
            + "\nGive --dns-root the folder that holds datasets_fullband/ (clean_fullband/<subset>/, "
            "noise_fullband/, impulse_responses/), or let stage 0 download the subsets."
        )


# ------------------------------------------------------------------------------------------
# stage 1: source dirs
# ------------------------------------------------------------------------------------------


def speaker_of(rel: str, subset: str, pattern: re.Pattern | None) -> str | None:
    """Speaker of a file (relative path below the subset folder), None when unknown."""
    if pattern is not None:
        m = pattern.search(rel)
        if m is None:
            return None
        if "spk" in pattern.groupindex:
            return m.group("spk")
        return next((g for g in m.groups() if g), m.group(0))
    folders = PurePosixPath(rel).parts[:-1]
    return folders[0] if folders else None


def is_rir(rel: str) -> bool:
    low = rel.lower()
    return "noise" not in PurePosixPath(low).name and "pointsource_noises" not in low


def prepare(root: Path, out_dir: Path, dump_dir: Path, subsets: list[str], rates: list[int],
            valid_fraction: float, test_fraction: float, seed: int, speaker_regex: dict[str, str], nj: int) -> None:
    from se.bin.make_source_dir import make_source_dir, scan_audio, split_ids

    check_layout(root, subsets)
    groups: dict[str, dict[str, list]] = {}  # kind -> split -> sources
    utt2spk: dict[str, str] = {}
    speech = [s for s in subsets if s in SPEECH_SUBSETS]
    for s in speech:
        pattern = speaker_regex.get(s, SPEAKER_REGEX.get(s))
        try:
            compiled = re.compile(pattern) if pattern else None
        except re.error as exc:
            raise CorpusError(f"--speaker-regex {s}={pattern}: not a regular expression ({exc})") from None
        sources = scan_audio([subset_dir(root, s)], prefix=s)
        unknown = []
        for src in sources:
            spk = speaker_of(src.rel.split("/", 1)[1], s, compiled)
            if spk is None:
                unknown.append(src)
                spk = f"file_{src.id}"
            utt2spk[src.id] = f"{s}-{spk}"
        how = f"pattern {pattern!r}" if compiled else "first folder below the subset folder"
        if unknown:
            log.warning("%s: %d of %d files have no speaker by %s (e.g. %s): each is its own speaker, so the "
                        "split is not speaker-disjoint for them; give --speaker-regex %s=REGEX",
                        s, len(unknown), len(sources), how, unknown[0].path, s)
        spk_split = split_ids(sorted({utt2spk[x.id] for x in sources}), valid_fraction, test_fraction, seed, s)
        for src in sources:
            groups.setdefault("clean", {}).setdefault(spk_split[utt2spk[src.id]], []).append(src)
        counts = {k: sum(v == k for v in spk_split.values()) for k in ("train", "valid", "test")}
        log.info("%s: %d files, %d speakers (%s) -> train/valid/test speakers %d/%d/%d", s, len(sources),
                 len(spk_split), how, counts["train"], counts["valid"], counts["test"])
    for s, kind in (("noise_fullband", "noise"), ("impulse_responses", "rir")):
        if s not in subsets:
            continue
        sources = scan_audio([subset_dir(root, s)], prefix=s)
        if kind == "rir":
            sources = [x for x in sources if is_rir(x.rel)]
            if not sources:
                raise CorpusError(f"{subset_dir(root, s)}: no RIR files (all are named as noise recordings)")
        if len(sources) < 3:
            raise CorpusError(f"{subset_dir(root, s)}: {len(sources)} files; at least 3 are needed for train/valid/test")
        split = split_ids([x.id for x in sources], valid_fraction, test_fraction, seed, s)
        for src in sources:
            groups.setdefault(kind, {}).setdefault(split[src.id], []).append(src)
        log.info("%s: %d files -> train/valid/test %s", s, len(sources),
                 "/".join(str(len(groups[kind].get(k, []))) for k in ("train", "valid", "test")))
    if speech and not groups["clean"].get("valid"):
        raise CorpusError(f"{root}: too few speakers for a validation set (need a subset with 3 or more speakers)")
    for rate in rates:
        for kind, splits in groups.items():
            for split, sources in sorted(splits.items()):
                out = out_dir / rate_tag(rate) / f"{kind}_{split}"
                spk = {x.id: utt2spk[x.id] for x in sources} if kind == "clean" else None
                make_source_dir(sources, out, rate, dump_dir / rate_tag(rate) / "datasets_fullband", spk,
                                first_channel=kind == "rir", nj=nj)
                log.info("%s: %d files at %d Hz", out, len(sources), rate)


# ------------------------------------------------------------------------------------------
# official test sets
# ------------------------------------------------------------------------------------------


def _fileids(folder: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.rglob("*")):
        m = re.search(r"fileid_(\d+)$", p.stem)
        if p.suffix.lower() in AUDIO_SUFFIXES and m:
            key = f"fileid_{int(m.group(1)):05d}"
            if key in out:
                raise CorpusError(f"{p}: {key} also names {out[key]}")
            out[key] = p
    return out


def find_test_sets(root: Path) -> dict[str, tuple[Path, Path | None]]:
    """set name -> (noisy folder, clean folder or None)."""
    sets: dict[str, tuple[Path, Path | None]] = {}
    for d in sorted(root.rglob("synthetic")):
        if not d.is_dir():
            continue
        for sub in sorted(x for x in d.iterdir() if x.is_dir() and (x / "noisy").is_dir()):
            name = "dns_synthetic_" + re.sub(r"\W+", "_", sub.name)
            clean = sub / "clean" if (sub / "clean").is_dir() else None
            sets[name] = (sub / "noisy", clean)
    for d in sorted(root.rglob("dev_testset")):
        if d.is_dir():
            sets.setdefault("dns_dev_testset", (d, None))
    return sets


def prepare_test_sets(root: Path, out_dir: Path, dump_dir: Path, rates: list[int], nj: int) -> list[str]:
    from se.audio import audio_info
    from se.bin.make_source_dir import make_source_dir, scan_audio
    from se.data import make_data_dir
    from se.resample import resample_files

    made = []
    for name, (noisy_dir, clean_dir) in find_test_sets(root).items():
        if clean_dir is None:
            sources = scan_audio([noisy_dir])
            for rate in rates:
                make_source_dir(sources, out_dir / rate_tag(rate) / name, rate, dump_dir / rate_tag(rate) / name, nj=nj)
            log.info("%s: %d noisy files without clean references (%s)", name, len(sources), noisy_dir)
        else:
            noisy, clean = _fileids(noisy_dir), _fileids(clean_dir)
            only = sorted(set(noisy) ^ set(clean))
            if only:
                where = noisy_dir if only[0] in noisy else clean_dir
                raise CorpusError(f"{where}: {only[0]} has no partner in the other folder ({len(only)} unmatched)")
            if not noisy:
                raise CorpusError(f"{noisy_dir}: no files named *fileid_<n>.wav")
            for rate in rates:
                pairs = {}
                jobs = []
                for k in noisy:
                    pair = []
                    for role, src in (("noisy", noisy[k]), ("clean", clean[k])):
                        if audio_info(src).samplerate == rate:
                            pair.append(str(src))
                        else:
                            dst = dump_dir / rate_tag(rate) / name / role / f"{k}.wav"
                            jobs.append((str(src), str(dst), rate))
                            pair.append(str(dst))
                    pairs[k] = tuple(pair)
                resample_files(jobs, nj, log)
                make_data_dir(pairs, out_dir / rate_tag(rate) / name, rate)
            log.info("%s: %d noisy/clean pairs (%s)", name, len(noisy), noisy_dir.parent)
        made.append(name)
    return made


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="local/prepare_dns.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = p.add_subparsers(dest="command", required=True)
    subsets_help = f"subsets (default: {' '.join(DEFAULT_SUBSETS)}); all: {' '.join(SUBSETS)}"
    u = sub.add_parser("urls", help="the archive URLs of the chosen subsets")
    u.add_argument("--subsets", default=" ".join(DEFAULT_SUBSETS), help=subsets_help)
    u.add_argument("--base-url", default=BASE_URL, help="where the DNS 5 blobs are")
    x = sub.add_parser("unpack", help="verify and unpack the archive(s) of one subset")
    x.add_argument("--subset", required=True, choices=SUBSETS)
    x.add_argument("root")
    x.add_argument("archives", nargs="+", help="archive parts in order")
    c = sub.add_parser("check-layout", help="verify an unpacked copy")
    c.add_argument("root")
    c.add_argument("--subsets", default=" ".join(DEFAULT_SUBSETS), help=subsets_help)
    r = sub.add_parser("prepare", help="clean/noise/RIR source dirs (train/valid/test) at every rate")
    r.add_argument("root")
    r.add_argument("--out-dir", required=True)
    r.add_argument("--dump-dir", required=True)
    r.add_argument("--subsets", default=" ".join(DEFAULT_SUBSETS), help=subsets_help)
    r.add_argument("--rates", default="16000 48000")
    r.add_argument("--valid-fraction", type=float, default=0.02, help="share of speakers / noises / RIRs for valid")
    r.add_argument("--test-fraction", type=float, default=0.02, help="share for test")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--speaker-regex", action="append", default=[], metavar="SUBSET=REGEX",
                   help="speaker pattern of a subset (repeatable)")
    r.add_argument("--nj", type=int, default=4, help="resampling processes")
    t = sub.add_parser("test-sets", help="official synthetic / dev test sets found below ROOT")
    t.add_argument("root")
    t.add_argument("--out-dir", required=True)
    t.add_argument("--dump-dir", required=True)
    t.add_argument("--rates", default="16000 48000")
    t.add_argument("--nj", type=int, default=4)
    return p


def _rates(text: str) -> list[int]:
    try:
        rates = [int(r) for r in text.replace(",", " ").split()]
    except ValueError:
        raise CorpusError(f"--rates: expected sample rates in Hz, got {text!r}") from None
    if not rates or min(rates) <= 0:
        raise CorpusError(f"--rates: expected sample rates in Hz, got {text!r}")
    return rates


def _main(argv: list[str]) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(name)s) %(levelname)s: %(message)s")
    if args.command == "urls":
        for s in parse_subsets(args.subsets):
            for blob in BLOBS[s]:
                print(f"{args.base_url.rstrip('/')}/{blob} {s}")
    elif args.command == "unpack":
        unpack(Path(args.root), args.subset, [Path(a) for a in args.archives])
    elif args.command == "check-layout":
        check_layout(Path(args.root), parse_subsets(args.subsets))
        log.info("%s: subsets %s present", args.root, args.subsets)
    elif args.command == "prepare":
        if not (0 <= args.valid_fraction < 1 and 0 <= args.test_fraction < 1):
            raise CorpusError("--valid-fraction and --test-fraction must be in [0, 1)")
        regex = {}
        for item in args.speaker_regex:
            subset, sep, pattern = item.partition("=")
            if not sep or subset not in SPEECH_SUBSETS:
                raise CorpusError(f"--speaker-regex {item!r}: expected SUBSET=REGEX with a speech subset "
                                  f"({' '.join(SPEECH_SUBSETS)})")
            regex[subset] = pattern
        prepare(Path(args.root), Path(args.out_dir), Path(args.dump_dir), parse_subsets(args.subsets),
                _rates(args.rates), args.valid_fraction, args.test_fraction, args.seed, regex, args.nj)
    else:
        made = prepare_test_sets(Path(args.root), Path(args.out_dir), Path(args.dump_dir), _rates(args.rates), args.nj)
        log.info("official test sets: %s", " ".join(made) or "none found")
        print(" ".join(made))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="local/prepare_dns.py")


if __name__ == "__main__":
    sys.exit(main())
