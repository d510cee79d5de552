"""The torch parts of se.data and se.simulation: the training/validation dataset of paired data
dirs, the sharded sampler, the batch collate function and the dataset simulated on the fly
(re-exported by se.data and se.simulation, which themselves do not import torch)."""

from __future__ import annotations

import math

import numpy as np
import torch

from se.audio import AudioError, norm_gain, read_audio
from se.data import DataDir, Utterance, item_rng


class SegmentDataset(torch.utils.data.Dataset):
    """(noisy, clean) segments of ``segment`` samples at one common gain.

    Training (``random_crop=True``): a random start per item and epoch; only that segment
    is read from disk. Validation: the centre segment, deterministic. Utterances shorter
    than the segment are zero-padded at the end. Both signals are multiplied by the gain
    that normalises the noisy segment to -25 dB RMS (se.audio.norm_gain), so the pair keeps
    its SNR.

    ``features``: optional picklable callable(noisy_segment: np.ndarray, rng) -> Tensor
    computed here, i.e. in the data-loader workers (e.g. fbank for MossFormer2_SE_48K).

    ``skip_unreadable`` (training): an item whose files cannot be read is replaced by the next
    readable one, and the error naming the file travels with the item (``bad_files``), for
    the trainer to count (max_bad_files); otherwise the error is raised.
    """

    def __init__(
        self,
        data: DataDir,
        sampling_rate: int,
        segment: int,
        seed: int = 0,
        random_crop: bool = True,
        features=None,
        skip_unreadable: bool = False,
    ):
        self.data = data
        self.skip_unreadable = skip_unreadable
        self.sampling_rate = sampling_rate
        self.segment = int(segment)
        self.seed = seed
        self.random_crop = random_crop
        self.features = features
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def _read(self, u: Utterance, which: str, start: int, frames: int) -> np.ndarray:
        path = u.noisy if which == "noisy" else u.clean
        x, _ = read_audio(
            path, start=start, frames=frames, expected_rate=self.sampling_rate,
            where=self.data.where(u.utt, which),
        )
        return x

    def __getitem__(self, index: int) -> dict:
        if not self.skip_unreadable:
            return self._item(index)
        bad = []
        for i in range(len(self)):  # the next readable item stands in for an unreadable one
            try:
                item = self._item((index + i) % len(self))
                break
            except AudioError as exc:
                bad.append(str(exc))
        else:
            raise AudioError(f"{self.data.path}: no readable utterance; first error: {bad[0]}")
        if bad:
            item["bad_files"] = bad
        return item

    def _item(self, index: int) -> dict:
        u = self.data.utterances[index]
        rng = item_rng(self.seed, self.epoch, index)
        n, seg = u.num_samples, self.segment
        if n > seg:
            start = int(rng.integers(0, n - seg + 1)) if self.random_crop else (n - seg) // 2
            frames = seg
        else:
            start, frames = 0, n
        noisy = self._read(u, "noisy", start, frames)
        clean = self._read(u, "clean", start, frames)
        if len(noisy) != len(clean):
            raise AudioError(
                f"{u.noisy} ({self.data.where(u.utt)}): noisy and clean differ in length "
                f"({len(noisy)} vs {len(clean)})"
            )
        if len(noisy) != frames:
            raise AudioError(
                f"{u.noisy} ({self.data.where(u.utt)}): read {len(noisy)} samples at {start}, "
                f"expected {frames}; utt2num_samples is stale (re-run data preparation)"
            )
        gain = norm_gain(noisy)
        pad = seg - len(noisy)
        noisy = np.pad(noisy * gain, (0, pad)).astype(np.float32)
        clean = np.pad(clean * gain, (0, pad)).astype(np.float32)
        item = {"noisy": torch.from_numpy(noisy), "clean": torch.from_numpy(clean), "index": index}
        if self.features is not None:
            item["features"] = self.features(noisy, rng)
        return item


class ShardedSampler(torch.utils.data.Sampler):
    """Indices of one rank, reshuffled every epoch, resumable mid-epoch.

    Training: a permutation from (seed, epoch); padded by wrapping so every rank gets the same
    number of items. Validation (``shuffle=False, pad=False``): rank r gets items r, r+W, ...
    with no duplicates (ranks may differ by one item; the trainer reduces sums and counts).
    ``skip`` drops the first items (resuming inside an epoch).
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, pad: bool = True):
        self.size, self.rank, self.world_size = size, rank, world_size
        self.seed, self.shuffle, self.pad = seed, shuffle, pad
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def epoch_indices(self) -> list[int]:
        """This rank's indices of the whole current epoch (``skip`` not applied)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.pad:
            total = math.ceil(self.size / self.world_size) * self.world_size
            order = (order * math.ceil(total / max(1, len(order))))[:total]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        return max(0, len(self.epoch_indices()) - self.skip)

    def __iter__(self):
        return iter(self.epoch_indices()[self.skip :])


def collate(items: list[dict]) -> dict:
    out = {k: torch.stack([it[k] for it in items]) for k in ("noisy", "clean")}
    out["index"] = torch.tensor([it["index"] for it in items])
    if "features" in items[0]:
        out["features"] = torch.stack([it["features"] for it in items])
    bad = [b for it in items for b in it.get("bad_files", ())]
    if bad:
        out["bad_files"] = bad
    return out


class SimulatedDataset(torch.utils.data.Dataset):
    """Training items simulated on the fly; the same item dict as se.data.SegmentDataset
    (``noisy``, ``clean`` = the target, ``index``, optional ``features``) plus ``draws``.

    Item ``index`` of epoch ``e`` is ``simulator.simulate(item_rng(seed, e, index), segment)``:
    a pure function of (seed, epoch, index). ``len`` is ``items_per_epoch`` (0: the number of
    speech files). With ``normalize`` (the default) the pair is then multiplied by the gain that
    brings the noisy input to -25 dB (se.audio.norm_gain), as SegmentDataset does with paired
    data and se.enhance does at inference; the drawn level then only shapes the sets written by
    se.bin.simulate (``normalize: false`` trains on the drawn levels).
    """

    def __init__(self, simulator, segment: int, seed: int = 0, features=None):
        self.simulator = simulator
        self.segment = int(segment)
        self.seed = seed
        self.features = features
        self.epoch = 0
        self.size = simulator.config.items_per_epoch or simulator.num_speech_files

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        rng = item_rng(self.seed, self.epoch, index)
        noisy, target, draws = self.simulator.simulate(rng, self.segment)
        if self.simulator.config.normalize:
            draws["train_gain"] = gain = norm_gain(noisy)
            noisy, target = (noisy * gain).astype(np.float32), (target * gain).astype(np.float32)
        item = {"noisy": torch.from_numpy(noisy), "clean": torch.from_numpy(target),
                "index": index, "draws": draws}
        if self.features is not None:
            item["features"] = self.features(noisy, rng)
        return item
