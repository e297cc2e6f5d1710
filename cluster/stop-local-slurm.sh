#!/usr/bin/env bash
# Stop the single-node SLURM started by cluster/start-local-slurm.sh.
#
# Stops slurmd, slurmctld and munged through their pid files (never by process name).
# Running it when nothing is up is fine. Pending/running jobs are killed with the daemons.
set -euo pipefail

RUN_DIR=/run/slurm
MUNGE_RUN=/run/munge

log() { printf '[stop-local-slurm] %s\n' "$*"; }

stop_pidfile() {
    # stop_pidfile NAME PIDFILE
    local name=$1 file=$2 pid
    if [ ! -f "$file" ]; then
        log "$name: not running (no $file)"
        return 0
    fi
    pid="$(cat "$file")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) did not exit in 10s: sending SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
        log "$name (pid $pid) stopped"
    else
        log "$name: stale pid file $file"
    fi
    rm -f "$file"
}

[ "$(id -u)" -eq 0 ] || { echo "[stop-local-slurm] ERROR: must run as root" >&2; exit 1; }
stop_pidfile slurmd "$RUN_DIR/slurmd.pid"
stop_pidfile slurmctld "$RUN_DIR/slurmctld.pid"
stop_pidfile munged "$MUNGE_RUN/munged.pid"
