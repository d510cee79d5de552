#!/usr/bin/env bash
# Mini recipe: a tiny synthetic corpus made here (no download), trained and scored on CPU.
# Plays the role of ESPnet's mini_an4: the whole chain data -> training -> enhancement ->
# scoring in a few minutes, and the template for recipes on real corpora.
#   e.g.: ./run.sh                                   # everything, FRCRN_SE_16K at 16 kHz
#         ./run.sh --network MossFormer2_SE_48K      # the 48 kHz path
#         ./run.sh --stage 3 --stop-stage 3 --ngpu 1 # only training, on a GPU
#         ./run.sh --simulate true                   # train on degradations simulated on the fly
#         ./run.sh --stage 3 --conf conf/train_FRCRN_SE_16K_causal.yaml --compare FRCRN_SE_16K
#                                                    # causal FRCRN (streamed), beside the offline one
#         ./run.sh --stage 6 --licence apache-2.0    # package the model (models/<tag>) for a model hub
# Stages: 0 mini corpus, 1 data dirs (or source dirs, RIRs and fixed simulated sets), 2 validate
# them, 3 train, 4 enhance the test set, 5 score it into exp/<tag>/RESULTS.md, 6 package the model
# and enhance a test file from the package with both backends. Finished stages leave .done markers
# holding their inputs and are skipped when run again with the same inputs.
set -euo pipefail

# shellcheck disable=SC1091
. "$(dirname "$0")/../../path.sh"
. "$SE_ROOT/steps/lib/stages.sh"  # (and common.sh)

stage=0                # first stage to run
stop_stage=6           # last stage to run
network=FRCRN_SE_16K   # FRCRN_SE_16K, MossFormerGAN_SE_16K or MossFormer2_SE_48K (with --conf: its network)
fs=                    # corpus sample rate; empty = the network's rate (16000 or 48000)
ngpu=0                 # GPUs per node for training (0 = CPU)
num_nodes=1            # nodes for training (more than 1 needs cmd_backend=slurm)
nj=2                   # parallel jobs for enhancement and scoring
conf=                  # training config; default conf/train_<network>.yaml
tag=                   # experiment name; default the config's name without train_ (e.g. FRCRN_SE_16K)
compare=               # experiments (tags) scored on the same test set, shown beside this one in RESULTS.md
train_args=            # extra se.bin.train options (shell quoting), e.g. "--max-epoch 2 --batch-size 4"
metrics=all            # metrics of the scoring stage (se.bin.score --metrics), e.g. "pesq_wb,stoi,si_sdr"
simulate=false         # true: train on noise, RIRs and channel effects simulated on the fly (conf/train_sim_<network>.yaml)
num_rirs=20            # --simulate true: number of pyroomacoustics RIRs (local/simulate_rirs.py)
train_cmd=              # job runner of the training jobs; empty: cmd.sh's (cmd_backend=local|slurm)
decode_cmd=             # job runner of the enhancement jobs; empty: cmd.sh's
score_cmd=              # job runner of the scoring jobs; empty: cmd.sh's
package_dir=           # stage 6: model package folder; default models/<tag>
licence=               # stage 6: licence of the weights for the model card, e.g. apache-2.0

printf -v run_cmdline '%q ' "$0" "$@"
help_message="Usage: $0 [options]
e.g.: $0 --network FRCRN_SE_16K --stage 0 --stop-stage 5 --nj 2"
. "$SE_ROOT/steps/parse_options.sh"
job_runners
cd "$(dirname "$0")"

if [ -n "$conf" ]; then  # --conf names its network (and so the data rate)
  require "$conf"
  network=$(conf_network "$conf")
fi
if [ -z "$fs" ]; then
  fs=$(network_fs "$network")
fi
if $simulate; then
  [ -n "$conf" ] || conf=conf/train_sim_${network}.yaml
  mode=sim
  valid_set=valid_sim  # fixed sets made by se.bin.simulate (stage 1)
  test_set=test_sim
else
  [ -n "$conf" ] || conf=conf/train_${network}.yaml
  mode=paired
  valid_set=valid
  test_set=test
fi
[ -f "$conf" ] || stop "no $conf: mini configs are $(ls conf | sed -n 's/^train_\(.*\)\.yaml$/\1/p' | xargs)"
# the experiment is named after the config: train_X.yaml -> X, train_sim_X.yaml -> X_sim
[ -n "$tag" ] || tag=$(basename "$conf" .yaml | sed 's/^train_//; s/^sim_\(.*\)$/\1_sim/')
corpus=downloads/mini_${fs}
data=data/${fs}
exp=exp/${tag}
[ -n "$package_dir" ] || package_dir=models/${tag}

# the inputs of each stage (see stage_done in steps/lib/common.sh)
corpus_sig="fs=$fs"
if $simulate; then
  data_sig="$corpus_sig rirs=$num_rirs conf=$(cksum < "$conf")"  # the fixed sets follow the conf
else
  data_sig="$corpus_sig"
fi

if in_stages 0; then
  log "Stage 0: make the mini corpus at ${fs} Hz in ${corpus}"
  run_once "$corpus/.done" "$corpus_sig" "$corpus is complete, skipping" \
    python "$SE_ROOT/local/make_mini_corpus.py" --out-dir "$corpus" --fs "$fs"
fi

