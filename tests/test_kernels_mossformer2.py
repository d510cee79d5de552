"""MossFormer2_SE_48K speed kernels (se/models/kernels/mossformer2.py) against the plain reference
forward (se/models/mossformer2*.py): float64 forward and gradients within 1e-9, the float32
oneDNN paths within float32 rounding, state-dict compatibility, and the fallbacks taken when a
private torch op is missing or changes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from se.models import build_network
from se.models import mossformer2_blocks as blocks
from se.models.kernels import mossformer2 as kern
from se.models.kernels import onednn
from se.models.mossformer2 import MossFormer2SE

NAME = "MossFormer2_SE_48K"
TINY = dict(num_blocks=2, width=32, query_key_dim=16, fsmn_inner=16, expansion_factor=2.0, group_size=16,
            fsmn_lorder=4, conv_kernel=5, dropout=0.0)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(1, max |b|)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


def scale(t: torch.Tensor) -> float:
    return max(1.0, float(t.detach().abs().max()))


def grads(out: torch.Tensor, inputs, gout: torch.Tensor):
    return torch.autograd.grad(out, inputs, gout, allow_unused=True)


def assert_same(outs, refs, tol: float = 1e-9):
    for i, (a, b) in enumerate(zip(outs, refs)):
        assert (a is None) == (b is None), i
        if a is not None:
            assert rel_diff(a, b) <= tol, (i, rel_diff(a, b))


def check_module(ref_module: torch.nn.Module, *inputs: torch.Tensor, extra=()):
    """The accelerated copy of ``ref_module`` == the reference in float64: output and gradients
    (inputs and parameters)."""
    ref_module = ref_module.double()
    fast = kern.accelerate(copy.deepcopy(ref_module))
    assert type(fast) is not type(ref_module)  # a kernel was applied
    xs = [x.double().requires_grad_() for x in inputs]
    params = [p for p in ref_module.parameters() if p.requires_grad]
    params_fast = [p for p in fast.parameters() if p.requires_grad]
    out_ref = ref_module(*xs, *extra)
    out = fast(*xs, *extra)
    assert rel_diff(out, out_ref) <= 1e-9
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_same(grads(out, xs + params_fast, gout), grads(out_ref, xs + params, gout))


# ------------------------------------------------------------------------------------------
# the depthwise convolution
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", [5, 39])
def test_depthwise_conv_float64(kernel):
    """Channels-last Function (hand-written backward) and the float64 unfold path == Conv1d."""
    g = torch.Generator().manual_seed(kernel)
    x = torch.randn(2, 50, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 1, kernel, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.conv1d(x.transpose(1, 2), w, padding=kernel // 2, groups=6).transpose(1, 2)
    gout = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref_grads = grads(ref, (x, w), gout)
    for fn in (kern._DepthwiseConvSeq.apply, kern.depthwise_conv_seq):
        out = fn(x, w, kernel // 2)
        assert rel_diff(out, ref) <= 1e-9
        assert_same(grads(out, (x, w), gout), ref_grads)
    with pytest.raises(ValueError, match="odd kernel"):
        kern.depthwise_conv_seq(x, w, kernel // 2 + 1)


@pytest.mark.parametrize("kernel", [17, 39])
def test_depthwise_conv_float32(kernel):
    """float32 oneDNN kernels (incl. the K >= 33 weight-gradient workaround) against float64."""
    g = torch.Generator().manual_seed(kernel)
    x = torch.randn(2, 150, 48, generator=g, requires_grad=True)
    w = torch.randn(48, 1, kernel, generator=g, requires_grad=True)
    y = kern.depthwise_conv_seq(x, w, kernel // 2)
    gy = torch.randn(y.shape, generator=g)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y64 = F.conv1d(x64.transpose(1, 2), w64, padding=kernel // 2, groups=48).transpose(1, 2)
    for ours, ref in zip((y, *grads(y, (x, w), gy)), (y64, *grads(y64, (x64, w64), gy.double()))):
        assert rel_diff(ours, ref) <= 1e-5 * scale(ref)


# ------------------------------------------------------------------------------------------
# FFConvM
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["scalenorm", "layernorm"])
def test_ffconvm_fused_function_float64(norm):
    """_FFConvMCore (no dropout) and the kernel FFConvM == the reference FFConvM in float64."""
    torch.manual_seed(0)
    layer = blocks.FFConvM(6, 10, norm, kernel_size=5, dropout=0.0).double().train()
    x = torch.randn(2, 30, 6, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())
    nrm, lin, _, conv_module, _ = layer.mdl
    conv = conv_module.sequential[1].conv
    out = kern._FFConvMCore.apply(nrm(x), lin.weight, lin.bias, conv.weight, 2, 0.0)
    ref = layer(x)
    assert rel_diff(out, ref) <= 1e-9
    gout = torch.randn(out.shape, dtype=torch.float64)
    assert_same(grads(out, [x, *params], gout), grads(ref, [x, *params], gout))
    check_module(blocks.FFConvM(6, 10, norm, kernel_size=5, dropout=0.0), x.detach())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ffconvm_fused_dropout(dtype):
    """With dropout: the fused Function == the plain composition with the same RNG draws."""
    torch.manual_seed(0)
    layer = blocks.FFConvM(6, 40, "scalenorm", kernel_size=5, dropout=0.1).to(dtype).train()
    nrm, lin, _, conv_module, _ = layer.mdl
    conv = conv_module.sequential[1].conv
    x = torch.randn(2, 70, 6, dtype=dtype, requires_grad=True)
    params = list(layer.parameters())
    torch.manual_seed(1)
    out = kern._FFConvMCore.apply(nrm(x), lin.weight, lin.bias, conv.weight, 2, 0.1)
    torch.manual_seed(1)
    h = F.silu(F.linear(nrm(x), lin.weight, lin.bias))
    ref = kern.dropout(h + F.conv1d(h.transpose(1, 2), conv.weight, padding=2, groups=40).transpose(1, 2), 0.1, True)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    assert rel_diff(out, ref) <= tol
    assert float((out == 0).float().mean()) == pytest.approx(0.1, abs=0.03)  # the dropout rate
    gout = torch.randn(out.shape, dtype=dtype)
    assert_same(grads(out, [x, *params], gout), grads(ref, [x, *params], gout), tol)


# ------------------------------------------------------------------------------------------
# gated attention
# ------------------------------------------------------------------------------------------
def attention_reference(layer: blocks.FLASHShareAFFConvM, heads, hidden):
    """The reference layer's attention and output gate (eval: no dropout)."""
    att = layer.attention(heads, hidden)
    v, u = hidden.chunk(2, dim=-1)
    att_v, att_u = att.chunk(2, dim=-1)
    return (att_u * v) * torch.sigmoid(att_v * u)


