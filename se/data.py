"""Kaldi/ESPnet-style data directories and the training dataset.

A data directory ``data/<set>/`` holds three text files, sorted by utterance id:

* ``wav.scp``          ``<utt> <noisy path>``
* ``spk1.scp``         ``<utt> <clean path>``
* ``utt2num_samples``  ``<utt> <number of samples>``

All files of a directory are at one sample rate (written to ``fs``, one line). Resampling
happens once, when the directory is prepared; loading never resamples.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from se.audio import AudioError, audio_info, read_audio
from se.cli import UserError

log = logging.getLogger(__name__)


class DataDirError(UserError, ValueError):
    pass


class DataCheckError(DataDirError, AudioError):
    """validate_data_dir found problems; the message lists all of them, one per line."""


def read_scp(path: str | Path, errors: list[str] | None = None, lines: dict[str, int] | None = None) -> dict[str, str]:
    """``<key> <value>`` lines -> dict; errors name the file and line.

    ``errors``: when given, every malformed or duplicate line is appended to it (and skipped)
    instead of raising at the first. ``lines``: filled with key -> line number.
    """
    path = Path(path)
    if not path.is_file():
        raise DataDirError(f"{path}: not found")
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                parts = line.split(maxsplit=1)
                if len(parts) != 2:
                    msg = f"{path} line {lineno}: expected '<utt> <value>', got {line!r}"
                elif parts[0] in out:
                    msg = f"{path} line {lineno}: duplicate utterance id {parts[0]} (first on line {first[parts[0]]})"
                else:
                    out[parts[0]] = parts[1]
                    first[parts[0]] = lineno
                    continue
                if errors is None:
                    raise DataDirError(msg)
                errors.append(msg)
    except UnicodeDecodeError:
        raise DataDirError(f"{path}: not a text file (expected '<utt> <value>' lines)") from None
    if lines is not None:
        lines.update(first)
    return out


def scp_line(path: str | Path, key: str) -> int:
    """Line number of ``key`` in an scp file (for error messages)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.split(maxsplit=1)[:1] == [key]:
                return lineno
    return 0


def write_scp(path: str | Path, items: dict[str, object]) -> None:
    from se.atomic import atomic_write_text

    atomic_write_text(path, "".join(f"{k} {items[k]}\n" for k in sorted(items)))


@dataclass
class Utterance:
    utt: str
    noisy: str
    clean: str
    num_samples: int


