#!/usr/bin/env bash
# Status of the single-node development Slurm (cluster/slurm-up.sh): whether munged, slurmctld and
# slurmd run, the node and partition (sinfo) and the queue (squeue). Exit 0 when all three
# daemons run and the controller answers, 1 otherwise. Read-only.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/slurm-common.sh"
ok=0
line() { printf '%-10s %s\n' "$1" "$2"; }
if munge_ok; then line munged "up"; else line munged "down"; ok=1; fi
for d in slurmctld slurmd; do
  if running "$state/run/$d.pid" "$d"; then line "$d" "up (pid $(cat "$state/run/$d.pid"))"
  else line "$d" "down"; ok=1; fi
done
if [ "$ok" = 0 ] && scontrol ping 2> /dev/null | grep -q "is UP"; then
  sinfo -o "%P %a %D %T %c %m %N"
  squeue -o "%.10i %.12j %.8T %.10M %.10l %.6D %R"
else
  ok=1
fi
exit $ok
