"""Metric discriminator of MossFormerGAN: predicts the normalised PESQ of an estimate.

Paper: CMGAN's metric discriminator idea (R. Cao, S. Abdulatif, B. Yang, "CMGAN:
Conformer-based metric GAN for speech enhancement", Interspeech 2022; MetricGAN, S.-W. Fu et
al., ICML 2019), in the ClearerVoice-Studio MossFormerGAN_SE_16K flavour: a NISQA-style
framewise CNN (G. Mittag et al., "NISQA", Interspeech 2021) over 15-frame segments, two
Conformer blocks (A. Gulati et al., Interspeech 2020) and attention pooling.  Keys and shapes
equal the release (tests/data/clearvoice/MossFormerGAN_SE_16K_discriminator.state_dict.json).

Shape legend: B batch, F frequency bins (201), T frames, W segments per utterance,
D conformer width (384 = 6 x last CNN channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from se.models.mossformer_gan_blocks import Transpose12

# adaptive max-pool output sizes after CNN blocks 1-5 (NISQA AdaptCNN as in the release)
_POOLS = ((101, 7), (50, 7), (25, 5), (12, 5), (6, 3))


class _Scale(nn.Module):
    def __init__(self, scale: float, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.scale = scale

    def forward(self, x):
        return self.fn(x) * self.scale


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn  # registered before norm: release key order
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.fn(self.norm(x))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim * mult), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(dim * mult, dim), nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.net(x)


class _RelPosAttention(nn.Module):
    """Multi-head self-attention with Shaw relative position embeddings (clamped at +-512)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float, max_pos_emb: int = 512):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.max_pos_emb = max_pos_emb
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.rel_pos_emb = nn.Embedding(2 * max_pos_emb + 1, dim_head)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):  # (B, W, D)
        b, n, _ = x.shape
        h = self.heads
        q = self.to_q(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = (t.view(b, n, h, -1).transpose(1, 2) for t in (q, k, v))  # (B, h, W, dh)
        dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, h, W, W)
        pos = torch.arange(n, device=x.device)
        dist = (pos[:, None] - pos[None, :]).clamp(-self.max_pos_emb, self.max_pos_emb)
        rel = self.rel_pos_emb(dist + self.max_pos_emb).to(q)  # (W, W, dh)
        pos_attn = torch.einsum("bhnd,nrd->bhnr", q, rel) * self.scale
        attn = self.dropout((dots + pos_attn).softmax(dim=-1))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, -1)  # (B, W, h*dh)
        return self.dropout(self.to_out(out))


class _DepthWiseConv1d(nn.Module):
    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)

    def forward(self, x):
        return self.conv(x)


