"""FRCRN: frequency-recurrence complex convolutional recurrent network (ClearVoice FRCRN_SE_16K).

Zhao, Ma, Nguyen, Ni, Ma, Hou, Yi, Meng (2022), "FRCRN: Boosting feature representation
using frequency recurrence for monaural speech enhancement", ICASSP 2022.
State-dict keys and shapes are those of the released checkpoints
(tests/data/clearvoice/FRCRN_SE_16K.state_dict.json).

The network: a fixed conv-STFT, two complex U-Nets in series (the second one is fed
the raw output of the first), a complex mask ``tanh(U1) + tanh(U2)`` applied to the noisy
spectrum, and a fixed conv-iSTFT.  Each U-Net (paper Fig. 1) is a complex conv
encoder/decoder of depth 7 + 7 whose stages are preceded by a complex "frequency
recurrence" FSMN (paper §2.2; a causal memory of ``lorder`` bins running from low to high
frequency), with complex squeeze-and-excitation (SE) on the skip paths and a complex
time-FSMN at the bottleneck.

Shape legend: B batch, L samples, T STFT frames, F frequency bins (fft_len // 2 + 1 = 321),
C channels, S the FSMN sequence axis (frequency, or time at the bottleneck), W the other
spatial axis, K the FSMN memory length (lorder).
Complex feature maps are real tensors (B, F, T, 2C), channels last: the first C channels are
the real plane, the last C the imaginary plane.  With this layout
* a complex convolution is ONE real convolution with the block weight
  [[W_re, -W_im], [W_im, W_re]], run on the channels-last NCHW view ``x.permute(0, 3, 1, 2)``
  (oneDNN's fastest format; its output permutes back to (B, F', T', 2C') without a copy);
* a complex batch norm (two independent real BNs) is one BN over 2C channels;
* the FSMN's linear layers are plain matrix products over the channel axis, and its causal
  memory is a banded matrix product (see ``_causal_memory``);
no (..., 2) real/imag permutes or per-plane convolutions are needed.

Differences from the reference code that do not change any output:
* only the numbered sub-module names are kept (``encoder3``, not ``encoders.3``):
  :meth:`FRCRN.convert_clearvoice_state_dict` maps release checkpoints;
* modules whose outputs are never used (``fsmn_enc0``, ``fsmn_dec6``, ``se_layer_enc6``,
  ``se_layer_dec5``) keep their parameters but are not evaluated;
* in eval mode the batch norms are folded into the convolution weights, and derived weights
  (block weights, stacked FSMN weights) are reused between calls while no gradient is
  recorded (see ``_reuse``);
* the FSMN backward recomputes its hidden layer instead of storing it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from se.audio import audio_norm
from se.models import ConfigKey, build_from_config, constructor_kwargs
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
        frames = spec.shape[-1]
        y = F.conv_transpose1d(spec, self.weight, stride=self.win_inc)  # (B, 1, L')
        win_len = self.weight.shape[-1]
        w2 = (self.window.reshape(1, win_len, 1) ** 2).expand(1, win_len, frames)  # (1, win, T)
        norm = F.fold(w2, (1, y.shape[-1]), (1, win_len), stride=(1, self.win_inc))  # (1,1,1,L')
        return (y / (norm.reshape(1, 1, -1) + 1e-8)).squeeze(1)  # (B, L')


# ---------------------------------------------------------------------------------------------
# complex layers on channels-last (B, F, T, 2C) maps
# ---------------------------------------------------------------------------------------------
def _complex_block(w_re: torch.Tensor, w_im: torch.Tensor, dim_out: int, dim_in: int):
    """Real weight of a complex linear map: [[W_re, -W_im], [W_im, W_re]] (out rows, in cols)."""
    top = torch.cat([w_re, -w_im], dim_in)
    bottom = torch.cat([w_im, w_re], dim_in)
    return torch.cat([top, bottom], dim_out)


class ComplexBatchNorm2d(nn.Module):
    """Two independent real BNs (``bn_re``, ``bn_im``) on the planes: one BN over 2C channels.

    ``sync_batchnorm(group)`` makes training-mode statistics those of the union of every
    rank's batch (SyncBatchNorm's semantics; this module calls F.batch_norm itself, so
    torch.nn.SyncBatchNorm.convert_sync_batchnorm cannot reach it).
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

    def _cat(self, name: str) -> torch.Tensor:
        return torch.cat([getattr(self.bn_re, name), getattr(self.bn_im, name)])  # (2C,)

    def uses_batch_stats(self) -> bool:
        return self.training or self.bn_re.running_mean is None

    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode BN as y = x * scale + shift, both (2C,)."""
        scale = self._cat("weight") / torch.sqrt(self._cat("running_var") + _BN_EPS)
        return scale, self._cat("bias") - self._cat("running_mean") * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2C, F, T) NCHW view
        if not self.uses_batch_stats():
            scale, shift = self.eval_affine()
            return torch.addcmul(shift[:, None, None], x, scale[:, None, None])
        if self._synchronised():
            return self._sync_forward(x)
        mean, var = self._cat("running_mean"), self._cat("running_var")
        y = F.batch_norm(x, mean, var, self._cat("weight"), self._cat("bias"),
                         training=True, momentum=self.bn_re.momentum, eps=_BN_EPS)
        with torch.no_grad():  # F.batch_norm updated the concatenated copies
            channels = self.bn_re.num_features
            for bn, part in ((self.bn_re, slice(0, channels)), (self.bn_im, slice(channels, None))):
                bn.running_mean.copy_(mean[part])
                bn.running_var.copy_(var[part])
                bn.num_batches_tracked.add_(1)
        return y

    def _synchronised(self) -> bool:
        import torch.distributed as dist

        return (self.sync and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.sync_group) > 1)

    def _sync_forward(self, x: torch.Tensor) -> torch.Tensor:
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
        scale = self._cat("weight") * torch.rsqrt(var + _BN_EPS)
        y = (xf - mean[:, None, None]) * scale[:, None, None] + self._cat("bias")[:, None, None]
        with torch.no_grad():
            m = self.bn_re.momentum
            unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
            channels = self.bn_re.num_features
            for bn, part in ((self.bn_re, slice(0, channels)), (self.bn_im, slice(channels, None))):
                bn.running_mean.mul_(1 - m).add_(mean.detach()[part], alpha=m)
                bn.running_var.mul_(1 - m).add_(unbiased[part], alpha=m)
                bn.num_batches_tracked.add_(1)
        return y.to(x.dtype)


class ComplexConv2d(nn.Module):
    """Complex conv from two real convs ``conv_re``, ``conv_im``, run as one.

    real = conv_re(x_r) - conv_im(x_i), imag = conv_re(x_i) + conv_im(x_r); the biases combine
    to b_re - b_im (real) and b_re + b_im (imag).
    """

    weight_out_dim = 0  # output-channel axis of the weight

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv_re = nn.Conv2d(cin, cout, kernel, stride, padding)
        self.conv_im = nn.Conv2d(cin, cout, kernel, stride, padding)

    def real_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        re, im = self.conv_re, self.conv_im
        weight = _complex_block(re.weight, im.weight, 0, 1)  # (2Cout, 2Cin, kF, kT)
        return weight, torch.cat([re.bias - im.bias, re.bias + im.bias])  # (2Cout,)

    def conv(self, x, weight, bias):  # x: (B, 2Cin, F, T) NCHW view -> (B, 2Cout, F', T')
        return F.conv2d(x, weight, bias, self.conv_re.stride, self.conv_re.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, T, 2Cin)
        return _channels_last(self.conv(x.permute(0, 3, 1, 2), *self.real_weight()))


class ComplexConvTranspose2d(nn.Module):
    """Complex transposed conv from ``tconv_re``, ``tconv_im`` (same pattern as ComplexConv2d)."""

    weight_out_dim = 1  # ConvTranspose weights are (Cin, Cout, kF, kT)

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.tconv_re = nn.ConvTranspose2d(cin, cout, kernel, stride, padding)
        self.tconv_im = nn.ConvTranspose2d(cin, cout, kernel, stride, padding)

    def real_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        re, im = self.tconv_re, self.tconv_im
        weight = _complex_block(re.weight, im.weight, 1, 0)  # (2Cin, 2Cout, kF, kT)
        return weight, torch.cat([re.bias - im.bias, re.bias + im.bias])  # (2Cout,)

    def conv(self, x, weight, bias):  # x: (B, 2Cin, F, T) NCHW view -> (B, 2Cout, F', T')
        return F.conv_transpose2d(x, weight, bias, self.tconv_re.stride, self.tconv_re.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, T, 2Cin)
        return _channels_last(self.conv(x.permute(0, 3, 1, 2), *self.real_weight()))


def _channels_last(y: torch.Tensor) -> torch.Tensor:
    """(B, C, F, T) NCHW view -> (B, F, T, C) contiguous (free for channels-last tensors)."""
    return y.permute(0, 2, 3, 1).contiguous()


def _reuse(owner: nn.Module, tag: str, sources, build):
    """``build()``'s tensors, derived from the ``sources`` parameters/buffers.

    While no autograd graph is recorded (inference) they are kept on ``owner`` and reused
    until a source changes (storage, version counter, dtype or device); FRCRN drops them on
    ``train()`` / ``eval()`` / ``to()``.
    """
    if torch.is_grad_enabled():
        return build()
    key = (owner.training,) + tuple(
        (t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, t.device) for t in sources
    )
    cache = owner.__dict__.setdefault("_reused", {})
    if tag not in cache or cache[tag][0] != key:
        cache[tag] = (key, build())
    return cache[tag][1]


class _ConvBlock(nn.Module):
    """complex (transposed) conv -> complex BN -> LeakyReLU(0.01); BN folded in eval mode.

    Time kernel 2.  Non-causal (released): the encoder pads one frame on each side (T -> T + 1
    frames, frame j sees input frames j - 1, j) and the decoder crops one on each side
    (T -> T - 1, frame o sees o, o + 1: one frame of look-ahead per decoder).  Causal: both keep
    T frames and frame j sees frames j - 1, j only: the encoder drops its last frame (the one
    only the right padding completes), the decoder runs unpadded (T + 1 frames) and drops its
    last frame.  The weights are the same in both cases.
    """

    causal = False

    def _layer(self):
        raise NotImplementedError

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Real block weight and bias, with the BN folded in when it uses running stats."""
        layer = self._layer()
        weight, bias = layer.real_weight()
        if self.bn.uses_batch_stats():
            return weight, bias
        scale, shift = self.bn.eval_affine()  # (2Cout,)
        shape = [1] * weight.dim()
        shape[layer.weight_out_dim] = -1
        return weight * scale.view(shape), bias * scale + shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, T, 2Cin)
        weight, bias = _reuse(self, "weights", list(self.parameters()) + list(self.buffers()),
                              self._weights)
        y = self._layer().conv(x.permute(0, 3, 1, 2), weight, bias)  # (B, 2Cout, F', T') NHWC
        if self.causal:
            y = y[..., :-1]  # (B, 2Cout, F', T): frame alignment kept, no look-ahead
        if self.bn.uses_batch_stats():
            y = self.bn(y)
        return _channels_last(F.leaky_relu(y, _LEAKY_SLOPE, inplace=True))  # (B, F', T', 2Cout)


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
    """Parameters of one real FSMN: X + P + causal_memory(P), P = W_p ReLU(W_l X + b).

    Only a parameter holder: the complex wrappers evaluate their real/imag pairs together.
    """

    def __init__(self, channels: int, hidden: int, lorder: int):
        super().__init__()
        self.linear = nn.Linear(channels, hidden)
        self.project = nn.Linear(hidden, channels, bias=False)
        self.conv1 = nn.Conv2d(channels, channels, (lorder, 1), groups=channels, bias=False)


