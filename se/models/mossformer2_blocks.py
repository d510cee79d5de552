"""Building blocks of MossFormer2, the plain reference forward.

Papers:
* S. Zhao, Y. Ma, C. Ni, C. Zhang, H. Wang, T. H. Nguyen, K. Zhou, J. Yip, D. Ng, B. Ma,
  "MossFormer2: Combining Transformer and RNN-Free Recurrent Network for Enhanced Time-Domain
  Monaural Speech Separation", ICASSP 2024 (the gated FSMN block, section 2.2).
* S. Zhao, B. Ma, "MossFormer: Pushing the Performance Limit of Monaural Speech Separation
  using Gated Single-Head Transformer with Convolution-Augmented Joint Self-Attentions",
  ICASSP 2023 (the gated attention layer with convolutional FFNs, section 2).
* W. Hua, Z. Dai, H. Liu, Q. Le, "Transformer Quality in Linear Time" (FLASH), ICML 2022
  (ScaleNorm, OffsetScale, quadratic attention in groups + linear attention, relu^2 kernel).

The blocks are written as ClearVoice's MossFormer2_SE_48K uses them; attribute names reproduce
the release's state-dict keys (``mdl.0.g``, ``mdl.3.sequential.1.conv.weight``, ...).
Sequences travel as (B, S, C) between the blocks; 1x1 convolutions and depthwise convolutions
work on (B, C, S) as in the release. The speed kernels that replace some of these forwards
(same parameters, same results) are in se/models/kernels/mossformer2.py.

Shape legend: B batch, S frames (sequence), C channels, G attention groups, g group size (256),
D query/key dim (128), E hidden dim (2 x 1024 = [v | u]), R rotary pairs (16), H inner
channels of the gated FSMN (256).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------------
# normalisation, position encodings
# ----------------------------------------------------------------------------------------
class ScaleNorm(nn.Module):
    """y = x / clamp(||x||_2 / sqrt(d), eps) * g with one scalar gain ``g`` (FLASH)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.scale = dim**-0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, d) -> (B, S, d)
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale  # (B, S, 1)
        return x * (self.g / norm.clamp(min=self.eps))


class ScaledSinuEmbedding(nn.Module):
    """Absolute sinusoidal position encoding scaled by a learned scalar: scale * [sin(p f) | cos(p f)]."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, seq_len: int) -> torch.Tensor:  # -> (S, dim)
        pos = torch.arange(seq_len, device=self.inv_freq.device).type_as(self.inv_freq)  # (S,)
        sinu = pos[:, None] * self.inv_freq[None, :]  # (S, dim/2)
        return torch.cat((sinu.sin(), sinu.cos()), -1) * self.scale


class RotaryEmbedding(nn.Module):
    """Rotary position embedding frequencies (RoFormer, Su et al.), as rotary-embedding-torch 0.8.3
    builds them: freqs[i] = 1 / 10000^(2i/dim), a frozen parameter (it is in the checkpoints).

    One instance is shared by all attention layers, so ``freqs`` appears under every layer's key.
    """

    def __init__(self, dim: int = 32, theta: float = 10000.0):
        super().__init__()
        self.dim = dim
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)  # (R,)

    def cos_sin(self, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of the angles p * freqs[i], (S, 1, R); angles in float32 as the release."""
        pos = torch.arange(seq_len, device=self.freqs.device, dtype=torch.float32)  # (S,)
        angles = (pos[:, None] * self.freqs.float()[None, :]).to(dtype)  # (S, R)
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


