#!/usr/bin/env bash
# A single-node SLURM on this machine, without systemd: `.ci/slurm.sh up|down|status`.
#
#   up      install slurmctld, slurmd, slurm-client and munge with apt-get if missing, write
#           /etc/slurm/slurm.conf for this host (one node, CPUs and RealMemory from
#           `slurmd -C`, partition `debug`), start munged (as user munge), slurmctld and
#           slurmd in the background and wait until the node is idle. Idempotent: daemons
#           already running from an earlier `up` are kept.
#   down    stop exactly the daemons `up` started (their PIDs are in $STATE/*.pid).
#   status  print the daemons' PIDs and `sinfo`; exit 0 only if the controller answers.
#
# State, logs and PID files live in $AFFINITY_DIST_SLURM_STATE (default
# /tmp/affinity_dist_slurm). Needs root (CI and the dev machines run as root). See
# DEVELOPERS.md, "Single-node SLURM without systemd".
set -euo pipefail

STATE=${AFFINITY_DIST_SLURM_STATE:-/tmp/affinity_dist_slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by affinity_dist .ci/slurm.sh"
DAEMONS=(munged slurmctld slurmd)

log() { echo "slurm.sh: $*" >&2; }

# The PID in $STATE/NAME.pid if that process is alive and is NAME, else nothing.
running_pid() {
    local name=$1 pid
    [[ -f $STATE/$name.pid ]] || return 1
    pid=$(<"$STATE/$name.pid")
    [[ -n $pid && -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$name" ]] || return 1
    echo "$pid"
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

write_config() {
    if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        log "keeping $CONF (not written by this script)"
        return 0
    fi
    local host cpus mem
    host=$(hostname -s)
    # slurmd -C: "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105"
    cpus=$(slurmd -C | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' | head -1)
    mem=$(slurmd -C | sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' | head -1)
    mkdir -p /etc/slurm "$STATE/spool" "$STATE/ctld" "$STATE/log"
    cat >"$CONF" <<EOF
$MARKER; rewritten by every \`up\`.
ClusterName=affinity
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# no systemd, no cgroups: track job processes through /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
# cores and memory are consumable: a job asking for more than a node has is refused
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# no slurmdbd: finished jobs are appended to a text file that \`sacct -c\` reads
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.txt
ReturnToService=2
KillWait=5
MinJobAge=60
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.daemon.pid
SlurmdPidFile=$STATE/slurmd.daemon.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    log "wrote $CONF (node $host, $cpus CPUs, $mem MB)"
}

start_munge() {
    running_pid munged >/dev/null && return 0
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown -R munge:munge /etc/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    # -F: stay in the foreground; setpriv execs (no fork), so that $! is munged itself
    setsid setpriv --reuid=munge --regid=munge --init-groups -- /usr/sbin/munged -F \
        >"$STATE/log/munged.out" 2>&1 </dev/null &
    echo $! >"$STATE/munged.pid"
    for _ in $(seq 50); do
        [[ -S /run/munge/munge.socket.2 ]] && return 0
        sleep 0.1
    done
    log "munged did not start: $(tail -3 "$STATE/log/munged.out")"
    return 1
}

start_daemon() {  # NAME ARGS...: run NAME in the foreground (-D) of its own session
    local name=$1
    shift
    running_pid "$name" >/dev/null && return 0
    setsid "/usr/sbin/$name" -D "$@" >"$STATE/log/$name.out" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
}

up() {
    install_packages
    mkdir -p "$STATE/log"
    if ! running_pid slurmctld >/dev/null; then
        write_config
    fi
    start_munge
    if ! running_pid slurmctld >/dev/null && [[ -f $STATE/jobcomp.txt ]]; then
        # -c below: clean state, job ids start again at 1, so the finished-job records of
        # an earlier controller (sacct -c) would name other jobs: keep them aside
        mv "$STATE/jobcomp.txt" "$STATE/jobcomp.txt.old"
    fi
    start_daemon slurmctld -c
    start_daemon slurmd
    local host
    host=$(hostname -s)
    for _ in $(seq 150); do
        if scontrol ping 2>/dev/null | grep -q UP &&
            sinfo -h -n "$host" -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            log "up: $(sinfo -h -o '%P %t %c CPUs %m MB' | head -1)"
            return 0
        fi
        sleep 0.2
    done
    log "the node did not become idle; logs in $STATE/log"
    tail -5 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
    return 1
}

down() {
    local name pid
    for name in slurmd slurmctld munged; do  # reverse start order
        if pid=$(running_pid "$name"); then
            kill "$pid"
            for _ in $(seq 50); do
                [[ -d /proc/$pid ]] || break
                sleep 0.1
            done
            [[ -d /proc/$pid ]] && kill -9 "$pid"
            log "stopped $name ($pid)"
        fi
        rm -f "$STATE/$name.pid"
    done
}

status() {
    local name pid ok=0
    for name in "${DAEMONS[@]}"; do
        if pid=$(running_pid "$name"); then echo "$name: running ($pid)"; else echo "$name: not running"; fi
    done
    if command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
        sinfo
    else
        echo "controller: not answering"
        ok=1
    fi
    return $ok
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
