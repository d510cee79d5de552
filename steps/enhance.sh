#!/usr/bin/env bash
# Enhance the noisy side (wav.scp) of a data dir with a trained experiment, in nj parallel jobs.
set -euo pipefail
echo "$0 $*"
SE_ROOT=${SE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
. "$SE_ROOT/steps/lib/common.sh"

cmd=                   # job runner with its options; empty: $decode_cmd (cmd.sh), else steps/run.sh
nj=4                   # number of parallel jobs
network=               # network name (only needed for ClearVoice release checkpoints)
checkpoint=            # checkpoint file; default: the experiment dir's best checkpoint
clearvoice_compat=false  # reproduce ClearVoice's decode path instead of ours
output_subtype=PCM_16  # PCM_16 or FLOAT
extra_args=            # more options for se.bin.enhance, e.g. "--segment-length 20"

help_message="Usage: $0 [options] <exp-dir> <data-dir> <out-dir>
e.g.: $0 --nj 4 exp/frcrn data/test exp/frcrn/enhanced/test"
. "$SE_ROOT/steps/parse_options.sh"
[ -n "$cmd" ] || cmd=${decode_cmd:-$SE_ROOT/steps/run.sh}  # Kaldi: $cmd JOB=1:N LOG command ...

check_args 3 $#
exp=$1 data=$2 out=$3

require "$data/wav.scp" "run the data preparation stage first"
[ -n "$checkpoint" ] || checkpoint=$exp
require "$checkpoint" "run the training stage first"
num_utts=$(wc -l < "$data/wav.scp")
[ "$nj" -le "$num_utts" ] || nj=$num_utts

compat_opt=()
[ "$clearvoice_compat" = true ] && compat_opt=(--clearvoice-compat)
network_opt=()
[ -n "$network" ] && network_opt=(--network "$network")

mkdir -p "$out/log"
# share the cores between the parallel jobs (oversubscribed OpenMP threads slow every job down)
threads=$(( $(nproc) / nj )); [ "$threads" -ge 1 ] || threads=1
export OMP_NUM_THREADS=$threads
# shellcheck disable=SC2086
$cmd JOB=1:"$nj" "$out/log/enhance.JOB.log" \
  python -m se.bin.enhance "${network_opt[@]}" --checkpoint "$checkpoint" --input "$data/wav.scp" \
    --output-dir "$out" --num-jobs "$nj" --job JOB --output-subtype "$output_subtype" \
    "${compat_opt[@]}" $extra_args

# wav.scp of the outputs, for scoring; every input must have its output
out_abs=$(cd "$out" && pwd)
while read -r utt _; do
  [ -s "$out_abs/$utt.wav" ] || fail "missing output $out_abs/$utt.wav (see $out/log/enhance.*.log)"
done < "$data/wav.scp"
awk -v d="$out_abs" '{print $1" "d"/"$1".wav"}' "$data/wav.scp" | python -m se.atomic "$out/wav.scp"
log "enhanced $num_utts utterances of $data into $out"
success