if in_stages 1; then
  log "Stage 1: data dirs in ${data} ($mode)"
  need_done "$corpus/.done" "$corpus_sig" "$corpus is missing; run stage 0 first"
  if stage_done "$data/.stage1.$mode.done" "$data_sig"; then
    log "the data dirs are made already, skipping ($data/.stage1.$mode.done)"
  elif ! $simulate; then
    rm -f "$data/.stage1.$mode.done"
    for set in train valid test; do
      python -m se.bin.make_data_dir --noisy-dir "$corpus/$set/noisy" --clean-dir "$corpus/$set/clean" \
        --out "$data/$set" --fs "$fs"
    done
    mark_done "$data/.stage1.$mode.done" "$data_sig"
  else
    rm -f "$data/.stage1.$mode.done"
    # source dirs: the corpus's clean speech and noise, per set; RIRs from pyroomacoustics
    for set in train valid test; do
      python -m se.bin.make_source_dir --audio-dir "$corpus/$set/clean" --out "$data/speech_$set" --fs "$fs"
      python -m se.bin.make_source_dir --audio-dir "$corpus/$set/noise" --out "$data/noise_$set" --fs "$fs"
    done
    # one set of simulated rooms for all sets (a real corpus holds RIRs out, see egs/dns_challenge)
    python "$SE_ROOT/local/simulate_rirs.py" --fs "$fs" --num "$num_rirs" --seed 0 --out-dir "$data/rir"
    # fixed validation and test sets: the training block's settings with held-out speech and noise
    seed=1
    for set in valid test; do
      python -m se.bin.simulate --config "$conf" --seed $seed --num 8 --out-dir "$data/${set}_sim" --overwrite \
        --speech "$data/speech_$set" --noise "$data/noise_$set" --prefix "mini_${set}_sim"
      seed=$((seed + 1))
    done
    mark_done "$data/.stage1.$mode.done" "$data_sig"
  fi
fi

if in_stages 2; then
  log "Stage 2: validate the data dirs"
  need_done "$data/.stage1.$mode.done" "$data_sig" "$data is not made; run stage 1 first"
  if $simulate; then dirs=("$data/$valid_set" "$data/$test_set"); else dirs=("$data"/{train,valid,test}); fi
  run_once "$data/.stage2.$mode.done" "$data_sig" \
    "the data dirs were validated already, skipping ($data/.stage2.$mode.done)" \
    python -m se.bin.validate_data_dir "${dirs[@]}" --fs "$fs"
fi

if in_stages 3; then
  log "Stage 3: train $network in $exp"
  need_done "$data/.stage1.$mode.done" "$data_sig" "$data is not made; run stage 1 first"
  if $simulate; then train_data=; else train_data=$data/train; fi  # simulate: the conf's simulation: block
  train_stage "$exp" "$conf" "$data_sig" "$train_args" "" --cmd "$train_cmd" --ngpu "$ngpu" --num-nodes "$num_nodes" \
    --train-data "$train_data" --valid-data "$data/$valid_set"
fi

if in_stages 4; then
  log "Stage 4: enhance $data/$test_set with the best checkpoint of $exp (causal models: streamed hop by hop)"
  need_model "$exp"
  enhance_set "$exp" "$data/$test_set" "$data_sig" --cmd "$decode_cmd" --nj "$nj"
fi

if in_stages 5; then
  log "Stage 5: score noisy and enhanced test audio; write $exp/RESULTS.md"
  score_set "$exp" "$data/$test_set" "$data/$test_set/spk1.scp" "$metrics" "$data_sig" \
    --cmd "$score_cmd" --nj "$nj" --fs "$fs"
  compare_opts=()
  for other in $compare; do
    compare_opts+=(--compare "$other=exp/$other/scores")
  done
  write_results "$exp" "$run_cmdline" "${compare_opts[@]}"
fi

if in_stages 6; then
  log "Stage 6: package $exp as $package_dir; enhance one test file from the package with both backends"
  require "$exp/last_best_checkpoint" "run stage 3 first"
  package_sig="$(checkpoint_sig "$exp") licence=$licence"
  if stage_done "$exp/.stage6.done" "$package_sig" && [ -f "$package_dir/package.json" ]; then
    log "$package_dir is up to date, skipping"
  else
    rm -f "$exp/.stage6.done"
    if [ -f "$package_dir/package.json" ]; then  # a package made by an earlier run: made again
      rm -r "$package_dir"
    fi
    licence_opt=()
    [ -n "$licence" ] && licence_opt=(--licence "$licence")
    python -m se.bin.package --exp-dir "$exp" --out-dir "$package_dir" "${licence_opt[@]}"
    read -r utt wav < "$data/$test_set/wav.scp"
    check=$exp/package_check
    rm -rf "$check"
    python -m se.bin.enhance --model-dir "$package_dir" --input "$wav" --output-dir "$check/torch" --output-subtype FLOAT
    if [ -d "$package_dir/onnx" ]; then  # (causal models are packaged without exports)
      python -m se.bin.enhance --backend onnxruntime --model-dir "$package_dir" --input "$wav" \
        --output-dir "$check/onnxruntime" --output-subtype FLOAT
      python -m se.bin.compare_audio "$check/torch/$utt.wav" "$check/onnxruntime/$utt.wav"
    fi
    mark_done "$exp/.stage6.done" "$package_sig"
  fi
fi

success
