#!/usr/bin/env bash
# Mini recipe: a tiny synthetic corpus made here (no download), trained and scored on CPU.
# Plays the role of ESPnet's mini_an4: the whole chain data -> training -> enhancement ->
# scoring in a few minutes, and the template for recipes on real corpora.
#   e.g.: ./run.sh                                   # everything, FRCRN_SE_16K at 16 kHz
#         ./run.sh --network MossFormer2_SE_48K      # the 48 kHz path
#         ./run.sh --stage 3 --stop-stage 3 --ngpu 1 # only training, on a GPU
#         ./run.sh --stage 3 --conf conf/train_FRCRN_SE_16K_causal.yaml --compare FRCRN_SE_16K
#                                                    # causal FRCRN (streamed), beside the offline one
set -euo pipefail

stage=0                # first stage to run
stop_stage=5           # last stage to run
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

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') ($(basename "$0"):${BASH_LINENO[0]}) $*"; }

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../path.sh"
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
[ -n "$conf" ] || conf=conf/train_${network}.yaml
[ -f "$conf" ] || { log "no $conf: mini configs are $(ls conf | sed -n 's/^train_\(.*\)\.yaml$/\1/p' | xargs)"; exit 1; }
[ -n "$tag" ] || tag=$(basename "$conf" .yaml | sed 's/^train_//')
corpus=downloads/mini_${fs}
data=data/${fs}
exp=exp/${tag}

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
  for set in train valid test; do
    python -m se.bin.make_data_dir --noisy-dir "$corpus/$set/noisy" --clean-dir "$corpus/$set/clean" \
      --out "$data/$set" --fs "$fs"
  done
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  log "Stage 2: validate the data dirs"
  python -m se.bin.validate_data_dir "$data/train" "$data/valid" "$data/test" --fs "$fs"
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: train $network in $exp"
  for set in train valid; do
    [ -f "$data/$set/wav.scp" ] || { log "$data/$set is missing; run stage 1 first"; exit 1; }
  done
  eval "extra=($train_args)"  # quotes in --train-args group words, as on a command line
  "$SE_ROOT/steps/train.sh" --cmd "$train_cmd" --ngpu "$ngpu" --num-nodes "$num_nodes" --config "$conf" \
    --train-data "$data/train" --valid-data "$data/valid" --exp-dir "$exp" -- "${extra[@]}"
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: enhance $data/test with the best checkpoint of $exp (causal models: streamed hop by hop)"
  [ -f "$exp/last_best_checkpoint" ] || { log "$exp has no trained model; run stage 3 first"; exit 1; }
  "$SE_ROOT/steps/enhance.sh" --cmd "$decode_cmd" --nj "$nj" "$exp" "$data/test" "$exp/enhanced/test"
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: score noisy and enhanced test audio; write $exp/RESULTS.md"
  [ -f "$exp/enhanced/test/wav.scp" ] || { log "no enhanced audio in $exp/enhanced/test; run stage 4 first"; exit 1; }
  "$SE_ROOT/steps/score.sh" --cmd "$score_cmd" --nj "$nj" --metrics "$metrics" "$data/test/spk1.scp" "$data/test/wav.scp" "$exp/scores/test/noisy"
  "$SE_ROOT/steps/score.sh" --cmd "$score_cmd" --nj "$nj" --metrics "$metrics" "$data/test/spk1.scp" "$exp/enhanced/test/wav.scp" "$exp/scores/test/enhanced"
  compare_opts=()
  for other in $compare; do
    compare_opts+=(--compare "$other=exp/$other/scores")
  done
  python -m se.bin.make_results --exp-dir "$exp" --scores-root "$exp/scores" "${compare_opts[@]}"
  cat "$exp/RESULTS.md"
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
