"""Enhance audio files with a trained network or a ClearVoice release checkpoint.

    python -m se.bin.enhance --network FRCRN_SE_16K --checkpoint exp/frcrn \
        --input data/test/wav.scp --output-dir exp/frcrn/enhanced/test

--checkpoint: one of our checkpoint files, an experiment dir (its last_best_checkpoint), or a
ClearVoice release file ({'model': state_dict}). Or --model-dir: a package folder of
se.bin.package (--backend torch: its model.pt; onnxruntime: its onnx/ export), or an export dir
of se.bin.export (--backend onnxruntime: ONNX; torch: its TorchScript file, or the checkpoint it
names); every backend shares the same decode code (se.enhance). --input: one audio file, a directory of
.wav/.flac files, or a Kaldi scp (``utt path`` per line; outputs are named ``<utt>.wav``).
Every output has its input's name and length and is written at the input's sample rate
(inputs at another rate than the network's are resampled on the way in and out, and a log
line says so). All inputs are checked before anything is written; outputs are written
into a hidden folder inside the output dir and moved into place when every file succeeded, so a
failure (an unreadable input, NaN/Inf samples, a network output that is not finite) leaves the
output dir exactly as it was. A digitally silent input gives a silent output (and a warning).

--batch-size N enhances N pieces (files, or segments of long files) per forward pass, files
taken in length order (se/batching.py). Non-causal networks batch only pieces of equal length
unless --length-quantum Q pads every piece to a multiple of Q seconds, at every batch size, so
outputs never depend on the batch size. Progress: a log line with files/s and ETA every 10 s.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from se import cli
from se.atomic import publish
from se.allocator import retain_freed_memory
from se.audio import AudioError, audio_info, read_audio, write_audio
from se.batching import Progress, enhance_batched
from se.data import DataDirError, read_scp
from se.enhance import OVERLAP_SECONDS, SEGMENT_SECONDS, enhance_clearvoice, enhance_signal
from se.models import get_entry, network_names
from se.onnx_backend import BACKENDS, load_for_enhance
from se.resample import resample

log = logging.getLogger("se.enhance")
AUDIO_EXTS = (".wav", ".flac")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m se.bin.enhance", description=__doc__.split("\n\n")[0])
    p.add_argument("--network", choices=network_names(), help="network (required for ClearVoice files)")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="checkpoint file or experiment dir")
    model.add_argument("--model-dir", help="a model package (se.bin.package) or an export dir (se.bin.export)")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch, or onnxruntime (needs --model-dir: a package or an ONNX export)")
    p.add_argument("--threads", type=cli.positive_int, help="CPU threads of the backend (default: its own)")
    p.add_argument("--input", required=True, help="audio file, directory or scp")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--clearvoice-compat", action="store_true",
                   help="reproduce ClearVoice's decode path exactly (its padding, delay and edge effects)")
    p.add_argument("--segment-length", type=cli.positive_float, default=SEGMENT_SECONDS,
                   help="seconds; longer inputs are decoded in overlapping segments (default path)")
    p.add_argument("--segment-overlap", type=cli.nonneg_float, default=OVERLAP_SECONDS,
                   help="seconds of cross-fade between segments (shorter than --segment-length)")
    p.add_argument("--output-subtype", choices=["PCM_16", "FLOAT"], default="PCM_16")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--num-jobs", type=cli.positive_int, default=1, help="split the inputs into this many parts ...")
    p.add_argument("--job", type=cli.positive_int, default=1, help="... and process part JOB (1-based)")
    p.add_argument("--fbank-dither", type=cli.nonneg_float, default=0.0,
                   help="MossFormer2_SE_48K only: fbank dither at inference (the release used 1.0)")
    p.add_argument("--batch-size", type=cli.positive_int, default=1,
                   help="pieces (files, or segments of long files) per forward pass; files are taken in length "
                        "order (default path only)")
    p.add_argument("--length-quantum", type=cli.nonneg_float, default=0.0,
                   help="seconds: zero-pad every piece to a multiple of this at every batch size, so files of "
                        "similar length share a batch and the output does not depend on --batch-size (0: "
                        "non-causal networks batch only equal lengths; causal ones need no padding)")
    return p


def list_inputs(spec: str) -> list[tuple[str, str, str]]:
    """(output name, path, where) for a file, a directory or an scp."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_EXTS)
        if not files:
            raise AudioError(f"{path}: no {'/'.join(AUDIO_EXTS)} files in this directory")
        seen: dict[str, Path] = {}
        for p in files:
            if p.stem in seen:
                raise AudioError(f"{p} and {seen[p.stem]} would both be written as {p.stem}.wav; rename one")
            seen[p.stem] = p
        return [(p.stem + ".wav", str(p), str(p)) for p in files]
    if not path.exists():
        raise AudioError(f"{path}: input not found")
    if path.suffix.lower() in AUDIO_EXTS:
        return [(path.stem + ".wav", str(path), str(path))]
    scp = read_scp(path)
    if not scp:
        raise DataDirError(f"{path}: no lines")
    return [(f"{utt}.wav", p, f"{path} line {i}") for i, (utt, p) in enumerate(scp.items(), 1)]


