import numpy as np
import pytest
import soundfile as sf
import torch

from se.audio import AudioError, audio_norm, norm_gain, read_audio, write_audio
from se.data import (DataDir, DataDirError, SegmentDataset, ShardedSampler, collate, read_clearvoice_list,
                     validate_data_dir)
from se.bin import make_data_dir as make_data_dir_cli
from se.bin import validate_data_dir as validate_cli
from helpers import make_dir, write_pairs


def test_audio_norm_matches_two_stage_definition():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(8000) * 0.3
    y, scalar = audio_norm(x)
    target = 10 ** (-25 / 20)
    p = y**2
    assert np.sqrt(np.mean(p[p > p.mean()])) == pytest.approx(target, rel=1e-4)
    gain = norm_gain(x)
    assert np.allclose(y, x * gain)
    assert scalar == pytest.approx(1 / (gain + 1e-6))


def test_data_dir_roundtrip_and_validation(tmp_path):
    data = make_dir(tmp_path, "train", 4, 0.5, 16000)
    assert len(data) == 4 and data.sampling_rate == 16000
    assert (tmp_path / "data/train/wav.scp").read_text().splitlines()[0].startswith("train_000 /")
    validate_data_dir(tmp_path / "data/train", 16000)
    with pytest.raises(DataDirError, match="expected 48000"):
        validate_data_dir(tmp_path / "data/train", 48000)


def test_missing_utterance_in_spk1_names_file_and_line(tmp_path):
    make_dir(tmp_path, "train", 3, 0.3, 16000)
    spk1 = tmp_path / "data/train/spk1.scp"
    lines = spk1.read_text().splitlines()
    spk1.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    with pytest.raises(DataDirError, match=r"wav.scp line 2: utterance train_001 is missing from .*spk1.scp"):
        DataDir(tmp_path / "data/train")


def test_validator_finds_wrong_rate_and_stereo(tmp_path):
    make_dir(tmp_path, "train", 2, 0.3, 16000)
    path = DataDir(tmp_path / "data/train").utterances[1].clean
    sf.write(path, np.zeros((4800, 2)), 16000)
    with pytest.raises(AudioError, match=r"spk1.scp line 2\): 2 channels"):
        validate_data_dir(tmp_path / "data/train", 16000)
    sf.write(path, np.zeros(4800), 8000)
    with pytest.raises(AudioError, match="8000 Hz, expected 16000 Hz; resample"):
        validate_data_dir(tmp_path / "data/train", 16000)
    assert validate_cli.main([str(tmp_path / "data/train"), "--fs", "16000"]) == 1


