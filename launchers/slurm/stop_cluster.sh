#!/usr/bin/env bash
# Stop the localhost SLURM cluster started by start_cluster.sh: cancel its jobs that are
# still pending or running (so no job processes outlive it), then stop slurmd, slurmctld
# and munged by the pids recorded in the state directory and wait for them to exit.
# Idempotent: exits 0 when nothing is running.
set -uo pipefail

STATE_DIR="${ALIGNSWEEP_SLURM_DIR:-/tmp/alignsweep-slurm}"
export SLURM_CONF="$STATE_DIR/slurm.conf"

log() { echo "[slurm-cluster] $*" >&2; }

alive() { # pid -> 0 if running; a zombie (exited, not yet reaped by init) counts as gone
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null && ! awk '{exit !($3 == "Z")}' "/proc/$1/stat" 2>/dev/null
}

read_pid() { # pidfile -> pid on stdout if that process is alive
    local f="$STATE_DIR/$1.pid" pid
    [ -s "$f" ] || return 1
    pid="$(tr -dc '0-9' <"$f")"
    # the pid must still belong to that daemon (not a process that reused the pid)
    alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
}

ctld_pid="$(read_pid slurmctld || true)"
if [ -n "$ctld_pid" ] && [ -f "$SLURM_CONF" ] && scontrol ping >/dev/null 2>&1; then
    jobs="$(squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED,RESIZING,STOPPED \
        -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')"
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        # KillWait=5: give the job steps time to be signalled and end
        for _ in $(seq 60); do
            [ -z "$(squeue -h -t RUNNING,COMPLETING,CONFIGURING -o '%A' 2>/dev/null)" ] && break
            sleep 0.25
        done
    fi
fi

stopped=()
for d in slurmd slurmctld munged; do
    pid="$(read_pid "$d" || true)"
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then
            log "$d (pid $pid) did not exit after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
        fi
        stopped+=("$d:$pid")
    fi
    rm -f "$STATE_DIR/$d.pid"
done

if [ "${#stopped[@]}" -gt 0 ]; then
    log "stopped ${stopped[*]}"
else
    log "nothing was running (state dir $STATE_DIR)"
fi
exit 0
