"""se.metrics: golden values on the reference pair (tests/data/scoring), Loizou's composite details, undefined cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
from helpers import SCORING_DATA
from scipy.linalg import solve_toeplitz
from scipy.signal import resample_poly

from se.metrics import columns, groups, parse_metrics, score_pair
from se.metrics import composite as comp
from se.resample import resample
from se.metrics.sdr import si_sdr, snr

NODNSMOS = list(groups()["nodnsmos"])

# Tolerances of the issue: PESQ/STOI/eSTOI exact, SI-SDR 1e-4, composite 1e-3, DNSMOS 1e-3.
TOL = {
    "pesq_wb": 1e-6, "pesq_nb": 1e-6, "stoi": 1e-6, "estoi": 1e-6, "si_sdr": 1e-4,
    "csig": 1e-3, "cbak": 1e-3, "covl": 1e-3, "llr": 1e-3, "wss": 1e-3, "segsnr": 1e-3,
    "dnsmos_sig": 1e-3, "dnsmos_bak": 1e-3, "dnsmos_ovrl": 1e-3, "dnsmos_p808": 1e-3,
}  # fmt: skip


@pytest.fixture(scope="session")
def golden() -> dict:
    return json.loads((SCORING_DATA / "golden_scores.json").read_text())


@pytest.fixture(scope="session")
def pair() -> tuple[np.ndarray, np.ndarray]:
    ref, fs = sf.read(SCORING_DATA / "speech.wav", dtype="float64")
    deg, fs2 = sf.read(SCORING_DATA / "speech_bab_0dB.wav", dtype="float64")
    assert fs == fs2 == 16000
    return ref, deg


@pytest.fixture(scope="session")
def all_scores(pair):
    return score_pair(*pair, 16000, list(columns()))


@pytest.mark.parametrize("name", sorted(TOL))
def test_reference_scores(all_scores, golden, name):
    assert all_scores.notes == []
    assert all_scores.values[name] == pytest.approx(golden["metrics"][name], abs=TOL[name], rel=0)


def test_pesq_package_convention(pair, golden):
    """The pesq package's own test values: wb and 'nb fed 16 kHz audio'; our pesq_nb uses 8 kHz copies."""
    import pesq

    ref, deg = pair
    assert pesq.pesq(16000, ref, deg, "wb") == pytest.approx(1.0832337141036987, abs=1e-12)
    assert pesq.pesq(16000, ref, deg, "nb") == pytest.approx(1.6072081327438354, abs=1e-12)
    assert golden["pesq_checks"]["pesq_nb_16k_no_resampling"] == pytest.approx(1.6072081327438354)
    # pesq_nb is computed on 8 kHz copies made by THE resampler (soxr VHQ); scipy's
    # resample_poly(x, 1, 2) copies, used before, give a value 2.2e-4 higher
    import soxr

    r8, d8 = soxr.resample(ref, 16000, 8000, quality="VHQ"), soxr.resample(deg, 16000, 8000, quality="VHQ")
    np.testing.assert_array_equal(resample(ref, 16000, 8000), r8)
    assert pesq.pesq(8000, r8, d8, "nb") == golden["pesq_checks"]["pesq_nb_8k_soxr_vhq"] == golden["metrics"]["pesq_nb"]
    poly = pesq.pesq(8000, resample_poly(ref, 1, 2), resample_poly(deg, 1, 2), "nb")
    assert poly == golden["pesq_checks"]["pesq_nb_8k_resample_poly_1_2"]


def test_dnsmos_of_the_clean_file(pair, golden):
    from se.metrics.dnsmos import dnsmos

    got = dnsmos(pair[0])
    for k, v in golden["dnsmos_each_file_alone"]["speech.wav"].items():
        assert got[k] == pytest.approx(v, abs=1e-3)


# --------------------------------------------------------------------------- composite


def test_composite_regression_loizou_readme():
    """Loizou's readme example (8 kHz, raw NB PESQ): Csig 3.3050, Cbak 2.6160, Covl 2.7133."""
    got = comp.composite_from_parts(llr=0.681368, wss=49.671978, segsnr=3.991727, pesq=2.255732)
    assert got["csig"] == pytest.approx(3.3050, abs=1e-4)
    assert got["cbak"] == pytest.approx(2.6160, abs=1e-4)
    assert got["covl"] == pytest.approx(2.7133, abs=1e-4)


def test_composite_clamped_to_1_5():
    best = comp.composite_from_parts(llr=0.0, wss=0.0, segsnr=35.0, pesq=4.64)
    worst = comp.composite_from_parts(llr=2.5, wss=150.0, segsnr=-10.0, pesq=1.0)
    assert best == {"csig": 5.0, "cbak": 5.0, "covl": 5.0}
    assert worst == {"csig": 1.0, "cbak": 1.0, "covl": 1.0}


