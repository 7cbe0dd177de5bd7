# Shared by slurm-up.sh, slurm-down.sh and slurm-status.sh (sourced, not run): where the dev
# cluster keeps its state, and small helpers for its daemons.
state=${HYPERRNN_SLURM_DIR:-/var/lib/hyperrnn-slurm}
conf=/etc/slurm/slurm.conf
marker="# hyperrnn single-node development cluster"
me=$(basename "$0" .sh)

die() { echo "$me: $*" >&2; exit 1; }

munge_ok() { munge -n 2> /dev/null | unmunge > /dev/null 2>&1; }

# running PIDFILE NAME: the pid file names a live process called NAME
running() {
  local pid
  pid=$(cat "$1" 2> /dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null && [ "$(cat /proc/"$pid"/comm 2> /dev/null)" = "$2" ]
}

# stop_pidfile PIDFILE NAME: SIGTERM, then SIGKILL after 10 s; removes the pid file
stop_pidfile() {
  local pid
  if running "$1" "$2"; then
    pid=$(cat "$1")
    kill "$pid" 2> /dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2> /dev/null || true
  fi
  rm -f "$1"
}