def check_inputs(items: list[tuple[str, str, str]]) -> list[float]:
    """Fails before any output is written: missing, empty, unreadable or multi-channel files.
    Returns the durations (seconds)."""
    durations = []
    for _, p, where in items:
        ctx = f"{p} ({where})" if where != p else p
        try:
            info = audio_info(p)
        except AudioError as exc:
            raise AudioError(f"{exc} ({where})" if where != p else str(exc)) from None
        if info.channels != 1:
            raise AudioError(f"{ctx}: {info.channels} channels; enhancement takes mono files "
                             "(pick a channel first, e.g. sox in.wav out.wav remix 1)")
        if info.frames == 0:
            raise AudioError(f"{ctx}: no samples")
        durations.append(info.frames / info.samplerate)
    return durations


def enhance_in_batches(model, items, durations, read, write, label, args, segment: int, overlap: int,
                       quantum: int, device) -> int:
    """--batch-size / --length-quantum: files in length order through se.batching; returns the
    samples clipped in all."""
    loaded: dict[str, tuple] = {}  # label -> (name, path, where, input, its rate), until written

    def signals():
        for i in sorted(range(len(items)), key=durations.__getitem__):
            name, path, where = items[i]
            x, file_rate, xin = read(name, path, where)
            if xin is not None:
                loaded[label(path, where)] = (name, path, where, x, file_rate)
                yield label(path, where), xin

    log.info("batches of up to %d pieces, %s", args.batch_size,
             f"every piece zero-padded to a multiple of {args.length_quantum:g} s" if quantum else
             "pieces of any length (causal network: padding changes nothing)" if model.causal
             else "only pieces of equal length together (--length-quantum pads files so that more of them do)")
    clipped = 0
    try:
        for key, y in enhance_batched(model, signals(), args.batch_size, segment, overlap, quantum, device):
            clipped += write(*loaded.pop(key), y)
    except ValueError as exc:  # e.g. too short for one frame; names the files of the batch
        raise AudioError(str(exc)) from None
    except torch.cuda.OutOfMemoryError:
        raise cli.UserError(f"out of GPU memory with --batch-size {args.batch_size} (pieces up to "
                            f"--segment-length {args.segment_length:g} s); use a smaller --batch-size") from None
    return clipped


