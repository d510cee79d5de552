"""FRCRN: frequency-recurrence complex convolutional recurrent network (ClearVoice FRCRN_SE_16K).

Zhao, Ma, Nguyen, Ni, Ma, Hou, Yi, Meng (2022), "FRCRN: Boosting feature representation
using frequency recurrence for monaural speech enhancement", ICASSP 2022.  Repository docs:
README.md (training, enhancement, "Real-time enhancement: causal FRCRN"), tests/data/README.md
(parity references).  State-dict keys and shapes are those of the released checkpoints
(tests/data/clearvoice/FRCRN_SE_16K.state_dict.json).

The network (paper Fig. 1): a fixed conv-STFT, two complex U-Nets in series (the second one
is fed the raw output of the first), a complex mask ``tanh(U1) + tanh(U2)`` applied to the
noisy spectrum, and a fixed conv-iSTFT.  Each U-Net is a complex conv encoder/decoder
("CCED", paper §2.1) of depth 7 + 7 whose stages are preceded by a complex "frequency
recurrence" FSMN (paper §2.2: a causal memory of ``lorder`` bins running from low to high
frequency), with complex squeeze-and-excitation (SE) on the skip paths and a complex time-FSMN
at the bottleneck.  A complex layer f = (f_re, f_im) applied to x = x_r + i x_i gives
f_re(x_r) - f_im(x_i) + i (f_re(x_i) + f_im(x_r)) (``_complex_apply``).

This file is the plain reference forward.  The speed kernels (fused complex convolutions,
folded batch norms, FSMN matrix products with a hand-written backward) live in
se/models/kernels/frcrn.py and are applied by ``se.models.build_network`` unless
``SE_KERNELS=reference``.  Length (~790 lines, over the ~600 aim): the network is ~480 lines,
the rest is the se.models registry contract (config, release-checkpoint conversion, loss,
aligned and ClearVoice-compatible decoding) that callers reach through the FRCRN class.

Shape legend: B batch, L samples, T STFT frames, F frequency bins (fft_len // 2 + 1 = 321),
C complex channels, S the FSMN sequence axis, N the FSMN batch axis, K the FSMN memory
length (lorder).  A complex map is a real tensor (B, 2C, F, T): the real plane in the first C
channels, the imaginary plane in the last C.

Differences from the reference code that do not change any output:
* only the numbered sub-module names are kept (``encoder3``, not ``encoders.3``):
  :meth:`FRCRN.convert_clearvoice_state_dict` maps release checkpoints;
* modules whose outputs are never used (``fsmn_enc0``, ``fsmn_dec6``, ``se_layer_enc6``,
  ``se_layer_dec5``) keep their parameters but are not evaluated.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from se.audio import audio_norm
from se.models import ConfigKey
from se.models.network import Network
from se.precision import float32

# (kernel, stride, padding) as (frequency, time) of the 7 encoder and 7 decoder stages
_ENCODER_KERNELS = [(5, 2)] * 6 + [(2, 2)]
_DECODER_KERNELS = [(2, 2), (5, 2), (5, 2), (5, 2), (6, 2), (5, 2), (5, 2)]
_STRIDE = (2, 1)
_PADDING = (0, 1)
_DEPTH = 7  # encoder (= decoder) stages; the reference's model_depth = 14
_LEAKY_SLOPE = 0.01
_BN_EPS = 1e-5



# ---------------------------------------------------------------------------------------------
# fixed STFT / iSTFT
# ---------------------------------------------------------------------------------------------
def _sqrt_window(win_type: str | None, win_len: int) -> np.ndarray:
    """sqrt of a periodic scipy window (float64); 'hanning' means scipy's 'hann'."""
    if win_type is None or str(win_type).lower() == "none":
        return np.ones(win_len)
    name = "hann" if win_type == "hanning" else win_type
    if name == "hann":  # scipy.signal.get_window('hann', N, fftbins=True), same float64 ops
        phase = np.linspace(-np.pi, np.pi, win_len + 1)[:-1]
        return np.sqrt(0.5 + 0.5 * np.cos(phase))
    from scipy.signal import get_window  # slow import: only for other windows

    try:
        window = get_window(name, win_len, fftbins=True)
    except ValueError as exc:
        raise ValueError(f"win_type {win_type!r} is not a scipy window name ({exc})") from None
    return np.sqrt(window)


