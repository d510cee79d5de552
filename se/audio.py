"""Audio I/O and level normalisation shared by data loading, enhancement and scoring."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from se.cli import UserError

# ClearVoice normalises every file to -25 dB RMS (two stages, see audio_norm).
TARGET_LEVEL_DB = -25.0


class AudioError(UserError, ValueError):
    """A problem with an audio file that the user must fix (message names the file)."""


def audio_norm(x: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, float]:
    """ClearVoice's two-stage -25 dB RMS normalisation.

    Stage 1 scales the whole signal to -25 dB RMS; stage 2 scales it so that the RMS of
    the samples whose power exceeds the mean power ("active" samples) is -25 dB.

    Returns (normalised signal, scalar) where ``scalar = 1 / (g1 * g2 + 1e-6)`` is the
    reference's de-normalisation factor (not an exact inverse; kept for parity).
    """
    x = np.asarray(x, dtype=np.float64)
    target = 10.0 ** (TARGET_LEVEL_DB / 20.0)
    rms = np.sqrt(np.mean(x**2))
    g1 = target / (rms + eps)
    x = x * g1
    power = x**2
    active = power[power > power.mean()]
    rms_active = np.sqrt(active.mean()) if active.size else 0.0
    g2 = target / (rms_active + eps)
    return x * g2, 1.0 / (g1 * g2 + eps)


def norm_gain(x: np.ndarray, eps: float = 1e-6) -> float:
    """The single gain audio_norm applies to ``x`` (g1 * g2).

    Training scales noisy AND clean by the gain of the noisy signal, so the pair keeps its
    SNR (ClearVoice normalises the two files separately).
    """
    x = np.asarray(x, dtype=np.float64)
    target = 10.0 ** (TARGET_LEVEL_DB / 20.0)
    g1 = target / (np.sqrt(np.mean(x**2)) + eps)
    power = (x * g1) ** 2
    active = power[power > power.mean()]
    rms_active = np.sqrt(active.mean()) if active.size else 0.0
    return float(g1 * target / (rms_active + eps))


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """soundfile.info with a clear error naming the file."""
    path = str(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: file is empty")
    try:
        return sf.info(path)
    except Exception as exc:  # soundfile raises RuntimeError / LibsndfileError
        raise AudioError(f"{path}: not a readable audio file ({exc})") from exc


def read_audio(
    path: str | os.PathLike,
    start: int = 0,
    frames: int = -1,
    expected_rate: int | None = None,
    mono: bool = True,
    where: str = "",
    dtype: str = "float32",
) -> tuple[np.ndarray, int]:
    """Read ``frames`` samples starting at ``start`` (only those are read from disk).

    ``expected_rate``: a file at another rate is an error (resampling belongs to data
    preparation, never to loading). ``mono``: multi-channel files are an error.
    ``where``: extra context for messages, e.g. "data/train/wav.scp line 12".
    Samples that are NaN or Inf are an error naming the file (and the first such sample).
    Returns samples (frames,) of ``dtype`` (float32 or float64) and the sample rate.
    """
    ctx = f" ({where})" if where else ""
    try:
        f = sf.SoundFile(str(path))  # one open: header checks and the read share it
    except Exception:
        audio_info(path)  # raises the specific error (missing, empty, unreadable)
        raise
    with f:
        if expected_rate is not None and f.samplerate != expected_rate:
            raise AudioError(
                f"{path}{ctx}: sample rate {f.samplerate} Hz, expected {expected_rate} Hz; "
                f"prepare the data at {expected_rate} Hz (the recipe's data preparation stage resamples "
                "once); training never resamples"
            )
        if mono and f.channels != 1:
            raise AudioError(f"{path}{ctx}: {f.channels} channels, expected mono")
        try:
            if start:
                f.seek(start)
            x = f.read(frames, dtype=dtype, always_2d=False)
        except Exception as exc:
            raise AudioError(f"{path}{ctx}: cannot read audio ({exc})") from exc
        rate = f.samplerate
    if x.ndim > 1:
        x = x[:, 0]
    if x.size == 0:
        raise AudioError(f"{path}{ctx}: no samples")
    check_finite(x, path, where, start)
    return x, rate


def check_finite(x: np.ndarray, path, where: str = "", offset: int = 0) -> None:
    """Raises AudioError naming the file when ``x`` holds NaN or Inf samples."""
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        ctx = f" ({where})" if where else ""
        kinds = "NaN" if np.isnan(x[bad]).all() else ("Inf" if not np.isnan(x[bad]).any() else "NaN/Inf")
        raise AudioError(
            f"{path}{ctx}: {bad.size} non-finite ({kinds}) samples, the first at sample {offset + int(bad[0])}; "
            "repair or remove the file"
        )


def write_audio(path: str | os.PathLike, x: np.ndarray, rate: int, subtype: str = "PCM_16") -> int:
    """Write atomically (se.atomic.atomic_write). Returns the number of samples that clipped.

    For integer subtypes samples outside [-1, 1) would clip; they are counted and then
    limited explicitly (never silently), the caller reports the count.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.asarray(x, dtype=np.float64)
    clipped = 0
    if subtype.startswith("PCM"):
        limit = 1.0 - 2.0**-15
        clipped = int(np.count_nonzero(np.abs(x) > limit))
        x = np.clip(x, -1.0, limit)
    if not np.isfinite(x).all():  # never a NaN (FLOAT) or full-scale garbage (PCM) file
        raise AudioError(f"{path}: refusing to write non-finite (NaN/Inf) samples")
    from se.atomic import atomic_write

    atomic_write(path, lambda f: sf.write(f, x, rate, subtype=subtype, format="WAV"))
    return clipped
