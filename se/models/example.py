"""Example_Mask_SE_16K: a small, readable masking network that shows what a network needs.

Read this file when adding a network of your own: a network subclasses se.models.network.Network,
and the contract is in se/models/__init__.py.
The network: STFT -> log-compressed magnitude -> a few 1-D convolutions over time (the
frequency bins are the channels) -> a sigmoid mask on the magnitude, the noisy phase kept ->
inverse STFT. It is not a good enhancer (no recurrence, no phase estimate); it trains in
seconds on CPU, which is what the tests need.

It is not in the registry by default (``--network`` lists only the released networks): call
:func:`register` first, as tests/test_example_network.py does. Everything then works through
the usual tools: se.trainer trains it, se.checkpoint.load_network loads its checkpoints.

Shapes: B batch, L samples, F = fft_len // 2 + 1 frequency bins, T frames, C channels.
"""

from __future__ import annotations

import torch
from torch import nn

from se.models import ConfigKey, NetworkEntry
from se.models import register as register_entry
from se.models.network import Network

NAME = "Example_Mask_SE_16K"


class MaskNet(Network):
    """Magnitude-mask network.

    Args:
        win_len, win_inc, fft_len, win_type: STFT (config keys of the same name; 0 / "" in a
            config mean these defaults) [512, 128, 512, hann].
        channels: C, channels of the hidden convolutions (``network_kwargs``) [64].
        layers: hidden convolutions [3].
        kernel: frames each convolution sees [5].
    """

    # Required: the rate the network works at, and its own config keys (none here; a key
    # such as ``mask_floor: ConfigKey(0.0, "lowest mask value", minimum=0)`` would become a
    # config key of this network only, passed to the constructor keyword of the same name).
    sampling_rate = 16000
    CONFIG_KEYS: dict[str, ConfigKey] = {}
    # Inherited from Network, overridden only by a network that differs: ``causal = False``
    # (True: output sample t depends on input up to t only; the tools stream it hop by hop)
    # and ``inference_dither = None`` (no fbank front end), and the classmethods
    # ``from_config(conf)`` / ``config_kwargs(conf)`` that build it from a config.

    def __init__(self, win_len: int = 512, win_inc: int = 128, fft_len: int = 512, win_type: str = "hann",
                 channels: int = 64, layers: int = 3, kernel: int = 5):
        super().__init__()
        windows = {"hann": torch.hann_window, "hamming": torch.hamming_window}
        if win_type not in windows:
            raise ValueError(f"win_type must be one of {sorted(windows)}, got {win_type!r}")
        if fft_len < win_len or kernel % 2 == 0:
            raise ValueError(f"need fft_len >= win_len and an odd kernel, got {fft_len}, {win_len}, {kernel}")
        self.win_len, self.win_inc, self.fft_len = win_len, win_inc, fft_len
        self.register_buffer("window", windows[win_type](win_len), persistent=False)
        bins = fft_len // 2 + 1  # F
        sizes = [bins] + [channels] * layers
        self.hidden = nn.ModuleList(nn.Conv1d(cin, cout, kernel, padding=kernel // 2)
                                    for cin, cout in zip(sizes[:-1], sizes[1:]))
        self.to_mask = nn.Conv1d(sizes[-1], bins, 1)

    # Required only to fine-tune from a file (init_checkpoint_path): maps a ClearVoice release
    # state dict to this module's keys. This network has no release: keys are already ours.
    @staticmethod
    def convert_clearvoice_state_dict(sd: dict) -> dict:
        return dict(sd)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        """(B, L) noisy waveform -> (B, L) enhanced waveform, aligned with the input."""
        if noisy.dim() != 2:
            raise ValueError(f"MaskNet expects (B, L), got shape {tuple(noisy.shape)}")
        spec = torch.stft(noisy, self.fft_len, self.win_inc, self.win_len, self.window,
                          return_complex=True)  # (B, F, T)
        h = torch.log1p(spec.abs())  # (B, F, T)
        for conv in self.hidden:
            h = torch.relu(conv(h))  # (B, C, T)
        mask = torch.sigmoid(self.to_mask(h))  # (B, F, T)
        return torch.istft(spec * mask, self.fft_len, self.win_inc, self.win_len, self.window,
                           length=noisy.shape[-1])  # (B, L)

    # Required: the training loss (noisy and clean carry the same gain) and its parts for
    # the logs, and the enhancement the tools call.
    def loss(self, noisy: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Negative SI-SDR of the estimate (dB), averaged over the batch."""
        if noisy.shape != clean.shape:
            raise ValueError(f"noisy and clean need one shape, got {tuple(noisy.shape)} and {tuple(clean.shape)}")
        est = self(noisy)  # (B, L)
        scale = (est * clean).sum(-1, keepdim=True) / (clean.pow(2).sum(-1, keepdim=True) + 1e-8)
        target = scale * clean  # (B, L)
        ratio = target.pow(2).sum(-1) / ((est - target).pow(2).sum(-1) + 1e-8)
        si_sdr = 10 * torch.log10(ratio + 1e-8)  # (B,)
        loss = -si_sdr.mean()
        return loss, {"si_sdr": si_sdr.mean().detach()}

    @torch.no_grad()
    def enhance(self, noisy: torch.Tensor) -> torch.Tensor:
        """(B, L) normalised noisy batch -> (B, L) enhanced (deterministic: no dropout here)."""
        return self(noisy)

    # Optional, not implemented here: clearvoice_decode(raw) (only se.bin.enhance
    # --clearvoice-compat calls it), a train-step class, data features, speed kernels.


def register() -> None:
    """Adds Example_Mask_SE_16K to the registry (se.models.register)."""
    register_entry(NetworkEntry(NAME, __name__, "MaskNet", MaskNet.sampling_rate))