def stft_kernels(win_len: int, fft_len: int, win_type: str | None):
    """The fixed conv kernels of the STFT and iSTFT as float32 tensors.

    Returns (forward (2F, 1, win_len), inverse (2F, 1, win_len), window (1, win_len, 1)).
    Forward rows 0..F-1 are the windowed DFT real parts, rows F..2F-1 the imaginary parts
    (numpy rfft sign); the inverse is the pseudo-inverse of the unwindowed basis, windowed.
    """
    window = _sqrt_window(win_type, win_len)  # (win_len,)
    basis = np.fft.rfft(np.eye(fft_len))[:win_len]  # (win_len, F) complex
    basis = np.concatenate([basis.real, basis.imag], 1).T  # (2F, win_len)
    # pinv(basis) = (B^T B)^-1 B^T: B has full column rank and B^T B condition number ~2, so
    # this equals numpy.linalg.pinv to ~1e-16 (float32 kernels agree to 3e-17) without an SVD
    pinv = np.linalg.solve(basis.T @ basis, basis.T)  # (win_len, 2F)
    inverse = pinv.T * window  # (2F, win_len)
    forward = basis * window  # (2F, win_len)
    return (
        torch.from_numpy(forward[:, None, :]).float(),
        torch.from_numpy(inverse[:, None, :]).float(),
        torch.from_numpy(window[None, :, None]).float(),
    )


class ConvSTFT(nn.Module):
    """Analysis: conv1d with the fixed kernel, no padding / centring. (B, L) -> (B, 2F, T)."""

    def __init__(self, kernel: torch.Tensor, win_inc: int):
        super().__init__()
        self.weight = nn.Parameter(kernel, requires_grad=False)  # (2F, 1, win_len)
        self.win_inc = win_inc

    @float32
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x.unsqueeze(1), self.weight, stride=self.win_inc)  # (B, 2F, T)


class ConviSTFT(nn.Module):
    """Synthesis: transposed conv + division by the overlap-added squared window.

    (B, 2F, T) -> (B, (T - 1) * win_inc + win_len).  Sample 0 is always 0 (window zero).
    ``enframe`` (identity kernel) is kept only because release checkpoints contain it.
    """

    def __init__(self, kernel: torch.Tensor, window: torch.Tensor, win_inc: int):
        super().__init__()
        win_len = kernel.shape[-1]
        self.weight = nn.Parameter(kernel, requires_grad=False)  # (2F, 1, win_len)
        self.register_buffer("window", window)  # (1, win_len, 1)
        self.register_buffer("enframe", torch.eye(win_len)[:, None, :])  # (win_len, 1, win_len)
        self.win_inc = win_inc

    @float32
    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose1d(spec, self.weight, stride=self.win_inc)  # (B, 1, L')
        # overlap-added squared window: a transposed conv of ones (exports to ONNX, F.fold does not)
        w2 = (self.window.reshape(1, 1, -1) ** 2)  # (1, 1, win_len)
        ones = torch.ones_like(spec[:1, :1])  # (1, 1, T)
        norm = F.conv_transpose1d(ones, w2, stride=self.win_inc)  # (1, 1, L')
        return (y / (norm + 1e-8)).squeeze(1)  # (B, L')


# ---------------------------------------------------------------------------------------------
# complex layers on (B, 2C, F, T) maps
# ---------------------------------------------------------------------------------------------
def _complex_apply(f_re, f_im, x_r: torch.Tensor, x_i: torch.Tensor):
    """A complex layer (f_re, f_im) on x_r + i x_i -> (real, imag) parts."""
    return f_re(x_r) - f_im(x_i), f_re(x_i) + f_im(x_r)


