#!/usr/bin/env python
"""CPU timings of FRCRN_SE_16K: one training step and enhancement of a 10 s file.

Cases (each runs in its own subprocess so that its peak RSS is its own):
  train      forward -> CMask + SI-SNR loss -> backward -> clip 10 -> Adam -> zero_grad,
             batch 4 x 1 s at the released size (TIMINGS.md: reference 9.75 s, 5.1 GB)
  decode     clearvoice_decode of a 10 s file (reference decode path; reference RTF 1.35)
  enhance    enhance() of the same file (our aligned path)
With --baseline every case also runs through `literal_forward`, a direct transcription of
the spec's reference layout ((..., 2) real/imag planes, four real convolutions per complex
convolution, per-plane FSMNs; it reproduces the parity references bit for bit in float32,
and tests/test_frcrn.py checks our gradients against it), so that the speed-up can be
measured on a busy machine where absolute numbers drift (enhance has no literal
counterpart).  Run time does not depend on the weight values (random init).  "ours" is the
network with its speed kernels (se/models/kernels/frcrn.py); SE_KERNELS=reference times the
plain reference forward of se/models/frcrn.py instead.

--tune-malloc runs the cases with glibc's malloc keeping freed memory (MALLOC_MMAP_MAX_=0,
MALLOC_TRIM_THRESHOLD_=64 GiB): large tensors then stop costing fresh page faults on every
step.  A process-level setting (for entry points, not model code); single-threaded it saved
3 % (train) and 20 % (10 s decode) here.

e.g.: PYTHONPATH=. tools/venv/bin/python tests/benchmarks/bench_frcrn.py --runs 3 --baseline
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

from se.models.frcrn import FRCRN
from se.models.kernels import accelerate
from se.train_step import adam_param_groups
from tests.benchmarks.common import case_record, time_runs


# ---------------------------------------------------------------------------------------------
# literal transcription of the reference layout (baseline only; same parameters as FRCRN)
# ---------------------------------------------------------------------------------------------
def _lit_conv(layer, x):  # ComplexConv2d / ComplexConvTranspose2d on (B, C, F, T, 2)
    re, im = (layer.conv_re, layer.conv_im) if hasattr(layer, "conv_re") else (layer.tconv_re, layer.tconv_im)
    x_r, x_i = x[..., 0], x[..., 1]
    return torch.stack([re(x_r) - im(x_i), re(x_i) + im(x_r)], -1)


def _lit_bn_act(block, y):  # two real BNs -> LeakyReLU on (B, C, F, T, 2)
    y = torch.stack([block.bn.bn_re(y[..., 0]), block.bn.bn_im(y[..., 1])], -1)
    return F.leaky_relu(y, 0.01)


def _lit_block(block, x):  # conv -> two real BNs -> LeakyReLU
    layer = block.conv if hasattr(block, "conv") else block.transconv
    return _lit_bn_act(block, _lit_conv(layer, x))


def _lit_fsmn(f, x):  # real FSMN on (N, S, d)
    p = f.project(F.relu(f.linear(x)))  # (N, S, d)
    per = p.unsqueeze(1).permute(0, 3, 2, 1)  # (N, d, S, 1)
    out = per + f.conv1(F.pad(per, [0, 0, f.conv1.kernel_size[0] - 1, 0]))
    return x + out.permute(0, 3, 2, 1).squeeze()


def _lit_cfsmn(re, im, x):  # complex FSMN on (N, S, d, 2)
    x_r, x_i = x[..., 0], x[..., 1]
    return torch.stack([_lit_fsmn(re, x_r) - _lit_fsmn(im, x_i),
                        _lit_fsmn(re, x_i) + _lit_fsmn(im, x_r)], -1)


def _lit_fsmn_l1(mod, x):  # (b, c, F, T, 2): memory along F
    b, c, f, t, _ = x.shape
    y = x.permute(0, 3, 2, 1, 4).reshape(b * t, f, c, 2)
    y = _lit_cfsmn(mod.fsmn_re_L1, mod.fsmn_im_L1, y)
    return y.reshape(b, t, f, c, 2).permute(0, 3, 2, 1, 4)


def _lit_fsmn_time(mod, x):  # (b, c, 1, T, 2): memory along T
    b, c, _, t, _ = x.shape
    y = x.reshape(b, c, t, 2).permute(0, 2, 1, 3)
    y = _lit_cfsmn(mod.fsmn_re_L1, mod.fsmn_im_L1, y)
    y = _lit_cfsmn(mod.fsmn_re_L2, mod.fsmn_im_L2, y)
    return y.permute(0, 2, 1, 3).reshape(b, c, 1, t, 2)


def _lit_se(mod, x):  # (B, C, F, T, 2)
    a_r, a_i = x[..., 0].mean((2, 3)), x[..., 1].mean((2, 3))
    s_r = mod.fc_r(a_r) - mod.fc_i(a_i)
    s_i = mod.fc_r(a_i) + mod.fc_i(a_r)
    return torch.stack([x[..., 0] * s_r[:, :, None, None], x[..., 1] * s_i[:, :, None, None]], -1)


def _lit_unet(u, x, encoder=_lit_block, decoder=_lit_block, se=_lit_se):
    """One complex U-Net; ``encoder`` / ``decoder`` (block, x) and ``se`` (layer, x) transcribe
    those layers (tests/test_stream.py passes causal ones)."""
    skips, h = [x], x
    for i in range(7):
        if i > 0:
            h = _lit_fsmn_l1(getattr(u, f"fsmn_enc{i}"), h)
        h = encoder(getattr(u, f"encoder{i}"), h)
        skips.append(se(getattr(u, f"se_layer_enc{i}"), h))
    p = _lit_fsmn_time(u.fsmn, h)
    for i in range(7):
        p = decoder(getattr(u, f"decoder{i}"), p)
        if i == 6:
            break
        p = _lit_fsmn_l1(getattr(u, f"fsmn_dec{i}"), p)
        if i < 5:
            p = se(getattr(u, f"se_layer_dec{i}"), p)
        p = torch.cat([p, skips[6 - i]], 1)
    return _lit_conv(u.linear, p)


def literal_forward(model: FRCRN, x: torch.Tensor):
    spec = F.conv1d(x.unsqueeze(1), model.stft.weight, stride=model.win_inc)  # (B, 2F, T)
    bins = spec.shape[1] // 2
    s = torch.stack([spec[:, :bins], spec[:, bins:]], 1).unsqueeze(-1).transpose(1, 4)  # (B,1,F,T,2)
    u1 = _lit_unet(model.unet, s)
    u2 = _lit_unet(model.unet2, u1)
    m = torch.tanh(u2) + torch.tanh(u1)
    e_r = s[..., 0] * m[..., 0] - s[..., 1] * m[..., 1]
    e_i = s[..., 0] * m[..., 1] + s[..., 1] * m[..., 0]
    est_spec = torch.cat([e_r, e_i], 2).squeeze(1)  # (B, 2F, T)
    ist = model.istft
    wav = F.conv_transpose1d(est_spec, ist.weight, stride=model.win_inc)
    frames = est_spec.shape[-1]
    coff = F.conv_transpose1d(ist.window.repeat(1, 1, frames) ** 2, ist.enframe, stride=model.win_inc)
    wav = (wav / (coff + 1e-8)).squeeze(1)
    return [est_spec, wav, torch.cat([m[..., 0], m[..., 1]], 2).squeeze(1)]


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------
def _pseudo_audio(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    speech = sum(np.sin(2 * np.pi * k * 140 * t) / k for k in range(1, 20)) * (1 + np.sin(2 * np.pi * 4 * t))
    return 0.1 * speech / np.std(speech) + 0.03 * rng.standard_normal(t.shape)


def run_case(case: str, runs: int, baseline: bool) -> dict:
    torch.manual_seed(777)
    model = FRCRN()
    if baseline:  # same module, reference-layout arithmetic
        model.forward = lambda x: literal_forward(model, x)
    else:  # the speed kernels, as build_network applies them (SE_KERNELS=reference: none)
        model = accelerate("FRCRN_SE_16K", model)
    if case == "train":
        model.train()
        opt = torch.optim.Adam(adam_param_groups(model, 1e-5), lr=1e-3)
        noisy = torch.from_numpy(np.stack([_pseudo_audio(1.0, s) for s in range(4)])).float()
        clean = 0.8 * noisy

        def step():
            loss, _ = model.loss(noisy, clean)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            opt.zero_grad()

        walls, cpus = time_runs(step, runs)
        seconds = None
    else:
        model.eval()
        raw = _pseudo_audio(10.0, 99)
        if case == "decode":
            fn = lambda: model.clearvoice_decode(raw)  # noqa: E731
        else:
            x = torch.from_numpy(raw).float()[None]
            fn = lambda: model.enhance(x)  # noqa: E731
        with torch.no_grad():
            walls, cpus = time_runs(fn, runs)
        seconds = 10.0
    return case_record(case, baseline, walls, cpus, seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="train,decode,enhance", help="comma list of train,decode,enhance")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per case after one warm-up")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--baseline", action="store_true", help="also time the literal reference layout")
    ap.add_argument("--tune-malloc", action="store_true", help="glibc malloc keeps freed memory")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    ap.add_argument("--literal", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_case(args.one, args.runs, args.literal)), flush=True)
        return
    cases = [c for c in args.cases.split(",") if c]
    bad = sorted(set(cases) - {"train", "decode", "enhance"})
    if bad:
        ap.error(f"unknown cases {bad}")
    env = dict(os.environ)
    if args.tune_malloc:
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(64 << 30))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.runs} runs after 1 warm-up"
          f"{', tuned malloc' if args.tune_malloc else ''}; reference (TIMINGS.md, idle machine):"
          " train 9.75 s / 5.1 GB, decode RTF 1.35 / 1.5 GB")
    for case in cases:
        for literal in ([False, True] if args.baseline and case != "enhance" else [False]):
            cmd = [sys.executable, __file__, "--one", case, "--runs", str(args.runs),
                   "--threads", str(args.threads)] + (["--literal"] if literal else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                sys.exit(f"case {case} failed")
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
