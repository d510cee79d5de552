"""Building blocks of the MossFormerGAN generator (SyncANet), the plain reference forward.

Papers:
* MossFormerGAN: ClearerVoice-Studio's MossFormerGAN_SE_16K, a CMGAN generator whose
  two-stage conformers are replaced by SyncANet blocks (below).
* MossFormer: S. Zhao, B. Ma, "MossFormer: Pushing the performance limit of monaural speech
  separation using gated single-head transformer with convolution-augmented joint
  self-attentions", ICASSP 2023 -- the gated attention unit (:class:`MossFormer`) with its
  joint quadratic (relu^2) / linear attention, convolution-augmented FFConvM units and
  rotary positions.
* CMGAN: R. Cao, S. Abdulatif, B. Yang, "CMGAN: Conformer-based metric GAN for speech
  enhancement", Interspeech 2022 -- dense encoder, mask and complex decoders
  (:class:`DenseEncoder`, :class:`MaskDecoder`, :class:`ComplexDecoder`).
* TF-GridNet: Z.-Q. Wang et al., IEEE/ACM TASLP 2023 -- the 4-D layer norms and the
  full-band self-attention over frames at the end of each :class:`SyncANetBlock`.
* FSMN: S. Zhang et al., "Feedforward sequential memory networks", 2015 (:class:`UniDeepFsmn`).

Module names and parameter shapes reproduce the release's state dict exactly
(tests/data/clearvoice/MossFormerGAN_SE_16K_generator.state_dict.json).  This file is written
for reading: every layer is the formula of the paper / release, with full attention maps.  The
faster equivalents (blocked attention, fused convolutions, float64 convolution paths, oneDNN
products) are in se/models/kernels/mossformer_gan.py and hold these same parameters.

Shape legend: B batch, C channels (64), T frames, F frequency bins (201 at the input),
Q frequency bins after the encoder (101), N rows of a batch of sequences, n sequence length,
A length of the "cross" axis (the other axis of the grid), d / e / H feature sizes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from se.models.mossformer2_blocks import OffsetScale  # FLASH's per-head query/key maps, as in MossFormer2


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, Q)
        var, mu = torch.var_mean(x, dim=1, keepdim=True, correction=0)  # (B, 1, T, Q)
        return (x - mu) / torch.sqrt(var + self.eps) * self.gamma + self.beta


class LayerNormalization4DCF(nn.Module):
    """Normalise (B, C, T, Q) over channels and frequency jointly per (b, t) (TF-GridNet)."""

    def __init__(self, channels: int, freqs: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, freqs))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, freqs))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, Q)
        var, mu = torch.var_mean(x, dim=(1, 3), keepdim=True, correction=0)  # (B, 1, T, 1)
        return (x - mu) / torch.sqrt(var + self.eps) * self.gamma + self.beta


class Transpose12(nn.Module):
    """(N, n, d) <-> (N, d, n)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class DepthwiseConv1d(nn.Module):
    """Depthwise Conv1d, 'same' zero padding, no bias: (N, d, n) -> (N, d, n)."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2,
                              groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvModule(nn.Module):
    """MossFormer's convolution module: y = x + depthwise_conv(x) along the sequence.

    Kernel 31, zero 'same' padding, no bias.  ``sequential`` = (transpose, depthwise conv)
    keeps the release's key names (``sequential.1.conv.weight``).  (N, n, d) -> (N, n, d).
    """

    def __init__(self, channels: int, kernel: int = 31):
        super().__init__()
        self.sequential = nn.Sequential(Transpose12(), DepthwiseConv1d(channels, kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, n, d)
        return x + self.sequential(x).transpose(1, 2)  # (N, d, n) -> (N, n, d)


class FFConvM(nn.Module):
    """MossFormer's convolution-augmented feed-forward unit.

    LayerNorm -> Linear -> SiLU -> ConvModule -> Dropout: (N, n, d_in) -> (N, n, d_out).
    """

    def __init__(self, dim_in: int, dim_out: int, dropout: float = 0.1):
        super().__init__()
        self.mdl = nn.Sequential(
            nn.LayerNorm(dim_in),
            nn.Linear(dim_in, dim_out),
            nn.SiLU(),
            ConvModule(dim_out),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mdl(x)


class UniDeepFsmn(nn.Module):
    """Feedforward sequential memory block (non-causal, the release's fsmn.py).

    P = W_proj relu(W_lin x + b); memory = depthwise conv of P with a kernel of 2*lorder-1
    steps centred on each step (zero padding); output = x + (P + memory).
    x: (N, L, d) -> (N, L, d).
    """

    def __init__(self, input_dim: int, output_dim: int, lorder: int, hidden_size: int):
        super().__init__()
        if input_dim != output_dim:
            raise ValueError("UniDeepFsmn needs input_dim == output_dim (residual)")
        self.lorder = lorder
        self.linear = nn.Linear(input_dim, hidden_size)
        self.project = nn.Linear(hidden_size, output_dim, bias=False)
        self.conv1 = nn.Conv2d(output_dim, output_dim, (2 * lorder - 1, 1), groups=output_dim,
                               bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, d)
        p = self.project(F.relu(self.linear(x)))  # (N, L, d)
        p = p.transpose(1, 2).unsqueeze(-1)  # (N, d, L, 1): the sequence as image height
        pad = self.lorder - 1
        memory = self.conv1(F.pad(p, (0, 0, pad, pad)))  # (N, d, L, 1)
        return x + (p + memory).squeeze(-1).transpose(1, 2)  # (N, L, d)


class FSMNWrap(nn.Module):
    """UniDeepFsmn over the frequency axis of a (B, C, T, F) tensor (memory of 2*lorder-1 bins)."""

    def __init__(self, channels: int, lorder: int = 5):
        super().__init__()
        self.fsmn = UniDeepFsmn(channels, channels, lorder, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, f = x.shape
        y = x.permute(0, 2, 3, 1).reshape(b * t, f, c)  # (B*T, F, C)
        y = self.fsmn(y)  # (B*T, F, C)
        return y.view(b, t, f, c).permute(0, 3, 1, 2)  # (B, C, T, F)


# --------------------------------------------------------------------------------------------
# CMGAN encoder / decoders (with FSMNs in the dense blocks)
# --------------------------------------------------------------------------------------------
class DilatedDenseNet(nn.Module):
    """Densely connected causal-in-time dilated convs (dilation 1, 2, 4, 8) + frequency FSMNs.

    Layer i sees [out_{i-1}, ..., out_0, x] (newest first, (i + 1) C channels) through a
    (2, 3) kernel covering frames t - d and t: zero padding of d = 2^i frames before the first
    one and one bin on each side.  (B, C, T, F) -> (B, C, T, F).
    """

    def __init__(self, depth: int = 4, in_channels: int = 64):
        super().__init__()
        self.depth = depth
        for i in range(depth):
            dil = 2**i
            setattr(self, f"conv{i + 1}", nn.Conv2d(in_channels * (i + 1), in_channels, (2, 3),
                                                    dilation=(dil, 1)))
            setattr(self, f"norm{i + 1}", nn.InstanceNorm2d(in_channels, affine=True))
            setattr(self, f"prelu{i + 1}", nn.PReLU(in_channels))
            setattr(self, f"fsmn{i + 1}", FSMNWrap(in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, F)
        skip = x
        for i in range(1, self.depth + 1):
            dil = 2 ** (i - 1)
            out = F.pad(skip, (1, 1, dil, 0))  # (B, iC, dil + T, F + 2): causal in time
            out = getattr(self, f"conv{i}")(out)  # (B, C, T, F)
            out = getattr(self, f"prelu{i}")(getattr(self, f"norm{i}")(out))
            out = getattr(self, f"fsmn{i}")(out)  # (B, C, T, F)
            skip = torch.cat([out, skip], dim=1)  # (B, (i + 1) C, T, F), newest first
        return out


class DenseEncoder(nn.Module):
    """CMGAN's dense encoder: (B, 3, T, F) -> (B, C, T, (F+1)//2)."""

    def __init__(self, in_channel: int = 3, channels: int = 64):
        super().__init__()
        self.conv_1 = nn.Sequential(
            nn.Conv2d(in_channel, channels, (1, 1)),
            nn.InstanceNorm2d(channels, affine=True),
            nn.PReLU(channels),
        )
        self.dilated_dense = DilatedDenseNet(depth=4, in_channels=channels)
        self.conv_2 = nn.Sequential(  # halves the frequency axis (stride 2)
            nn.Conv2d(channels, channels, (1, 3), (1, 2), padding=(0, 1)),
            nn.InstanceNorm2d(channels, affine=True),
            nn.PReLU(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, F)
        x = self.conv_1(x)  # (B, C, T, F)
        x = self.dilated_dense(x)  # (B, C, T, F)
        return self.conv_2(x)  # (B, C, T, Q)


class SPConvTranspose2d(nn.Module):
    """Sub-pixel frequency up-sampling by r: (B, C, T, Q) -> (B, C_out, T, r*Q)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=(1, 3), r: int = 2):
        super().__init__()
        self.r = r
        self.out_channels = out_channels
        # zero padding of one bin on each side (done by the convolution)
        self.conv = nn.Conv2d(in_channels, out_channels * r, kernel_size, padding=(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)  # (B, r*C_out, T, Q)
        b, _, t, q = out.shape
        out = out.view(b, self.r, self.out_channels, t, q).permute(0, 2, 3, 4, 1)  # (B, C_out, T, Q, r)
        return out.reshape(b, self.out_channels, t, q * self.r)  # bin r*f + k <- channel k*C + c


class MaskDecoder(nn.Module):
    """CMGAN's mask decoder: (B, C, T, Q) -> unbounded magnitude mask (B, 1, T, F).

    The output non-linearity is a per-bin PReLU (no sigmoid), as the release.
    """

    def __init__(self, num_features: int = 201, num_channel: int = 64, out_channel: int = 1):
        super().__init__()
        self.dense_block = DilatedDenseNet(depth=4, in_channels=num_channel)
        self.sub_pixel = SPConvTranspose2d(num_channel, num_channel, (1, 3), 2)
        self.conv_1 = nn.Conv2d(num_channel, out_channel, (1, 2))
        self.norm = nn.InstanceNorm2d(out_channel, affine=True)
        self.prelu = nn.PReLU(out_channel)
        self.final_conv = nn.Conv2d(out_channel, out_channel, (1, 1))
        self.prelu_out = nn.PReLU(num_features, init=-0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, Q)
        x = self.sub_pixel(self.dense_block(x))  # (B, C, T, 2Q)
        x = self.conv_1(x)  # (B, 1, T, F)
        x = self.final_conv(self.prelu(self.norm(x)))  # (B, 1, T, F)
        x = self.prelu_out(x.permute(0, 3, 2, 1).squeeze(-1))  # (B, F, T): bins as PReLU channels
        return x.permute(0, 2, 1).unsqueeze(1)  # (B, 1, T, F)


class ComplexDecoder(nn.Module):
    """CMGAN's complex decoder: (B, C, T, Q) -> complex residual [real, imag] (B, 2, T, F)."""

    def __init__(self, num_channel: int = 64):
        super().__init__()
        self.dense_block = DilatedDenseNet(depth=4, in_channels=num_channel)
        self.sub_pixel = SPConvTranspose2d(num_channel, num_channel, (1, 3), 2)
        self.prelu = nn.PReLU(num_channel)
        self.norm = nn.InstanceNorm2d(num_channel, affine=True)
        self.conv = nn.Conv2d(num_channel, 2, (1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, Q)
        x = self.sub_pixel(self.dense_block(x))  # (B, C, T, 2Q)
        x = self.prelu(self.norm(x))
        return self.conv(x)  # (B, 2, T, F)


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
        return (s_avg + s_max)[:, :, None, None] * x  # (B, C, T, Q)


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

    def cos_sin(self, n: int, dtype: torch.dtype, device: torch.device):
        """(n, dim) cos and sin tables, each frequency repeated for its feature pair."""
        pos = torch.arange(n, device=device, dtype=torch.float32)  # (n,)
        ang = pos[:, None] * self.freqs.detach().float()[None, :]  # (n, dim/2), float32 angles
        ang = torch.stack((ang, ang), dim=-1).flatten(-2).to(dtype)  # (n, dim): each angle twice
        return ang.cos(), ang.sin()

    def rotated_part(self, x: torch.Tensor, seq_dim: int) -> torch.Tensor:
        """The first ``dim`` features of x (..., n, ..., d) rotated by the position along seq_dim."""
        cos, sin = self.cos_sin(x.shape[seq_dim], x.dtype, x.device)  # (n, dim)
        for _ in range(seq_dim % x.dim(), x.dim() - 2):  # (n, 1, ..., 1, dim): broadcasts over
            cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # every other axis (and exports to ONNX)
        mid = x[..., : self.dim]
        pairs = mid.unflatten(-1, (-1, 2))  # (..., dim/2, 2)
        rot = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (-x1, x0) pairs
        return mid * cos + rot * sin

    def rotate(self, x: torch.Tensor, seq_dim: int) -> torch.Tensor:
        """x with its first ``dim`` features rotated (the others unchanged); same shape."""
        return torch.cat((self.rotated_part(x, seq_dim), x[..., self.dim:]), dim=-1)


def relu_square(scores: torch.Tensor) -> torch.Tensor:
    """MossFormer's attention weights relu(s)^2 (in place of a softmax)."""
    return torch.relu(scores) ** 2


class MossFormer(nn.Module):
    """MossFormer gated attention unit over one axis of a (B, A, n, C) grid.

    Args (MossFormer, Zhao & Ma, ICASSP 2023, sec. 3; as configured in MossFormerGAN):
        dim: C, the feature size of the sequence (64).
        qk_dim: shared query/key size s (128); ``OffsetScale`` derives the 4 heads
            (quad_q, lin_q, quad_k, lin_k) from it with per-head scales and offsets.
        hidden_dim: size of the value v and gate u (128; ``to_hidden`` maps C -> 2 * hidden
            = [v | u]).
        rotary_dim: features rotated by the rotary position embedding (32).
        dropout: dropout of the FFConvM units and of the attention maps (0.1).
        shift_tokens: delay the first C/2 features by one step (token shift).

    Attention (sum of three, each applied to [v | u] at once):
        quadratic: relu(quad_q quad_k^T / n)^2 over the whole sequence (the paper's attention
            within chunks, with one chunk = the whole sequence);
        linear: lin_q (lin_k^T [v | u]) / n (the paper's global linear attention);
        cross: relu(q k^T / A)^2 along the other axis A of the grid (the rows that share a
            batch item and a sequence position), without the self term (diagonal).
    Gating (the paper's triple gating with sigmoid): o = (att_u * v) * sigmoid(att_v * u);
    output x + to_out(o).

    forward: x (B, A, n, C) -> (B*A, n, C).
    """

    def __init__(self, dim: int = 64, qk_dim: int = 128, hidden_dim: int = 128,
                 rotary_dim: int = 32, dropout: float = 0.1, shift_tokens: bool = True):
        super().__init__()
        self.shift_tokens = shift_tokens
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
        x = x.reshape(b * a, n, c)  # (N, n, C), N = B*A
        if self.shift_tokens:
            half = c // 2
            shifted = F.pad(x[:, :-1, :half], (0, 0, 1, 0))  # (N, n, C/2): delayed by one step
            xs = torch.cat((shifted, x[:, :, half:]), dim=-1)  # (N, n, C)
        else:
            xs = x
        vu = self.to_hidden(xs)  # (N, n, 2H) = [v | u]
        qk = self.to_qk(xs)  # (N, n, s)
        heads = self.qk_offset_scale(qk)  # (N, n, 4, s)
        heads = self.rotary_pos_emb.rotate(heads, seq_dim=1)  # (N, n, 4, s)
        quad_q, lin_q, quad_k, lin_k = heads.unbind(dim=2)  # (N, n, s) each
        att = self.attention(quad_q, lin_q, quad_k, lin_k, vu, b, a)  # (N, n, 2H)
        v, u = vu.chunk(2, dim=-1)  # (N, n, H) each
        att_v, att_u = att.chunk(2, dim=-1)  # (N, n, H) each
        o = (att_u * v) * torch.sigmoid(att_v * u)  # (N, n, H)
        return x + self.to_out(o)  # (N, n, C)

    def attention(self, quad_q, lin_q, quad_k, lin_k, vu, b: int, a: int) -> torch.Tensor:
        """Quadratic + linear + cross attention of [v | u]: (N, n, s) x 4, (N, n, 2H) -> (N, n, 2H)."""
        n = quad_q.shape[1]
        # quadratic attention over the whole sequence
        attn = relu_square(torch.bmm(quad_q, quad_k.transpose(1, 2)) / n)  # (N, n, n)
        attn = F.dropout(attn, self.attn_dropout, self.training)
        quad = torch.bmm(attn, vu)  # (N, n, 2H)
        # linear attention (non-causal)
        kv = torch.bmm(lin_k.transpose(1, 2), vu) / n  # (N, s, 2H)
        lin = torch.bmm(lin_q, kv)  # (N, n, 2H)

        # cross attention along A: rows of the same batch item and sequence position
        def to_cross(t: torch.Tensor) -> torch.Tensor:  # (B*A, n, e) -> (B*n, A, e)
            return t.view(b, a, n, -1).transpose(1, 2).reshape(b * n, a, t.shape[-1])

        cq, ck, cvu = to_cross(quad_q), to_cross(quad_k), to_cross(vu)
        attn_c = relu_square(torch.bmm(cq, ck.transpose(1, 2)) / a)  # (B*n, A, A)
        off_diagonal = 1.0 - torch.eye(a, dtype=attn_c.dtype, device=attn_c.device)  # (A, A)
        attn_c = attn_c * off_diagonal  # no attention of a row to itself (a float mask: exports to ONNX)
        attn_c = F.dropout(attn_c, self.attn_dropout, self.training)
        cross = torch.bmm(attn_c, cvu)  # (B*n, A, 2H)
        cross = cross.view(b, n, a, -1).transpose(1, 2).reshape(b * a, n, -1)  # (N, n, 2H)
        return lin + quad + cross


# --------------------------------------------------------------------------------------------
# SyncANet block
# --------------------------------------------------------------------------------------------
class SyncANetBlock(nn.Module):
    """Intra-frame (frequency) + inter-frame (time) MossFormer paths + full-band attention.

    Args (MossFormerGAN's SyncANet block, a TF-GridNet-style block whose BLSTMs are replaced by
    FSMN-gated MossFormer units):
        emb_dim: C (64).
        n_freqs: Q, frequency bins after the encoder (101).
        hidden: FFConvM / FSMN size of the sub-band paths (128).
        n_head: full-band attention heads (4).
        approx_qk_dim: full-band query/key size; per head E = ceil(approx_qk_dim / Q) channels.
        qk_dim, mf_hidden: MossFormer query/key and v/u sizes (128 each by default = 2C).
        rotary_dim: MossFormer rotary features (32).
        dropout: MossFormer / FFConvM dropout (0.1).
        eps: LayerNormalization eps.
    The release uses kernel 2 / hop 1 for the sub-band unfolding (fixed here).
    x: (B, C, T, Q) -> (B, C, T, Q).
    """

    def __init__(self, emb_dim: int = 64, n_freqs: int = 101, hidden: int = 128, n_head: int = 4,
                 approx_qk_dim: int = 512, qk_dim: int = 128, mf_hidden: int = 128,
                 rotary_dim: int = 32, dropout: float = 0.1, eps: float = 1e-5):
        super().__init__()
        c, ks = emb_dim, 2
        in_ch = c * ks
        self.n_head = n_head
        self.Fconv = nn.Conv2d(c, in_ch, kernel_size=(1, ks), groups=c)
        self.intra_norm = LayerNormalization4D(c, eps=eps)
        self.intra_to_u = FFConvM(in_ch, hidden, dropout)
        self.intra_to_v = FFConvM(in_ch, hidden, dropout)
        self.intra_rnn = nn.ModuleList([UniDeepFsmn(hidden, hidden, 20, hidden)])
        self.intra_mossformer = MossFormer(c, qk_dim, mf_hidden, rotary_dim, dropout)
        self.intra_linear = nn.ConvTranspose1d(hidden, c, ks, stride=1)
        self.intra_se = SELayer(c, 1)

        self.inter_norm = LayerNormalization4D(c, eps=eps)
        self.inter_to_u = FFConvM(in_ch, hidden, dropout)
        self.inter_to_v = FFConvM(in_ch, hidden, dropout)
        self.inter_rnn = nn.ModuleList([UniDeepFsmn(hidden, hidden, 20, hidden)])
        self.inter_mossformer = MossFormer(c, qk_dim, mf_hidden, rotary_dim, dropout)
        self.inter_linear = nn.ConvTranspose1d(hidden, c, ks, stride=1)
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
        return nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.PReLU(),
                             LayerNormalization4DCF(c_out, n_freqs, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"SyncANetBlock expects (B, C, T, Q), got shape {tuple(x.shape)}")
        b, c, t, q = x.shape
        # ---- intra-frame (frequency) path
        h = self.Fconv(self.intra_norm(x))  # (B, 2C, T, Q-1): unfold kernel 2 over frequency
        h = h.permute(0, 2, 3, 1).reshape(b * t, q - 1, 2 * c)  # (B*T, Q-1, 2C)
        u = self.intra_rnn[0](self.intra_to_u(h))  # (B*T, Q-1, H)
        h = self.intra_to_v(h) * u  # (B*T, Q-1, H)
        h = self.intra_linear(h.transpose(1, 2))  # (B*T, C, Q)
        h = h.transpose(1, 2).reshape(b, t, q, c)  # (B, T, Q, C)
        h = self.intra_mossformer(h)  # (B*T, Q, C)
        h = h.view(b, t, q, c).permute(0, 3, 1, 2)  # (B, C, T, Q)
        x = self.intra_se(h) + x  # (B, C, T, Q)

        # ---- inter-frame (time) path
        h = self.inter_norm(x).permute(0, 3, 2, 1)  # (B, Q, T, C)
        h = h.reshape(b * q, t, c)  # (B*Q, T, C)
        # unfold kernel 2 over time: feature 2c + k = channel c at frame t + k
        h = torch.stack((h[:, :-1], h[:, 1:]), dim=-1).reshape(b * q, t - 1, 2 * c)  # (B*Q, T-1, 2C)
        u = self.inter_rnn[0](self.inter_to_u(h))  # (B*Q, T-1, H)
        h = self.inter_to_v(h) * u  # (B*Q, T-1, H)
        h = self.inter_linear(h.transpose(1, 2))  # (B*Q, C, T)
        h = h.transpose(1, 2).reshape(b, q, t, c)  # (B, Q, T, C)
        h = self.inter_mossformer(h)  # (B*Q, T, C)
        h = h.view(b, q, t, c).permute(0, 3, 2, 1)  # (B, C, T, Q)
        x = self.inter_se(h) + x  # (B, C, T, Q)

        # ---- full-band self-attention over frames (heads stacked head-major on the batch)
        qs = torch.cat([self._modules[f"attn_conv_Q_{i}"](x) for i in range(self.n_head)], 0)  # (nh*B, E, T, Q)
        ks = torch.cat([self._modules[f"attn_conv_K_{i}"](x) for i in range(self.n_head)], 0)  # (nh*B, E, T, Q)
        vs = torch.cat([self._modules[f"attn_conv_V_{i}"](x) for i in range(self.n_head)], 0)  # (nh*B, C/nh, T, Q)
        cv = vs.shape[1]
        qs = qs.transpose(1, 2).flatten(2)  # (nh*B, T, E*Q)
        ks = ks.transpose(1, 2).flatten(2)  # (nh*B, T, E*Q)
        vs = vs.transpose(1, 2).flatten(2)  # (nh*B, T, cv*Q)
        scale = 1.0 / math.sqrt(qs.shape[-1])
        att = torch.softmax(torch.bmm(qs, ks.transpose(1, 2)) * scale, dim=-1)  # (nh*B, T, T)
        vs = torch.bmm(att, vs)  # (nh*B, T, cv*Q)
        vs = vs.view(self.n_head, b, t, cv, q).permute(1, 0, 3, 2, 4)  # (B, nh, cv, T, Q)
        vs = vs.reshape(b, self.n_head * cv, t, q)  # (B, C, T, Q): channel h*cv + c
        return self.attn_concat_proj(vs) + x  # (B, C, T, Q)
