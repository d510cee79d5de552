# Over 600 lines: the generator, its losses and GANTrainStep stay together (the TrainStep contract).
"""MossFormerGAN_SE_16K: SyncANet generator + metric discriminator (ClearVoice release).

Papers:
* MossFormerGAN: ClearerVoice-Studio's MossFormerGAN_SE_16K (speech enhancement at 16 kHz):
  the CMGAN generator and training recipe with the conformers replaced by SyncANet blocks.
* CMGAN: R. Cao, S. Abdulatif, B. Yang, "CMGAN: Conformer-based metric GAN for speech
  enhancement", Interspeech 2022 -- the time-frequency structure (power-compressed spectra,
  dense encoder, magnitude-mask decoder + complex-residual decoder, their sum in the
  compressed domain), the metric discriminator and the loss weights (0.1 RI + 0.9 mag +
  0.2 time + 0.05 adversarial).
* MossFormer: S. Zhao, B. Ma, "MossFormer: Pushing the performance limit of monaural speech
  separation using gated single-head transformer with convolution-augmented joint
  self-attentions", ICASSP 2023 -- the gated attention units of the SyncANet blocks (along
  frequency and along time), followed by a TF-GridNet full-band attention.
Blocks: se/models/mossformer_gan_blocks.py.  Discriminator (``MetricDiscriminator``,
se/models/metric_discriminator.py): predicts the normalised PESQ (MetricGAN / CMGAN).
Training: :class:`GANTrainStep`.  This file is the plain reference; the speed kernels that
the registry applies are in se/models/kernels/mossformer_gan.py.

Parity references: tests/data/clearvoice (tests/data/README.md).

Shape legend: B batch, L samples, T frames (L/hop + 1), F frequency bins (fft_len/2 + 1 =
201), Q bins after the encoder ((F + 1) / 2 = 101), C channels (64).

Signal paths
* ``forward(X)``: (B, 2, T, F) compressed real/imag -> [real, imag] (B, 1, T, F) (parity).
* ``enhance(noisy)``: the default, ALIGNED path.  RMS factor c, centred STFT, power-law
  compression, generator, decompression and a centred iSTFT (center=True) trimmed to L, so
  output sample i is the enhancement of input sample i (the reference's uncentred iSTFT
  delays everything by win_len/2 = 200 samples and drops the last 200).
* ``clearvoice_decode(raw)``: the reference decode path, bugs included.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from se.allocator import release_after_each, release_after_step
from se.audio import audio_norm
from se.checkpoint import torch_load
from se.models import ConfigKey
from se.models.metric_discriminator import MetricDiscriminator, _check_keys
from se.models.mossformer_gan_blocks import ComplexDecoder, DenseEncoder, MaskDecoder, SyncANetBlock
from se.models.network import Network
from se.train_step import LossForward, TrainStep, unwrap

log = logging.getLogger(__name__)

COMPRESS = 0.3  # power-law compression exponent
TRAIN_EPS = 1e-6  # epsilon of the training normalisation factor c

# released architecture (ClearVoice config/train/MossFormerGAN_SE_16K.yaml)
RELEASE_FFT = dict(win_len=400, win_inc=100, fft_len=400, win_type="hamming")


def _window(win_type: str, win_len: int) -> torch.Tensor:
    win_type = win_type.lower()
    if win_type == "hamming":
        return torch.hamming_window(win_len, periodic=False)  # symmetric, as the release
    if win_type in ("hann", "hanning"):
        return torch.hann_window(win_len, periodic=False)
    raise ValueError(f"win_type must be 'hamming' or 'hanning', got {win_type!r}")


def power_compress(spec: torch.Tensor) -> torch.Tensor:
    """Complex (B, F, T) -> |z|^0.3 (cos, sin)(angle z) stacked as (B, 2, T, F)."""
    mag = spec.abs().pow(COMPRESS)
    phase = spec.angle()
    out = torch.stack((mag * torch.cos(phase), mag * torch.sin(phase)), dim=1)  # (B, 2, F, T)
    return out.transpose(2, 3)  # (B, 2, T, F)


def power_uncompress(real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
    """Compressed (B, 1, T, F) real/imag -> complex (B, F, T) with magnitude |z|^(1/0.3)."""
    z = torch.complex(real, imag).squeeze(1).transpose(1, 2)  # (B, F, T)
    mag = z.abs().pow(1.0 / COMPRESS)
    phase = z.angle()
    return torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))


class MossFormerGAN(Network):
    """SyncANet generator of MossFormerGAN_SE_16K (state-dict keys of the release, no prefix).

    Args (CMGAN generator, Cao et al. 2022, sec. 2, with MossFormerGAN's SyncANet blocks;
    released values in brackets):
        num_channel: C, channels of the dense encoder, SyncANet blocks and decoders [64].
        num_blocks: SyncANet blocks (MossFormer intra/inter paths + full-band attention) [6].
        win_len, win_inc, fft_len, win_type: STFT (symmetric window) [400, 100, 400, hamming].
        n_head: full-band attention heads [4].
        approx_qk_dim: full-band attention query/key size, E = ceil(approx_qk_dim / Q) [512].
        hidden: FFConvM / FSMN size of the sub-band paths [2C = 128].
        qk_dim: MossFormer shared query/key size [2C = 128].
        mf_hidden: MossFormer v / u size [2C = 128].
        rotary_dim: rotary position embedding features [32].
        dropout: dropout of FFConvM units and attention maps [0.1].
        checkpoint_blocks: memory saving with autograd (training), same values either way.
            True: each SyncANet block is recomputed in backward (torch.utils.checkpoint)
            instead of keeping its activations; only the block being recomputed holds its
            attention maps.  False: activations are kept (the speed kernels then recompute
            the relu^2 attention maps per block of queries, never all n x n maps at once)
            [True].
    """

    sampling_rate = 16000

    def __init__(self, num_channel: int = 64, num_blocks: int = 6, win_len: int = 400,
                 win_inc: int = 100, fft_len: int = 400, win_type: str = "hamming",
                 n_head: int = 4, approx_qk_dim: int = 512, hidden: int | None = None,
                 qk_dim: int | None = None, mf_hidden: int | None = None, rotary_dim: int = 32,
                 dropout: float = 0.1, checkpoint_blocks: bool = True):
        super().__init__()
        if fft_len % 2:
            raise ValueError(f"fft_len must be even (odd number of bins), got {fft_len}")
        c = num_channel
        self.win_len, self.win_inc, self.fft_len = win_len, win_inc, fft_len
        self.num_features = fft_len // 2 + 1  # F
        n_freqs = (self.num_features + 1) // 2  # Q
        self.checkpoint_blocks = checkpoint_blocks
        self.register_buffer("window", _window(win_type, win_len), persistent=False)

        self.dense_encoder = DenseEncoder(in_channel=3, channels=c)
        self.blocks = nn.ModuleList([
            SyncANetBlock(emb_dim=c, n_freqs=n_freqs, hidden=hidden or 2 * c, n_head=n_head,
                          approx_qk_dim=approx_qk_dim, qk_dim=qk_dim or 2 * c,
                          mf_hidden=mf_hidden or 2 * c, rotary_dim=rotary_dim, dropout=dropout)
            for _ in range(num_blocks)
        ])
        self.mask_decoder = MaskDecoder(self.num_features, num_channel=c, out_channel=1)
        self.complex_decoder = ComplexDecoder(num_channel=c)

    # -- construction from a config ------------------------------------------------------------
    CONFIG_KEYS = {  # read by GANTrainStep
        "gan_loss_mode": ConfigKey("fixed", "fixed (default) or clearvoice (the reference loss, bugs included)",
                                   kwarg=False),
        "disc_learning_rate": ConfigKey(1e-3, "discriminator learning rate", kwarg=False, minimum=0),
        "discriminator_kwargs": ConfigKey({}, "size hyperparameters of the metric discriminator", kwarg=False),
        "pesq_workers": ConfigKey(2, "processes computing the discriminator's PESQ targets (0 = in-process)",
                                  kwarg=False, minimum=0),
        "valid_pesq": ConfigKey(False, "also compute PESQ during validation", kwarg=False),
    }

    @staticmethod
    def discriminator_kwargs(conf: dict) -> dict:
        """MetricDiscriminator kwargs from ``discriminator_kwargs`` in the config."""
        from se.models import check_kwargs

        return dict(check_kwargs(MetricDiscriminator, conf.get("discriminator_kwargs") or {}, "discriminator_kwargs"))

    @staticmethod
    def convert_clearvoice_state_dict(sd: dict) -> dict:
        """Release generator state dict -> ours (identical keys; ``module.`` is stripped).

        The number of blocks and heads is read from the keys. Raises ValueError listing
        missing / unexpected keys.
        """
        sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
        blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
        heads = {k.split(".")[2] for k in sd if k.startswith("blocks.0.attn_conv_Q_")}
        with torch.device("meta"):
            ref = MossFormerGAN(num_blocks=max(blocks) + 1 if blocks else 6,
                                n_head=len(heads) or 4)
        expected = list(ref.state_dict().keys())
        _check_keys("MossFormerGAN generator", expected, sd)
        return {k: sd[k] for k in expected}

    # -- the network -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, 2, T, F) compressed [real, imag] -> [real, imag], each (B, 1, T, F)."""
        if x.dim() != 4 or x.shape[1] != 2 or x.shape[3] != self.num_features:
            raise ValueError(
                f"MossFormerGAN.forward expects (B, 2, T, {self.num_features}), got {tuple(x.shape)}"
            )
        mag = torch.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2).unsqueeze(1)  # (B, 1, T, F) compressed |X|
        # noisy phase as (cos, sin) = (real, imag) / |X|, i.e. cos/sin of atan2(imag, real), with
        # atan2(0, 0) = 0 -> (1, 0); no atan2 (ONNX has none; its export was off near zero)
        nonzero = mag > 0
        safe = torch.where(nonzero, mag, torch.ones_like(mag))  # (B, 1, T, F)
        cos_phase = torch.where(nonzero, x[:, 0:1] / safe, torch.ones_like(mag))  # (B, 1, T, F)
        sin_phase = x[:, 1:2] / safe  # (B, 1, T, F)
        h = torch.cat((mag, x), dim=1)  # (B, 3, T, F): [|X|, real, imag]
        h = self.dense_encoder(h)  # (B, C, T, Q)
        recompute = self.checkpoint_blocks and torch.is_grad_enabled() and self.training
        for block in self.blocks:
            if recompute:  # activations recomputed in backward instead of kept
                h = checkpoint(block, h, use_reentrant=False)  # (B, C, T, Q)
            else:
                h = block(h)  # (B, C, T, Q)
        mask = self.mask_decoder(h)  # (B, 1, T, F)
        out_mag = mask * mag  # (B, 1, T, F) masked magnitude, noisy phase
        res = self.complex_decoder(h)  # (B, 2, T, F) complex residual
        real = out_mag * cos_phase + res[:, 0:1]  # (B, 1, T, F)
        imag = out_mag * sin_phase + res[:, 1:2]  # (B, 1, T, F)
        return [real, imag]

    # -- signal helpers --------------------------------------------------------------------------
    @staticmethod
    def norm_factor(x: torch.Tensor, eps: float = TRAIN_EPS) -> torch.Tensor:
        """c = sqrt(L / (sum x^2 + eps)) per row of (B, L) -> (B, 1)."""
        return torch.sqrt(x.shape[-1] / (x.pow(2).sum(dim=-1, keepdim=True) + eps))

    def stft(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) -> complex (B, F, T), centred (reflect padding), T = L // hop + 1."""
        return torch.stft(x, self.fft_len, self.win_inc, self.win_len, window=self.window.to(x.dtype),
                          center=True, return_complex=True)

    def istft(self, spec: torch.Tensor, length: int | None = None, center: bool = True) -> torch.Tensor:
        """complex (B, F, T) -> (B, L). center=False is the reference's (delayed) synthesis."""
        win = self.window.to(spec.real.dtype)
        return torch.istft(spec, self.fft_len, self.win_inc, self.win_len, window=win,
                           center=center, length=length if center else None)

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) waveform -> compressed (B, 2, T, F) network input."""
        return power_compress(self.stft(x))

    def synthesise(self, real: torch.Tensor, imag: torch.Tensor, length: int) -> torch.Tensor:
        """Network output -> aligned waveform (B, length) (centred iSTFT)."""
        return self.istft(power_uncompress(real, imag), length=length, center=True)

    # -- enhancement -----------------------------------------------------------------------------
    def enhance(self, noisy: torch.Tensor) -> torch.Tensor:
        """Aligned enhancement of a normalised (B, L) batch -> (B, L), eval mode, no autograd."""
        if noisy.dim() != 2:
            raise ValueError(f"enhance expects (B, L), got shape {tuple(noisy.shape)}")
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                x = noisy.to(self.window.device, self.window.dtype)
                length = x.shape[-1]
                c = self.norm_factor(x)  # (B, 1)
                start = self.fft_len // 2  # the centred synthesis inside the uncentred one
                return self.waveform(x * c)[:, start:start + length] / c
        finally:
            self.train(was_training)

    # reference decode: ClearVoice inference-YAML values
    decode_window = 1.0  # seconds per window of the segmented decode (stride 0.75 window)
    one_time_decode_length = 10.0  # seconds: longer (padded) inputs are decoded in windows
    DECODE_BATCH = 4  # windows per forward in segmented decoding (numerically independent)

    def _decode_grid(self) -> tuple[int, int]:
        w = int(self.sampling_rate * self.decode_window)
        return w, int(w * 0.75)

    @staticmethod
    def clearvoice_padded_length(n: int, window: int = 16000, stride: int = 12000) -> int:
        """Length after the reference's segment padding (zeros)."""
        w, s = window, stride
        if n < w:
            return w
        if n < w + s:
            return w + s
        if (n - w) % s:
            return n + n - (n - w) // s * s  # the reference pads by this (odd) amount
        return n

    def _clearvoice_pass(self, x: torch.Tensor) -> torch.Tensor:
        """Reference ``_decode_one_audio``: (B, L) float -> (B, L), delayed by win_len/2."""
        length = x.shape[-1]
        nframe = math.ceil(length / self.win_inc)
        pad = nframe * self.win_inc - length
        if pad:
            x = torch.cat((x, x[:, :pad]), dim=-1)  # wrap-around frame padding
        c = torch.sqrt(x.shape[-1] / torch.sum(x**2.0, dim=-1, keepdim=True))  # no epsilon
        return (self.waveform(x * c) / c)[:, :length]

    def waveform(self, x: torch.Tensor) -> torch.Tensor:
        """The waveform step both decode paths share: centred STFT, network, UNcentred iSTFT.

        (B, L) scaled input -> (B, (T - 1) * hop + fft_len); the aligned (centred) output is
        ``[:, fft_len // 2:][:, :L]``. An exported model (se.export) replaces exactly this step.
        """
        real, imag = self(self.spectrum(x))
        return self.istft(power_uncompress(real, imag), center=False)

    def clearvoice_decode(self, raw: np.ndarray) -> np.ndarray:
        """Reference decode of raw float64 samples (L,) -> float64 (L,).

        audio_norm, zero padding to the reference's segment grid, one pass when the padded
        signal is <= one_time_decode_length (10 s) else windows of decode_window (1 s) every
        0.75 window keeping [2000, 14000) of each (first: [0, 14000)),
        c without epsilon, centred STFT + UNcentred iSTFT (200-sample delay), [:L] * scalar.
        """
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 1:
            raise ValueError(f"clearvoice_decode expects (L,), got shape {raw.shape}")
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                x, scalar = audio_norm(raw)
                x = x.astype(np.float32)
                n = x.shape[0]
                padded = self.clearvoice_padded_length(n, *self._decode_grid())
                x = np.concatenate([x, np.zeros(padded - n, np.float32)])
                dtype, device = self.window.dtype, self.window.device
                audio = torch.from_numpy(x).to(device, dtype)
                if padded <= self.sampling_rate * self.one_time_decode_length:
                    out = self._clearvoice_pass(audio[None])[0].double().cpu().numpy()
                else:
                    out = self._clearvoice_segments(audio)
        finally:
            self.train(was_training)
        return out[:n].astype(np.float64) * scalar

    def _clearvoice_segments(self, audio: torch.Tensor) -> np.ndarray:
        w, s = self._decode_grid()
        give_up = (w - s) // 2
        total = audio.shape[0]
        starts = list(range(0, total - w + 1, s))
        out = np.zeros(total, dtype=np.float64)
        for i in range(0, len(starts), self.DECODE_BATCH):
            group = starts[i:i + self.DECODE_BATCH]
            segs = torch.stack([audio[st:st + w] for st in group])  # (b, w)
            ys = self._clearvoice_pass(segs).double().cpu().numpy()
            for st, y in zip(group, ys):
                if st == 0:
                    out[:w - give_up] = y[:-give_up]
                else:
                    out[st + give_up:st + w - give_up] = y[give_up:-give_up]
        return out

    # -- supervised (validation) loss ------------------------------------------------------------
    def loss(self, noisy: torch.Tensor, clean: torch.Tensor):
        """Generator loss WITHOUT the adversarial term: 0.1 RI + 0.9 mag + 0.2 time.

        For validation / supervised use; the GAN step (GANTrainStep) adds 0.05 x
        MSE(D(|S|, |S_hat|), 1).  noisy, clean: (B, L) with the same gain; both are scaled by
        the noisy signal's factor c.  Returns (loss, parts).
        """
        if noisy.dim() != 2 or noisy.shape != clean.shape:
            raise ValueError(f"loss expects two (B, L) tensors, got {tuple(noisy.shape)} and "
                             f"{tuple(clean.shape)}")
        t = generator_pass(self, noisy, clean)
        w = LOSS_WEIGHTS
        loss = w["ri"] * t["ri"] + w["mag"] * t["mag"] + w["time"] * t["time"]
        return loss, {"loss_ri": t["ri"].detach(), "loss_mag": t["mag"].detach(),
                      "loss_time": t["time"].detach()}


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------
LOSS_WEIGHTS = {"ri": 0.1, "mag": 0.9, "time": 0.2, "adv": 0.05}
GAN_LOSS_MODES = ("fixed", "clearvoice")


