"""Building blocks of MossFormer2 (Zhao et al., "MossFormer2: Combining Transformer and
RNN-Free Recurrent Network for Enhanced Time-Domain Monaural Speech Separation", ICASSP 2024),
in the form ClearVoice's MossFormer2_SE_48K uses them.

Parity references: tests/data/clearvoice (tests/data/README.md). Attribute
names reproduce the release's state-dict keys (``mdl.0.g``, ``mdl.3.sequential.1.conv.weight``,
...); the computations are re-organised for speed, with the same results (parity tests):

* every tensor stays in (B, S, C) layout: 1x1 Conv1d's are linear maps on (B, S, C) and the
  depthwise convolutions along S run as channels-last 2-D convolutions (no transposes);
* float32 CPU matrix products run on oneDNN (AVX-512 everywhere; MKL, torch's default, is
  ~2x slower on AMD processors), through small autograd Functions;
* the four OffsetScale heads are one broadcast multiply-add, rotary angles are computed once
  per forward for all layers;
* the gated attention unit (quadratic attention in groups of 256 + linear attention + gate) is
  one autograd Function that attends directly on ``[v | u]`` (one product for both), never pads
  (the last, short group is computed at its own size: padded keys contribute exact zeros in
  the reference) and keeps only what its hand-written backward needs;
* dropout masks come from torch.rand (same law as F.dropout, cheaper);
* only the first of the two "speakers" of the output layer is computed (the second is discarded).

Shape legend: B batch, S frames (sequence), C channels, G groups, g group size (256),
D query/key dim (128), E hidden dim (2 x 1024 = [v | u]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from se.models.kernels.onednn import linear, mm_nt, use_onednn


# ----------------------------------------------------------------------------------------
# small layers
# ----------------------------------------------------------------------------------------
def _dw_conv_cl(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """(B, S, C) depthwise conv along S with a (C, 1, 1, K) kernel, as channels-last conv2d."""
    x4 = x.permute(0, 2, 1).unsqueeze(2)  # (B, C, 1, S): channels-last view, no copy
    y = F.conv2d(x4, weight, padding=(0, padding), groups=x.shape[-1])  # (B, C, 1, S) channels-last
    return y.squeeze(2).permute(0, 2, 1)  # (B, S, C)


# oneDNN's channels-last backward-weights kernel for (K, 1) kernels is fast but returns wrong
# values for K >= 33 (torch 2.11 / oneDNN 3.10; K <= 31 exact, see tests): larger kernels take
# the (B, C, S) path.
_CL_WEIGHT_GRAD_MAX_K = 31


class _DepthwiseConvSeq(torch.autograd.Function):
    """Depthwise conv along S of (B, S, C) with odd kernel K and padding (K - 1) / 2.

    forward and input gradient (correlation with the flipped kernel) run as channels-last conv2d
    on (B, C, 1, S) views; the weight gradient uses oneDNN's backward-weights kernel on the
    (B, C, S, 1) channels-last view (K <= 31) or on transposed copies.
    """

    @staticmethod
    def forward(ctx, x, weight, padding: int):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return _dw_conv_cl(x, weight.reshape(weight.shape[0], 1, 1, -1), padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _dw_grad_input(grad, weight, ctx.padding)
        if ctx.needs_input_grad[1]:
            grad_w = _dw_grad_weight(grad, x, weight, ctx.padding)
        return grad_x, grad_w, None


def _dw_grad_input(grad: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Input gradient of the depthwise conv: correlation with the flipped kernel (same padding)."""
    return _dw_conv_cl(grad, weight.reshape(weight.shape[0], 1, 1, -1).flip(-1), padding)


