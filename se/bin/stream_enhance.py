"""Real-time enhancement with a causal FRCRN, one 20 ms hop at a time (se.stream).

    python -m se.bin.stream_enhance --checkpoint exp/FRCRN_SE_16K_causal --input noisy.wav --output out.wav
    arecord -f S16_LE -r 16000 -c 1 -t raw | python -m se.bin.stream_enhance \
        --checkpoint exp/FRCRN_SE_16K_causal --input - --output - | aplay -f S16_LE -r 16000 -c 1 -t raw

--input -: raw 16-bit little-endian mono PCM at the network's rate on stdin, written to
stdout as it is enhanced (``--output -``), output sample n after input sample n + latency - 1.
A file input is fed to the streamer in --chunk-ms chunks and its output has the input's
length; other rates are resampled on the way in and out, as in se.bin.enhance.
Level: files are scaled by their whole-file normalisation gain (as se.bin.enhance) unless
--gain-db is given; a stream cannot look ahead, so stdin takes --gain-db (default 0 dB).
At the end, per-hop compute time (mean, 99th percentile, worst) and the real-time factor are
logged; a hop that takes longer than real time (one hop of audio) is warned about.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from se import cli
from se.audio import AudioError, norm_gain, read_audio, write_audio
from se.bin.enhance import check_inputs
from se.checkpoint import CheckpointError, load_network
from se.models import network_names
from se.resample import resample
from se.stream import StreamingEnhancer, hop_statistics

log = logging.getLogger("se.stream_enhance")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m se.bin.stream_enhance", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint file or experiment dir of a causal FRCRN")
    p.add_argument("--network", choices=network_names(), help="network (only for ClearVoice-format files)")
    p.add_argument("--input", required=True, help="audio file, or - for raw 16-bit PCM on stdin")
    p.add_argument("--output", required=True, help="output file (.wav), or - for raw 16-bit PCM on stdout")
    p.add_argument("--rate", type=cli.positive_int, default=None, help="sample rate of raw PCM (must be the network's)")
    p.add_argument("--gain-db", type=float, default=None,
                   help="input gain in dB (output gets the inverse); default: whole-file normalisation "
                        "for files, 0 for stdin")
    p.add_argument("--chunk-ms", type=cli.positive_float, default=20.0, help="read size in ms (any size works)")
    p.add_argument("--threads", type=cli.positive_int, default=1, help="torch CPU threads (real time: 1)")
    p.add_argument("--output-subtype", choices=["PCM_16", "FLOAT"], default="PCM_16", help="file output only")
    return p


class HopMonitor:
    """Warns when a hop's compute time exceeds its audio duration (first one, then every 100th)."""

    def __init__(self, enhancer: StreamingEnhancer):
        self.enhancer, self.seen, self.late = enhancer, 0, 0
        self.hop_s = enhancer.hop / enhancer.model.sampling_rate

    def check(self) -> None:
        times = self.enhancer.hop_seconds
        for i in range(self.seen, len(times)):
            if times[i] > self.hop_s:
                self.late += 1
                if self.late == 1 or self.late % 100 == 0:
                    log.warning("hop %d took %.1f ms, longer than real time (%.0f ms of audio); %d late hop(s) so far",
                                i, 1000 * times[i], 1000 * self.hop_s, self.late)
        self.seen = len(times)

    def report(self) -> dict:
        stats = hop_statistics(self.enhancer.hop_seconds, self.hop_s)
        if stats["hops"]:
            log.info("%d hops of %.0f ms: compute per hop mean %.2f ms, p99 %.2f ms, worst %.2f ms; RTF %.3f; "
                     "%d hop(s) slower than real time", stats["hops"], 1000 * self.hop_s, stats["mean_ms"],
                     stats["p99_ms"], stats["worst_ms"], stats["rtf"], stats["late_hops"])
        return stats


