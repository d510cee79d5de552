#!/usr/bin/env bash
# Start or stop a private Slurm cluster on this one machine, for tests of steps/slurm.sh.
# Follows shared/SLURM_LOCAL.md, but keeps every file of the cluster (slurm.conf, gres.conf with a
# fake GPU per node, spool, logs, pid files) in one folder and uses its own ports, so /etc/slurm
# and any other Slurm on the machine are left alone. Clients find it through SLURM_CONF.
# With N > 1 nodes, N slurmd daemons on this machine play nodes node1..nodeN (each with all CPUs
# and one fake GPU), so multi-node jobs (sbatch --nodes=2, srun) can be tested.
#
# Usage: tests/slurm_cluster.sh start [N]|stop|status
#   start   install slurm-wlm and munge with apt-get if missing, start munged (unless one is
#           running), slurmctld and N slurmd (default 1, named like this machine), and wait
#           until the nodes are idle
#   stop    shut the daemons down (munged only if start started it)
#   status  exit 0 when this cluster's slurmctld is running
# Environment: SE_SLURM_DIR (default /tmp/se_slurm_cluster): the cluster's folder.
# e.g.: tests/slurm_cluster.sh start 2 && SLURM_CONF=/tmp/se_slurm_cluster/slurm.conf sinfo
# Exit codes: 0 done; 77 the cluster cannot start on this machine (not root, no apt-get, the
# packages cannot be installed); 1 any other failure.
set -euo pipefail

dir=${SE_SLURM_DIR:-/tmp/se_slurm_cluster}
export SLURM_CONF=$dir/slurm.conf

cannot_start() { echo "$0: cannot start Slurm here: $*" >&2; exit 77; }
fail() { echo "$0: $*" >&2; exit 1; }

# alive PIDFILE: the daemon named in PIDFILE is running.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return 0
  [ "$(id -u)" -eq 0 ] || cannot_start "slurm-wlm and munge are not installed and this is not root"
  command -v apt-get >/dev/null || cannot_start "slurm-wlm and munge are not installed and there is no apt-get"
  echo "$0: installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get -o DPkg::Lock::Timeout=300 update -qq \
      && apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends slurm-wlm munge; } \
    >"$dir/apt.log" 2>&1 || cannot_start "apt-get failed, see $dir/apt.log"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi   # one is running already
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 0700 /etc/munge; chmod 0600 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge      # nobody else creates it without systemd
  runuser -u munge -- /usr/sbin/munged
  touch "$dir/munged.started"
  munge -n | unmunge >/dev/null || fail "munged does not answer"
}

# write_conf NODE...: slurm.conf and gres.conf for the nodes, slurmd i listening on port 16817+i.
write_conf() {
  local cpus mem host i=0 node
  cpus=$(nproc)
  mem=$(( ($(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 1024) / $# ))
  host=$(hostname -s)
  cat >"$dir/slurm.conf" <<CONF
ClusterName=se_test
SlurmctldHost=$host
SlurmctldPort=16817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.log
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
EnforcePartLimits=ALL
ReturnToService=2
GresTypes=gpu
PartitionName=debug Nodes=$(IFS=,; echo "$*") Default=YES MaxTime=INFINITE State=UP
CONF
  : >"$dir/gres.conf"
  for node in "$@"; do
    i=$((i + 1))
    echo "NodeName=$node NodeHostname=$host NodeAddr=127.0.0.1 Port=$((16817 + i))" \
      "CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN" >>"$dir/slurm.conf"
    # A fake GPU, so that --gres=gpu:1 jobs run (Slurm sets CUDA_VISIBLE_DEVICES=0).
    echo "NodeName=$node Name=gpu File=/dev/null" >>"$dir/gres.conf"
  done
}

start() {
  local num_nodes=${1:-1} nodes node state=""
  [[ $num_nodes =~ ^[1-9][0-9]*$ ]] || fail "the number of nodes must be a positive integer, not '$num_nodes'"
  mkdir -p "$dir"
  if alive "$dir/slurmctld.pid"; then echo "$0: already running (SLURM_CONF=$SLURM_CONF)"; return 0; fi
  install_packages
  [ "$(id -u)" -eq 0 ] || cannot_start "slurmd must run as root"
  trap '[ $? -eq 0 ] || stop >/dev/null 2>&1' EXIT     # leave no daemons behind a failed start
  start_munge
  if [ "$num_nodes" -eq 1 ]; then nodes=("$(hostname -s)"); else mapfile -t nodes < <(seq -f 'node%g' "$num_nodes"); fi
  rm -rf "$dir/spool" "$dir/log" "$dir"/slurmd.*.pid
  mkdir -p "$dir/spool/ctld" "$dir/log"
  write_conf "${nodes[@]}"
  slurmctld || fail "slurmctld did not start, see $dir/log/slurmctld.log"
  for node in "${nodes[@]}"; do
    mkdir -p "$dir/spool/$node"
    slurmd -N "$node" || fail "slurmd did not start, see $dir/log/slurmd.$node.log"
  done
  for _ in $(seq 150); do
    state=$(sinfo -h -o %t 2>/dev/null | sort -u | tr '\n' ' ' || true)
    [ "$state" = "idle " ] && break
    sleep 0.2
  done
  [ "$state" = "idle " ] || fail "the nodes are '$state', not idle, after 30 s; see $dir/log"
  echo "$0: Slurm is up (SLURM_CONF=$SLURM_CONF)"
}

# stop_daemon PIDFILE: TERM, then KILL after 10 s, the daemon named in PIDFILE.
stop_daemon() {
  local pid
  alive "$1" || return 0
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  local pidfile
  if alive "$dir/slurmctld.pid"; then
    scontrol shutdown >/dev/null 2>&1 || true          # stops slurmctld and the slurmd
  fi
  for pidfile in "$dir"/slurmd.*.pid "$dir/slurmctld.pid"; do stop_daemon "$pidfile"; done
  if [ -f "$dir/munged.started" ]; then
    runuser -u munge -- /usr/sbin/munged --stop >/dev/null 2>&1 || true
    rm -f "$dir/munged.started"
  fi
  echo "$0: Slurm is down"
}

case ${1:-} in
  start) start "${2:-1}" ;;
  stop) stop ;;
  status) alive "$dir/slurmctld.pid" ;;
  *) echo "Usage: $0 start [N]|stop|status" >&2; exit 1 ;;
esac
