#!/usr/bin/env bash
# A single-node SLURM cluster, with accounting, for testing `snakemake --profile slurm`.
#
#   tests/slurm/cluster.sh start    install what is missing, write configs, start daemons
#   tests/slurm/cluster.sh stop     stop the daemons this script started (and only those)
#   tests/slurm/cluster.sh status   say what runs; exit 0 when the cluster is up
#
# Debian 12, as root, without systemd: daemons are started by hand, the way
# /work/shared/SLURM.md describes. See tests/slurm/README.md for what this changes.
#
# Environment:
#   ANTIDOTE_SLURM_STATE  state directory (default /var/lib/antidote-slurm-test)
#   ANTIDOTE_SLURM_WAIT   seconds to wait for each daemon / readiness check (default 60)

set -euo pipefail

# Our own commands must talk to the cluster we configure, which lives at the
# default /etc/slurm/slurm.conf: the slurm-jobstep plugin strips SLURM_CONF before
# its inner srun, so a config anywhere else would not be seen inside jobs.
unset SLURM_CONF

CLUSTER_NAME=antidote
# Two partitions, as on most GPU clusters: CPU jobs to `cpu` (the default), model jobs to `gpu`.
# The one node is in both, so both schedule on it; sacct's Partition tells where each job went.
CPU_PARTITION=cpu
GPU_PARTITION=gpu
HOST=$(hostname -s)
STATE=${ANTIDOTE_SLURM_STATE:-/var/lib/antidote-slurm-test}
WAIT=${ANTIDOTE_SLURM_WAIT:-60}
PIDS=$STATE/pids            # "pid starttime" of each daemon WE started: what stop may kill
RUN=$STATE/run              # the daemons' own pid files
LOG=$STATE/log
MARKER="# Written by tests/slurm/cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
DB_NAME=slurm_acct_db
DB_USER=slurm

T0=$SECONDS
say()  { printf '[cluster.sh %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
die()  { printf 'cluster.sh: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Preconditions
# ---------------------------------------------------------------------------
require_root_debian() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts system daemons)"
    if [[ ! -f /etc/debian_version ]] || ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
        die "needs Debian (tested on Debian 12) with apt-get and dpkg-query; this machine has not"
    fi
}

# ---------------------------------------------------------------------------
# Process bookkeeping. A daemon is "ours" when $PIDS/NAME.pid holds its pid AND
# its start time (field 22 of /proc/PID/stat): a pid reused after a crash or
# reboot then never matches, so stop cannot kill a stranger.
# ---------------------------------------------------------------------------
starttime() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }

record() {  # record NAME PID: remember that we started it
    echo "$2 $(starttime "$2")" > "$PIDS/$1.pid"
}

our_pid() {  # our_pid NAME: print the pid if the daemon we started still runs
    local f=$PIDS/$1.pid pid st
    [[ -f $f ]] || return 1
    read -r pid st < "$f" || return 1
    if [[ -n $pid && -n $st && $(starttime "$pid") == "$st" ]]; then
        echo "$pid"
    else
        rm -f "$f"   # stale: the process is gone
        return 1
    fi
}

