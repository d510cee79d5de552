#!/usr/bin/env bash
# VoiceBank-DEMAND (28 speakers, Valentini-Botinhao et al. 2016): download and verify the corpus,
# data dirs at 16 and 48 kHz, training, enhancement of the test set, scoring into
# <expdir>/<tag>/RESULTS.md. See README.md for the published numbers to compare with.
#   e.g.: ./run.sh --vbd-root /corpora/VoiceBank-DEMAND              # FRCRN_SE_16K, stages 0-5
#         ./run.sh --network MossFormer2_SE_48K --ngpu 1             # trained on the 48 kHz data
#         ./run.sh --init /path/to/FRCRN_SE_16K_release.pt --tag FRCRN_SE_16K_ft  # fine-tune
#         ./run.sh --train-list tr.scp --valid-list cv.scp           # ClearVoice lists, no corpus prep
#         ./run.sh --conf conf/train_FRCRN_SE_16K_causal.yaml --init /path/to/FRCRN_SE_16K_release.pt
#                  # real-time (causal) FRCRN fine-tuned from the release; tag FRCRN_SE_16K_causal
# Stages: 0 download (or verify --vbd-root), 1 data dirs, 2 validate them, 3 train, 4 enhance the
# test set, 5 score it. A finished stage leaves a .done marker holding its inputs and is skipped
# when run again with the same inputs; an interrupted training resumes from its last checkpoint.
# Relative paths in options are relative to this directory.
set -euo pipefail

# shellcheck disable=SC1091
. "$(dirname "$0")/../../path.sh"
. "$SE_ROOT/steps/lib/stages.sh"  # (and common.sh)
# shellcheck source=SCRIPTDIR/db.sh
. "$(dirname "$0")/db.sh"

stage=0                 # first stage to run
stop_stage=5            # last stage to run
network=FRCRN_SE_16K    # FRCRN_SE_16K or MossFormerGAN_SE_16K (16 kHz data), MossFormer2_SE_48K (48 kHz)
vbd_root=${VBD_ROOT:-}  # an unpacked copy of the corpus (default from db.sh); empty: download it
download_dir=downloads/VoiceBank-DEMAND  # where stage 0 downloads and unpacks the corpus
expected_train=11572    # wav files in each training folder (noisy and clean)
expected_test=824       # wav files in each test folder (noisy and clean)
valid_speakers="p226 p287"  # training speakers held out as the validation set
train_list=             # ClearVoice 2-column list (noisy.wav clean.wav) for training, instead of stages 0-1
valid_list=             # ClearVoice list for validation (with --train-list)
test_list=              # ClearVoice list for testing (optional; default: the corpus test set)
datadir=data            # data dirs: <datadir>/<16k|48k>/<train|valid|test>
dumpdir=dump            # 16 kHz copies of the corpus made by stage 1
expdir=exp              # experiments: <expdir>/<tag>
nj=4                    # parallel jobs for resampling, enhancement and scoring
ngpu=0                  # GPUs per node for training (0 = CPU)
num_nodes=1             # nodes for training (more than 1 needs cmd_backend=slurm)
init=                   # fine-tune from this checkpoint (a ClearVoice release file or one of ours)
conf=                   # training config; default conf/train_<network>.yaml
tag=                    # experiment name; default the config's name without train_ (e.g. FRCRN_SE_16K)
train_args=             # more se.bin.train options (shell quoting), e.g. "--max-epoch 20 --batch-size 8"
metrics=all             # scoring metrics (se.bin.score --metrics), e.g. "pesq_wb stoi si_sdr"

train_cmd=              # job runner of the training jobs; empty: cmd.sh's (cmd_backend=local|slurm)
decode_cmd=             # job runner of the enhancement jobs; empty: cmd.sh's
score_cmd=              # job runner of the scoring jobs; empty: cmd.sh's
printf -v run_cmdline '%q ' "$0" "$@"
help_message="Usage: $0 [options]
e.g.: $0 --vbd-root /corpora/VoiceBank-DEMAND --network FRCRN_SE_16K --ngpu 1"
. "$SE_ROOT/steps/parse_options.sh"
job_runners
cd "$(dirname "$0")"

if [ -n "$conf" ]; then  # --conf names its network (and so the data rate)
  [ -f "$conf" ] || stop "no $conf"
  network=$(conf_network "$conf")
fi
[ -n "$conf" ] || conf=conf/train_${network}.yaml
need_conf "$conf"
fs=$(network_fs "$network")
data=$datadir/$((fs / 1000))k   # the network's rate: 16k or 48k
[ -n "$tag" ] || tag=$(basename "$conf" .yaml | sed 's/^train_//')
exp=$expdir/$tag
corpus=${vbd_root:-$download_dir}

