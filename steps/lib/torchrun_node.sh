#!/usr/bin/env bash
# Start torchrun on this node of a multi-node Slurm job. steps/slurm.sh --num-nodes M runs it once
# per node through srun, as steps/train.sh asks; the node rank, the rendezvous host (the job's
# first node) and the rendezvous id come from the job's SLURM_* variables.
set -euo pipefail

# nodes in the job (must match SLURM_JOB_NUM_NODES)
nnodes=
# processes (GPUs) on this node
nproc_per_node=1
# rendezvous port on the first node (default: 29400 + SLURM_JOB_ID % 1000)
rdzv_port=
# print the torchrun command instead of running it
dry_run=false

help_message="Usage: $0 [options] --nnodes <M> -- <torchrun program and its arguments>
e.g.: srun --ntasks-per-node=1 $0 --nnodes 2 --nproc-per-node 4 -- -m se.bin.train --config conf/x.yaml"

. "$(dirname "${BASH_SOURCE[0]}")/../parse_options.sh"

if [ $# -eq 0 ] || [ -z "$nnodes" ]; then
  printf '%s\n' "$help_message" >&2
  exit 1
fi
for var in SLURM_JOB_ID SLURM_NODEID SLURM_JOB_NODELIST SLURM_JOB_NUM_NODES; do
  if [ -z "${!var:-}" ]; then
    echo "$0: $var is not set: run this in a Slurm job (steps/slurm.sh --num-nodes M)" >&2
    exit 1
  fi
done
if [ "$SLURM_JOB_NUM_NODES" != "$nnodes" ]; then
  echo "$0: the Slurm job has $SLURM_JOB_NUM_NODES nodes, not --nnodes $nnodes" >&2
  exit 1
fi
host=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
port=${rdzv_port:-$((29400 + SLURM_JOB_ID % 1000))}
launch=(torchrun --nnodes "$nnodes" --nproc_per_node "$nproc_per_node" --node_rank "$SLURM_NODEID"
  --rdzv_backend c10d --rdzv_endpoint "$host:$port" --rdzv_id "$SLURM_JOB_ID" "$@")
if $dry_run; then
  printf '%q ' "${launch[@]}"
  echo
  exit 0
fi
echo "$0: node $SLURM_NODEID of $nnodes ($(hostname)): ${launch[*]}"
exec "${launch[@]}"