def _main(argv: list[str]) -> int:
    args = get_parser().parse_args(argv)
    cli.setup_logging()
    retain_freed_memory()  # large per-file tensors: reuse freed memory (se/allocator.py)
    # every option and input is checked before the model is loaded or anything is written
    if (args.checkpoint is None) == (args.model_dir is None):
        raise cli.UserError("give exactly one of --checkpoint and --model-dir")
    if not args.job <= args.num_jobs:
        raise cli.UserError(f"--job must be in 1..--num-jobs, got {args.job} of {args.num_jobs}")
    if args.segment_overlap >= args.segment_length:
        raise cli.UserError(f"--segment-overlap ({args.segment_overlap} s) must be shorter than --segment-length "
                            f"({args.segment_length} s)")
    items = list_inputs(args.input)[args.job - 1 :: args.num_jobs]
    out_dir = cli.check_output_dir(args.output_dir, "--output-dir", [name for name, _, _ in items],
                                   [p for _, p, _ in items])
    durations = check_inputs(items)
    device = cli.check_device("cpu" if args.backend == "onnxruntime" else args.device)
    model, info = load_for_enhance(args.checkpoint, args.model_dir, args.backend, args.network, device, args.threads)
    if model.inference_dither is not None:  # a network with an fbank front end
        model.inference_dither = args.fbank_dither
    rate = get_entry(info["network"]).sampling_rate
    log.info("%s from %s (%s format, %s backend), %s decode path, %d file(s)", info["network"], info["file"],
             info["format"], args.backend, "ClearVoice" if args.clearvoice_compat else
             "streaming (causal)" if model.causal else "default", len(items))
    batched = args.batch_size > 1 or args.length_quantum > 0
    if batched and args.clearvoice_compat:
        raise cli.UserError("--batch-size and --length-quantum apply to the default decode path; "
                            "--clearvoice-compat decodes file by file")
    segment, overlap = int(args.segment_length * rate), int(args.segment_overlap * rate)
    # Outputs go to a hidden folder beside them and are moved into place when all succeeded:
    # a failure (a bad file, a non-finite output) leaves the output dir exactly as it was.
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=".enhance-"))
    progress = Progress(len(items))
    total_clipped, audio_s, t0 = 0, 0.0, time.time()

    def label(path: str, where: str) -> str:
        return path if where == path else f"{path} ({where})"

    def read(name: str, path: str, where: str):
        """(input, its rate, input at the network's rate or None when silent: written here)."""
        nonlocal audio_s
        x, file_rate = read_audio(path, where="" if where == path else where, dtype="float64")
        audio_s += len(x) / file_rate
        if not np.any(x):
            log.warning("%s: digitally silent input; its output is silence", path)
            write_audio(stage / name, np.zeros(len(x)), file_rate, args.output_subtype)
            progress.update()
            return x, file_rate, None
        if file_rate != rate:
            log.info("%s: %d Hz input resampled to %d Hz for %s; output written at %d Hz", path,
                     file_rate, rate, info["network"], file_rate)
        return x, file_rate, resample(x, file_rate, rate)

    def write(name: str, path: str, where: str, x: np.ndarray, file_rate: int, y: np.ndarray) -> int:
        if not np.isfinite(y).all():
            raise AudioError(
                f"{label(path, where)}: the network's output is not finite "
                f"({int(np.count_nonzero(~np.isfinite(y)))} NaN/Inf samples); nothing was written. Is the "
                "checkpoint diverged? Check it on a known-good file"
            )
        y = resample(y, rate, file_rate)
        y = np.pad(y[: len(x)], (0, max(0, len(x) - len(y))))  # exactly the input's length
        clipped = write_audio(stage / name, y, file_rate, args.output_subtype)
        if clipped:
            log.warning("%s: %d samples exceeded full scale and were clipped in %s output "
                        "(use --output-subtype FLOAT to keep them)", out_dir / name, clipped, args.output_subtype)
        progress.update()
        return clipped

    try:
        if batched:
            total_clipped = enhance_in_batches(model, items, durations, read, write, label, args, segment,
                                               overlap, int(round(args.length_quantum * rate)), device)
        else:
            for name, path, where in items:
                x, file_rate, xin = read(name, path, where)
                if xin is None:
                    continue
                try:
                    if args.clearvoice_compat:
                        y = enhance_clearvoice(model, xin)
                    else:
                        y = enhance_signal(model, xin, segment, overlap, device)
                except ValueError as exc:  # e.g. too short for one frame
                    raise AudioError(f"{label(path, where)}: {exc}") from None
                total_clipped += write(name, path, where, x, file_rate, y)
        for name, _, _ in items:
            publish(stage / name, out_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    elapsed = time.time() - t0
    log.info("enhanced %d file(s), %.1f s of audio in %.1f s (RTF %.3f)%s", len(items), audio_s, elapsed,
             elapsed / max(audio_s, 1e-9), f"; {total_clipped} samples clipped in all" if total_clipped else "")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="se.bin.enhance")


if __name__ == "__main__":
    sys.exit(main())