# ClearVoice lists replace the corpus for training and validation, and also for testing when
# --test-list is given; otherwise the test set still comes from the corpus.
use_lists=false
need_corpus=true
if [ -n "$train_list$valid_list$test_list" ]; then
  if [ -z "$train_list" ] || [ -z "$valid_list" ]; then stop "--train-list and --valid-list go together"; fi
  use_lists=true
  [ -z "$test_list" ] || need_corpus=false
fi
if $use_lists; then rates=$fs; else rates="16000 48000"; fi

corpus_sig="corpus=$corpus expected=$expected_train/$expected_test"
data_sig="$corpus_sig valid_speakers=$valid_speakers rates=$rates lists=$train_list:$valid_list:$test_list"

if in_stages 0; then
  log "Stage 0: get and verify the corpus in $corpus"
  if ! $need_corpus; then
    log "nothing to do: --train-list, --valid-list and --test-list replace the corpus"
  elif stage_done "$datadir/.stage0.done" "$corpus_sig"; then
    log "$corpus was verified already, skipping ($datadir/.stage0.done)"
  else
    if [ -n "$vbd_root" ]; then
      python "$SE_ROOT/local/prepare_voicebank_demand.py" check-layout \
        --expected-train "$expected_train" --expected-test "$expected_test" "$vbd_root"
    else
      "$SE_ROOT/local/download_voicebank_demand.sh" \
        --expected-train "$expected_train" --expected-test "$expected_test" "$download_dir"
    fi
    mark_done "$datadir/.stage0.done" "$corpus_sig"
  fi
fi

if in_stages 1; then
  log "Stage 1: data dirs in $datadir/<rate>/{train,valid,test} at $rates Hz"
  if stage_done "$datadir/.stage1.done" "$data_sig"; then
    log "the data dirs are prepared already, skipping ($datadir/.stage1.done)"
  else
    if $need_corpus; then
      need_done "$datadir/.stage0.done" "$corpus_sig" "$corpus is not verified; run stage 0 first"
    fi
    rm -f "$datadir/.stage2.done"
    if $use_lists; then
      declare -A lists=([train]=$train_list [valid]=$valid_list [test]=$test_list)
      for set in train valid test; do
        [ -z "${lists[$set]}" ] \
          || python -m se.bin.make_data_dir --clearvoice-list "${lists[$set]}" --out "$data/$set" --fs "$fs"
      done
    fi
    if $need_corpus; then
      if $use_lists; then sets="test"; else sets="train valid test"; fi
      python "$SE_ROOT/local/prepare_voicebank_demand.py" prepare "$corpus" --out-dir "$datadir" \
        --dump-dir "$dumpdir" --valid-speakers "$valid_speakers" --rates "$rates" --sets "$sets" --nj "$nj"
    fi
    mark_done "$datadir/.stage1.done" "$data_sig"
  fi
fi

if in_stages 2; then
  log "Stage 2: validate the data dirs"
  if stage_done "$datadir/.stage2.done" "$data_sig"; then
    log "the data dirs were validated already, skipping ($datadir/.stage2.done)"
  else
    need_done "$datadir/.stage1.done" "$data_sig" "the data dirs are not prepared; run stage 1 first"
    for rate in $rates; do
      python -m se.bin.validate_data_dir "$datadir/$((rate / 1000))k"/{train,valid,test} --fs "$rate"
    done
    mark_done "$datadir/.stage2.done" "$data_sig"
  fi
fi

if in_stages 3; then
  log "Stage 3: train $network on $data/train in $exp"
  for set in train valid; do
    [ -f "$data/$set/wav.scp" ] || stop "$data/$set is missing; run stage 1 first"
  done
  train_stage "$exp" "$conf" "$data_sig" "$train_args" "$init" --cmd "$train_cmd" --ngpu "$ngpu" \
    --num-nodes "$num_nodes" --train-data "$data/train" --valid-data "$data/valid"
fi

if in_stages 4; then
  log "Stage 4: enhance $data/test with the best checkpoint of $exp"
  need_model "$exp"
  [ -f "$data/test/wav.scp" ] || stop "$data/test is missing; run stage 1 first"
  enhance_set "$exp" "$data/test" "$data_sig" --cmd "$decode_cmd" --nj "$nj"
fi

if in_stages 5; then
  log "Stage 5: score the noisy and enhanced test audio at $fs Hz; write $exp/RESULTS.md"
  score_set "$exp" "$data/test" "$data/test/spk1.scp" "$metrics" "$data_sig" --cmd "$score_cmd" --nj "$nj" --fs "$fs"
  write_results "$exp" "$run_cmdline"
fi

success
