# shellcheck shell=bash
# Job runners for the recipes, chosen with one switch (recipes source this file through job_runners
# in steps/lib/common.sh, which keeps a runner given as --train-cmd, --decode-cmd or --score-cmd):
#   cmd_backend=local  jobs run on this machine: steps/run.sh
#   cmd_backend=slurm  jobs go to Slurm: steps/slurm.sh, resources translated by conf/slurm.conf
# Both take: $cmd [--gpu N] [--mem M] [--num-threads N] [--max-jobs-run N] [JOB=1:N] LOGFILE cmd...
# e.g.: cmd_backend=slurm ./run.sh --stage 3
# Site-wide resource defaults belong in conf/slurm.conf; recipes add --gpu/--mem per call.
cmd_backend=${cmd_backend:-local}
SE_ROOT=${SE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
case $cmd_backend in
  local)
    export train_cmd="$SE_ROOT/steps/run.sh"
    export decode_cmd="$SE_ROOT/steps/run.sh"
    export score_cmd="$SE_ROOT/steps/run.sh"
    ;;
  slurm)
    export train_cmd="$SE_ROOT/steps/slurm.sh --config $SE_ROOT/conf/slurm.conf"
    export decode_cmd="$SE_ROOT/steps/slurm.sh --config $SE_ROOT/conf/slurm.conf"
    export score_cmd="$SE_ROOT/steps/slurm.sh --config $SE_ROOT/conf/slurm.conf"
    ;;
  *)
    echo "cmd.sh: unknown cmd_backend '$cmd_backend' (expected local or slurm)" >&2
    case $- in *i*) return 1 ;; esac   # stop the recipe, not an interactive shell
    exit 1
    ;;
esac
