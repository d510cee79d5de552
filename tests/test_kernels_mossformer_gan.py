"""se.models.kernels.mossformer_gan: each speed kernel against the plain reference forward
(se/models/mossformer_gan_blocks.py) in float64 within 1e-9, forward and gradient; the whole
accelerated generator; state-dict round trips; the fallback when oneDNN's private op is missing.
"""

import copy
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from se.models import build_network
from se.models import mossformer_gan_blocks as blocks
from se.models.kernels import mossformer_gan as K
from se.models.kernels import onednn

NAME = "MossFormerGAN_SE_16K"
TINY = {"num_channel": 8, "num_blocks": 1, "dropout": 0.0}
TOL = 1e-9


def _close(ours, ref, rel=TOL):
    ours = ours.detach().double().numpy() if torch.is_tensor(ours) else np.asarray(ours, np.float64)
    ref = ref.detach().double().numpy() if torch.is_tensor(ref) else np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    bound = rel * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= bound, f"max |diff| {err:.3g} > {bound:.3g}"


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _fast_copy(module: nn.Module) -> nn.Module:
    """An accelerated deep copy of a reference module (same parameter values)."""
    return K.accelerate(copy.deepcopy(module))


def _check_module(ref: nn.Module, fast: nn.Module, *inputs, grad=True):
    """Forward and gradients (inputs and parameters) of fast equal ref's within TOL."""
    assert any(type(a) in K.KERNEL_CLASSES.values() for a in fast.modules()), "nothing swapped"
    leaves_r = [x.clone().requires_grad_(grad) for x in inputs]
    leaves_f = [x.clone().requires_grad_(grad) for x in inputs]
    yr, yf = ref(*leaves_r), fast(*leaves_f)
    _close(yf, yr)
    if not grad:
        return
    w = _randn(*yr.shape, seed=99)
    (yr * w).sum().backward()
    (yf * w).sum().backward()
    for a, b in zip(leaves_f, leaves_r):
        _close(a.grad, b.grad)
    for a, b in zip(fast.parameters(), ref.parameters()):
        if b.grad is not None or a.grad is not None:
            _close(a.grad, b.grad)


# ---------------------------------------------------------------------------------- convolutions
@pytest.mark.parametrize("n", [37, 3000])  # banded matrix product; one pass per tap (long)
def test_depthwise_conv1d_equals_conv1d(n):
    x, w = _randn(2, n, 24 if n > 100 else 6), _randn(24 if n > 100 else 6, 1, 31, seed=1)
    pad = 15
    want = F.conv1d(x.transpose(1, 2), w, padding=pad, groups=w.shape[0]).transpose(1, 2)
    for path in (K.depthwise_conv1d_banded, K.depthwise_conv1d_channels_last):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        got = path(xs, ws, pad)
        _close(got, want)
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        ref = F.conv1d(xr.transpose(1, 2), wr, padding=pad, groups=w.shape[0]).transpose(1, 2)
        g = _randn(*want.shape, seed=3)
        gx, gw = torch.autograd.grad((got * g).sum(), (xs, ws))
        rx, rw = torch.autograd.grad((ref * g).sum(), (xr, wr))
        _close(gx, rx)
        _close(gw, rw)
    _close(K.depthwise_conv1d(x, w, pad, plus_input=True), x + want)
    with pytest.raises(ValueError, match="same"):
        K.depthwise_conv1d(x, w, 3, plus_input=True)


def test_conv_module_and_fsmn_kernels():
    x = _randn(3, 40, 8)
    conv = blocks.ConvModule(8).double()
    _check_module(conv, _fast_copy(conv), x)
    fsmn = blocks.UniDeepFsmn(8, 8, 5, 12).double()
    _check_module(fsmn, _fast_copy(fsmn), x)
    assert type(_fast_copy(fsmn)) is K.FastUniDeepFsmn