def _planes(x: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Complex map -> (real, imag) halves along ``dim``."""
    return x.chunk(2, dim)


class ComplexConv2d(nn.Module):
    """Complex convolution from two real ones: (B, 2Cin, F, T) -> (B, 2Cout, F', T')."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv_re = nn.Conv2d(cin, cout, kernel, stride, padding)
        self.conv_im = nn.Conv2d(cin, cout, kernel, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real, imag = _complex_apply(self.conv_re, self.conv_im, *_planes(x))  # (B, Cout, F', T')
        return torch.cat([real, imag], 1)  # (B, 2Cout, F', T')


class ComplexConvTranspose2d(nn.Module):
    """Complex transposed convolution: (B, 2Cin, F, T) -> (B, 2Cout, F', T')."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.tconv_re = nn.ConvTranspose2d(cin, cout, kernel, stride, padding)
        self.tconv_im = nn.ConvTranspose2d(cin, cout, kernel, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real, imag = _complex_apply(self.tconv_re, self.tconv_im, *_planes(x))  # (B, Cout, F', T')
        return torch.cat([real, imag], 1)  # (B, 2Cout, F', T')


class ComplexBatchNorm2d(nn.Module):
    """Two independent real BNs (``bn_re``, ``bn_im``) on the planes of (B, 2C, F, T).

    ``sync_batchnorm(group)`` makes training-mode statistics those of the union of every
    rank's batch (SyncBatchNorm's semantics; torch.nn.SyncBatchNorm.convert_sync_batchnorm
    does not reach the kernels' batch norm, which calls F.batch_norm itself).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bn_re = nn.BatchNorm2d(channels, eps=_BN_EPS)
        self.bn_im = nn.BatchNorm2d(channels, eps=_BN_EPS)
        self.sync_group = None  # set by sync_batchnorm(); None: per-process statistics
        self.sync = False

    def sync_batchnorm(self, group=None) -> None:
        """Synchronise batch statistics over ``group`` (default: the whole world)."""
        self.sync, self.sync_group = True, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2C, F, T)
        if self.training and self.synchronised():
            return self.sync_forward(x)
        x_r, x_i = _planes(x)  # (B, C, F, T) each
        return torch.cat([self.bn_re(x_r), self.bn_im(x_i)], 1)  # (B, 2C, F, T)

    def synchronised(self) -> bool:
        import torch.distributed as dist

        return (self.sync and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.sync_group) > 1)

    def sync_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training BN with the statistics of every rank's batch: one all-reduce of the
        per-channel sums, sums of squares and counts (differentiable: its backward all-reduces
        the gradients of the statistics, as SyncBatchNorm does)."""
        from torch.distributed.nn.functional import all_reduce

        c2 = x.shape[1]
        xf = x.float()
        dims = [0, 2, 3]
        count = torch.full((1,), float(x.numel() // c2), device=x.device)
        stats = all_reduce(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]), group=self.sync_group)
        n = stats[-1]
        mean = stats[:c2] / n  # (2C,)
        var = (stats[c2:2 * c2] / n - mean * mean).clamp_min(0.0)  # biased, for normalising
        weight = torch.cat([self.bn_re.weight, self.bn_im.weight])  # (2C,)
        bias = torch.cat([self.bn_re.bias, self.bn_im.bias])  # (2C,)
        y = (xf - mean[:, None, None]) * (weight * torch.rsqrt(var + _BN_EPS))[:, None, None] + bias[:, None, None]
        with torch.no_grad():
            m = self.bn_re.momentum
            unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
            channels = self.bn_re.num_features
            for bn, part in ((self.bn_re, slice(0, channels)), (self.bn_im, slice(channels, None))):
                bn.running_mean.mul_(1 - m).add_(mean.detach()[part], alpha=m)
                bn.running_var.mul_(1 - m).add_(unbiased[part], alpha=m)
                bn.num_batches_tracked.add_(1)
        return y.to(x.dtype)


class _ConvBlock(nn.Module):
    """complex (transposed) conv -> complex BN -> LeakyReLU(0.01): (B, 2Cin, F, T) -> (B, 2Cout, F', T').

    Time kernel 2.  Non-causal (released): the encoder pads one frame on each side (T -> T + 1
    frames, frame j sees input frames j - 1, j) and the decoder crops one on each side
    (T -> T - 1, frame o sees o, o + 1: one frame of look-ahead per decoder).  Causal: both keep
    T frames and frame j sees frames j - 1, j only: the encoder drops its last frame (the one
    only the right padding completes), the decoder runs unpadded (T + 1 frames) and drops its
    last frame.  The weights are the same in both cases.
    """

    causal = False

    def _layer(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2Cin, F, T)
        y = self._layer()(x)  # (B, 2Cout, F', T') with T' = T + 1 (encoder) or T - 1 (decoder)
        if self.causal:
            y = y[..., :-1]  # (B, 2Cout, F', T): frame alignment kept, no look-ahead
        return F.leaky_relu(self.bn(y), _LEAKY_SLOPE)  # (B, 2Cout, F', T')


class Encoder(_ConvBlock):
    def __init__(self, cin: int, cout: int, kernel, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.conv = ComplexConv2d(cin, cout, kernel, _STRIDE, _PADDING)
        self.bn = ComplexBatchNorm2d(cout)

    def _layer(self):
        return self.conv


class Decoder(_ConvBlock):
    def __init__(self, cin: int, cout: int, kernel, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.transconv = ComplexConvTranspose2d(cin, cout, kernel, _STRIDE, (0, 0) if causal else _PADDING)
        self.bn = ComplexBatchNorm2d(cout)

    def _layer(self):
        return self.transconv


class UniDeepFsmn(nn.Module):
    """One real FSMN (paper §2.2): X + P + memory(P), P = W_p ReLU(W_l X + b), where memory is
    a per-channel causal FIR of K taps along the sequence (``conv1``, left zero padding)."""

    def __init__(self, channels: int, hidden: int, lorder: int):
        super().__init__()
        self.linear = nn.Linear(channels, hidden)
        self.project = nn.Linear(hidden, channels, bias=False)
        self.conv1 = nn.Conv2d(channels, channels, (lorder, 1), groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, S, C)
        p = self.project(F.relu(self.linear(x)))  # (N, S, C)
        lorder = self.conv1.kernel_size[0]
        p4 = p.transpose(1, 2).unsqueeze(-1)  # (N, C, S, 1)
        memory = self.conv1(F.pad(p4, [0, 0, lorder - 1, 0]))  # (N, C, S, 1): steps s - K + 1 .. s
        return x + (p4 + memory).squeeze(-1).transpose(1, 2)  # (N, S, C)


@float32  # under autocast the FSMN (sums over 20 steps of memory) stays in float32
def _complex_fsmn(fsmn_re: UniDeepFsmn, fsmn_im: UniDeepFsmn, x: torch.Tensor) -> torch.Tensor:
    """Complex FSMN on sequences (N, S, 2C) -> (N, S, 2C), memory along S."""
    real, imag = _complex_apply(fsmn_re, fsmn_im, *_planes(x, -1))  # (N, S, C) each
    return torch.cat([real, imag], -1)  # (N, S, 2C)


class ComplexFsmnL1(nn.Module):
    """Frequency FSMN (paper's frequency recurrence): memory along F, one sequence per frame."""

    def __init__(self, channels: int, hidden: int, lorder: int):
        super().__init__()
        self.fsmn_re_L1 = UniDeepFsmn(channels, hidden, lorder)
        self.fsmn_im_L1 = UniDeepFsmn(channels, hidden, lorder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2C, F, T)
        batch, channels2, freq, frames = x.shape
        seq = x.permute(0, 3, 2, 1).reshape(batch * frames, freq, channels2)  # (B T, F, 2C)
        y = _complex_fsmn(self.fsmn_re_L1, self.fsmn_im_L1, seq)  # (B T, F, 2C)
        return y.view(batch, frames, freq, channels2).permute(0, 3, 2, 1)  # (B, 2C, F, T)


class ComplexFsmn(nn.Module):
    """Bottleneck time FSMN: two complex FSMN layers in series with memory along T (F = 1)."""

    def __init__(self, channels: int, hidden: int, lorder: int):
        super().__init__()
        self.fsmn_re_L1 = UniDeepFsmn(channels, hidden, lorder)
        self.fsmn_im_L1 = UniDeepFsmn(channels, hidden, lorder)
        self.fsmn_re_L2 = UniDeepFsmn(channels, hidden, lorder)
        self.fsmn_im_L2 = UniDeepFsmn(channels, hidden, lorder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2C, 1, T)
        if x.shape[2] != 1:
            raise ValueError(f"bottleneck FSMN needs F = 1, got shape {tuple(x.shape)}")
        seq = x.squeeze(2).transpose(1, 2)  # (B, T, 2C): sequence axis = time
        seq = _complex_fsmn(self.fsmn_re_L1, self.fsmn_im_L1, seq)  # (B, T, 2C)
        seq = _complex_fsmn(self.fsmn_re_L2, self.fsmn_im_L2, seq)  # (B, T, 2C)
        return seq.transpose(1, 2).unsqueeze(2)  # (B, 2C, 1, T)


class ComplexSELayer(nn.Module):
    """Complex squeeze-excitation: gates s_r, s_i scale the real / imag planes.

    Released: one gate per utterance from the average over all frequencies and frames.
    ``time_decay`` set (causal): the average over frames becomes a causal running mean (see
    ``causal_time_mean``), so frame t is gated from frames 0..t only.
    """

    def __init__(self, channels: int, reduction: int, time_decay: float | None = None):
        super().__init__()
        self.time_decay = time_decay
        hidden = channels // reduction
        self.fc_r = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, channels), nn.Sigmoid())
        self.fc_i = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, channels), nn.Sigmoid())

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """Complex gate from pooled features: (..., 2C) [a_r, a_i] -> (..., 2C) [s_r, s_i]."""
        gate_r, gate_i = _complex_apply(self.fc_r, self.fc_i, *_planes(pooled, -1))  # (..., C) each
        return torch.cat([gate_r, gate_i], -1)  # (..., 2C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2C, F, T)
        if self.time_decay is None:
            gate = self.gate(x.mean(dim=(2, 3)))  # (B, 2C): one gate per utterance
            return x * gate[:, :, None, None]  # (B, 2C, F, T)
        pooled = causal_time_mean(x.mean(dim=2).transpose(1, 2), self.time_decay)  # (B, T, 2C)
        return x * self.gate(pooled).transpose(1, 2)[:, :, None, :]  # (B, 2C, F, T): a gate per frame