# The FSMN memory runs blockwise: S is cut into blocks of Q <= _MAX_BLOCK steps and every
# block is one banded (Q, Q + K - 1) matrix product with itself and the K - 1 steps before it.
_MAX_BLOCK = 64
# The FSMN runs through the sequence in chunks of whole blocks holding about this many columns
# (steps x positions), so that its temporaries stay small (cache and malloc friendly).
_FSMN_CHUNK = 16384


def _memory_block(seq: int, lorder: int, width: int) -> int:
    """Block length Q for S steps of ``width`` columns: about one chunk per block, at least
    K - 1 (a block's memory reaches only into the previous block), little padding."""
    target = min(max(_FSMN_CHUNK // max(width, 1), lorder - 1, 1), _MAX_BLOCK)
    if seq <= target:
        return seq

    def cost(q):  # relative padding (weighted) + distance from the target length
        return 4 * (math.ceil(seq / q) * q - seq) / seq + abs(q - target) / target

    return min(range(max(lorder - 1, 1), _MAX_BLOCK + 1), key=cost)


@functools.lru_cache(maxsize=32)
def _band_shifts(block: int, lorder: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Constant 0/1 matrices E (K, Q * (Q + K - 1)), E[k, q, r] = [r - q == k]."""
    with torch.inference_mode(False), torch.no_grad():  # usable in autograd later on
        rows = torch.arange(block, device=device)[:, None]  # (Q, 1)
        cols = torch.arange(block + lorder - 1, device=device)[None, :]  # (1, Q + K - 1)
        lags = torch.arange(lorder, device=device)[:, None, None]  # (K, 1, 1)
        return (cols - rows == lags).to(dtype).view(lorder, -1)


def _memory_band(taps: torch.Tensor, block: int) -> torch.Tensor:
    """(N, K) taps -> (N, Q, Q + K - 1) banded matrices: band[q, r] = taps[r - q]."""
    channels, lorder = taps.shape
    shifts = _band_shifts(block, lorder, taps.dtype, taps.device)
    return (taps @ shifts).view(channels, block, block + lorder - 1)


def _causal_memory(p: torch.Tensor, band: torch.Tensor, before: torch.Tensor | None = None):
    """Per-channel causal FIR along the steps, out[s] = sum_k taps[k] * p[s - K + 1 + k] (the
    reference's left-zero-padded depthwise conv), as banded matrix products.

    p: (N, g * Q, I) = g blocks of Q steps; band: (N, Q, Q + K - 1) from ``_memory_band``;
    before: (N, K - 1, I), the K - 1 steps preceding p (None: zeros).  Returns (N, g * Q, I).
    Block j is band_cur @ p_j + band_prev @ (last K - 1 steps of block j - 1): the band's
    columns index the steps jQ - K + 1 ... jQ + Q - 1.  Needs Q >= K - 1 for several blocks.
    """
    channels, steps, width = p.shape
    block, lorder = band.shape[1], band.shape[2] - band.shape[1] + 1
    blocks = steps // block
    p4 = p.view(channels, blocks, block, width)  # (N, g, Q, I)
    out = torch.matmul(band[:, None, :, lorder - 1 :], p4)  # (N, g, Q, I)
    if lorder > 1:
        prev = band[:, None, :, : lorder - 1]  # (N, 1, Q, K - 1)
        if blocks > 1:
            out[:, 1:] += torch.matmul(prev, p4[:, :-1, block - lorder + 1 :])
        if before is not None:
            out[:, 0] += torch.bmm(prev[:, 0], before)
    return out.view(channels, steps, width)


def _causal_memory_backward(grad, p, band, before=None, grad_after=None):
    """Gradients of ``_causal_memory`` w.r.t. p (N, g * Q, I) and band (N, Q, Q + K - 1).

    grad_after: (N, Q, I), the output gradient of the block that follows p (None: none).
    """
    channels, steps, width = grad.shape
    block, lorder = band.shape[1], band.shape[2] - band.shape[1] + 1
    blocks = steps // block
    g4 = grad.view(channels, blocks, block, width)  # (N, g, Q, I)
    p4 = p.view(channels, blocks, block, width)
    g_p = torch.matmul(band[:, None, :, lorder - 1 :].transpose(-1, -2), g4)  # (N, g, Q, I)
    g_band = grad.new_zeros(band.shape)  # (N, Q, Q + K - 1)
    g_band[..., lorder - 1 :] = torch.matmul(g4, p4.transpose(-1, -2)).sum(1)
    if lorder > 1:
        prev_t = band[..., : lorder - 1].transpose(1, 2)  # (N, K - 1, Q)
        if blocks > 1:
            g_p[:, :-1, block - lorder + 1 :] += torch.matmul(prev_t[:, None], g4[:, 1:])
            g_band[..., : lorder - 1] += torch.matmul(
                g4[:, 1:], p4[:, :-1, block - lorder + 1 :].transpose(-1, -2)).sum(1)
        if grad_after is not None:
            g_p[:, -1, block - lorder + 1 :] += torch.bmm(prev_t, grad_after)
        if before is not None:
            g_band[..., : lorder - 1] += torch.bmm(g4[:, 0], before.transpose(1, 2))
    return g_p.view(channels, steps, width), g_band


def _fsmn_row_chunks(padded: int, block: int, width: int) -> list[tuple[int, int]]:
    """[start, stop) step ranges of whole blocks, about _FSMN_CHUNK columns each."""
    rows = max(1, _FSMN_CHUNK // (block * width)) * block
    return [(start, min(start + rows, padded)) for start in range(0, padded, rows)]


def _transpose_channels(x: torch.Tensor, out: torch.Tensor) -> None:
    """(B, S, W, 2, C) -> out (C, S, B, W, 2) through a blocked 2-D transpose."""
    batch, seq, width, _, channels = x.shape
    flat = x.reshape(-1, channels).t()  # (C, B * S * W * 2): copies of this are blocked
    if batch == 1 and out.is_contiguous():
        out.view(channels, -1).copy_(flat)
    else:
        tmp = torch.empty_like(flat, memory_format=torch.contiguous_format).copy_(flat)
        out.copy_(tmp.view(channels, batch, seq, width, 2).transpose(1, 2))


def _output_grad_rows(g_cm: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """d out / d z for steps [start, stop): real = z_re,r - z_im,i, imag = z_re,i + z_im,r.

    g_cm: (C, B, S, W, 2) output gradient, channel-major -> (2C, stop - start, B * W * 2)
    (zero beyond S).
    """
    channels, batch, seq, width, _ = g_cm.shape
    valid = max(0, min(stop, seq) - start)
    g_z = g_cm.new_empty(2, channels, stop - start, batch, width, 2)  # (fsmn, C, S, B, W, plane)
    if valid < stop - start:
        g_z[:, :, valid:] = 0.0
    src = g_cm[:, :, start : start + valid].transpose(1, 2)  # (C, S, B, W, plane)
    g_z[0, :, :valid] = src
    g_z[1, :, :valid, ..., 0] = src[..., 1]
    torch.neg(src[..., 0], out=g_z[1, :, :valid, ..., 1])
    return g_z.view(2 * channels, stop - start, -1)


class _ComplexFsmnFunction(torch.autograd.Function):
    """Both real FSMNs on both planes, X + P + memory(P), combined as in ``_complex_fsmn``.

    Inputs: x (B, S, W, 2C); w_lin (2H, C + 1) (bias as last column); w_proj (2, C, H);
    taps (2C, K) with +1 on the current step; the memory block length Q.
    Works on a channel-major copy of x, cols (C + 1, S_pad, B, W, plane) whose last row is
    ones, chunk by chunk along S.  Only cols is kept for the backward, which recomputes the
    hidden layer and projection per chunk: the FSMNs keep 1 instead of 5 input-sized maps
    for the backward, and no large temporary is ever allocated.
    """

    @staticmethod
    def forward(ctx, x, w_lin, w_proj, taps, block):
        batch, seq, width, channels2 = x.shape
        channels, hidden, lorder = channels2 // 2, w_proj.shape[2], taps.shape[1]
        padded = math.ceil(seq / block) * block  # whole blocks (causal: the tail is discarded)
        cols = x.new_empty(channels + 1, padded, batch, width, 2)  # (C + 1, S_pad, B, W, plane)
        cols[channels] = 1.0  # multiplies the bias column of w_lin
        cols[:channels, seq:] = 0.0
        _transpose_channels(x.reshape(batch, seq, width, 2, channels), cols[:channels, :seq])
        band = _memory_band(taps, block)  # (2C, Q, Q + K - 1)
        out_cm = x.new_empty(channels, batch, seq, width, 2)  # output, channel-major
        before = None  # p of the K - 1 steps before the chunk
        for start, stop in _fsmn_row_chunks(padded, block, batch * width * 2):
            xc = cols[:, start:stop].view(channels + 1, -1)  # (C + 1, n)
            h = torch.mm(w_lin, xc).relu_()  # (2H, n)
            p = torch.bmm(w_proj, h.view(2, hidden, -1)).view(channels2, stop - start, -1)
            z = _causal_memory(p, band, before)  # (2C, rows, BW2): P + memory(P)
            before = p[:, stop - start - lorder + 1 :].clone() if lorder > 1 else None
            z.view(2, channels, -1).add_(xc[:channels])  # + X: fsmn_re(x_plane), fsmn_im(x_plane)
            valid = min(stop, seq) - start
            z = z.view(2, channels, stop - start, batch, width, 2)[:, :, :valid]
            dst = out_cm[:, :, start : start + valid].transpose(1, 2)  # (C, rows, B, W, plane)
            torch.sub(z[0, ..., 0], z[1, ..., 1], out=dst[..., 0])  # real
            torch.add(z[0, ..., 1], z[1, ..., 0], out=dst[..., 1])  # imag
        out = x.new_empty(batch, seq, width, 2, channels)
        out.view(-1, channels).copy_(out_cm.view(channels, -1).t())  # blocked 2-D transpose
        ctx.save_for_backward(cols, w_lin, w_proj, band)
        ctx.seq = seq
        return out.view(batch, seq, width, channels2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # grad: (B, S, W, 2C)
        cols, w_lin, w_proj, band = ctx.saved_tensors
        seq, (_, padded, batch, width, _) = ctx.seq, cols.shape
        channels, hidden = w_proj.shape[1], w_proj.shape[2]
        block, lorder = band.shape[1], band.shape[2] - band.shape[1] + 1
        g_cm = grad.new_empty(channels, batch, seq, width, 2)  # output gradient, channel-major
        g_cm.view(channels, -1).copy_(grad.reshape(-1, channels).t())
        gx_cm = torch.empty_like(g_cm)  # input gradient, channel-major
        g_w_lin, g_w_proj, g_band = torch.zeros_like(w_lin), torch.zeros_like(w_proj), torch.zeros_like(band)
        before = None
        for start, stop in _fsmn_row_chunks(padded, block, batch * width * 2):
            xc = cols[:, start:stop].view(channels + 1, -1)  # (C + 1, n)
            h = torch.mm(w_lin, xc).relu_()  # recomputed hidden layer (2H, n)
            p = torch.bmm(w_proj, h.view(2, hidden, -1)).view(2 * channels, stop - start, -1)
            g_z = _output_grad_rows(g_cm, start, stop)  # (2C, rows, BW2)
            after = _output_grad_rows(g_cm, stop, stop + block) if stop < padded else None
            g_p, g_band_c = _causal_memory_backward(g_z, p, band, before, after)
            g_band += g_band_c
            before = p[:, stop - start - lorder + 1 :].clone() if lorder > 1 else None
            g_p = g_p.view(2, channels, -1)
            g_w_proj.baddbmm_(g_p, h.view(2, hidden, -1).transpose(1, 2))  # (2, C, H)
            g_h = torch.bmm(w_proj.transpose(1, 2), g_p).view(2 * hidden, -1)  # (2H, n)
            torch.ops.aten.threshold_backward.grad_input(g_h, h, 0, grad_input=g_h)  # ReLU
            g_w_lin.addmm_(g_h, xc.t())  # (2H, C + 1)
            g_z = g_z.view(2, channels, -1)
            g_cols = torch.addmm(g_z[0] + g_z[1], w_lin[:, :channels].t(), g_h)  # (C, n)
            valid = min(stop, seq) - start
            g_cols = g_cols.view(channels, stop - start, batch, width, 2)[:, :valid]
            gx_cm[:, :, start : start + valid].transpose(1, 2).copy_(g_cols)
        g_x = grad.new_empty(batch, seq, width, 2 * channels)
        g_x.view(-1, channels).copy_(gx_cm.view(channels, -1).t())  # blocked 2-D transpose
        shifts = _band_shifts(block, lorder, band.dtype, band.device)
        g_taps = g_band.view(band.shape[0], -1) @ shifts.t()  # (2C, K)
        return g_x, g_w_lin, g_w_proj, g_taps, None


def _fsmn_weights(fsmn_re: UniDeepFsmn, fsmn_im: UniDeepFsmn):
    """Both real FSMNs' weights stacked: linear with its bias as an extra column (2H, C + 1),
    project (2, C, H) and the memory taps (2C, K) with +1 on the current step (the P term of
    X + P + memory(P))."""
    w_lin = torch.cat([torch.cat([fsmn_re.linear.weight, fsmn_im.linear.weight]),
                       torch.cat([fsmn_re.linear.bias, fsmn_im.linear.bias])[:, None]], 1)
    w_proj = torch.stack([fsmn_re.project.weight, fsmn_im.project.weight])
    taps = torch.cat([fsmn_re.conv1.weight, fsmn_im.conv1.weight]).flatten(1)
    current = torch.zeros_like(taps[0])
    current[-1] = 1.0
    return w_lin, w_proj, taps + current


@float32  # under autocast the FSMN (sums over 20 steps of memory) stays in float32
def _complex_fsmn(x: torch.Tensor, owner: nn.Module, layer: str) -> torch.Tensor:
    """real = fsmn_re(x_r) - fsmn_im(x_i), imag = fsmn_re(x_i) + fsmn_im(x_r), with the real
    FSMNs ``owner.fsmn_re_<layer>``, ``owner.fsmn_im_<layer>``.

    x: (B, S, W, 2C), memory along S (causal, K steps), W is batch-like.
    The four real FSMN applications (2 FSMNs x 2 planes) run as three matrix products on a
    channel-major copy (C + 1, S, B, W, plane) of x: one holds both FSMNs' ``linear`` layers
    (bias via a row of ones), one (batched) both ``project`` layers and one (batched over
    channels) the memories as banded matrices (``_causal_memory``), with the P term folded in
    as +1 on the current-step tap.  See ``_ComplexFsmnFunction``.
    """
    fsmn_re, fsmn_im = getattr(owner, f"fsmn_re_{layer}"), getattr(owner, f"fsmn_im_{layer}")
    sources = list(fsmn_re.parameters()) + list(fsmn_im.parameters())
    w_lin, w_proj, taps = _reuse(owner, layer, sources, lambda: _fsmn_weights(fsmn_re, fsmn_im))
    block = _memory_block(x.shape[1], taps.shape[1], x.shape[0] * x.shape[2] * 2)
    return _ComplexFsmnFunction.apply(x, w_lin, w_proj, taps, block)  # (B, S, W, 2C)


class ComplexFsmnL1(nn.Module):
    """Frequency FSMN (paper's frequency recurrence): memory along F, features = channels."""

    def __init__(self, channels: int, hidden: int, lorder: int):
        super().__init__()
        self.fsmn_re_L1 = UniDeepFsmn(channels, hidden, lorder)
        self.fsmn_im_L1 = UniDeepFsmn(channels, hidden, lorder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, T, 2C) -> same
        return _complex_fsmn(x, self, "L1")


class ComplexFsmn(nn.Module):
    """Bottleneck time FSMN: two complex FSMN layers in series with memory along T (F = 1)."""

    def __init__(self, channels: int, hidden: int, lorder: int):
        super().__init__()
        self.fsmn_re_L1 = UniDeepFsmn(channels, hidden, lorder)
        self.fsmn_im_L1 = UniDeepFsmn(channels, hidden, lorder)
        self.fsmn_re_L2 = UniDeepFsmn(channels, hidden, lorder)
        self.fsmn_im_L2 = UniDeepFsmn(channels, hidden, lorder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, T, 2C)
        batch, freq, frames, channels2 = x.shape
        if freq != 1:
            raise ValueError(f"bottleneck FSMN needs F = 1, got shape {tuple(x.shape)}")
        h = x.view(batch, frames, 1, channels2)  # (B, T, 1, 2C): sequence axis = time
        h = _complex_fsmn(h, self, "L1")  # (B, T, 1, 2C)
        h = _complex_fsmn(h, self, "L2")  # (B, T, 1, 2C)
        return h.view(batch, 1, frames, channels2)  # (B, 1, T, 2C)


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
        pooled = pooled.unflatten(-1, (2, -1))  # (..., 2, C): a_r, a_i
        g_r = self.fc_r(pooled)  # (..., 2, C): fc_r(a_r), fc_r(a_i)
        g_i = self.fc_i(pooled)  # (..., 2, C): fc_i(a_r), fc_i(a_i)
        gate_r = g_r[..., 0, :] - g_i[..., 1, :]  # (..., C)
        gate_i = g_r[..., 1, :] + g_i[..., 0, :]  # (..., C)
        return torch.cat([gate_r, gate_i], -1)  # (..., 2C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, T, 2C)
        if self.time_decay is None:
            gate = self.gate(x.mean(dim=(1, 2)))  # (B, 2C): one gate per utterance
            return x * gate[:, None, None, :]  # (B, F, T, 2C)
        pooled = causal_time_mean(x.mean(dim=1), self.time_decay)  # (B, T, 2C)
        return x * self.gate(pooled)[:, None]  # (B, F, T, 2C): one gate per frame


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
    """Concatenate two complex maps along the complex channel axis: [a_r, b_r, a_i, b_i]."""
    batch, freq, frames, _ = a.shape
    return torch.cat([a.view(batch, freq, frames, 2, -1), b.view(batch, freq, frames, 2, -1)],
                     4).view(batch, freq, frames, -1)  # (B, F, T, 2(Ca + Cb))


class ComplexUNet(nn.Module):
    """One complex U-Net, modules registered in the release state-dict order.

    (B, F, T, 2) 1-channel complex map -> same shape.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F, T, 2)
        # frame counts below are the released (non-causal) ones; causal layers all keep T
        skips = []
        h = x
        for i in range(_DEPTH):
            if i > 0:  # fsmn_enc0 is never used
                h = getattr(self, f"fsmn_enc{i}")(h)  # (B, F_i, T + i, 2C)
            h = getattr(self, f"encoder{i}")(h)  # (B, F_{i+1}, T + i + 1, 2C)
            if i < _DEPTH - 1:  # se_layer_enc6's output is never used
                skips.append(getattr(self, f"se_layer_enc{i}")(h))
        p = self.fsmn(h)  # (B, 1, T + 7, 2C)
        for i in range(_DEPTH):
            p = getattr(self, f"decoder{i}")(p)  # (B, F, T + 6 - i, 2C); last: (B, F, T, 2)
            if i == _DEPTH - 1:
                break
            p = getattr(self, f"fsmn_dec{i}")(p)
            if i < _DEPTH - 2:  # se_layer_dec5 is never used
                p = getattr(self, f"se_layer_dec{i}")(p)
            p = _complex_cat(p, skips[_DEPTH - 2 - i])  # (B, F, T + 6 - i, 4C)
        return self.linear(p)  # (B, F, T, 2)


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
class FRCRN(nn.Module):
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

    def train(self, mode: bool = True):
        self._drop_reused()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._drop_reused()
        return super()._apply(fn, *args, **kwargs)

    def _drop_reused(self) -> None:
        """Forget the inference-time derived weights (see ``_reuse``)."""
        for module in self.modules():
            module.__dict__.pop("_reused", None)

    # -- construction from configs --------------------------------------------------------
    CONFIG_KEYS: dict[str, ConfigKey] = {}  # none of its own: the global STFT keys + network_kwargs

    @classmethod
    def config_kwargs(cls, conf: dict) -> dict:
        """Constructor kwargs of a resolved config (se.models.constructor_kwargs)."""
        return constructor_kwargs(cls, conf)

    @classmethod
    def from_config(cls, conf: dict) -> "FRCRN":
        """Network of a resolved config (se.models.build_from_config)."""
        return build_from_config(cls, conf)

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
        noisy = spec.view(batch, 2, bins2 // 2, frames)  # (B, 2, F, T): real, imag planes
        u1 = self.unet(_channels_last(noisy))  # (B, F, T, 2): 1-channel complex map
        u2 = self.unet2(u1)  # (B, F, T, 2): fed the raw first-U-Net output
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

    noisy: (B, 2, F, T) real/imag planes; u1, u2: (B, F, T, 2) U-Net outputs.
    Returns (est_spec, mask), both (B, 2F, T) as [real rows ; imag rows].
    """
    batch, _, bins, frames = noisy.shape
    mask = (torch.tanh(u2) + torch.tanh(u1)).permute(0, 3, 1, 2)  # (B, 2, F, T)
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
