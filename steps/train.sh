#!/usr/bin/env bash
# Train a model with torchrun (never torch.distributed.launch) through a job runner: one node on
# CPU or GPUs, or several nodes under Slurm (steps/lib/torchrun_node.sh then runs on each node).
# The trainer is `python -m se.bin.train`; torchrun gives it RANK, LOCAL_RANK and WORLD_SIZE.
set -euo pipefail
echo "$0 $*"

SE_ROOT=${SE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
. "$SE_ROOT/steps/lib/common.sh"

# job runner with its options; empty: $train_cmd (cmd.sh), else steps/run.sh
cmd=
# GPUs per node; 0 trains on CPU
ngpu=0
# nodes; above 1 needs the Slurm runner
num_nodes=1
# processes per node (default: ngpu, or 1 on CPU)
nproc_per_node=
# training config (YAML)
config=
# training data dir (leave empty when the config has a simulation: block)
train_data=
# validation data dir
valid_data=
# experiment dir; the log goes to <exp-dir>/log/train.log
exp_dir=
# rendezvous port on the first node of a multi-node job (default: 29400 + Slurm job id % 1000)
rdzv_port=
# print the command instead of running it
dry_run=false

help_message="Usage: $0 [options] --config <yaml> [--train-data <dir>] --valid-data <dir> --exp-dir <dir> [-- <se.bin.train options>]
e.g.: $0 --ngpu 2 --config conf/frcrn.yaml --train-data data/train --valid-data data/valid --exp-dir exp/frcrn -- --max-epoch 10"

. "$SE_ROOT/steps/parse_options.sh"
[ -n "$cmd" ] || cmd=${train_cmd:-$SE_ROOT/steps/run.sh}  # Kaldi: $cmd JOB=1:N LOG command ...

usage_error() {
  echo "$0: $*" >&2
  printf '%s\n' "$help_message" >&2
  exit 1
}
[[ $ngpu =~ ^[0-9]+$ ]] || usage_error "--ngpu takes a number, not '$ngpu'"
[[ $num_nodes =~ ^[1-9][0-9]*$ ]] || usage_error "--num-nodes takes a positive number, not '$num_nodes'"
if [ -z "$nproc_per_node" ]; then
  if [ "$ngpu" -gt 0 ]; then nproc_per_node=$ngpu; else nproc_per_node=1; fi
fi
[[ $nproc_per_node =~ ^[1-9][0-9]*$ ]] \
  || usage_error "--nproc-per-node takes a positive number, not '$nproc_per_node'"
if [ "$ngpu" -gt 0 ] && [ "$nproc_per_node" -gt "$ngpu" ]; then
  usage_error "--nproc-per-node $nproc_per_node is more than the $ngpu GPUs (one process per GPU)"
fi
[[ -z $rdzv_port || $rdzv_port =~ ^[1-9][0-9]*$ ]] || usage_error "--rdzv-port takes a port number, not '$rdzv_port'"
if [ -z "$config" ] || [ -z "$valid_data" ] || [ -z "$exp_dir" ]; then
  usage_error "--config, --valid-data and --exp-dir are required (and --train-data unless the config simulates)"
fi
[ -f "$config" ] || usage_error "no config file $config"
[ -z "$train_data" ] || [ -d "$train_data" ] || usage_error "no data dir $train_data"
[ -d "$valid_data" ] || usage_error "no data dir $valid_data"

# without --train-data, se.bin.train needs a simulation: block (or tr_list) in the config
trainer=(-m se.bin.train --config "$config" ${train_data:+--train-data "$train_data"} --valid-data "$valid_data"
  --exp-dir "$exp_dir" "$@")
log=$exp_dir/log/train.log
# $cmd is split into words on purpose: it is a runner with its options (Kaldi's $train_cmd).
# shellcheck disable=SC2206
if [ "$num_nodes" -eq 1 ]; then
  # --standalone: torchrun binds its rendezvous to a free port of the node it runs on.
  run=($cmd --gpu "$ngpu" "$log"
    torchrun --standalone --nnodes 1 --nproc_per_node "$nproc_per_node" "${trainer[@]}")
else
  run=($cmd --gpu "$ngpu" --num-nodes "$num_nodes" "$log"
    "$SE_ROOT/steps/lib/torchrun_node.sh" --nnodes "$num_nodes" --nproc-per-node "$nproc_per_node"
    --rdzv-port "$rdzv_port" -- "${trainer[@]}")
fi

if $dry_run; then
  printf '%q ' "${run[@]}"
  echo
  exit 0
fi
command -v torchrun >/dev/null || { echo "$0: torchrun not found (source path.sh)" >&2; exit 1; }
if [ -f "$exp_dir/last_checkpoint" ]; then
  # a resume is checked before the job starts: a refused one leaves the exp dir (log included) as it was
  python "${trainer[@]}" --check-only || exit 1
fi
"${run[@]}"
log "trained in $exp_dir (log: $log)"
success
