"""Speed kernels of MossFormer2_SE_48K (reference forward: se/models/mossformer2.py and
se/models/mossformer2_blocks.py).

:func:`accelerate` changes the class of some submodules of a reference network to a subclass
below whose forward is faster and computes the same function with the same parameters (the
state-dict keys, ``deepcopy``, ``.to()``, ``load_state_dict`` and ``train()/eval()`` behave as
for the reference; nothing is cached, so there is nothing to invalidate):

* every tensor stays in (B, S, C) layout: 1x1 Conv1d's are linear maps on (B, S, C) and the
  depthwise convolutions along S run as channels-last 2-D convolutions (no transposes), with
  a hand-written backward (:class:`_DepthwiseConvSeq`);
* float32 CPU matrix products run on oneDNN (se/models/kernels/onednn.py);
* FFConvM's Linear -> SiLU -> ConvModule -> dropout is one autograd Function when training in
  float32 (:class:`_FFConvMCore`: keeps 3 fewer activations for backward);
* the gated attention unit (quadratic attention in groups + linear attention + gate) is one
  autograd Function (:class:`_GatedAttention`) attending directly on ``[v | u]``; it never pads
  (the last, short group is computed at its own size: padded keys add exact zeros in the
  reference) and keeps only what its hand-written backward needs;
* dropout masks come from torch.rand (same law as F.dropout, cheaper, different draws);
* only the first of the two "speakers" of the output layer is computed (the second is unused).

Shape legend: B batch, S frames, C channels, K kernel taps, g group size, D query/key dim,
E hidden dim ([v | u]), H inner FSMN channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from se.models import mossformer2 as ref
from se.models import mossformer2_blocks as blocks
from se.models.kernels.onednn import linear, linear_forward, mm_nt, use_onednn


# ----------------------------------------------------------------------------------------
# depthwise convolution along S of (B, S, C)
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


def _dw_grad_input(grad: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Input gradient of the depthwise conv: correlation with the flipped kernel (same padding)."""
    return _dw_conv_cl(grad, weight.reshape(weight.shape[0], 1, 1, -1).flip(-1), padding)


