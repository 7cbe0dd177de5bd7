#!/usr/bin/env bash
# Stops the single-node development Slurm that cluster/slurm-up.sh started: cancels every job on it
# (waits up to KillWait + 10 s for them to end), stops slurmd and slurmctld, kills any slurmstepd
# left behind, and stops munged if slurm-up.sh started it. Idempotent: with nothing running it
# does nothing. Keeps /etc/slurm/slurm.conf and the state directory ($HYPERRNN_SLURM_DIR, default
# /var/lib/hyperrnn-slurm) with its logs.
# Leaves out: a Slurm that slurm-up.sh did not configure (it refuses), a munged it did not start.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then exec sudo -E bash "$0" "$@"; fi
here=$(cd "$(dirname "$0")" && pwd)
source "$here/slurm-common.sh"

if [ -e "$conf" ] && ! grep -q "^$marker" "$conf"; then
  die "$conf was not written by hyperrnn (a real cluster's?); not stopping anything"
fi
if running "$state/run/slurmctld.pid" slurmctld; then
  jobs=$(squeue -h -o %i 2> /dev/null || true)
  if [ -n "$jobs" ]; then
    scancel $jobs 2> /dev/null || true
    for _ in $(seq 400); do
      [ -z "$(squeue -h -t PD,R,CG,S,CF,RQ,RS,SE -o %i 2> /dev/null)" ] && break
      sleep 0.1
    done
  fi
fi
stop_pidfile "$state/run/slurmd.pid" slurmd
stop_pidfile "$state/run/slurmctld.pid" slurmctld
pkill -x slurmstepd 2> /dev/null && sleep 0.5 && pkill -9 -x slurmstepd 2> /dev/null || true
if [ -e "$state/run/munged.ours" ]; then
  stop_pidfile /run/munge/munged.pid munged
  rm -f "$state/run/munged.ours"
fi
left=""  # one name per pgrep: a pattern over 15 characters (the comm length) matches nothing
for d in slurmctld slurmd slurmstepd; do left+=$(pgrep -x -l "$d" || true); done
[ -z "$left" ] || die "still running: $left"
echo "slurm-down: stopped"
