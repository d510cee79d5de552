"""Kaldi fbank + deltas (se.features) against torchaudio and the ClearVoice parity references.

Tolerances: against torchaudio.compliance.kaldi.fbank and the stored references the features
are compared with atol 1e-5 (log-mel values up to ~25; the implementation follows torchaudio's
op order and is bit-exact on this build).
"""

import numpy as np
import pytest
import torch

from se import torchaudio_ops
from se.features import FbankFeatures, covering_length, fbank_with_deltas, frame_count

ATOL = 1e-5


def kaldi_reference(wave: torch.Tensor, dither: float = 0.0) -> torch.Tensor:
    """ClearVoice's call: torchaudio kaldi fbank + compute_deltas twice, (S, 180)."""
    fb = torchaudio_ops.kaldi_fbank(wave[None], dither=dither, frame_length=40.0, frame_shift=8.0,
                                    num_mel_bins=60, sample_frequency=48000, window_type="hamming")
    d1 = torchaudio_ops.compute_deltas(fb.T)
    d2 = torchaudio_ops.compute_deltas(d1)
    return torch.cat([fb, d1.T, d2.T], 1)


@pytest.fixture(scope="module")
def parity(clearvoice_data):
    return np.load(clearvoice_data / "MossFormer2_SE_48K.parity.npz")


def test_decode_fbank_matches_reference(parity):
    wave = torch.from_numpy(parity["decode_normalized_input"]) * 32768
    feats = fbank_with_deltas(wave)
    ref = torch.from_numpy(parity["decode_fbank"])
    assert feats.shape == ref.shape == (121, 180)
    assert feats.dtype == torch.float32
    torch.testing.assert_close(feats, ref, atol=ATOL, rtol=0)


def test_forward_input_from_batch(parity):
    """The batched (B, L) path reproduces the stored forward input of the two waveforms."""
    wave = torch.from_numpy(parity["forward_waveform"]) * 32768  # (2, 48000)
    feats = fbank_with_deltas(wave)
    torch.testing.assert_close(feats, torch.from_numpy(parity["forward_input"]), atol=ATOL, rtol=0)
    # numpy input (cast to float32 like ClearVoice) gives the same
    feats_np = fbank_with_deltas(parity["forward_waveform"][0] * 32768)
    torch.testing.assert_close(feats_np, feats[0], atol=0, rtol=0)


@pytest.mark.parametrize("length", [1920, 1921, 2303, 2304, 9999])
def test_matches_torchaudio_odd_lengths(length):
    g = torch.Generator().manual_seed(length)
    wave = torch.randn(length, generator=g) * 3000
    feats = fbank_with_deltas(wave)
    assert feats.shape == (frame_count(length), 180)
    torch.testing.assert_close(feats, kaldi_reference(wave), atol=ATOL, rtol=0)


def test_digital_silence_floor():
    feats = fbank_with_deltas(torch.zeros(4000))
    torch.testing.assert_close(feats[:, :60], torch.full((frame_count(4000), 60), float(np.log(np.finfo(np.float32).eps))))
    assert feats[:, 60:].abs().max() < 1e-5


def test_dither_global_rng_matches_torchaudio():
    """generator=None draws the noise exactly as torchaudio does (same global-RNG stream)."""
    wave = torch.randn(9000) * 1000
    torch.manual_seed(123)
    ref = kaldi_reference(wave, dither=1.0)
    torch.manual_seed(123)
    ours = fbank_with_deltas(wave, dither=1.0)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_dither_generator_determinism():
    wave = torch.zeros(9000)  # digital silence: dither changes everything
    a = fbank_with_deltas(wave, dither=1.0, generator=torch.Generator().manual_seed(5))
    b = fbank_with_deltas(wave, dither=1.0, generator=torch.Generator().manual_seed(5))
    c = fbank_with_deltas(wave, dither=1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the global RNG is not touched when a generator is given
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    fbank_with_deltas(wave, dither=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.rand(1), before)


def test_dither_zero_is_deterministic():
    wave = torch.randn(9000)
    torch.manual_seed(1)
    a = fbank_with_deltas(wave, dither=0.0)
    torch.manual_seed(2)
    b = fbank_with_deltas(wave, dither=0.0)
    assert torch.equal(a, b)


def test_short_input_has_no_frames():
    assert fbank_with_deltas(torch.zeros(1919)).shape == (0, 180)
    assert fbank_with_deltas(torch.zeros(3, 100)).shape == (3, 0, 180)


def test_from_config_and_errors():
    feats = FbankFeatures.from_config({"win_len": 1920, "win_inc": 384, "num_mels": 60, "sampling_rate": 48000})
    assert feats.dither == 1.0 and feats.num_features == 180 and feats.n_fft == 2048
    assert FbankFeatures.from_config({"fbank_dither": 0.5}).dither == 0.5
    with pytest.raises(ValueError, match="window type"):
        FbankFeatures(win_type="blackman")
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        fbank_with_deltas(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="floating point"):
        fbank_with_deltas(torch.zeros(5000, dtype=torch.int16))


def test_frame_helpers():
    assert frame_count(1919) == 0 and frame_count(1920) == 1 and frame_count(2303) == 1 and frame_count(2304) == 2
    assert covering_length(1) == 1920 and covering_length(1920) == 1920
    assert covering_length(1921) == 2304 and covering_length(48000) == 48000
    assert covering_length(48001) == 48384


def test_picklable_for_workers():
    import pickle

    feats = FbankFeatures(dither=1.0)
    wave = torch.randn(6000) * 100
    a = feats(wave, generator=torch.Generator().manual_seed(1))
    clone = pickle.loads(pickle.dumps(feats))
    assert clone._cache == {}
    assert torch.equal(clone(wave, generator=torch.Generator().manual_seed(1)), a)
