#!/usr/bin/env bash
# Score estimates (enhanced or noisy audio) against clean references in nj parallel jobs.
# A reference of '-' means there is none: only the no-reference metrics (DNSMOS, PLCMOS) exist.
# Outputs in <out-dir> (see se/bin/score.py): scores.tsv summary.json summary.md notes.tsv
# ref.scp est.scp cmd, job logs in <out-dir>/log/score.JOB.log, parts in <out-dir>/split/JOB/.
set -euo pipefail
echo "$0 $*"
SE_ROOT=${SE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
. "$SE_ROOT/steps/lib/common.sh"

cmd=                 # job runner with its options; empty: $score_cmd (cmd.sh), else steps/run.sh
nj=4                 # number of parallel jobs (capped at the number of utterances)
metrics=all          # comma list of metrics or groups: all nodnsmos noref pesq composite dnsmos or columns
fs=                  # required native sample rate of every file (empty: any, ref and est equal)
max_len_diff=0.1     # seconds; longer length differences make reference-based metrics undefined
python=python        # interpreter with the requirements installed (path.sh puts tools/venv first)

printf -v cmdline '%q ' "$0" "$@"  # for $dir/cmd
help_message="Usage: $0 [options] <ref-scp|ref-dir|-> <est-scp|est-dir> <out-dir>
e.g.: $0 --nj 8 data/test/clean.scp exp/frcrn/enhanced/test/wav.scp exp/frcrn/scores/test/enhanced
      $0 --metrics noref - exp/frcrn/enhanced/real_rec/wav.scp exp/frcrn/scores/real_rec/enhanced  # no reference"
. "$SE_ROOT/steps/parse_options.sh"
[ -n "$cmd" ] || cmd=${score_cmd:-$SE_ROOT/steps/run.sh}  # Kaldi: $cmd JOB=1:N LOG command ...

check_args 3 $#
ref=$1 est=$2 dir=$3

for x in "$ref" "$est"; do
  [ "$x" = - ] || require "$x"
done
[ "$nj" -ge 1 ] || fail "--nj must be a positive integer, got '$nj'"

export PYTHONPATH="$SE_ROOT${PYTHONPATH:+:$PYTHONPATH}"
score=("$python" -m se.bin.score --est "$est" --out-dir "$dir")
[ "$ref" = - ] || score+=(--ref "$ref")
opts=(--metrics "$metrics" --max-len-diff "$max_len_diff")
[ -n "$fs" ] && opts+=(--fs "$fs")

mkdir -p "$dir/log"
# A failed run must not leave the results of an earlier one beside its logs.
rm -rf "$dir/split"
rm -f "$dir"/{scores.tsv,summary.json,summary.md,notes.tsv,cmd,ref.scp}

if [ "$nj" -eq 1 ]; then
  # one job checks the pairs and scores them: no separate check, split or merge
  log "scoring in 1 job (log: $dir/log/score.1.log)"
  # shellcheck disable=SC2086
  $cmd JOB=1:1 "$dir/log/score.JOB.log" "${score[@]}" "${opts[@]}" --nj 1
else
  log "checking the pairs"
  num_utts=$("${score[@]}" "${opts[@]}" --check-only | tail -n 1)
  [ "$nj" -le "$num_utts" ] || nj=$num_utts

  log "scoring $num_utts utterances in $nj jobs (logs: $dir/log/score.*.log)"
  # shellcheck disable=SC2086
  $cmd JOB=1:"$nj" "$dir/log/score.JOB.log" \
    "${score[@]}" "${opts[@]}" --split "$nj" --job JOB --nj 1

  "${score[@]}" "${opts[@]}" --merge "$nj"
fi
echo "${cmdline% }" | "$python" -m se.atomic "$dir/cmd"
cat "$dir/summary.md"
success