class DataDir:
    """Reads a data directory (no audio is opened here)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataDirError(f"{self.path}: data directory not found (run the data preparation stage)")
        self.wav_scp = self.path / "wav.scp"
        self.spk1_scp = self.path / "spk1.scp"
        noisy = read_scp(self.wav_scp)
        clean = read_scp(self.spk1_scp)
        lengths_file = self.path / "utt2num_samples"
        lengths = read_scp(lengths_file)
        if not noisy:
            raise DataDirError(f"{self.wav_scp}: no utterances")
        for utt in noisy:
            if utt not in clean:
                raise DataDirError(
                    f"{self.wav_scp} line {scp_line(self.wav_scp, utt)}: utterance {utt} is missing "
                    f"from {self.spk1_scp}"
                )
            if utt not in lengths:
                raise DataDirError(
                    f"{self.wav_scp} line {scp_line(self.wav_scp, utt)}: utterance {utt} is missing "
                    f"from {lengths_file} (re-run the data preparation stage)"
                )
        for utt in clean:
            if utt not in noisy:
                raise DataDirError(
                    f"{self.spk1_scp} line {scp_line(self.spk1_scp, utt)}: utterance {utt} is not in "
                    f"{self.wav_scp}"
                )
        self.utterances: list[Utterance] = []
        for utt in sorted(noisy):
            try:
                n = int(lengths[utt])
            except ValueError:
                raise DataDirError(
                    f"{lengths_file} line {scp_line(lengths_file, utt)}: not an integer: {lengths[utt]!r}"
                ) from None
            self.utterances.append(Utterance(utt, noisy[utt], clean[utt], n))
        fs_file = self.path / "fs"
        self.sampling_rate = None
        if fs_file.is_file():
            text = fs_file.read_text().split()
            if len(text) != 1 or not text[0].isdigit() or int(text[0]) <= 0:
                raise DataDirError(f"{fs_file}: expected one positive integer (the sample rate), got {' '.join(text)!r}")
            self.sampling_rate = int(text[0])

    def __len__(self) -> int:
        return len(self.utterances)

    def where(self, utt: str, which: str = "noisy") -> str:
        scp = self.wav_scp if which == "noisy" else self.spk1_scp
        return f"{scp} line {scp_line(scp, utt)}"


class SourceDir:
    """A source data directory: one signal per id (clean speech, noise or room impulse responses).

    * ``wav.scp``          ``<id> <absolute path>``
    * ``utt2num_samples``  ``<id> <number of samples>``
    * ``fs``               the sample rate of every file (one line)
    * ``utt2spk``          optional, ``<id> <speaker>`` (speech)

    Files are mono at ``fs`` (of multi-channel RIR files channel 0 is used). Nothing is
    opened here; ``ids``/``paths``/``num_samples`` are aligned lists sorted by id.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataDirError(f"{self.path}: source data directory not found (run the data preparation stage)")
        self.wav_scp = self.path / "wav.scp"
        lengths_file = self.path / "utt2num_samples"
        wavs = read_scp(self.wav_scp)
        lengths = read_scp(lengths_file)
        if not wavs:
            raise DataDirError(f"{self.wav_scp}: no entries")
        fs_file = self.path / "fs"
        if not fs_file.is_file():
            raise DataDirError(f"{fs_file}: not found (one line: the sample rate of every file)")
        fs_text = fs_file.read_text().split()
        if not fs_text or not fs_text[0].isdigit() or int(fs_text[0]) <= 0:
            raise DataDirError(f"{fs_file} line 1: expected a sample rate in Hz, got {' '.join(fs_text)!r}")
        self.sampling_rate = int(fs_text[0])
        self.ids = sorted(wavs)
        self.paths = [wavs[i] for i in self.ids]
        self.num_samples: list[int] = []
        for i in self.ids:
            if i not in lengths:
                raise DataDirError(
                    f"{self.wav_scp} line {scp_line(self.wav_scp, i)}: {i} is missing from {lengths_file} "
                    "(re-run the data preparation stage)"
                )
            value = lengths[i]
            if not value.isdigit() or int(value) <= 0:
                raise DataDirError(
                    f"{lengths_file} line {scp_line(lengths_file, i)}: expected a positive sample count, "
                    f"got {value!r}"
                )
            self.num_samples.append(int(value))
        for i in lengths:
            if i not in wavs:
                raise DataDirError(f"{lengths_file} line {scp_line(lengths_file, i)}: {i} is not in {self.wav_scp}")
        spk_file = self.path / "utt2spk"
        self.utt2spk = read_scp(spk_file) if spk_file.is_file() else {}

    def __len__(self) -> int:
        return len(self.ids)

    def where(self, index: int) -> str:
        return f"{self.wav_scp} line {scp_line(self.wav_scp, self.ids[index])}"


def write_source_dir(out_dir: str | Path, paths: dict[str, str], num_samples: dict[str, int], fs: int,
                     utt2spk: dict[str, str] | None = None) -> SourceDir:
    """Writes a source data dir (see SourceDir) from ``{id: path}`` and ``{id: samples}``;
    paths are made absolute. Returns it read back."""
    from se.atomic import atomic_write_text

    if not paths:
        raise DataDirError(f"{out_dir}: no signals to write")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_scp(out_dir / "utt2num_samples", {k: int(num_samples[k]) for k in paths})
    atomic_write_text(out_dir / "fs", f"{int(fs)}\n")
    if utt2spk:
        write_scp(out_dir / "utt2spk", {k: utt2spk[k] for k in paths})
    write_scp(out_dir / "wav.scp", {k: os.path.abspath(p) for k, p in paths.items()})
    return SourceDir(out_dir)


def validate_data_dir(path: str | Path, sampling_rate: int | None = None, check_audio: bool = True,
                      nj: int = 1) -> DataDir:
    """Checks a data dir completely (se.validate.check_data_dir: every file read to the end);
    raises DataCheckError listing ALL errors, one per line. Returns the DataDir."""
    from se.validate import check_data_dir

    report = check_data_dir(path, sampling_rate, nj=nj, check_audio=check_audio)
    for w in report.warnings:
        log.warning("%s", w.message)
    if report.errors:
        lines = "\n  ".join(p.message for p in report.errors)
        raise DataCheckError(f"{len(report.errors)} problem(s) in {path}:\n  {lines}")
    return DataDir(path)