class _ConformerConv(nn.Module):
    def __init__(self, dim: int, expansion: int, kernel: int, dropout: float):
        super().__init__()
        inner = dim * expansion
        self.net = nn.Sequential(
            nn.LayerNorm(dim), Transpose12(), nn.Conv1d(dim, inner * 2, 1), nn.GLU(dim=1),
            _DepthWiseConv1d(inner, kernel), nn.BatchNorm1d(inner), nn.SiLU(),
            nn.Conv1d(inner, dim, 1), Transpose12(), nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.net(x)


class ConformerBlock(nn.Module):
    """x += FF/2; x += MHSA; x += Conv; x += FF/2; LayerNorm.  (B, W, D) -> (B, W, D)."""

    def __init__(self, dim: int, heads: int = 4, ff_mult: int = 4, conv_expansion: int = 2,
                 conv_kernel: int = 31, attn_dropout: float = 0.2, ff_dropout: float = 0.2,
                 conv_dropout: float = 0.0):
        super().__init__()
        self.ff1 = _Scale(0.5, _PreNorm(dim, _FeedForward(dim, ff_mult, ff_dropout)))
        self.attn = _PreNorm(dim, _RelPosAttention(dim, heads, dim // heads, attn_dropout))
        self.conv = _ConformerConv(dim, conv_expansion, conv_kernel, conv_dropout)
        self.ff2 = _Scale(0.5, _PreNorm(dim, _FeedForward(dim, ff_mult, ff_dropout)))
        self.post_norm = nn.LayerNorm(dim)

    def forward(self, x):  # (B, W, D)
        x = self.ff1(x) + x  # half-step feed-forward (Macaron)
        x = self.attn(x) + x  # relative-position self-attention over segments
        x = self.conv(x) + x  # convolution module along the segments
        x = self.ff2(x) + x
        return self.post_norm(x)  # (B, W, D)


class AdaptCNN(nn.Module):
    """Six 3x3 Conv-BN-ReLU blocks with adaptive max pooling: (N, 2, F, 15) -> (N, 6*C6)."""

    def __init__(self, channels=(16, 32, 64, 64, 64, 64), dropout: float = 0.2):
        super().__init__()
        c_in = 2
        for i, c in enumerate(channels, start=1):
            pad = (1, 0) if i == 6 else (1, 1)
            self.add_module(f"conv{i}", nn.Conv2d(c_in, c, (3, 3), padding=pad))
            self.add_module(f"bn{i}", nn.BatchNorm2d(c))
            c_in = c
        self.dropout = nn.Dropout2d(dropout)
        self.out_features = channels[-1] * _POOLS[-1][0]

    def forward(self, x):  # (N, 2, F, 15)
        for i in range(1, 7):
            if i >= 3:
                x = self.dropout(x)
            x = F.relu(self._modules[f"bn{i}"](self._modules[f"conv{i}"](x)))
            if i <= 5:
                x = F.adaptive_max_pool2d(x, _POOLS[i - 1])
        return x.flatten(1)  # (N, C6 * 6 * 1)


class PoolAttFF(nn.Module):
    """Attention pooling over segments: (B, W, D) -> (B, 1)."""

    def __init__(self, dim: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, 1)
        self.linear3 = nn.Linear(dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        att = self.linear2(self.dropout(F.relu(self.linear1(x))))  # (B, W, 1)
        att = att.transpose(1, 2).softmax(dim=2)  # (B, 1, W)
        return self.linear3(torch.bmm(att, x).squeeze(1))  # (B, 1)


class LearnableSigmoid(nn.Module):
    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta
        self.slope = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.beta * torch.sigmoid(self.slope * x)


class MetricDiscriminator(nn.Module):
    """Predicts the normalised PESQ, (PESQ - 1) / 3.5, of an estimate y given a reference x.

    Args (CMGAN metric discriminator, NISQA CNN, Conformer):
        ndf: CNN width; the six blocks use (1, 2, 4, 4, 4, 4) x ndf (16 in the release:
            16, 32, 64, 64, 64, 64); the Conformer width is D = 6 x 4 x ndf (384).  (The
            reference's Discriminator(ndf=16) ignores its argument and always builds 16.)
        num_conformers: Conformer blocks (2).
        heads: attention heads (4, head size D / heads).
        ff_mult, conv_expansion, conv_kernel: Conformer sizes (4, 2, 31).
        attn_dropout, ff_dropout, cnn_dropout, pool_dropout: 0.2, 0.2, 0.2, 0.1.
        pool_hidden: attention-pooling hidden size (128).
        segment_frames, segment_hop: segment length and hop in frames (15, 4).

    forward(x, y): x, y compressed magnitude spectrograms (B, 1, F, T) (frequency-major),
    T >= segment_frames; returns (B, 1) in (0, 1).
    """

    def __init__(self, ndf: int = 16, num_conformers: int = 2, heads: int = 4,
                 ff_mult: int = 4, conv_expansion: int = 2, conv_kernel: int = 31,
                 attn_dropout: float = 0.2, ff_dropout: float = 0.2, cnn_dropout: float = 0.2,
                 pool_hidden: int = 128, pool_dropout: float = 0.1, segment_frames: int = 15,
                 segment_hop: int = 4):
        super().__init__()
        b = ndf
        self.segment_frames = segment_frames
        self.segment_hop = segment_hop
        self.cnn = AdaptCNN((b, 2 * b, 4 * b, 4 * b, 4 * b, 4 * b), cnn_dropout)
        dim = self.cnn.out_features
        if dim % heads:
            raise ValueError(f"Conformer width {dim} not divisible by heads={heads}")
        self.att = nn.ModuleList([
            ConformerBlock(dim, heads, ff_mult, conv_expansion, conv_kernel, attn_dropout,
                           ff_dropout) for _ in range(num_conformers)
        ])
        self.pool = PoolAttFF(dim, pool_hidden, pool_dropout)
        self.sigmoid = LearnableSigmoid()

    def segments(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) -> (B*W, 1, F, 15): 15-frame windows every 4 frames, batch-major."""
        b, c, f, t = x.shape
        seg = x.unfold(3, self.segment_frames, self.segment_hop)  # (B, 1, F, W, 15)
        w = seg.shape[3]
        return seg.permute(0, 3, 1, 2, 4).reshape(b * w, c, f, self.segment_frames)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for name, t in (("x", x), ("y", y)):
            if t.dim() != 4 or t.shape[1] != 1:
                raise ValueError(
                    f"MetricDiscriminator expects {name} of shape (B, 1, F, T), got {tuple(t.shape)}"
                )
        if x.shape != y.shape:
            raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} differ")
        b, _, _, t = x.shape
        if t < self.segment_frames:
            raise ValueError(f"need at least {self.segment_frames} frames, got T={t}")
        z = torch.cat((self.segments(x), self.segments(y)), dim=1)  # (B*W, 2, F, 15): [ref, estimate]
        z = self.cnn(z)  # (B*W, D)
        z = z.view(b, -1, z.shape[-1])  # (B, W, D)
        for blk in self.att:
            z = blk(z)  # (B, W, D)
        return self.sigmoid(self.pool(z))  # (B, 1)

    @staticmethod
    def convert_clearvoice_state_dict(sd: dict) -> dict:
        """Release discriminator state dict (``module.`` prefix allowed) -> this module's keys.

        The keys are the release's own; the number of Conformer blocks is read from the keys.
        Raises ValueError listing missing / unexpected keys.
        """
        sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
        blocks = {int(k.split(".")[1]) for k in sd if k.startswith("att.")}
        n = max(blocks) + 1 if blocks else 2
        with torch.device("meta"):
            ref = MetricDiscriminator(num_conformers=n)
        expected = list(ref.state_dict().keys())
        _check_keys("MetricDiscriminator", expected, sd)
        return {k: sd[k] for k in expected}


def _check_keys(what: str, expected: list[str], sd: dict) -> None:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in set(expected)]
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")

        raise ValueError(
            f"{what}: state dict does not match the release layout; "
            f"missing keys: [{show(missing)}]; unexpected keys: [{show(unexpected)}]"
        )