read_pidfile() {  # read_pidfile FILE: wait for a daemon's own pid file, print the pid
    local i
    for ((i = 0; i < WAIT * 2; i++)); do
        if [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; then cat "$1"; return 0; fi
        sleep 0.5
    done
    return 1
}

wait_for() {  # wait_for DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local desc=$1 i; shift
    for ((i = 0; i < WAIT * 2; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "timed out after ${WAIT}s waiting for $desc (logs: $LOG)"
}

stop_pid() {  # stop_pid NAME PID: SIGTERM, wait, SIGKILL as a last resort
    local name=$1 pid=$2 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    say "$name (pid $pid) ignored SIGTERM for 30s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------
install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && { say "packages already installed"; return; }

    say "installing: ${missing[*]}"
    # Without systemd, package scripts would start the daemons through /etc/init.d
    # and those would then not be ours to stop. A policy-rc.d that exits 101
    # forbids that; add one only for the install if the machine has none (Docker
    # images already ship one).
    local own_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ -n $own_policy ]]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
    say "packages installed"
}

# ---------------------------------------------------------------------------
# Config files. write_file only replaces a file whose content changed, and says
# so through its exit status; a file someone else wrote (no marker) is backed up
# to $STATE/backup first, once.
# ---------------------------------------------------------------------------
write_file() {  # write_file PATH MODE < content; returns 0 if the file changed
    local path=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat > "$tmp"
    if [[ -f $path ]] && cmp -s "$tmp" "$path"; then rm -f "$tmp"; chmod "$mode" "$path"; return 1; fi
    if [[ -f $path ]] && ! grep -qF "$MARKER" "$path" && [[ ! -e $STATE/backup/$(basename "$path") ]]; then
        cp -p "$path" "$STATE/backup/"
        say "backed up the existing $path to $STATE/backup/"
    fi
    install -m "$mode" "$tmp" "$path"
    rm -f "$tmp"
    return 0
}

SLURM_CONF_CHANGED=0
DBD_CONF_CHANGED=0

write_configs() {
    mkdir -p /etc/slurm

    local cpus mem_total_mb real_mb
    cpus=$(nproc)
    # RealMemory must not exceed what slurmd itself measures, or the node comes up
    # INVALID. Leave 10% (at least 512 MB) for the OS and the daemons.
    mem_total_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
    real_mb=$(( mem_total_mb - (mem_total_mb / 10 > 512 ? mem_total_mb / 10 : 512) ))
    (( real_mb > 0 )) || die "too little memory (${mem_total_mb} MB) for a test cluster"

    if write_file /etc/slurm/slurm.conf 644 <<EOF; then SLURM_CONF_CHANGED=1; fi
$MARKER -- rewritten on each start.
ClusterName=$CLUSTER_NAME
# NodeAddr/ControlAddr pinned to loopback: no dependence on DNS for the host name.
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none

StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log

# No cgroups in containers: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux

SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A node that went DOWN (e.g. slurmd restarted) comes back by itself.
ReturnToService=2
# Trust this file over detected hardware: nproc and MemTotal may differ from
# what slurmd counts in a container, which would otherwise mark the node INVALID.
SlurmdParameters=config_overrides

# Accounting through slurmdbd, as on production clusters: the Snakemake SLURM
# plugin polls job states with sacct. gres/gpu is not a default TRES; without it
# sacct's AllocTRES would not show the GPU a job got.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
# Keep each job's --comment in the database: the Snakemake plugin writes the
# rule and wildcards there (sacct -o Comment), and tests match jobs to rules by it.
AccountingStoreFlags=job_comment
JobAcctGatherFrequency=30

# Two stand-in GPUs (see gres.conf) so that sbatch --gpus=1 jobs schedule, two at a time.
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb Gres=gpu:2 State=UNKNOWN
PartitionName=$CPU_PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=$GPU_PARTITION Nodes=$HOST MaxTime=INFINITE State=UP
EOF

    # File=/dev/null, /dev/zero: without a device file slurmd reports 0 GPUs and
    # the node is INVALID ("gres/gpu count reported lower than configured").
    if write_file /etc/slurm/gres.conf 644 <<EOF; then SLURM_CONF_CHANGED=1; fi
$MARKER -- rewritten on each start.
AutoDetect=off
NodeName=$HOST Name=gpu File=/dev/null
NodeName=$HOST Name=gpu File=/dev/zero
EOF

    # The database password: made once, kept (mode 600) so restarts agree with the DB.
    if [[ ! -s $STATE/dbpass ]]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$STATE/dbpass")
    fi
    # slurmdbd refuses to start unless its config (it holds the password) is mode 600.
    if write_file /etc/slurm/slurmdbd.conf 600 <<EOF; then DBD_CONF_CHANGED=1; fi
$MARKER -- rewritten on each start.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$(cat "$STATE/dbpass")
StorageLoc=$DB_NAME
EOF
}

# ---------------------------------------------------------------------------
# Daemons, in dependency order: munge (auth) -> MariaDB -> slurmdbd ->
# slurmctld -> slurmd. Each start_* leaves a running daemon alone.
# ---------------------------------------------------------------------------
start_munge() {
    if our_pid munged >/dev/null; then say "munged already running (ours)"; return; fi
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged already running, not started by this script: using it, stop will leave it"
        return
    fi
    # /run is a tmpfs on real machines: recreate the socket dir on every start.
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge /etc/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    fi
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged
    local pid
    pid=$(read_pidfile /run/munge/munged.pid) || die "munged did not start (see /var/log/munge/munged.log)"
    record munged "$pid"
    wait_for "munge" bash -c 'munge -n | unmunge'
    say "munged started"
}

mysql_up() { mysqladmin --protocol=socket ping >/dev/null 2>&1; }

start_mariadb() {
    if our_pid mysqld >/dev/null; then say "MariaDB already running (ours)"; return; fi
    if mysql_up; then
        say "MariaDB already running, not started by this script: using it, stop will leave it"
        return
    fi
    install -d -o mysql -g mysql -m 755 /run/mysqld
    # The package normally initialises the data directory; do it if that was skipped.
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    # mysqld writes its log itself, as user mysql.
    touch "$LOG/mysqld.log"; chown mysql:mysql "$LOG/mysqld.log"
    rm -f /run/mysqld/mysqld.pid
    # No TCP port: slurmdbd reaches "localhost" through the Unix socket.
    # setsid: detach from this script's session so the server outlives it.
    setsid mysqld_safe --user=mysql --skip-networking --skip-syslog \
        --log-error="$LOG/mysqld.log" --pid-file=/run/mysqld/mysqld.pid \
        </dev/null >/dev/null 2>&1 &
    record mysqld_safe $!
    local pid
    pid=$(read_pidfile /run/mysqld/mysqld.pid) || die "MariaDB did not start (see $LOG/mysqld.log)"
    record mysqld "$pid"
    wait_for "MariaDB" mysql_up
    say "MariaDB started"
}

setup_database() {
    # root logs in through the Unix socket (unix_socket auth, Debian's default).
    # IF NOT EXISTS + ALTER USER: safe to run on every start.
    local pass; pass=$(cat "$STATE/dbpass")
    mysql --protocol=socket <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$pass';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurm_daemon() {  # start_slurm_daemon NAME: slurmdbd, slurmctld or slurmd
    local name=$1
    if our_pid "$name" >/dev/null; then say "$name already running (ours)"; return; fi
    # Another instance would hold the port and may use another config: refuse.
    pgrep -x "$name" >/dev/null && die "a $name not started by this script is running; stop it first"
    rm -f "$RUN/$name.pid"
    "$name"     # daemonises; its pid file path comes from our config
    local pid
    pid=$(read_pidfile "$RUN/$name.pid") || die "$name did not start (see $LOG/$name.log)"
    record "$name" "$pid"
    say "$name started"
}

register_cluster() {
    # Needed once per database: slurmctld reports jobs to slurmdbd under this name.
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
        sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
        say "registered cluster $CLUSTER_NAME with slurmdbd"
    fi
    # An account with root in it, as users have on production clusters, so that
    # slurm_account=$CLUSTER_NAME validates (the plugin checks with sacctmgr).
    if ! sacctmgr -n -P list account format=account | grep -qx "$CLUSTER_NAME"; then
        sacctmgr -i add account "$CLUSTER_NAME" Cluster="$CLUSTER_NAME" \
            Description="antidote test account" Organization=antidote >/dev/null
        sacctmgr -i add user root Account="$CLUSTER_NAME" Cluster="$CLUSTER_NAME" >/dev/null
        say "added account $CLUSTER_NAME with user root"
    fi
}

# The node's state (sinfo prints one line per partition it is in; the state is the node's).
node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1; }

