"""Batched enhancement of many files (``se.bin.enhance --batch-size N``) and its progress line.

A batch is one forward pass over several equally long pieces: short files whole, long files
as their cross-fade segments (se.enhance.segment_starts, all exactly ``segment`` samples).
The output of a file must not depend on which other files share its batch, so pieces are
padded only in ways that do not depend on the batch:

* non-causal networks (the releases of FRCRN, MossFormerGAN, MossFormer2) are NOT invariant
  to padding: FRCRN's SE blocks average over all frames, MossFormerGAN normalises by the
  power of the whole input, MossFormer2 attends over all frames. Only pieces of equal length
  share a batch. ``quantum`` > 0 pads every piece with zeros to a multiple of ``quantum``
  samples, at every batch size (batch size 1 included), so that files of similar length
  meet in one batch; the output then differs slightly from the unpadded one, but is the same
  at every batch size. ``quantum`` = 0 pads nothing: outputs equal the file-by-file path.
* causal networks (FRCRN ``causal: true``) are exactly invariant to zeros appended at the
  end: no output sample depends on later input samples. Files up to ``segment`` samples
  are batched whatever their lengths (padded to the longest of the batch, ``quantum`` is not
  needed); longer files are streamed one by one, as without batching.

Files are taken in windows of a few batches' worth of pieces (memory stays bounded by the
window); sorting the list by length before (se.bin.enhance does) fills the batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from se.audio import norm_gain
from se.enhance import crossfade, segment_starts

log = logging.getLogger(__name__)

WINDOW_BATCHES = 4  # files read ahead: until their pieces fill this many batches


def padded_length(length: int, quantum: int) -> int:
    """``length`` rounded up to a multiple of ``quantum`` samples (0: unchanged)."""
    return length if quantum <= 0 else -(-length // quantum) * quantum


@dataclass
class _Piece:
    file: int  # index in the window
    index: int  # index among the file's pieces
    start: int  # first sample in the file
    length: int  # samples of the file in this piece
    padded: int  # samples fed to the network (non-causal: batch-independent)


def _pieces(file: int, length: int, segment: int, overlap: int, quantum: int) -> list[_Piece]:
    """The whole file up to ``segment`` samples, else its cross-fade segments."""
    if length <= segment:
        return [_Piece(file, 0, 0, length, padded_length(length, quantum))]
    return [_Piece(file, j, s, segment, padded_length(segment, quantum))
            for j, s in enumerate(segment_starts(length, segment, overlap))]


def _batches(pieces: list[_Piece], batch_size: int, causal: bool) -> list[list[_Piece]]:
    """Non-causal: runs of equal padded length; causal: neighbours in length order."""
    key = (lambda p: (p.length, p.file, p.start)) if causal else (lambda p: (p.padded, p.file, p.start))
    batches: list[list[_Piece]] = []
    for p in sorted(pieces, key=key):
        last = batches[-1] if batches else None
        if last and len(last) < batch_size and (causal or last[0].padded == p.padded):
            last.append(p)
        else:
            batches.append([p])
    return batches


@torch.inference_mode()
def _run(model, signals: list[np.ndarray], batch: list[_Piece], causal: bool, device) -> list[np.ndarray]:
    width = max(p.length for p in batch) if causal else batch[0].padded
    x = np.zeros((len(batch), width), dtype=np.float32)
    for row, p in zip(x, batch):
        row[: p.length] = signals[p.file][p.start : p.start + p.length]
    y = model.enhance(torch.from_numpy(x).to(device))
    if tuple(y.shape) != x.shape:
        raise RuntimeError(f"{type(model).__name__}.enhance returned shape {tuple(y.shape)} for {x.shape}")
    y = y.cpu().double().numpy()  # float64 on the host, not on the device
    return [y[i, : p.length] for i, p in enumerate(batch)]


def enhance_batched(model, signals: Iterable[tuple[str, np.ndarray]], batch_size: int, segment: int,
                    overlap: int, quantum: int = 0, device="cpu") -> Iterator[tuple[str, np.ndarray]]:
    """Enhances (name, raw samples at the network's rate) pairs; yields (name, float64 output).

    Each signal is normalised by its own gain (se.audio.norm_gain) and divided by it after, as
    se.enhance.enhance_signal does; silent signals are the caller's (they have no gain). A
    ValueError names the files of the batch that raised it.
    """
    if overlap >= segment:
        raise ValueError(f"segment overlap ({overlap}) must be shorter than the segment ({segment})")
    causal = model.causal
    window: list[tuple[str, np.ndarray]] = []
    pieces = 0
    for item in signals:
        window.append(item)
        length = len(item[1])
        pieces += 1 if length <= segment or causal else len(segment_starts(length, segment, overlap))
        if pieces >= batch_size * WINDOW_BATCHES:
            yield from _window(model, window, batch_size, segment, overlap, quantum, causal, device)
            window, pieces = [], 0
    if window:
        yield from _window(model, window, batch_size, segment, overlap, quantum, causal, device)


def _window(model, window, batch_size, segment, overlap, quantum, causal, device):
    names = [name for name, _ in window]
    gains = [norm_gain(x) for _, x in window]
    for name, g in zip(names, gains):
        if not np.isfinite(g) or g <= 0:
            raise ValueError(f"{name}: signal is silent or not finite")
    signals = [np.asarray(x, dtype=np.float64) * g for (_, x), g in zip(window, gains)]
    outputs: list[list[np.ndarray | None]] = []
    pieces: list[_Piece] = []
    streamed: dict[int, np.ndarray] = {}
    for i, x in enumerate(signals):
        if causal and len(x) > segment:  # long causal input: hop by hop, as without batching
            from se.stream import enhance_stream

            streamed[i] = enhance_stream(model, x)
            outputs.append([])
            continue
        mine = _pieces(i, len(x), segment, overlap, 0 if causal else quantum)
        pieces.extend(mine)
        outputs.append([None] * len(mine))
    for batch in _batches(pieces, batch_size, causal):
        try:
            ys = _run(model, signals, batch, causal, device)
        except ValueError as exc:  # e.g. a file too short for one frame
            raise ValueError(f"{', '.join(sorted({names[p.file] for p in batch}))}: {exc}") from None
        for p, y in zip(batch, ys):
            outputs[p.file][p.index] = y
    for i, (name, x) in enumerate(zip(names, signals)):
        if i in streamed:
            y = streamed[i]
        elif len(outputs[i]) == 1:
            y = outputs[i][0]
        else:
            y = crossfade(len(x), segment, overlap, outputs[i])
        yield name, y / gains[i]


class Progress:
    """Log lines ``enhance: 40/100 files (40%), 12.3 files/s, elapsed 3 s, ETA 5 s``: after the
    first file, every ``interval`` seconds and after the last file (log files have no
    carriage returns, unlike a progress bar)."""

    def __init__(self, total: int, what: str = "enhance", interval: float = 10.0, logger=None):
        self.total, self.what, self.interval = total, what, interval
        self.log = logger or log
        self.done, self.t0, self.last = 0, time.monotonic(), None

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.last is not None and now - self.last < self.interval and self.done < self.total:
            return
        self.last = now
        elapsed = now - self.t0
        rate = self.done / max(elapsed, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        self.log.info("%s: %d/%d files (%.0f%%), %.2f files/s, elapsed %.0f s, ETA %.0f s", self.what, self.done,
                      self.total, 100 * self.done / max(self.total, 1), rate, elapsed, eta)
