#!/usr/bin/env python3
"""Makes the embedded mini corpus: deterministic speech-like signals in noise, no download.

    local/make_mini_corpus.py --out-dir downloads/mini --fs 16000

Layout: <out-dir>/<set>/{noisy,clean,noise}/<utt>.wav for set in train, valid, test
(noise/ holds the noise as mixed: noisy = clean + noise; the simulated-training path of
egs/mini uses clean/ and noise/ as speech and noise sources).
"Speech": harmonics of a moving f0 (glides + vibrato) with per-syllable formant weighting,
syllable envelopes and pauses. Noises: white, pink, brown, babble (other synthetic talkers),
mains hum with harmonics and amplitude-modulated bursts, mixed at -5..15 dB SNR.
The same --seed always gives the same files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from se import cli  # noqa: E402
from se.audio import write_audio  # noqa: E402

SETS = {"train": (96, 2.0), "valid": (8, 2.0), "test": (8, 3.0)}  # utterances, seconds


def speech_like(rng: np.random.Generator, n: int, fs: int) -> np.ndarray:
    t = np.arange(n) / fs
    f0_base = rng.uniform(95, 230)
    glide = 1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 6.3))
    vibrato = 1 + 0.03 * np.sin(2 * np.pi * rng.uniform(4, 6) * t)
    f0 = f0_base * glide * vibrato
    phase = 2 * np.pi * np.cumsum(f0) / fs
    # syllables: 3-6 per second, each with its own formants; pauses between phrases
    env = np.zeros(n)
    formant_gain = np.zeros((n, 3))
    pos = int(rng.uniform(0.05, 0.25) * fs)
    while pos < n:
        dur = int(rng.uniform(0.12, 0.3) * fs)
        seg = slice(pos, min(n, pos + dur))
        k = seg.stop - seg.start
        env[seg] = np.sin(np.pi * np.arange(k) / k) ** 2
        formant_gain[seg] = rng.uniform([300, 900, 2200], [800, 2000, 3200])
        pos += dur + int(rng.uniform(0.02, 0.08) * fs)
        if rng.random() < 0.15:
            pos += int(rng.uniform(0.2, 0.4) * fs)  # a pause
    # the harmonics are computed where the envelope sounds only (elsewhere x * env is 0 anyway),
    # in place: the same values as over the whole signal, in a fraction of the time
    active = np.flatnonzero(env > 0)
    f0_active, phase_active = f0[active], phase[active]
    formants = np.ascontiguousarray(formant_gain[active].T)
    x_active = np.zeros(len(active))
    amp, tmp = np.empty(len(active)), np.empty(len(active))
    nyq = 0.45 * fs
    f0_min = f0.min()
    f0_lo, f0_hi = (f0_active.min(), f0_active.max()) if len(active) else (0.0, 0.0)
    f_lo, f_hi = (formants.min(axis=1), formants.max(axis=1)) if len(active) else (np.zeros(3), np.zeros(3))
    for h in range(1, 40):
        if h * f0_min > nyq:
            break
        near = [i for i in range(3)  # formants this harmonic comes near; the others give terms below
                if h * f0_lo - f_hi[i] <= 10 * (80 + 40 * i) >= f_lo[i] - h * f0_hi]  # exp(-50): invisible
        if not near:
            continue
        fh = h * f0_active
        amp.fill(0.0)
        for i in near:  # amp = sum_i exp(-0.5 * ((fh - F_i) / w_i) ** 2)
            np.subtract(fh, formants[i], out=tmp)
            np.divide(tmp, 80 + 40 * i, out=tmp)
            np.square(tmp, out=tmp)
            np.multiply(tmp, -0.5, out=tmp)
            np.exp(tmp, out=tmp)
            amp += tmp
        amp /= h**0.5
        amp *= fh < nyq
        np.multiply(h, phase_active, out=tmp)
        np.sin(tmp, out=tmp)
        tmp *= amp
        x_active += tmp
    x = np.zeros(n)
    x[active] = x_active * env[active]
    return x / (np.sqrt(np.mean(x**2)) + 1e-9) * 0.05


def noise(rng: np.random.Generator, n: int, fs: int) -> np.ndarray:
    kind = rng.integers(0, 5)
    white = rng.standard_normal(n)
    if kind == 0:
        y = white
    elif kind in (1, 2):  # pink / brown: 1/f^a spectrum shaping
        a = 0.5 if kind == 1 else 1.0
        spec = np.fft.rfft(white)
        f = np.maximum(np.fft.rfftfreq(n, 1 / fs), 20.0)
        y = np.fft.irfft(spec / f**a, n)
    elif kind == 3:  # babble of synthetic talkers
        y = sum(speech_like(rng, n, fs) for _ in range(4)) + 0.05 * white * 0.05
    else:  # hum with harmonics and modulated noise bursts
        t = np.arange(n) / fs
        mains = rng.choice([50.0, 60.0])
        y = sum(np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 6.3)) / h for h in range(1, 8))
        y += white * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)) ** 2
    return y / (np.sqrt(np.mean(y**2)) + 1e-12)


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--fs", type=cli.positive_int, default=16000)
    p.add_argument("--seed", type=cli.nonneg_int, default=1234)
    p.add_argument("--max-per-set", type=cli.nonneg_int, default=0,
                   help="only the first N utterances of each set (the same files as the full corpus's); 0 = all")
    args = p.parse_args(argv)
    out = cli.check_output_dir(args.out_dir, "--out-dir")
    written = 0
    for s, (count, seconds) in SETS.items():
        for i in range(min(count, args.max_per_set or count)):
            rng = np.random.default_rng([args.seed, list(SETS).index(s), i])
            n = int(seconds * args.fs * rng.uniform(0.8, 1.2))
            clean = speech_like(rng, n, args.fs)
            snr = rng.uniform(-5, 15)
            nz = noise(rng, n, args.fs)
            nz *= np.sqrt(np.mean(clean**2) / np.mean(nz**2)) * 10 ** (-snr / 20)
            utt = f"mini_{s}_{i:03d}"
            write_audio(out / s / "clean" / f"{utt}.wav", clean, args.fs, "FLOAT")
            write_audio(out / s / "noisy" / f"{utt}.wav", clean + nz, args.fs, "FLOAT")
            write_audio(out / s / "noise" / f"{utt}.wav", nz, args.fs, "FLOAT")
            written += 1
    print(f"wrote {written} noisy/clean pairs at {args.fs} Hz under {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="local/make_mini_corpus.py")


if __name__ == "__main__":
    sys.exit(main())
