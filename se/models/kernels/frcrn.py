"""Speed kernels of FRCRN (se/models/frcrn.py): ``accelerate(model)`` swaps both U-Nets'
forward for one that computes the same function faster, on the same parameters.

Selected in one place, :func:`se.models.kernels.accelerate` (``SE_KERNELS=reference`` keeps the
plain forward).  The state-dict keys do not change: an accelerated model's state dict loads
into a reference one and back.  tests/test_kernels_frcrn.py checks every kernel against the
reference module in float64 (forward and gradients within 1e-9).

Layout.  The reference keeps complex maps as (B, 2C, F, T), the real plane in the first C
channels.  The kernels run on the channels-last copy (B, F, T, 2C) of the same tensor, which is
oneDNN's fastest convolution format (``x.permute(0, 3, 1, 2)`` is then the NCHW view with
channels-last strides, and a convolution's output permutes back without a copy).  With it

* ``conv_block``: a complex (transposed) convolution is ONE real convolution with the block
  weight [[W_re, -W_im], [W_im, W_re]] (``real_weight``); in eval mode the batch norm is folded
  into it (``folded_weights``); in training the two real BNs run as one over 2C channels;
* ``complex_fsmn``: both real FSMNs of a complex FSMN on both planes run as three matrix
  products on a channel-major copy of the input (linear layers with the bias as a column of
  ones, the projections batched, the causal memory as banded matrices), with a hand-written
  backward that recomputes the hidden layer chunk by chunk instead of storing it.  Without
  autograd (inference) it runs on the channels-last map itself, in cache-sized tiles of
  whole sequences: per tile two oneDNN products per real FSMN and its memory as a depthwise
  convolution (no channel-major copy; 4.2x faster than that path on the released network's
  first layer, 2-3x on the others);
* the last decoder's transposed convolution (2 output channels) runs, without autograd, as one
  matrix product and an overlap-add (``_narrow_transposed_conv``);
* ``se_gate_map``: the squeeze-excitation MLPs each run once on both planes' pooled features;
* ``complex_cat``: the skip concatenation is one cat of (.., 2, C) views; without autograd it
  also applies the squeeze-excitation gates of both maps as it copies them.

Derived weights (block weights, folded BNs, stacked FSMN weights) are kept between calls while
no gradient is recorded and rebuilt when a source parameter changes (``_reuse``: storage,
version counter, dtype, device, train/eval); the U-Net drops them on ``train()`` / ``eval()``
/ ``to()``.

Private torch APIs, each probed with a fallback to public ops giving the same values:
``torch.ops.aten.threshold_backward.grad_input`` (in-place ReLU backward of the FSMN) and the
tensor version counter ``Tensor._version`` (without it nothing is reused).

Shape legend: B batch, F frequency bins, T frames, C channels, S the FSMN sequence axis
(frequency, or time at the bottleneck), W the other spatial axis, K the FSMN memory length
(lorder), H the FSMN hidden size, Q a memory block length.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from se.models.frcrn import (
    _BN_EPS,
    _DEPTH,
    _LEAKY_SLOPE,
    ComplexBatchNorm2d,
    ComplexConv2d,
    ComplexFsmn,
    ComplexSELayer,
    ComplexUNet,
    Decoder,
    Encoder,
    UniDeepFsmn,
    causal_time_mean,
)
from se.models.kernels.onednn import linear_forward
from se.precision import float32


# ---------------------------------------------------------------------------------------------
# private torch APIs, probed once
# ---------------------------------------------------------------------------------------------
def _threshold_backward_op():
    return torch.ops.aten.threshold_backward.grad_input


def _probe_threshold_backward() -> bool:
    """The op exists and gives grad * (out > 0) in place."""
    try:
        g, h = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, -1.0])
        _threshold_backward_op()(g, h, 0, grad_input=g)
        return g.tolist() == [0.0, 2.0, 0.0]
    except (AttributeError, RuntimeError, TypeError):
        return False


def _probe_version() -> bool:
    """Tensors have a version counter that in-place ops increment."""
    try:
        t = torch.zeros(1)
        before = t._version
        t.add_(1)
        return isinstance(before, int) and t._version > before
    except (AttributeError, RuntimeError):
        return False


_THRESHOLD_BACKWARD = _probe_threshold_backward()
_VERSION = _probe_version()


def _relu_backward_(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad <- grad * (out > 0) in place (``out`` = the ReLU's output)."""
    if _THRESHOLD_BACKWARD:
        return _threshold_backward_op()(grad, out, 0, grad_input=grad)
    return grad.masked_fill_(out <= 0, 0.0)