def test_dataset_reads_only_segment_same_gain_deterministic(tmp_path, monkeypatch):
    data = make_dir(tmp_path, "train", 3, 1.0, 16000)
    ds = SegmentDataset(data, 16000, 4000, seed=5)
    reads = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *a, **k):
        reads.append(frames)
        return real_read(self, frames, *a, **k)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    item = ds[1]
    assert reads == [4000, 4000]  # only the segment, noisy and clean
    monkeypatch.undo()
    real_read = sf.read
    assert item["noisy"].shape == (4000,)
    # same gain on both: the SNR of the segment equals the file's SNR on that segment
    u = data.utterances[1]
    noisy, _ = real_read(u.noisy, dtype="float32")
    clean, _ = real_read(u.clean, dtype="float32")
    g_noisy = item["noisy"].numpy()
    # find the crop position exactly and check both were scaled by the same gain
    for s in range(len(noisy) - 4000 + 1):
        if np.allclose(noisy[s:s + 4000] * (g_noisy[100] / noisy[s + 100]), g_noisy, rtol=1e-4, atol=1e-6):
            gain = g_noisy[100] / noisy[s + 100]
            np.testing.assert_allclose(item["clean"].numpy(), clean[s:s + 4000] * gain, rtol=1e-4, atol=1e-6)
            break
    else:
        pytest.fail("crop not found in the file")
    # deterministic given seed/epoch/index; another epoch gives another crop
    again = ds[1]
    assert torch.equal(again["noisy"], item["noisy"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["noisy"], item["noisy"])


def test_short_utterance_is_zero_padded(tmp_path):
    data = make_dir(tmp_path, "train", 1, 0.1, 16000)
    item = SegmentDataset(data, 16000, 4000, seed=0)[0]
    assert item["noisy"].shape == (4000,)
    assert torch.all(item["noisy"][1600:] == 0) and torch.any(item["noisy"][:1600] != 0)


def test_wrong_rate_at_load_points_to_preparation(tmp_path):
    data = make_dir(tmp_path, "train", 1, 0.5, 16000)
    ds = SegmentDataset(data, 48000, 4000)
    with pytest.raises(AudioError, match=r"wav.scp line 1\).*expected 48000 Hz; prepare the data at 48000 Hz \(the recipe.s data preparation stage"):
        ds[0]


def test_sharded_sampler_partitions_and_resumes():
    s0 = ShardedSampler(10, 0, 2, seed=1)
    s1 = ShardedSampler(10, 1, 2, seed=1)
    assert sorted(list(s0) + list(s1)) == list(range(10))
    s0.set_epoch(1)
    assert list(s0) != list(ShardedSampler(10, 0, 2, seed=1))
    full = list(s0)
    s0.set_epoch(1, skip=2)
    assert list(s0) == full[2:]
    v0 = ShardedSampler(5, 0, 2, shuffle=False, pad=False)
    v1 = ShardedSampler(5, 1, 2, shuffle=False, pad=False)
    assert list(v0) == [0, 2, 4] and list(v1) == [1, 3]


def test_collate_stacks():
    items = [{"noisy": torch.zeros(3), "clean": torch.ones(3), "index": i} for i in range(2)]
    b = collate(items)
    assert b["noisy"].shape == (2, 3) and b["index"].tolist() == [0, 1]


def test_clearvoice_list_import(tmp_path):
    pairs = write_pairs(tmp_path / "a", 3, 0.2, 16000)
    lst = tmp_path / "tr.scp"
    lst.write_text("".join(f"{n} {c} 0.2\n" for n, c in pairs.values()))
    got = read_clearvoice_list(lst)
    assert sorted(got) == sorted(pairs) and got["utt001"] == pairs["utt001"]
    assert make_data_dir_cli.main(["--clearvoice-list", str(lst), "--out", str(tmp_path / "d"), "--fs", "16000"]) == 0
    assert len(DataDir(tmp_path / "d")) == 3
    lst.write_text("one_column_only\n")
    with pytest.raises(DataDirError, match=r"tr.scp line 1: expected"):
        read_clearvoice_list(lst)


def test_make_data_dir_refuses_and_writes_nothing(tmp_path):
    pairs = write_pairs(tmp_path / "a", 2, 0.2, 16000)
    sf.write(pairs["utt001"][1], np.zeros(100), 16000)
    out = tmp_path / "d"
    rc = make_data_dir_cli.main(["--noisy-dir", str(tmp_path / "a/noisy"), "--clean-dir",
                                 str(tmp_path / "a/clean"), "--out", str(out)])
    assert rc == 1 and not (out / "wav.scp").exists()


def test_read_audio_errors(tmp_path):
    empty = tmp_path / "e.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="e.wav: file is empty"):
        read_audio(empty)
    junk = tmp_path / "j.wav"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioError, match="j.wav: not a readable audio file"):
        read_audio(junk)
    with pytest.raises(AudioError, match="file not found"):
        read_audio(tmp_path / "missing.wav")


def test_write_audio_counts_clipping_and_is_atomic(tmp_path):
    x = np.array([0.5, 1.5, -2.0, 0.1])
    assert write_audio(tmp_path / "o.wav", x, 16000, "PCM_16") == 2
    assert write_audio(tmp_path / "f.wav", x, 16000, "FLOAT") == 0
    y, _ = sf.read(tmp_path / "f.wav")
    np.testing.assert_allclose(y, x, atol=1e-7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.wav", "o.wav"]
