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
case "$STATE_DIR" in *[[:space:]]*) die "ALIGNSWEEP_SLURM_DIR must not contain whitespace: '$STATE_DIR'";; esac
# a unix socket path is limited to 107 bytes
[ "${#STATE_DIR}" -le 80 ] || die "ALIGNSWEEP_SLURM_DIR is too long for the munge socket path (max 80 chars)"

CONF="$STATE_DIR/slurm.conf"
MUNGE_DIR="$STATE_DIR/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
BIN_DIR="$STATE_DIR/bin"
LOG_DIR="$STATE_DIR/log"
export SLURM_CONF="$CONF"

pid_alive() { # pidfile -> 0 if the process it names is alive (zombies count as dead)
    local f="$1" pid
    [ -s "$f" ] || return 1
    pid="$(tr -dc '0-9' <"$f")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
        && ! awk '{exit !($3 == "Z")}' "/proc/$pid/stat" 2>/dev/null \
        && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(basename "$f" .pid)" ]
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

write_sacct_shim() {
    cat >"$BIN_DIR/sacct" <<'SHIM'
#!/usr/bin/env bash
# sacct shim for the alignsweep localhost SLURM cluster (written by start_cluster.sh).
# The cluster runs without slurmdbd, so the real sacct has nothing to read. This answers
# from what slurmctld still remembers (squeue -t all; finished jobs stay MinJobAge=3600 s),
# printing the jobs' real SLURM states in sacct's output formats. Only job allocations are
# listed (as with sacct -X): no .batch/.extern step lines. Jobs slurmctld has forgotten
# are not listed (header only, exit 0), as real sacct does for unknown ids.
set -uo pipefail

fmt="JobID,JobName,Partition,Account,AllocCPUS,State,ExitCode"
jobs=""; states=""; parsable=0; header=1

usage() {
    cat <<'EOF'
sacct (alignsweep shim): answers from squeue/scontrol for jobs slurmctld still knows.
Supported: -j/--jobs LIST, -o/--format/--fields LIST, -P/--parsable2, -p/--parsable,
-n/--noheader, -s/--state LIST, -b/--brief; -X, -a, -D, -L, -S, -E, -u, ... are accepted and ignored.
Fields: JobID JobIDRaw JobName State NodeList Partition Account User AllocCPUS NCPUS NNodes
ReqMem Submit Start End Elapsed Timelimit ExitCode Reason WorkDir Priority QOS ArrayJobID ArrayTaskID
EOF
}

# split combined short flags such as -XP or -nP
args=()
for a in "$@"; do
    if [[ "$a" =~ ^-[XPpnaDLbl]{2,}$ ]]; then
        for ((i = 1; i < ${#a}; i++)); do args+=("-${a:i:1}"); done
    else
        args+=("$a")
    fi
done
set -- ${args[@]+"${args[@]}"}

while [ $# -gt 0 ]; do
    a="$1"; shift
    case "$a" in
        -o|--format|--fields) fmt="${1:-}"; shift || true;;
        --format=*|--fields=*) fmt="${a#*=}";;
        -o*) fmt="${a#-o}";;
        -j|--jobs) jobs="$jobs,${1:-}"; shift || true;;
        --jobs=*) jobs="$jobs,${a#*=}";;
        -j*) jobs="$jobs,${a#-j}";;
        -s|--state) states="$states,${1:-}"; shift || true;;
        --state=*) states="$states,${a#*=}";;
        -P|--parsable2) parsable=2;;
        -p|--parsable) parsable=1;;
        -n|--noheader) header=0;;
        -b|--brief) fmt="JobID,State,ExitCode";;
        -X|--allocations|-a|--allusers|-D|--duplicates|-L|--allclusters|-l|--long|--array|--noconvert) ;;
        -S|-E|-u|-A|-M|-r|-N|-q|-k|-K|-i|-I|-T|-C|-W|-x|--starttime|--endtime|--user|--uid|--account|--accounts|\
        --clusters|--cluster|--partition|--nodelist|--name|--qos|--timelimit-min|--timelimit-max|--delimiter|\
        --units|--constraints|--wckeys|--reason|--group|--gid) shift || true;;
        --*=*) ;;
        -h|--help|--usage) usage; exit 0;;
        -V|--version) echo "slurm (alignsweep sacct shim) $(sinfo -V 2>/dev/null | awk '{print $2}')"; exit 0;;
        *) echo "sacct (alignsweep shim): ignoring unsupported argument '$a'" >&2;;
    esac
