"""Kaldi log-mel filterbank + deltas: the input features of MossFormer2_SE_48K.

ClearVoice computes ``torchaudio.compliance.kaldi.fbank`` (60 mel bins, Hamming window,
40 ms / 8 ms frames at 48 kHz, **dither 1.0**) on the waveform scaled by 32768, then appends
the first and second regression deltas (window 5, replicate padding): 180 features per frame.
Kaldi options used (all others at Kaldi's defaults): snip_edges (frames start at
``hop * s``, S = 1 + (L - win) // hop), remove_dc_offset, pre-emphasis 0.97 with
x[-1] := x[0] inside the frame, symmetric Hamming window, zero-padding to the next power of
two (2048), power spectrum, Kaldi mel bank 20 Hz .. Nyquist, log floored at FLT_EPSILON.

This module re-implements the framing so that it can

* draw the dither noise from a ``torch.Generator`` (data-loader workers seed their own
  generator, so training features are reproducible; with ``generator=None`` the noise comes
  from torch's global RNG exactly as torchaudio draws it: one N(0, 1) value per frame and
  sample, frames in order), and
* process a batch (B, L) in one call.

With dither 0 it reproduces ``torchaudio.compliance.kaldi.fbank`` (checked in
tests/test_features.py). The mel filterbank and the deltas come from se.torchaudio_ops.

Data pipeline use (features are computed in the loader workers, not on the main process):
``MossFormer2SE.data_features(conf)`` returns a :class:`WorkerFeatures`, called as
``fn(noisy_segment, item_rng) -> (S, 180)``; or directly::

    feats = FbankFeatures.from_config(conf)                # dither = conf fbank_dither (1.0)
    x = feats(noisy_crop * 32768, generator=worker_gen)    # (S, 180) float32
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from se import torchaudio_ops

MAX_WAV_VALUE = 32768.0  # ClearVoice scales [-1, 1) audio to 16-bit range before fbank/STFT
FLT_EPSILON = float(torch.finfo(torch.float32).eps)  # Kaldi's log floor (1.1920929e-07)
PREEMPHASIS = 0.97
DELTA_WIN = 5


def _window(kind: str, length: int, dtype: torch.dtype) -> torch.Tensor:
    """Kaldi feature window (symmetric)."""
    if kind == "hamming":
        return torch.hamming_window(length, periodic=False, alpha=0.54, beta=0.46, dtype=dtype)
    if kind == "hanning":
        return torch.hann_window(length, periodic=False, dtype=dtype)
    if kind == "povey":
        return torch.hann_window(length, periodic=False, dtype=dtype).pow(0.85)
    raise ValueError(f"window type must be hamming, hanning or povey, got {kind!r}")


class FbankFeatures:
    """Kaldi fbank ‖ Δ ‖ ΔΔ of an already scaled waveform (x * 32768).

    Args:
        sampling_rate: Hz (48000 for MossFormer2_SE_48K).
        win_len: frame length in samples (ClearVoice ``win_len``: 1920 = 40 ms).
        win_inc: frame shift in samples (``win_inc``: 384 = 8 ms).
        num_mels: mel bins (``num_mels``: 60); the output has 3 * num_mels features.
        win_type: Kaldi window type (``win_type``: 'hamming').
        dither: default dither (N(0, 1) noise amplitude added to every frame sample);
            ClearVoice trains and decodes with 1.0, deterministic use needs 0.0.

    Shapes: (L,) -> (S, 3M) and (B, L) -> (B, S, 3M), S = 1 + (L - win_len) // win_inc
    (0 when L < win_len). Accepts a numpy array or a tensor; numpy input is cast to float32
    (as ClearVoice does), tensors keep their floating dtype.
    """

    def __init__(
        self,
        sampling_rate: int = 48000,
        win_len: int = 1920,
        win_inc: int = 384,
        num_mels: int = 60,
        win_type: str = "hamming",
        dither: float = 0.0,
    ):
        if win_len <= 0 or win_inc <= 0 or num_mels <= 0:
            raise ValueError(f"win_len, win_inc and num_mels must be positive, got {win_len}, {win_inc}, {num_mels}")
        self.sampling_rate = int(sampling_rate)
        self.win_len = int(win_len)
        self.win_inc = int(win_inc)
        self.num_mels = int(num_mels)
        self.win_type = win_type
        self.dither = float(dither)
        self.n_fft = 1 << (self.win_len - 1).bit_length()  # Kaldi round_to_power_of_two
        _window(win_type, 2, torch.float32)  # validate the name early
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getstate__(self) -> dict:  # picklable for data-loader workers (constants are rebuilt)
        return {**self.__dict__, "_cache": {}}

    @classmethod
    def from_config(cls, conf: dict, dither: float | None = None) -> "FbankFeatures":
        """ClearVoice keys: sampling_rate, win_len, win_inc, num_mels, win_type, fbank_dither."""
        return cls(
            sampling_rate=int(conf.get("sampling_rate", 48000)),
            win_len=int(conf.get("win_len", 1920)),
            win_inc=int(conf.get("win_inc", 384)),
            num_mels=int(conf.get("num_mels", 60)),
            win_type=str(conf.get("win_type", "hamming")),
            dither=float(conf.get("fbank_dither", 1.0) if dither is None else dither),
        )

    @property
    def num_features(self) -> int:
        return 3 * self.num_mels

    def num_frames(self, length: int) -> int:
        return 0 if length < self.win_len else 1 + (length - self.win_len) // self.win_inc

    def _constants(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (dtype, str(device))
        if key not in self._cache:
            # ordinary tensors even under torch.inference_mode(): the cache outlives the call
            with torch.inference_mode(False), torch.no_grad():
                window = _window(self.win_type, self.win_len, dtype)
                banks = torchaudio_ops.kaldi_mel_banks(self.num_mels, self.n_fft, self.sampling_rate)
                banks = F.pad(banks.to(dtype), (0, 1))  # zero weight for the Nyquist bin
                # (win,), (n_fft/2+1, M)
                self._cache[key] = (window.to(device), banks.T.contiguous().to(device))
        return self._cache[key]

    def log_mel(
        self, wave: torch.Tensor, dither: float | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Kaldi log-mel energies of (B, L) -> (B, S, M)."""
        dither = self.dither if dither is None else float(dither)
        window, banks = self._constants(wave.dtype, wave.device)
        frames = wave.unfold(-1, self.win_len, self.win_inc)  # (B, S, win) view
        if dither != 0.0:
            noise = torch.randn(frames.shape, generator=generator, dtype=wave.dtype, device=wave.device)
            frames = frames + noise * dither
        frames = frames - frames.mean(-1, keepdim=True)  # remove_dc_offset
        prev = torch.cat((frames[..., :1], frames[..., :-1]), -1)  # x[-1] := x[0]
        frames = (frames - PREEMPHASIS * prev) * window  # (B, S, win)
        frames = F.pad(frames, (0, self.n_fft - self.win_len))  # (B, S, n_fft)
        power = torch.fft.rfft(frames).abs().pow(2.0)  # (B, S, n_fft/2+1)
        mel = torch.matmul(power, banks)  # (B, S, M)
        return torch.clamp(mel, min=FLT_EPSILON).log()

    def __call__(
        self, wave, generator: torch.Generator | None = None, dither: float | None = None
    ) -> torch.Tensor:
        """fbank ‖ Δ ‖ ΔΔ; ``wave`` already scaled to 16-bit range (x * 32768)."""
        if isinstance(wave, np.ndarray):
            wave = torch.from_numpy(np.asarray(wave, dtype=np.float32))
        if not torch.is_floating_point(wave):
            raise ValueError(f"waveform must be floating point, got {wave.dtype}")
        if wave.dim() not in (1, 2):
            raise ValueError(f"waveform must be (L,) or (B, L), got shape {tuple(wave.shape)}")
        squeeze = wave.dim() == 1
        wave = wave.reshape(-1, wave.shape[-1])  # (B, L)
        num_frames = self.num_frames(wave.shape[-1])
        if num_frames == 0:
            out = wave.new_zeros(wave.shape[0], 0, self.num_features)
        else:
            fbank = self.log_mel(wave, dither, generator).transpose(1, 2)  # (B, M, S)
            delta = torchaudio_ops.compute_deltas(fbank, win_length=DELTA_WIN)  # (B, M, S)
            delta2 = torchaudio_ops.compute_deltas(delta, win_length=DELTA_WIN)  # (B, M, S)
            out = torch.cat((fbank, delta, delta2), 1).transpose(1, 2)  # (B, S, 3M)
        return out[0] if squeeze else out