@pytest.mark.parametrize("seq_len", [40, 32, 10])
def test_gated_attention_float64(seq_len):
    """Unpadded per-group Function with hand-written backward == the padded reference."""
    g = torch.Generator().manual_seed(seq_len)
    layer = blocks.FLASHShareAFFConvM(8, group_size=16, query_key_dim=8, expansion_factor=1.5).eval()
    heads = torch.randn(2, seq_len, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(2, seq_len, 12, generator=g, dtype=torch.float64, requires_grad=True)
    out = kern.gated_attention(heads, hidden, 16, 0.0)
    ref = attention_reference(layer, heads, hidden)
    assert rel_diff(out, ref) <= 1e-9
    gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
    ref_grads = grads(ref, (heads, hidden), gout)
    assert_same(grads(out, (heads, hidden), gout), ref_grads)
    # float32 (oneDNN products) against the float64 reference
    h32, v32 = heads.detach().float().requires_grad_(), hidden.detach().float().requires_grad_()
    out32 = kern.gated_attention(h32, v32, 16, 0.0)
    for ours, r in zip((out32, *grads(out32, (h32, v32), gout.float())), (ref, *ref_grads)):
        assert rel_diff(ours, r) <= 1e-5 * scale(r)


def test_gated_attention_dropout_gradient():
    """The hand-written backward with attention dropout: gradcheck with a fixed mask (reseeded)."""
    g = torch.Generator().manual_seed(3)
    heads = torch.randn(1, 20, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(1, 20, 6, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(h, v):
        torch.manual_seed(0)
        return kern.gated_attention(h, v, 8, 0.3)

    assert not torch.equal(fn(heads, hidden), kern.gated_attention(heads, hidden, 8, 0.0))
    assert torch.autograd.gradcheck(fn, (heads, hidden), fast_mode=True)


# ------------------------------------------------------------------------------------------
# layers and the whole network
# ------------------------------------------------------------------------------------------
def test_layers_float64():
    torch.manual_seed(0)
    x = torch.randn(2, 37, 8)
    flash = blocks.FLASHShareAFFConvM(8, group_size=16, query_key_dim=8, expansion_factor=2.0, dropout=0.0,
                                      rotary_pos_emb=blocks.RotaryEmbedding(4), kernel_size=5)
    rotary = flash.rotary_pos_emb.cos_sin(37, torch.float64)
    check_module(flash, x, extra=(rotary,))
    check_module(blocks.UniDeepFsmn(8, 8, lorder=4, hidden_size=6), x)
    check_module(blocks.GatedFSMNBlock(8, inner_channels=6, lorder=4, kernel_size=5, dropout=0.0), x)


def test_whole_network_float64():
    """Accelerated network == reference: mask, PSM loss and every parameter gradient (float64)."""
    torch.manual_seed(0)
    reference = MossFormer2SE(**TINY).double().train()
    reference.fbank_dither = 0.0
    fast = kern.accelerate(copy.deepcopy(reference))
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 9600, generator=g, dtype=torch.float64) * 0.1  # 21 frames: 2 groups
    clean = noisy * 0.5
    losses = []
    for model in (reference, fast):
        loss, _ = model.loss(noisy, clean)
        loss.backward()
        losses.append(loss)
    assert rel_diff(losses[1], losses[0]) <= 1e-9
    for (name, p), q in zip(reference.named_parameters(), fast.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert rel_diff(q.grad, p.grad) <= 1e-9, name
    feats = reference.input_features(noisy, dither=0.0)
    with torch.no_grad():
        assert rel_diff(fast.eval()(feats)[0], reference.eval()(feats)[0]) <= 1e-9


def test_state_dict_round_trip_and_selection(monkeypatch):
    torch.manual_seed(0)
    fast = build_network(NAME, {"network_kwargs": TINY})
    assert type(fast.mossformer).__module__ == "se.models.kernels.mossformer2"
    plain = build_network(NAME, {"network_kwargs": TINY}, kernels=False)
    assert type(plain.mossformer).__module__ == "se.models.mossformer2"
    monkeypatch.setenv("SE_KERNELS", "reference")
    assert type(build_network(NAME, {"network_kwargs": TINY}).mossformer).__module__ == "se.models.mossformer2"
    # same keys; an accelerated state dict loads into a reference network and back
    assert list(fast.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(fast.state_dict(), strict=True)
    again = kern.accelerate(kern.accelerate(copy.deepcopy(plain)))  # idempotent
    again.load_state_dict(plain.state_dict(), strict=True)
    feats = torch.randn(1, 20, 180, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        outs = [m.double().eval()(feats)[0] for m in (fast, plain, again)]
    assert rel_diff(outs[1], outs[0]) <= 1e-9 and rel_diff(outs[2], outs[0]) <= 1e-9


# ------------------------------------------------------------------------------------------
# fallbacks for private torch ops
# ------------------------------------------------------------------------------------------
def float32_step(model, feats):
    """Mask and parameter gradients of a float32 training forward."""
    model.zero_grad(set_to_none=True)
    mask = model(feats)[0]
    mask.square().sum().backward()
    return [mask.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_onednn_probe_detects_a_missing_or_changed_op(monkeypatch):
    assert onednn._probe_onednn() is onednn._ONEDNN

    def raises(*args):
        raise RuntimeError("schema changed")

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", raises)
    assert onednn._probe_onednn() is False
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda x, w, *rest: torch.zeros(x.shape[0], w.shape[0]))
    assert onednn._probe_onednn() is False  # wrong values
    monkeypatch.setattr(torch.ops, "mkldnn", object())  # the namespace is gone
    assert onednn._probe_onednn() is False


def test_network_without_onednn(monkeypatch):
    """With the oneDNN op unavailable, the kernels take the torch ops: same results (float32)."""
    torch.manual_seed(0)
    model = kern.accelerate(MossFormer2SE(**TINY)).train()
    feats = torch.randn(2, 21, 180, generator=torch.Generator().manual_seed(2))
    with_op = float32_step(model, feats)
    x, w = torch.randn(3, 5), torch.randn(4, 5)
    assert torch.allclose(onednn.linear_forward(x, w, relu=True), (x @ w.T).relu())  # fused ReLU
    monkeypatch.setattr(onednn, "_ONEDNN", False)
    assert not onednn.use_onednn(feats)
    without = float32_step(model, feats)
    for a, b in zip(with_op, without):
        assert rel_diff(a, b) <= 1e-5 * scale(b)
    assert torch.allclose(onednn.linear_forward(x, w), x @ w.T)
    assert torch.allclose(onednn.linear_forward(x, w, relu=True), (x @ w.T).relu())


def test_aten_backward_ops_fallback(monkeypatch):
    """aten.convolution_backward / silu_backward raising or missing: the probe says so and the
    plain formulas give the same gradients."""
    assert kern._probe_aten() is kern._ATEN is True

    def raises(*args):
        raise RuntimeError("gone")

    with monkeypatch.context() as m:
        m.setattr(torch.ops.aten, "convolution_backward", raises)
        assert kern._probe_aten() is False
    with monkeypatch.context() as m:
        m.setattr(torch.ops.aten, "silu_backward", raises)
        assert kern._probe_aten() is False
    torch.manual_seed(0)
    layer = blocks.FFConvM(6, 10, "layernorm", kernel_size=5, dropout=0.0).train()
    fast = kern.accelerate(copy.deepcopy(layer))
    x = torch.randn(2, 40, 6, requires_grad=True)
    gout = torch.randn(2, 40, 10)
    inputs = [x, *fast.parameters()]
    with_ops = grads(fast(x), inputs, gout)
    monkeypatch.setattr(kern, "_ATEN", False)
    without = grads(fast(x), inputs, gout)
    ref = grads(layer(x), [x, *layer.parameters()], gout)
    for a, b, r in zip(with_ops, without, ref):
        assert rel_diff(a, b) <= 1e-5 * scale(r)
        assert rel_diff(b, r) <= 1e-5 * scale(r)
    w = torch.randn(6, 1, 39, 1, dtype=torch.float64)  # the FSMN's Conv2d layout, K >= 33
    g64, x64 = torch.randn(2, 50, 6, dtype=torch.float64), torch.randn(2, 50, 6, dtype=torch.float64)
    monkeypatch.setattr(kern, "_ATEN", True)
    assert rel_diff(kern._dw_grad_weight(g64, x64, w, 19), kern._dw_grad_weight_plain(g64, x64, w, 19)) <= 1e-9