@pytest.mark.parametrize("kw", [
    dict(in_channels=6, out_channels=5, kernel_size=(2, 3), dilation=(4, 1), padding=(4, 1)),
    dict(in_channels=6, out_channels=5, kernel_size=(1, 3), stride=(1, 2), padding=(0, 1)),
    dict(in_channels=6, out_channels=12, kernel_size=(1, 2), groups=6),  # depthwise x2
    dict(in_channels=6, out_channels=6, kernel_size=(3, 1), groups=6, bias=False),
    dict(in_channels=6, out_channels=4, kernel_size=(1, 1), groups=2),  # falls back to F.conv2d
])
def test_float64_conv2d_equals_conv2d(kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(**kw).double()
    _check_module(conv, _fast_copy(conv), _randn(2, 6, 9, 11))


def test_float64_conv_transpose1d_equals_reference():
    torch.manual_seed(0)
    conv = nn.ConvTranspose1d(6, 4, 2, stride=1).double()
    _check_module(conv, _fast_copy(conv), _randn(3, 6, 10))


@pytest.mark.parametrize("grad", [True, False])  # concatenation; one preallocated buffer
def test_dilated_dense_net_kernel(grad):
    torch.manual_seed(0)
    net = blocks.DilatedDenseNet(depth=4, in_channels=4).double()
    _check_module(net, _fast_copy(net), _randn(2, 4, 20, 9), grad=grad)
    if not grad:
        with torch.no_grad():
            _close(_fast_copy(net)(_randn(2, 4, 20, 9)), net(_randn(2, 4, 20, 9)))


# ---------------------------------------------------------------------------------- attention
def _plain_attention(q, k, v, scale, zero_diag):
    a = blocks.relu_square(torch.bmm(q, k.transpose(1, 2)) * scale)
    if zero_diag:
        a = a.masked_fill(torch.eye(q.shape[1], dtype=torch.bool), 0.0)
    return torch.bmm(a, v)


@pytest.mark.parametrize("zero_diag", [False, True])
def test_attention_paths_equal_the_plain_formula(zero_diag):
    q, k, v = _randn(3, 37, 8), _randn(3, 37, 8, seed=1), _randn(3, 37, 5, seed=2)
    want = _plain_attention(q, k, v, 1 / 37, zero_diag)
    qs = q / 37
    with torch.no_grad():
        for m in (1, 10, 37):  # one query, partial last block, whole rows
            _close(K.attention_rowwise(qs, k, v, torch.zeros(3, 37, 5, dtype=q.dtype), m, zero_diag, 0.0), want)
            for rows in (1, 2, 3):
                _close(K.attention_batched(qs, k, v, torch.zeros(3, 37, 5, dtype=q.dtype), m, rows,
                                           zero_diag, 0.0), want)
        for block in (64, 37 * 10, 37 * 37 * 2, None):  # the dispatcher, adding into out
            _close(K.relu_square_attention(q, k, v, 1 / 37, zero_diag, out=torch.ones_like(want),
                                           block_elements=block), want + 1)
    # autograd: query blocks under checkpointing (m = 16: 16 + 16 + 5), or one block
    for ckpt in (True, False):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = K.relu_square_attention(*leaves, 1 / 37, zero_diag, block_elements=3 * 37 * 16,
                                      checkpoint_blocks=ckpt)
        _close(out, want)
        grads = torch.autograd.grad(out.square().sum(), leaves)
        leaves2 = [t.clone().requires_grad_() for t in (q, k, v)]
        grads2 = torch.autograd.grad(_plain_attention(*leaves2, 1 / 37, zero_diag).square().sum(), leaves2)
        for a, b in zip(grads, grads2):
            _close(a, b)


@pytest.mark.parametrize("onednn_available", [True, False])
def test_float32_long_sequence_attention_and_onednn_fallback(monkeypatch, onednn_available):
    # float32 CPU with >= ONEDNN_MIN_KEYS keys takes the row-wise oneDNN products; with the
    # private op unavailable the same call takes the batched torch products
    if not onednn_available:
        monkeypatch.setattr(onednn, "_ONEDNN", False)
    calls = []
    monkeypatch.setattr(K, "attention_rowwise", lambda *a: calls.append("rowwise") or _rowwise(*a))
    n = K.ONEDNN_MIN_KEYS + 40
    q, k, v = _randn(3, n, 16, seed=1), _randn(3, n, 16, seed=2), _randn(3, n, 24, seed=3)
    for zero_diag in (False, True):
        want = _plain_attention(q, k, v, 1 / n, zero_diag)
        with torch.no_grad():
            got = K.relu_square_attention(q.float(), k.float(), v.float(), 1 / n, zero_diag,
                                          block_elements=200 * 70)
        assert got.dtype == torch.float32
        _close(got, want, 2e-6)
    assert calls == (["rowwise"] * 2 if onednn_available and onednn._ONEDNN else [])


_rowwise = K.attention_rowwise


def test_onednn_probe_falls_back_when_the_private_op_is_missing_or_wrong(monkeypatch):
    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace())  # op missing
    assert onednn._probe_onednn() is False
    wrong = types.SimpleNamespace(_linear_pointwise=lambda x, w, *a: torch.zeros(x.shape[0], w.shape[0]))
    monkeypatch.setattr(torch.ops, "mkldnn", wrong)  # op changed meaning
    assert onednn._probe_onednn() is False

    def raises(*a):
        raise RuntimeError("unsupported")

    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace(_linear_pointwise=raises))
    assert onednn._probe_onednn() is False
    monkeypatch.setattr(onednn, "_ONEDNN", False)
    a, b = torch.randn(5, 7), torch.randn(3, 7)
    assert not onednn.use_onednn(a, b)
    torch.testing.assert_close(onednn.mm_nt(a, b), a @ b.t())


