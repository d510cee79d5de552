"""Complete checks of a data dir: every file read to the end, every problem reported.

Two kinds of data dir are checked:

* paired (``wav.scp`` noisy, ``spk1.scp`` clean, ``utt2num_samples``, ``fs``): the training,
  validation and test sets;
* source (no ``spk1.scp``: ``wav.scp``, ``utt2num_samples``, ``fs``, optional ``utt2spk``): one
  signal per id, the speech / noise / RIR sources of on-the-fly simulation. A source dir with
  ``utt2spk`` holds speech and gets the clean-speech checks; multi-channel files (RIRs) are
  accepted and their channel 0 is checked.

Each file is streamed in blocks (memory does not grow with the file or the corpus), in
``nj`` processes. Errors make the data unusable; warnings describe data that trains but may
not be what the user thinks. The thresholds (:class:`Limits`) are stated in the
``--help`` of ``python -m se.bin.validate_data_dir``:

Errors: a file missing, empty, not audio, not mono, at another rate than ``fs``; samples
that are NaN or Inf; digital silence (peak below ``silence_dbfs``); shorter than one analysis
window (``min_duration_s``); a length that disagrees with utt2num_samples or with the other
file of its pair; ids that are duplicated or missing from one of the files; a noisy/clean pair
whose correlation is below ``min_correlation`` (unrelated files: a -20 dB SNR mixture still
correlates at 0.1) or that looks swapped (the "clean" file has more energy AND a lower
estimated SNR, by ``swap_snr_margin_db``, than the "noisy" one).

Warnings: clipping (more than ``max_clipped_fraction`` of the samples at or beyond
``clip_level`` of full scale); a clean file that carries noise (estimated SNR below
``clean_snr_db``); a set whose effective bandwidth is below ``narrowband_ratio`` of its
Nyquist frequency (upsampled narrower-band audio).

Definitions:

* estimated SNR of a file: frame energies of 20 ms frames (digitally silent frames excluded)
  are collected in a 0.5 dB histogram; SNR = (95th percentile) - (10th percentile), i.e. the
  level of the loud frames over the level of the noise floor between words.
* effective bandwidth of a set: the long-term average power spectrum of its files (Hann-windowed
  frames of about 32 ms, averaged over all frames of all files) is smoothed over 1/64 of the
  band; the bandwidth is the highest frequency whose level is within ``bandwidth_floor_db`` of
  the spectrum's peak. Above it the energy is negligible.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BLOCK = 1 << 16  # samples read at a time
HIST_LOW, HIST_HIGH, HIST_STEP = -200.0, 40.0, 0.5  # frame-energy histogram, dB


@dataclass(frozen=True)
class Limits:
    min_duration_s: float = 0.04
    silence_dbfs: float = -100.0
    clip_level: float = 0.999
    max_clipped_fraction: float = 0.001
    min_correlation: float = 0.1
    swap_snr_margin_db: float = 3.0
    clean_snr_db: float = 20.0
    bandwidth_floor_db: float = 60.0
    narrowband_ratio: float = 0.6


@dataclass
class Problem:
    level: str  # "error" or "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


@dataclass
class Stats:
    """What one file contributes (small: a spectrum of a few hundred floats)."""

    frames: int = 0
    rate: int = 0
    spectrum: np.ndarray | None = None  # sum of frame power spectra
    spectrum_frames: int = 0
    snr_db: float | None = None
    bandwidth_hz: float | None = None
    path: str = ""


@dataclass
class Report:
    path: Path
    kind: str  # "paired" or "source"
    utterances: int = 0
    samples: int = 0
    rate: int | None = None
    problems: list[Problem] = field(default_factory=list)
    bandwidth_hz: dict[str, float] = field(default_factory=dict)  # role -> effective bandwidth

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    def error(self, msg: str) -> None:
        self.problems.append(Problem("error", msg))

    def warning(self, msg: str) -> None:
        self.problems.append(Problem("warning", msg))


# --------------------------------------------------------------------------- one file


class _FileScan:
    """Block-wise statistics of one signal."""

    def __init__(self, rate: int, spectrum: bool, snr: bool, clip_level: float):
        self.rate = rate
        self.n = 0
        self.nonfinite = 0
        self.first_nonfinite = -1
        self.peak = 0.0
        self.clipped = 0
        self.clip_level = clip_level
        self.nfft = 1 << max(6, int(math.ceil(math.log2(max(1, rate) * 0.032))))
        self.win = np.hanning(self.nfft)
        self.spec = np.zeros(self.nfft // 2 + 1) if spectrum else None
        self.spec_frames = 0
        self.spec_rest = np.zeros(0)
        self.flen = max(1, int(round(0.02 * rate)))
        self.hist = np.zeros(int((HIST_HIGH - HIST_LOW) / HIST_STEP) + 1) if snr else None
        self.frame_rest = np.zeros(0)

    def add(self, x: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(x)
        if bad.any():
            if self.first_nonfinite < 0:
                self.first_nonfinite = self.n + int(np.flatnonzero(bad)[0])
            self.nonfinite += int(bad.sum())
            x = np.where(bad, 0.0, x)
        self.n += len(x)
        if len(x):
            a = np.abs(x)
            self.peak = max(self.peak, float(a.max()))
            self.clipped += int(np.count_nonzero(a >= self.clip_level))
        if self.spec is not None:
            buf = np.concatenate([self.spec_rest, x])
            k = len(buf) // self.nfft
            if k:
                frames = buf[: k * self.nfft].reshape(k, self.nfft) * self.win
                self.spec += (np.abs(np.fft.rfft(frames, axis=1)) ** 2).sum(0)
                self.spec_frames += k
            self.spec_rest = buf[k * self.nfft:]
        if self.hist is not None:
            buf = np.concatenate([self.frame_rest, x])
            k = len(buf) // self.flen
            if k:
                e = np.mean(buf[: k * self.flen].reshape(k, self.flen) ** 2, axis=1)
                e = e[e > 0]
                if e.size:
                    db = np.clip(10 * np.log10(e), HIST_LOW, HIST_HIGH)
                    idx = np.round((db - HIST_LOW) / HIST_STEP).astype(int)
                    self.hist += np.bincount(idx, minlength=len(self.hist))
            self.frame_rest = buf[k * self.flen:]
        return x

    def snr_db(self) -> float | None:
        if self.hist is None or self.hist.sum() < 10:
            return None
        cdf = np.cumsum(self.hist) / self.hist.sum()
        low = HIST_LOW + HIST_STEP * int(np.searchsorted(cdf, 0.10))
        high = HIST_LOW + HIST_STEP * int(np.searchsorted(cdf, 0.95))
        return high - low


def _open(path: str, where: str, rate: int | None, report: list[Problem], mono: bool = True):
    """Opens a file for block reading, or records why it cannot be (returns None).
    ``mono=False``: multi-channel files are accepted (source dirs: channel 0 is used)."""
    import soundfile as sf

    from se.audio import AudioError, audio_info

    try:
        info = audio_info(path)
    except AudioError as exc:
        report.append(Problem("error", f"{exc} ({where})"))
        return None
    ok = True
    if mono and info.channels != 1:
        report.append(Problem("error", f"{path} ({where}): {info.channels} channels, expected mono"))
        ok = False
    if rate and info.samplerate != rate:
        report.append(Problem("error", f"{path} ({where}): sample rate {info.samplerate} Hz, expected {rate} Hz; "
                                       "resample it in the data preparation stage"))
        ok = False
    if info.frames == 0:
        report.append(Problem("error", f"{path} ({where}): no samples"))
        ok = False
    if not ok:
        return None
    try:
        return sf.SoundFile(path)
    except Exception as exc:  # noqa: BLE001 - libsndfile errors
        report.append(Problem("error", f"{path} ({where}): not a readable audio file ({exc})"))
        return None


def _file_problems(scan: _FileScan, path: str, where: str, limits: Limits, clean: bool) -> list[Problem]:
    out = []
    ctx = f"{path} ({where})"
    if scan.nonfinite:
        out.append(Problem("error", f"{ctx}: {scan.nonfinite} non-finite (NaN/Inf) samples, the first at sample "
                                    f"{scan.first_nonfinite}; repair or remove the file"))
    if scan.peak < 10 ** (limits.silence_dbfs / 20):
        out.append(Problem("error", f"{ctx}: digital silence (peak {20 * math.log10(scan.peak) if scan.peak > 0 else -math.inf:.0f} "
                                    f"dBFS < {limits.silence_dbfs:g} dBFS); remove it"))
    min_frames = int(round(limits.min_duration_s * scan.rate))
    if scan.n < min_frames:
        out.append(Problem("error", f"{ctx}: {scan.n} samples, shorter than one analysis window "
                                    f"({limits.min_duration_s * 1000:g} ms = {min_frames} samples); remove it"))
    if scan.n and scan.clipped / scan.n > limits.max_clipped_fraction:
        out.append(Problem("warning", f"{ctx}: clipping: {100 * scan.clipped / scan.n:.2f}% of the samples at or "
                                      f"beyond {limits.clip_level:g} of full scale (> "
                                      f"{100 * limits.max_clipped_fraction:g}%)"))
    snr = scan.snr_db()
    if clean and snr is not None and snr < limits.clean_snr_db and scan.peak >= 10 ** (limits.silence_dbfs / 20):
        out.append(Problem("warning", f"{ctx}: clean file carries noise: estimated SNR {snr:.1f} dB < "
                                      f"{limits.clean_snr_db:g} dB"))
    return out


def check_item(task: tuple) -> tuple[str, list[Problem], list[Stats | None]]:
    """Worker: one utterance (one or two files, read together block by block)."""
    utt, files, rate, num_samples, lengths_where, limits, roles = task
    problems: list[Problem] = []
    # source dirs may hold multi-channel files (RIRs): channel 0 is what simulation uses
    handles = [_open(p, where, rate, problems, mono=role != "source") for (p, where), role in zip(files, roles)]
    stats: list[Stats | None] = [None] * len(files)
    if not all(h is not None for h in handles):
        for h in handles:
            if h is not None:
                h.close()
        return utt, problems, stats
    try:
        scans = [_FileScan(h.samplerate, True, True, limits.clip_level) for h in handles]
        cross = np.zeros(5)  # sum n, sum c, sum n^2, sum c^2, sum n*c over the common length
        common = 0
        while True:
            blocks = [h.read(BLOCK, dtype="float64", always_2d=True)[:, 0] for h in handles]
            if all(len(b) == 0 for b in blocks):
                break
            blocks = [s.add(b) for s, b in zip(scans, blocks)]
            if len(blocks) == 2:
                m = min(len(blocks[0]), len(blocks[1]))
                a, b = blocks[0][:m], blocks[1][:m]
                cross += (a.sum(), b.sum(), a @ a, b @ b, a @ b)
                common += m
    except Exception as exc:  # noqa: BLE001 - a file truncated in its data part
        names = " or ".join(f"{p} ({w})" for p, w in files)
        problems.append(Problem("error", f"{names}: cannot read to the end ({exc}); repair or remove the file"))
        return utt, problems, stats
    finally:
        for h in handles:
            h.close()
    for i, ((path, where), scan, role) in enumerate(zip(files, scans, roles)):
        problems += _file_problems(scan, path, where, limits, clean=role == "clean")
        bw = (effective_bandwidth(scan.spec / scan.spec_frames, scan.rate, limits.bandwidth_floor_db)
              if scan.spec_frames else None)
        stats[i] = Stats(scan.n, scan.rate, scan.spec, scan.spec_frames, scan.snr_db(), bw, path)
    if num_samples is not None and scans[0].n != num_samples:
        problems.append(Problem("error", f"{lengths_where}: {utt} says {num_samples} samples, {files[0][0]} has "
                                         f"{scans[0].n}; re-run the data preparation stage"))
    if len(files) == 2:
        (noisy, nwhere), (clean, cwhere) = files
        if scans[0].n != scans[1].n:
            problems.append(Problem("error", f"{noisy} ({nwhere}): noisy has {scans[0].n} samples but clean {clean} "
                                             f"({cwhere}) has {scans[1].n}"))
        elif not any(p.level == "error" for p in problems):
            sn, sc, snn, scc, snc = cross
            vn, vc = snn - sn * sn / common, scc - sc * sc / common
            corr = (snc - sn * sc / common) / math.sqrt(vn * vc) if vn > 0 and vc > 0 else 0.0
            snr_n, snr_c = stats[0].snr_db, stats[1].snr_db
            if abs(corr) < limits.min_correlation:
                problems.append(Problem("error", f"{noisy} ({nwhere}) and {clean} ({cwhere}): noisy and clean of {utt} "
                                                 f"look unrelated: correlation {corr:.3f} < {limits.min_correlation:g}"))
            elif (scc > snn and snr_n is not None and snr_c is not None
                  and snr_c + limits.swap_snr_margin_db < snr_n):
                problems.append(Problem("error", f"{noisy} ({nwhere}) and {clean} ({cwhere}): noisy and clean of {utt} "
                                                 f"look swapped: the clean file has more energy "
                                                 f"(+{10 * math.log10(scc / snn):.1f} dB) and a lower estimated SNR "
                                                 f"({snr_c:.1f} dB vs {snr_n:.1f} dB) than the noisy file"))
    return utt, problems, stats


# --------------------------------------------------------------------------- bandwidth


def effective_bandwidth(spectrum: np.ndarray, rate: int, floor_db: float) -> float:
    """Highest frequency (Hz) whose smoothed long-term level is within ``floor_db`` of the peak."""
    power = np.asarray(spectrum, dtype=np.float64)
    width = max(1, len(power) // 64)
    smooth = np.convolve(power, np.ones(width) / width, mode="same")
    if smooth.max() <= 0:
        return 0.0
    level = 10 * np.log10(np.maximum(smooth, 1e-300) / smooth.max())
    above = np.flatnonzero(level >= -floor_db)
    return float(above[-1]) * rate / (2 * (len(power) - 1))


# --------------------------------------------------------------------------- a data dir


def _scp(path: Path, report: Report, required: bool = True) -> dict[str, tuple[str, int]]:
    """key -> (value, line); every malformed or duplicate line is reported."""
    from se.data import read_scp

    if not path.is_file():
        if required:
            report.error(f"{path}: not found")
        return {}
    errors: list[str] = []
    lines: dict[str, int] = {}
    values = read_scp(path, errors=errors, lines=lines)
    for e in errors:
        report.error(e)
    return {k: (v, lines[k]) for k, v in values.items()}


def check_data_dir(path: str | Path, sampling_rate: int | None = None, limits: Limits = Limits(),
                   nj: int = 1, check_audio: bool = True, progress: bool = False) -> Report:
    """Checks everything in a (paired or source) data dir; returns all problems found."""
    path = Path(path)
    paired = (path / "spk1.scp").is_file()
    report = Report(path, "paired" if paired else "source")
    if not path.is_dir():
        report.kind = "missing"
        report.error(f"{path}: data directory not found (run the data preparation stage)")
        return report
    wav = _scp(path / "wav.scp", report)
    clean = _scp(path / "spk1.scp", report) if paired else {}
    lengths_file = path / "utt2num_samples"
    lengths = _scp(lengths_file, report)
    utt2spk = _scp(path / "utt2spk", report, required=False)
    fs_file = path / "fs"
    dir_rate = None
    if fs_file.is_file():
        text = fs_file.read_text().split()
        if len(text) != 1 or not text[0].isdigit() or int(text[0]) <= 0:
            report.error(f"{fs_file}: expected one positive integer (the sample rate), got {' '.join(text)!r}")
        else:
            dir_rate = int(text[0])
    elif not paired:
        report.error(f"{fs_file}: not found (a source dir states its sample rate)")
    if sampling_rate and dir_rate and sampling_rate != dir_rate:
        report.error(f"{fs_file}: directory is at {dir_rate} Hz, expected {sampling_rate} Hz "
                     "(prepare the data at the network's rate)")
    rate = sampling_rate or dir_rate
    report.rate = rate
    if (path / "wav.scp").is_file() and not wav and not report.errors:
        report.error(f"{path / 'wav.scp'}: no utterances")

    def where(scp: str, line: int) -> str:
        return f"{path / scp} line {line}"

    for utt, (_, line) in sorted(wav.items(), key=lambda kv: kv[1][1]):
        if paired and utt not in clean:
            report.error(f"{where('wav.scp', line)}: utterance {utt} is missing from {path / 'spk1.scp'}")
        if utt not in lengths and lengths_file.is_file():
            report.error(f"{where('wav.scp', line)}: utterance {utt} is missing from {lengths_file} "
                         "(re-run the data preparation stage)")
    for utt, (_, line) in sorted(clean.items(), key=lambda kv: kv[1][1]):
        if utt not in wav:
            report.error(f"{where('spk1.scp', line)}: utterance {utt} is not in {path / 'wav.scp'}")
    for name, table in (("utt2num_samples", lengths), ("utt2spk", utt2spk)):
        for utt, (value, line) in sorted(table.items(), key=lambda kv: kv[1][1]):
            if utt not in wav:
                report.error(f"{where(name, line)}: utterance {utt} is not in {path / 'wav.scp'}")
            elif name == "utt2num_samples" and not value.isdigit():
                report.error(f"{where(name, line)}: not a number of samples: {value!r}")
    report.utterances = len(wav)
    if not check_audio:
        return report
    speech_source = not paired and bool(utt2spk)
    tasks = []
    for utt, (p, line) in sorted(wav.items()):
        n = lengths.get(utt, (None, 0))
        num = int(n[0]) if n[0] is not None and n[0].isdigit() else None
        files = [(p, where("wav.scp", line))]
        roles = ["noisy" if paired else ("clean" if speech_source else "source")]
        if paired:
            if utt not in clean:
                continue
            files.append((clean[utt][0], where("spk1.scp", clean[utt][1])))
            roles.append("clean")
        tasks.append((utt, files, rate, num, where("utt2num_samples", n[1]) if num is not None else "", limits, roles))
    spectra: dict[str, list] = {}
    narrow: dict[str, list] = {}  # role -> [files checked, [(path, bandwidth) of narrow-band files]]
    for _, problems, stats in _map(check_item, tasks, nj, progress, f"validate {path.name}"):
        report.problems += problems
        for role, s in zip(["noisy", "clean"] if paired else ["source"], stats):
            if s is None:
                continue
            if role == "noisy" or role == "source":
                report.samples += s.frames
            if s.bandwidth_hz is not None:
                acc_n = narrow.setdefault(role, [0, []])
                acc_n[0] += 1
                if s.bandwidth_hz < limits.narrowband_ratio * s.rate / 2:
                    acc_n[1].append((s.path, s.bandwidth_hz))
            if s.spectrum is not None and s.spectrum_frames:
                acc = spectra.setdefault(role, [None, 0, s.rate])
                if acc[2] == s.rate:
                    acc[0] = s.spectrum if acc[0] is None else acc[0] + s.spectrum
                    acc[1] += s.spectrum_frames
    for role, (spec, count, r) in spectra.items():
        bw = effective_bandwidth(spec / count, r, limits.bandwidth_floor_db)
        report.bandwidth_hz[role] = bw
        total, files = narrow.get(role, [0, []])
        if files and bw >= limits.narrowband_ratio * r / 2:
            examples = ", ".join(f"{p} ({b / 1000:.1f} kHz)" for p, b in files[:3])
            report.warning(
                f"{path} ({role}): {len(files)} of {total} files have an effective bandwidth below "
                f"{limits.narrowband_ratio:g} of the {r / 2000:g} kHz Nyquist frequency (upsampled narrower-band "
                f"audio?), e.g. {examples}"
            )
        if bw < limits.narrowband_ratio * r / 2:
            report.warning(
                f"{path} ({role}): effective bandwidth {bw / 1000:.1f} kHz is below {limits.narrowband_ratio:g} of the "
                f"{r / 2000:g} kHz Nyquist frequency (energy above it is more than {limits.bandwidth_floor_db:g} dB "
                f"below the spectral peak): these {r} Hz files look like upsampled audio of about "
                f"{2 * bw / 1000:.0f} kHz sample rate"
            )
    return report


def _map(fn, tasks: list, nj: int, progress: bool, desc: str):
    """Ordered results of fn over tasks in nj processes, with a progress bar on stderr."""
    from tqdm import tqdm

    nj = max(1, min(nj, len(tasks)))
    bar = tqdm(total=len(tasks), desc=desc, unit="utt", file=sys.stderr, mininterval=1.0,
               disable=not progress or len(tasks) < 2)
    if nj == 1:
        results, pool = map(fn, tasks), None
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(nj)
        results = pool.imap(fn, tasks, chunksize=max(1, min(16, len(tasks) // (4 * nj))))
    try:
        for r in results:
            bar.update(1)
            yield r
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