node_ready() {
    case $(node_state) in
        idle|mixed|allocated) return 0 ;;
    esac
    return 1
}

wait_node_ready() {
    local i state resumed=
    for ((i = 0; i < WAIT * 2; i++)); do
        node_ready && return 0
        state=$(node_state || true)
        # A node drained or down in saved state (e.g. a job that could not be
        # killed at the last stop) would never return by itself: resume it once.
        if [[ -z $resumed && $state =~ ^(down|drain|drained|draining) ]] && (( i > 6 )); then
            scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
            resumed=1
        fi
        sleep 0.5
    done
    sinfo -R >&2 || true
    die "node $HOST is '$(node_state)', not idle, after ${WAIT}s (logs: $LOG)"
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
cmd_start() {
    require_root_debian
    install_packages
    mkdir -p "$PIDS" "$RUN" "$LOG" "$STATE/slurmctld" "$STATE/slurmd" "$STATE/backup"
    # World-readable dir: mysqld (user mysql) must reach $LOG. The one secret,
    # dbpass, is mode 600 itself.
    chmod 755 "$STATE"
    write_configs

    # A second start with the cluster up leaves it alone, unless a config file
    # changed (e.g. more memory): then restart the daemons that read it.
    if (( DBD_CONF_CHANGED )) && our_pid slurmdbd >/dev/null; then
        say "slurmdbd.conf changed: restarting slurmdbd"
        stop_one slurmdbd
    fi
    if (( SLURM_CONF_CHANGED )) && { our_pid slurmctld || our_pid slurmd; } >/dev/null; then
        say "slurm.conf/gres.conf changed: restarting slurmctld and slurmd"
        stop_one slurmd; stop_one slurmctld
    fi

    start_munge
    start_mariadb
    setup_database
    start_slurm_daemon slurmdbd
    wait_for "slurmdbd to answer sacctmgr" sacctmgr -n list cluster
    register_cluster
    start_slurm_daemon slurmctld
    wait_for "slurmctld to answer" scontrol ping
    start_slurm_daemon slurmd
    wait_node_ready
    wait_for "sacct to answer" sacct -n -X -S now-1minute
    say "cluster '$CLUSTER_NAME' is up: $(sinfo -h -o '%P %D %T %G %c CPUs %m MB' | paste -sd ';' -)"
}

stop_one() {  # stop_one NAME: stop the daemon if we started it
    local pid
    if pid=$(our_pid "$1"); then
        stop_pid "$1" "$pid"
        rm -f "$PIDS/$1.pid"
        say "$1 stopped"
    fi
}

cmd_stop() {
    require_root_debian
    [[ -d $PIDS ]] || { say "nothing to stop (no $PIDS)"; return; }
    # Cancel leftover jobs first: slurmstepd processes outlive slurmd otherwise.
    if our_pid slurmctld >/dev/null; then
        local jobs; jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            say "cancelling jobs: ${jobs//$'\n'/ }"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            sleep 2
        fi
    fi
    # Reverse dependency order, so no daemon loses what it talks to while running.
    stop_one slurmd
    stop_one slurmctld
    stop_one slurmdbd
    # TERM to mysqld is a clean shutdown; mysqld_safe then exits instead of restarting it.
    stop_one mysqld
    stop_one mysqld_safe
    stop_one munged
    say "stopped"
}

cmd_status() {
    local name pid down=0
    for name in munged mysqld_safe mysqld slurmdbd slurmctld slurmd; do
        if pid=$(our_pid "$name" 2>/dev/null); then
            printf '%-12s running (pid %s, started by cluster.sh)\n' "$name" "$pid"
        elif pgrep -x "$name" >/dev/null 2>&1 || { [[ $name == mysqld ]] && pgrep -x mariadbd >/dev/null 2>&1; }; then
            # e.g. a munged that was running before start: used, not ours to stop
            printf '%-12s running, NOT started by cluster.sh\n' "$name"
        else
            printf '%-12s not running\n' "$name"
            down=$((down + 1))
        fi
    done
    if command -v sinfo >/dev/null && sinfo >/dev/null 2>&1; then
        echo "--- sinfo"; sinfo
        echo "--- sacct answers: $(sacct -n -X -S now-1minute >/dev/null 2>&1 && echo yes || echo no)"
    fi
    if (( down == 0 )) && node_ready && sacct -n -X -S now-1minute >/dev/null 2>&1; then
        echo "cluster is up"
        return 0
    fi
    echo "cluster is not (fully) up"
    return 3   # LSB: "not running"
}

case ${1:-} in
    start)  cmd_start ;;
    stop)   cmd_stop ;;
    status) cmd_status ;;
    *)      echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
