# shellcheck shell=bash
# Shell functions shared by the step scripts (steps/*.sh) and the recipes (egs/*/run.sh); sourced
# at the top (steps), or right after path.sh through steps/lib/stages.sh (recipes):
#   . "$SE_ROOT/steps/lib/common.sh"
# A step script's contract: it echoes "$0 $*" first, prints a usage with an `e.g.:` line and exits 1
# when its arguments are wrong (check_args), checks its inputs (require), and ends with the success line.

# log MESSAGE: one time-stamped line naming the script and its line that logged it (for a function of
# steps/lib/, such as success or a shared stage: the line that called that function)
log() {
  local i=1
  while [[ ${BASH_SOURCE[i]:-} == */steps/lib/* ]]; do i=$((i + 1)); done
  echo "$(date '+%Y-%m-%dT%H:%M:%S') ($(basename "${BASH_SOURCE[i]:-$0}"):${BASH_LINENO[i - 1]}) $*"
}

# fail MESSAGE: "<script>: MESSAGE" on stderr, exit status 1
fail() { echo "$0: $*" >&2; exit 1; }

# check_args N COUNT: the usage ($help_message) on stderr and exit 1 unless COUNT (the script's $#) is N
check_args() { [ "$2" -eq "$1" ] || { echo "$help_message" >&2; exit 1; }; }

# require PATH [HINT]: stop with "PATH not found; HINT" unless PATH exists (a file or a dir)
require() { [ -e "$1" ] || fail "$1 not found${2:+; $2}"; }

# in_stages N: true when stage N is between --stage and --stop-stage (the recipe's variables)
in_stages() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

# Stage guard: a finished stage writes its signature (one line of its inputs: options, file sizes,
# checksums, the signature of the stage it read) into its .done marker. The stage runs again when
# its inputs changed and is skipped when they did not:
#   if stage_done data/.stage1.done "$sig"; then log "skipping"; else ...; mark_done data/.stage1.done "$sig"; fi
# stage_done MARKER SIGNATURE: true when MARKER holds SIGNATURE (that stage ran on these inputs)
stage_done() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# mark_done MARKER SIGNATURE: records that the stage ran on these inputs.
mark_done() { mkdir -p "$(dirname "$1")"; printf '%s\n' "$2" > "$1"; }

# checkpoint_sig EXP_DIR: a signature of the experiment's best checkpoint (its pointer file's
# time and content), so that enhancement reruns when training produced a new best model.
checkpoint_sig() { echo "$(stat -c %Y "$1/last_best_checkpoint") $(head -n 1 "$1/last_best_checkpoint")"; }

# success: the last line of every step and recipe
success() { log "Successfully finished. [elapsed=${SECONDS}s]"; }

# job_runners: the recipe's --train-cmd, --decode-cmd and --score-cmd, each cmd.sh's runner
# (cmd_backend=local|slurm) unless given on the command line (declared empty, after parse_options.sh).
job_runners() {
  local train=$train_cmd decode=$decode_cmd score=$score_cmd
  # shellcheck disable=SC1091
  . "$SE_ROOT/cmd.sh"
  train_cmd=${train:-$train_cmd} decode_cmd=${decode:-$decode_cmd} score_cmd=${score:-$score_cmd}
}
