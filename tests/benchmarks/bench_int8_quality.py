#!/usr/bin/env python
"""Quality cost of the dynamic int8 export: fp32 ONNX vs int8 ONNX on a test set of noisy/clean pairs.

For each network the checkpoint is exported once to fp32 ONNX (se.export.export_model) and
quantised from that file with se.export's int8 recipe (se.export.quantize_int8, exactly what
``se.bin.export --quantize int8`` writes); both run through se.onnx_backend and the default
decode of se.bin.enhance (se.enhance.enhance_signal). Per network, means over the test set:

* pesq_wb and si_sdr (se.metrics.metric_value, the scorer's values) of noisy, fp32 and int8
  against clean, and int8 - fp32;
* fidelity: si_sdr of the int8 output against the fp32 output (dB; higher = closer).

Checkpoints (the quality columns mean something only for a network that enhances):
* ``--checkpoint NETWORK=PATH``: a trained or released checkpoint (ours or ClearVoice);
* networks in ``--train`` (default FRCRN_SE_16K): a small model trained here first by
  se.bin.train with egs/mini/conf/train_<NETWORK>.yaml for ``--train-steps`` updates on
  generated speech-like pairs with white noise (tests/helpers.py), a few minutes of CPU;
* otherwise the released architecture with the deterministic fill of tests/release_fill.py,
  which does not enhance: only the fidelity column is reported for it.

Test set: ``--data-dir`` (wav.scp noisy, spk1.scp clean, read with se.data.read_scp; files at
another rate are resampled with se.resample), or generated pairs at each of ``--snrs`` dB,
``--pairs-per-snr`` seeds each: white noise on excerpts of the real speech file of
tests/data/scoring (default), or on the speech-like tones of tests/helpers.tone_pair.

e.g.: PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_int8_quality.py --json int8_quality.json
      PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_int8_quality.py --networks FRCRN_SE_16K \
          --checkpoint FRCRN_SE_16K=exp/frcrn/model.avg5.pt --data-dir data/test
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

NETWORKS = ("FRCRN_SE_16K", "MossFormerGAN_SE_16K", "MossFormer2_SE_48K")
RELEASE_MANIFEST = {"MossFormerGAN_SE_16K": "MossFormerGAN_SE_16K_generator"}


def fail(msg: str) -> None:
    sys.exit(f"bench_int8_quality: {msg}")


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def train_small(network: str, steps: int, work: Path) -> Path:
    """A small ``network`` trained ``steps`` updates by se.bin.train on generated pairs -> exp dir."""
    from helpers import make_dir, train_env

    from se.models import network_sampling_rate

    rate = network_sampling_rate(network)
    root = work / f"train_{network}"
    make_dir(root, "train", 40, 1.0, rate, seed=1)
    make_dir(root, "valid", 4, 1.0, rate, seed=100)
    exp = root / "exp"
    cmd = [sys.executable, "-m", "se.bin.train", "--config", str(REPO / "egs" / "mini" / "conf" / f"train_{network}.yaml"),
           "--train-data", str(root / "data" / "train"), "--valid-data", str(root / "data" / "valid"),
           "--exp-dir", str(exp), "--max_steps", str(steps), "--max_epoch", "1000", "--num_workers", "0",
           "--valid_utterances_to_log", "0", "--print_freq", "20"]
    t = time.perf_counter()
    out = subprocess.run(cmd, env=dict(train_env(), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")),
                         capture_output=True, text=True)
    if out.returncode:
        fail(f"training {network} failed:\n{out.stderr[-3000:]}")
    print(f"trained {network}: {steps} updates in {time.perf_counter() - t:.0f} s ({exp})", flush=True)
    return exp


def release_fill_checkpoint(network: str, work: Path) -> Path:
    """The released architecture, every weight set by tests/release_fill.py (does not enhance)."""
    import release_fill
    from helpers import CLEARVOICE_DATA
    from release_checkpoints import load_manifest, release_state_dict, write_release_checkpoint

    from se.models import build_network

    path = work / f"{network}.release_fill.pt"
    if path.is_file():  # made by an earlier run with the same --work-dir
        return path
    ours = build_network(network, {}).state_dict()
    manifest = load_manifest(CLEARVOICE_DATA, RELEASE_MANIFEST.get(network, network))
    constants = {}
    for e in manifest["entries"]:
        if release_fill.keeps_constructed_value(e["key"]):
            constants[e["key"]] = ours[e["key"] if e["key"] in ours else e.get("alias_of")]
    sd = release_state_dict(manifest, constants, release_fill)
    return write_release_checkpoint(path, sd)


# ---------------------------------------------------------------------------------------------
# exports and the test set
# ---------------------------------------------------------------------------------------------
def exports(checkpoint: Path, network: str, work: Path) -> tuple[Path, Path]:
    """(fp32 export dir, int8 export dir) of ``checkpoint``; the int8 file is quantised from the fp32 one."""
    from se.checkpoint import file_sha256, resolve_checkpoint
    from se.export import EXPORT_JSON, export_model, quantize_int8

    fp32, int8 = work / f"{network}-fp32", work / f"{network}-int8"
    done = fp32 / EXPORT_JSON
    if done.is_file() and json.loads(done.read_text()).get("checkpoint_sha256") == file_sha256(resolve_checkpoint(checkpoint)):
        print(f"{network}: reusing the export {fp32} of the same checkpoint", flush=True)
    else:
        export_model(checkpoint, network, "onnx", fp32)
    int8.mkdir(parents=True, exist_ok=True)
    quantize_int8(fp32 / "model.onnx", int8 / "model.int8.onnx")
    meta = json.loads((fp32 / EXPORT_JSON).read_text())
    meta.update(file="model.int8.onnx", quantize="int8", checkpoint=None)
    (int8 / EXPORT_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return fp32, int8


def generated_pairs(rate: int, snrs: list[float], per_snr: int, seconds: float,
                    kind: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``per_snr`` pairs at each SNR: white noise added to real speech (``kind`` speech: excerpts
    of tests/data/scoring/speech.wav, 3.1 s, resampled to ``rate``) or to the speech-like tones
    of tests/helpers.tone_pair (``kind`` tones; PESQ scores those at its floor, about 1.02)."""
    from helpers import SCORING_DATA, tone_pair

    from se.audio import read_audio
    from se.resample import resample

    speech, fs = read_audio(SCORING_DATA / "speech.wav", dtype="float64")
    speech = resample(speech, fs, rate) if fs != rate else speech
    n = int(seconds * rate)
    pairs = []
    for snr in snrs:
        for i in range(per_snr):
            seed = 1000 + 100 * i + int(snr)
            if kind == "tones":
                noisy, clean = tone_pair(seconds, rate, seed=seed, snr_db=snr)
            else:
                rng = np.random.default_rng(seed)
                clean = np.roll(speech, -int(rng.integers(len(speech))))[:n]  # an excerpt, wrapping around
                noise = rng.standard_normal(len(clean))
                noisy = clean + noise * np.sqrt(np.mean(clean**2) / np.mean(noise**2)) * 10 ** (-snr / 20)
            pairs.append((f"snr{snr:g}_{i}", noisy, clean))
    return pairs