done

# every squeue field the shim can report, separated by \037
SEP=$'\037'
sq_fmt="%A${SEP}%F${SEP}%K${SEP}%i${SEP}%T${SEP}%N${SEP}%j${SEP}%P${SEP}%a${SEP}%u${SEP}%C${SEP}%D${SEP}%m${SEP}%V${SEP}%S${SEP}%e${SEP}%M${SEP}%l${SEP}%r${SEP}%Z${SEP}%Q${SEP}%q"
queue="$(squeue --array -t all -h -o "$sq_fmt" 2>/dev/null | sort -t "$SEP" -k2,2n -k3,3n)" || {
    echo "sacct (alignsweep shim): squeue failed; is the cluster running (SLURM_CONF=${SLURM_CONF:-unset})?" >&2
    exit 1
}
exits=""
if [[ ",${fmt,,}," == *exitcode* ]]; then
    # JobId=N ... ExitCode=a:b, one line per job (array tasks included)
    exits="$(scontrol -o show job 2>/dev/null | sed -n 's/^JobId=\([0-9]*\) .* ExitCode=\([0-9:]*\).*/\1 \2/p')"
fi

awk -v FS="$SEP" -v fmt="$fmt" -v jobs="$jobs" -v states="$states" -v parsable="$parsable" \
    -v header="$header" -v exits="$exits" '