def time_domain_estimate(model: MossFormerGAN, real, imag, spec_clean, length: int, mode: str):
    """Waveform used by the time loss and the PESQ target.

    fixed: centred iSTFT of the PREDICTED real and imag, trimmed to ``length`` (aligned).
    clearvoice: the reference's hybrid of the CLEAN real part and the predicted imaginary
    part, uncentred iSTFT (200-sample delay), cut to ``length`` (bugs 1 and 2).
    """
    if mode == "fixed":
        return model.synthesise(real, imag, length)
    if mode == "clearvoice":
        y = model.istft(power_uncompress(spec_clean[:, 0:1], imag), center=False)
        return y[:, :length]
    raise ValueError(f"gan_loss_mode must be one of {GAN_LOSS_MODES}, got {mode!r}")


def generator_pass(model, noisy, clean, mode: str = "fixed", call=None) -> dict:
    """c-normalisation, spectra, generator, and the non-adversarial generator losses.

    ``call``: how to run the generator (e.g. a DistributedDataParallel wrapper); default
    ``model``.  Returns tensors: ri, mag, time losses, est_wave (B, L), s (normalised clean),
    clean_mag / est_mag (B, 1, F, T) discriminator inputs.
    """
    g = unwrap(model)
    with torch.no_grad():
        c = g.norm_factor(noisy)  # (B, 1), from the noisy signal, applied to both
        x, s = noisy * c, clean * c
        X = g.spectrum(x)  # (B, 2, T, F)
        S = g.spectrum(s)
    real, imag = (call or g)(X)  # (B, 1, T, F) each
    real, imag = real.float(), imag.float()
    ri = F.mse_loss(real, S[:, 0:1]) + F.mse_loss(imag, S[:, 1:2])
    est_mag = torch.sqrt(real**2 + imag**2)  # (B, 1, T, F)
    clean_mag = torch.sqrt(S[:, 0:1] ** 2 + S[:, 1:2] ** 2)
    mag = F.mse_loss(est_mag, clean_mag)
    est_wave = time_domain_estimate(g, real, imag, S, s.shape[-1], mode)
    n = min(est_wave.shape[-1], s.shape[-1])
    time = torch.mean(torch.abs(est_wave[:, :n] - s[:, :n]))
    return {"ri": ri, "mag": mag, "time": time, "est_wave": est_wave[:, :n], "s": s[:, :n],
            "clean_mag": clean_mag.transpose(2, 3), "est_mag": est_mag.transpose(2, 3)}