class WorkerFeatures:
    """The data-pipeline feature function (picklable, runs in data-loader workers).

    ``WorkerFeatures(feats)(noisy_segment, rng)`` -> (S, 3M) float32 features of a normalised
    noisy segment (scaled by 32768 here). The dither noise comes from a torch generator
    seeded by one draw from ``rng`` (the item's numpy Generator, se.data.item_rng), so the
    features of an item do not depend on the worker or on where training resumed.
    """

    def __init__(self, features: FbankFeatures):
        self.features = features

    def __call__(self, noisy, rng: np.random.Generator | None = None) -> torch.Tensor:
        wave = torch.from_numpy(np.asarray(noisy, dtype=np.float32)) * MAX_WAV_VALUE
        generator = None
        if rng is not None and self.features.dither != 0.0:
            generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        return self.features(wave, generator=generator)


_DEFAULT_48K = FbankFeatures()


def fbank_with_deltas(wave_48k_scaled, dither: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """MossFormer2_SE_48K features (ClearVoice settings) of a 48 kHz waveform already x 32768.

    (L,) -> (S, 180) or (B, L) -> (B, S, 180). ``dither`` 1.0 reproduces ClearVoice's
    training/inference features (random); pass ``generator`` to make them reproducible.
    """
    return _DEFAULT_48K(wave_48k_scaled, generator=generator, dither=dither)


def frame_count(length: int, win_len: int = 1920, win_inc: int = 384) -> int:
    """Frames of a snip_edges framing / center=False STFT of ``length`` samples."""
    return 0 if length < win_len else 1 + (length - win_len) // win_inc


def covering_length(length: int, win_len: int = 1920, win_inc: int = 384) -> int:
    """Smallest win_len + k * win_inc >= length: every sample lies inside a full frame."""
    return win_len + win_inc * max(0, math.ceil((length - win_len) / win_inc))
