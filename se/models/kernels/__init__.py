"""Speed kernels for the networks, kept apart from the plain reference forwards.

Each network file in se/models is the readable reference: the architecture as the paper
describes it, with shape comments, written for clarity. The speed work (fused complex
convolutions, hand-written backwards, folded batch norms, blocked attention, oneDNN matrix
products) lives here, one module per network, each exposing ``accelerate(model) -> model``:
it swaps submodules of a reference network for faster equivalents that hold the same
parameters (the state-dict keys do not change) and compute the same function. The kernel
tests check forward and gradient against the reference in float64 within 1e-9.

The choice is made in one place, :func:`accelerate` below, which ``se.models.build_network``
and ``se.checkpoint.load_network`` call. ``SE_KERNELS=reference`` in the environment (or
``kernels=False`` to those functions) keeps the plain reference forward, e.g. for ONNX export
or to check a result against the paper's formulation.
"""

from __future__ import annotations

import os

ENV = "SE_KERNELS"


def kernels_enabled() -> bool:
    """False when ``SE_KERNELS=reference`` is set; any other value (or none) enables them."""
    return os.environ.get(ENV, "").strip().lower() != "reference"


def accelerate(name: str, model, enabled: bool | None = None):
    """Applies network ``name``'s kernels to ``model`` (in place; returned for chaining)."""
    from se.models import get_entry, resolve

    if enabled is None:
        enabled = kernels_enabled()
    entry = get_entry(name)
    if enabled and entry.kernels:
        model = resolve(entry.kernels)(model)
    return model