def _dw_grad_weight(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Weight gradient of the depthwise conv, (B, S, C) grad and input -> weight.shape."""
    C = weight.shape[0]
    K = weight.shape[2]
    mask = [False, True, False]
    if K <= _CL_WEIGHT_GRAD_MAX_K:
        grad_w = torch.ops.aten.convolution_backward(
            grad.permute(0, 2, 1).unsqueeze(3), x.permute(0, 2, 1).unsqueeze(3), weight.reshape(C, 1, K, 1),
            None, [1, 1], [padding, 0], [1, 1], False, [0, 0], C, mask)[1]
    else:
        grad_w = torch.ops.aten.convolution_backward(
            grad.transpose(1, 2).contiguous(), x.transpose(1, 2).contiguous(), weight.reshape(C, 1, K),
            None, [1], [padding], [1], False, [0], C, mask)[1]
    return grad_w.reshape(weight.shape)


def depthwise_conv_seq(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Depthwise convolution along S of a (B, S, C) tensor, zero padding ``padding`` both sides.

    weight: (C, 1, K) (Conv1d layout) or (C, 1, K, 1) (the FSMN's Conv2d layout), K = 2 padding + 1.
    The release transposes to (B, C, S) for a Conv1d; here (B, S, C) viewed as NCHW (B, C, 1, S)
    is already channels-last, which oneDNN convolves ~10x faster, without copies.
    """
    K = weight.shape[2]
    if K != 2 * padding + 1:
        raise ValueError(f"depthwise_conv_seq needs an odd kernel with 'same' padding, got K={K}, padding={padding}")
    if x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        y = F.conv1d(x.transpose(1, 2), weight.reshape(weight.shape[0], 1, K), padding=padding, groups=x.shape[-1])
        return y.transpose(1, 2)
    if x.dtype != torch.float32:  # float64 (parity tests): CPU grouped Conv1d is very slow there
        xp = F.pad(x, (0, 0, padding, padding))  # (B, S + K - 1, C)
        return torch.einsum("bsck,ck->bsc", xp.unfold(1, K, 1), weight.reshape(weight.shape[0], K))
    return _DepthwiseConvSeq.apply(x, weight, padding)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout (same distribution as F.dropout): keep with probability 1 - p, scale 1/(1-p).

    The mask comes from torch.rand (>= p), ~3x cheaper on the CPU than F.dropout's bernoulli_.
    """
    if not training or p == 0.0:
        return x
    noise = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))
    return x * noise


class ScaleNorm(nn.Module):
    """y = x / clamp(||x||_2 / sqrt(d), eps) * g with one scalar gain ``g`` (FLASH, Hua et al. 2022)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.scale = dim**-0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale  # (B, S, 1)
        return x * (self.g / norm.clamp(min=self.eps))


class DepthwiseConv1d(nn.Module):
    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2,
                              groups=channels, bias=False)