def data_dir_pairs(data_dir: Path, rate: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from se.audio import read_audio
    from se.data import read_scp
    from se.resample import resample

    noisy, clean = read_scp(data_dir / "wav.scp"), read_scp(data_dir / "spk1.scp")
    missing = sorted(set(noisy) - set(clean))
    if missing:
        fail(f"{data_dir}/spk1.scp has no line for {missing[0]} (and {len(missing) - 1} more)")
    pairs = []
    for utt in sorted(noisy):
        xs = []
        for path in (noisy[utt], clean[utt]):
            x, fs = read_audio(path, dtype="float64")
            xs.append(resample(x, fs, rate) if fs != rate else x)
        n = min(len(xs[0]), len(xs[1]))
        pairs.append((utt, xs[0][:n], xs[1][:n]))
    if not pairs:
        fail(f"{data_dir}/wav.scp: no utterances")
    return pairs


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------
def evaluate(network: str, fp32_dir: Path, int8_dir: Path, pairs, threads: int, quality: bool) -> dict:
    import torch

    from se.enhance import OVERLAP_SECONDS, SEGMENT_SECONDS, enhance_signal
    from se.metrics import metric_value
    from se.onnx_backend import load_exported

    models = {k: load_exported(d, "onnxruntime", threads)[0] for k, d in (("fp32", fp32_dir), ("int8", int8_dir))}
    rate = models["fp32"].sampling_rate
    seg, ovl = int(SEGMENT_SECONDS * rate), int(OVERLAP_SECONDS * rate)
    per_utt = []
    for utt, noisy, clean in pairs:
        with torch.no_grad():
            out = {k: enhance_signal(m, noisy, seg, ovl) for k, m in models.items()}
        row = {"utt": utt, "fidelity_si_sdr": metric_value("si_sdr", out["fp32"], out["int8"], rate)}
        if quality:
            for name, est in (("noisy", noisy), *out.items()):
                for col in ("pesq_wb", "si_sdr"):
                    row[f"{name}_{col}"] = metric_value(col, clean, est, rate)
        per_utt.append(row)
    keys = [k for k in per_utt[0] if k != "utt"]
    mean = {k: float(np.nanmean([r[k] for r in per_utt])) for k in keys}
    if quality:
        for col in ("pesq_wb", "si_sdr"):
            mean[f"delta_{col}"] = mean[f"int8_{col}"] - mean[f"fp32_{col}"]
    mean["fidelity_si_sdr_min"] = float(np.nanmin([r["fidelity_si_sdr"] for r in per_utt]))
    return {"mean": mean, "utterances": per_utt}


def table(results: list[dict]) -> str:
    def cell(m, key, fmt="{:.3f}"):
        return fmt.format(m[key]) if key in m and not math.isnan(m[key]) else "-"

    lines = ["| network | weights | pairs | PESQ-WB noisy / fp32 / int8 (delta) | SI-SDR dB noisy / fp32 / int8 (delta) "
             "| SI-SDR int8 vs fp32 dB (mean, min) |", "|---|---|---|---|---|---|"]
    for r in results:
        m = r["mean"]
        pesq = (f"{cell(m, 'noisy_pesq_wb')} / {cell(m, 'fp32_pesq_wb')} / {cell(m, 'int8_pesq_wb')} "
                f"({cell(m, 'delta_pesq_wb', '{:+.3f}')})") if r["quality"] else "- (filled weights)"
        sisdr = (f"{cell(m, 'noisy_si_sdr', '{:.2f}')} / {cell(m, 'fp32_si_sdr', '{:.2f}')} / "
                 f"{cell(m, 'int8_si_sdr', '{:.2f}')} ({cell(m, 'delta_si_sdr', '{:+.2f}')})") if r["quality"] else "-"
        lines.append(f"| {r['network']} | {r['weights']} | {len(r['utterances'])} | {pesq} | {sisdr} | "
                     f"{cell(m, 'fidelity_si_sdr', '{:.1f}')}, {cell(m, 'fidelity_si_sdr_min', '{:.1f}')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", default=",".join(NETWORKS))
    p.add_argument("--checkpoint", action="append", default=[], metavar="NETWORK=PATH",
                   help="checkpoint (file or exp dir) of a network; repeatable")
    p.add_argument("--train", default="FRCRN_SE_16K",
                   help="networks without --checkpoint trained here first (comma list; '' for none)")
    p.add_argument("--train-steps", type=int, default=150)
    p.add_argument("--data-dir", help="test set: wav.scp (noisy) and spk1.scp (clean)")
    p.add_argument("--test-set", choices=("speech", "tones"), default="speech",
                   help="generated test set: white noise on real speech (tests/data/scoring) or on tones")
    p.add_argument("--snrs", default="0,5,10,15", help="generated test set: SNRs in dB")
    p.add_argument("--pairs-per-snr", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0, help="generated test set: length of each pair")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", help="keep checkpoints and exports here, and reuse the exports of an earlier "
                   "run of the same checkpoints (default: a temporary dir)")
    p.add_argument("--json", help="write the results here as JSON")
    a = p.parse_args()
    import torch

    from se.models import network_names, network_sampling_rate

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    networks = [n for n in a.networks.split(",") if n]
    trained = [n for n in a.train.split(",") if n]
    for n in networks + trained:
        if n not in network_names():
            fail(f"unknown network {n!r}; known: {', '.join(network_names())}")
    checkpoints = {}
    for spec in a.checkpoint:
        network, sep, path = spec.partition("=")
        if not sep or network not in network_names():
            fail(f"--checkpoint {spec!r}: expected NETWORK=PATH with NETWORK one of {', '.join(network_names())}")
        if not Path(path).exists():
            fail(f"--checkpoint {spec!r}: {path} not found")
        checkpoints[network] = Path(path)
    if a.data_dir and not Path(a.data_dir).is_dir():
        fail(f"--data-dir {a.data_dir}: not a directory")
    try:
        snrs = [float(s) for s in a.snrs.split(",")]
    except ValueError:
        fail(f"--snrs {a.snrs!r}: expected a comma list of numbers")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = []
        for network in networks:
            if network in checkpoints:
                checkpoint, weights = checkpoints[network], f"--checkpoint {checkpoints[network].name}"
            elif network in trained:
                checkpoint, weights = train_small(network, a.train_steps, work), f"trained here, {a.train_steps} updates"
            else:
                checkpoint, weights = release_fill_checkpoint(network, work), "release fill"
            quality = weights != "release fill"
            rate = network_sampling_rate(network)
            pairs = (data_dir_pairs(Path(a.data_dir), rate) if a.data_dir
                     else generated_pairs(rate, snrs, a.pairs_per_snr, a.seconds, a.test_set))
            t = time.perf_counter()
            fp32, int8 = exports(checkpoint, network, work)
            result = evaluate(network, fp32, int8, pairs, a.threads, quality)
            result.update(network=network, weights=weights, quality=quality,
                          test_set=a.data_dir or f"generated {a.test_set}: snrs {a.snrs} dB x {a.pairs_per_snr}, {a.seconds:g} s")
            results.append(result)
            print(f"{network}: {json.dumps(result['mean'])} ({time.perf_counter() - t:.0f} s)", flush=True)
    print("\nfp32 vs dynamic int8 ONNX (se.export), onnxruntime, means over the test set:")
    print(table(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    from se.cli import UserError

    try:
        main()
    except UserError as exc:  # a bad checkpoint, export dir or data dir: one line
        sys.exit(f"bench_int8_quality: {exc}")
