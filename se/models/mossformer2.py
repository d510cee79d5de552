"""MossFormer2_SE_48K: ClearVoice's 48 kHz speech-enhancement network (mask on an STFT).

Paper: S. Zhao, Y. Ma, C. Ni, C. Zhang, H. Wang, T. H. Nguyen, K. Zhou, J. Yip, D. Ng, B. Ma,
"MossFormer2: Combining Transformer and RNN-Free Recurrent Network for Enhanced Time-Domain
Monaural Speech Separation", ICASSP 2024; built on MossFormer: S. Zhao, B. Ma, "MossFormer:
Pushing the Performance Limit of Monaural Speech Separation using Gated Single-Head Transformer
with Convolution-Augmented Joint Self-Attentions", ICASSP 2023. ClearVoice's SE variant runs the MossFormer2 mask
network on Kaldi fbank features (60 mel + deltas + delta-deltas = 180) and predicts a real
mask on a 1920-point STFT (961 bins, 40 ms window, 8 ms hop at 48 kHz).

Parity references: tests/data/clearvoice (tests/data/README.md). State-dict keys and shapes are
those of the release (``mossformer.…``, one shared rotary ``freqs`` listed under each of the
24 layers), so release checkpoints load as they are.

This file and se/models/mossformer2_blocks.py are the plain reference forward. The speed
kernels (blocked relu^2 attention with a hand-written backward, fused FFConvM, channels-last
depthwise convolutions, oneDNN matrix products) are in se/models/kernels/mossformer2.py and are
applied by ``se.models.build_network`` (``SE_KERNELS=reference`` keeps this forward).

Shape legend: B batch, L samples, S frames, F frequency bins (961), C channels (512),
M mel bins (60; the network input has 3M = 180 features).

Features in the data pipeline: ``model.input_features(noisy_wave, generator)`` (or
``se.features.FbankFeatures.from_config(conf)``, a plain picklable object) computes the
network input of a normalised noisy crop in a data-loader worker, with the dither noise drawn
from the worker's generator; pass the stacked result as ``loss(noisy, clean, features=...)``.
Without ``features`` the loss computes them itself (global torch RNG for the dither).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from se.audio import audio_norm
from se.features import MAX_WAV_VALUE, FbankFeatures, WorkerFeatures, covering_length
from se.models import ConfigKey, network_conf
from se.models.mossformer2_blocks import MossformerBlockGFSMN, ScaledSinuEmbedding
from se.models.network import Network
from se.precision import float32

EPS = 1e-6  # ClearVoice's loss epsilon


class MossFormerM(nn.Module):
    """The MossFormer2 block stack followed by LayerNorm(C, eps 1e-6)."""

    def __init__(self, num_blocks: int, d_model: int, **block_kwargs):
        super().__init__()
        self.mossformerM = MossformerBlockGFSMN(d_model, num_blocks, **block_kwargs)
        self.norm = nn.LayerNorm(d_model, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, C) -> (B, S, C)
        return self.norm(self.mossformerM(x))


class ComputationBlock(nn.Module):
    """MossFormerM -> GroupNorm(1, C, eps 1e-8) -> + input (skip around the block stack)."""

    def __init__(self, num_blocks: int, d_model: int, **block_kwargs):
        super().__init__()
        self.intra_mdl = MossFormerM(num_blocks, d_model, **block_kwargs)
        self.intra_norm = nn.GroupNorm(1, d_model, eps=1e-8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, S) -> (B, C, S)
        h = self.intra_mdl(x.transpose(1, 2)).transpose(1, 2)  # (B, C, S)
        return self.intra_norm(h) + x


class MossFormerMaskNet(nn.Module):
    """Features (B, S, in_channels) -> mask (B, S, out_channels_final) (release: MossFormer_MaskNet).

    GroupNorm -> 1x1 conv encoder (-> C) + scaled sinusoidal positions -> ComputationBlock ->
    PReLU -> 1x1 conv to ``num_spks`` x C -> per "speaker": tanh(1x1 conv) * sigmoid(1x1 conv)
    -> 1x1 conv decoder (-> F) -> ReLU. The release has ``num_spks`` = 2 but enhances with the
    first "speaker" only: the mask is that one.
    """

    def __init__(self, in_channels: int = 180, out_channels: int = 512, out_channels_final: int = 961,
                 num_blocks: int = 24, num_spks: int = 2, **block_kwargs):
        super().__init__()
        self.num_spks = num_spks
        self.norm = nn.GroupNorm(1, in_channels, eps=1e-8)
        self.conv1d_encoder = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.pos_enc = ScaledSinuEmbedding(out_channels)
        self.mdl = ComputationBlock(num_blocks, out_channels, **block_kwargs)
        self.conv1d_out = nn.Conv1d(out_channels, out_channels * num_spks, 1)
        self.conv1_decoder = nn.Conv1d(out_channels, out_channels_final, 1, bias=False)
        self.prelu = nn.PReLU()
        self.output = nn.Sequential(nn.Conv1d(out_channels, out_channels, 1), nn.Tanh())
        self.output_gate = nn.Sequential(nn.Conv1d(out_channels, out_channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, 3M) -> (B, S, F)
        B, S, _ = x.shape
        x = self.norm(x.transpose(1, 2))  # (B, 3M, S)
        x = self.conv1d_encoder(x)  # (B, C, S)
        x = x + self.pos_enc(S).transpose(0, 1)  # (B, C, S)
        x = self.prelu(self.mdl(x))  # (B, C, S)
        x = self.conv1d_out(x).reshape(B * self.num_spks, -1, S)  # (B * spks, C, S)
        x = self.output(x) * self.output_gate(x)  # (B * spks, C, S)
        x = F.relu(self.conv1_decoder(x)).reshape(B, self.num_spks, -1, S)  # (B, spks, F, S)
        return x[:, 0].transpose(1, 2)  # first "speaker": (B, S, F)


class MossFormer2SE(Network):
    """MossFormer2 speech enhancement at 48 kHz (ClearVoice MossFormer2_SE_48K).

    Args (defaults = the released model; paper section 2 / ClearVoice config):
        num_blocks: number of MossFormer2 blocks, each a FLASH gated-attention layer followed by
            a gated-FSMN block (24).
        width: model dimension C of the blocks (``out_channels``, 512).
        group_size: chunk length of the quadratic (local) attention (256 frames).
        query_key_dim: shared query/key dimension of the attention (128).
        expansion_factor: FLASH hidden size = width * expansion_factor, split into [v | u] (4).
        fsmn_inner: channels of the gated FSMN (256); fsmn_lorder: FSMN memory order (20 =>
            a 39-tap non-causal memory).
        conv_kernel: depthwise kernel of the convolution modules (17).
        rotary_dim: rotary position-embedding dimension (32).
        dropout: dropout of the FFConvM outputs and the attention weights (0.1).
        num_spks: output "speakers" of conv1d_out (2 in the release; only the first is used).
        sampling_rate, win_len, win_inc, fft_len, win_type, num_mels: STFT / fbank settings
            (ClearVoice config keys; 48000, 1920, 384, 1920, 'hamming', 60).
        fbank_dither: fbank dither used by ``loss`` / ``input_features`` (1.0 as the release
            trains). Inference uses ``inference_dither`` (0.0: deterministic; the release 1.0).
        one_time_decode_length, decode_window: seconds; ClearVoice decode path settings (20, 4).
    """

    sampling_rate = 48000
    inference_dither = 0.0  # fbank dither of enhance (deterministic); se.bin.enhance --fbank-dither sets it

    def __init__(self, num_blocks: int = 24, width: int = 512, group_size: int = 256,
                 query_key_dim: int = 128, expansion_factor: float = 4.0, fsmn_inner: int = 256,
                 fsmn_lorder: int = 20, conv_kernel: int = 17, rotary_dim: int = 32, dropout: float = 0.1,
                 num_spks: int = 2, sampling_rate: int = 48000, win_len: int = 1920, win_inc: int = 384,
                 fft_len: int = 1920, win_type: str = "hamming", num_mels: int = 60,
                 fbank_dither: float = 1.0, one_time_decode_length: float = 20.0, decode_window: float = 4.0):
        super().__init__()
        if int(sampling_rate) != self.sampling_rate:
            raise ValueError(f"MossFormer2_SE_48K works at {self.sampling_rate} Hz, config has sampling_rate "
                             f"{sampling_rate}")
        if win_type != "hamming":
            raise ValueError(f"win_type must be 'hamming' (the STFT and fbank window), got {win_type!r}")
        if fft_len < win_len:
            raise ValueError(f"fft_len ({fft_len}) must be >= win_len ({win_len})")
        self.win_len, self.win_inc, self.fft_len = int(win_len), int(win_inc), int(fft_len)
        self.fbank_dither = float(fbank_dither)
        self.one_time_decode_length = float(one_time_decode_length)
        self.decode_window = float(decode_window)
        self.features = FbankFeatures(sampling_rate, win_len, win_inc, num_mels, win_type, fbank_dither)
        self.mossformer = MossFormerMaskNet(
            in_channels=3 * num_mels, out_channels=width, out_channels_final=fft_len // 2 + 1,
            num_blocks=num_blocks, num_spks=num_spks, group_size=group_size, query_key_dim=query_key_dim,
            expansion_factor=expansion_factor, dropout=dropout, fsmn_inner=fsmn_inner,
            fsmn_lorder=fsmn_lorder, kernel_size=conv_kernel, rotary_dim=rotary_dim)
        # symmetric Hamming window of the STFT (torch.hamming_window(periodic=False)); not a state entry
        self.register_buffer("stft_window", torch.hamming_window(win_len, periodic=False), persistent=False)

    # -- construction ---------------------------------------------------------------------
    CONFIG_KEYS = {
        "num_mels": ConfigKey(60, "mel bins of the fbank front end", minimum=1),
        "fbank_dither": ConfigKey(1.0, "fbank dither during training (enhancement: none)", minimum=0),
    }

    @classmethod
    def data_features(cls, conf: dict) -> WorkerFeatures:
        """The trainer's data-pipeline hook: a picklable ``fn(noisy_segment, rng) -> (S, 180)``
        computing the network input (fbank with ``fbank_dither``) in the loader workers; the
        batch's stacked result reaches ``loss(..., features=...)``."""
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        kw = {**defaults, **cls.config_kwargs(network_conf(conf))}
        return WorkerFeatures(FbankFeatures(kw["sampling_rate"], kw["win_len"], kw["win_inc"], kw["num_mels"],
                                            kw["win_type"], kw["fbank_dither"]))

    @staticmethod
    def convert_clearvoice_state_dict(sd: dict) -> dict:
        """Release keys are ours (``mossformer.…``); checks the key set and returns a copy.

        Raises ValueError listing missing / unexpected keys. A release file's 24 aliased
        ``rotary_pos_emb.freqs`` entries are all present; a single one is enough. A leftover
        DistributedDataParallel ``module.`` prefix is removed.
        """
        if sd and all(k.startswith("module.") for k in sd):
            sd = {k[len("module."):]: v for k, v in sd.items()}
        reference = MossFormer2SE._reference_keys()
        missing = [k for k in reference if k not in sd and not k.endswith("rotary_pos_emb.freqs")]
        unexpected = [k for k in sd if k not in reference]
        if missing or unexpected:
            raise ValueError(
                "not a MossFormer2_SE_48K state dict: "
                f"{len(missing)} missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
                f"{len(unexpected)} unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        out = dict(sd)
        freqs = [k for k in reference if k.endswith("rotary_pos_emb.freqs")]
        present = next((sd[k] for k in freqs if k in sd), None)
        if present is None:
            raise ValueError("not a MossFormer2_SE_48K state dict: no rotary_pos_emb.freqs entry")
        for k in freqs:
            out.setdefault(k, present)
        return out

    _KEYS: list[str] | None = None

    @classmethod
    def _reference_keys(cls) -> list[str]:
        if cls._KEYS is None:  # key names depend only on num_blocks (24): build a narrow copy
            narrow = cls(width=8, query_key_dim=8, fsmn_inner=8, expansion_factor=1.0)
            cls._KEYS = list(narrow.state_dict().keys())
        return cls._KEYS

    # -- network --------------------------------------------------------------------------
    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        """features (B, S, 180) -> [mask (B, S, 961)] (a list, as the release's TestNet)."""
        if features.dim() != 3 or features.shape[-1] != self.mossformer.norm.num_channels:
            raise ValueError(f"features must be (B, S, {self.mossformer.norm.num_channels}), "
                             f"got shape {tuple(features.shape)}")
        if features.shape[1] == 0:
            raise ValueError(f"features have no frames (shape {tuple(features.shape)}): the input is shorter "
                             f"than one {self.win_len}-sample window")
        return [self.mossformer(features)]

    def input_features(self, noisy, generator: torch.Generator | None = None,
                       dither: float | None = None) -> torch.Tensor:
        """Network input of a normalised noisy waveform: fbank ‖ Δ ‖ ΔΔ of noisy x 32768.

        noisy: (L,) or (B, L), numpy (cast to float32) or tensor. dither: default
        ``fbank_dither`` (training); noise drawn from ``generator`` (global RNG when None).
        Returns (S, 180) or (B, S, 180). Safe to call in data-loader workers.
        """
        if isinstance(noisy, np.ndarray):
            noisy = torch.from_numpy(np.asarray(noisy, dtype=np.float32))
        return self.features(noisy * MAX_WAV_VALUE, generator=generator,
                             dither=self.fbank_dither if dither is None else dither)

    @float32
    def stft(self, wave: torch.Tensor) -> torch.Tensor:
        """ClearVoice's STFT: center=False, symmetric Hamming; (B, L) -> complex (B, F, S)."""
        window = self.stft_window.to(device=wave.device, dtype=wave.dtype)
        return torch.stft(wave, self.fft_len, self.win_inc, self.win_len, window=window, center=False,
                          return_complex=True)

    @float32
    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """center=False overlap-add iSTFT (B, F, S) -> (B, length); samples after the last full
        frame are zeros, as in the release (torch.istft would warn about them)."""
        window = self.stft_window.to(device=spec.device, dtype=spec.real.dtype)
        covered = self.fft_len + self.win_inc * (spec.shape[-1] - 1)
        wave = torch.istft(spec, self.fft_len, self.win_inc, self.win_len, window=window, center=False,
                           length=min(length, covered))
        return F.pad(wave, (0, max(0, length - covered)))

    # -- training -------------------------------------------------------------------------
    @staticmethod
    @float32
    def psm_target(noisy_spec: torch.Tensor, clean_spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ClearVoice's "l2" target and weight on (B, F, S) complex STFTs.

        target = |S|^2 / (|Y|^2 + eps) * cos(angle Y - angle S) (via unit vectors), clamped to
        [0, 1]; weight = |Y| / (max_F |Y| + 1e-6).
        """
        yr, yi, sr, si = noisy_spec.real, noisy_spec.imag, clean_spec.real, clean_spec.imag
        y_pow, s_pow = yr * yr + yi * yi, sr * sr + si * si  # (B, F, S)
        y_mag, s_mag = y_pow.sqrt(), s_pow.sqrt()
        cos = (yr / (y_mag + EPS)) * (sr / (s_mag + EPS)) + (yi / (y_mag + EPS)) * (si / (s_mag + EPS))
        target = (s_pow / (y_pow + EPS) * cos).clamp(0.0, 1.0)
        weight = y_mag / (y_mag.amax(dim=1, keepdim=True) + 1e-6)
        return target, weight

    def loss(self, noisy: torch.Tensor, clean: torch.Tensor, features: torch.Tensor | None = None):
        """Weighted PSM loss of a normalised (B, L) noisy/clean batch.

        features: optional precomputed network input (B, S, 180) (data-loader workers);
        computed here from ``noisy`` (dither ``fbank_dither``) when None.
        Returns (loss, {"psm": loss}).
        """
        if noisy.dim() != 2 or noisy.shape != clean.shape:
            raise ValueError(f"noisy and clean must be (B, L) of one shape, got {tuple(noisy.shape)} and "
                             f"{tuple(clean.shape)}")
        if features is None:
            features = self.input_features(noisy)
        features = features.to(device=noisy.device)
        with torch.no_grad():
            spec_y = self.stft(noisy * MAX_WAV_VALUE)  # (B, F, S)
            spec_s = self.stft(clean * MAX_WAV_VALUE)
            target, weight = self.psm_target(spec_y, spec_s)
            target, weight = (t.transpose(1, 2).contiguous() for t in (target, weight))  # (B, S, F)
        if features.shape[:2] != target.shape[:2]:
            raise ValueError(f"features {tuple(features.shape)} do not match the {target.shape[1]} STFT frames "
                             f"of a {noisy.shape[-1]}-sample batch")
        batch, frames = target.shape[:2]
        loss = noisy.new_zeros(())
        for mask in self(features):  # (B, S, F)
            loss = loss + 0.5 * ((mask - target).square() * weight).sum() / (batch * frames)
        return loss, {"psm": loss.detach()}

    # -- inference ------------------------------------------------------------------------
    def _mask_wave(self, wave: torch.Tensor, dither: float) -> torch.Tensor:
        """Features, mask and masked iSTFT of (B, L) audio already x 32768 (L on the frame grid)."""
        feats = self.features(wave, dither=dither)  # (B, S, 180)
        mask = self(feats)[-1]  # (B, S, F)
        spec = self.stft(wave) * mask.transpose(1, 2)  # (B, F, S)
        return self.istft(spec, wave.shape[-1])  # (B, L)

    @torch.no_grad()
    def enhance(self, noisy: torch.Tensor, dither: float | None = None) -> torch.Tensor:
        """Enhance a normalised (B, L) batch (our default path) -> (B, L).

        Unlike the release's decode (whose center=False iSTFT leaves up to 383 trailing samples
        at zero), the input is zero-padded to win_len + k * win_inc >= L so every sample lies in
        a frame, then cropped back to L. dither: default ``inference_dither`` (0.0).
        """
        if noisy.dim() != 2:
            raise ValueError(f"noisy must be (B, L), got shape {tuple(noisy.shape)}")
        length = noisy.shape[-1]
        dither = self.inference_dither if dither is None else float(dither)
        was_training = self.training
        self.eval()
        try:
            wave = F.pad(noisy, (0, covering_length(length, self.win_len, self.win_inc) - length))
            out = self._mask_wave(wave * MAX_WAV_VALUE, dither)[:, :length] / MAX_WAV_VALUE
        finally:
            self.train(was_training)
        return out

    @torch.no_grad()
    def clearvoice_decode(self, raw: np.ndarray, dither: float | None = None, *,
                          one_time_decode_length: float | None = None, decode_window: float | None = None,
                          decode_stride: float | None = None) -> np.ndarray:
        """ClearVoice's decode path on raw float64 samples at 48 kHz -> float64 (L,).

        audio_norm -> float32 x 32768 -> one pass when L <= one_time_decode_length seconds, else
        4 s windows every 3 s (int(0.75 * window)), each decoded from scratch and trimmed by
        (window - stride) / 2 samples on each inner side, into a float64 buffer -> / 32768 ->
        [:L] x scalar. dither: default ``inference_dither`` (0.0; the release uses 1.0).
        The window / stride (seconds) can be overridden (tests use short ones).
        """
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 1:
            raise ValueError(f"raw audio must be (L,), got shape {raw.shape}")
        dither = self.inference_dither if dither is None else float(dither)
        rate = self.sampling_rate
        one_time = self.one_time_decode_length if one_time_decode_length is None else one_time_decode_length
        window_s = self.decode_window if decode_window is None else decode_window
        was_training = self.training
        self.eval()
        try:
            normed, scalar = audio_norm(raw)
            audio = normed.astype(np.float32) * np.float32(MAX_WAV_VALUE)  # (L,) float32
            length = audio.shape[0]
            device = self.stft_window.device
            if length <= rate * one_time:
                wave = torch.from_numpy(audio).to(device)[None]  # (1, L)
                out = self._mask_wave(wave, dither)[0].cpu().numpy() / MAX_WAV_VALUE  # float32
            else:
                window = int(rate * window_s)
                stride = int(window * 0.75) if decode_stride is None else int(rate * decode_stride)
                out = self._segmented(audio, window, stride, dither, device) / MAX_WAV_VALUE  # float64
        finally:
            self.train(was_training)
        return out[:length].astype(np.float64) * scalar

    def _segmented(self, audio: np.ndarray, window: int, stride: int, dither: float, device) -> np.ndarray:
        """ClearVoice's segmented decoding of float32 audio x 32768 -> float64 (padded length)."""
        t = audio.shape[0]
        if t < window:
            audio = np.concatenate([audio, np.zeros(window - t)])
        elif t < window + stride:
            audio = np.concatenate([audio, np.zeros(window + stride - t)])
        elif (t - window) % stride != 0:
            # the release pads by t - ((t - window) // stride) * stride (more than needed): kept
            audio = np.concatenate([audio, np.zeros(t - (t - window) // stride * stride)])
        audio_t = torch.from_numpy(np.asarray(audio)).float()  # (T,)
        t = audio_t.shape[0]
        outputs = np.zeros(t)  # float64 buffer, as the release
        give_up = (window - stride) // 2
        idx = 0
        while idx + window <= t:
            seg = audio_t[idx : idx + window].to(device)[None]  # (1, window)
            out = self._mask_wave(seg, dither)[0].cpu().numpy()  # (window,) float32
            if idx == 0:
                outputs[: window - give_up] = out[: window - give_up]
            else:
                outputs[idx + give_up : idx + window - give_up] = out[give_up : window - give_up]
            idx += stride
        return outputs