def _records_graph(*tensors: torch.Tensor | None) -> bool:
    """Autograd would record an operation on ``tensors`` (otherwise the inference kernels run)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _reuse(owner: nn.Module, tag: str, sources, build):
    """``build()``'s tensors, derived from the ``sources`` parameters/buffers.

    While no autograd graph is recorded (inference) they are kept on ``owner`` and reused
    until a source changes (storage, version counter, dtype or device) or train/eval flips;
    ``FastComplexUNet`` drops them on ``train()`` / ``eval()`` / ``to()``.
    """
    if torch.is_grad_enabled() or not _VERSION:
        return build()
    key = (owner.training,) + tuple(
        (t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, t.device) for t in sources
    )
    cache = owner.__dict__.setdefault("_reused", {})
    if tag not in cache or cache[tag][0] != key:
        cache[tag] = (key, build())
    return cache[tag][1]


# ---------------------------------------------------------------------------------------------
# complex convolutions with batch norm
# ---------------------------------------------------------------------------------------------
def _channels_last(y: torch.Tensor) -> torch.Tensor:
    """(B, C, F, T) NCHW view -> (B, F, T, C) contiguous (free for channels-last tensors)."""
    return y.permute(0, 2, 3, 1).contiguous()


def _complex_block(w_re: torch.Tensor, w_im: torch.Tensor, dim_out: int, dim_in: int):
    """Real weight of a complex linear map: [[W_re, -W_im], [W_im, W_re]] (out rows, in cols)."""
    top = torch.cat([w_re, -w_im], dim_in)
    bottom = torch.cat([w_im, w_re], dim_in)
    return torch.cat([top, bottom], dim_out)


def _pair(layer: nn.Module) -> tuple[nn.Module, nn.Module, int]:
    """(real conv, imaginary conv, output-channel axis of their weights) of a complex conv."""
    if isinstance(layer, ComplexConv2d):
        return layer.conv_re, layer.conv_im, 0
    return layer.tconv_re, layer.tconv_im, 1  # ConvTranspose weights are (Cin, Cout, kF, kT)


def real_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Block weight (out/in axes as the layer's) and bias (2Cout,) of a complex (transposed)
    conv: real = conv_re(x_r) - conv_im(x_i), imag = conv_re(x_i) + conv_im(x_r), so the
    biases combine to b_re - b_im (real) and b_re + b_im (imag)."""
    re, im, out_dim = _pair(layer)
    weight = _complex_block(re.weight, im.weight, out_dim, 1 - out_dim)  # (2Cout, 2Cin, kF, kT)
    return weight, torch.cat([re.bias - im.bias, re.bias + im.bias])  # (2Cout,)


# Transposed convolutions with at most this many (real) output channels run, without autograd,
# as one matrix product and an overlap-add (``_narrow_transposed_conv``): the released last
# decoder (512 -> 2 channels) took 34 ms as oneDNN's transposed convolution, 11 ms so.
_NARROW_OUTPUT = 8


def _narrow_transposed_conv(x: torch.Tensor, weight, bias, stride, padding) -> torch.Tensor:
    """F.conv_transpose2d for few output channels: x (B, Cin, F, T) NCHW view of a
    channels-last tensor, weight (Cin, Cout, kF, kT) -> (B, Cout, F', T') likewise.

    Every input position's contribution to its kF x kT output patch is one row of a
    (B F T, Cin) @ (Cin, Cout kF kT) product; the patches are then added at their strided
    places in the full output, which is cropped by the padding.
    """
    batch, cin, freq, frames = x.shape
    cout, k_f, k_t = weight.shape[1:]
    (s_f, s_t), (p_f, p_t) = stride, padding
    rows = x.permute(0, 2, 3, 1).reshape(-1, cin)  # (B F T, Cin): a view of channels-last x
    cols = linear_forward(rows, weight.flatten(1).t()).view(batch, freq, frames, cout, k_f, k_t)
    full_f, full_t = (freq - 1) * s_f + k_f, (frames - 1) * s_t + k_t
    out = x.new_zeros(batch, full_f, full_t, cout)  # (B, F'', T'', Cout), before cropping
    span_f, span_t = (freq - 1) * s_f + 1, (frames - 1) * s_t + 1  # reach of one kernel tap
    for i in range(k_f):
        for j in range(k_t):
            out[:, i : i + span_f : s_f, j : j + span_t : s_t] += cols[..., i, j]
    out = out[:, p_f : full_f - p_f, p_t : full_t - p_t] + bias  # (B, F', T', Cout), contiguous
    return out.permute(0, 3, 1, 2)


