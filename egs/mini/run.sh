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
set -euo pipefail

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
train_args=            # extra training options (shell quoting), e.g. "--max_epoch 2 --batch_size 4"
metrics=all            # metrics of the scoring stage (se.bin.score --metrics), e.g. "pesq_wb,stoi,si_sdr"
simulate=false         # true: train on noise, RIRs and channel effects simulated on the fly (conf/train_sim_<network>.yaml)
num_rirs=20            # --simulate true: number of pyroomacoustics RIRs (local/simulate_rirs.py)
package_dir=           # stage 6: model package folder; default models/<tag>
licence=               # stage 6: licence of the weights for the model card, e.g. apache-2.0

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../path.sh"
. "$SE_ROOT/steps/lib/recipe.sh"
. "$here/../../cmd.sh"
. "$SE_ROOT/steps/parse_options.sh"
cd "$here"

if [ -n "$conf" ]; then  # --conf names its network (and so the data rate)
  [ -f "$conf" ] || { log "no $conf"; exit 1; }
  network=$(python -c 'import sys; from se.config import load; print(load(sys.argv[1])["network"])' "$conf")
fi
if [ -z "$fs" ]; then
  fs=$(python -c "from se.models import network_sampling_rate as r; print(r('$network'))")
fi
case $simulate in true|false) ;; *) log "--simulate takes true or false, not '$simulate'"; exit 1 ;; esac
if $simulate; then
  [ -n "$conf" ] || conf=conf/train_sim_${network}.yaml
  valid_set=valid_sim  # fixed sets made by se.bin.simulate (stage 1)
  test_set=test_sim
else
  [ -n "$conf" ] || conf=conf/train_${network}.yaml
  valid_set=valid
  test_set=test