def test_matlab_rounding_of_the_95_percent_trim():
    # 30 frames: round(28.5) is 29 in MATLAB, 28 with Python's round (half to even)
    assert comp.matlab_round(28.5) == 29 and round(28.5) == 28
    assert comp._trimmed_mean(np.arange(30.0)[::-1]) == pytest.approx(np.mean(np.arange(29.0)))
    assert comp.matlab_round(2.4999) == 2


def test_framing_as_in_composite_m():
    win, hop, n_frames, window = comp._framing(16000, 49600)
    assert (win, hop, n_frames) == (480, 120, (49600 - 480) // 120)
    n = np.arange(1, 481)
    np.testing.assert_allclose(window, 0.5 * (1 - np.cos(2 * np.pi * n / 481)))
    assert window[0] > 0 and window[-1] > 0  # not scipy's hann: no zero end points
    win8, hop8, _, _ = comp._framing(8000, 8000)
    assert (win8, hop8) == (240, 60)
    assert comp._framing(44100, 44100)[0] == 1323  # round(0.03 * 44100)
    assert comp._crit_filters(16000, 1024).shape == (25, 512)


def test_lpc_is_levinson_durbin():
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((3, 480)) * np.hanning(480)
    for order in (10, 16):
        r, a = comp._lpc(frames, order)
        for i in range(3):
            coeffs = solve_toeplitz(r[i, :order], r[i, 1 : order + 1])
            np.testing.assert_allclose(a[i], np.concatenate([[1.0], -coeffs]), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("fs, order", [(8000, 10), (16000, 16)])
def test_llr_order_depends_on_rate(monkeypatch, fs, order):
    seen = []
    real = comp._lpc
    monkeypatch.setattr(comp, "_lpc", lambda frames, p: seen.append(p) or real(frames, p))
    x = np.random.default_rng(0).standard_normal(fs // 2)
    comp.llr_frames(x, x + 0.1, fs)
    assert set(seen) == {order}


@pytest.mark.parametrize("scale", [0.1, 0.5, 4.0, 32768.0])
def test_composite_does_not_depend_on_input_scale(pair, all_scores, scale):
    """No /32768 in WSS: int16-range input or a quieter file give the same values."""
    ref, deg = pair
    got = score_pair(ref * scale, deg * scale, 16000, list(groups()["composite"]))
    for k in groups()["composite"]:
        assert got.values[k] == pytest.approx(all_scores.values[k], rel=1e-9, abs=1e-9), k


def test_segsnr_clamped():
    x = np.random.default_rng(0).standard_normal(16000)
    assert np.all(comp.segsnr_frames(x, x, 16000) == 35.0)
    assert np.all(comp.segsnr_frames(x, -30 * x, 16000) == -10.0)


# --------------------------------------------------------------------------- SI-SDR, SNR


def test_si_sdr_formula_and_invariance():
    rng = np.random.default_rng(0)
    s = rng.standard_normal(8000) + 0.3
    y = 0.5 * s + 0.1 * rng.standard_normal(8000) - 0.2
    s0, y0 = s - s.mean(), y - y.mean()
    a = y0 @ s0 / (s0 @ s0)
    expected = 10 * np.log10(np.sum((a * s0) ** 2) / np.sum((a * s0 - y0) ** 2))
    assert si_sdr(s, y) == pytest.approx(expected, abs=1e-10)
    assert si_sdr(s, 7.0 * y + 1.0) == pytest.approx(expected, abs=1e-9)  # scale and offset
    assert snr(s, y) == pytest.approx(10 * np.log10(np.sum(s**2) / np.sum((s - y) ** 2)))


# --------------------------------------------------------------------------- rates


def test_48k_uses_16k_copies_and_native_si_sdr(pair):
    ref48, deg48 = resample_poly(pair[0], 3, 1), resample_poly(pair[1], 3, 1)
    got = score_pair(ref48, deg48, 48000, ["pesq_wb", "stoi", "si_sdr", "llr"]).values
    import pesq
    from pystoi import stoi

    r16, d16 = resample(ref48, 48000, 16000), resample(deg48, 48000, 16000)
    assert got["pesq_wb"] == pesq.pesq(16000, r16, d16, "wb")
    assert got["stoi"] == stoi(r16, d16, 16000)
    assert got["si_sdr"] == pytest.approx(si_sdr(ref48, deg48), abs=1e-12)
    assert got["llr"] == pytest.approx(comp.composite_parts(r16, d16, 16000)["llr"], abs=1e-12)


def test_8k_native_has_no_wideband_pesq(pair):
    r8, d8 = resample_poly(pair[0], 1, 2), resample_poly(pair[1], 1, 2)
    got = score_pair(r8, d8, 8000, ["pesq_wb", "pesq_nb", "csig", "llr"])
    assert math.isnan(got.values["pesq_wb"]) and math.isnan(got.values["csig"])
    assert got.values["pesq_nb"] == pytest.approx(1.6656668186187744, abs=1e-6)
    assert math.isfinite(got.values["llr"])
    assert any("below 16 kHz" in msg for _, msg in got.notes)


# --------------------------------------------------------------------------- undefined values


def _kinds(res) -> set[str]:
    return {k for k, _ in res.notes}


def test_silent_reference_is_undefined_not_a_crash(pair):
    res = score_pair(np.zeros_like(pair[0]), pair[1], 16000, NODNSMOS)
    assert all(math.isnan(res.values[c]) for c in NODNSMOS)
    assert _kinds(res) == {"silent_reference"}


def test_nan_samples(pair):
    ref, deg = pair
    bad = deg.copy()
    bad[100] = np.nan
    res = score_pair(ref, bad, 16000, NODNSMOS)
    assert all(math.isnan(v) for v in res.values.values()) and _kinds(res) == {"nonfinite_est"}
    res = score_pair(bad, deg, 16000, NODNSMOS)
    assert all(math.isnan(v) for v in res.values.values()) and _kinds(res) == {"nonfinite_ref"}


def test_short_file_gives_undefined_pesq_stoi(pair):
    n = 3200  # 0.2 s
    res = score_pair(pair[0][:n], pair[1][:n], 16000, NODNSMOS)
    for c in ("pesq_wb", "pesq_nb", "stoi", "estoi", "csig", "cbak", "covl"):
        assert math.isnan(res.values[c]), c
    for c in ("si_sdr", "snr", "llr", "wss", "segsnr"):
        assert math.isfinite(res.values[c]), c
    assert _kinds(res) == {"undefined"}
    tiny = score_pair(pair[0][20000:20100], pair[1][20000:20100], 16000, ["llr", "si_sdr"])
    assert math.isnan(tiny.values["llr"]) and math.isfinite(tiny.values["si_sdr"])


def test_length_mismatch_policy(pair):
    ref, deg = pair
    small = score_pair(ref, deg[:-800], 16000, ["pesq_wb", "si_sdr"])  # 50 ms: trimmed
    direct = score_pair(ref[:-800], deg[:-800], 16000, ["pesq_wb", "si_sdr"])
    assert small.values == direct.values
    assert _kinds(small) == {"trimmed"}
    large = score_pair(ref, deg[:-8000], 16000, ["pesq_wb", "si_sdr"])  # 0.5 s: not the same file
    assert all(math.isnan(v) for v in large.values.values())
    assert _kinds(large) == {"length_mismatch"}
    allowed = score_pair(ref, deg[:-8000], 16000, ["si_sdr"], max_len_diff=1.0)
    assert math.isfinite(allowed.values["si_sdr"])


def test_identical_and_silent_estimates(pair):
    ref = pair[0]
    same = score_pair(ref, ref, 16000, ["si_sdr", "snr", "stoi"])
    assert math.isnan(same.values["si_sdr"]) and math.isnan(same.values["snr"])  # +inf dB
    assert same.values["stoi"] == pytest.approx(1.0)
    silent = score_pair(ref, np.zeros_like(ref), 16000, ["pesq_wb", "si_sdr", "sdr", "snr"])
    assert math.isnan(silent.values["pesq_wb"]) and math.isnan(silent.values["si_sdr"])
    assert silent.values["snr"] == pytest.approx(0.0)
    assert "error" not in _kinds(silent)


def test_dnsmos_needs_no_reference_and_clips(pair):
    res = score_pair(np.zeros_like(pair[0]), 5.0 * pair[1], 16000, ["si_sdr", "dnsmos_ovrl"])
    assert math.isnan(res.values["si_sdr"]) and math.isfinite(res.values["dnsmos_ovrl"])
    assert _kinds(res) == {"silent_reference", "clipped_for_dnsmos"}


def test_parse_metrics():
    assert parse_metrics("si_sdr,pesq") == ["pesq_wb", "pesq_nb", "si_sdr"]
    assert parse_metrics("all") == list(columns())
    assert "dnsmos_sig" not in parse_metrics("nodnsmos")
    with pytest.raises(ValueError, match="unknown metric 'pesq_xx'"):
        parse_metrics("pesq_xx")
    with pytest.raises(ValueError):
        parse_metrics(" , ")


def test_table_consistency_checks():
    from dataclasses import replace

    from se.metrics import METRICS, check_table

    check_table(METRICS)
    with pytest.raises(ValueError, match="stoi is in the table twice"):
        check_table(METRICS + (METRICS[2],))
    composite_first = tuple(m for m in METRICS if m.column == "csig") + METRICS
    with pytest.raises(ValueError, match="csig needs pesq_wb"):
        check_table(composite_first)
    with pytest.raises(ValueError, match="family si_sdr of snr"):
        check_table(tuple(replace(m, group="si_sdr") if m.column == "snr" else m for m in METRICS))
    # a family named like one of its own columns is that column, not a group
    assert "stoi" not in groups() and parse_metrics("stoi") == ["stoi"]
    assert groups()["energy"] == ("si_sdr", "snr", "sdr")