def make_data_dir(pairs: dict[str, tuple[str, str]], out_dir: str | Path, sampling_rate: int | None = None) -> DataDir:
    """Writes a data dir from ``{utt: (noisy_path, clean_path)}``; checks each pair first.

    Nothing is written unless every pair is readable, mono, at ``sampling_rate`` (when
    given, else at one common rate) and of equal length.
    """
    if not pairs:
        raise DataDirError(f"{out_dir}: no utterances to write")
    lengths: dict[str, int] = {}
    rates = set()
    for utt in sorted(pairs):
        noisy, clean = pairs[utt]
        ni, ci = audio_info(noisy), audio_info(clean)
        for p, i in ((noisy, ni), (clean, ci)):
            if i.channels != 1:
                raise AudioError(f"{p}: {i.channels} channels, expected mono")
        if ni.samplerate != ci.samplerate:
            raise AudioError(f"{noisy} is at {ni.samplerate} Hz but {clean} at {ci.samplerate} Hz")
        if sampling_rate and ni.samplerate != sampling_rate:
            raise AudioError(
                f"{noisy}: sample rate {ni.samplerate} Hz, expected {sampling_rate} Hz; resample the "
                "corpus first (the recipes' data stage does, once: se.resample.resample_files)"
            )
        if ni.frames != ci.frames:
            raise AudioError(f"{noisy} has {ni.frames} samples but {clean} has {ci.frames}")
        for p in (noisy, clean):
            read_audio(p)  # the samples themselves: NaN/Inf is an error naming the file
        rates.add(ni.samplerate)
        lengths[utt] = ni.frames
    if len(rates) > 1:
        raise AudioError(f"{out_dir}: the pairs mix sample rates {sorted(rates)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_scp(out_dir / "wav.scp", {u: os.path.abspath(p[0]) for u, p in pairs.items()})
    write_scp(out_dir / "spk1.scp", {u: os.path.abspath(p[1]) for u, p in pairs.items()})
    write_scp(out_dir / "utt2num_samples", lengths)
    from se.atomic import atomic_write_text

    atomic_write_text(out_dir / "fs", f"{rates.pop()}\n")
    return DataDir(out_dir)


def read_clearvoice_list(path: str | Path) -> dict[str, tuple[str, str]]:
    """ClearVoice's 2-column list (``noisy.wav clean.wav [duration]``) -> {utt: (noisy, clean)}.

    Utterance ids are the noisy file names without extension (made unique with the parent
    directory when names repeat).
    """
    path = Path(path)
    if not path.is_file():
        raise DataDirError(f"{path}: list file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in (2, 3):
                raise DataDirError(
                    f"{path} line {lineno}: expected 'noisy.wav clean.wav [duration]', got {line.strip()!r}"
                )
            rows.append((lineno, parts[0], parts[1]))
    if not rows:
        raise DataDirError(f"{path}: no lines")
    stems = [Path(n).stem for _, n, _ in rows]
    unique = len(set(stems)) == len(stems)
    pairs: dict[str, tuple[str, str]] = {}
    for (lineno, noisy, clean), stem in zip(rows, stems):
        utt = stem if unique else f"{Path(noisy).parent.name}_{stem}"
        if utt in pairs:
            raise DataDirError(f"{path} line {lineno}: duplicate utterance {utt}")
        base = path.parent
        resolve = lambda p: p if os.path.isabs(p) else str(base / p)  # noqa: E731
        pairs[utt] = (resolve(noisy), resolve(clean))
    return pairs


# ------------------------------------------------------------------------------------------
# Training data
# ------------------------------------------------------------------------------------------


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Per-item random stream: the crop of item ``index`` in ``epoch`` never depends on which
    worker or process loads it, or on where training was resumed."""
    return np.random.default_rng([seed, epoch, index])


# The torch parts (datasets, sampler, collate) live in se.data_torch, imported when first used:
# the data-preparation tools (make_data_dir, make_source_dir, simulate) start without torch.
_TORCH_NAMES = ("SegmentDataset", "ShardedSampler", "collate")


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        from se import data_torch

        return getattr(data_torch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