fi
[ -f "$conf" ] || { log "no $conf: mini configs are $(ls conf | sed -n 's/^train_\(.*\)\.yaml$/\1/p' | xargs)"; exit 1; }
# the experiment is named after the config: train_X.yaml -> X, train_sim_X.yaml -> X_sim
[ -n "$tag" ] || tag=$(basename "$conf" .yaml | sed 's/^train_//; s/^sim_\(.*\)$/\1_sim/')
corpus=downloads/mini_${fs}
data=data/${fs}
exp=exp/${tag}
[ -n "$package_dir" ] || package_dir=models/${tag}

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: make the mini corpus at ${fs} Hz in ${corpus}"
  if [ -f "$corpus/.done" ]; then
    log "$corpus is complete, skipping"
  else
    python "$SE_ROOT/local/make_mini_corpus.py" --out-dir "$corpus" --fs "$fs"
    touch "$corpus/.done"
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  log "Stage 1: data dirs in ${data}"
  [ -f "$corpus/.done" ] || { log "$corpus is missing; run stage 0 first"; exit 1; }
  if ! $simulate; then
    for set in train valid test; do
      python -m se.bin.make_data_dir --noisy-dir "$corpus/$set/noisy" --clean-dir "$corpus/$set/clean" \
        --out "$data/$set" --fs "$fs"
    done
  else
    # source dirs: the corpus's clean speech and noise, per set; RIRs from pyroomacoustics
    for set in train valid test; do
      [ -d "$corpus/$set/noise" ] || { log "$corpus has no noise/ folders (made before --simulate existed); delete it and run stage 0"; exit 1; }
      python -m se.bin.make_source_dir --audio-dir "$corpus/$set/clean" --out "$data/speech_$set" --fs "$fs"
      python -m se.bin.make_source_dir --audio-dir "$corpus/$set/noise" --out "$data/noise_$set" --fs "$fs"
    done
    # one set of simulated rooms for all sets (a real corpus holds RIRs out, see egs/dns_challenge)
    if [ -f "$data/rir/wav.scp" ] && [ "$(wc -l < "$data/rir/wav.scp")" -eq "$num_rirs" ]; then
      log "$data/rir has $num_rirs RIRs, skipping"
    else
      python "$SE_ROOT/local/simulate_rirs.py" --fs "$fs" --num "$num_rirs" --seed 0 --out-dir "$data/rir"
    fi
    # fixed validation and test sets: the training block's settings with held-out speech and noise
    seed=1
    for set in valid test; do
      python -m se.bin.simulate --config "$conf" --seed $seed --num 8 --out-dir "$data/${set}_sim" --overwrite \
        --speech "$data/speech_$set" --noise "$data/noise_$set" --prefix "mini_${set}_sim"
      seed=$((seed + 1))
    done
  fi
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: validate the data dirs"
  if $simulate; then
    python -m se.bin.validate_data_dir "$data/$valid_set" "$data/$test_set" --fs "$fs"
  else
    python -m se.bin.validate_data_dir "$data/train" "$data/valid" "$data/test" --fs "$fs"
  fi
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: train $network in $exp"
  if $simulate; then
    train_sets=$valid_set; train_data=  # training data: the simulation: block of $conf
  else
    train_sets="train $valid_set"; train_data=$data/train
  fi
  for set in $train_sets; do
    [ -f "$data/$set/wav.scp" ] || { log "$data/$set is missing; run stage 1 first"; exit 1; }
  done
  eval "extra=($train_args)"  # quotes in --train-args group words, as on a command line
  "$SE_ROOT/steps/train.sh" --cmd "$train_cmd" --ngpu "$ngpu" --num-nodes "$num_nodes" --config "$conf" \
    --train-data "$train_data" --valid-data "$data/$valid_set" --exp-dir "$exp" -- "${extra[@]}"
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: enhance $data/$test_set with the best checkpoint of $exp (causal models: streamed hop by hop)"
  [ -f "$exp/last_best_checkpoint" ] || { log "$exp has no trained model; run stage 3 first"; exit 1; }
  "$SE_ROOT/steps/enhance.sh" --cmd "$decode_cmd" --nj "$nj" "$exp" "$data/$test_set" "$exp/enhanced/$test_set"
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: score noisy and enhanced test audio; write $exp/RESULTS.md"
  t=$test_set
  [ -f "$exp/enhanced/$t/wav.scp" ] || { log "no enhanced audio in $exp/enhanced/$t; run stage 4 first"; exit 1; }
  "$SE_ROOT/steps/score.sh" --cmd "$score_cmd" --nj "$nj" --metrics "$metrics" "$data/$t/spk1.scp" "$data/$t/wav.scp" "$exp/scores/$t/noisy"
  "$SE_ROOT/steps/score.sh" --cmd "$score_cmd" --nj "$nj" --metrics "$metrics" "$data/$t/spk1.scp" "$exp/enhanced/$t/wav.scp" "$exp/scores/$t/enhanced"
  compare_opts=()
  for other in $compare; do
    compare_opts+=(--compare "$other=exp/$other/scores")
  done
  python -m se.bin.make_results --exp-dir "$exp" --scores-root "$exp/scores" "${compare_opts[@]}"
  cat "$exp/RESULTS.md"
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "Stage 6: package $exp as $package_dir; enhance one test file from the package"
  [ -f "$exp/last_best_checkpoint" ] || { log "$exp has no trained model; run stage 3 first"; exit 1; }
  if [ -f "$package_dir/package.json" ]; then  # a package made by an earlier run: made again
    rm -r "$package_dir"
  fi
  licence_opt=()
  [ -n "$licence" ] && licence_opt=(--licence "$licence")
  python -m se.bin.package --exp-dir "$exp" --out-dir "$package_dir" "${licence_opt[@]}"
  read -r utt wav < "$data/$test_set/wav.scp"
  check=$exp/package_check
  rm -rf "$check"
  python -m se.bin.enhance --model-dir "$package_dir" --input "$wav" --output-dir "$check/torch"
  if [ -d "$package_dir/onnx" ] && python -m se.bin.enhance --help | grep -- --backend > /dev/null; then
    python -m se.bin.enhance --backend onnxruntime --model-dir "$package_dir/onnx" --input "$wav" --output-dir "$check/onnxruntime"
  else
    log "no onnx export in $package_dir (or no onnxruntime backend): enhanced with the torch backend only"
  fi
  log "enhanced $utt from $package_dir into $check"
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
