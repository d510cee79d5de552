#!/usr/bin/env python3
r"""VoiceBank-DEMAND (Valentini-Botinhao et al., 2016; 28-speaker set): verify, unpack, prepare.

    local/prepare_voicebank_demand.py check-layout ROOT [--expected-train 11572 --expected-test 824]
    local/prepare_voicebank_demand.py unpack ZIP ROOT --expected 11572
    local/prepare_voicebank_demand.py prepare ROOT --out-dir data --dump-dir dump \
        [--valid-speakers "p226 p287"] [--rates "16000 48000"] [--sets "train valid test"] [--nj 4]

The corpus (Edinburgh DataShare, handle 10283/2791) unpacks into four folders of 48 kHz wavs
named <speaker>_<number>.wav:

    ROOT/clean_trainset_28spk_wav  ROOT/noisy_trainset_28spk_wav   11572 files each
    ROOT/clean_testset_wav         ROOT/noisy_testset_wav            824 files each

check-layout: the four folders exist, hold the expected numbers of wavs, and the noisy and clean
folders of a set hold the same file names.
unpack: tests the archive's integrity (CRC of every member) and counts its wavs BEFORE anything
is extracted; extracts into ROOT/<archive name>/.
prepare: data dirs (se.data.make_data_dir: noisy and clean matched by utterance id = file name,
equal lengths checked) at every rate of --rates, in OUT_DIR/<16k|48k>/<train|valid|test>.
VoiceBank-DEMAND has no validation set: the training utterances of --valid-speakers form
``valid`` and are left out of ``train``. The native rate points at the corpus files; any other
rate is resampled ONCE here (se.resample, soxr VHQ) in --nj processes into
DUMP_DIR/<16k>/<corpus folder>/<utt>.wav. Finished files are kept, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import zipfile
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from se import cli  # noqa: E402
from se.audio import audio_info  # noqa: E402
from se.resample import resample_files  # noqa: E402

# se.data (and torch with it) is imported for `prepare` and `unpack` only: verifying stays quick.

log = logging.getLogger("prepare_voicebank_demand")

URL = "https://datashare.ed.ac.uk/handle/10283/2791"
# set -> (noisy folder, clean folder); each folder is also the name of its zip archive
FOLDERS = {
    "train": ("noisy_trainset_28spk_wav", "clean_trainset_28spk_wav"),
    "test": ("noisy_testset_wav", "clean_testset_wav"),
}
EXPECTED = {"train": 11572, "test": 824}
NATIVE_RATE = 48000


class CorpusError(cli.UserError):
    """The corpus on disk is missing, incomplete or damaged; the message says what to do."""


def rate_tag(rate: int) -> str:
    """16000 -> '16k' (the data dir / dump dir name of a rate)."""
    return f"{rate // 1000}k" if rate % 1000 == 0 else str(rate)


def wav_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix.lower() == ".wav" and not p.name.startswith(".")}


# ------------------------------------------------------------------------------------------
# stage 0: verify and unpack
# ------------------------------------------------------------------------------------------


def check_layout(root: Path, expected: dict[str, int]) -> None:
    """Raises CorpusError naming every folder that is missing or has the wrong file count."""
    problems = []
    for name, (noisy, clean) in FOLDERS.items():
        names = {}
        for folder in (noisy, clean):
            path = root / folder
            if not path.is_dir():
                problems.append(f"{path}: folder not found")
                continue
            names[folder] = wav_names(path)
            if len(names[folder]) != expected[name]:
                problems.append(f"{path}: {len(names[folder])} wav files, expected {expected[name]}")
        if len(names) == 2 and names[noisy] != names[clean]:
            only = sorted(names[noisy] ^ names[clean])
            problems.append(
                f"{root / noisy} and {root / clean} hold different file names "
                f"({len(only)} unmatched, e.g. {', '.join(only[:3])})"
            )
    if problems:
        raise CorpusError(
            f"{root} is not a complete VoiceBank-DEMAND (28 speakers) copy:\n  " + "\n  ".join(problems)
            + f"\nIt needs the four folders of {URL} "
            "(clean_trainset_28spk_wav, noisy_trainset_28spk_wav, clean_testset_wav, noisy_testset_wav)."
        )


def zip_wavs(archive: Path) -> list[zipfile.ZipInfo]:
    """The wav members of ``archive`` after an integrity test of every member."""
    try:
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CorpusError(f"{archive}: not a readable zip archive ({exc}); delete it and download it again") from None
    if bad is not None:
        raise CorpusError(f"{archive}: member {bad} fails the CRC check; delete the archive and download it again")
    wavs = []
    for m in members:
        path = PurePosixPath(m.filename)
        if m.is_dir() or path.suffix.lower() != ".wav" or path.name.startswith(".") or "__MACOSX" in path.parts:
            continue
        wavs.append(m)
    return wavs


def unpack(archive: Path, root: Path, expected: int) -> Path:
    """Verify ``archive`` (integrity, wav count), then extract its wavs into ROOT/<archive stem>/."""
    folder = archive.name[: -len(".zip")] if archive.name.endswith(".zip") else archive.stem
    wavs = zip_wavs(archive)
    if len({PurePosixPath(m.filename).name for m in wavs}) != len(wavs):
        raise CorpusError(f"{archive}: the same wav file name appears in several folders of the archive")
    if len(wavs) != expected:
        raise CorpusError(
            f"{archive}: {len(wavs)} wav files, expected {expected}; not the 28-speaker archive of {URL}, "
            "or a truncated download (delete it and download it again)"
        )
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    log.info("%s: %d wav files, integrity OK; extracting into %s", archive, len(wavs), out)
    from se.atomic import atomic_write  # the one atomic writer (temp file + rename, 0644)

    with zipfile.ZipFile(archive) as z:
        for m in wavs:
            # flatten whatever folder the archive uses; the utterance id is the file name
            with z.open(m) as src:
                atomic_write(out / PurePosixPath(m.filename).name, lambda dst: shutil.copyfileobj(src, dst, 1 << 20))
    return out


# ------------------------------------------------------------------------------------------
# stage 1: data dirs
# ------------------------------------------------------------------------------------------


def split_speakers(pairs: dict, valid_speakers: list[str], where: Path) -> tuple[dict, dict]:
    """(train, valid): the utterances of ``valid_speakers`` (id prefix before '_') go to valid."""
    speaker = {utt: utt.split("_", 1)[0] for utt in pairs}
    missing = sorted(set(valid_speakers) - set(speaker.values()))
    if missing:
        raise CorpusError(
            f"{where}: no utterances of the validation speaker(s) {', '.join(missing)}; speakers are "
            f"{', '.join(sorted(set(speaker.values())))}"
        )
    valid = {u: p for u, p in pairs.items() if speaker[u] in valid_speakers}
    train = {u: p for u, p in pairs.items() if speaker[u] not in valid_speakers}
    if not train:
        raise CorpusError(f"{where}: every training speaker is held out for validation")
    return train, valid


def dump_path(dump_dir: Path, rate: int, path: str) -> str:
    """DUMP_DIR/<16k>/<corpus folder>/<file name>: the corpus layout at another rate."""
    p = Path(path)
    return str(dump_dir / rate_tag(rate) / p.parent.name / p.name)


def prepare(root: Path, out_dir: Path, dump_dir: Path, valid_speakers: list[str], rates: list[int],
            sets: list[str], nj: int) -> None:
    from se.bin.make_data_dir import pairs_from_dirs
    from se.data import make_data_dir

    pairs = {}
    if {"train", "valid"} & set(sets):
        noisy, clean = (root / f for f in FOLDERS["train"])
        pairs["train"], pairs["valid"] = split_speakers(pairs_from_dirs(noisy, clean), valid_speakers, noisy)
    if "test" in sets:
        pairs["test"] = pairs_from_dirs(*(root / f for f in FOLDERS["test"]))
    pairs = {s: pairs[s] for s in sets}
    first_noisy = next(iter(pairs[sets[0]].values()))[0]
    native = audio_info(first_noisy).samplerate
    for rate in rates:
        if rate == native:
            at_rate = pairs
        else:
            at_rate = {s: {u: (dump_path(dump_dir, rate, n), dump_path(dump_dir, rate, c)) for u, (n, c) in ps.items()}
                       for s, ps in pairs.items()}
            jobs = [(src, dst, rate) for s in sets for u in pairs[s]
                    for src, dst in zip(pairs[s][u], at_rate[s][u])]
            resample_files(jobs, nj, log)
        for s in sets:
            data = make_data_dir(at_rate[s], out_dir / rate_tag(rate) / s, rate)
            log.info("%s: %d utterances at %d Hz", data.path, len(data), rate)


# ------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="local/prepare_voicebank_demand.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check-layout", help="verify an unpacked corpus")
    c.add_argument("root")
    c.add_argument("--expected-train", type=cli.positive_int, default=EXPECTED["train"], help="wavs per training folder")
    c.add_argument("--expected-test", type=cli.positive_int, default=EXPECTED["test"], help="wavs per test folder")
    u = sub.add_parser("unpack", help="verify a zip archive, then extract it into ROOT/<archive name>/")
    u.add_argument("archive")
    u.add_argument("root")
    u.add_argument("--expected", type=cli.positive_int, required=True, help="number of wav files in the archive")
    r = sub.add_parser("prepare", help="data dirs for train, valid and test at every rate")
    r.add_argument("root")
    r.add_argument("--out-dir", required=True, help="data dirs go to OUT_DIR/<16k|48k>/<set>")
    r.add_argument("--dump-dir", required=True, help="resampled audio goes to DUMP_DIR/<16k>/...")
    r.add_argument("--valid-speakers", default="p226 p287", help="training speakers held out as valid")
    r.add_argument("--rates", default="16000 48000", help="sample rates of the data dirs")
    r.add_argument("--sets", default="train valid test", help="sets to prepare")
    r.add_argument("--nj", type=cli.positive_int, default=4, help="resampling processes")
    return p


def words(text: str) -> list[str]:
    return text.replace(",", " ").split()


def _main(argv: list[str]) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(name)s) %(levelname)s: %(message)s")
    if args.command == "check-layout":
        check_layout(Path(args.root), {"train": args.expected_train, "test": args.expected_test})
        log.info("%s: complete (%d training and %d test pairs)", args.root, args.expected_train, args.expected_test)
    elif args.command == "unpack":
        unpack(Path(args.archive), Path(args.root), args.expected)
    else:
        sets = words(args.sets)
        unknown = sorted(set(sets) - {"train", "valid", "test"})
        if unknown or not sets:
            raise CorpusError(f"--sets: expected some of train valid test, got {args.sets!r}")
        if not all(r.isdigit() and int(r) > 0 for r in words(args.rates)) or not words(args.rates):
            raise CorpusError(f"--rates: expected sample rates in Hz, e.g. '16000 48000', got {args.rates!r}")
        rates = [int(r) for r in words(args.rates)]
        prepare(Path(args.root), Path(args.out_dir), Path(args.dump_dir), words(args.valid_speakers),
                rates, sets, args.nj)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="local/prepare_voicebank_demand.py")


if __name__ == "__main__":
    sys.exit(main())
