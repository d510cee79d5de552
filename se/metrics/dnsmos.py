"""DNSMOS P.835 (SIG, BAK, OVRL) and P.808 MOS, no reference (Reddy et al., ICASSP 2022).

Runs the ONNX models shipped inside the ``speechmos`` package (``dnsmos_models/
sig_bak_ovr.onnx``, non-personalised, and ``dnsmos_models/model_v8.onnx``) with onnxruntime on
CPU, one thread per scoring process; nothing is downloaded. The clip procedure is the one of
the DNS Challenge's ``dnsmos_local.py`` as packaged by speechmos 0.0.1.1 (golden values in
tests/data/scoring/golden_scores.json):

- 16 kHz input (the scorer passes 16 kHz copies);
- the clip is repeated (doubled) until it is at least 9.01 s long;
- 9.01 s windows with a 1 s hop; P.835 model on the float32 waveform, P.808 model on a
  120-band log-mel spectrogram (n_fft 321, hop 160) of the window less its last 160 samples;
- the raw P.835 outputs go through the published non-personalised polynomials;
- each score is the mean over windows.

Level policy (fixed): no level normalisation, the waveform is scored as stored, as speechmos
and dnsmos_local.py do (DNSMOS depends on the level by design). Samples beyond [-1, 1] (float
files) are clipped to [-1, 1] first, as writing the file as 16-bit PCM would; the scorer notes
it for that utterance.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

import numpy as np

SR = 16000
INPUT_LENGTH = 9.01  # seconds per window
COLUMNS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")

# Non-personalised P.835 output mappings (numpy.poly1d coefficients, highest power first).
POLY_SIG = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
POLY_BAK = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
POLY_OVR = np.poly1d([-0.06766283, 1.11546468, 0.04602535])


def model_dir() -> str:
    """speechmos/dnsmos_models, found without importing speechmos (its import needs requests)."""
    spec = importlib.util.find_spec("speechmos")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("speechmos is not installed: it ships the DNSMOS ONNX models (pip install speechmos)")
    return os.path.join(list(spec.submodule_search_locations)[0], "dnsmos_models")


@lru_cache(maxsize=1)
def _sessions():
    """(P.835 session, P.808 session), built once per process."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    d = model_dir()
    make = lambda name: ort.InferenceSession(  # noqa: E731
        os.path.join(d, name), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    return make("sig_bak_ovr.onnx"), make("model_v8.onnx")


def _melspec(audio: np.ndarray) -> np.ndarray:
    """P.808 input features (frames, 120)."""
    import librosa

    mel = librosa.feature.melspectrogram(y=audio, sr=SR, n_fft=321, hop_length=160, n_mels=120)
    return ((librosa.power_to_db(mel, ref=np.max) + 40.0) / 40.0).T


def dnsmos(x16: np.ndarray) -> dict[str, float]:
    """DNSMOS scores of a 16 kHz waveform with samples in [-1, 1]."""
    audio = np.asarray(x16, dtype=np.float32)
    if audio.size == 0:
        raise ValueError("DNSMOS: empty signal")
    win = int(INPUT_LENGTH * SR)
    while len(audio) < win:
        audio = np.append(audio, audio)
    n_windows = int(np.floor(len(audio) / SR) - INPUT_LENGTH) + 1
    p835, p808 = _sessions()
    sig, bak, ovr, mos808 = [], [], [], []
    for idx in range(n_windows):
        seg = audio[int(idx * SR) : int((idx + INPUT_LENGTH) * SR)]
        if len(seg) < win:
            continue
        feats808 = _melspec(seg[:-160]).astype(np.float32)[None]
        mos808.append(p808.run(None, {"input_1": feats808})[0][0][0])
        s, b, o = p835.run(None, {"input_1": seg.astype(np.float32)[None]})[0][0]
        sig.append(POLY_SIG(s))
        bak.append(POLY_BAK(b))
        ovr.append(POLY_OVR(o))
    return {
        "dnsmos_sig": float(np.mean(sig)),
        "dnsmos_bak": float(np.mean(bak)),
        "dnsmos_ovrl": float(np.mean(ovr)),
        "dnsmos_p808": float(np.mean(mos808)),
    }