# ----------------------------------------------------------------------------------------------
# GAN training step
# ----------------------------------------------------------------------------------------------
class GANTrainStep(TrainStep):
    """Metric-GAN step: generator + metric discriminator, two AdamW optimisers.

    Config keys: init_learning_rate / finetune_learning_rate (generator),
    disc_learning_rate (1e-3), weight_decay (both; the reference effectively used torch's
    AdamW default 0.01), clip_grad_norm (each network, once per update),
    gan_loss_mode ('fixed' | 'clearvoice'), pesq_workers (2; 0 = in-process),
    valid_pesq (False), discriminator_kwargs.

    micro_step (mode 'fixed', the default):
    1. c from noisy (with 1e-6) scales noisy and clean; compressed spectra X, S.
    2. generator -> (real, imag); aligned estimate s_hat = iSTFT_centred(real, imag).
    3. PESQ(s, s_hat) jobs go to the persistent process pool NOW (asynchronous) ...
    4. L_G = 0.1 RI + 0.9 mag + 0.2 |s_hat - s| + 0.05 MSE(D(|S|, |S_hat|), 1), with D's
       parameters detached for this term (no gradient reaches D from L_G);
       backward(L_G * scale) runs while the PESQ workers compute ...
    5. ... and the scores are collected here.  q = (PESQ - 1) / 3.5.
    6. L_D = MSE(D(|S|, |S|), 1) + MSE(D(|S|, detach |S_hat|), q) where items whose PESQ
       failed (NaN) get weight 0 in the second term only (count: ``pesq_failed``);
       backward(L_D * scale).
    update() clips each network's gradients once and steps both optimisers (or neither).

    mode 'clearvoice' reproduces the reference loss exactly: time loss on the clean real part
    + predicted imaginary part through the uncentred iSTFT, D's gradients from the
    adversarial generator term are kept (leak), PESQ is awaited before any backward and the
    whole batch is skipped (no backward at all, ``skipped`` = 1) when one item fails or L_G
    is not finite.  (Skipping breaks DistributedDataParallel: refused with more than one
    process, see check_world_size.)
    """

    # DistributedDataParallel wraps the generator itself (its forward is the spectral one)
    loss_forward_for_ddp = False

    def __init__(self, model: nn.Module, conf: dict, device: torch.device):
        super().__init__(model, conf, device)
        self.mode = conf.get("gan_loss_mode", "fixed")
        if self.mode not in GAN_LOSS_MODES:
            raise ValueError(f"gan_loss_mode must be one of {GAN_LOSS_MODES}, got {self.mode!r}")
        disc = MetricDiscriminator(**MossFormerGAN.discriminator_kwargs(conf)).to(device)
        self.modules["discriminator"] = disc
        self.pesq_workers = int(conf.get("pesq_workers", 2))
        self.valid_pesq = bool(conf.get("valid_pesq", False))
        self.fs = int(conf.get("sampling_rate", MossFormerGAN.sampling_rate))
        self._pool = None
        # CPU training: the freed heap goes back to the OS after each recomputed SyncANet
        # block (se/allocator.py); the network itself does no memory management
        g = unwrap(model)
        self._release_hooks = release_after_each(g.blocks if g.checkpoint_blocks else [], device)

    def update(self, loss_finite: bool = True) -> dict[str, float]:
        result = super().update(loss_finite)
        release_after_step(self.device)  # and after each optimiser update (CPU, retained memory only)
        return result

    def check_world_size(self, world_size: int) -> None:
        if self.mode == "clearvoice" and world_size > 1:
            raise ValueError(
                "gan_loss_mode clearvoice skips whole batches on the process whose PESQ failed, which "
                f"DistributedDataParallel cannot follow: train it with one process (not {world_size}), "
                "or use gan_loss_mode fixed"
            )

    @property
    def pesq_pool(self):
        if self._pool is None:
            from se.pesq_pool import get_pool

            self._pool = get_pool(self.pesq_workers)
        return self._pool

    def build_optimizers(self) -> None:
        wd = float(self.conf.get("weight_decay", 0.0))
        gen = [p for p in unwrap(self.modules["model"]).parameters() if p.requires_grad]
        disc = [p for p in unwrap(self.modules["discriminator"]).parameters() if p.requires_grad]
        self.optimizers = {
            "model": torch.optim.AdamW(gen, lr=self.learning_rate(), weight_decay=wd),
            "disc": torch.optim.AdamW(disc, lr=float(self.conf.get("disc_learning_rate", 1e-3)),
                                      weight_decay=wd),
        }

    # -- pieces ------------------------------------------------------------------------------
    def _generator_call(self):
        m = self.modules["model"]
        if isinstance(m, DistributedDataParallel) and isinstance(m.module, LossForward):
            raise TypeError("GANTrainStep needs the generator itself wrapped by "
                            "DistributedDataParallel (its forward is the spectral forward), "
                            "not DDP(LossForward(model))")
        return m

    def _adversarial_prediction(self, clean_mag, est_mag):
        """D(|S|, |S_hat|) for the generator loss."""
        disc = self.modules["discriminator"]
        if self.mode == "clearvoice":
            return disc(clean_mag, est_mag)  # reference: D's grads leak from L_G
        d = unwrap(disc)
        params = {k: v.detach() for k, v in d.named_parameters()}
        return functional_call(d, params, (clean_mag, est_mag))  # gradient reaches only G

    def discriminator_loss(self, clean_mag, est_mag, q, scale: float | None = None):
        """L_D = MSE(D(S, S), 1) + MSE(D(S, S_hat)[valid], q[valid]); est_mag is detached.

        q: (B,) normalised PESQ with NaN for failed items.  The second term runs on the whole
        batch with weight 0 for failed items (the mean over the others; 0 when all failed), so
        every process runs the same forwards and backwards, and so the same DDP collectives,
        whatever PESQ returned (failed items still enter D's BatchNorm batch statistics).  With ``scale``, each term is back-propagated (times scale)
        right after its forward.  Returns (L_D, n_failed).
        """
        disc = self.modules["discriminator"]
        est_mag = est_mag.detach()
        with self.autocast():
            pred_max = disc(clean_mag, clean_mag).flatten().float()
        loss_max = F.mse_loss(pred_max, torch.ones_like(pred_max))
        if scale is not None:
            self.backward(loss_max * scale)
        valid = torch.isfinite(q)
        n_failed = int((~valid).sum())
        loss = loss_max.detach() if scale is not None else loss_max
        with self.autocast():
            pred = disc(clean_mag, est_mag).flatten().float()
        weight = valid.to(pred)
        target = torch.where(valid, q, 0.0).to(pred)
        loss_enh = (weight * (pred - target) ** 2).sum() / weight.sum().clamp_min(1.0)
        if scale is not None:
            self.backward(loss_enh * scale)
            loss_enh = loss_enh.detach()
        return loss + loss_enh, n_failed

    # -- one step ------------------------------------------------------------------------------
    def micro_step(self, noisy: torch.Tensor, clean: torch.Tensor, scale: float, **_) -> dict[str, float]:
        noisy = noisy.to(self.device, torch.float32)
        clean = clean.to(self.device, torch.float32)
        with self.autocast():
            t = generator_pass(self.modules["model"], noisy, clean, self.mode,
                               call=self._generator_call())
        # PESQ of this batch starts now in the worker processes and runs during backward(L_G)
        est = t["est_wave"].detach().float().cpu().numpy()
        ref = t["s"].detach().float().cpu().numpy()
        job = self.pesq_pool.submit(list(ref), list(est), self.fs)

        with self.autocast():
            pred = self._adversarial_prediction(t["clean_mag"], t["est_mag"]).flatten().float()
        adv = F.mse_loss(pred, torch.ones_like(pred))
        w = LOSS_WEIGHTS
        loss_g = w["ri"] * t["ri"] + w["mag"] * t["mag"] + w["time"] * t["time"] + w["adv"] * adv
        parts = {k: float(v.detach()) for k, v in (("loss", loss_g), ("loss_ri", t["ri"]),
                 ("loss_mag", t["mag"]), ("loss_time", t["time"]), ("loss_adv", adv))}

        if self.mode == "clearvoice":
            # reference: PESQ inside the loss, before any backward; one failure (or a
            # non-finite L_G) skips the whole batch for both networks
            scores = job.result()
            n_failed = int((~np.isfinite(scores)).sum())
            if n_failed or not torch.isfinite(loss_g):
                return {**parts, "skipped": 1.0, "pesq_failed": float(n_failed)}
            parts["skipped"] = 0.0
        self.backward(loss_g * scale)

        scores = job.result()
        q = torch.as_tensor((scores - 1.0) / 3.5, dtype=torch.float32, device=self.device)
        loss_d, n_failed = self.discriminator_loss(t["clean_mag"], t["est_mag"], q, scale=scale)
        parts.update(loss_disc=float(loss_d), pesq_failed=float(n_failed))
        if n_failed < len(scores):
            parts["pesq"] = float(np.nanmean(scores))
        return parts

    def init_extra(self, init_checkpoint: str | Path) -> None:
        """Fine-tuning: the discriminator that belongs to the generator checkpoint, if any.

        Our checkpoints carry it (key 'discriminator'); for ClearVoice release files see
        :func:`load_release_discriminator`.  Without one the discriminator starts from scratch
        (logged as a warning).
        """
        state = torch_load(init_checkpoint)  # ours also hold RNG / config objects
        sd = state.get("discriminator") if isinstance(state, dict) else None
        where = str(init_checkpoint)
        if sd is None:
            path = find_release_discriminator(init_checkpoint)
            sd = load_release_discriminator(init_checkpoint)
            where = str(path)
        if sd is None:
            log.warning("no discriminator found for %s (looked inside it, for %s.disc.pt and in "
                        "last_checkpoint beside it): the discriminator starts from scratch",
                        init_checkpoint, str(init_checkpoint)[:-3] if str(init_checkpoint).endswith(".pt")
                        else init_checkpoint)
            return
        unwrap(self.modules["discriminator"]).load_state_dict(
            MetricDiscriminator.convert_clearvoice_state_dict(sd))
        log.info("discriminator initialised from %s", where)

    @torch.no_grad()
    def valid_step(self, noisy: torch.Tensor, clean: torch.Tensor, **_) -> dict[str, float]:
        """Generator losses (no adversarial term; see MossFormerGAN.loss) and optional PESQ."""
        noisy = noisy.to(self.device, torch.float32)
        clean = clean.to(self.device, torch.float32)
        g = unwrap(self.modules["model"])
        with self.autocast():
            t = generator_pass(g, noisy, clean, "fixed")
        w = LOSS_WEIGHTS
        loss = w["ri"] * t["ri"] + w["mag"] * t["mag"] + w["time"] * t["time"]
        out = {"loss": float(loss), "loss_ri": float(t["ri"]), "loss_mag": float(t["mag"]),
               "loss_time": float(t["time"])}
        if self.valid_pesq:
            scores = self.pesq_pool.map(list(t["s"].float().cpu().numpy()),
                                        list(t["est_wave"].float().cpu().numpy()), self.fs)
            if np.isfinite(scores).any():
                out["pesq"] = float(np.nanmean(scores))
        return out


