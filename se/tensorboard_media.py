"""What a training run writes to tensorboard (rank 0 only): training and validation scalars,
and a few fixed validation utterances enhanced, scored (SI-SDR, PESQ), listened to (audio)
and looked at (noisy / enhanced / clean spectrograms).

The trainer owns the loop; :class:`TrainingBoard` owns the SummaryWriter and the media.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger("se.train")


class TrainingBoard:
    """The tensorboard directory of one run (``exp_dir/tensorboard``).

    ``examples``: how many validation utterances (the first ones of the validation data dir)
    ``log_valid_examples`` enhances each time; 0 = none.
    """

    def __init__(self, log_dir: str | Path, sampling_rate: int, examples: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))
        self.sampling_rate = sampling_rate
        self.examples = examples
        self.inputs_logged = False  # noisy / clean audio never change: written once

    def scalars(self, prefix: str, values: dict[str, float], global_step: int) -> None:
        """``prefix/<name>`` = value for every item of ``values``."""
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, global_step)

    @torch.no_grad()
    def log_valid_examples(self, model: nn.Module, utterances: list, device: torch.device,
                           global_step: int) -> dict[str, float]:
        """Enhances the first ``examples`` of ``utterances`` (whole files, default decode
        path), writes their audio and spectrograms and returns (and writes) the mean
        ``examples_si_sdr`` / ``examples_pesq_wb``. ``model`` is left in training mode."""
        if self.examples <= 0:
            return {}
        from se.audio import read_audio
        from se.enhance import enhance_signal
        from se.metrics import metric_value

        rate = self.sampling_rate
        model.eval()
        scores: dict[str, list[float]] = {"si_sdr": [], "pesq_wb": []}
        for u in utterances[: self.examples]:
            noisy, _ = read_audio(u.noisy, expected_rate=rate)
            clean, _ = read_audio(u.clean, expected_rate=rate)
            est = enhance_signal(model, noisy, segment=10 * rate, overlap=rate, device=device)
            if not np.isfinite(est).all():
                log.warning("validation example %s: the enhanced signal is NOT FINITE (not scored or logged)", u.utt)
                scores["si_sdr"].append(math.nan)
                continue
            # the scorer's own values (same resampler, same implementation as se.bin.score)
            scores["si_sdr"].append(metric_value("si_sdr", clean, est, rate))
            scores["pesq_wb"].append(metric_value("pesq_wb", clean, est, rate))  # NaN where undefined
            peak = max(1e-6, float(np.abs(est).max()))
            self._audio(f"valid_audio/{u.utt}/enhanced", est / peak, global_step)
            if not self.inputs_logged:
                self._audio(f"valid_audio/{u.utt}/noisy", noisy, global_step)
                self._audio(f"valid_audio/{u.utt}/clean", clean, global_step)
            self.writer.add_figure(f"valid_spectrogram/{u.utt}", spectrogram_figure(noisy, est, clean, rate),
                                   global_step)
        self.inputs_logged = True
        model.train()
        # a non-finite estimate makes the SI-SDR mean NaN on purpose; an undefined PESQ is skipped
        scores["pesq_wb"] = [x for x in scores["pesq_wb"] if math.isfinite(x)]
        means = {f"examples_{k}": float(np.mean(v)) for k, v in scores.items() if v}
        self.scalars("valid", means, global_step)
        return means

    def _audio(self, tag: str, samples: np.ndarray, global_step: int) -> None:
        self.writer.add_audio(tag, torch.from_numpy(samples).float()[None], global_step,
                              sample_rate=self.sampling_rate)

    def close(self) -> None:
        self.writer.close()


def spectrogram_figure(noisy: np.ndarray, enhanced: np.ndarray, clean: np.ndarray, rate: int):
    """Noisy / enhanced / clean log spectrograms, one above the other (matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 6), sharex=True)
    n_fft = 512 * max(1, rate // 16000)
    for ax, (name, x) in zip(axes, (("noisy", noisy), ("enhanced", enhanced), ("clean", clean))):
        with np.errstate(divide="ignore"):
            ax.specgram(np.asarray(x, dtype=np.float64) + 1e-9, NFFT=n_fft, Fs=rate, noverlap=n_fft // 2,
                        cmap="magma", vmin=-120)
        ax.set_ylabel(f"{name}\nHz")
    axes[-1].set_xlabel("s")
    fig.tight_layout()
    return fig
