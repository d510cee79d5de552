"""Building blocks of the MossFormerGAN generator (SyncANet).

The generator follows the ClearerVoice-Studio MossFormerGAN_SE_16K release (S. Zhao et al.,
"MossFormer: Pushing the performance limit of monaural speech separation using gated
single-head transformer with convolution-augmented joint self-attentions", ICASSP 2023, used
inside the CMGAN-style generator of "MossFormerGAN"; CMGAN: R. Cao, S. Abdulatif, B. Yang,
"CMGAN: Conformer-based metric GAN for speech enhancement", Interspeech 2022; full-band
attention from Z.-Q. Wang et al., "TF-GridNet", 2023).  Module names and parameter shapes
reproduce the release's state dict exactly
(tests/data/clearvoice/MossFormerGAN_SE_16K_generator.state_dict.json).

Shape legend: B batch, C channels, T frames, F frequency bins (201 at the input),
Q frequency bins after the encoder (101), N rows of a sequence batch, n sequence length,
A length of the "cross" axis, d / e feature sizes.

Efficiency (same outputs as the reference up to float rounding):
* the relu(q k^T / n)^2 attentions are computed over blocks of queries
  (:func:`relu_square_attention`); with autograd each block runs under
  ``torch.utils.checkpoint`` so the n x n maps are never all kept for backward;
* without autograd, long float32 CPU sequences use oneDNN's AVX-512 matrix products (MKL's,
  torch's default, were half as fast on the AMD CPUs we measured);
* v and u share one attention pass (``to_hidden`` already returns [v | u]);
* the quadratic, cross and linear attention outputs are accumulated into one buffer.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from se.models.kernels.onednn import mm_nt, use_onednn

# Elements of one attention-score block (rows x queries x keys).  With autograd (training) it
# bounds what one checkpointed block recomputes and keeps; without (inference) the block is
# squared in place and multiplied into the output at once, and fewer, larger products ran
# faster: with MKL's bmm, 16 MB blocks (whole rows of a 10 s input's 1601 x 1601 maps) took
# 0.99 s where 256-query blocks took 1.37 s per MossFormer attention on 2 CPU threads; the
# block still fits the last-level cache.
ATTENTION_BLOCK_ELEMENTS = 1 << 19
INFERENCE_BLOCK_ELEMENTS = 1 << 22
# Without autograd, sequences of at least this many keys take oneDNN's matrix products one row
# at a time (AVX-512 here, about 2x MKL's batched products: 0.47 s vs 0.94 s for 101 rows of
# 1601 x 1601, 2 threads); shorter ones are faster as MKL batches (101 keys: 0.08 s vs 0.12 s).
ONEDNN_MIN_KEYS = 160


# --------------------------------------------------------------------------------------------
# float64 convolutions
# --------------------------------------------------------------------------------------------
# PyTorch has no fast CPU kernel for float64 convolutions (oneDNN is float32-only; the fallback
# loops over the groups with im2col), which made a float64 forward (the parity check) take
# minutes.  On float64 CPU tensors the layers below evaluate the same sums tap by tap with
# matrix products (dense kernels) or as banded matrix products (depthwise 1-D kernels).
def _use_f64_path(x: torch.Tensor) -> bool:
    return x.dtype == torch.float64 and x.device.type == "cpu"


def depthwise_conv1d(x: torch.Tensor, w: torch.Tensor, padding: int,
                     plus_input: bool = False) -> torch.Tensor:
    """Depthwise conv along the sequence, stride 1, zero padding, no bias.

    x (N, n, d) (features last, as the sequences are stored), w (d, 1, K) -> (N, n', d).
    ``plus_input``: return x + conv(x) ('same' padding), computed as ONE convolution whose
    centre tap is w + 1 (saves a pass over the tensor; equal up to float rounding).
    float32: one channels-last 2-D convolution (oneDNN), no transposed copies (about 5x
    faster than conv1d on the transposed tensor, identical values).  float64 on CPU: banded matrix
    product (or one pass per tap for long sequences).
    """
    d, _, k = w.shape
    if plus_input:
        if 2 * padding != k - 1:
            raise ValueError("plus_input needs 'same' padding")
        delta = torch.zeros_like(w)
        delta[:, :, padding] = 1.0
        w = w + delta
    if not _use_f64_path(x):
        # (N, n, d) viewed as an (N, d, n, 1) image with channels-last strides: no copy in,
        # and the channels-last output is again a contiguous (N, n', d) tensor
        xc = x.unsqueeze(2).permute(0, 3, 1, 2)
        y = F.conv2d(xc, w.unsqueeze(-1), padding=(padding, 0), groups=d)  # (N, d, n', 1)
        return y.squeeze(-1).transpose(1, 2)
    n_in = x.shape[1] + 2 * padding
    n_out = n_in - k + 1
    xp = F.pad(x, (0, 0, padding, padding))  # (N, n_in, d)
    if d * n_in * n_out > (1 << 24):  # long sequences: one pass per tap
        y = xp[:, :n_out] * w[:, 0, 0]
        for j in range(1, k):
            y = y + xp[:, j:j + n_out] * w[:, 0, j]
        return y
    tap = torch.arange(n_in, device=x.device)[:, None] - torch.arange(n_out, device=x.device)
    band = (tap >= 0) & (tap < k)  # (n_in, n_out)
    toeplitz = w[:, 0, tap.clamp(0, k - 1)] * band  # (d, n_in, n_out)
    y = torch.bmm(xp.permute(2, 0, 1).contiguous(), toeplitz)  # (d, N, n_out)
    return y.permute(1, 2, 0)


def _conv2d_taps(x, w, b, stride, padding, dilation, groups):
    """float64 conv2d as a sum over kernel taps (groups 1, or groups == input channels)."""
    ph, pw = padding
    sh, sw = stride
    dh, dw = dilation
    o, cg, kh, kw = w.shape
    xp = F.pad(x, (pw, pw, ph, ph))
    hp, wp = xp.shape[-2:]
    ho = (hp - dh * (kh - 1) - 1) // sh + 1
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    c = x.shape[1]
    if groups == 1:
        # one product of the whole padded grid with every tap's weights, then shifted sums
        bsz = x.shape[0]
        xl = xp.permute(0, 2, 3, 1).reshape(-1, c)  # (B*Hp*Wp, C)
        taps = w.permute(2, 3, 0, 1).reshape(kh * kw * o, c)  # (taps*O, C)
        z = torch.mm(xl, taps.t()).view(bsz, hp, wp, kh * kw, o)
        y = None
        for i in range(kh):
            for j in range(kw):
                t = z[:, i * dh: i * dh + sh * (ho - 1) + 1: sh,
                      j * dw: j * dw + sw * (wo - 1) + 1: sw, i * kw + j]  # (B, Ho, Wo, O)
                y = t if y is None else y + t
        y = y.permute(0, 3, 1, 2)
    elif groups == c and cg == 1:
        xr = xp.repeat_interleave(o // c, dim=1) if o != c else xp  # (B, O, Hp, Wp)
        y = None
        for i in range(kh):
            for j in range(kw):
                xs = xr[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
                t = xs * w[:, 0, i, j, None, None]
                y = t if y is None else y + t
    else:
        return F.conv2d(x, w, b, stride, padding, dilation, groups)
    return y if b is None else y + b[:, None, None]


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters) with a fast float64 CPU path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_f64_path(x) and isinstance(self.padding, tuple):
            return _conv2d_taps(x, self.weight, self.bias, self.stride, self.padding,
                                self.dilation, self.groups)
        return super().forward(x)


class ConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d (stride 1, no padding) with a fast float64 CPU path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_f64_path(x) and self.stride == (1,) and self.padding == (0,) and self.groups == 1:
            k = self.kernel_size[0]
            w = self.weight.transpose(0, 1).flip(-1).unsqueeze(-1)  # (O, C, K, 1)
            y = _conv2d_taps(x.unsqueeze(-1), w, self.bias, (1, 1), (k - 1, 0), (1, 1), 1)
            return y.squeeze(-1)
        return super().forward(x)


# --------------------------------------------------------------------------------------------
# relu^2 attention
# --------------------------------------------------------------------------------------------
def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with the distribution of F.dropout.

    On CPU the keep mask is drawn with torch.rand (about 1.5x faster than the bernoulli_
    kernel F.dropout uses, which was ~12 % of a CPU training step); elsewhere F.dropout.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    mask = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))  # 0 or 1/(1-p), P(keep) = 1 - p
    return x * mask


class Dropout(nn.Dropout):
    """nn.Dropout computed by :func:`fast_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def _relu_square_scores(q, k, offset: int, zero_diag: bool, inplace: bool):
    """relu(q k^T)^2 for a block of queries: q (R, m, d) (scaled), k (R, n, d) -> (R, m, n)."""
    s = torch.bmm(q, k.transpose(1, 2))  # (R, m, n)
    if zero_diag:
        # no self term: score (i, offset + i) -> 0, so relu^2 gives 0 and no gradient
        s.diagonal(offset=offset, dim1=1, dim2=2).zero_()
    if inplace:
        return s.relu_().square_()
    a = torch.relu(s)
    return a * a


def _relu_square_block(q, k, v, offset: int, zero_diag: bool, dropout: float, training: bool):
    """(dropout(relu(q k^T)^2) with optional zeroed diagonal) @ v for one block of queries.

    q: (N, m, d) already scaled, k: (N, n, d), v: (N, n, e) -> (N, m, e).
    ``offset``: index of the first query in the full sequence (for the diagonal).
    """
    a = _relu_square_scores(q, k, offset, zero_diag, inplace=False)
    a = fast_dropout(a, dropout, training)
    return torch.bmm(a, v)  # (N, m, e)


def _product_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """dtype of a matrix product of ``tensors`` here: autocast's when it is on for their device."""
    device_type = tensors[0].device.type
    if torch.is_autocast_enabled(device_type) and all(t.is_floating_point() for t in tensors):
        return torch.get_autocast_dtype(device_type)
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors))


def relu_square_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    zero_diag: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    out: torch.Tensor | None = None,
    block_elements: int | None = None,
    checkpoint_blocks: bool = True,
) -> torch.Tensor:
    """MossFormer's quadratic attention relu(q k^T * scale)^2 v, computed in blocks.

    q, k: (N, n, d); v: (N, n, e).  Returns (N, n, e); when ``out`` is given the result is
    added to it (in place when no gradient is needed).

    Without autograd the scores are computed for blocks of (rows x queries) of about
    ``block_elements`` elements (default INFERENCE_BLOCK_ELEMENTS), squared in place and
    accumulated into ``out`` (no full map of all rows is materialised); float32 CPU sequences
    of at least ONEDNN_MIN_KEYS keys go row by row through oneDNN, others through bmm.  With
    autograd every block of queries (default ATTENTION_BLOCK_ELEMENTS over all rows) runs under
    ``torch.utils.checkpoint`` (RNG state preserved, so dropout masks are replayed): only q, k, v
    are kept for backward, not the (N, n, n) maps (``checkpoint_blocks=False``: one block, maps
    kept, e.g. when the caller is itself recomputed by a checkpoint).
    """
    N, n, _ = q.shape
    nk = k.shape[1]
    q = q * scale
    need_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if need_grad:
        block_elements = block_elements or ATTENTION_BLOCK_ELEMENTS
        m = max(16, min(n, block_elements // max(1, N * nk))) if checkpoint_blocks else n
        if m >= n:  # one block: nothing to save by checkpointing
            res = _relu_square_block(q, k, v, 0, zero_diag, dropout, training)
        else:
            # split (one concatenation of the query gradients in backward, not one
            # zero-filled full-size gradient per block as with slicing)
            res = torch.cat([
                checkpoint(_relu_square_block, qb, k, v, i * m, zero_diag, dropout, training,
                           use_reentrant=False)
                for i, qb in enumerate(q.split(m, dim=1))
            ], dim=1)
        return res if out is None else out + res
    # the products' dtype: autocast's (e.g. bfloat16 scores from float32 q) or the inputs'
    dtype = _product_dtype(q, k, v)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if out is not None and out.dtype != dtype:  # accumulate in the products' dtype, add once
        return out + relu_square_attention(q, k, v, 1.0, zero_diag, dropout, training, None,
                                           block_elements, checkpoint_blocks)
    if out is None:
        out = q.new_zeros(N, n, v.shape[-1])
    block_elements = block_elements or INFERENCE_BLOCK_ELEMENTS
    m = max(1, min(n, block_elements // nk))  # queries per block
    drop = training and dropout > 0
    if nk >= ONEDNN_MIN_KEYS and use_onednn(q, k, v):
        # rows must be dense (nk, d) / (nk, e) matrices: strided ones (the cross layout) made
        # oneDNN reorder on every call, orders of magnitude slower (one copy of the whole
        # tensors was faster than per-row copies)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        for r in range(N):
            kr, vt = k[r], v[r].t()
            for s in range(0, n, m):
                a = mm_nt(q[r, s:s + m], kr)  # (m, nk)
                if zero_diag:
                    a.diagonal(offset=s).zero_()
                a = a.relu_().square_()
                if drop:
                    a = fast_dropout(a, dropout, True)
                out[r, s:s + m] += mm_nt(a, vt)
        return out
    rows = max(1, min(N, block_elements // (m * nk)))
    for r in range(0, N, rows):
        kr, vr = k[r:r + rows], v[r:r + rows]
        for s in range(0, n, m):
            a = _relu_square_scores(q[r:r + rows, s:s + m], kr, s, zero_diag, inplace=True)
            if drop:
                a = fast_dropout(a, dropout, True)
            out[r:r + rows, s:s + m].baddbmm_(a, vr)
    return out


# --------------------------------------------------------------------------------------------
# normalisations / small layers
# --------------------------------------------------------------------------------------------
class LayerNormalization4D(nn.Module):
    """Normalise (B, C, T, Q) over the channel axis per (b, t, q) (TF-GridNet)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mu = torch.var_mean(x, dim=1, keepdim=True, correction=0)  # (B, 1, T, Q)
        return (x - mu) / torch.sqrt(var + self.eps) * self.gamma + self.beta


class LayerNormalization4DCF(nn.Module):
    """Normalise (B, C, T, Q) over channels and frequency jointly per (b, t) (TF-GridNet)."""

    def __init__(self, channels: int, freqs: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, freqs))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, freqs))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mu = torch.var_mean(x, dim=(1, 3), keepdim=True, correction=0)  # (B, 1, T, 1)
        return (x - mu) / torch.sqrt(var + self.eps) * self.gamma + self.beta


class Transpose12(nn.Module):
    """(N, n, d) <-> (N, d, n)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class DepthwiseConv1d(nn.Module):
    """Depthwise Conv1d on (N, n, d) sequences (features last) -> (N, n, d)."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2,
                              groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv1d(x, self.conv.weight, self.conv.padding[0])


class ConvModule(nn.Module):
    """y = x + depthwise_conv(x) along the sequence (kernel 31, zero 'same' padding, no bias).

    ``sequential`` = (transpose, depthwise conv) keeps the release's key names
    (``sequential.1.conv.weight``); the convolution runs on the (N, n, d) layout directly.
    """

    def __init__(self, channels: int, kernel: int = 31):
        super().__init__()
        self.sequential = nn.Sequential(Transpose12(), DepthwiseConv1d(channels, kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, n, d)
        conv = self.sequential[1].conv
        return depthwise_conv1d(x, conv.weight, conv.padding[0], plus_input=True)


class FFConvM(nn.Module):
    """LayerNorm -> Linear -> SiLU -> ConvModule -> Dropout on (N, n, d_in) -> (N, n, d_out)."""

    def __init__(self, dim_in: int, dim_out: int, dropout: float = 0.1):
        super().__init__()
        self.mdl = nn.Sequential(
            nn.LayerNorm(dim_in),
            nn.Linear(dim_in, dim_out),
            nn.SiLU(),
            ConvModule(dim_out),
            Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mdl(x)


class UniDeepFsmn(nn.Module):
    """Feedforward sequential memory block ("fsmn.py" flavour, non-causal).

    P = W_proj relu(W_lin x + b); memory = depthwise conv of P with kernel 2*lorder-1 centred
    on each step (zero padding); output = x + (P + memory).  x: (N, L, d) -> (N, L, d).
    """

    def __init__(self, input_dim: int, output_dim: int, lorder: int, hidden_size: int):
        super().__init__()
        if input_dim != output_dim:
            raise ValueError("UniDeepFsmn needs input_dim == output_dim (residual)")
        self.lorder = lorder
        self.linear = nn.Linear(input_dim, hidden_size)
        self.project = nn.Linear(hidden_size, output_dim, bias=False)
        self.conv1 = Conv2d(output_dim, output_dim, (2 * lorder - 1, 1), groups=output_dim,
                               bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.project(F.relu(self.linear(x)))  # (N, L, d)
        w = self.conv1.weight.squeeze(-1)  # (d, 1, K)
        return x + depthwise_conv1d(p, w, self.lorder - 1, plus_input=True)  # x + (P + memory)


class FSMNWrap(nn.Module):
    """UniDeepFsmn over the frequency axis of a (B, C, T, F) tensor (memory of 2*lorder-1 bins)."""

    def __init__(self, channels: int, lorder: int = 5):
        super().__init__()
        self.fsmn = UniDeepFsmn(channels, channels, lorder, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, f = x.shape
        y = x.permute(0, 2, 3, 1).reshape(b * t, f, c)  # (B*T, F, C)
        y = self.fsmn(y)
        return y.view(b, t, f, c).permute(0, 3, 1, 2)  # (B, C, T, F)


class DilatedDenseNet(nn.Module):
    """Densely connected causal-in-time dilated convs (dilation 1, 2, 4, 8) + frequency FSMNs.

    Layer i sees [out_{i-1}, ..., out_0, x] (newest first) through a (2, 3) kernel covering
    frames t - d and t (zero padding d frames on top, 1 bin on each side).  The time padding
    is done by the convolution itself (symmetric, the d extra frames at the end are dropped)
    and, without autograd, the outputs are written into one preallocated buffer instead of
    being concatenated again for every layer.
    """

    def __init__(self, depth: int = 4, in_channels: int = 64):
        super().__init__()
        self.depth = depth
        for i in range(depth):
            dil = 2**i
            setattr(self, f"conv{i + 1}", Conv2d(in_channels * (i + 1), in_channels, (2, 3),
                                                 dilation=(dil, 1), padding=(dil, 1)))
            setattr(self, f"norm{i + 1}", nn.InstanceNorm2d(in_channels, affine=True))
            setattr(self, f"prelu{i + 1}", nn.PReLU(in_channels))
            setattr(self, f"fsmn{i + 1}", FSMNWrap(in_channels))

    def _layer(self, i: int, h: torch.Tensor, t: int) -> torch.Tensor:
        out = getattr(self, f"conv{i}")(h)[:, :, :t]  # causal: drop the frames after T
        out = getattr(self, f"prelu{i}")(getattr(self, f"norm{i}")(out))
        return getattr(self, f"fsmn{i}")(out)  # (B, C, T, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, F)
        b, c, t, f = x.shape
        if torch.is_grad_enabled():
            skip = x
            for i in range(1, self.depth + 1):
                out = self._layer(i, skip, t)
                skip = torch.cat([out, skip], dim=1)  # newest first
            return out
        d = self.depth
        buf = x.new_empty(b, (d + 1) * c, t, f)  # [out_{d-2}, ..., out_0, x]
        buf[:, d * c:] = x
        for i in range(1, d + 1):
            out = self._layer(i, buf[:, (d + 1 - i) * c:], t)
            if i < d:
                buf[:, (d - i) * c:(d + 1 - i) * c] = out
        return out


class DenseEncoder(nn.Module):
    """(B, 3, T, F) -> (B, C, T, (F+1)//2)."""

    def __init__(self, in_channel: int = 3, channels: int = 64):
        super().__init__()
        self.conv_1 = nn.Sequential(
            Conv2d(in_channel, channels, (1, 1)),
            nn.InstanceNorm2d(channels, affine=True),
            nn.PReLU(channels),
        )
        self.dilated_dense = DilatedDenseNet(depth=4, in_channels=channels)
        self.conv_2 = nn.Sequential(
            Conv2d(channels, channels, (1, 3), (1, 2), padding=(0, 1)),
            nn.InstanceNorm2d(channels, affine=True),
            nn.PReLU(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_2(self.dilated_dense(self.conv_1(x)))


class SPConvTranspose2d(nn.Module):
    """Sub-pixel frequency up-sampling by r: (B, C, T, Q) -> (B, C_out, T, r*Q)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(1, 3), r: int = 2):
        super().__init__()
        self.r = r
        self.out_channels = out_channels
        # zero padding of one bin on each side (done by the convolution)
        self.conv = Conv2d(in_channels, out_channels * r, kernel_size, padding=(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)  # (B, r*C_out, T, Q)
        b, _, t, q = out.shape
        out = out.view(b, self.r, self.out_channels, t, q).permute(0, 2, 3, 4, 1)
        return out.reshape(b, self.out_channels, t, q * self.r)  # bin r*f + k <- channel k*C + c


class MaskDecoder(nn.Module):
    """(B, C, T, Q) -> unbounded magnitude mask (B, 1, T, F) (per-bin PReLU output, no sigmoid)."""

    def __init__(self, num_features: int = 201, num_channel: int = 64, out_channel: int = 1):
        super().__init__()
        self.dense_block = DilatedDenseNet(depth=4, in_channels=num_channel)
        self.sub_pixel = SPConvTranspose2d(num_channel, num_channel, (1, 3), 2)
        self.conv_1 = Conv2d(num_channel, out_channel, (1, 2))
        self.norm = nn.InstanceNorm2d(out_channel, affine=True)
        self.prelu = nn.PReLU(out_channel)
        self.final_conv = Conv2d(out_channel, out_channel, (1, 1))
        self.prelu_out = nn.PReLU(num_features, init=-0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sub_pixel(self.dense_block(x))  # (B, C, T, 2Q)
        x = self.conv_1(x)  # (B, 1, T, F)
        x = self.final_conv(self.prelu(self.norm(x)))
        # frequency as the PReLU channel axis
        x = self.prelu_out(x.permute(0, 3, 2, 1).squeeze(-1))  # (B, F, T)
        return x.permute(0, 2, 1).unsqueeze(1)  # (B, 1, T, F)


class ComplexDecoder(nn.Module):
    """(B, C, T, Q) -> complex residual (B, 2, T, F)."""

    def __init__(self, num_channel: int = 64):
        super().__init__()
        self.dense_block = DilatedDenseNet(depth=4, in_channels=num_channel)
        self.sub_pixel = SPConvTranspose2d(num_channel, num_channel, (1, 3), 2)
        self.prelu = nn.PReLU(num_channel)
        self.norm = nn.InstanceNorm2d(num_channel, affine=True)
        self.conv = Conv2d(num_channel, 2, (1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sub_pixel(self.dense_block(x))
        x = self.prelu(self.norm(x))
        return self.conv(x)


class SELayer(nn.Module):
    """Squeeze-excitation with average and max pooling over (T, Q): y = (s_avg + s_max) * x."""

    def __init__(self, channels: int, reduction: int = 1):
        super().__init__()
        hidden = channels // reduction
        self.avg_pool_layer = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )
        self.max_pool_layer = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, Q)
        s_avg = torch.sigmoid(self.avg_pool_layer(x.mean(dim=(2, 3))))  # (B, C)
        s_max = torch.sigmoid(self.max_pool_layer(x.amax(dim=(2, 3))))  # (B, C)
        return (s_avg + s_max)[:, :, None, None] * x


# --------------------------------------------------------------------------------------------
# MossFormer (gated single-head attention unit with joint quadratic / cross / linear attention)
# --------------------------------------------------------------------------------------------
class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer) with rotary-embedding-torch 0.8.3 semantics.

    ``freqs[i] = 1 / 10000**(2i/dim)`` is a frozen parameter (it is in the release's state
    dict).  Positions 0..n-1 give angles p * freqs[i] computed in float32 (as the reference),
    applied to interleaved feature pairs (2i, 2i+1) of the first ``dim`` features.
    """

    def __init__(self, dim: int = 32, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)
        self.dim = dim
        self._cache: dict = {}

    def cos_sin(self, n: int, dtype: torch.dtype, device: torch.device):
        """(n, dim) cos and sin tables, each frequency repeated for its feature pair."""
        key = (n, dtype, device, self.freqs._version, self.freqs.data_ptr())
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        # ordinary tensors even under torch.inference_mode(): the cache outlives the call,
        # and an inference tensor cannot be saved for a later training backward
        with torch.inference_mode(False), torch.no_grad():
            pos = torch.arange(n, device=device, dtype=torch.float32)
            ang = pos[:, None] * self.freqs.detach().float()[None, :]  # float32 angles (n, dim/2)
            ang = ang.repeat_interleave(2, dim=-1).to(dtype)  # (n, dim)
            out = (ang.cos(), ang.sin())
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[key] = out
        return out

    def rotate(self, x: torch.Tensor, seq_dim: int) -> torch.Tensor:
        """Rotate the first ``dim`` features of x (..., n, ..., d) by the position along seq_dim."""
        n = x.shape[seq_dim]
        cos, sin = self.cos_sin(n, x.dtype, x.device)
        shape = [1] * x.dim()
        shape[seq_dim] = n
        shape[-1] = self.dim
        cos, sin = cos.view(shape), sin.view(shape)
        mid = x[..., : self.dim]
        pairs = mid.unflatten(-1, (-1, 2))
        rot = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        mid = mid * cos + rot * sin
        if torch.is_inference_mode_enabled() and x.is_inference():
            x[..., : self.dim] = mid  # x is a fresh tensor of the caller: no copy of the rest
            return x
        return torch.cat((mid, x[..., self.dim:]), dim=-1)


class OffsetScale(nn.Module):
    """Per-head affine maps of a shared query/key projection: (N, n, d) -> heads x (N, n, d)."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(heads, dim))
        self.beta = nn.Parameter(torch.zeros(heads, dim))
        nn.init.normal_(self.gamma, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta, x.unsqueeze(-2), self.gamma)  # (N, n, heads, d)


class MossFormer(nn.Module):
    """MossFormer gated attention unit over one axis of a (B, A, n, C) tensor.

    Args (paper: MossFormer, Zhao & Ma, ICASSP 2023; as configured in MossFormerGAN):
        dim: C, the feature size of the sequence (64).
        qk_dim: shared query/key size (128); ``OffsetScale`` derives 4 heads
            (quad_q, lin_q, quad_k, lin_k) from it.
        hidden_dim: size of v and u (128; the release's ``to_hidden`` maps C -> 2*hidden).
        rotary_dim: rotated features (32).
        dropout: dropout of the FFConvM units and of the attention maps (0.1).
        shift_tokens: delay the first C/2 features by one step (token shift).
        checkpoint_attention: with autograd, recompute the relu^2 maps block by block in
            backward instead of keeping them (see relu_square_attention).

    forward: x (B, A, n, C) -> (B*A, n, C); attention is along n (quadratic over the whole
    sequence + linear), plus a "cross" relu^2 attention along A (diagonal excluded).
    """

    def __init__(self, dim: int = 64, qk_dim: int = 128, hidden_dim: int = 128,
                 rotary_dim: int = 32, dropout: float = 0.1, shift_tokens: bool = True,
                 checkpoint_attention: bool = True):
        super().__init__()
        self.shift_tokens = shift_tokens
        self.checkpoint_attention = checkpoint_attention
        self.hidden_dim = hidden_dim
        self.rotary_pos_emb = RotaryEmbedding(dim=min(rotary_dim, qk_dim))
        self.attn_dropout = dropout
        self.to_hidden = FFConvM(dim, hidden_dim * 2, dropout)
        self.to_qk = FFConvM(dim, qk_dim, dropout)
        self.qk_offset_scale = OffsetScale(qk_dim, heads=4)
        self.to_out = FFConvM(hidden_dim, dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"MossFormer expects (B, A, n, C), got shape {tuple(x.shape)}")
        b, a, n, c = x.shape
        x = x.reshape(b * a, n, c)  # (N, n, C)
        if self.shift_tokens:
            half = c // 2
            shifted = F.pad(x[:, :-1, :half], (0, 0, 1, 0))  # delay by one step
            xs = torch.cat((shifted, x[:, :, half:]), dim=-1)
        else:
            xs = x
        vu = self.to_hidden(xs)  # (N, n, 2H) = [v | u]
        qk = self.to_qk(xs)  # (N, n, d)
        heads = self.qk_offset_scale(qk)  # (N, n, 4, d)
        heads = self.rotary_pos_emb.rotate(heads, seq_dim=1)
        quad_q, lin_q, quad_k, lin_k = heads.unbind(dim=2)  # (N, n, d) each
        att = self._attention(quad_q, lin_q, quad_k, lin_k, vu, b, a)  # (N, n, 2H)
        h = self.hidden_dim
        v, u = vu[..., :h], vu[..., h:]
        att_v, att_u = att[..., :h], att[..., h:]
        if att.requires_grad:
            o = (att_u * v) * torch.sigmoid(att_v * u)  # (N, n, H)
        else:  # same arithmetic in place in the attention buffer
            o = att_u.mul_(v).mul_(att_v.mul_(u).sigmoid_())
        return x + self.to_out(o)  # (N, n, C)

    def _attention(self, quad_q, lin_q, quad_k, lin_k, vu, b: int, a: int) -> torch.Tensor:
        n = quad_q.shape[1]
        drop, training = self.attn_dropout, self.training
        # linear attention (non-causal): lin_q (lin_k^T [v|u] / n)
        kv = torch.bmm(lin_k.transpose(1, 2), vu) / n  # (N, d, 2H)
        out = torch.bmm(lin_q, kv)  # (N, n, 2H)
        # quadratic attention over the whole sequence
        ckpt = self.checkpoint_attention
        out = relu_square_attention(quad_q, quad_k, vu, 1.0 / n, dropout=drop, training=training,
                                    out=out, checkpoint_blocks=ckpt)
        # cross attention along A (rows of the same batch item and sequence position)
        def to_cross(t):  # (B*A, n, e) -> (B*n, A, e)
            return t.view(b, a, n, t.shape[-1]).transpose(1, 2).reshape(b * n, a, t.shape[-1])

        cross = relu_square_attention(to_cross(quad_q), to_cross(quad_k), to_cross(vu), 1.0 / a,
                                      zero_diag=True, dropout=drop, training=training,
                                      checkpoint_blocks=ckpt)
        cross = cross.view(b, n, a, -1).transpose(1, 2).reshape(b * a, n, -1)
        if out.requires_grad or cross.requires_grad:
            return out + cross
        return out.add_(cross)


# --------------------------------------------------------------------------------------------
# SyncANet block
# --------------------------------------------------------------------------------------------
class SyncANetBlock(nn.Module):
    """Intra-frame (frequency) + inter-frame (time) MossFormer paths + full-band attention.

    Args (MossFormerGAN's SyncANet; TF-GridNet-style block):
        emb_dim: C (64).
        n_freqs: Q, frequency bins after the encoder (101).
        hidden: FFConvM / FSMN size of the sub-band paths (128).
        n_head: full-band attention heads (4).
        approx_qk_dim: full-band query/key size; per head E = ceil(approx_qk_dim / Q) channels.
        qk_dim, mf_hidden: MossFormer query/key and v/u sizes (128 each by default = 2C).
        eps: LayerNormalization eps.
        checkpoint_attention: see MossFormer.
    The release uses kernel 2 / hop 1 for the sub-band unfolding (fixed here).
    x: (B, C, T, Q) -> (B, C, T, Q).
    """

    def __init__(self, emb_dim: int = 64, n_freqs: int = 101, hidden: int = 128, n_head: int = 4,
                 approx_qk_dim: int = 512, qk_dim: int = 128, mf_hidden: int = 128,
                 rotary_dim: int = 32, dropout: float = 0.1, eps: float = 1e-5,
                 checkpoint_attention: bool = True):
        super().__init__()
        c, ks = emb_dim, 2
        in_ch = c * ks
        self.n_head = n_head
        self.Fconv = Conv2d(c, in_ch, kernel_size=(1, ks), groups=c)
        self.intra_norm = LayerNormalization4D(c, eps=eps)
        self.intra_to_u = FFConvM(in_ch, hidden, dropout)
        self.intra_to_v = FFConvM(in_ch, hidden, dropout)
        self.intra_rnn = nn.ModuleList([UniDeepFsmn(hidden, hidden, 20, hidden)])
        self.intra_mossformer = MossFormer(c, qk_dim, mf_hidden, rotary_dim, dropout,
                                           checkpoint_attention=checkpoint_attention)
        self.intra_linear = ConvTranspose1d(hidden, c, ks, stride=1)
        self.intra_se = SELayer(c, 1)

        self.inter_norm = LayerNormalization4D(c, eps=eps)
        self.inter_to_u = FFConvM(in_ch, hidden, dropout)
        self.inter_to_v = FFConvM(in_ch, hidden, dropout)
        self.inter_rnn = nn.ModuleList([UniDeepFsmn(hidden, hidden, 20, hidden)])
        self.inter_mossformer = MossFormer(c, qk_dim, mf_hidden, rotary_dim, dropout,
                                           checkpoint_attention=checkpoint_attention)
        self.inter_linear = ConvTranspose1d(hidden, c, ks, stride=1)
        self.inter_se = SELayer(c, 1)

        e = math.ceil(approx_qk_dim / n_freqs)
        if c % n_head:
            raise ValueError(f"emb_dim {c} must be divisible by n_head {n_head}")
        for h in range(n_head):
            self.add_module(f"attn_conv_Q_{h}", self._proj(c, e, n_freqs, eps))
            self.add_module(f"attn_conv_K_{h}", self._proj(c, e, n_freqs, eps))
            self.add_module(f"attn_conv_V_{h}", self._proj(c, c // n_head, n_freqs, eps))
        self.attn_concat_proj = self._proj(c, c, n_freqs, eps)

    @staticmethod
    def _proj(c_in, c_out, n_freqs, eps):
        return nn.Sequential(Conv2d(c_in, c_out, 1), nn.PReLU(),
                             LayerNormalization4DCF(c_out, n_freqs, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, q = x.shape
        # ---- intra-frame (frequency) path
        h = self.Fconv(self.intra_norm(x))  # (B, 2C, T, Q-1)
        h = h.permute(0, 2, 3, 1).reshape(b * t, q - 1, 2 * c)  # (B*T, Q-1, 2C)
        u = self.intra_rnn[0](self.intra_to_u(h))  # (B*T, Q-1, H)
        h = self.intra_to_v(h) * u
        h = self.intra_linear(h.transpose(1, 2))  # (B*T, C, Q)
        h = h.transpose(1, 2).reshape(b, t, q, c)  # (B, T, Q, C)
        h = self.intra_mossformer(h)  # (B*T, Q, C)
        h = h.view(b, t, q, c).permute(0, 3, 1, 2)  # (B, C, T, Q)
        x = self.intra_se(h) + x

        # ---- inter-frame (time) path
        h = self.inter_norm(x).permute(0, 3, 2, 1)  # (B, Q, T, C)
        h = h.reshape(b * q, t, c)
        # unfold kernel 2 over time: feature 2c + k = channel c at frame t + k
        h = torch.stack((h[:, :-1], h[:, 1:]), dim=-1).reshape(b * q, t - 1, 2 * c)
        u = self.inter_rnn[0](self.inter_to_u(h))  # (B*Q, T-1, H)
        h = self.inter_to_v(h) * u
        h = self.inter_linear(h.transpose(1, 2))  # (B*Q, C, T)
        h = h.transpose(1, 2).reshape(b, q, t, c)  # (B, Q, T, C)
        h = self.inter_mossformer(h)  # (B*Q, T, C)
        h = h.view(b, q, t, c).permute(0, 3, 2, 1)  # (B, C, T, Q)
        x = self.inter_se(h) + x

        # ---- full-band self-attention over frames (heads stacked head-major on the batch)
        qs = torch.cat([self._modules[f"attn_conv_Q_{i}"](x) for i in range(self.n_head)], 0)
        ks = torch.cat([self._modules[f"attn_conv_K_{i}"](x) for i in range(self.n_head)], 0)
        vs = torch.cat([self._modules[f"attn_conv_V_{i}"](x) for i in range(self.n_head)], 0)
        cv = vs.shape[1]
        qs = qs.transpose(1, 2).flatten(2)  # (nh*B, T, E*Q)
        ks = ks.transpose(1, 2).flatten(2)
        vs = vs.transpose(1, 2).flatten(2)  # (nh*B, T, cv*Q)
        scale = 1.0 / math.sqrt(qs.shape[-1])
        att = torch.softmax(torch.bmm(qs, ks.transpose(1, 2)) * scale, dim=-1)  # (nh*B, T, T)
        vs = torch.bmm(att, vs)  # (nh*B, T, cv*Q)
        vs = vs.view(self.n_head, b, t, cv, q).permute(1, 0, 3, 2, 4)  # (B, nh, cv, T, Q)
        vs = vs.reshape(b, self.n_head * cv, t, q)  # channel h*cv + c
        return self.attn_concat_proj(vs) + x
