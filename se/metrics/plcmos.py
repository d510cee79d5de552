"""PLCMOS v2: packet-loss-concealment MOS without a reference (Mack et al., Interspeech 2023).

Runs ``plcmos_models/plcmos_v2.onnx`` shipped inside the ``speechmos`` package with onnxruntime
on CPU, one thread per scoring process; nothing is downloaded. The input is the one the model
was trained on (speechmos 0.0.1.1's procedure):

- the 16 kHz waveform (the scorer passes 16 kHz copies; samples clipped to [-1, 1]);
- STFT: periodic Hamming window of 512 samples, hop 256, FFT 512, the first frame starting 256
  samples before the signal (zeros padded at both ends to whole frames);
- feature = ln(|X|^2) / 20, zero bins floored at the smallest non-zero value less 120 dB;
- the model maps the features plus a 64-dimensional "rater embedding" to a MOS; the score is the
  mean over 15 rater embeddings.

Determinism: speechmos draws the 15 embeddings from numpy's global random state, so its score
changes from call to call. Here they are the first 15 draws of ``RandomState(0).normal(size=64)``
(fixed): the same audio always gets the same score.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

SR = 16000
N_FFT = 512
HOP = 256
RATERS = 15
RATER_SEED = 0


def model_path() -> str:
    from se.metrics.dnsmos import model_dir

    return os.path.join(os.path.dirname(model_dir()), "plcmos_models", "plcmos_v2.onnx")


@lru_cache(maxsize=1)
def _session():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_path(), sess_options=opts, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=1)
def rater_embeddings() -> np.ndarray:
    rs = np.random.RandomState(RATER_SEED)
    return np.stack([rs.normal(size=64) for _ in range(RATERS)]).astype(np.float32)


def features(x16: np.ndarray) -> np.ndarray:
    """(frames, 257) log-power features of a 16 kHz waveform."""
    x = np.asarray(x16, dtype=np.float64)
    n_frames = -(-(len(x) + N_FFT - HOP) // HOP)
    padded = np.zeros((n_frames - 1) * HOP + N_FFT)
    padded[N_FFT - HOP : N_FFT - HOP + len(x)] = x
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    window = 0.54 - 0.46 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    power = np.abs(np.fft.rfft(padded[idx] * window, axis=1)) ** 2
    zero = power == 0
    logp = np.empty_like(power)
    if zero.all():
        logp.fill(-80.0 / 10.0 * np.log(10.0))
    else:
        logp[~zero] = np.log(power[~zero])
        logp[zero] = np.log(power[~zero].min()) - 120.0 / 10.0 * np.log(10.0)
    return logp / 20.0


def plcmos(x16: np.ndarray) -> dict[str, float]:
    """PLCMOS of a 16 kHz waveform with samples in [-1, 1]."""
    if np.asarray(x16).size == 0:
        raise ValueError("PLCMOS: empty signal")
    feats = features(x16).astype(np.float32)[None, None]
    sess = _session()
    scores = [float(np.ravel(sess.run(None, {"degraded_audio": feats, "rater_embed": r[None]})[0])[0])
              for r in rater_embeddings()]
    return {"plcmos": float(np.mean(scores))}