# ----------------------------------------------------------------------------------------
# convolution-augmented feed-forward (MossFormer section 2.2)
# ----------------------------------------------------------------------------------------
class DepthwiseConv1d(nn.Module):
    """Depthwise Conv1d with 'same' zero padding (K odd), (B, C, S) -> (B, C, S)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2,
                              groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, S)
        return self.conv(x)


class ConvModule(nn.Module):
    """x + DWConv1d(x) along S, kernel 17, no bias (the release's ``sequential.0`` is a transpose)."""

    def __init__(self, channels: int, kernel_size: int = 17):
        super().__init__()
        self.sequential = nn.Sequential(nn.Identity(), DepthwiseConv1d(channels, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, C) -> (B, S, C)
        return x + self.sequential(x.transpose(1, 2)).transpose(1, 2)


class FFConvM(nn.Module):
    """Norm -> Linear -> SiLU -> ConvModule -> Dropout (MossFormer's convolution-augmented FFN).

    Args:
        dim_in, dim_out: feature sizes.
        norm: 'scalenorm' (attention layers) or 'layernorm' (gated FSMN, eps 1e-5).
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
        return self.mdl(x)


# ----------------------------------------------------------------------------------------
# the gated attention layer (MossFormer section 2.1, FLASH)
# ----------------------------------------------------------------------------------------
class OffsetScale(nn.Module):
    """Per-head affine maps of the shared query/key: out[..., h, :] = x * gamma[h] + beta[h]."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(heads, dim))
        self.beta = nn.Parameter(torch.zeros(heads, dim))
        nn.init.normal_(self.gamma, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, D) -> (B, S, heads, D)
        return x.unsqueeze(-2) * self.gamma + self.beta


class FLASHShareAFFConvM(nn.Module):
    """MossFormer's gated attention layer: FLASH with convolutional FFNs and a shared q/k.

    hidden = [v | u] = FFConvM(x), qk = FFConvM(x) -> four OffsetScale heads (rotary):
    att = quad(hidden) + lin(hidden), where quad attends within groups of ``group_size`` frames
    with A = relu(q k^T / g)^2 and lin is the linear attention lin_q (lin_k^T hidden / S) over the
    whole sequence; out = x + FFConvM((att_u * v) * sigmoid(att_v * u)).

    Args:
        dim: model width C (512).
        group_size: quadratic-attention chunk g (256).
        query_key_dim: shared query/key size D (128).
        expansion_factor: hidden = dim * expansion_factor = [v | u] (4 -> 2 x 1024).
        dropout: dropout of the FFConvM outputs and of the attention weights (0.1).
        rotary_pos_emb: the shared :class:`RotaryEmbedding`.
        shift_tokens: delay the first half of the channels by one frame (True).
        kernel_size: depthwise kernel of the FFConvMs (17).
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
        """x (B, S, C); rotary: cos, sin (S, 1, R) of :meth:`RotaryEmbedding.cos_sin`."""
        xs = x
        if self.shift_tokens:
            half = x.shape[-1] // 2
            xs = torch.cat((F.pad(x[..., :half], (0, 0, 1, -1)), x[..., half:]), -1)  # (B, S, C)
        hidden = self.to_hidden(xs)  # (B, S, E) = [v | u]
        heads = apply_rotary(self.qk_offset_scale(self.to_qk(xs)), *rotary)  # (B, S, 4, D)
        att = self.attention(heads, hidden)  # (B, S, E) = [att_v | att_u]
        v, u = hidden.chunk(2, dim=-1)  # (B, S, E/2) each
        att_v, att_u = att.chunk(2, dim=-1)  # (B, S, E/2) each
        out = (att_u * v) * torch.sigmoid(att_v * u)  # (B, S, E/2)
        return x + self.to_out(out)  # (B, S, C)

    def attention(self, heads: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """quad + lin attention of heads (B, S, 4, D) = (quad_q, lin_q, quad_k, lin_k) on hidden (B, S, E).

        The sequence is zero-padded to a multiple of g; padded keys have q k^T = 0, so relu(0)^2
        gives them zero weight (the release's mask changes nothing).
        """
        B, S, _, D = heads.shape
        g = self.group_size
        quad_q, lin_q, quad_k, lin_k = heads.unbind(2)  # (B, S, D) each
        pad = (-S) % g
        G = (S + pad) // g
        q, k, h = (F.pad(t, (0, 0, 0, pad)).reshape(B, G, g, -1) for t in (quad_q, quad_k, hidden))
        sim = q @ k.transpose(-1, -2) / g  # (B, G, g, g)
        attn = F.dropout(F.relu(sim) ** 2, self.attn_dropout, self.training)  # (B, G, g, g)
        quad = (attn @ h).reshape(B, G * g, -1)[:, :S]  # (B, S, E)
        lin = lin_q @ (lin_k.transpose(1, 2) @ hidden / S)  # (B, S, D) @ (B, D, E) -> (B, S, E)
        return quad + lin  # (B, S, E)


# ----------------------------------------------------------------------------------------
# the gated FSMN block (MossFormer2 section 2.2)
# ----------------------------------------------------------------------------------------
class UniDeepFsmn(nn.Module):
    """Feedforward sequential memory (FSMN, Zhang et al. 2015), non-causal flavour of MossFormer2:
    P = W_proj ReLU(W x + b); out = x + P + DWConv_{2 lorder - 1}(P) (zero padding lorder - 1 both sides).
    """

    def __init__(self, input_dim: int, output_dim: int, lorder: int = 20, hidden_size: int = 256):
        super().__init__()
        self.lorder = lorder
        self.linear = nn.Linear(input_dim, hidden_size)
        self.project = nn.Linear(hidden_size, output_dim, bias=False)
        self.conv1 = nn.Conv2d(output_dim, output_dim, (2 * lorder - 1, 1), groups=output_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, C) -> (B, S, C)
        p = self.project(F.relu(self.linear(x)))  # (B, S, C)
        p4 = p.transpose(1, 2).unsqueeze(-1)  # (B, C, S, 1)
        memory = self.conv1(F.pad(p4, (0, 0, self.lorder - 1, self.lorder - 1)))  # (B, C, S, 1)
        return x + p + memory.squeeze(-1).transpose(1, 2)  # (B, S, C)


class GatedFSMN(nn.Module):
    """g = to_v(z) * fsmn(to_u(z)) + z: the RNN-free recurrent branch of MossFormer2."""

    def __init__(self, dim: int, lorder: int = 20, hidden_size: int = 256, kernel_size: int = 17,
                 dropout: float = 0.1):
        super().__init__()
        self.to_u = FFConvM(dim, hidden_size, "layernorm", kernel_size, dropout)
        self.to_v = FFConvM(dim, hidden_size, "layernorm", kernel_size, dropout)
        self.fsmn = UniDeepFsmn(dim, dim, lorder, hidden_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, S, H) -> (B, S, H)
        return self.to_v(z) * self.fsmn(self.to_u(z)) + z


class GatedFSMNBlock(nn.Module):
    """1x1 conv (C -> H) + PReLU -> LN -> gated FSMN -> LN -> 1x1 conv (H -> C), residual."""

    def __init__(self, dim: int, inner_channels: int = 256, lorder: int = 20, kernel_size: int = 17,
                 dropout: float = 0.1):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(dim, inner_channels, 1), nn.PReLU())
        self.norm1 = nn.LayerNorm(inner_channels)  # release: CLayerNorm over the channel axis
        self.gated_fsmn = GatedFSMN(inner_channels, lorder, inner_channels, kernel_size, dropout)
        self.norm2 = nn.LayerNorm(inner_channels)
        self.conv2 = nn.Conv1d(inner_channels, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, C) -> (B, S, C)
        c = self.conv1(x.transpose(1, 2)).transpose(1, 2)  # (B, S, H)
        g = self.gated_fsmn(self.norm1(c))  # (B, S, H)
        return self.conv2(self.norm2(g).transpose(1, 2)).transpose(1, 2) + x  # (B, S, C)


class MossformerBlockGFSMN(nn.Module):
    """``depth`` x [gated attention layer, gated-FSMN block], one shared rotary embedding."""

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
        rotary = self.layers[0].rotary_pos_emb.cos_sin(x.shape[1], x.dtype)  # (S, 1, R) x 2, shared
        for flash, fsmn in zip(self.layers, self.fsmn):
            x = fsmn(flash(x, rotary))  # (B, S, C)
        return x