def stream_stdin(enhancer: StreamingEnhancer, monitor: HopMonitor, chunk: int, gain: float) -> int:
    """Raw int16 PCM stdin -> stdout; returns the number of clipped output samples."""
    src, dst = sys.stdin.buffer, sys.stdout.buffer
    pending, clipped = b"", 0

    def write(y: np.ndarray) -> None:
        nonlocal clipped
        if not np.all(np.isfinite(y)):
            raise AudioError("the network's output is not finite (NaN/Inf); nothing more is written")
        y = y.astype(np.float64) / gain * 32768.0
        clipped += int(np.count_nonzero((y > 32767) | (y < -32768)))
        dst.write(np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes())
        dst.flush()

    while True:
        data = src.read(2 * chunk)
        if not data:
            break
        data = pending + data
        usable = len(data) // 2 * 2
        pending = data[usable:]
        x = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        write(enhancer.process(x * gain))
        monitor.check()
    if pending:
        log.warning("stdin ended with an odd byte (not 16-bit PCM?); it was dropped")
    write(enhancer.flush())
    return clipped


def stream_file(enhancer: StreamingEnhancer, monitor: HopMonitor, path: str, out: str, chunk: int,
                gain_db: float | None, subtype: str) -> int:
    check_inputs([(Path(path).name, path, path)])
    x, file_rate = read_audio(path)
    rate = enhancer.model.sampling_rate
    if file_rate != rate:
        log.info("%s: %d Hz input resampled to %d Hz; output written at %d Hz", path, file_rate, rate, file_rate)
    xin = resample(np.asarray(x, np.float64), file_rate, rate)
    gain = norm_gain(xin) if gain_db is None else 10.0 ** (gain_db / 20.0)
    if not np.isfinite(gain) or gain <= 0:
        raise AudioError(f"{path}: signal is silent or not finite (give --gain-db)")
    xin = (xin * gain).astype(np.float32)
    parts = []
    for start in range(0, len(xin), chunk):
        parts.append(enhancer.process(xin[start : start + chunk]))
        monitor.check()
    parts.append(enhancer.flush())
    y = resample(np.concatenate(parts).astype(np.float64) / gain, rate, file_rate)
    y = np.pad(y[: len(x)], (0, max(0, len(x) - len(y))))
    return write_audio(out, y, file_rate, subtype)


def _main(argv: list[str]) -> int:
    args = get_parser().parse_args(argv)
    cli.setup_logging()
    if (args.input == "-") != (args.output == "-"):
        raise cli.UserError("--input - (raw PCM on stdin) goes with --output - (raw PCM on stdout), files with files")
    if args.output != "-":
        cli.check_output_file(args.output, "--output", [args.input])
    torch.set_num_threads(args.threads)
    model, info = load_network(args.checkpoint, args.network, "cpu")
    try:
        enhancer = StreamingEnhancer(model)
    except ValueError as exc:
        raise CheckpointError(f"{info['file']}: {exc}") from None
    rate = model.sampling_rate
    if args.input == "-" and args.rate is not None and args.rate != rate:
        raise cli.UserError(f"--rate {args.rate}: raw PCM must be at the network's {rate} Hz "
                            f"(resample first, e.g. sox -t raw ... -r {rate} ...)")
    try:
        log.info("%s from %s: hop %d samples (%.0f ms), algorithmic latency %d samples (%.1f ms), %d thread(s)",
                 info["network"], info["file"], enhancer.hop, 1000 * enhancer.hop / rate, enhancer.latency,
                 enhancer.latency_ms, args.threads)
        monitor = HopMonitor(enhancer)
        chunk = max(1, int(round(args.chunk_ms * rate / 1000)))
        if args.input == "-":
            gain = 10.0 ** ((args.gain_db or 0.0) / 20.0)
            clipped = stream_stdin(enhancer, monitor, chunk, gain)
        else:
            clipped = stream_file(enhancer, monitor, args.input, args.output, chunk, args.gain_db,
                                  args.output_subtype)
        if clipped:
            log.warning("%d output samples exceeded 16-bit full scale and were clipped", clipped)
        monitor.report()
    except BrokenPipeError:  # the reader of stdout went away
        raise cli.UserError("output pipe closed by the reader; stopping") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv, prog="se.bin.stream_enhance")


if __name__ == "__main__":
    sys.exit(main())
