"""Speed kernels of MossFormerGAN_SE_16K (the generator; the discriminator is left plain).

``accelerate(model)`` re-classes submodules of a reference :class:`MossFormerGAN`
(se/models/mossformer_gan.py, se/models/mossformer_gan_blocks.py) into the subclasses below:
the same module objects, the same parameters and state-dict keys, the same function (float
rounding aside), computed faster.  ``SE_KERNELS=reference`` keeps the plain forward (see
se/models/kernels/__init__.py).  There are no weight caches, so nothing needs invalidating
on optimiser steps, ``.to()``, ``load_state_dict`` or train()/eval().

Kernels (each tested against the plain forward in tests/test_kernels_mossformer_gan.py):
* :func:`relu_square_attention`: MossFormer's relu(q k^T / n)^2 v over blocks of queries.
  With autograd each block runs under ``torch.utils.checkpoint`` so the n x n maps are
  never all kept for backward; without, the blocks are squared in place and accumulated
  into one output buffer, and long float32 CPU sequences use oneDNN's AVX-512 products
  (se/models/kernels/onednn.py; MKL's were half as fast on the AMD CPUs we measured).
* :class:`FastMossFormer`: v and u share one attention pass, the quadratic, cross and linear
  outputs share one buffer, and without autograd the rotation and gating run in place.
* :func:`depthwise_conv1d` (ConvModule, FSMN memory): the sequence stays features-last (one
  channels-last 2-D convolution, no transposed copies, about 5x faster than conv1d on the
  transposed tensor) and ``x + conv(x)`` is one convolution with the centre tap + 1.
* :class:`FastDilatedDenseNet`: the causal padding is done by the convolution, and without
  autograd the dense skip tensor is one preallocated buffer instead of a concatenation per
  layer.
* :func:`fast_dropout`: inverted dropout with the keep mask drawn by torch.rand (about 1.5x
  faster than F.dropout's bernoulli_ kernel, ~12 % of a CPU training step).  Same
  distribution, not the same random numbers as F.dropout.
* float64 convolutions (:class:`FastConv2d`, :class:`FastConvTranspose1d`): PyTorch has no
  fast CPU kernel for float64 convolutions (oneDNN is float32-only; the fallback loops over
  the groups with im2col), which made a float64 forward (the parity check) take minutes; on
  float64 CPU tensors the same sums are evaluated tap by tap with matrix products.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from se.models import mossformer_gan_blocks as blocks
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
# dropout
# --------------------------------------------------------------------------------------------
def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with the distribution of F.dropout (torch.rand mask on the CPU)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    mask = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))  # 0 or 1/(1-p), P(keep) = 1 - p
    return x * mask


class FastDropout(nn.Dropout):
    """nn.Dropout computed by :func:`fast_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


# --------------------------------------------------------------------------------------------
# convolutions
# --------------------------------------------------------------------------------------------
def _float64_cpu(x: torch.Tensor) -> bool:
    return x.dtype == torch.float64 and x.device.type == "cpu"


def depthwise_conv1d_channels_last(x: torch.Tensor, w: torch.Tensor, padding: int) -> torch.Tensor:
    """Depthwise conv of (N, n, d) sequences as one channels-last 2-D convolution -> (N, n', d)."""
    # (N, n, d) viewed as an (N, d, n, 1) image with channels-last strides: no copy in, and
    # the channels-last output is again a contiguous (N, n', d) tensor
    xc = x.unsqueeze(2).permute(0, 3, 1, 2)  # (N, d, n, 1)
    y = F.conv2d(xc, w.unsqueeze(-1), padding=(padding, 0), groups=w.shape[0])  # (N, d, n', 1)
    return y.squeeze(-1).transpose(1, 2)


def depthwise_conv1d_banded(x: torch.Tensor, w: torch.Tensor, padding: int) -> torch.Tensor:
    """The same convolution as matrix products (for float64, which has no fast conv kernel)."""
    d, _, k = w.shape
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


def depthwise_conv1d(x: torch.Tensor, w: torch.Tensor, padding: int,
                     plus_input: bool = False) -> torch.Tensor:
    """Depthwise conv along the sequence, stride 1, zero padding, no bias.

    x (N, n, d) (features last, as the sequences are stored), w (d, 1, K) -> (N, n', d).
    ``plus_input``: return x + conv(x) ('same' padding), computed as ONE convolution whose
    centre tap is w + 1 (saves a pass over the tensor; equal up to float rounding).
    """
    k = w.shape[-1]
    if plus_input:
        if 2 * padding != k - 1:
            raise ValueError("plus_input needs 'same' padding")
        delta = torch.zeros_like(w)
        delta[:, :, padding] = 1.0
        w = w + delta
    if _float64_cpu(x):
        return depthwise_conv1d_banded(x, w, padding)
    return depthwise_conv1d_channels_last(x, w, padding)


def conv2d_taps(x, w, b, stride, padding, dilation, groups):
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


def conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """F.conv2d (tuple arguments), by :func:`conv2d_taps` on float64 CPU tensors."""
    if _float64_cpu(x):
        return conv2d_taps(x, w, b, stride, padding, dilation, groups)
    return F.conv2d(x, w, b, stride, padding, dilation, groups)


class FastConv2d(nn.Conv2d):
    """nn.Conv2d with the float64 CPU path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.padding, tuple) and self.padding_mode == "zeros":
            return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                          self.groups)
        return super().forward(x)


class FastConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d (stride 1, no padding) with the float64 CPU path."""

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if (_float64_cpu(x) and output_size is None and self.stride == (1,) and self.padding == (0,)
                and self.output_padding == (0,) and self.dilation == (1,) and self.groups == 1):
            k = self.kernel_size[0]
            w = self.weight.transpose(0, 1).flip(-1).unsqueeze(-1)  # (O, C, K, 1)
            y = conv2d_taps(x.unsqueeze(-1), w, self.bias, (1, 1), (k - 1, 0), (1, 1), 1)
            return y.squeeze(-1)
        return super().forward(x, output_size)


class FastConvModule(blocks.ConvModule):
    """x + depthwise_conv(x) as one features-last convolution (centre tap + 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, n, d)
        conv = self.sequential[1].conv
        return depthwise_conv1d(x, conv.weight, conv.padding[0], plus_input=True)


class FastUniDeepFsmn(blocks.UniDeepFsmn):
    """FSMN with the memory (P + conv(P)) as one features-last convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, d)
        p = self.project(F.relu(self.linear(x)))  # (N, L, d)
        w = self.conv1.weight.squeeze(-1)  # (d, 1, K)
        return x + depthwise_conv1d(p, w, self.lorder - 1, plus_input=True)  # x + (P + memory)


class FastDilatedDenseNet(blocks.DilatedDenseNet):
    """Causal padding inside the convolution; one skip buffer without autograd."""

    def _layer(self, i: int, h: torch.Tensor, t: int) -> torch.Tensor:
        conv = getattr(self, f"conv{i}")
        dil = conv.dilation[0]
        # symmetric padding of dil frames; the dil frames computed after T are dropped
        out = conv2d(h, conv.weight, conv.bias, conv.stride, (dil, 1), conv.dilation)[:, :, :t]
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


# --------------------------------------------------------------------------------------------
# relu^2 attention
# --------------------------------------------------------------------------------------------
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


def attention_checkpointed(q, k, v, zero_diag: bool, dropout: float, training: bool, m: int):
    """With autograd: blocks of ``m`` queries, each recomputed in backward (q scaled) -> (N, n, e)."""
    if m >= q.shape[1]:  # one block: nothing to save by checkpointing
        return _relu_square_block(q, k, v, 0, zero_diag, dropout, training)
    # split (one concatenation of the query gradients in backward, not one zero-filled
    # full-size gradient per block as with slicing); RNG state is preserved by checkpoint,
    # so the dropout masks are replayed
    return torch.cat([
        checkpoint(_relu_square_block, qb, k, v, i * m, zero_diag, dropout, training,
                   use_reentrant=False)
        for i, qb in enumerate(q.split(m, dim=1))
    ], dim=1)


def attention_rowwise(q, k, v, out, m: int, zero_diag: bool, dropout: float) -> torch.Tensor:
    """Without autograd: one row at a time, blocks of ``m`` queries, products by
    :func:`mm_nt` (oneDNN for float32 CPU tensors); accumulated into ``out`` (N, n, e)."""
    # rows must be dense (nk, d) / (nk, e) matrices: strided ones (the cross layout) made
    # oneDNN reorder on every call, orders of magnitude slower (one copy of the whole tensors
    # was faster than per-row copies)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    n = q.shape[1]
    for r in range(q.shape[0]):
        kr, vt = k[r], v[r].t()
        for s in range(0, n, m):
            a = mm_nt(q[r, s:s + m], kr)  # (m, nk)
            if zero_diag:
                a.diagonal(offset=s).zero_()
            a = fast_dropout(a.relu_().square_(), dropout, dropout > 0)
            out[r, s:s + m] += mm_nt(a, vt)
    return out


def attention_batched(q, k, v, out, m: int, rows: int, zero_diag: bool, dropout: float) -> torch.Tensor:
    """Without autograd: blocks of ``rows`` x ``m`` queries by bmm, accumulated into ``out``."""
    n = q.shape[1]
    for r in range(0, q.shape[0], rows):
        kr, vr = k[r:r + rows], v[r:r + rows]
        for s in range(0, n, m):
            a = _relu_square_scores(q[r:r + rows, s:s + m], kr, s, zero_diag, inplace=True)
            a = fast_dropout(a, dropout, dropout > 0)
            out[r:r + rows, s:s + m].baddbmm_(a, vr)
    return out


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
    added to it (in place when no gradient is needed).  ``zero_diag``: no self term.

    Without autograd the scores are computed for blocks of (rows x queries) of about
    ``block_elements`` elements (default INFERENCE_BLOCK_ELEMENTS), squared in place and
    accumulated into ``out`` (no full map of all rows is materialised); float32 CPU sequences
    of at least ONEDNN_MIN_KEYS keys go row by row through oneDNN, others through bmm.  With
    autograd every block of queries (default ATTENTION_BLOCK_ELEMENTS over all rows) runs under
    ``torch.utils.checkpoint``: only q, k, v are kept for backward, not the (N, n, n) maps
    (``checkpoint_blocks=False``: one block, maps kept, e.g. when the caller is itself
    recomputed by a checkpoint).
    """
    N, n, _ = q.shape
    nk = k.shape[1]
    q = q * scale
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        block_elements = block_elements or ATTENTION_BLOCK_ELEMENTS
        m = max(16, min(n, block_elements // max(1, N * nk))) if checkpoint_blocks else n
        res = attention_checkpointed(q, k, v, zero_diag, dropout, training, m)
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
    p = dropout if training else 0.0
    if nk >= ONEDNN_MIN_KEYS and use_onednn(q, k, v):
        return attention_rowwise(q, k, v, out, m, zero_diag, p)
    rows = max(1, min(N, block_elements // (m * nk)))
    return attention_batched(q, k, v, out, m, rows, zero_diag, p)


# --------------------------------------------------------------------------------------------
# MossFormer
# --------------------------------------------------------------------------------------------
class FastMossFormer(blocks.MossFormer):
    """MossFormer with blocked attention into one buffer, in-place rotation and gating.

    ``checkpoint_attention`` (set by :func:`accelerate` from the generator's
    ``checkpoint_blocks``): with autograd, recompute the relu^2 maps block by block in
    backward instead of keeping them (see :func:`relu_square_attention`).
    """

    checkpoint_attention = True

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
        rope = self.rotary_pos_emb
        if torch.is_inference_mode_enabled() and heads.is_inference():
            # heads is a fresh tensor of this call: rotate its first features in place
            heads[..., :rope.dim] = rope.rotated_part(heads, seq_dim=1)
        else:
            heads = rope.rotate(heads, seq_dim=1)
        quad_q, lin_q, quad_k, lin_k = heads.unbind(dim=2)  # (N, n, d) each
        att = self.attention(quad_q, lin_q, quad_k, lin_k, vu, b, a)  # (N, n, 2H)
        h = self.hidden_dim
        v, u = vu[..., :h], vu[..., h:]
        att_v, att_u = att[..., :h], att[..., h:]
        if att.requires_grad:
            o = (att_u * v) * torch.sigmoid(att_v * u)  # (N, n, H)
        else:  # same arithmetic in place in the attention buffer
            o = att_u.mul_(v).mul_(att_v.mul_(u).sigmoid_())
        return x + self.to_out(o)  # (N, n, C)

    def attention(self, quad_q, lin_q, quad_k, lin_k, vu, b: int, a: int) -> torch.Tensor:
        n = quad_q.shape[1]
        drop, training, ckpt = self.attn_dropout, self.training, self.checkpoint_attention
        # linear attention (non-causal): lin_q (lin_k^T [v|u] / n)
        kv = torch.bmm(lin_k.transpose(1, 2), vu) / n  # (N, d, 2H)
        out = torch.bmm(lin_q, kv)  # (N, n, 2H)
        # quadratic attention over the whole sequence, added into out
        out = relu_square_attention(quad_q, quad_k, vu, 1.0 / n, dropout=drop, training=training,
                                    out=out, checkpoint_blocks=ckpt)

        def to_cross(t):  # (B*A, n, e) -> (B*n, A, e)
            return t.view(b, a, n, t.shape[-1]).transpose(1, 2).reshape(b * n, a, t.shape[-1])

        cross = relu_square_attention(to_cross(quad_q), to_cross(quad_k), to_cross(vu), 1.0 / a,
                                      zero_diag=True, dropout=drop, training=training,
                                      checkpoint_blocks=ckpt)
        cross = cross.view(b, n, a, -1).transpose(1, 2).reshape(b * a, n, -1)  # (N, n, 2H)
        if out.requires_grad or cross.requires_grad:
            return out + cross
        return out.add_(cross)


# --------------------------------------------------------------------------------------------
# the one entry point
# --------------------------------------------------------------------------------------------
# reference class -> kernel class (exact types: an accelerated module is not re-classed)
KERNEL_CLASSES = {
    nn.Conv2d: FastConv2d,
    nn.ConvTranspose1d: FastConvTranspose1d,
    nn.Dropout: FastDropout,
    blocks.ConvModule: FastConvModule,
    blocks.UniDeepFsmn: FastUniDeepFsmn,
    blocks.DilatedDenseNet: FastDilatedDenseNet,
    blocks.MossFormer: FastMossFormer,
}


def accelerate(model: nn.Module) -> nn.Module:
    """Re-class the generator's submodules into their kernel classes (in place; returned).

    Each kernel class is a subclass of the module's class that only overrides forward, so
    the module keeps its parameters, buffers, hooks and state-dict keys: an accelerated
    model's state dict loads into a reference one and vice versa.  Idempotent.
    """
    checkpoint_attention = not getattr(model, "checkpoint_blocks", True)
    for module in model.modules():
        fast = KERNEL_CLASSES.get(type(module))
        if fast is not None:
            module.__class__ = fast
        if isinstance(module, FastMossFormer):
            module.checkpoint_attention = checkpoint_attention
    return model