@float32  # under autocast the running sums (up to thousands of frames) stay in float32
def causal_time_mean(x: torch.Tensor, decay: float) -> torch.Tensor:
    """Causal running mean along dim 1 of (B, T, D): out[t] = sum_s a^(t-s) x[s] / sum_s a^(t-s)
    over s <= t, a = ``decay``.  a = 1 is the cumulative mean; a < 1 an exponential mean whose
    weights start normalised at t = 0.  A step of the recursion num = a num + x, den = a den + 1
    (se.stream) gives the same values.
    """
    frames = x.shape[1]
    count = torch.arange(1, frames + 1, dtype=x.dtype, device=x.device)  # (T,)
    if decay == 1.0:
        return x.cumsum(1) / count[:, None]  # (B, T, D)
    block = 64  # blocks of Q frames: num = lower-triangular (Q, Q) decay matrix @ x + carry
    lags = torch.arange(block, device=x.device)
    lags = (lags[:, None] - lags[None, :]).to(x.dtype)  # (Q, Q)
    weights = torch.where(lags >= 0, decay ** lags.clamp(min=0), torch.zeros_like(lags))
    carry = decay ** torch.arange(1, block + 1, dtype=x.dtype, device=x.device)  # (Q,)
    state = x.new_zeros(x.shape[0], 1, x.shape[2])  # (B, 1, D): num of the previous frame
    parts = []
    for start in range(0, frames, block):
        seg = x[:, start : start + block]  # (B, q, D)
        q = seg.shape[1]
        num = torch.matmul(weights[:q, :q], seg) + carry[:q, None] * state  # (B, q, D)
        state = num[:, -1:]
        parts.append(num)
    den = (1 - decay**count) / (1 - decay)  # (T,)
    return torch.cat(parts, 1) / den[:, None]  # (B, T, D)




