"""LSD and PLCMOS: against independent computations on fixed inputs; scoring without a reference."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import SCORING_DATA
from scipy.signal import butter, sosfiltfilt

from se.bin import score as score_cli
from se.metrics import parse_metrics, score_pair
from se.resample import resample
from se.metrics.lsd import lsd
from se.metrics.plcmos import model_path, plcmos

@pytest.fixture(scope="module")
def pair():
    ref, fs = sf.read(SCORING_DATA / "speech.wav", dtype="float64")
    deg, _ = sf.read(SCORING_DATA / "speech_bab_0dB.wav", dtype="float64")
    return ref, deg, fs


def packet_loss(x: np.ndarray, fs: int, rate: float, seed: int) -> np.ndarray:
    """Zero 20 ms packets, each lost with probability ``rate``."""
    y, rng, n = x.copy(), np.random.default_rng(seed), int(0.02 * fs)
    for k in range(len(x) // n):
        if rng.random() < rate:
            y[k * n : (k + 1) * n] = 0
    return y


def lsd_librosa(ref, est, fs, eps=1e-8):
    """The URGENT 2025 formula written out with librosa's STFT (an independent framing/FFT)."""
    import librosa

    est = est * np.sum(ref * est) / (np.sum(est**2) + eps)
    n_fft, hop = int(fs * 0.032), int(fs * 0.016)
    s = np.abs(librosa.stft(ref, n_fft=n_fft, hop_length=hop, window="hann", center=True, pad_mode="constant")).T
    y = np.abs(librosa.stft(est, n_fft=n_fft, hop_length=hop, window="hann", center=True, pad_mode="constant")).T
    return float(np.mean(np.sqrt(np.mean(np.log(s**2 / (y + eps) ** 2 + eps) ** 2, axis=1))))


def test_lsd_matches_independent_computation(pair):
    ref, deg, fs = pair
    lowpassed = sosfiltfilt(butter(8, 4000, fs=fs, output="sos"), ref)
    for est in (deg, lowpassed, packet_loss(ref, fs, 0.2, 0)):
        assert lsd(ref, est, fs) == pytest.approx(lsd_librosa(ref, est, fs), rel=1e-9)
    # what it measures: 0 for the reference at any gain, large when a band is missing
    assert lsd(ref, ref, fs) < 1e-3 and lsd(ref, 0.3 * ref, fs) < 1e-3
    assert lsd(ref, lowpassed, fs) > 3 * lsd(ref, deg, fs)


def test_lsd_at_the_native_rate(pair):
    """At 48 kHz the band above 8 kHz counts: a 16 kHz-band-limited copy is far from the original."""
    ref16, _, _ = pair
    ref = resample(ref16, 16000, 48000) + 1e-3 * np.random.default_rng(0).standard_normal(3 * len(ref16))
    narrow = resample(resample(ref, 48000, 16000), 16000, 48000)
    got = score_pair(ref, narrow, 48000, ["lsd"])
    assert got.notes == []
    assert got.values["lsd"] == pytest.approx(lsd_librosa(ref, narrow, 48000), rel=1e-9)
    assert got.values["lsd"] > 5.0 > lsd(ref, ref + 1e-4 * np.random.default_rng(1).standard_normal(len(ref)), 48000)


@pytest.fixture(scope="module")
def speechmos_plcmos():
    """speechmos' own PLCMOS class, loaded from its file (the package import needs `requests`)."""
    spec = importlib.util.spec_from_file_location("speechmos_plcmos", Path(model_path()).parents[1] / "plcmos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PLCMOS()


def test_plcmos_matches_speechmos(pair, speechmos_plcmos):
    ref, deg, fs = pair
    ref = ref[: 3 * fs // 2]
    lossy = packet_loss(ref, fs, 0.2, 1)
    for x in (ref, lossy, deg[: fs // 2]):
        np.random.seed(0)  # speechmos draws its rater embeddings from the global state
        want = speechmos_plcmos.get_mos(x)
        assert plcmos(x)["plcmos"] == pytest.approx(want, abs=1e-5)
    # deterministic, and packet loss is what it punishes
    clean = plcmos(ref)["plcmos"]
    assert plcmos(ref)["plcmos"] == clean
    assert clean > 3.5 and clean - plcmos(lossy)["plcmos"] > 1.0


def test_score_pair_without_reference(pair):
    ref, _, fs = pair
    assert parse_metrics("noref") == ["dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808", "plcmos"]
    x48 = resample(ref[:fs], fs, 48000)
    got = score_pair(None, x48, 48000, ["plcmos"])  # DNSMOS without a reference: tests/test_metrics.py
    assert got.notes == [] and set(got.values) == {"plcmos"}
    # PLCMOS sees the same 16 kHz copy as DNSMOS
    assert got.values["plcmos"] == pytest.approx(plcmos(resample(x48, 48000, 16000))["plcmos"], abs=1e-9)
    with pytest.raises(ValueError, match="lsd need a reference"):
        score_pair(None, ref, fs, ["lsd", "plcmos"])


def test_score_cli_without_reference(pair, tmp_path, capsys):
    ref, deg, fs = pair
    est = tmp_path / "est"
    est.mkdir()
    sf.write(est / "a.wav", ref[:fs], fs, subtype="FLOAT")
    sf.write(est / "b.wav", packet_loss(ref[:fs], fs, 0.3, 2), fs, subtype="FLOAT")
    out = tmp_path / "scores"
    assert score_cli.main(["--est", str(est), "--out-dir", str(out), "--metrics", "plcmos", "--nj", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ref"] is None and summary["n_utts"] == 2
    assert not (out / "ref.scp").exists() and (out / "est.scp").is_file()
    assert "reference: none" in (out / "summary.md").read_text()
    rows = (out / "scores.tsv").read_text().splitlines()
    assert rows[0].split("\t")[1:] == ["plcmos"]
    a, b = (float(r.split("\t")[1]) for r in rows[1:])
    assert a == pytest.approx(plcmos(ref[:fs].astype(np.float32))["plcmos"], abs=1e-4) and a > b
    # a reference-based metric without --ref: one clear line, exit 1
    capsys.readouterr()
    assert score_cli.main(["--est", str(est), "--out-dir", str(tmp_path / "x"), "--metrics", "pesq_wb,plcmos"]) == 1
    err = capsys.readouterr().err
    assert "pesq_wb need clean references: give --ref" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