def _conv(layer: nn.Module, x: torch.Tensor, weight, bias) -> torch.Tensor:
    """x: (B, 2Cin, F, T) NCHW view -> (B, 2Cout, F', T') with the layer's stride/padding."""
    re = _pair(layer)[0]
    if isinstance(layer, ComplexConv2d):
        return F.conv2d(x, weight, bias, re.stride, re.padding)
    if weight.shape[1] <= _NARROW_OUTPUT and not _records_graph(x, weight):
        return _narrow_transposed_conv(x, weight, bias, re.stride, re.padding)
    return F.conv_transpose2d(x, weight, bias, re.stride, re.padding)


def complex_conv(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ComplexConv2d / ComplexConvTranspose2d as one real conv: (B, F, T, 2Cin) -> (B, F', T', 2Cout)."""
    return _channels_last(_conv(layer, x.permute(0, 3, 1, 2), *real_weight(layer)))


def _uses_batch_stats(bn: ComplexBatchNorm2d) -> bool:
    return bn.training or bn.bn_re.running_mean is None


def _cat(bn: ComplexBatchNorm2d, name: str) -> torch.Tensor:
    return torch.cat([getattr(bn.bn_re, name), getattr(bn.bn_im, name)])  # (2C,)


def folded_weights(block: Encoder | Decoder) -> tuple[torch.Tensor, torch.Tensor]:
    """Real block weight and bias of a conv block, with its BN folded in when the BN uses
    running statistics (eval mode): y = x * scale + shift."""
    layer = block.conv if isinstance(block, Encoder) else block.transconv
    weight, bias = real_weight(layer)
    if _uses_batch_stats(block.bn):
        return weight, bias
    scale = _cat(block.bn, "weight") / torch.sqrt(_cat(block.bn, "running_var") + _BN_EPS)  # (2Cout,)
    shift = _cat(block.bn, "bias") - _cat(block.bn, "running_mean") * scale
    shape = [1] * weight.dim()
    shape[_pair(layer)[2]] = -1
    return weight * scale.view(shape), bias * scale + shift


def batch_norm(bn: ComplexBatchNorm2d, y: torch.Tensor) -> torch.Tensor:
    """Training-mode ComplexBatchNorm2d on (B, 2C, F, T) as one BN over the 2C channels."""
    if bn.synchronised():
        return bn.sync_forward(y)
    mean, var = _cat(bn, "running_mean"), _cat(bn, "running_var")
    out = F.batch_norm(y, mean, var, _cat(bn, "weight"), _cat(bn, "bias"),
                       training=True, momentum=bn.bn_re.momentum, eps=_BN_EPS)
    with torch.no_grad():  # F.batch_norm updated the concatenated copies
        channels = bn.bn_re.num_features
        for sub, part in ((bn.bn_re, slice(0, channels)), (bn.bn_im, slice(channels, None))):
            sub.running_mean.copy_(mean[part])
            sub.running_var.copy_(var[part])
            sub.num_batches_tracked.add_(1)
    return out


def conv_block(block: Encoder | Decoder, x: torch.Tensor) -> torch.Tensor:
    """Encoder / Decoder: (B, F, T, 2Cin) -> (B, F', T', 2Cout), BN folded in eval mode."""
    layer = block.conv if isinstance(block, Encoder) else block.transconv
    weight, bias = _reuse(block, "weights", list(block.parameters()) + list(block.buffers()),
                          lambda: folded_weights(block))
    y = _conv(layer, x.permute(0, 3, 1, 2), weight, bias)  # (B, 2Cout, F', T') NHWC
    if block.causal:
        y = y[..., :-1]  # (B, 2Cout, F', T): frame alignment kept, no look-ahead
    if _uses_batch_stats(block.bn):
        y = batch_norm(block.bn, y)
    return _channels_last(F.leaky_relu(y, _LEAKY_SLOPE, inplace=True))  # (B, F', T', 2Cout)


# ---------------------------------------------------------------------------------------------
# complex FSMN: three matrix products and a banded causal memory
# ---------------------------------------------------------------------------------------------
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
            _relu_backward_(g_h, h)  # ReLU
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




def fsmn_weights(fsmn_re: UniDeepFsmn, fsmn_im: UniDeepFsmn):
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


# ---------------------------------------------------------------------------------------------
# complex FSMN without autograd: on the channels-last map itself, tile by tile
# ---------------------------------------------------------------------------------------------
# Rows (positions x planes, C values each) per inference tile on the CPU: a tile's temporaries
# (hidden layer, projections, memories) then stay in the caches.  2048 beat 1024, 4096 and
# 8192 for the released network on 2 threads (10 s input).  Other devices take whole sequences.
_TILE_ROWS = 2048


def fsmn_tile_weights(fsmn: UniDeepFsmn) -> tuple[torch.Tensor, ...]:
    """One real FSMN for ``_real_fsmn_tile``: linear weight (H, C) and bias (H,), project
    (C, H), and the memory taps as a depthwise kernel (C, 1, K, 1) with +1 on the current step
    (the P term of X + P + memory(P))."""
    taps = fsmn.conv1.weight.detach().clone()  # (C, 1, K, 1)
    taps[:, 0, -1, 0] += 1.0
    return fsmn.linear.weight, fsmn.linear.bias, fsmn.project.weight, taps


def _real_fsmn_tile(rows: torch.Tensor, seq: int, weight, bias, project, taps) -> torch.Tensor:
    """P + memory(P) of one real FSMN, P = project(ReLU(linear(rows))), on the rows (m S, C)
    of a tile: m sequences of S steps, step-major within each.  The hidden layer and the
    projection are two oneDNN products, the memory a causal depthwise convolution along the
    steps, the innermost spatial axis (twice as fast as along the outer one).  Returns
    (m, S, C)."""
    channels, lorder = taps.shape[0], min(taps.shape[2], seq)  # taps reaching before step 0 are idle
    p = linear_forward(linear_forward(rows, weight, bias, relu=True), project)  # (m S, C)
    p = p.view(1, -1, seq, channels).permute(0, 3, 1, 2)  # (1, C, m, S), channels-last
    taps = taps[:, :, taps.shape[2] - lorder :].view(channels, 1, 1, lorder)  # (C, 1, 1, K')
    z = F.conv2d(p, taps, None, 1, (0, lorder - 1), 1, channels)[..., :seq]  # causal along S
    return z.permute(0, 2, 3, 1)[0]  # (m, S, C)


def _complex_fsmn_inference(x: torch.Tensor, fsmn_re: tuple, fsmn_im: tuple) -> torch.Tensor:
    """``complex_fsmn`` without autograd, on the channels-last map: x (B, S, W, 2C) -> same.

    x is cut into tiles of whole sequences (all S steps, a few positions along W, about
    _TILE_ROWS rows of C), copied sequence-major (n, plane, S, C); in a tile each real FSMN
    runs once over both planes and the planes combine straight into the output:
    real = x_r - x_i + M_re(r) - M_im(i), imag = x_r + x_i + M_re(i) + M_im(r), where
    M(.) = P + memory(P).  Only the tile is copied, unlike the autograd path's channel-major
    copy of all of x.
    """
    batch, seq, width, channels2 = x.shape
    channels = channels2 // 2
    out = torch.empty_like(x)
    tile = width  # positions per tile
    if x.device.type == "cpu":
        tile = max(1, min(width, _TILE_ROWS // (2 * seq)))
    for b in range(batch):
        for start in range(0, width, tile):
            stop = min(width, start + tile)
            x_t = x[b, :, start:stop].unflatten(-1, (2, channels))  # (S, n, 2, C) view
            x_t = x_t.permute(1, 2, 0, 3).contiguous()  # (n, 2, S, C): the tile's one copy
            rows = x_t.view(-1, channels)  # (n 2 S, C)
            m_re = _real_fsmn_tile(rows, seq, *fsmn_re).view(-1, 2, seq, channels).transpose(0, 2)
            m_im = _real_fsmn_tile(rows, seq, *fsmn_im).view(-1, 2, seq, channels).transpose(0, 2)
            x_r, x_i = x_t.transpose(0, 2).unbind(1)  # (S, n, C) each, as m_re[:, plane]
            o_r, o_i = out[b, :, start:stop].unflatten(-1, (2, channels)).unbind(2)  # (S, n, C) each
            torch.sub(m_re[:, 0], m_im[:, 1], out=o_r).add_(x_r).sub_(x_i)
            torch.add(m_re[:, 1], m_im[:, 0], out=o_i).add_(x_r).add_(x_i)
    return out


@float32  # under autocast the FSMN (sums over 20 steps of memory) stays in float32
def complex_fsmn(x: torch.Tensor, owner: nn.Module, layer: str) -> torch.Tensor:
    """real = fsmn_re(x_r) - fsmn_im(x_i), imag = fsmn_re(x_i) + fsmn_im(x_r), with the real
    FSMNs ``owner.fsmn_re_<layer>``, ``owner.fsmn_im_<layer>``.

    x: (B, S, W, 2C), memory along S (causal, K steps), W is batch-like.
    Without autograd (inference) it runs on x tile by tile (``_complex_fsmn_inference``).
    With autograd the four real FSMN applications (2 FSMNs x 2 planes) run as three matrix
    products on a channel-major copy (C + 1, S, B, W, plane) of x: one holds both FSMNs'
    ``linear`` layers (bias via a row of ones), one (batched) both ``project`` layers and one
    (batched over channels) the memories as banded matrices (``_causal_memory``), with the P
    term folded in as +1 on the current-step tap.  See ``_ComplexFsmnFunction``.
    """
    fsmn_re, fsmn_im = getattr(owner, f"fsmn_re_{layer}"), getattr(owner, f"fsmn_im_{layer}")
    sources = list(fsmn_re.parameters()) + list(fsmn_im.parameters())
    if not _records_graph(x, *sources):
        weights = _reuse(owner, f"{layer}/tiles", sources,
                         lambda: (fsmn_tile_weights(fsmn_re), fsmn_tile_weights(fsmn_im)))
        return _complex_fsmn_inference(x, *weights)  # (B, S, W, 2C)
    w_lin, w_proj, taps = _reuse(owner, layer, sources, lambda: fsmn_weights(fsmn_re, fsmn_im))
    block = _memory_block(x.shape[1], taps.shape[1], x.shape[0] * x.shape[2] * 2)
    return _ComplexFsmnFunction.apply(x, w_lin, w_proj, taps, block)  # (B, S, W, 2C)


def time_fsmn(fsmn: ComplexFsmn, x: torch.Tensor) -> torch.Tensor:
    """Bottleneck ComplexFsmn, memory along T: (B, 1, T, 2C) -> same."""
    batch, freq, frames, channels2 = x.shape
    if freq != 1:
        raise ValueError(f"bottleneck FSMN needs F = 1, got shape {tuple(x.shape)}")
    h = x.view(batch, frames, 1, channels2)  # (B, T, 1, 2C): sequence axis = time
    h = complex_fsmn(h, fsmn, "L1")  # (B, T, 1, 2C)
    h = complex_fsmn(h, fsmn, "L2")  # (B, T, 1, 2C)
    return h.view(batch, 1, frames, channels2)  # (B, 1, T, 2C)


# ---------------------------------------------------------------------------------------------
# squeeze-excitation and skip concatenation
# ---------------------------------------------------------------------------------------------
def se_gate(se: ComplexSELayer, pooled: torch.Tensor) -> torch.Tensor:
    """ComplexSELayer.gate with each MLP run once on both planes: (..., 2C) -> (..., 2C)."""
    pooled = pooled.unflatten(-1, (2, -1))  # (..., 2, C): a_r, a_i
    g_r = se.fc_r(pooled)  # (..., 2, C): fc_r(a_r), fc_r(a_i)
    g_i = se.fc_i(pooled)  # (..., 2, C): fc_i(a_r), fc_i(a_i)
    gate_r = g_r[..., 0, :] - g_i[..., 1, :]  # (..., C)
    gate_i = g_r[..., 1, :] + g_i[..., 0, :]  # (..., C)
    return torch.cat([gate_r, gate_i], -1)  # (..., 2C)


def se_gate_map(se: ComplexSELayer, x: torch.Tensor) -> torch.Tensor:
    """The gate ComplexSELayer multiplies x (B, F, T, 2C) by: (B, 1, 1, 2C), one per
    utterance, or (B, 1, T, 2C), one per frame (causal running mean)."""
    if se.time_decay is None:
        return se_gate(se, x.mean(dim=(1, 2)))[:, None, None, :]
    pooled = causal_time_mean(x.mean(dim=1), se.time_decay)  # (B, T, 2C)
    return se_gate(se, pooled)[:, None]


def complex_cat(a: torch.Tensor, b: torch.Tensor, gate_a: torch.Tensor | None = None,
                gate_b: torch.Tensor | None = None) -> torch.Tensor:
    """Concatenate two complex maps along the complex channel axis: [a_r, b_r, a_i, b_i], each
    map first multiplied by its SE gate (``se_gate_map``) when one is given.  Without autograd
    the gates are applied while copying (one pass over the maps instead of three)."""
    batch, freq, frames, _ = a.shape
    parts = [(a.view(batch, freq, frames, 2, -1), gate_a), (b.view(batch, freq, frames, 2, -1), gate_b)]
    if _records_graph(a, b, gate_a, gate_b):
        return torch.cat([m if g is None else m * g.unflatten(-1, (2, -1)) for m, g in parts],
                         4).view(batch, freq, frames, -1)  # (B, F, T, 2(Ca + Cb))
    out = a.new_empty(batch, freq, frames, 2, sum(m.shape[-1] for m, _ in parts))
    start = 0
    for m, gate in parts:
        dst = out[..., start : start + m.shape[-1]]  # (B, F, T, 2, C_part)
        if gate is None:
            dst.copy_(m)
        else:
            torch.mul(m, gate.unflatten(-1, (2, -1)), out=dst)
        start += m.shape[-1]
    return out.view(batch, freq, frames, -1)  # (B, F, T, 2(Ca + Cb))


# ---------------------------------------------------------------------------------------------
# the accelerated U-Net
# ---------------------------------------------------------------------------------------------
class FastComplexUNet(ComplexUNet):
    """ComplexUNet whose forward runs the kernels above on channels-last maps (same modules,
    same parameters, same function: (B, 2, F, T) -> (B, 2, F, T), the output a view of a
    channels-last (B, F, T, 2) tensor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2, F, T)
        skips = []  # (encoder output, its SE gate): the gates are applied by complex_cat
        h = _channels_last(x)  # (B, F, T, 2)
        for i in range(_DEPTH):
            if i > 0:  # fsmn_enc0 is never used
                h = complex_fsmn(h, getattr(self, f"fsmn_enc{i}"), "L1")  # (B, F_i, T + i, 2C)
            h = conv_block(getattr(self, f"encoder{i}"), h)  # (B, F_{i+1}, T + i + 1, 2C)
            if i < _DEPTH - 1:  # se_layer_enc6's output is never used
                skips.append((h, se_gate_map(getattr(self, f"se_layer_enc{i}"), h)))
        p = time_fsmn(self.fsmn, h)  # (B, 1, T + 7, 2C)
        for i in range(_DEPTH):
            p = conv_block(getattr(self, f"decoder{i}"), p)  # (B, F, T + 6 - i, 2C); last: (B, F, T, 2)
            if i == _DEPTH - 1:
                break
            p = complex_fsmn(p, getattr(self, f"fsmn_dec{i}"), "L1")
            gate = None  # se_layer_dec5 is never used
            if i < _DEPTH - 2:
                gate = se_gate_map(getattr(self, f"se_layer_dec{i}"), p)
            skip, skip_gate = skips[_DEPTH - 2 - i]
            p = complex_cat(p, skip, gate, skip_gate)  # (B, F, T + 6 - i, 4C): SE gates applied
        return complex_conv(self.linear, p).permute(0, 3, 1, 2)  # (B, 2, F, T)

    def train(self, mode: bool = True):
        self.drop_reused()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.drop_reused()
        return super()._apply(fn, *args, **kwargs)

    def drop_reused(self) -> None:
        """Forget the inference-time derived weights (see ``_reuse``)."""
        for module in self.modules():
            module.__dict__.pop("_reused", None)


def accelerate(model: nn.Module) -> nn.Module:
    """Swaps the U-Nets of an FRCRN for ``FastComplexUNet`` (in place; returned)."""
    for unet in (model.unet, model.unet2):
        if type(unet) is ComplexUNet:
            unet.__class__ = FastComplexUNet
    return model


def reference(model: nn.Module) -> nn.Module:
    """Undoes :func:`accelerate` (in place; returned): the plain reference forward."""
    for unet in (model.unet, model.unet2):
        if type(unet) is FastComplexUNet:
            unet.drop_reused()
            unet.__class__ = ComplexUNet
    return model
