"""On-the-fly degradation simulation: clean speech + noise + room impulse responses + channel effects.

Configured by the ``simulation:`` block of a training config (see README.md, "Training on
simulated degradations")::

    simulation:
      speech: [{data: data/16k/clean_train, weight: 1.0}]   # source data dirs (se.data.SourceDir)
      noise:  [{data: data/16k/noise_train, weight: 1.0}]
      rir:    [{data: data/16k/rir_train, weight: 1.0}]     # optional
      items_per_epoch: 0          # 0 = number of speech files
      snr_db: [-5, 20]
      p_reverb: 0.3
      early_reflection_ms: 50
      level_dbfs: [-35, -15]
      normalize: true             # training items then at -25 dB, like paired data
      bandwidth_limitation: {p: 0.1, rates: [8000, 16000, 22050, 24000, 32000]}
      clipping: {p: 0.1, threshold: [0.1, 0.9]}
      codec: {p: 0.1, formats: [mp3, vorbis, opus], compression_level: [0.0, 1.0]}
      packet_loss: {p: 0.1, loss_rate: [0.02, 0.2], frame_ms: 20}

One item is made by ``Simulator.simulate(rng, length)`` in stages, each its own function:

1. ``crop_speech``: a random clean segment of ``length`` samples (shorter files zero-padded at
   the end), from a source drawn by weight and a file drawn uniformly in it.
2. ``reverberate`` (probability ``p_reverb``): speech convolved with a random RIR (FFT
   convolution); the target is the speech convolved with the RIR's early part (direct-path
   peak + ``early_reflection_ms``). Both are advanced by the direct-path delay, so input, target
   and dry speech are time-aligned.
3. ``read_noise``: random noise files concatenated and cropped to ``length``; ``mix_at_snr``
   scales them so that the SNR on ACTIVE speech (``active_frames``: 20 ms frames within 40 dB
   of the loudest frame) is the drawn SNR. (The noise is read before the RIR is drawn.)
4. Channel effects on the noisy signal only, each with its own probability, in this order:
   ``bandwidth_limit`` (down- and up-sampling through se.resample.resample), ``clip``,
   ``codec`` (MP3 / Ogg-Vorbis / Ogg-Opus through libsndfile, in memory), ``packet_loss``
   (zeroed frames). The target stays clean.
5. ``scale_level``: noisy and target multiplied by one gain that puts the noisy RMS at the drawn
   dBFS level, reduced when needed so that no sample of either exceeds full scale.

Every draw comes from the ``rng`` passed in, which the training dataset makes with
``se.data.item_rng(seed, epoch, index)``: an item never depends on the worker, the rank or the
point where training resumed. The draws are returned with the signals (a flat dict, one value
per key, the columns of se.bin.simulate's simulation.tsv). Nothing is cached between items;
only the needed part of each speech and noise file is read (soundfile start/frames).

``SimulatedDataset`` serves the items to the trainer (a ``simulation:`` block in the config
replaces --train-data); ``se.bin.simulate`` writes fixed validation/test sets with the same code.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import fft as sp_fft

from se.audio import AudioError, read_audio
from se.cli import UserError
from se.config import read_yaml_mapping
from se.data import SourceDir
from se.resample import resample

log = logging.getLogger(__name__)

# Active speech (the SNR reference): non-overlapping frames of ACTIVITY_FRAME_MS whose energy is
# within ACTIVITY_RANGE_DB of the loudest frame's energy.
ACTIVITY_FRAME_MS = 20.0
ACTIVITY_RANGE_DB = 40.0
# Largest sample magnitude after level scaling: the largest 16-bit PCM value, so that written
# sets never clip either.
FULL_SCALE = 1.0 - 2.0**-15
# A RIR is cut where the energy left after it is below this fraction of its total (-60 dB).
RIR_TAIL_ENERGY = 1e-6
# Codec name -> (libsndfile format, subtype); Opus only codes these rates.
CODECS = {"mp3": ("MP3", "MPEG_LAYER_III"), "vorbis": ("OGG", "VORBIS"), "opus": ("OGG", "OPUS")}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


class SimulationError(UserError, ValueError):
    """A bad ``simulation:`` block or source; the message names the key or the file."""


# ------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------


@dataclass
class SourceSpec:
    data: str
    weight: float = 1.0


@dataclass
class BandwidthLimitation:
    p: float = 0.0
    rates: list = field(default_factory=lambda: [8000, 16000, 22050, 24000, 32000])  # Hz, lower than fs


@dataclass
class Clipping:
    p: float = 0.0
    threshold: list = field(default_factory=lambda: [0.1, 0.9])  # clip level, fraction of the peak


@dataclass
class Codec:
    p: float = 0.0
    formats: list = field(default_factory=lambda: ["mp3", "vorbis", "opus"])
    compression_level: list = field(default_factory=lambda: [0.0, 1.0])  # libsndfile: 0 best, 1 smallest


@dataclass
class PacketLoss:
    p: float = 0.0
    loss_rate: list = field(default_factory=lambda: [0.02, 0.2])  # probability of each frame being lost
    frame_ms: float = 20.0


@dataclass
class SimulationConfig:
    speech: list
    noise: list
    rir: list = field(default_factory=list)
    items_per_epoch: int = 0
    snr_db: list = field(default_factory=lambda: [-5.0, 20.0])
    p_reverb: float = 0.3
    early_reflection_ms: float = 50.0
    level_dbfs: list = field(default_factory=lambda: [-35.0, -15.0])
    normalize: bool = True  # training items: one gain to -25 dB like paired data (se.audio.norm_gain)
    bandwidth_limitation: BandwidthLimitation = field(default_factory=BandwidthLimitation)
    clipping: Clipping = field(default_factory=Clipping)
    codec: Codec = field(default_factory=Codec)
    packet_loss: PacketLoss = field(default_factory=PacketLoss)


EFFECTS = {"bandwidth_limitation": BandwidthLimitation, "clipping": Clipping, "codec": Codec,
           "packet_loss": PacketLoss}


def _number(value, key: str, where: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SimulationError(f"{where}: simulation.{key} must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise SimulationError(f"{where}: simulation.{key} must be {bounds}, got {value!r}")
    return float(value)


def _range(value, key: str, where: str, low: float | None = None, high: float | None = None) -> list:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise SimulationError(f"{where}: simulation.{key} must be a range [low, high], got {value!r}")
    a, b = (_number(v, key, where, low, high) for v in value)
    if a > b:
        raise SimulationError(f"{where}: simulation.{key} must be [low, high] with low <= high, got {value!r}")
    return [a, b]


def _mapping(value, key: str, where: str, known) -> dict:
    if not isinstance(value, dict):
        raise SimulationError(f"{where}: simulation.{key} must be a mapping, got {value!r}")
    for k in value:
        if k not in known:
            name = f"{key}.{k}" if key else k
            raise SimulationError(
                f"{where}: unknown key simulation.{name}. Known keys: {', '.join(sorted(known))}"
            )
    return value


def _sources(value, key: str, where: str, base: Path, required: bool) -> list[SourceSpec]:
    if value in (None, []) and not required:
        return []
    if not isinstance(value, list) or not value:
        raise SimulationError(
            f"{where}: simulation.{key} must be a list of {{data: DIR, weight: W}}, got {value!r}"
        )
    out = []
    for i, entry in enumerate(value):
        k = f"{key}[{i}]"
        if isinstance(entry, str):
            entry = {"data": entry}
        entry = _mapping(entry, k, where, ("data", "weight"))
        if not isinstance(entry.get("data"), str) or not entry["data"]:
            raise SimulationError(
                f"{where}: simulation.{k}.data must be a data dir path, got {entry.get('data')!r}"
            )
        weight = _number(entry.get("weight", 1.0), f"{k}.weight", where, 0.0)
        path = Path(entry["data"])
        out.append(SourceSpec(str(path if path.is_absolute() else base / path), weight))
    if sum(s.weight for s in out) <= 0:
        raise SimulationError(f"{where}: simulation.{key}: the weights sum to 0")
    return out


def parse_config(block: dict, where: str = "config", base: str | Path | None = None) -> SimulationConfig:
    """The ``simulation:`` mapping -> SimulationConfig; any bad key or value raises
    SimulationError naming ``where`` (the config file) and the key. Relative ``data:`` paths
    are resolved against ``base`` (default: the directory the command runs in)."""
    known = {f.name for f in dataclasses.fields(SimulationConfig)}
    block = _mapping(block, "", where, known)
    base = Path(base) if base is not None else Path.cwd()
    for key in ("speech", "noise"):
        if key not in block:
            raise SimulationError(f"{where}: simulation.{key} is required (a list of {{data: DIR, weight: W}})")
    conf = SimulationConfig(
        speech=_sources(block["speech"], "speech", where, base, True),
        noise=_sources(block["noise"], "noise", where, base, True),
        rir=_sources(block.get("rir"), "rir", where, base, False),
    )
    if "items_per_epoch" in block:
        v = block["items_per_epoch"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise SimulationError(f"{where}: simulation.items_per_epoch must be an integer >= 0, got {v!r}")
        conf.items_per_epoch = v
    if "snr_db" in block:
        conf.snr_db = _range(block["snr_db"], "snr_db", where)
    if "p_reverb" in block:
        conf.p_reverb = _number(block["p_reverb"], "p_reverb", where, 0.0, 1.0)
    if "early_reflection_ms" in block:
        conf.early_reflection_ms = _number(block["early_reflection_ms"], "early_reflection_ms", where, 0.0)
    if "level_dbfs" in block:
        conf.level_dbfs = _range(block["level_dbfs"], "level_dbfs", where, None, 0.0)
    if "normalize" in block:
        if not isinstance(block["normalize"], bool):
            raise SimulationError(f"{where}: simulation.normalize must be true or false, got {block['normalize']!r}")
        conf.normalize = block["normalize"]
    if conf.p_reverb > 0 and not conf.rir:
        raise SimulationError(
            f"{where}: simulation.p_reverb is {conf.p_reverb} but no simulation.rir sources are given "
            "(add rir: [{data: DIR}] or set p_reverb: 0)"
        )
    for name, cls in EFFECTS.items():
        values = _mapping(block.get(name) or {}, name, where, {f.name for f in dataclasses.fields(cls)})
        effect = cls()
        for key, value in values.items():
            k = f"{name}.{key}"
            default = getattr(effect, key)
            if key == "p":
                value = _number(value, k, where, 0.0, 1.0)
            elif key == "formats":
                if not isinstance(value, list) or not value or any(v not in CODECS for v in value):
                    raise SimulationError(
                        f"{where}: simulation.{k} must be a non-empty list of {', '.join(CODECS)}, got {value!r}"
                    )
            elif key == "rates":
                if not isinstance(value, list) or not value or any(
                        isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
                    raise SimulationError(
                        f"{where}: simulation.{k} must be a non-empty list of sample rates in Hz, got {value!r}"
                    )
            elif isinstance(default, list):
                high = 1.0 if key in ("threshold", "compression_level", "loss_rate") else None
                value = _range(value, k, where, 0.0, high)
                if key == "threshold" and value[0] <= 0:
                    raise SimulationError(f"{where}: simulation.{k} must be above 0, got {value!r}")
            else:  # frame_ms
                value = _number(value, k, where, 1.0)
            setattr(effect, key, value)
        setattr(conf, name, effect)
    return conf


# ------------------------------------------------------------------------------------------
# stages (pure functions of their inputs)
# ------------------------------------------------------------------------------------------


def active_frames(speech: np.ndarray, fs: int) -> np.ndarray:
    """Boolean mask of the active samples of ``speech``.

    The rule: non-overlapping frames of ACTIVITY_FRAME_MS (20 ms; a last partial frame counts
    as a frame) whose energy is within ACTIVITY_RANGE_DB (40 dB) of the loudest frame's energy.
    All samples of an active frame are active. A silent signal has no active sample.
    """
    n = len(speech)
    frame = max(1, int(round(fs * ACTIVITY_FRAME_MS / 1000)))
    count = -(-n // frame)
    padded = np.zeros(count * frame)
    padded[:n] = speech
    energy = np.einsum("ij,ij->i", padded.reshape(count, frame), padded.reshape(count, frame))
    peak = energy.max() if count else 0.0
    if peak <= 0:
        return np.zeros(n, dtype=bool)
    active = energy >= peak * 10 ** (-ACTIVITY_RANGE_DB / 10)
    return np.repeat(active, frame)[:n]


def snr_on_active(speech: np.ndarray, noise: np.ndarray, fs: int) -> float:
    """SNR in dB of ``speech`` against ``noise`` over the active samples of the speech
    (``active_frames``); NaN when the speech has no active sample, inf when the noise is silent there."""
    mask = active_frames(speech, fs)
    if not mask.any():
        return float("nan")
    ps = float(np.mean(np.square(speech[mask], dtype=np.float64)))
    pn = float(np.mean(np.square(noise[mask], dtype=np.float64)))
    return float("inf") if pn == 0 else 10 * math.log10(ps / pn)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, fs: int) -> tuple[np.ndarray, float]:
    """Noise gain that makes ``snr_on_active(speech, gain * noise) == snr_db``; returns
    (scaled noise, gain). Silent speech or noise leaves the noise as it is (gain 1)."""
    mask = active_frames(speech, fs)
    if not mask.any():
        return noise, 1.0
    ps = float(np.mean(np.square(speech[mask], dtype=np.float64)))
    pn = float(np.mean(np.square(noise[mask], dtype=np.float64)))
    if pn == 0:
        return noise, 1.0
    gain = math.sqrt(ps / pn * 10 ** (-snr_db / 10))
    return noise * gain, gain


def truncate_rir(rir: np.ndarray) -> np.ndarray:
    """The RIR up to where the energy left after it is below RIR_TAIL_ENERGY (-60 dB) of its total."""
    tail = np.cumsum(np.square(rir[::-1], dtype=np.float64))[::-1]  # tail[i] = energy of rir[i:]
    if tail[0] <= 0:
        return rir
    keep = int(np.count_nonzero(tail > RIR_TAIL_ENERGY * tail[0]))
    return rir[: max(keep, int(np.argmax(np.abs(rir))) + 1)]


def reverberate(speech: np.ndarray, rir: np.ndarray, fs: int, early_reflection_ms: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """(reverberant speech, early-reflection target), both of ``len(speech)`` samples.

    The direct path is the RIR's largest-magnitude sample (index d); the early RIR is
    ``rir[: d + early_reflection_ms * fs / 1000 + 1]``. Both convolutions are advanced by d
    samples, so the target, the reverberant input and the dry speech are aligned.
    """
    n = len(speech)
    d = int(np.argmax(np.abs(rir)))
    early = rir[: d + int(round(early_reflection_ms * fs / 1000)) + 1]
    # FFT convolution sharing the speech spectrum between the two RIRs (one FFT fewer than two
    # scipy.signal.fftconvolve calls); linear, not circular: nfft >= len(speech) + len(rir) - 1
    nfft = sp_fft.next_fast_len(n + len(rir) - 1, real=True)
    spectrum = sp_fft.rfft(speech, nfft)
    reverberant = sp_fft.irfft(spectrum * sp_fft.rfft(rir, nfft), nfft)[d : d + n]
    target = sp_fft.irfft(spectrum * sp_fft.rfft(early, nfft), nfft)[d : d + n]
    return reverberant, target


def bandwidth_limit(x: np.ndarray, fs: int, rate: int) -> np.ndarray:
    """Down-sampling to ``rate`` and back to ``fs`` (se.resample.resample): nothing is left
    above rate / 2."""
    y = resample(resample(x, fs, rate), rate, fs)
    return _fit(y, len(x)).astype(x.dtype, copy=False)


def clip(x: np.ndarray, threshold: float) -> tuple[np.ndarray, float]:
    """Hard clipping at ``threshold`` x the peak magnitude; returns (clipped, clip level)."""
    level = float(threshold * np.max(np.abs(x))) if len(x) else 0.0
    return np.clip(x, -level, level), level


def codec(x: np.ndarray, fs: int, fmt: str, compression_level: float) -> np.ndarray:
    """Encoded and decoded through libsndfile in memory (``fmt``: mp3, vorbis or opus).

    The signal is scaled to a peak of at most 0.9 for the encoder (which only codes
    [-1, 1]) and scaled back; the output has the input's length.
    """
    container, subtype = CODECS[fmt]
    if fmt == "mp3":  # libsndfile rejects level 1.0 for MP3 (its lowest bitrate step)
        compression_level = min(compression_level, 0.99)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    scale = max(1.0, peak / 0.9)
    buf = io.BytesIO()
    sf.write(buf, x / scale, fs, format=container, subtype=subtype, compression_level=compression_level)
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32", always_2d=False)
    return (_fit(y, len(x)) * scale).astype(x.dtype, copy=False)


def packet_loss(x: np.ndarray, fs: int, lost: np.ndarray, frame_ms: float) -> np.ndarray:
    """``x`` with the frames of ``frame_ms`` whose indices are in ``lost`` set to zero."""
    frame = max(1, int(round(fs * frame_ms / 1000)))
    y = x.copy()
    for k in lost:
        y[int(k) * frame : (int(k) + 1) * frame] = 0.0
    return y


def scale_level(noisy: np.ndarray, target: np.ndarray, level_dbfs: float) -> tuple[np.ndarray, np.ndarray, float]:
    """One gain for both: noisy RMS at ``level_dbfs`` dBFS, lowered when needed so that no
    sample of either signal exceeds FULL_SCALE. Returns (noisy, target, gain)."""
    rms = math.sqrt(float(np.mean(np.square(noisy, dtype=np.float64)))) if len(noisy) else 0.0
    gain = 10 ** (level_dbfs / 20) / rms if rms > 0 else 1.0
    peak = max(float(np.max(np.abs(noisy), initial=0.0)), float(np.max(np.abs(target), initial=0.0)))
    if peak * gain > FULL_SCALE:
        gain = FULL_SCALE / peak
    # products in float64, then back: rounding never lifts a sample above FULL_SCALE (representable)
    return (noisy * np.float64(gain)).astype(noisy.dtype), (target * np.float64(gain)).astype(target.dtype), gain


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


# ------------------------------------------------------------------------------------------
# the simulator
# ------------------------------------------------------------------------------------------


class Simulator:
    """Draws and builds degraded items from source data dirs at one sample rate.

    ``stage_seconds`` accumulates the CPU time of this process spent in each stage (benchmarks,
    logs; CPU time, not wall-clock, so that a busy machine does not inflate it).
    """

    def __init__(self, config: SimulationConfig, sampling_rate: int):
        self.config = config
        self.fs = int(sampling_rate)
        self.speech = self._open(config.speech, "speech")
        self.noise = self._open(config.noise, "noise")
        self.rir = self._open(config.rir, "rir") if config.rir else []
        bw = config.bandwidth_limitation
        self.bandwidth_rates = sorted(r for r in bw.rates if r < self.fs)
        if bw.p > 0 and not self.bandwidth_rates:
            raise SimulationError(
                f"simulation.bandwidth_limitation.rates {bw.rates}: none is below the sample rate {self.fs} Hz"
            )
        if config.codec.p > 0 and "opus" in config.codec.formats and self.fs not in OPUS_RATES:
            raise SimulationError(
                f"simulation.codec.formats: opus codes only {', '.join(map(str, OPUS_RATES))} Hz, not {self.fs} Hz"
            )
        self.stage_seconds: dict[str, float] = defaultdict(float)

    def _open(self, specs: list[SourceSpec], kind: str) -> list[tuple[SourceSpec, SourceDir]]:
        out = []
        for spec in specs:
            src = SourceDir(spec.data)
            if src.sampling_rate != self.fs:
                raise SimulationError(
                    f"{src.path}/fs: {kind} source at {src.sampling_rate} Hz, the simulation runs at {self.fs} Hz "
                    "(prepare the source at that rate: python -m se.bin.make_source_dir ... --fs "
                    f"{self.fs})"
                )
            out.append((spec, src))
        return out

    @property
    def num_speech_files(self) -> int:
        return sum(len(src) for _, src in self.speech)

    # -- draws ------------------------------------------------------------------------------
    @staticmethod
    def _pick(rng: np.random.Generator, sources) -> tuple[int, int]:
        weights = np.array([spec.weight for spec, _ in sources], dtype=np.float64)
        s = int(rng.choice(len(sources), p=weights / weights.sum())) if len(sources) > 1 else 0
        return s, int(rng.integers(0, len(sources[s][1])))

    def _read(self, src: SourceDir, i: int, start: int, frames: int, mono: bool = True) -> np.ndarray:
        try:
            x, _ = read_audio(src.paths[i], start=start, frames=frames, expected_rate=self.fs, mono=mono)
        except AudioError as exc:  # the scp line is looked up only on errors (large lists)
            raise AudioError(f"{exc} ({src.where(i)})") from None
        if len(x) != frames and frames >= 0:
            raise AudioError(
                f"{src.paths[i]} ({src.where(i)}): read {len(x)} samples at {start}, expected {frames}; "
                f"{src.path}/utt2num_samples is stale (re-run data preparation)"
            )
        return x

    def crop_speech(self, rng: np.random.Generator, length: int | None) -> tuple[np.ndarray, dict]:
        """A random segment of ``length`` samples (None: the whole file), zero-padded at the end."""
        s, i = self._pick(rng, self.speech)
        src = self.speech[s][1]
        n = src.num_samples[i]
        if length is None:
            start, frames = 0, n
        elif n > length:
            start, frames = int(rng.integers(0, n - length + 1)), length
        else:
            start, frames = 0, n
        x = self._read(src, i, start, frames)
        if length is not None:
            x = _fit(x, length)
        return x, {"speech_source": s, "speech_id": src.ids[i], "speech_start": start, "speech_samples": frames}

    def read_noise(self, rng: np.random.Generator, length: int) -> tuple[np.ndarray, dict]:
        """Random noise files, each from a random start, concatenated until ``length`` samples."""
        parts, ids = [], []
        have = 0
        while have < length:
            s, i = self._pick(rng, self.noise)
            src = self.noise[s][1]
            n, need = src.num_samples[i], length - have
            start = int(rng.integers(0, n - need + 1)) if n > need else 0
            frames = min(n, need)
            parts.append(self._read(src, i, start, frames))
            ids.append(f"{s}:{src.ids[i]}@{start}+{frames}")
            have += frames
        return np.concatenate(parts), {"noise": ",".join(ids)}

    def read_rir(self, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        s, i = self._pick(rng, self.rir)
        src = self.rir[s][1]
        h = truncate_rir(self._read(src, i, 0, src.num_samples[i], mono=False))
        return h, {"rir_source": s, "rir_id": src.ids[i], "rir_samples": len(h)}

    def simulate(self, rng: np.random.Generator, length: int | None) -> tuple[np.ndarray, np.ndarray, dict]:
        """One item: (noisy, target, draws), float32 arrays of ``length`` samples (None: the
        length of the drawn speech file). ``draws`` always has the same keys (None = not drawn)."""
        c = self.config
        t = self.stage_seconds
        t0 = time.process_time()
        speech, draws = self.crop_speech(rng, length)
        n = len(speech)
        noise, noise_draws = self.read_noise(rng, n)
        draws.update(noise_draws, num_samples=n, fs=self.fs)
        t1 = time.process_time()
        t["read"] += t1 - t0

        draws.update(reverb=False, rir_source=None, rir_id=None, rir_samples=None)
        target = speech
        if self.rir and rng.random() < c.p_reverb:
            h, rir_draws = self.read_rir(rng)
            t2 = time.process_time()
            t["read"] += t2 - t1
            speech, target = reverberate(speech, h, self.fs, c.early_reflection_ms)
            draws.update(rir_draws, reverb=True)
            t1 = time.process_time()
            t["reverberation"] += t1 - t2

        draws["snr_db"] = float(rng.uniform(*c.snr_db))
        noise, draws["noise_gain"] = mix_at_snr(speech, noise, draws["snr_db"], self.fs)
        noisy = speech + noise
        t2 = time.process_time()
        t["mix"] += t2 - t1

        noisy = self.apply_effects(rng, noisy, draws)

        t3 = time.process_time()
        draws["level_dbfs"] = float(rng.uniform(*c.level_dbfs))
        noisy, target, draws["gain"] = scale_level(noisy, target, draws["level_dbfs"])
        t["scaling"] += time.process_time() - t3
        return noisy, target, draws

    def apply_effects(self, rng: np.random.Generator, x: np.ndarray, draws: dict) -> np.ndarray:
        c, t = self.config, self.stage_seconds
        draws.update(bandwidth_rate=None, clip_threshold=None, clip_level=None, codec=None,
                     codec_compression_level=None, packet_loss_rate=None, lost_frames=None)
        if rng.random() < c.bandwidth_limitation.p:
            t0 = time.process_time()
            rate = int(self.bandwidth_rates[int(rng.integers(0, len(self.bandwidth_rates)))])
            x = bandwidth_limit(x, self.fs, rate)
            draws["bandwidth_rate"] = rate
            t["bandwidth_limitation"] += time.process_time() - t0
        if rng.random() < c.clipping.p:
            t0 = time.process_time()
            draws["clip_threshold"] = float(rng.uniform(*c.clipping.threshold))
            x, draws["clip_level"] = clip(x, draws["clip_threshold"])
            t["clipping"] += time.process_time() - t0
        if rng.random() < c.codec.p:
            t0 = time.process_time()
            formats = c.codec.formats if self.fs in OPUS_RATES else [f for f in c.codec.formats if f != "opus"]
            if formats:
                draws["codec"] = formats[int(rng.integers(0, len(formats)))]
                draws["codec_compression_level"] = float(rng.uniform(*c.codec.compression_level))
                x = codec(x, self.fs, draws["codec"], draws["codec_compression_level"])
            t["codec"] += time.process_time() - t0
        if rng.random() < c.packet_loss.p:
            t0 = time.process_time()
            pl = c.packet_loss
            frame = max(1, int(round(self.fs * pl.frame_ms / 1000)))
            rate = float(rng.uniform(*pl.loss_rate))
            lost = np.flatnonzero(rng.random(-(-len(x) // frame)) < rate)
            x = packet_loss(x, self.fs, lost, pl.frame_ms)
            draws["packet_loss_rate"] = rate
            draws["lost_frames"] = ",".join(map(str, lost.tolist()))
            t["packet_loss"] += time.process_time() - t0
        return x


def load_block(path: str | Path) -> dict:
    """The ``simulation:`` mapping of a YAML file: a training config holding one, or a file
    holding only the block's keys."""
    data = read_yaml_mapping(path, SimulationError)
    if "simulation" in data:
        block = data["simulation"]
        if not block:
            raise SimulationError(f"{path}: the simulation: block is empty")
        return block
    return data


# ------------------------------------------------------------------------------------------
# training dataset
# ------------------------------------------------------------------------------------------
# SimulatedDataset (torch) lives in se.data_torch, imported when first used: se.bin.simulate
# starts without torch.


def __getattr__(name: str):
    if name == "SimulatedDataset":
        from se.data_torch import SimulatedDataset

        return SimulatedDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
