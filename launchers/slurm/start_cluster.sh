#!/usr/bin/env bash
# Start a single-node SLURM cluster on localhost (munged, slurmctld, slurmd as plain
# background processes; no systemd, no cgroups). Idempotent: if the cluster this script
# started is already up and healthy it does nothing.
#
#   bash launchers/slurm/start_cluster.sh && source "${ALIGNSWEEP_SLURM_DIR:-/tmp/alignsweep-slurm}/env.sh"
#
# Environment:
#   ALIGNSWEEP_SLURM_DIR      state directory (default /tmp/alignsweep-slurm)
#   ALIGNSWEEP_SLURM_TIMEOUT  seconds to wait for the node to become idle (default 60)
#   ALIGNSWEEP_SLURM_PORT     slurmctld port; slurmd uses PORT+1 (default 6817)
# Needs root (package install, SlurmUser=root).
set -euo pipefail

STATE_DIR="${ALIGNSWEEP_SLURM_DIR:-/tmp/alignsweep-slurm}"
TIMEOUT="${ALIGNSWEEP_SLURM_TIMEOUT:-60}"
CTLD_PORT="${ALIGNSWEEP_SLURM_PORT:-6817}"
SLURMD_PORT=$((CTLD_PORT + 1))
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "[slurm-cluster] $*" >&2; }
die() { echo "[slurm-cluster] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, runs slurmd as SlurmUser=root)"
case "$STATE_DIR" in /*) ;; *) die "ALIGNSWEEP_SLURM_DIR must be an absolute path: $STATE_DIR";; esac
# a unix socket path is limited to 107 bytes
[ "${#STATE_DIR}" -le 80 ] || die "ALIGNSWEEP_SLURM_DIR is too long for the munge socket path (max 80 chars)"

CONF="$STATE_DIR/slurm.conf"
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
BIN_DIR="$STATE_DIR/bin"
LOG_DIR="$STATE_DIR/log"
export SLURM_CONF="$CONF"

pid_alive() { # pidfile -> 0 if the process it names is alive
    local f="$1" pid
    [ -s "$f" ] || return 1
    pid="$(tr -dc '0-9' <"$f")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

node_ready() { # the node answers and is usable (idle, or running jobs)
    local st
    st="$(sinfo -h -n localhost -o '%T' 2>/dev/null | head -n1)" || return 1
    case "$st" in idle|mixed|allocated|completing) return 0;; *) return 1;; esac
}

healthy() {
    [ -f "$CONF" ] && pid_alive "$STATE_DIR/munged.pid" && pid_alive "$STATE_DIR/slurmctld.pid" \
        && pid_alive "$STATE_DIR/slurmd.pid" && scontrol ping >/dev/null 2>&1 && node_ready
}

write_env() {
    cat >"$STATE_DIR/env.sh" <<EOF
# source this file to use the alignsweep localhost SLURM cluster
export ALIGNSWEEP_SLURM_DIR="$STATE_DIR"
export SLURM_CONF="$CONF"
case ":\$PATH:" in *":$BIN_DIR:"*) ;; *) export PATH="$BIN_DIR:\$PATH";; esac
EOF
}

# ---------------------------------------------------------------- already running?
if command -v slurmctld >/dev/null 2>&1 && healthy; then
    write_env
    log "cluster already running (state dir $STATE_DIR)"
    echo "export SLURM_CONF=$CONF PATH=$BIN_DIR:\$PATH   # or: source $STATE_DIR/env.sh"
    exit 0
fi

# ---------------------------------------------------------------- packages
missing=()
for pkg in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    # keep the packages' init scripts from starting daemons with the default config
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"; } >"/tmp/alignsweep-slurm-apt.$$.log" 2>&1 || rc=$?
    [ "$made_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ "$rc" -ne 0 ]; then
        tail -n 30 "/tmp/alignsweep-slurm-apt.$$.log" >&2
        die "apt-get install ${missing[*]} failed (full log: /tmp/alignsweep-slurm-apt.$$.log)"
    fi
    rm -f "/tmp/alignsweep-slurm-apt.$$.log"
fi

# ---------------------------------------------------------------- stop leftovers
# a partial or unhealthy cluster from an earlier run: stop what is left of it first
bash "$HERE/stop_cluster.sh" >/dev/null 2>&1 || true

# ---------------------------------------------------------------- directories, config
mkdir -p "$STATE_DIR" "$LOG_DIR" "$STATE_DIR/ctld" "$STATE_DIR/spool" "$BIN_DIR" "$MUNGE_DIR"
chmod 755 "$STATE_DIR"
chmod 700 "$MUNGE_DIR"

ncpu="$(nproc)"
mem_mib=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
# headroom for the OS and the daemons: 10%, at least 512 MiB
headroom=$(( mem_mib / 10 )); [ "$headroom" -ge 512 ] || headroom=512
real_mem=$(( mem_mib - headroom ))
[ "$real_mem" -ge 256 ] || real_mem=256
def_mem=$(( real_mem / ncpu ))

cat >"$CONF" <<EOF
# written by launchers/slurm/start_cluster.sh; rewritten on every (re)start
ClusterName=alignsweep
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool/slurmd-%n
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no systemd, no cgroups
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
LaunchParameters=use_interactive_step
SlurmdParameters=config_overrides
# scheduling: start jobs at once, reject impossible requests at submission
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
EnforcePartLimits=ALL
GresTypes=gpu
# finished jobs stay visible to squeue/scontrol (and the sacct shim) for an hour
MinJobAge=3600
MaxJobCount=100000
KillWait=5
JobRequeue=1
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
Waittime=0
DefMemPerCPU=$def_mem
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$ncpu RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

install -m 755 "$HERE/sacct_shim.sh" "$BIN_DIR/sacct"
write_env

# ---------------------------------------------------------------- munge
if [ ! -s "$MUNGE_DIR/munge.key" ]; then
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$MUNGE_DIR/munge.key" --force >/dev/null
    else
        dd if=/dev/urandom bs=1 count=1024 of="$MUNGE_DIR/munge.key" 2>/dev/null
    fi
fi
chmod 600 "$MUNGE_DIR/munge.key"
rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"

t0=$(date +%s)
log "starting munged, slurmctld, slurmd (state dir $STATE_DIR)"
munged --force --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$STATE_DIR/munged.pid" --log-file="$LOG_DIR/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed" </dev/null >>"$LOG_DIR/munged.log" 2>&1 \
    || die "munged failed to start; see $LOG_DIR/munged.log"
for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
[ -S "$MUNGE_SOCKET" ] || die "munged socket $MUNGE_SOCKET did not appear; see $LOG_DIR/munged.log"

# the daemons fork into the background themselves and write their pid files
slurmctld -f "$CONF" </dev/null >>"$LOG_DIR/slurmctld.out" 2>&1 \
    || die "slurmctld failed to start; see $LOG_DIR/slurmctld.log"
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
slurmd -f "$CONF" -N localhost </dev/null >>"$LOG_DIR/slurmd.out" 2>&1 \
    || die "slurmd failed to start; see $LOG_DIR/slurmd.log"

# ---------------------------------------------------------------- wait for the node
deadline=$(( $(date +%s) + TIMEOUT ))
until node_ready; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        sinfo -N -l >&2 2>&1 || true
        tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
        die "node localhost not idle after ${TIMEOUT}s (logs in $LOG_DIR)"
    fi
    # a node left DOWN/DRAIN by an earlier run: bring it back
    case "$(sinfo -h -n localhost -o '%T' 2>/dev/null | head -n1)" in
        down*|drain*|fail*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true;;
    esac
    sleep 0.3
done
for d in munged slurmctld slurmd; do
    pid_alive "$STATE_DIR/$d.pid" || die "$d is not running; see $LOG_DIR"
done
log "cluster up in $(( $(date +%s) - t0 ))s: $(sinfo -h -o '%P %D %T %c cpus %m MiB')"
echo "export SLURM_CONF=$CONF PATH=$BIN_DIR:\$PATH   # or: source $STATE_DIR/env.sh"
