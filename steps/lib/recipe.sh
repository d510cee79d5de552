# Shell functions shared by the recipes (egs/*/run.sh); sourced right after path.sh:
#   . "$SE_ROOT/steps/lib/recipe.sh"

# log MESSAGE: one time-stamped line naming the script and the line that logged it
log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') ($(basename "$0"):${BASH_LINENO[0]}) $*"; }

# stage_done MARKER SIGNATURE: true when MARKER holds SIGNATURE, i.e. that stage already ran on
# these inputs (a signature is a line of the stage's inputs: options, file sizes, checksums).
stage_done() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

# mark_done MARKER SIGNATURE: records that the stage ran on these inputs.
mark_done() { mkdir -p "$(dirname "$1")"; printf '%s\n' "$2" > "$1"; }

# checkpoint_sig EXP_DIR: a signature of the experiment's best checkpoint (its pointer file's
# time and content), so that enhancement reruns when training produced a new best model.
checkpoint_sig() { echo "$(stat -c %Y "$1/last_best_checkpoint") $(head -n 1 "$1/last_best_checkpoint")"; }