# ----------------------------------------------------------------------------------------------
# release checkpoints
# ----------------------------------------------------------------------------------------------
def find_release_discriminator(generator_checkpoint: str | Path) -> Path | None:
    """Where ClearVoice keeps the discriminator belonging to a generator checkpoint.

    1. ``X.disc.pt`` beside ``X.pt`` (what the reference's fine-tuning reads);
    2. the ``discriminator.ckpt-*.pt`` named on the second line of ``last_checkpoint`` in the
       same directory, when its first line names this generator file (what it writes);
    3. ``discriminator.ckpt-E-S.pt`` matching ``model.ckpt-E-S.pt``.
    Returns None when there is none.
    """
    p = Path(generator_checkpoint)
    stem = p.name[:-3] if p.name.endswith(".pt") else p.name
    cand = p.with_name(stem + ".disc.pt")
    if cand.is_file():
        return cand
    last = p.parent / "last_checkpoint"
    if last.is_file():
        lines = [ln.strip() for ln in last.read_text().splitlines() if ln.strip()]
        if len(lines) >= 2 and Path(lines[0]).name == p.name:
            cand = p.parent / Path(lines[1]).name
            if cand.is_file():
                return cand
    if p.name.startswith("model.ckpt-"):
        cand = p.with_name("discriminator.ckpt-" + p.name[len("model.ckpt-"):])
        if cand.is_file():
            return cand
    return None


def load_release_discriminator(generator_checkpoint: str | Path) -> dict | None:
    """The discriminator state dict belonging to a ClearVoice generator checkpoint, or None.

    See :func:`find_release_discriminator` for where it is looked for; the file holds
    {'discriminator': state_dict, ...} (a bare state dict is accepted too).  Keys are checked
    and ``module.`` stripped (MetricDiscriminator.convert_clearvoice_state_dict).  The caller
    logs clearly when None is returned (the discriminator then starts from scratch).
    """
    path = find_release_discriminator(generator_checkpoint)
    if path is None:
        return None
    state = torch_load(path)
    if isinstance(state, dict) and "discriminator" in state:
        state = state["discriminator"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no discriminator state dict inside")
    log.info("discriminator weights from %s", path)
    return MetricDiscriminator.convert_clearvoice_state_dict(state)
