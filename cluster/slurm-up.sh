#!/usr/bin/env bash
# Brings up a single-node Slurm on this machine for development and CI: a munge key, munged (as
# user munge), /etc/slurm/slurm.conf generated for this host (its name, cores and memory as
# `slurmd -C` reads them, one partition "debug"), slurmctld and slurmd (as root), and enough
# bookkeeping for `scontrol show job` (finished jobs stay visible for MinJobAge = 1 hour) and a job
# completion log (STATE/log/jobcomp.txt); `sacct` needs slurmdbd, which this does not run. A
# requeued job may start again after cred_expire = 10 s (Slurm's default: 120 s).
# Idempotent: what already runs is left running; a second call only waits until the node is idle.
# Refuses to touch an /etc/slurm/slurm.conf that it did not write (a real cluster's).
#   bash cluster/slurm-up.sh          # then sbatch, squeue, scontrol as usual
#   bash cluster/slurm-status.sh      # what runs;  bash cluster/slurm-down.sh stops it all
# Needs root (uses sudo otherwise) and Debian's slurm-wlm and munge (cluster/setup.sh installs them).
# State, spool, logs and pid files: $HYPERRNN_SLURM_DIR (default /var/lib/hyperrnn-slurm).
# Leaves out: slurmdbd and accounting, cgroups (ProctrackType=proctrack/linuxproc,
# TaskPlugin=task/none: no binding, no memory enforcement), several nodes.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then exec sudo -E bash "$0" "$@"; fi
here=$(cd "$(dirname "$0")" && pwd)
source "$here/slurm-common.sh"

for b in munged slurmctld slurmd scontrol sinfo; do
  command -v "$b" > /dev/null || die "'$b' not found: install Debian's slurm-wlm and munge (bash cluster/setup.sh does)"
done
if [ -e "$conf" ] && ! grep -q "^$marker" "$conf"; then
  die "$conf exists and was not written by hyperrnn (a real cluster's?); not touching it"
fi
mkdir -p "$state"/{ctld,d,log,run}

# --- munge: key, directories, daemon ------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  install -d -o munge -g munge -m 0700 /etc/munge
  (umask 077; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none)
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! munge_ok; then
  rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
  touch "$state/run/munged.ours"  # slurm-down.sh stops only a munged this script started
  for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
  munge_ok || die "munged started but 'munge -n | unmunge' fails (see /var/log/munge/munged.log)"
fi

# --- slurm.conf for this host --------------------------------------------------------------------
node_line=$(slurmd -C | head -1)            # NodeName=host CPUs=.. Boards=.. ... RealMemory=..
node=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<< "$node_line")
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<< "$node_line")
mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<< "$node_line")
[ -n "$node" ] && [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot read this host from 'slurmd -C': $node_line"
new=$(cat <<EOF
$marker (cluster/slurm-up.sh); regenerated at each bring-up, do not edit
ClusterName=hyperrnn-dev
SlurmctldHost=$node
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=3600
KillWait=30
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc=$state/log/jobcomp.txt
$node_line
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [ ! -e "$conf" ] || [ "$(cat "$conf")" != "$new" ]; then
  mkdir -p "$(dirname "$conf")"
  printf '%s\n' "$new" > "$conf.tmp.$$" && mv "$conf.tmp.$$" "$conf"
  changed=1
fi

# --- daemons --------------------------------------------------------------------------------------
if [ "$changed" = 1 ]; then  # a new configuration: running daemons must read it
  stop_pidfile "$state/run/slurmd.pid" slurmd
  stop_pidfile "$state/run/slurmctld.pid" slurmctld
fi
running "$state/run/slurmctld.pid" slurmctld || slurmctld || die "slurmctld did not start (see $state/log/slurmctld.log)"
for _ in $(seq 100); do scontrol ping 2> /dev/null | grep -q "is UP" && break; sleep 0.2; done
scontrol ping 2> /dev/null | grep -q "is UP" || die "slurmctld does not answer (see $state/log/slurmctld.log)"
running "$state/run/slurmd.pid" slurmd || slurmd || die "slurmd did not start (see $state/log/slurmd.log)"

# --- wait for the node ----------------------------------------------------------------------------
for _ in $(seq 150); do
  st=$(sinfo -h -n "$node" -o %T 2> /dev/null || true)
  case "$st" in
    idle*|mixed*|allocated*|completing*) break ;;
    down*|drain*|fail*) scontrol update NodeName="$node" State=RESUME 2> /dev/null || true ;;
  esac
  sleep 0.2
done
st=$(sinfo -h -n "$node" -o %T 2> /dev/null || true)
case "$st" in
  idle*|mixed*|allocated*|completing*) ;;
  *) die "node $node is '${st:-unknown}' (see $state/log/slurmd.log and slurmctld.log)" ;;
esac
echo "slurm-up: single-node Slurm is up: node $node ($cpus CPUs, $mem MB), partition debug, state $st"
