"""CPU benchmark of MossFormer2_SE_48K (released size): training step and enhancement RTF.

    PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_mossformer2.py [--threads 2] [--runs 5]
        [--baseline] [--cases train,enh10,enh60]

Cases (each in its own subprocess, so every case has its own peak RSS):
* train:  one training step as the reference implementation was timed: batch 4 x 4 s at
  48 kHz, forward on precomputed fbank (4, 496, 180) -> PSM loss (2 STFTs) -> backward ->
  clip 10 -> Adam -> zero_grad. Median of ``--runs`` after one warm-up.
* enh10 / enh60: the ClearVoice decode path (``clearvoice_decode``) of 10 s (one pass) and
  60 s (segmented: 4 s windows, 3 s stride) pseudo-speech + noise; RTF = median wall / duration.

``--baseline`` also times a straightforward implementation of the release's computation
(written from the spec: (B, C, S) Conv1d's with transposes, padded attention groups, separate
v / u einsums, both conv1d_out "speakers", rotary-embedding-torch) on the same weights and in
the same process, so the speed-up is measured under the same machine load; it also reports the
max |difference| of the outputs. Reference numbers (idle 2-core machine, TIMINGS.md):
train 12.17 s / 7.9 GB peak RSS; enhancement RTF 0.28 (10 s) / 0.9 GB.

On a machine whose cores are busy with other work, 2-thread OpenMP runs mostly wait for the
descheduled thread (wall times several times the 1-thread ones, for both implementations):
report the load average with the numbers and prefer ``--threads 1`` comparisons there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from se.models import build_network  # noqa: E402
from se.models.mossformer2 import MossFormer2SE  # noqa: E402

RATE = 48000
REF = {"train": 12.17, "enh10": 0.28}


def pseudo_speech(seconds: float, seed: int = 99) -> np.ndarray:
    """Harmonic pseudo-speech with a syllable envelope plus coloured noise (10 dB SNR)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = 140 * (1 + 0.15 * np.sin(2 * np.pi * 1.7 * t) + 0.05 * np.sin(2 * np.pi * 4.3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    speech = sum(np.sin(k * phase) / k for k in range(1, 30)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    speech *= 0.1 / np.sqrt(np.mean(speech**2))
    noise = rng.standard_normal(n)
    noise = np.convolve(noise, [1.0, 0.7], mode="same")
    noise *= np.sqrt(np.mean(speech**2) / np.mean(noise**2) / 10.0)
    return speech + noise


# ------------------------------------------------------------------------------------------
# baseline: the release's computation, op for op as the spec describes it (same parameters)
# ------------------------------------------------------------------------------------------
def _ref_ffconvm(m, x, training):
    norm, linear, _, conv, _ = m.mdl
    if hasattr(norm, "g"):
        n = torch.norm(x, dim=-1, keepdim=True) * norm.scale
        h = x / n.clamp(min=norm.eps) * norm.g
    else:
        h = norm(x)
    h = F.silu(linear(h))
    c = conv.sequential[1].conv
    h = h + c(h.transpose(1, 2)).transpose(1, 2)
    return F.dropout(h, 0.1, training)


def _ref_flash(layer, x, rotary, training):
    g = layer.group_size
    x_shift, x_pass = x.chunk(2, dim=-1)
    x_shift = F.pad(x_shift, (0, 0, 1, -1), value=0.0)
    normed = torch.cat((x_shift, x_pass), dim=-1)
    v, u = _ref_ffconvm(layer.to_hidden, normed, training).chunk(2, dim=-1)
    qk = _ref_ffconvm(layer.to_qk, normed, training)
    os_ = layer.qk_offset_scale
    quad_q, lin_q, quad_k, lin_k = (torch.einsum("...d,hd->...hd", qk, os_.gamma) + os_.beta).unbind(-2)
    quad_q, lin_q, quad_k, lin_k = map(rotary.rotate_queries_or_keys, (quad_q, lin_q, quad_k, lin_k))
    b, n = x.shape[0], x.shape[-2]
    padding = (-n) % g
    mask = torch.ones((b, n), dtype=torch.bool)
    if padding:
        quad_q, quad_k, lin_q, lin_k, v, u = (F.pad(t, (0, 0, 0, padding)) for t in (quad_q, quad_k, lin_q, lin_k, v, u))
        mask = F.pad(mask, (0, padding), value=False)
    quad_q, quad_k, lin_q, lin_k, v, u = (t.reshape(b, -1, g, t.shape[-1]) for t in (quad_q, quad_k, lin_q, lin_k, v, u))
    mask = mask.reshape(b, -1, 1, g)
    sim = torch.einsum("...id,...jd->...ij", quad_q, quad_k) / g
    attn = F.dropout(F.relu(sim) ** 2, 0.1, training).masked_fill(~mask, 0.0)
    quad_out_v = torch.einsum("...ij,...jd->...id", attn, v)
    quad_out_u = torch.einsum("...ij,...jd->...id", attn, u)
    lin_kv = torch.einsum("bgnd,bgne->bde", lin_k, v) / n
    lin_out_v = torch.einsum("bgnd,bde->bgne", lin_q, lin_kv)
    lin_ku = torch.einsum("bgnd,bgne->bde", lin_k, u) / n
    lin_out_u = torch.einsum("bgnd,bde->bgne", lin_q, lin_ku)
    att_v, att_u = ((a + l).reshape(b, -1, a.shape[-1])[:, :n] for a, l in ((quad_out_v, lin_out_v), (quad_out_u, lin_out_u)))
    v, u = (t.reshape(b, -1, t.shape[-1])[:, :n] for t in (v, u))
    out = (att_u * v) * torch.sigmoid(att_v * u)
    return x + _ref_ffconvm(layer.to_out, out, training)


def _ref_cln(ln, x):  # LayerNorm over the channel axis of (B, C, S)
    return ln(x.transpose(1, 2)).transpose(1, 2)


def _ref_fsmn_block(blk, x, training):
    c = blk.conv1(x.transpose(2, 1))
    n1 = _ref_cln(blk.norm1, c).transpose(2, 1)
    gf = blk.gated_fsmn
    xu = _ref_ffconvm(gf.to_u, n1, training)
    xv = _ref_ffconvm(gf.to_v, n1, training)
    fs = gf.fsmn
    p1 = fs.project(F.relu(fs.linear(xu)))
    xp = p1.unsqueeze(1).permute(0, 3, 2, 1)
    y = F.pad(xp, [0, 0, fs.lorder - 1, fs.lorder - 1])
    out = (xp + fs.conv1(y)).permute(0, 3, 2, 1).squeeze(1)
    seq = xv * (xu + out) + n1
    n2 = _ref_cln(blk.norm2, seq.transpose(2, 1))
    return blk.conv2(n2).transpose(2, 1) + x


def reference_forward(model: MossFormer2SE, features: torch.Tensor, rotary) -> torch.Tensor:
    """(B, S, 180) -> mask (B, S, 961), computed the way the release computes it."""
    mn = model.mossformer
    training = model.training
    x = mn.norm(features.transpose(1, 2))
    x = mn.conv1d_encoder(x)
    emb = mn.pos_enc(x.shape[-1])
    x = x + emb.transpose(0, 1)
    h = x.permute(0, 2, 1).contiguous()
    blocks = mn.mdl.intra_mdl.mossformerM
    for flash, fsmn in zip(blocks.layers, blocks.fsmn):
        h = _ref_fsmn_block(fsmn, _ref_flash(flash, h, rotary, training), training)
    h = mn.mdl.intra_mdl.norm(h).permute(0, 2, 1).contiguous()
    x = mn.mdl.intra_norm(h) + x
    x = mn.conv1d_out(mn.prelu(x))
    B, _, S = x.shape
    x = x.view(B * 2, -1, S)
    x = mn.output(x) * mn.output_gate(x)
    x = mn.conv1_decoder(x)
    x = F.relu(x.view(B, 2, -1, S))
    return x[:, 0].transpose(1, 2)


def reference_rotary():
    from rotary_embedding_torch import RotaryEmbedding

    return RotaryEmbedding(dim=32)


# ------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------
def build_model(seed: int = 777) -> MossFormer2SE:
    """The released-size network as training / enhancement build it (with its speed kernels,
    unless SE_KERNELS=reference)."""
    torch.manual_seed(seed)
    return build_network("MossFormer2_SE_48K")


def case_train(args) -> dict:
    model = build_model()
    model.train()
    noisy = torch.from_numpy(np.stack([pseudo_speech(4.0, s) for s in range(4)])).float()
    noisy = noisy / noisy.abs().amax(1, keepdim=True) * 0.3
    clean = noisy * 0.8
    feats = model.input_features(noisy, generator=torch.Generator().manual_seed(0))  # (4, 496, 180)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    rotary = reference_rotary()
    out = {}

    def step(forward):
        if forward is None:
            loss, _ = model.loss(noisy, clean, features=feats)
        else:  # baseline: same loss on the baseline's mask
            spec_y, spec_s = model.stft(noisy * 32768), model.stft(clean * 32768)
            target, weight = (t.transpose(1, 2) for t in model.psm_target(spec_y, spec_s))
            mask = forward(model, feats, rotary)
            loss = 0.5 * ((mask - target) ** 2 * weight).sum() / (target.shape[0] * target.shape[1])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    impls = [("ours", None)] + ([("baseline", reference_forward)] if args.baseline else [])
    for name, fwd in impls:
        step(fwd)  # warm-up
    times = {name: [] for name, _ in impls}
    for _ in range(args.runs):  # interleaved: both see the same machine load
        for name, fwd in impls:
            t = time.perf_counter()
            step(fwd)
            times[name].append(time.perf_counter() - t)
    for name, _ in impls:
        out[f"train_{name}_s"] = statistics.median(times[name])
        out[f"train_{name}_runs"] = [round(t, 3) for t in times[name]]
    if args.baseline:  # same outputs (eval, same weights)
        model.eval()
        with torch.no_grad():
            a = model(feats[:1, :250])[0]
            b = reference_forward(model, feats[:1, :250], rotary)
        out["train_max_abs_diff_eval_mask"] = float((a - b).abs().max())
    return out


def baseline_decode(model, raw, rotary):
    """The release's one-pass decode, with the baseline network (for timing comparison)."""
    from se.audio import audio_norm

    x, scalar = audio_norm(raw)
    a = torch.from_numpy(x.astype(np.float32) * np.float32(32768))
    feats = model.features(a[None], dither=0.0)
    mask = reference_forward(model, feats, rotary)
    spec = model.stft(a[None]) * mask.transpose(1, 2)
    return (model.istft(spec, a.shape[-1])[0].numpy() / 32768)[: len(raw)] * scalar


def case_enh(args, seconds: float) -> dict:
    model = build_model(0).eval()
    raw = pseudo_speech(seconds, 7)
    out = {}
    impls = [("ours", lambda: model.clearvoice_decode(raw))]
    if args.baseline and seconds <= 20:
        rotary = reference_rotary()
        impls.append(("baseline", lambda: baseline_decode(model, raw, rotary)))
    results = {}
    with torch.no_grad():
        for name, f in impls:
            results[name] = f()  # warm-up
        times = {name: [] for name, _ in impls}
        for _ in range(args.runs):
            for name, f in impls:
                t = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t)
    key = f"enh{int(seconds)}"
    for name, _ in impls:
        out[f"{key}_{name}_rtf"] = statistics.median(times[name]) / seconds
        out[f"{key}_{name}_runs"] = [round(t, 3) for t in times[name]]
    if "baseline" in results:
        out[f"{key}_max_abs_diff"] = float(np.abs(results["ours"] - results["baseline"]).max())
    return out


def run_case(args) -> None:
    torch.set_num_threads(args.threads)
    if args.case == "train":
        out = case_train(args)
    else:
        out = case_enh(args, float(args.case[3:]))
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    out["load_avg"] = os.getloadavg()
    print(json.dumps(out))


def _run(case: str, args, baseline: bool) -> dict | None:
    cmd = [sys.executable, __file__, "--case", case, "--threads", str(args.threads), "--runs", str(args.runs)]
    if baseline:
        cmd.append("--baseline")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        print(f"{case}: FAILED\n{res.stderr[-3000:]}")
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--baseline", action="store_true",
                   help="also time the release-style computation (extra subprocess per case, interleaved runs)")
    p.add_argument("--cases", default="train,enh10,enh60")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = p.parse_args()
    if args.case:
        run_case(args)
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.runs} runs per case, "
          f"load average at start {os.getloadavg()[0]:.1f} (the machine may be shared: compare with --baseline)")
    rss = {}
    for case in args.cases.split(","):
        r = _run(case, args, baseline=False)  # ours alone: time and peak RSS
        if r is None:
            continue
        rss[case] = r["peak_rss_gb"]
        if case == "train":
            line = f"train step (4 x 4 s, released size): median {r['train_ours_s']:.2f} s (reference: 12.17 s, 7.9 GB)"
        else:
            line = f"enhance {case[3:]} s (clearvoice_decode): RTF {r[f'{case}_ours_rtf']:.3f} (reference 10 s: 0.28, 0.9 GB)"
        print(f"{line}; peak RSS {r['peak_rss_gb']:.2f} GB; load {r['load_avg'][0]:.1f}")
        print("    runs (s):", r[f"{case}_ours_runs" if case != "train" else "train_ours_runs"])
        if args.baseline and case != "enh60":
            b = _run(case, args, baseline=True)
            if b is None:
                continue
            if case == "train":
                ours, base, diff = b["train_ours_s"], b["train_baseline_s"], b["train_max_abs_diff_eval_mask"]
            else:
                ours, base, diff = b[f"{case}_ours_rtf"], b[f"{case}_baseline_rtf"], b[f"{case}_max_abs_diff"]
            print(f"    same process, interleaved: ours {ours:.3f} vs release-style baseline {base:.3f} -> "
                  f"x{base / ours:.2f} faster; outputs max|diff| {diff:.2e}; load {b['load_avg'][0]:.1f}")
    if "enh10" in rss and "enh60" in rss:
        print(f"peak RSS 60 s / 10 s enhancement: {rss['enh60'] / rss['enh10']:.2f} (bound: 1.5)")


if __name__ == "__main__":
    main()
