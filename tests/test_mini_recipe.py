"""egs/mini end to end (tiny model, few steps): every stage runs and RESULTS.md has both rows, on paired data;
the causal conf (stages 3-5) beside it; and with --simulate true (training data simulated on the fly)."""

import os
import shutil
import subprocess
from pathlib import Path

from helpers import copy_recipe

REPO = Path(__file__).resolve().parents[1]


def test_mini_recipe_all_stages(tmp_path):
    recipe = copy_recipe(tmp_path, "mini")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    # job runners given on the command line (--decode-cmd, --score-cmd) run the jobs of stages 4 and 5
    calls = tmp_path / "runner_calls.txt"
    runner = tmp_path / "my_runner.sh"
    runner.write_text(f'#!/bin/bash\necho "$*" >> {calls}\nexec {REPO}/steps/run.sh "$@"\n')
    runner.chmod(0o755)
    cmd = ["bash", str(recipe / "run.sh"), "--nj", "1", "--metrics", "pesq_wb,stoi,si_sdr",
           "--decode-cmd", f"{runner} --mem 2G", "--score-cmd", str(runner),
           "--train-args", "--max-steps 3 --batch-size 4 --num-workers 0 --valid-utterances-to-log 0 "
           "--network-kwargs '{channels: 4, fsmn_hidden: 4, se_reduction: 2, lorder: 3}'"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Successfully finished" in out.stdout
    results = (recipe / "exp/FRCRN_SE_16K/RESULTS.md").read_text()
    assert "| noisy (input) | 8 |" in results and "| enhanced | 8 |" in results
    assert len(list((recipe / "exp/FRCRN_SE_16K/enhanced/test").glob("*.wav"))) == 8
    jobs = calls.read_text().splitlines()
    assert len(jobs) == 3, jobs
    assert jobs[0].startswith("--mem 2G JOB=1:1 ") and "se.bin.enhance" in jobs[0]
    assert all(j.startswith("JOB=1:1 ") and "se.bin.score" in j for j in jobs[1:])
    # stage 6: a model package (weights, exports, card) that enhances through both backends alike
    package = recipe / "models/FRCRN_SE_16K"
    assert {"package.json", "model.pt", "README.md", "onnx", "torchscript"} <= {p.name for p in package.iterdir()}
    assert "se.bin.compare_audio: same: max difference" in out.stdout
    # the same command again: every stage's .done marker holds the same inputs, nothing runs
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for skipped in ("is complete, skipping", "data dirs are made already", "validated already",
                    "trained already with these settings", "enhanced/test is up to date",
                    "scores/test/noisy is up to date", "scores/test/enhanced is up to date",
                    "models/FRCRN_SE_16K is up to date"):
        assert skipped in again.stdout, skipped
    assert len(calls.read_text().splitlines()) == 3
    # other metrics: only the scoring stage runs again (noisy and enhanced), through --score-cmd
    rescore = subprocess.run([*cmd, "--metrics", "si_sdr"], env=env, capture_output=True, text=True, timeout=600)
    assert rescore.returncode == 0, rescore.stdout[-3000:] + rescore.stderr[-3000:]
    assert "trained already" in rescore.stdout and "enhanced/test is up to date" in rescore.stdout
    jobs = calls.read_text().splitlines()
    assert len(jobs) == 5 and all("se.bin.score" in j and "--metrics si_sdr" in j for j in jobs[3:]), jobs
    # the causal conf on the same data: trains, enhances hop by hop (se.stream), scores, and its
    # RESULTS.md shows the offline FRCRN beside it on the same test set
    cmd = ["bash", str(recipe / "run.sh"), "--stage", "3", "--nj", "1", "--metrics", "si_sdr",
           "--conf", "conf/train_FRCRN_SE_16K_causal.yaml", "--compare", "FRCRN_SE_16K",
           "--train-args", "--max-steps 3 --batch-size 4 --num-workers 0 --valid-utterances-to-log 0 "
           "--network-kwargs '{channels: 4, fsmn_hidden: 4, se_reduction: 2, lorder: 3, causal: true}'"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    causal = recipe / "exp/FRCRN_SE_16K_causal"
    assert "causal': True" in (causal / "config.yaml").read_text() or "causal: true" in (causal / "config.yaml").read_text()
    assert "streaming (causal) decode path" in (causal / "enhanced/test/log/enhance.1.log").read_text()
    results = (causal / "RESULTS.md").read_text()
    assert "| noisy (input) | 8 |" in results and "| enhanced | 8 |" in results
    assert "| enhanced: FRCRN_SE_16K | 8 |" in results
    assert results.count(" n/a ") == 0  # si_sdr is in both experiments' scores
    # --simulate true on the same corpus: source dirs, pyroomacoustics RIRs, fixed sets from
    # se.bin.simulate, training on the fly (tiny FRCRN, 3 updates), enhancement and scoring
    cmd = ["bash", str(recipe / "run.sh"), "--simulate", "true", "--stage", "1", "--num-rirs", "4", "--nj", "1",
           "--metrics", "si_sdr", "--train-args", "--max-steps 3 --batch-size 4 --num-workers 1 "
           "--valid_utterances_to_log 0 --network_kwargs '{channels: 4, fsmn_hidden: 4, se_reduction: 2, lorder: 3}'"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Successfully finished" in out.stdout
    data = recipe / "data/16000"
    for name in ("speech_train", "noise_train", "speech_test", "rir", "valid_sim", "test_sim"):
        assert (data / name / "wav.scp").is_file(), name
    assert len((data / "rir/wav.scp").read_text().splitlines()) == 4
    rows = (data / "test_sim/simulation.tsv").read_text().splitlines()
    assert len(rows) == 9 and "measured_snr_db" in rows[0] and "mini_test_" in rows[1]
    exp = recipe / "exp/FRCRN_SE_16K_sim"
    conf = (exp / "config.yaml").read_text()
    assert "simulation:" in conf and "speech_train" in conf
    assert "training items simulated on the fly" in (exp / "log/train.log").read_text()
    results = (exp / "RESULTS.md").read_text()
    assert "| noisy (input) | 8 |" in results and "| enhanced | 8 |" in results
    assert len(list((exp / "enhanced/test_sim").glob("*.wav"))) == 8

    # a later stage without its inputs says which stage to run
    shutil.rmtree(recipe / "exp")
    out = subprocess.run(["bash", str(recipe / "run.sh"), "--stage", "4"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "run stage 3 first" in out.stdout + out.stderr