def _complex_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate two complex maps along the channel axis: [a_r, b_r, a_i, b_i]."""
    (a_r, a_i), (b_r, b_i) = _planes(a), _planes(b)
    return torch.cat([a_r, b_r, a_i, b_i], 1)  # (B, 2(Ca + Cb), F, T)


class ComplexUNet(nn.Module):
    """One complex U-Net, modules registered in the release state-dict order.

    (B, 2, F, T) 1-channel complex map -> same shape.
    """

    def __init__(self, channels: int, fsmn_hidden: int, se_reduction: int, lorder: int,
                 causal: bool = False, se_time_decay: float = 1.0):
        super().__init__()
        decay = se_time_decay if causal else None
        self.fsmn = ComplexFsmn(channels, fsmn_hidden, lorder)
        for i, kernel in enumerate(_ENCODER_KERNELS):
            self.add_module(f"fsmn_enc{i}", ComplexFsmnL1(channels, fsmn_hidden, lorder))
            self.add_module(f"encoder{i}", Encoder(1 if i == 0 else channels, channels, kernel, causal))
            self.add_module(f"se_layer_enc{i}", ComplexSELayer(channels, se_reduction, decay))
        for i, kernel in enumerate(_DECODER_KERNELS):
            self.add_module(f"fsmn_dec{i}", ComplexFsmnL1(channels, fsmn_hidden, lorder))
            cin = channels if i == 0 else 2 * channels
            self.add_module(f"decoder{i}", Decoder(cin, 1 if i == _DEPTH - 1 else channels, kernel, causal))
            if i < _DEPTH - 1:
                self.add_module(f"se_layer_dec{i}", ComplexSELayer(channels, se_reduction, decay))
        self.linear = ComplexConv2d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2, F, T)
        if x.dim() != 4 or x.shape[1] != 2:
            raise ValueError(f"ComplexUNet expects a (batch, 2, freq, frames) map, got shape {tuple(x.shape)}")
        # frame counts below are the released (non-causal) ones; causal layers all keep T
        skips = []
        h = x
        for i in range(_DEPTH):
            if i > 0:  # fsmn_enc0 is never used
                h = getattr(self, f"fsmn_enc{i}")(h)  # (B, 2C, F_i, T + i)
            h = getattr(self, f"encoder{i}")(h)  # (B, 2C, F_{i+1}, T + i + 1)
            if i < _DEPTH - 1:  # se_layer_enc6's output is never used
                skips.append(getattr(self, f"se_layer_enc{i}")(h))
        p = self.fsmn(h)  # (B, 2C, 1, T + 7)
        for i in range(_DEPTH):
            p = getattr(self, f"decoder{i}")(p)  # (B, 2C, F_{6-i}, T + 6 - i); last: (B, 2, F, T)
            if i == _DEPTH - 1:
                break
            p = getattr(self, f"fsmn_dec{i}")(p)
            if i < _DEPTH - 2:  # se_layer_dec5 is never used
                p = getattr(self, f"se_layer_dec{i}")(p)
            p = _complex_cat(p, skips[_DEPTH - 2 - i])  # (B, 4C, F_{6-i}, T + 6 - i)
        return self.linear(p)  # (B, 2, F, T)


def _frequency_sizes(bins: int) -> list[int]:
    """F after each encoder, or a ValueError if the decoders cannot mirror them."""
    sizes = [bins]
    for k, _ in _ENCODER_KERNELS:
        sizes.append((sizes[-1] - k) // _STRIDE[0] + 1)
    out = sizes[-1]
    for i, (k, _) in enumerate(_DECODER_KERNELS):
        out = (out - 1) * _STRIDE[0] + k
        if out != sizes[_DEPTH - 1 - i]:
            raise ValueError(
                f"fft_len {2 * (bins - 1)} gives {bins} bins, encoder sizes {sizes}: the "
                f"decoder cannot mirror them (FRCRN's layer tables need 321 bins, fft_len 640)"
            )
    return sizes


# ---------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------
class FRCRN(Network):
    """FRCRN speech enhancement (ClearVoice FRCRN_SE_16K; class DCCRN in the reference).

    Two complex convolutional encoder-decoders (paper §2.1, "CCED") refine a complex ratio
    mask; every stage starts with a frequency-recurrence FSMN (paper §2.2) and the
    bottleneck holds a time FSMN.  Defaults are the released model's sizes.

    Args:
        win_len: STFT window length in samples (released: 640 = 40 ms at 16 kHz).
        win_inc: STFT hop in samples (released: 320 = 20 ms).
        fft_len: DFT size; the U-Net layer tables need fft_len // 2 + 1 = 321 bins.
        win_type: scipy window whose square root is the analysis/synthesis window;
            'hanning' (ClearVoice's name) = periodic Hann.
        channels: complex channels of every encoder/decoder stage (released: 128, the
            reference's model_complexity 45).
        fsmn_hidden: hidden size of every FSMN's ReLU layer (released: 128); None = channels.
        se_reduction: reduction of the complex squeeze-excitation MLPs on the skip paths
            (hidden = channels // se_reduction; released: 8).
        lorder: FSMN memory order in steps: bins for the frequency FSMNs, frames for the
            bottleneck time FSMN (released: 20).
        causal: False = the released network.  True = every time-axis operation is causal
            (output frame t depends on input frames <= t, i.e. on samples before
            t * win_inc + win_len): conv padding on the past side only with the decoders
            trimmed to keep frame alignment (``_ConvBlock``), the SE layers' utterance
            average replaced by a causal running mean (``ComplexSELayer``).  Already causal
            in the released network: the STFT (uncentred frames, complete at their last
            sample), the time FSMN (left context only), the frequency FSMNs (no time axis).
            Same parameters and shapes: a release checkpoint initialises it.  Batch norms
            use batch statistics in training, so causality holds in eval mode.
            :class:`se.stream.StreamingEnhancer` runs it hop by hop.
        se_time_constant: causal SE running mean: 0 = cumulative mean over all past frames,
            > 0 = exponential mean with this time constant in seconds.

    forward(x (B, L)) -> [est_spec (B, 2F, T), est_wav (B, L'), est_mask (B, 2F, T)] exactly
    as the reference; :meth:`loss`, :meth:`enhance` (aligned) and :meth:`clearvoice_decode`
    (reference decode path) implement the registry contract of se.models.
    """

    sampling_rate = 16000
    # reference decode settings (inference yaml), used by clearvoice_decode
    decode_window = 1  # seconds
    one_time_decode_length = 120  # seconds

    def __init__(
        self,
        win_len: int = 640,
        win_inc: int = 320,
        fft_len: int = 640,
        win_type: str | None = "hanning",
        channels: int = 128,
        fsmn_hidden: int | None = None,
        se_reduction: int = 8,
        lorder: int = 20,
        causal: bool = False,
        se_time_constant: float = 0.0,
    ):
        super().__init__()
        if se_time_constant < 0 or (se_time_constant and not causal):
            raise ValueError(f"se_time_constant must be >= 0 and needs causal: true, got {se_time_constant} "
                             f"(causal: {causal})")
        if not 0 < win_inc <= win_len <= fft_len:
            raise ValueError(f"need 0 < win_inc <= win_len <= fft_len, got {win_inc}, {win_len}, {fft_len}")
        if channels < se_reduction:
            raise ValueError(f"channels ({channels}) must be >= se_reduction ({se_reduction})")
        _frequency_sizes(fft_len // 2 + 1)
        self.win_len, self.win_inc, self.fft_len = win_len, win_inc, fft_len
        self.causal = bool(causal)
        # per-frame decay of the causal SE mean (1 = cumulative)
        self.se_time_decay = (math.exp(-win_inc / (self.sampling_rate * se_time_constant))
                              if se_time_constant else 1.0)
        forward, inverse, window = stft_kernels(win_len, fft_len, win_type)
        self.stft = ConvSTFT(forward, win_inc)
        self.istft = ConviSTFT(inverse, window, win_inc)
        hidden = channels if fsmn_hidden is None else fsmn_hidden
        self.unet = ComplexUNet(channels, hidden, se_reduction, lorder, self.causal, self.se_time_decay)
        self.unet2 = ComplexUNet(channels, hidden, se_reduction, lorder, self.causal, self.se_time_decay)

    # -- construction from configs --------------------------------------------------------
    CONFIG_KEYS: dict[str, ConfigKey] = {}  # none of its own: the global STFT keys + network_kwargs

    # -- checkpoints ------------------------------------------------------------------------
    _ALIASES = {"encoders": "encoder", "decoders": "decoder", "se_layers_enc": "se_layer_enc",
                "se_layers_dec": "se_layer_dec", "fsmn_enc": "fsmn_enc", "fsmn_dec": "fsmn_dec"}

    @classmethod
    def canonical_key(cls, key: str) -> str:
        """'unet.encoders.3.conv...' -> 'unet.encoder3.conv...'; other keys unchanged."""
        parts = key.split(".")
        if len(parts) > 2 and parts[1] in cls._ALIASES and parts[2].isdigit():
            return ".".join([parts[0], cls._ALIASES[parts[1]] + parts[2]] + parts[3:])
        return key

    @staticmethod
    def convert_clearvoice_state_dict(sd: dict) -> dict:
        """Release state dict (``module.`` prefix already stripped) -> this module's keys.

        Keeps one name per tensor: alias keys (``encoders.N`` ...) are mapped to the numbered
        names; when both are present they must hold equal values.  Raises ValueError listing
        missing / unexpected keys.
        """
        out: dict = {}
        aliases: dict = {}
        for key, value in sd.items():
            canon = FRCRN.canonical_key(key)
            (out if canon == key else aliases)[key] = value
        for key, value in aliases.items():
            canon = FRCRN.canonical_key(key)
            if canon in out:
                if out[canon].shape != value.shape or not torch.equal(out[canon], value):
                    raise ValueError(f"checkpoint keys {key} and {canon} should be the same tensor "
                                     "but hold different values")
            else:
                out[canon] = value
        expected = FRCRN.expected_keys()
        missing = sorted(expected - set(out))
        unexpected = sorted(set(out) - expected)
        if missing or unexpected:
            raise ValueError(
                f"not an FRCRN_SE_16K state dict: {len(missing)} missing keys "
                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}, {len(unexpected)} "
                f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
            )
        return out

    @staticmethod
    def expected_keys() -> set[str]:
        """Key names of this module's state dict (independent of sizes)."""
        return set(_key_template())

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, L) waveform -> [est_spec (B, 2F, T), est_wav (B, L'), est_mask (B, 2F, T)].

        L' = (T - 1) * win_inc + win_len (the last (L - win_len) % win_inc samples are not
        covered).  Spectra/masks are [real rows ; imag rows].
        """
        if x.dim() != 2:
            raise ValueError(f"FRCRN expects a (batch, samples) waveform, got shape {tuple(x.shape)}")
        if x.shape[-1] < self.win_len:
            raise ValueError(f"FRCRN needs at least {self.win_len} samples, got shape {tuple(x.shape)}")
        spec = self.stft(x)  # (B, 2F, T)
        batch, bins2, frames = spec.shape
        noisy = spec.view(batch, 2, bins2 // 2, frames)  # (B, 2, F, T): 1-channel complex map
        u1 = self.unet(noisy)  # (B, 2, F, T)
        u2 = self.unet2(u1)  # (B, 2, F, T): fed the raw first-U-Net output
        est_spec, mask = _apply_mask(noisy, u1, u2)  # (B, 2F, T) each
        return [est_spec, self.istft(est_spec), mask]  # est_wav: (B, L')

    # -- training loss ------------------------------------------------------------
    def loss(self, noisy: torch.Tensor, clean: torch.Tensor):
        """CMask + negative SI-SNR for a (B, L) batch.

        Returns (loss, {"cmask": complex-mask MSE term, "si_snr": mean SI-SNR in dB});
        loss = cmask - si_snr.
        """
        if noisy.dim() != 2 or noisy.shape != clean.shape:
            raise ValueError(f"loss expects two (batch, samples) tensors of one shape, got "
                             f"{tuple(noisy.shape)} and {tuple(clean.shape)}")
        _, est_wav, est_mask = self(noisy)
        si_snr = _si_snr(est_wav, clean[:, : est_wav.shape[-1]]).mean()
        cmask = self._cmask_loss(noisy, clean, est_mask)
        return cmask - si_snr, {"cmask": cmask.detach(), "si_snr": si_snr.detach()}

    @float32
    def _cmask_loss(self, noisy, clean, est_mask):
        window = torch.hann_window(self.win_len, periodic=False, dtype=noisy.dtype, device=noisy.device)
        kw = dict(n_fft=self.fft_len, hop_length=self.win_inc, win_length=self.win_len,
                  window=window, center=False, return_complex=True)
        s = torch.stft(clean, **kw)  # (B, F, T)
        y = torch.stft(noisy, **kw)  # (B, F, T)
        power = y.real**2 + y.imag**2 + 1e-8
        target = torch.cat([(s.real * y.real + s.imag * y.imag) / power,
                            (s.imag * y.real - s.real * y.imag) / power], 1)  # (B, 2F, T)
        target = torch.where(target > 2, torch.ones_like(target), target)
        target = torch.where(target < -2, -torch.ones_like(target), target)
        bins = target.shape[1] // 2
        return self.fft_len * (F.mse_loss(est_mask[:, :bins], target[:, :bins])
                               + F.mse_loss(est_mask[:, bins:], target[:, bins:]))

    # -- enhancement --------------------------------------------------------------------------
    def enhance(self, noisy: torch.Tensor) -> torch.Tensor:
        """Aligned enhancement of a normalised (B, L) batch -> (B, L) (eval mode assumed).

        Fixes the reference's edge defects: win_inc zeros on the left and enough on
        the right that every input sample lies under two full frames, then crops to L.
        """
        if noisy.dim() != 2:
            raise ValueError(f"enhance expects (batch, samples), got shape {tuple(noisy.shape)}")
        length, hop = noisy.shape[-1], self.win_inc
        edge = self.win_len - hop  # samples at each end that fewer frames overlap
        frames = max(1, math.ceil((length + 2 * edge - self.win_len) / hop) + 1)
        total = (frames - 1) * hop + self.win_len  # >= edge + L + edge, on the frame grid
        padded = F.pad(noisy, (edge, total - length - edge))  # (B, total)
        with torch.inference_mode():
            wav = self(padded)[1]  # (B, total)
        return wav[:, edge : edge + length].clone()  # (B, L)

    def clearvoice_decode(
        self,
        raw: np.ndarray,
        one_time_decode_length: float | None = None,
        decode_window: float | None = None,
    ) -> np.ndarray:
        """The reference decode path on raw float64 samples (L,) -> float64 (L,).

        audio_norm -> float32 -> :meth:`decode_normalized` -> ``[:L] * scalar``.  Reproduces
        the reference's edge defects (output sample 0 is 0; padding-dependent SE statistics).
        """
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 1:
            raise ValueError(f"clearvoice_decode expects mono samples (L,), got shape {raw.shape}")
        x, scalar = audio_norm(raw)
        out = self.decode_normalized(x.astype(np.float32), one_time_decode_length, decode_window)
        return out[: raw.shape[0]] * scalar

    def decode_normalized(
        self,
        x: np.ndarray,
        one_time_decode_length: float | None = None,
        decode_window: float | None = None,
        windows_per_batch: int = 8,
    ) -> np.ndarray:
        """The reference's decode_one_audio for FRCRN on normalised float32 samples (L,).

        Zero-pads (to 1 s below 1 s, to 1.75 s below 1.75 s, else by the reference's formula),
        then one pass if L <= one_time_decode_length seconds (float32 output of length
        (T - 1) * win_inc + win_len), else 1 s windows every 0.75 s whose outputs, minus
        0.125 s at each inner edge, fill a float64 buffer of the padded length.  Windows are
        independent, so they are run ``windows_per_batch`` at a time.
        """
        one_time = self.one_time_decode_length if one_time_decode_length is None else one_time_decode_length
        window = int(self.sampling_rate * (self.decode_window if decode_window is None else decode_window))
        stride = int(window * 0.75)
        length = x.shape[0]
        if length < window:
            pad = window - length
        elif length < window + stride:
            pad = window + stride - length
        elif (length - window) % stride != 0:
            pad = length - (length - window) // stride * stride  # the reference's formula
        else:
            pad = 0
        x = np.concatenate([np.asarray(x, np.float32), np.zeros(pad, np.float32)])  # (L_pad,)
        device, dtype = self.stft.weight.device, self.stft.weight.dtype
        with torch.inference_mode():
            if length <= self.sampling_rate * one_time:
                wav = torch.from_numpy(x).to(device, dtype)[None]  # (1, L_pad)
                return self(wav)[1][0].cpu().numpy()  # (L_pad',)
            give_up = (window - stride) // 2
            starts = list(range(0, x.shape[0] - window + 1, stride))
            out = np.zeros(x.shape[0])  # float64, as the reference
            for first in range(0, len(starts), windows_per_batch):
                idx = starts[first : first + windows_per_batch]
                batch = torch.from_numpy(np.stack([x[i : i + window] for i in idx])).to(device, dtype)
                wav = self(batch)[1].cpu().numpy()  # (n, window)
                for i, w in zip(idx, wav):
                    if i == 0:
                        out[: window - give_up] = w[: window - give_up]
                    else:
                        out[i + give_up : i + window - give_up] = w[give_up : window - give_up]
            return out


@float32
def _apply_mask(noisy: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor):
    """Complex mask tanh(U2) + tanh(U1) (each part in (-2, 2)) times the noisy spectrum.

    noisy, u1, u2: (B, 2, F, T) real/imag planes (u1, u2 the U-Net outputs).
    Returns (est_spec, mask), both (B, 2F, T) as [real rows ; imag rows].
    """
    batch, _, bins, frames = noisy.shape
    mask = torch.tanh(u2) + torch.tanh(u1)  # (B, 2, F, T)
    s_r, s_i, m_r, m_i = noisy[:, 0], noisy[:, 1], mask[:, 0], mask[:, 1]  # (B, F, T)
    est_spec = torch.cat([s_r * m_r - s_i * m_i, s_r * m_i + s_i * m_r], 1)  # (B, 2F, T)
    return est_spec, mask.reshape(batch, 2 * bins, frames)


@float32
def _si_snr(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """SI-SNR in dB per batch item. est, ref: (B, L) -> (B,)."""
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    target = (est * ref).sum(-1, keepdim=True) * ref / ((ref**2).sum(-1, keepdim=True) + eps)
    noise = est - target
    return 10 * torch.log10((target**2).sum(-1) / ((noise**2).sum(-1) + eps) + eps)


def _key_template() -> list[str]:
    """State-dict keys of FRCRN (sizes do not change the names), built once."""
    global _KEYS
    if _KEYS is None:
        _KEYS = list(FRCRN(channels=8, fsmn_hidden=8, lorder=2).state_dict())
    return _KEYS


_KEYS: list[str] | None = None