BEGIN {
    # sacct field name (lower case) -> canonical name, squeue column
    split("jobid:JobID:4 jobidraw:JobIDRaw:1 state:State:5 nodelist:NodeList:6 jobname:JobName:7 " \
          "partition:Partition:8 account:Account:9 user:User:10 alloccpus:AllocCPUS:11 ncpus:NCPUS:11 " \
          "nnodes:NNodes:12 reqmem:ReqMem:13 submit:Submit:14 start:Start:15 end:End:16 elapsed:Elapsed:17 " \
          "timelimit:Timelimit:18 reason:Reason:19 workdir:WorkDir:20 priority:Priority:21 qos:QOS:22 " \
          "arrayjobid:ArrayJobID:2 arraytaskid:ArrayTaskID:3 exitcode:ExitCode:0 derivedexitcode:DerivedExitCode:0",
          defs, " ")
    for (i in defs) { split(defs[i], d, ":"); canon[d[1]] = d[2]; col[d[1]] = d[3] }
    nf = split(fmt, f, ",")
    for (i = 1; i <= nf; i++) {
        name = f[i]; width[i] = 10
        if (match(name, /%-?[0-9]+$/)) { width[i] = substr(name, RSTART + 1) + 0; name = substr(name, 1, RSTART - 1) }
        if (width[i] < 0) width[i] = -width[i]
        key[i] = tolower(name)
        title[i] = (key[i] in canon) ? canon[key[i]] : name
        if (key[i] == "jobid" && width[i] == 10) width[i] = 12
    }
    nj = split(jobs, j, ",")
    for (i = 1; i <= nj; i++) {
        t = j[i]; sub(/\..*$/, "", t)
        if (t == "") continue
        want[t] = 1; nwant++
    }
    abbrev["PD"] = "PENDING"; abbrev["R"] = "RUNNING"; abbrev["CD"] = "COMPLETED"; abbrev["F"] = "FAILED"
    abbrev["CA"] = "CANCELLED"; abbrev["TO"] = "TIMEOUT"; abbrev["PR"] = "PREEMPTED"; abbrev["NF"] = "NODE_FAIL"
    abbrev["OOM"] = "OUT_OF_MEMORY"; abbrev["RQ"] = "REQUEUED"; abbrev["S"] = "SUSPENDED"; abbrev["BF"] = "BOOT_FAIL"
    abbrev["DL"] = "DEADLINE"; abbrev["RS"] = "RESIZING"; abbrev["RV"] = "REVOKED"; abbrev["CG"] = "COMPLETING"
    ns = split(states, s, ",")
    for (i = 1; i <= ns; i++) {
        t = toupper(s[i]); if (t == "") continue
        if (t in abbrev) t = abbrev[t]
        wstate[t] = 1; nwstate++
    }
    ne = split(exits, e, "\n")
    for (i = 1; i <= ne; i++) { split(e[i], p, " "); ec[p[1]] = p[2] }
    if (header) {
        line = ""
        for (i = 1; i <= nf; i++) line = line (i > 1 ? (parsable ? "|" : " ") : "") cell(title[i], i)
        print line (parsable == 1 ? "|" : "")
        if (!parsable) {
            line = ""
            for (i = 1; i <= nf; i++) { dash = sprintf("%" width[i] "s", ""); gsub(/ /, "-", dash); line = line (i > 1 ? " " : "") dash }
            print line
        }
    }
}
function cell(v, i) {
    if (parsable) return v
    if (length(v) > width[i]) v = substr(v, 1, width[i] - 1) "+"
    return (key[i] ~ /^(jobid|jobidraw|jobname|state|nodelist|partition|account|user|reason|workdir|qos)$/) \
        ? sprintf("%-" width[i] "s", v) : sprintf("%" width[i] "s", v)
}
function elapsed(v,   a, n, d, h, m, s) {   # squeue M:SS / H:MM:SS / D-HH:MM:SS -> sacct [D-]HH:MM:SS
    d = ""
    if (index(v, "-")) { d = substr(v, 1, index(v, "-")); v = substr(v, index(v, "-") + 1) }
    n = split(v, a, ":")
    if (n == 2) { h = 0; m = a[1]; s = a[2] } else if (n == 3) { h = a[1]; m = a[2]; s = a[3] } else return v
    return sprintf("%s%02d:%02d:%02d", d, h, m, s)
}
{
    raw = $1; arr = $2; task = $3; id = $4; state = $5
    if (task == "N/A") task = ""
    if (nwant) {
        ok = (raw in want) || (arr in want) || (task != "" && (arr "_" task) in want)
        if (!ok) next
    }
    if (nwstate && !(state in wstate)) next
    line = ""
    for (i = 1; i <= nf; i++) {
        k = key[i]; v = ""
        if (k == "exitcode") v = (raw in ec) ? ec[raw] : "0:0"
        else if (k == "derivedexitcode") v = "0:0"
        else if (k in col) {
            v = $(col[k])
            if (v == "(null)") v = ""
            if (k == "nodelist" && v == "") v = "None assigned"
            else if (k == "arraytaskid" && v == "N/A") v = ""
            else if (k == "arrayjobid" && task == "") v = ""
            else if ((k == "start" || k == "end") && (v == "N/A" || v == "")) v = "Unknown"
            else if (k == "elapsed" || k == "timelimit") v = elapsed(v)
            else if (k == "reqmem" && v ~ /^[0-9]+[KMGT]?$/) { if (v ~ /^[0-9]+$/) v = v "M" }
        }
        line = line (i > 1 ? (parsable ? "|" : " ") : "") cell(v, i)
    }
    print line (parsable == 1 ? "|" : "")
}' <<<"$queue"
SHIM
    chmod 755 "$BIN_DIR/sacct"
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
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || missing+=("$pkg")
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
chmod 755 "$MUNGE_DIR"   # the socket must be reachable by job users; the key itself is 0600

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
SlurmdSpoolDir=$STATE_DIR/spool
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
MailProg=/bin/true
SwitchType=switch/none
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

write_sacct_shim
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
scontrol ping >/dev/null 2>&1 || {
    tail -n 20 "$LOG_DIR/slurmctld.log" >&2 2>/dev/null || true
    die "slurmctld does not answer on port $CTLD_PORT (port in use? set ALIGNSWEEP_SLURM_PORT); see $LOG_DIR/slurmctld.log"
}
slurmd -f "$CONF" -N localhost </dev/null >>"$LOG_DIR/slurmd.out" 2>&1 \
    || die "slurmd failed to start; see $LOG_DIR/slurmd.log"

# ---------------------------------------------------------------- wait for the node
registered() { # the slurmd started above has registered (node state restored from an
    # earlier run can read idle before that)
    local t
    t="$(scontrol show node localhost 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p')"
    [ -n "$t" ] && [ "$t" != "None" ] && [ "$(date -d "$t" +%s 2>/dev/null || echo 0)" -ge $(( t0 - 1 )) ]
}
deadline=$(( $(date +%s) + TIMEOUT ))
until registered && node_ready; do
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
