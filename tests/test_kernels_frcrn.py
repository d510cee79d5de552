"""se/models/kernels/frcrn.py against the plain reference forward of se/models/frcrn.py.

Every kernel: float64 forward and gradients (input and parameters) within 1e-9 of the
reference module; the accelerated network as a whole; state-dict round trips; reuse and
invalidation of the inference-time weight caches; the fallbacks of the private torch APIs.
The kernels run on channels-last maps (B, F, T, 2C), the reference on (B, 2C, F, T).
"""

import copy

import pytest
import torch

from se.models import build_network
from se.models import kernels as kernel_select
from se.models.frcrn import (FRCRN, ComplexConv2d, ComplexFsmn, ComplexFsmnL1, ComplexSELayer,
                             ComplexUNet, Decoder, Encoder)
from se.models.kernels import frcrn as kernels

TINY = {"channels": 4, "fsmn_hidden": 3, "se_reduction": 2, "lorder": 3}
TOL = 1e-9


def cl(x):  # (B, 2C, F, T) -> (B, F, T, 2C)
    return x.permute(0, 2, 3, 1).contiguous()


def nchw(x):  # (B, F, T, 2C) -> (B, 2C, F, T)
    return x.permute(0, 3, 1, 2)


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def randomise(module, seed=0):
    """Random parameters and BN statistics (so that folding and biases matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5 if "running_var" in name
                        else torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.5)
    return module


def max_err(a, b):
    return float((a - b).detach().abs().max())


def close(a, b, tol=TOL):
    """max |a - b| <= tol relative to the largest |b| (at least 1)."""
    return max_err(a, b) <= tol * max(1.0, float(b.detach().abs().max()))


def check(ref_module, kernel, x, seed=1):
    """kernel(copy, channels-last x) vs ref_module(x): outputs, input and parameter gradients,
    buffers (BN running statistics) all within TOL."""
    fast = copy.deepcopy(ref_module)
    x_ref = x.clone().requires_grad_(True)
    x_cl = cl(x).requires_grad_(True)
    y_ref = ref_module(x_ref)
    y_fast = nchw(kernel(fast, x_cl))
    assert y_fast.shape == y_ref.shape
    assert close(y_fast, y_ref)
    w = rand(*y_ref.shape, seed=seed)  # loss weights
    (y_ref * w).sum().backward()
    (y_fast * w).sum().backward()
    assert close(x_cl.grad, cl(x_ref.grad))
    for (name, p), q in zip(ref_module.named_parameters(), fast.parameters()):
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), name
        else:
            assert close(q.grad, p.grad), name
    for (name, a), b in zip(ref_module.named_buffers(), fast.buffers()):
        assert close(b.double(), a.double()), name


# ---------------------------------------------------------------------------------------------
# each kernel vs its reference module
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tile_rows", [2048, 40])
def test_fsmn_without_autograd_matches_the_reference(monkeypatch, tile_rows):
    """The inference path (tiles of the channels-last map, no channel-major copy): one tile or
    one position per tile, sequences shorter and longer than the memory, a batch of two."""
    monkeypatch.setattr(kernels, "_TILE_ROWS", tile_rows)
    for seq in (3, 13):
        fsmn = randomise(ComplexFsmnL1(4, 3, 5).double())
        x = rand(2, 8, seq, 7)  # (B, 2C, F, T): memory along F
        with torch.no_grad():
            assert close(nchw(kernels.complex_fsmn(cl(x), fsmn, "L1")), fsmn(x))
    fsmn = randomise(ComplexFsmn(4, 3, 5).double())
    x = rand(2, 8, 1, 11)  # memory along T
    with torch.no_grad():
        assert close(nchw(kernels.time_fsmn(fsmn, cl(x))), fsmn(x))
    assert fsmn.__dict__["_reused"]["L1/tiles"]  # inference weights kept for the next call


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_conv_blocks(causal, training):
    for block, cin, freq in ((Encoder(3, 4, (5, 2), causal), 3, 21), (Decoder(6, 4, (5, 2), causal), 6, 9)):
        block = randomise(block.double()).train(training)
        check(block, kernels.conv_block, rand(2, 2 * cin, freq, 5))


@pytest.mark.parametrize("stride,padding", [((2, 1), (0, 1)), ((2, 1), (0, 0)), ((1, 3), (1, 2))])
def test_narrow_transposed_conv(stride, padding):
    """Few output channels, no autograd: one product and an overlap-add, as conv_transpose2d."""
    x = cl(rand(2, 6, 7, 5)).permute(0, 3, 1, 2)  # NCHW view of a channels-last tensor
    weight, bias = rand(6, 2, 5, 2, seed=1), rand(2, seed=2)
    want = torch.nn.functional.conv_transpose2d(x, weight, bias, stride, padding)
    got = kernels._narrow_transposed_conv(x, weight, bias, stride, padding)
    assert got.shape == want.shape and close(got, want)


def test_complex_conv():
    layer = randomise(ComplexConv2d(3, 2, (3, 2), (2, 1), (0, 1)).double())
    check(layer, kernels.complex_conv, rand(2, 6, 11, 4))
    check(randomise(ComplexConv2d(1, 1, 1).double()), kernels.complex_conv, rand(2, 2, 9, 4))


def test_frequency_fsmn():
    fsmn = randomise(ComplexFsmnL1(4, 3, 5).double())
    check(fsmn, lambda m, x: kernels.complex_fsmn(x, m, "L1"), rand(2, 8, 13, 3))


def test_time_fsmn():
    fsmn = randomise(ComplexFsmn(4, 3, 5).double())
    check(fsmn, kernels.time_fsmn, rand(2, 8, 1, 11))
    with pytest.raises(ValueError, match=r"F = 1.*\(1, 2, 3, 8\)"):
        kernels.time_fsmn(fsmn, rand(1, 2, 3, 8))


@pytest.mark.parametrize("decay", [None, 1.0, 0.8])
def test_se_layer(decay):
    se = randomise(ComplexSELayer(4, 2, decay).double())
    check(se, lambda m, x: x * kernels.se_gate_map(m, x), rand(2, 8, 7, 5))


def test_complex_cat():
    a, b = rand(2, 4, 5, 3), rand(2, 6, 5, 3, seed=1)
    from se.models.frcrn import _complex_cat

    assert torch.equal(nchw(kernels.complex_cat(cl(a), cl(b))), _complex_cat(a, b))


@pytest.mark.parametrize("decay", [None, 0.8])
@pytest.mark.parametrize("grad", [False, True])
def test_complex_cat_applies_se_gates(decay, grad):
    """SE gates applied in the concatenation = the SE modules on each map, then the concatenation."""
    a, b = cl(rand(2, 4, 5, 3)), cl(rand(2, 6, 5, 3, seed=1))  # (B, F, T, 2C), C = 2 and 3
    se_a = randomise(ComplexSELayer(2, 2, decay).double(), seed=2)
    se_b = randomise(ComplexSELayer(3, 2, decay).double(), seed=3)
    with torch.no_grad():
        want = kernels.complex_cat(cl(se_a(nchw(a))), cl(se_b(nchw(b))))
        want_one = kernels.complex_cat(a, cl(se_b(nchw(b))))
    with torch.set_grad_enabled(grad):
        gate_a, gate_b = kernels.se_gate_map(se_a, a), kernels.se_gate_map(se_b, b)
        assert close(kernels.complex_cat(a, b, gate_a, gate_b), want)
        assert close(kernels.complex_cat(a, b, None, gate_b), want_one)


@pytest.mark.parametrize("batch,seq,width,block,chunk", [
    (2, 30, 3, 10, 16384),  # one chunk, 3 blocks
    (1, 23, 2, 8, 40),  # 3 chunks of one block, last block padded
    (2, 9, 2, 9, 16384),  # one block shorter than the memory
])
def test_fsmn_function_gradcheck(monkeypatch, batch, seq, width, block, chunk):
    monkeypatch.setattr(kernels, "_FSMN_CHUNK", chunk)
    channels, hidden, lorder = 2, 3, 6 if seq > 9 else 20
    inputs = [rand(batch, seq, width, 2 * channels), rand(2 * hidden, channels + 1, seed=1),
              rand(2, channels, hidden, seed=2), rand(2 * channels, lorder, seed=3)]
    inputs = [t.requires_grad_(True) for t in inputs]
    fn = lambda *a: kernels._ComplexFsmnFunction.apply(*a, block)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def test_fsmn_chunks_and_blocks_match_the_reference(monkeypatch):
    # small chunks and blocks: several memory blocks per chunk boundary, memory carried over
    monkeypatch.setattr(kernels, "_FSMN_CHUNK", 64)
    monkeypatch.setattr(kernels, "_MAX_BLOCK", 7)
    fsmn = randomise(ComplexFsmnL1(4, 3, 5).double())
    check(fsmn, lambda m, x: kernels.complex_fsmn(x, m, "L1"), rand(2, 8, 40, 3))


# ---------------------------------------------------------------------------------------------
# the whole network
# ---------------------------------------------------------------------------------------------
def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return randomise(FRCRN(**{**TINY, **kw}).double(), seed)


def signals(batch=2, length=2880, seed=0):
    return rand(batch, length, seed=seed) * 0.1, rand(batch, length, seed=seed + 1) * 0.05


@pytest.mark.parametrize("causal", [False, True])
def test_accelerated_network_matches_reference(causal):
    ref = tiny(causal=causal).train()
    fast = kernels.accelerate(copy.deepcopy(ref))
    assert isinstance(fast.unet, kernels.FastComplexUNet) and type(ref.unet) is ComplexUNet
    noisy, clean = signals()
    loss_ref, _ = ref.loss(noisy, clean)
    loss_fast, _ = fast.loss(noisy, clean)
    assert close(loss_fast, loss_ref)
    loss_ref.backward()
    loss_fast.backward()
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        if p.grad is None:
            assert q.grad is None, name
        else:
            assert close(q.grad, p.grad), name
    for (name, a), b in zip(ref.named_buffers(), fast.buffers()):
        assert close(b.double(), a.double()), name
    ref.eval(), fast.eval()
    with torch.no_grad():
        for a, b in zip(ref(noisy), fast(noisy)):
            assert close(b, a)


def test_build_network_selects_the_kernels_in_one_place(monkeypatch):
    assert isinstance(build_network("FRCRN_SE_16K", {"network_kwargs": TINY}).unet, kernels.FastComplexUNet)
    assert type(build_network("FRCRN_SE_16K", {"network_kwargs": TINY}, kernels=False).unet) is ComplexUNet
    monkeypatch.setenv(kernel_select.ENV, "reference")
    assert type(build_network("FRCRN_SE_16K", {"network_kwargs": TINY}).unet) is ComplexUNet


def test_state_dict_round_trip():
    ref = tiny(seed=3).eval()
    fast = kernels.accelerate(copy.deepcopy(ref))
    assert list(fast.state_dict()) == list(ref.state_dict())
    noisy, _ = signals(1)
    other = tiny(seed=4).eval()
    with torch.no_grad():
        fast(noisy)  # fills the caches of the old weights
        fast.load_state_dict(other.state_dict())  # reference -> accelerated
        assert close(fast(noisy)[1], other(noisy)[1])
        back = FRCRN(**TINY).double().eval()
        back.load_state_dict(fast.state_dict())  # accelerated -> reference
        assert close(back(noisy)[1], other(noisy)[1])
    assert type(kernels.reference(fast).unet) is ComplexUNet and not fast.unet.encoder1.__dict__.get("_reused")


def test_caches_are_reused_and_invalidated():
    ref = tiny(seed=5)
    fast = kernels.accelerate(copy.deepcopy(ref)).eval()
    noisy, clean = signals(1)
    block = fast.unet.encoder2
    with torch.no_grad():
        fast(noisy)
        cached = block.__dict__["_reused"]["weights"][1]
        fast(noisy)
        assert block.__dict__["_reused"]["weights"][1] is cached  # reused while nothing changed
    # an optimiser step (in-place update) -> the next inference uses the new weights
    for model in (ref, fast):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model.loss(noisy, clean)[0].backward()
        opt.step()
        model.eval()
    with torch.no_grad():
        assert close(fast(noisy)[1], ref(noisy)[1])
        assert block.__dict__["_reused"]["weights"][1] is not cached
        ref.unet.encoder2.conv.conv_re.weight.mul_(2)  # any in-place change of a source
        fast.unet.encoder2.conv.conv_re.weight.mul_(2)
        assert close(fast(noisy)[1], ref(noisy)[1])
    fast.train()  # train() / eval() / to() drop the caches
    assert "_reused" not in block.__dict__
    with torch.no_grad():
        fast.eval()(noisy)
    fast.float()
    assert "_reused" not in block.__dict__
    with torch.no_grad():
        # float32 against float64 after the weight doubling above (outputs ~1e3): a stale float64
        # cache would fail outright; 1e-3 leaves room for float32 rounding on any CPU
        assert close(fast(noisy.float())[1].double(), ref(noisy)[1], 1e-3)


# ---------------------------------------------------------------------------------------------
# private torch APIs: the fallbacks give the same values
# ---------------------------------------------------------------------------------------------
def _missing_op():
    raise AttributeError("no threshold_backward")


def test_relu_backward_fallback(monkeypatch):
    assert kernels._THRESHOLD_BACKWARD  # this torch has the op
    fsmn = randomise(ComplexFsmnL1(4, 3, 5).double())
    x = rand(2, 13, 3, 8).requires_grad_(True)

    def grads():
        x.grad = None
        for p in fsmn.parameters():
            p.grad = None
        (kernels.complex_fsmn(x, fsmn, "L1") * rand(2, 13, 3, 8, seed=1)).sum().backward()
        return [x.grad.clone()] + [p.grad.clone() for p in fsmn.parameters()]

    with_op = grads()
    monkeypatch.setattr(kernels, "_threshold_backward_op", _missing_op)
    assert not kernels._probe_threshold_backward()
    monkeypatch.setattr(kernels, "_THRESHOLD_BACKWARD", False)
    for a, b in zip(with_op, grads()):
        assert torch.equal(a, b)


def test_version_counter_fallback(monkeypatch):
    assert kernels._VERSION
    fast = kernels.accelerate(tiny(seed=6)).eval()
    noisy, _ = signals(1)
    with torch.no_grad():
        with_cache = fast(noisy)[1]
    fast.unet.drop_reused()
    monkeypatch.setattr(kernels, "_VERSION", False)
    with torch.no_grad():
        without = fast(noisy)[1]
    assert "_reused" not in fast.unet.encoder2.__dict__  # nothing kept without version counters
    assert torch.equal(with_cache, without)
