"""Enhancement of whole files: our default decode path and ClearVoice's (``--clearvoice-compat``).

Default path: the file is normalised with one gain (se.audio.norm_gain), inputs up to
``segment`` samples are enhanced in one pass by ``model.enhance``; longer inputs are cut into
overlapping segments whose outputs are cross-faded linearly over the overlap (memory stays
bounded by the segment length). The output is divided by the same gain, so the level of the
input is kept exactly, and has exactly the input's length.

Causal models (FRCRN with ``causal: true``) are enhanced hop by hop by se.stream, whatever the
length (no segments).

ClearVoice path: ``model.clearvoice_decode`` reproduces the reference decode (its padding,
segmentation and de-normalisation), for users who must match ClearVoice outputs.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from se.audio import norm_gain

log = logging.getLogger(__name__)

# default-path segmenting (se.bin.enhance --segment-length / --segment-overlap defaults), seconds
SEGMENT_SECONDS = 10.0
OVERLAP_SECONDS = 1.0


def crossfade_weights(length: int, fade_in: int, fade_out: int) -> np.ndarray:
    """Ones with linear ramps of ``fade_in`` / ``fade_out`` samples at the ends."""
    w = np.ones(length)
    if fade_in:
        w[:fade_in] = np.arange(1, fade_in + 1) / (fade_in + 1)
    if fade_out:
        w[length - fade_out:] = np.arange(fade_out, 0, -1) / (fade_out + 1)
    return w


def segment_starts(length: int, segment: int, overlap: int) -> list[int]:
    """Starts of windows of ``segment`` samples overlapping by ``overlap``; the last one ends at
    ``length`` exactly (no short tail segment)."""
    if length <= segment:
        return [0]
    hop = segment - overlap
    starts = list(range(0, length - segment, hop))
    starts.append(length - segment)
    return starts


@torch.inference_mode()
def enhance_normalised(model, x: np.ndarray, segment: int, overlap: int, device="cpu") -> np.ndarray:
    """Enhances a normalised signal (L,) with ``model.enhance``; returns float64 (L,).

    A causal model (``model.causal``) runs hop by hop through se.stream instead: memory stays
    bounded without segments, and the output is the one a real-time stream gets.
    """
    if model.causal:
        from se.stream import enhance_stream

        return enhance_stream(model, x)
    length = len(x)
    if overlap >= segment:
        raise ValueError(f"segment overlap ({overlap}) must be shorter than the segment ({segment})")

    def run(chunk: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))[None].to(device)
        y = model.enhance(t)[0].double().cpu().numpy()
        if len(y) != len(chunk):
            raise RuntimeError(f"{type(model).__name__}.enhance returned {len(y)} samples for {len(chunk)}")
        return y

    if length <= segment:
        return run(x)
    starts = segment_starts(length, segment, overlap)
    return crossfade(length, segment, overlap, [run(x[s : s + segment]) for s in starts])


def crossfade(length: int, segment: int, overlap: int, outputs: list[np.ndarray]) -> np.ndarray:
    """Joins the outputs of the windows ``segment_starts(length, segment, overlap)`` (in that
    order) into one (length,) signal, cross-faded linearly where they overlap."""
    out = np.zeros(length)
    total = np.zeros(length)
    starts = segment_starts(length, segment, overlap)
    for i, (start, y) in enumerate(zip(starts, outputs, strict=True)):
        end = start + segment
        fade_in = 0 if i == 0 else min(overlap, starts[i - 1] + segment - start)
        fade_out = 0 if i == len(starts) - 1 else min(overlap, end - starts[i + 1])
        w = crossfade_weights(segment, fade_in, fade_out)
        out[start:end] += y * w
        total[start:end] += w
    return out / total


def enhance_signal(model, x: np.ndarray, segment: int, overlap: int, device="cpu") -> np.ndarray:
    """Default path on raw samples at the network's rate: one gain in, the same gain out."""
    gain = norm_gain(x)
    if not np.isfinite(gain) or gain <= 0:
        raise ValueError("signal is silent or not finite")
    return enhance_normalised(model, np.asarray(x, dtype=np.float64) * gain, segment, overlap, device) / gain


def enhance_clearvoice(model, x: np.ndarray) -> np.ndarray:
    """The reference decode path (bugs included), see each network's clearvoice_decode."""
    return np.asarray(model.clearvoice_decode(np.asarray(x, dtype=np.float64)), dtype=np.float64)
