"""oneDNN matrix products for float32 CPU tensors, with torch fallbacks.

torch's float32 CPU GEMMs go to MKL, which does not use AVX-512 on AMD processors; oneDNN's
matmul (the kernel behind the private op ``torch.ops.mkldnn._linear_pointwise``, which inductor
uses) does. The op is probed once at import: when it is missing, raises, or returns a wrong
value (a torch upgrade may change it), every function here falls back to the ordinary torch op
with the same result. Anything that is not float32 on the CPU (float64 parity tests, GPUs,
bf16 autocast) also takes the ordinary ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _probe_onednn() -> bool:
    try:
        op = torch.ops.mkldnn._linear_pointwise
        y = op(torch.ones(2, 3), torch.ones(4, 3), None, "none", [], "")
        return tuple(y.shape) == (2, 4) and bool((y == 3).all())
    except (AttributeError, RuntimeError, TypeError):
        return False


_ONEDNN = _probe_onednn()


def use_onednn(*tensors: torch.Tensor) -> bool:
    """float32 CPU tensors outside autocast (bf16 training takes the ordinary ops)."""
    return (_ONEDNN and not torch.is_autocast_enabled("cpu")
            and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors))


def mm_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b^T for a (..., K), b (N, K) (any strides) -> (..., N)."""
    if use_onednn(a, b):
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return torch.matmul(a, b.transpose(-1, -2))


class _Linear(torch.autograd.Function):
    """y = x W^T + b with the three products of forward/backward on oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])  # (M, N)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = mm_nt(g2, weight.t()).reshape(x.shape)  # (M, K)
        if ctx.needs_input_grad[1]:  # the transposed (copied) first operand is the narrower one
            x2 = x.reshape(-1, x.shape[-1])  # (M, K)
            if x2.shape[1] < g2.shape[1]:
                grad_w = mm_nt(x2.t(), g2.t()).t()  # (K, N) -> (N, K)
            else:
                grad_w = mm_nt(g2.t(), x2.t())  # (N, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear (x (..., K), weight (N, K)), on oneDNN for float32 CPU tensors."""
    if use_onednn(x, weight):
        return _Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def linear_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   relu: bool = False) -> torch.Tensor:
    """F.linear (then ReLU if ``relu``) without autograd bookkeeping, on oneDNN for float32 CPU
    tensors (the ReLU fused into the product): for inference and the forward of hand-written
    autograd Functions (any dtype: float64 takes F.linear)."""
    if use_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")
    y = F.linear(x, weight, bias)
    return y.relu_() if relu else y
