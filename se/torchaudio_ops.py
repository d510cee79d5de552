"""The only module that imports torchaudio.

torchaudio's releases stop at 2.11; keeping every use behind these few functions means it can
be replaced (e.g. by our own Kaldi-compatible fbank) in one place.
"""

from __future__ import annotations

import torch
import torchaudio


def kaldi_fbank(waveform: torch.Tensor, **kwargs) -> torch.Tensor:
    """torchaudio.compliance.kaldi.fbank on a (1, L) waveform; returns (frames, bins)."""
    return torchaudio.compliance.kaldi.fbank(waveform, **kwargs)


def compute_deltas(features: torch.Tensor, win_length: int = 5) -> torch.Tensor:
    """torchaudio.functional.compute_deltas (replicate-padded regression deltas)."""
    return torchaudio.functional.compute_deltas(features, win_length=win_length)


def torchaudio_version() -> str:
    return torchaudio.__version__


def kaldi_mel_banks(
    num_bins: int, padded_window_size: int, sample_freq: float, low_freq: float = 20.0, high_freq: float = 0.0
) -> torch.Tensor:
    """Kaldi's triangular mel filterbank (torchaudio.compliance.kaldi.get_mel_banks, VTLN off).

    Returns (num_bins, padded_window_size // 2): weights of rfft bins 0 .. N/2 - 1 (the Nyquist
    bin is not included; kaldi.fbank pads it with a zero column).
    """
    banks, _ = torchaudio.compliance.kaldi.get_mel_banks(
        num_bins, padded_window_size, float(sample_freq), float(low_freq), float(high_freq), 100.0, -500.0, 1.0
    )
    return banks
