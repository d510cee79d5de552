# shellcheck shell=bash
# The stages the recipes (egs/*/run.sh) share, each guarded by a .done marker that holds its inputs
# (stage_done / mark_done in common.sh, which this file sources); sourced by a recipe after path.sh:
#   . "$SE_ROOT/steps/lib/stages.sh"
# The functions read no recipe variables: everything comes as arguments, the options of the step
# script they call (steps/train.sh, enhance.sh, score.sh) last and passed on as they are. Call them
# as plain commands (not inside if, || or &&), so that set -e stops the recipe when a step fails.

# shellcheck disable=SC1091
. "$SE_ROOT/steps/lib/common.sh"

# stop MESSAGE: log MESSAGE and stop the recipe (exit 1), e.g. to name the stage to run first
stop() { log "$*"; exit 1; }

# need_done MARKER SIGNATURE MESSAGE: stop with MESSAGE unless MARKER holds SIGNATURE (that stage ran)
need_done() { stage_done "$1" "$2" || stop "$3"; }

# need_model EXP: stop unless EXP has a best checkpoint (the training stage, 3, ran)
need_model() { [ -f "$1/last_best_checkpoint" ] || stop "$1 has no trained model; run stage 3 first"; }

# run_once MARKER SIGNATURE MESSAGE COMMAND...: run COMMAND and write SIGNATURE into MARKER, unless
# MARKER holds SIGNATURE already (then log MESSAGE); the old MARKER goes before COMMAND starts.
run_once() {
  local marker=$1 sig=$2 message=$3
  shift 3
  if stage_done "$marker" "$sig"; then
    log "$message"
    return 0
  fi
  rm -f "$marker"
  "$@"
  mark_done "$marker" "$sig"
}

# conf_network CONF: the network a training config names
conf_network() { python -c 'import sys; from se.config import load; print(load(sys.argv[1])["network"])' "$1"; }

# network_fs NETWORK: the sample rate of NETWORK (16000 or 48000)
network_fs() { python -c 'import sys; from se.models import network_sampling_rate as r; print(r(sys.argv[1]))' "$1"; }

# need_conf CONF: stop unless the config CONF exists, naming the networks of conf/train_<network>.yaml
need_conf() {
  local networks
  [ -f "$1" ] && return 0
  networks=$(cd conf && printf '%s ' train_*.yaml | sed 's/train_\([^ ]*\)\.yaml/\1/g')
  stop "no $1: networks with a config are $networks"
}

# train_stage EXP CONF SIGNATURE TRAIN_ARGS INIT [steps/train.sh OPTION...]: train CONF in EXP
# (steps/train.sh) with the se.bin.train options TRAIN_ARGS (shell quoting, as on a command line) and
# --init INIT when INIT is given, unless EXP/.stage3.done holds CONF's checksum, those se.bin.train
# options and SIGNATURE (the signature of the data it reads).
train_stage() {
  local exp=$1 conf=$2 data_sig=$3 train_args=$4 init=$5
  shift 5
  local -a extra
  eval "extra=($train_args)"  # quotes in --train-args group words, as on a command line
  [ -z "$init" ] || extra=(--init "$init" "${extra[@]}")
  run_once "$exp/.stage3.done" "$(cksum < "$conf") ${extra[*]} $data_sig" \
    "$exp is trained already with these settings, skipping ($exp/.stage3.done)" \
    "$SE_ROOT/steps/train.sh" "$@" --config "$conf" --exp-dir "$exp" -- "${extra[@]}"
}

# enhance_set EXP DATA_DIR SIGNATURE [steps/enhance.sh OPTION...]: enhance DATA_DIR with the best
# checkpoint of EXP into EXP/enhanced/<set> (steps/enhance.sh), unless its .done holds the
# checkpoint's signature and SIGNATURE (the signature of the data dir).
enhance_set() {
  local exp=$1 data=$2 data_sig=$3
  shift 3
  local out
  out=$exp/enhanced/$(basename "$data")
  run_once "$out/.done" "$(checkpoint_sig "$exp") $data_sig" "$out is up to date, skipping" \
    "$SE_ROOT/steps/enhance.sh" "$@" "$exp" "$data" "$out"
}

# score_set EXP DATA_DIR REF METRICS SIGNATURE [steps/score.sh OPTION...]: score the noisy audio of
# DATA_DIR (the baseline) and its enhanced audio in EXP/enhanced/<set> against REF (a reference scp,
# or - for none) into EXP/scores/<set>/{noisy,enhanced} (steps/score.sh --metrics METRICS), each
# unless its .done holds METRICS and the signature of its input (SIGNATURE for the noisy audio).
score_set() {
  local exp=$1 data=$2 ref=$3 metrics=${4// /,} data_sig=$5
  shift 5
  local set kind est sig
  set=$(basename "$data")
  [ -f "$exp/enhanced/$set/.done" ] || stop "no enhanced audio in $exp/enhanced/$set; run stage 4 first"
  for kind in noisy enhanced; do
    if [ $kind = noisy ]; then  # the baseline: the same for every model
      est=$data/wav.scp sig="metrics=$metrics $data_sig"
    else
      est=$exp/enhanced/$set/wav.scp sig="metrics=$metrics $(cat "$exp/enhanced/$set/.done")"
    fi
    run_once "$exp/scores/$set/$kind/.done" "$sig" "$exp/scores/$set/$kind is up to date, skipping" \
      "$SE_ROOT/steps/score.sh" "$@" --metrics "$metrics" "$ref" "$est" "$exp/scores/$set/$kind"
  done
}

# write_results EXP COMMAND_LINE [se.bin.make_results OPTION...]: EXP/RESULTS.md from EXP/scores
# (COMMAND_LINE is the recipe's, for the record), then show it
write_results() {
  local exp=$1 cmdline=$2
  shift 2
  python -m se.bin.make_results --exp-dir "$exp" --scores-root "$exp/scores" --cmd "${cmdline% }" "$@"
  cat "$exp/RESULTS.md"
}

# simulate_sets CONF DATA SPEECH PREFIX NUM_VALID NUM_TEST LENGTH FS: the fixed sets DATA/valid_sim
# and DATA/test_sim (seeds 1 and 2; utterances PREFIX<set>_sim_*) simulated by se.bin.simulate with
# CONF's training settings from held-out sources: speech DATA/<SPEECH>_<set>, noise DATA/noise_<set>,
# RIRs DATA/rir_<set>; NUM_VALID and NUM_TEST utterances of LENGTH seconds; validated at FS Hz.
simulate_sets() {
  local conf=$1 data=$2 speech=$3 prefix=$4 num_valid=$5 num_test=$6 length=$7 fs=$8
  local set num seed=1
  for set in valid test; do
    if [ $set = valid ]; then num=$num_valid; else num=$num_test; fi
    # the training block's SNRs, reverberation and effects; held-out speech, noise and RIRs
    python -m se.bin.simulate --config "$conf" --seed $seed --num "$num" --length "$length" \
      --out-dir "$data/${set}_sim" --speech "$data/${speech}_$set" --noise "$data/noise_$set" \
      --rir "$data/rir_$set" --prefix "${prefix}${set}_sim" --overwrite
    seed=$((seed + 1))
  done
  python -m se.bin.validate_data_dir "$data/valid_sim" "$data/test_sim" --fs "$fs"
}