def _dw_grad_weight_plain(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """dw[c, k] = sum_{b, s} grad[b, s, c] x_padded[b, s + k, c] (public ops only) -> weight.shape."""
    K = weight.shape[2]
    windows = F.pad(x, (0, 0, padding, padding)).unfold(1, K, 1)  # (B, S, C, K)
    return torch.einsum("bsck,bsc->ck", windows, grad).reshape(weight.shape)


def _silu_grad_plain(grad: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d silu(y) = sigmoid(y) (1 + y (1 - sigmoid(y))) (public ops only)."""
    sig = torch.sigmoid(y)
    return grad * sig * (1.0 + y * (1.0 - sig))


def _dw_grad_weight_aten(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    C, K = weight.shape[0], weight.shape[2]
    mask = [False, True, False]
    if K <= _CL_WEIGHT_GRAD_MAX_K:
        grad_w = torch.ops.aten.convolution_backward(
            grad.permute(0, 2, 1).unsqueeze(3), x.permute(0, 2, 1).unsqueeze(3), weight.reshape(C, 1, K, 1),
            None, [1, 1], [padding, 0], [1, 1], False, [0, 0], C, mask)[1]  # (C, 1, K, 1)
    else:
        grad_w = torch.ops.aten.convolution_backward(
            grad.transpose(1, 2).contiguous(), x.transpose(1, 2).contiguous(), weight.reshape(C, 1, K),
            None, [1], [padding], [1], False, [0], C, mask)[1]  # (C, 1, K)
    return grad_w.reshape(weight.shape)


def _probe_aten() -> bool:
    """True when the aten backward ops used below exist and agree with the plain formulas
    (a torch upgrade may rename or change them; then the plain formulas are used)."""
    try:
        g = torch.Generator().manual_seed(0)
        grad, x = torch.randn(2, 9, 3, generator=g), torch.randn(2, 9, 3, generator=g)
        ok = True
        for K in (3, _CL_WEIGHT_GRAD_MAX_K + 2):
            w = torch.zeros(3, 1, K)
            ok &= torch.allclose(_dw_grad_weight_aten(grad, x, w, K // 2),
                                 _dw_grad_weight_plain(grad, x, w, K // 2), atol=1e-4)
        ok &= torch.allclose(torch.ops.aten.silu_backward(grad, x), _silu_grad_plain(grad, x), atol=1e-5)
        return bool(ok)
    except (AttributeError, RuntimeError, TypeError):
        return False


_ATEN = _probe_aten()


def _dw_grad_weight(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Weight gradient of the depthwise conv, (B, S, C) grad and input -> weight.shape: oneDNN's
    backward-weights kernel through aten.convolution_backward, or the plain formula."""
    if _ATEN:
        return _dw_grad_weight_aten(grad, x, weight, padding)
    return _dw_grad_weight_plain(grad, x, weight, padding)


def _silu_grad(grad: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.silu_backward(grad, y) if _ATEN else _silu_grad_plain(grad, y)


class _DepthwiseConvSeq(torch.autograd.Function):
    """Depthwise conv along S of (B, S, C), odd K, padding (K - 1) / 2; channels-last forward and
    input gradient, oneDNN backward-weights kernel (K <= 31) or transposed copies."""

    @staticmethod
    def forward(ctx, x, weight, padding: int):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return _dw_conv_cl(x, weight.reshape(weight.shape[0], 1, 1, -1), padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _dw_grad_input(grad, weight, ctx.padding) if ctx.needs_input_grad[0] else None
        grad_w = _dw_grad_weight(grad, x, weight, ctx.padding) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


def depthwise_conv_seq(x: torch.Tensor, weight: torch.Tensor, padding: int) -> torch.Tensor:
    """Depthwise convolution along S of (B, S, C), zero padding ``padding`` both sides -> (B, S, C).

    weight: (C, 1, K) (Conv1d layout) or (C, 1, K, 1) (the FSMN's Conv2d layout), K = 2 padding + 1.
    (B, S, C) viewed as NCHW (B, C, 1, S) is already channels-last, which oneDNN convolves ~10x
    faster than the release's transposed (B, C, S) copies.
    """
    K = weight.shape[2]
    if K != 2 * padding + 1:
        raise ValueError(f"depthwise_conv_seq needs an odd kernel with 'same' padding, got K={K}, padding={padding}")
    if x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        y = F.conv1d(x.transpose(1, 2), weight.reshape(weight.shape[0], 1, K), padding=padding, groups=x.shape[-1])
        return y.transpose(1, 2)
    if x.dtype != torch.float32:  # float64 (parity tests): CPU grouped convolutions are very slow there
        xp = F.pad(x, (0, 0, padding, padding))  # (B, S + K - 1, C)
        return torch.einsum("bsck,ck->bsc", xp.unfold(1, K, 1), weight.reshape(weight.shape[0], K))
    return _DepthwiseConvSeq.apply(x, weight, padding)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout (same law as F.dropout): keep with probability 1 - p, scale 1/(1-p);
    the mask comes from torch.rand (>= p), ~3x cheaper on the CPU than F.dropout's bernoulli_."""
    if not training or p == 0.0:
        return x
    return x * torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))


def group_norm_1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm(1, C) of a (B, S, C) tensor: statistics over all (S, C) of each item."""
    var, mean = torch.var_mean(x, dim=(1, 2), correction=0, keepdim=True)  # (B, 1, 1)
    return (x - mean) * torch.rsqrt(var + eps) * weight + bias


# ----------------------------------------------------------------------------------------
# FFConvM
# ----------------------------------------------------------------------------------------
class _FFConvMCore(torch.autograd.Function):
    """Linear -> SiLU -> (h + DWConv(h)) -> dropout in one Function (float32 CPU training).

    Saves only the linear input, the pre-activation and a boolean dropout mask (SiLU is
    recomputed in backward): ~3 fewer (B, S, dim_out) tensors per FFConvM kept for backward.
    """

    @staticmethod
    def forward(ctx, xn, weight, bias, conv_weight, padding: int, p: float):
        y = linear_forward(xn, weight, bias)  # (B, S, N)
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
        grad_y = _silu_grad(grad_h, y)  # (B, S, N)
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


class FFConvM(blocks.FFConvM):
    """Fused training path (:class:`_FFConvMCore`), in-place inference path."""

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


class FLASHShareAFFConvM(blocks.FLASHShareAFFConvM):
    """The gated attention unit as one Function (:func:`gated_attention`)."""

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        xs = x  # (B, S, C)
        if self.shift_tokens:
            half = x.shape[-1] // 2
            xs = torch.cat((F.pad(x[..., :half], (0, 0, 1, -1)), x[..., half:]), -1)  # (B, S, C)
        hidden = self.to_hidden(xs)  # (B, S, E) = [v | u]
        heads = blocks.apply_rotary(self.qk_offset_scale(self.to_qk(xs)), *rotary)  # (B, S, 4, D)
        p = self.attn_dropout if self.training else 0.0
        out = gated_attention(heads, hidden, self.group_size, p)  # (B, S, E/2)
        return x + self.to_out(out)  # (B, S, C)


# ----------------------------------------------------------------------------------------
# gated FSMN and the mask network in (B, S, C) layout
# ----------------------------------------------------------------------------------------
class UniDeepFsmn(blocks.UniDeepFsmn):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, C) -> (B, S, C)
        p = linear(F.relu(linear(x, self.linear.weight, self.linear.bias)), self.project.weight)  # (B, S, C)
        return x + p + depthwise_conv_seq(p, self.conv1.weight, self.lorder - 1)


class GatedFSMNBlock(blocks.GatedFSMNBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, C) -> (B, S, C)
        conv, prelu = self.conv1
        c = F.prelu(linear(x, conv.weight[..., 0], conv.bias), prelu.weight)  # (B, S, H)
        g = self.gated_fsmn(self.norm1(c))  # (B, S, H)
        return linear(self.norm2(g), self.conv2.weight[..., 0], self.conv2.bias) + x  # (B, S, C)


class MossFormerMaskNet(ref.MossFormerMaskNet):
    """(B, S, C) throughout; only the first "speaker" of conv1d_out is computed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, 3M) -> (B, S, F)
        width = self.conv1d_encoder.weight.shape[0]
        comp = self.mdl
        x = group_norm_1(x, self.norm.weight, self.norm.bias, self.norm.eps)  # (B, S, 3M)
        x = linear(x, self.conv1d_encoder.weight[..., 0])  # (B, S, C)
        x = x + self.pos_enc(x.shape[1])  # (B, S, C)
        h = comp.intra_mdl(x)  # (B, S, C)
        x = group_norm_1(h, comp.intra_norm.weight, comp.intra_norm.bias, comp.intra_norm.eps) + x
        x = F.prelu(x, self.prelu.weight)  # (B, S, C)
        x = linear(x, self.conv1d_out.weight[:width, :, 0], self.conv1d_out.bias[:width])  # speaker 0
        out, gate = self.output[0], self.output_gate[0]
        x = torch.tanh(linear(x, out.weight[..., 0], out.bias)) * torch.sigmoid(
            linear(x, gate.weight[..., 0], gate.bias))  # (B, S, C)
        return F.relu(linear(x, self.conv1_decoder.weight[..., 0]))  # (B, S, F)


# reference class -> kernel class (a subclass holding the same parameters)
KERNELS = {
    blocks.FFConvM: FFConvM,
    blocks.FLASHShareAFFConvM: FLASHShareAFFConvM,
    blocks.UniDeepFsmn: UniDeepFsmn,
    blocks.GatedFSMNBlock: GatedFSMNBlock,
    ref.MossFormerMaskNet: MossFormerMaskNet,
}


def accelerate(model: torch.nn.Module) -> torch.nn.Module:
    """Swaps the forward of ``model``'s reference submodules for the kernels (in place; returned).

    Only the class of each submodule changes (``module.__class__``), so parameters, buffers,
    state-dict keys and hooks stay as they are; applying it twice changes nothing.
    """
    for module in model.modules():
        fast = KERNELS.get(type(module))
        if fast is not None:
            module.__class__ = fast
    return model
