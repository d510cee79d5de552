"""egs/own_data end to end on two folders (speech and noise, at rates other than the network's).

Speech: 5 speakers in their own folders at 44.1 kHz (split by speaker with --utt2spk_regex);
noise: a flat folder at 22.05 kHz; no RIR folder, so stage 1 simulates rooms. A tiny
FRCRN_SE_16K (the DNS recipe test's settings) trains a few steps on the fly.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import soundfile as sf

from helpers import TINY_FRCRN_ARGS, tone_pair
from se.data import DataDir, SourceDir
from helpers import copy_recipe


def test_own_data_recipe_end_to_end(tmp_path):
    speech, noise = tmp_path / "my speech", tmp_path / "my_noise"
    for s, spk in enumerate(["alice", "bob", "chen", "dana", "eve"]):
        (speech / spk).mkdir(parents=True)
        for i in range(2):
            sf.write(speech / spk / f"take{i}.flac", tone_pair(1.0, 44100, 10 * s + i)[1], 44100)
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        sf.write(noise / f"n{i}.wav", 0.05 * rng.standard_normal(33075), 22050)
    recipe = copy_recipe(tmp_path, "own_data")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    args = ["--speech_dir", str(speech), "--noise_dir", str(noise), "--utt2spk_regex", "^([^/]+)/",
            "--valid_fraction", "0.2", "--test_fraction", "0.2", "--num_rirs", "6", "--num_valid", "2",
            "--num_test", "3", "--sim_length", "1", "--nj", "1", "--metrics", "si_sdr,lsd",
            "--train_args", TINY_FRCRN_ARGS]  # fmt: skip
    res = subprocess.run(["bash", str(recipe / "run.sh"), *args], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "Successfully finished" in res.stdout
    data = recipe / "data"
    speakers = {s: set(SourceDir(data / f"speech_{s}").utt2spk.values()) for s in ("train", "valid", "test")}
    assert [len(speakers[s]) for s in ("train", "valid", "test")] == [3, 1, 1]
    assert len(set().union(*speakers.values())) == 5
    src = SourceDir(data / "speech_train")
    assert src.sampling_rate == 16000 and all(sf.info(p).samplerate == 16000 for p in src.paths)
    assert all(p.startswith(str(recipe / "dump")) for p in src.paths)  # resampled once, into the dump
    assert [len(SourceDir(data / f"rir_{s}")) for s in ("train", "valid", "test")] == [4, 1, 1]
    test = DataDir(data / "test_sim")
    assert len(test) == 3 and test.sampling_rate == 16000
    results = (recipe / "exp/FRCRN_SE_16K/RESULTS.md").read_text()
    assert "| noisy (input) | 3 |" in results and "| enhanced | 3 |" in results and "lsd" in results

    # fine-tuning: --init with a ClearVoice release-format file ({'model': state} with 'module.' keys)
    import torch

    from se.checkpoint import read_pointer, torch_load

    best = torch_load(read_pointer(recipe / "exp/FRCRN_SE_16K", "last_best_checkpoint"))
    release = tmp_path / "FRCRN_SE_16K_release.pt"
    torch.save({"model": {f"module.{k}": v for k, v in best["model"].items()}}, release)
    res = subprocess.run(["bash", str(recipe / "run.sh"), *args, "--stage", "3", "--stop_stage", "3", "--init",
                          str(release), "--tag", "ft"], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    train_log = (recipe / "exp/ft/log/train.log").read_text()
    assert f"init from {release}" in train_log and "loaded 100.0% of the trainable parameters" in train_log