def test_fast_dropout_has_the_dropout_distribution():
    x = torch.ones(400_000)
    torch.manual_seed(0)
    y = K.fast_dropout(x, 0.1, True)
    kept = (y != 0).double().mean().item()
    assert abs(kept - 0.9) < 3e-3
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.9))
    assert K.fast_dropout(x, 0.1, False) is x
    g = torch.ones(1000, requires_grad=True)
    K.fast_dropout(g, 0.5, True).sum().backward()
    assert set(g.grad.unique().tolist()) <= {0.0, 2.0}


@pytest.mark.parametrize("ckpt", [True, False])
def test_mossformer_kernel(ckpt):
    torch.manual_seed(0)
    ref = blocks.MossFormer(dim=8, qk_dim=12, hidden_dim=10, rotary_dim=4, dropout=0.0).double()
    fast = _fast_copy(ref)
    fast.checkpoint_attention = ckpt
    x = _randn(2, 3, 20, 8)
    _check_module(ref, fast, x)
    with torch.inference_mode():  # in-place rotation and gating
        _close(fast(x), ref(x))


# ---------------------------------------------------------------------------------- generator
def _pair(cfg):
    ref = build_network(NAME, {"network_kwargs": cfg}, kernels=False).double()
    fast = build_network(NAME, {"network_kwargs": cfg}, kernels=True).double()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.parametrize("checkpoint_blocks", [True, False])
def test_accelerated_generator_equals_reference(checkpoint_blocks):
    ref, fast = _pair({**TINY, "checkpoint_blocks": checkpoint_blocks})
    kinds = {type(m) for m in fast.modules()}
    assert {K.FastMossFormer, K.FastConvModule, K.FastDilatedDenseNet, K.FastConv2d} <= kinds
    assert not kinds & set(K.KERNEL_CLASSES)  # every reference layer with a kernel swapped
    assert not {type(m) for m in ref.modules()} & set(K.KERNEL_CLASSES.values())
    assert {m.checkpoint_attention for m in fast.modules() if isinstance(m, K.FastMossFormer)} == {
        not checkpoint_blocks}
    x = _randn(2, 2, 12, 201) * 0.3
    ref.train(), fast.train()  # dropout 0: the checkpointed blocks run
    leaves_r, leaves_f = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = torch.cat(ref(leaves_r), 1), torch.cat(fast(leaves_f), 1)
    _close(yf, yr)
    w = _randn(*yr.shape, seed=5)
    (yr * w).sum().backward()
    (yf * w).sum().backward()
    _close(leaves_f.grad, leaves_r.grad)
    for a, b in zip(fast.parameters(), ref.parameters()):
        if b.requires_grad:
            _close(a.grad, b.grad)
    ref.eval(), fast.eval()
    with torch.inference_mode():
        _close(torch.cat(fast(x), 1), torch.cat(ref(x), 1))


def test_state_dict_round_trip_and_reference_switch(monkeypatch):
    ref, fast = _pair(TINY)
    assert list(fast.state_dict()) == list(ref.state_dict())
    assert K.accelerate(fast) is fast  # idempotent
    other = build_network(NAME, {"network_kwargs": TINY}, kernels=False).double()
    other.load_state_dict(fast.state_dict())  # accelerated -> reference
    x = _randn(1, 2, 9, 201) * 0.3
    with torch.no_grad():
        _close(torch.cat(other(x), 1), torch.cat(fast(x), 1))
    monkeypatch.setenv("SE_KERNELS", "reference")
    plain = build_network(NAME, {"network_kwargs": TINY})
    assert not {type(m) for m in plain.modules()} & set(K.KERNEL_CLASSES.values())
    monkeypatch.delenv("SE_KERNELS")
    assert any(isinstance(m, K.FastMossFormer) for m in build_network(NAME, {"network_kwargs": TINY}).modules())