class ConvModule(nn.Module):
    """x + DWConv1d(x) along S, kernel 17, no bias (the release's ``sequential.0`` is a transpose)."""

    def __init__(self, channels: int, kernel_size: int = 17):
        super().__init__()
        self.sequential = nn.Sequential(nn.Identity(), DepthwiseConv1d(channels, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, C) -> (B, S, C)
        conv = self.sequential[1].conv
        return x + depthwise_conv_seq(x, conv.weight, conv.padding[0])


class _FFConvMCore(torch.autograd.Function):
    """Linear -> SiLU -> (h + DWConv(h)) -> dropout in one Function (float32 CPU training).

    Saves only the linear input, the pre-activation and a boolean dropout mask (SiLU is
    recomputed in backward): ~3 fewer (B, S, dim_out) tensors per FFConvM kept for backward.
    """

    @staticmethod
    def forward(ctx, xn, weight, bias, conv_weight, padding: int, p: float):
        y = torch.ops.mkldnn._linear_pointwise(xn, weight, bias, "none", [], "")  # (B, S, N)
        h = F.silu(y)
        out = _dw_conv_cl(h, conv_weight.reshape(conv_weight.shape[0], 1, 1, -1), padding).add_(h)
        del h
        keep = None
        if p > 0.0:
            keep = torch.rand_like(out).ge_(p)  # float 0/1, same law as dropout()
            out.mul_(keep).mul_(1.0 / (1.0 - p))
            keep = keep.bool()
        ctx.save_for_backward(xn, weight, y, conv_weight, keep)
        ctx.padding, ctx.p, ctx.has_bias = padding, p, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        xn, weight, y, conv_weight, keep = ctx.saved_tensors
        grad = grad.contiguous()
        if keep is not None:
            grad = grad.masked_fill(~keep, 0.0).mul_(1.0 / (1.0 - ctx.p))
        h = F.silu(y)
        grad_conv_w = _dw_grad_weight(grad, h, conv_weight, ctx.padding) if ctx.needs_input_grad[3] else None
        grad_h = _dw_grad_input(grad, conv_weight, ctx.padding).add_(grad)  # residual
        del h, grad
        grad_y = torch.ops.aten.silu_backward(grad_h, y)  # (B, S, N)
        del grad_h
        g2 = grad_y.reshape(-1, grad_y.shape[-1])  # (M, N)
        x2 = xn.reshape(-1, xn.shape[-1])  # (M, K)
        grad_x = mm_nt(g2, weight.t()).reshape(xn.shape) if ctx.needs_input_grad[0] else None
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_w = mm_nt(x2.t(), g2.t()).t() if x2.shape[1] < g2.shape[1] else mm_nt(g2.t(), x2.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b, grad_conv_w, None, None


class FFConvM(nn.Module):
    """Norm -> Linear -> SiLU -> ConvModule -> Dropout (MossFormer's convolution-augmented FFN).

    Args:
        dim_in, dim_out: feature sizes.
        norm: 'scalenorm' (FLASH layers) or 'layernorm' (gated FSMN, eps 1e-5).
        kernel_size: depthwise kernel of the ConvModule (17).
        dropout: output dropout (0.1).
    """

    def __init__(self, dim_in: int, dim_out: int, norm: str = "scalenorm", kernel_size: int = 17,
                 dropout: float = 0.1):
        super().__init__()
        norm_layer = ScaleNorm(dim_in) if norm == "scalenorm" else nn.LayerNorm(dim_in)
        self.mdl = nn.Sequential(norm_layer, nn.Linear(dim_in, dim_out), nn.SiLU(),
                                 ConvModule(dim_out, kernel_size), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, dim_in) -> (B, S, dim_out)
        norm, linear_layer, _, conv_module, drop = self.mdl
        conv = conv_module.sequential[1].conv
        xn = norm(x)  # (B, S, dim_in)
        if torch.is_grad_enabled() and use_onednn(xn, linear_layer.weight) and conv.weight.shape[2] % 2 == 1:
            p = drop.p if drop.training else 0.0
            return _FFConvMCore.apply(xn, linear_layer.weight, linear_layer.bias, conv.weight, conv.padding[0], p)
        h = linear(xn, linear_layer.weight, linear_layer.bias)  # (B, S, dim_out)
        if torch.is_grad_enabled():
            h = F.silu(h)
            return dropout(h + depthwise_conv_seq(h, conv.weight, conv.padding[0]), drop.p, drop.training)
        h = F.silu(h, inplace=True)  # inference: no copies
        return dropout(depthwise_conv_seq(h, conv.weight, conv.padding[0]).add_(h), drop.p, drop.training)


class OffsetScale(nn.Module):
    """Per-head affine maps of the shared query/key: out[..., h, :] = x * gamma[h] + beta[h]."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(heads, dim))
        self.beta = nn.Parameter(torch.zeros(heads, dim))
        nn.init.normal_(self.gamma, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, D) -> (B, S, heads, D)
        return x.unsqueeze(-2) * self.gamma + self.beta


class RotaryEmbedding(nn.Module):
    """Rotary position embedding frequencies (RoFormer, Su et al.), as rotary-embedding-torch 0.8.3
    builds them: freqs[i] = 1 / 10000^(2i/dim), a frozen parameter (it is in the checkpoints).

    One instance is shared by all FLASH layers, so ``freqs`` appears under every layer's key.
    """

    def __init__(self, dim: int = 32, theta: float = 10000.0):
        super().__init__()
        self.dim = dim
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def cos_sin(self, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of the angles p * freqs[i], (S, 1, dim/2); angles in float32 as the release."""
        pos = torch.arange(seq_len, device=self.freqs.device, dtype=torch.float32)
        angles = (pos[:, None] * self.freqs.float()[None, :]).to(dtype)  # (S, dim/2)
        return angles.cos()[:, None, :], angles.sin()[:, None, :]


def apply_rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate features 0..2R-1 of (B, S, H, D) in interleaved pairs (2i, 2i+1) by angle p * f_i.

    cos, sin: (S, 1, R). (a, b) -> (a cos - b sin, b cos + a sin); features >= 2R unchanged.
    """
    rot = cos.shape[-1] * 2
    pairs = t[..., :rot].unflatten(-1, (rot // 2, 2))  # (B, S, H, R, 2)
    a, b = pairs[..., 0], pairs[..., 1]  # (B, S, H, R)
    rotated = torch.stack((a * cos - b * sin, b * cos + a * sin), -1).flatten(-2)  # (B, S, H, 2R)
    return torch.cat((rotated, t[..., rot:]), -1)  # (B, S, H, D)


class ScaledSinuEmbedding(nn.Module):
    """Absolute sinusoidal position encoding scaled by a learned scalar: scale * [sin(p f) | cos(p f)]."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, seq_len: int) -> torch.Tensor:  # -> (S, dim)
        pos = torch.arange(seq_len, device=self.inv_freq.device).type_as(self.inv_freq)
        sinu = pos[:, None] * self.inv_freq[None, :]  # (S, dim/2)
        return torch.cat((sinu.sin(), sinu.cos()), -1) * self.scale


def group_norm_1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm(1, C) of a (B, S, C) tensor: statistics over all (S, C) of each item."""
    var, mean = torch.var_mean(x, dim=(1, 2), correction=0, keepdim=True)  # (B, 1, 1)
    return (x - mean) * torch.rsqrt(var + eps) * weight + bias


# ----------------------------------------------------------------------------------------
# gated attention unit: quadratic (local) + linear (global) attention and the output gate
# ----------------------------------------------------------------------------------------
def _groups(seq_len: int, group_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + group_size, seq_len)) for s in range(0, seq_len, group_size)]


class _GatedAttention(torch.autograd.Function):
    """o = (att_u * v) * sigmoid(att_v * u), att = quad(hidden) + lin(hidden), hidden = [v | u].

    heads: (B, S, 4, D) = rotated (quad_q, lin_q, quad_k, lin_k); hidden: (B, S, E).
    quad: per group of g positions A = relu(q k^T / g)^2 (then dropout), out = A hidden;
    lin:  out = lin_q (lin_k^T hidden / S).
    The products run per batch item (2-D oneDNN GEMMs on strided views, no copies).
    """

    @staticmethod
    def forward(ctx, heads, hidden, group_size: int, dropout_p: float):
        B, S, _, D = heads.shape
        half = hidden.shape[-1] // 2
        groups = _groups(S, group_size)
        att = torch.empty_like(hidden)  # (B, S, E)
        kvs, relus, masks = [], [], []
        for b in range(B):
            # (S, D) each, contiguous: oneDNN is slow on a second operand with padded rows
            q, lq, k, lk = heads[b].transpose(0, 1).contiguous().unbind(0)
            h = hidden[b]  # (S, E)
            kv = mm_nt(lk.t(), h.t()).div_(S)  # (D, E): lin_k^T hidden / S
            lin = mm_nt(lq, kv.t())  # (S, E): linear attention
            for s0, s1 in groups:
                r = mm_nt(q[s0:s1], k[s0:s1]).div_(group_size).relu_()  # (gj, gj)
                a = r * r
                if dropout_p > 0.0:  # same mask law as dropout()
                    mask = torch.rand_like(a).ge_(dropout_p).mul_(1.0 / (1.0 - dropout_p))
                    a.mul_(mask)
                    masks.append(mask)
                torch.add(mm_nt(a, h[s0:s1].t()), lin[s0:s1], out=att[b, s0:s1])  # quad + lin
                relus.append(r)
            kvs.append(kv)
        v, u = hidden[..., :half], hidden[..., half:]
        att_v, att_u = att[..., :half], att[..., half:]
        out = torch.sigmoid(att_v * u).mul_(att_u).mul_(v)  # (B, S, E/2)
        ctx.save_for_backward(heads, hidden, att, *kvs, *relus, *masks)
        ctx.group_size = group_size
        return out

    @staticmethod
    def backward(ctx, d_out):
        heads, hidden, att, *rest = ctx.saved_tensors
        B, S, _, D = heads.shape
        g = ctx.group_size
        groups = _groups(S, g)
        kvs, relus, masks = rest[:B], rest[B : B + B * len(groups)], rest[B + B * len(groups) :]
        half = hidden.shape[-1] // 2
        v, u = hidden[..., :half], hidden[..., half:]
        att_v, att_u = att[..., :half], att[..., half:]
        # output gate
        sig = torch.sigmoid(att_v * u)  # (B, S, E/2)
        t = d_out * sig
        d_att = torch.empty_like(att)  # (B, S, E)
        d_hidden = torch.empty_like(hidden)
        torch.mul(t, v, out=d_att[..., half:])  # d att_u
        dv = torch.mul(t, att_u, out=d_hidden[..., :half])  # d v (direct)
        dz = dv * v * (1.0 - sig)  # d (att_v * u)
        torch.mul(dz, u, out=d_att[..., :half])  # d att_v
        torch.mul(dz, att_v, out=d_hidden[..., half:])  # d u (direct)
        del t, dz, sig
        d_heads = torch.empty_like(heads)  # (B, S, 4, D)
        for b in range(B):
            q, lq, k, lk = heads[b].transpose(0, 1).contiguous().unbind(0)  # (S, D) each
            d_hb = torch.empty(4, S, D, dtype=heads.dtype, device=heads.device)
            dq, dlq, dk, dlk = d_hb.unbind(0)
            h, da, dh = hidden[b], d_att[b], d_hidden[b]  # (S, E)
            kv = kvs[b]  # (D, E)
            # linear attention: att += lq kv, kv = lk^T h / S
            d_kv = mm_nt(lq.t(), da.t())  # (D, E)
            dlq.copy_(mm_nt(da, kv))  # (S, D)
            dlk.copy_(mm_nt(h, d_kv).div_(S))  # (S, D)
            dh.add_(mm_nt(lk, d_kv.t()), alpha=1.0 / S)
            # quadratic attention per group
            for j, (s0, s1) in enumerate(groups):
                r = relus[b * len(groups) + j]  # relu(q k^T / g), (gj, gj)
                a = r * r
                if masks:
                    mask = masks[b * len(groups) + j]
                    a.mul_(mask)
                dh[s0:s1].add_(mm_nt(a.t(), da[s0:s1].t()))  # A^T d_att
                d_a = mm_nt(da[s0:s1], h[s0:s1])  # (gj, gj)
                if masks:
                    d_a.mul_(mask)
                d_sim = d_a.mul_(r).mul_(2.0 / g)  # d relu(x)^2 = 2 relu(x) dx; 1/g of the scaling
                dq[s0:s1].copy_(mm_nt(d_sim, k[s0:s1].t()))
                dk[s0:s1].copy_(mm_nt(d_sim.t(), q[s0:s1].t()))
            d_heads[b].copy_(d_hb.transpose(0, 1))
        return d_heads, d_hidden, None, None


def gated_attention(heads: torch.Tensor, hidden: torch.Tensor, group_size: int, dropout_p: float) -> torch.Tensor:
    """See :class:`_GatedAttention`; (B, S, 4, D), (B, S, E) -> (B, S, E/2).

    Under autocast (bf16 training) the hand-written backward runs in float32."""
    if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return _GatedAttention.apply(heads.float(), hidden.float(), group_size, dropout_p)
    return _GatedAttention.apply(heads, hidden, group_size, dropout_p)


def gated_attention_reference(heads, hidden, group_size: int) -> torch.Tensor:
    """Plain-autograd, padded version of :func:`gated_attention` (eval, no dropout); for tests."""
    B, S, _, D = heads.shape
    half = hidden.shape[-1] // 2
    q, lq, k, lk = heads.unbind(2)
    pad = (-S) % group_size
    G = (S + pad) // group_size
    qp, kp, hp = (F.pad(t, (0, 0, 0, pad)).reshape(B, G, group_size, -1) for t in (q, k, hidden))
    attn = F.relu(qp @ kp.transpose(-1, -2) / group_size) ** 2  # (B, G, g, g)
    quad = (attn @ hp).reshape(B, G * group_size, -1)[:, :S]
    lin = lq @ (lk.transpose(1, 2) @ hidden / S)
    att = quad + lin
    v, u = hidden[..., :half], hidden[..., half:]
    return (att[..., half:] * v) * torch.sigmoid(att[..., :half] * u)


# ----------------------------------------------------------------------------------------
# MossFormer2 layers
# ----------------------------------------------------------------------------------------
class FLASHShareAFFConvM(nn.Module):
    """MossFormer's gated attention layer (FLASH, Hua et al. 2022, with convolutional FFNs).

    Args:
        dim: model width (512).
        group_size: quadratic-attention chunk (256).
        query_key_dim: shared query/key size D (128).
        expansion_factor: hidden = dim * expansion_factor = [v | u] (4 -> 2 x 1024).
        dropout: dropout of the FFConvM outputs and of the attention weights (0.1).
        rotary_pos_emb: the shared :class:`RotaryEmbedding`.
        shift_tokens: delay the first half of the channels by one frame (True).
    """

    def __init__(self, dim: int, group_size: int = 256, query_key_dim: int = 128,
                 expansion_factor: float = 4.0, dropout: float = 0.1,
                 rotary_pos_emb: RotaryEmbedding | None = None, shift_tokens: bool = True,
                 kernel_size: int = 17):
        super().__init__()
        hidden_dim = int(dim * expansion_factor)
        self.rotary_pos_emb = rotary_pos_emb
        self.group_size = group_size
        self.shift_tokens = shift_tokens
        self.attn_dropout = dropout
        self.to_hidden = FFConvM(dim, hidden_dim, "scalenorm", kernel_size, dropout)
        self.to_qk = FFConvM(dim, query_key_dim, "scalenorm", kernel_size, dropout)
        self.qk_offset_scale = OffsetScale(query_key_dim, heads=4)
        self.to_out = FFConvM(hidden_dim // 2, dim, "scalenorm", kernel_size, dropout)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # x: (B, S, C); rotary: cos, sin (S, 1, R)
        xs = x
        if self.shift_tokens:
            half = x.shape[-1] // 2
            xs = torch.cat((F.pad(x[..., :half], (0, 0, 1, -1)), x[..., half:]), -1)  # (B, S, C)
        hidden = self.to_hidden(xs)  # (B, S, E) = [v | u]
        heads = self.qk_offset_scale(self.to_qk(xs))  # (B, S, 4, D)
        heads = apply_rotary(heads, *rotary)  # (B, S, 4, D)
        p = self.attn_dropout if self.training else 0.0
        out = gated_attention(heads, hidden, self.group_size, p)  # (B, S, E/2)
        return x + self.to_out(out)  # (B, S, C)


class UniDeepFsmn(nn.Module):
    """Feedforward sequential memory (FSMN, Zhang et al. 2015), non-causal flavour of MossFormer2:
    P = W_proj ReLU(W x + b); out = x + P + DWConv_{2*lorder-1}(P) (zero padding lorder-1 both sides).
    """

    def __init__(self, input_dim: int, output_dim: int, lorder: int = 20, hidden_size: int = 256):
        super().__init__()
        self.lorder = lorder
        self.linear = nn.Linear(input_dim, hidden_size)
        self.project = nn.Linear(hidden_size, output_dim, bias=False)
        self.conv1 = nn.Conv2d(output_dim, output_dim, (2 * lorder - 1, 1), groups=output_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, C) -> (B, S, C)
        p = linear(F.relu(linear(x, self.linear.weight, self.linear.bias)), self.project.weight)  # (B, S, C)
        return x + p + depthwise_conv_seq(p, self.conv1.weight, self.lorder - 1)


class GatedFSMN(nn.Module):
    """g = to_v(z) * fsmn(to_u(z)) + z: the RNN-free recurrent branch of MossFormer2."""

    def __init__(self, dim: int, lorder: int = 20, hidden_size: int = 256, kernel_size: int = 17,
                 dropout: float = 0.1):
        super().__init__()
        self.to_u = FFConvM(dim, hidden_size, "layernorm", kernel_size, dropout)
        self.to_v = FFConvM(dim, hidden_size, "layernorm", kernel_size, dropout)
        self.fsmn = UniDeepFsmn(dim, dim, lorder, hidden_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, S, C) -> (B, S, C)
        return self.to_v(z) * self.fsmn(self.to_u(z)) + z


class GatedFSMNBlock(nn.Module):
    """1x1 conv (dim -> inner) + PReLU -> LN -> gated FSMN -> LN -> 1x1 conv (inner -> dim), residual."""

    def __init__(self, dim: int, inner_channels: int = 256, lorder: int = 20, kernel_size: int = 17,
                 dropout: float = 0.1):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(dim, inner_channels, 1), nn.PReLU())
        self.norm1 = nn.LayerNorm(inner_channels)  # release: CLayerNorm over the channel axis
        self.gated_fsmn = GatedFSMN(inner_channels, lorder, inner_channels, kernel_size, dropout)
        self.norm2 = nn.LayerNorm(inner_channels)
        self.conv2 = nn.Conv1d(inner_channels, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, C) -> (B, S, C)
        conv, prelu = self.conv1
        c = F.prelu(linear(x, conv.weight[..., 0], conv.bias), prelu.weight)  # (B, S, inner)
        g = self.gated_fsmn(self.norm1(c))  # (B, S, inner)
        return linear(self.norm2(g), self.conv2.weight[..., 0], self.conv2.bias) + x  # (B, S, C)


class MossformerBlockGFSMN(nn.Module):
    """``depth`` x [FLASH layer, gated-FSMN block], one shared rotary embedding."""

    def __init__(self, dim: int, depth: int, group_size: int = 256, query_key_dim: int = 128,
                 expansion_factor: float = 4.0, dropout: float = 0.1, shift_tokens: bool = True,
                 fsmn_inner: int = 256, fsmn_lorder: int = 20, kernel_size: int = 17, rotary_dim: int = 32):
        super().__init__()
        rotary = RotaryEmbedding(dim=min(rotary_dim, query_key_dim))
        self.fsmn = nn.ModuleList(
            [GatedFSMNBlock(dim, fsmn_inner, fsmn_lorder, kernel_size, dropout) for _ in range(depth)])
        self.layers = nn.ModuleList([
            FLASHShareAFFConvM(dim, group_size, query_key_dim, expansion_factor, dropout, rotary,
                               shift_tokens, kernel_size)
            for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, C) -> (B, S, C)
        rotary = self.layers[0].rotary_pos_emb.cos_sin(x.shape[1], x.dtype)  # computed once for all layers
        for flash, fsmn in zip(self.layers, self.fsmn):
            x = fsmn(flash(x, rotary))
        return x
