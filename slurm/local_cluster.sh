#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for running sweeps through `launcher=slurm` and for
# the SLURM integration test (tests/test_slurm.py).
#
#   sudo slurm/local_cluster.sh up       install (Debian packages) if needed, configure, start
#   sudo slurm/local_cluster.sh status   daemons and node state
#   sudo slurm/local_cluster.sh down     cancel jobs, stop the daemons
#
# What it runs: munged (authentication), mariadb + slurmdbd (accounting: submitit reads the state of
# finished and cancelled jobs from sacct, and waits forever without it), slurmctld and slurmd, all as
# root and started directly (no systemd). slurm.conf is written from this machine's own `slurmd -C`;
# proctrack/linuxproc and task/none need no cgroups, so this works in a container. A job sees every
# core (task/none); lora-lab sets its torch threads from SLURM_CPUS_PER_TASK.
set -euo pipefail

CLUSTER=${LORA_LAB_SLURM_CLUSTER:-local}
PARTITION=${LORA_LAB_SLURM_PARTITION:-debug}
ETC=/etc/slurm
STATE=/var/lib/slurm-local
LOGS=/var/log/slurm-local
PIDS=/run/slurm-local
DB_USER=slurm
DB_PASS=${LORA_LAB_SLURM_DB_PASS:-lora-lab-local}

log() { echo "[local_cluster] $*" >&2; }
need_root() { [ "$(id -u)" = 0 ] || { echo "local_cluster.sh: run as root (sudo)" >&2; exit 2; }; }

install_packages() {
    local missing=()
    for bin in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct; do
        command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
    done
    [ ${#missing[@]} -eq 0 ] && return
    log "installing slurm-wlm, slurmdbd, munge, mariadb-server (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd munge mariadb-server mariadb-client >/dev/null
}

wait_for() {  # wait_for <seconds> <what> <command...>
    local n=$1 what=$2; shift 2
    for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    log "timed out waiting for $what"; return 1
}

running() { pgrep -x "$1" >/dev/null 2>&1; }

start_munge() {
    mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
    chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
    running munged || su -s /bin/sh munge -c "munged" 2>/dev/null || munged --force
    wait_for 20 munged munge -n
}

start_mariadb() {
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    running mariadbd || (mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
        --bind-address=127.0.0.1 >"$LOGS/mariadb.log" 2>&1 &)
    wait_for 60 mariadb mariadb -u root -e "select 1"
    mariadb -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
}

write_configs() {
    local host node
    host=$(hostname -s)
    # `slurmd -C` prints this machine's node line (CPUs, sockets, cores, threads, memory); keep
    # some memory back for the daemons and the submitting process.
    node=$(slurmd -C | head -1)
    local mem; mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    node=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/" <<<"$node")
    mkdir -p "$ETC" "$STATE/ctld" "$STATE/d" "$LOGS" "$PIDS"
    cat >"$ETC/slurm.conf" <<EOF
# Written by slurm/local_cluster.sh from \`slurmd -C\` on $host.
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$ETC/slurmdbd.conf" <<EOF
# Written by slurm/local_cluster.sh.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
LogFile=$LOGS/slurmdbd.log
PidFile=$PIDS/slurmdbd.pid
EOF
    chmod 600 "$ETC/slurmdbd.conf"
}

up() {
    need_root
    install_packages
    mkdir -p "$LOGS" "$PIDS"
    start_munge
    start_mariadb
    write_configs
    running slurmdbd || slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    running slurmctld || slurmctld
    wait_for 60 slurmctld scontrol ping
    running slurmd || slurmd
    wait_for 60 "node to come up" sh -c "sinfo -h -o %t | grep -Eq '^(idle|mix|alloc)'"
    scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
    log "up: cluster $CLUSTER, partition $PARTITION: $(sinfo -h -o '%D node(s), %c cpus, %m MB, state %t')"
}

down() {
    need_root
    command -v scancel >/dev/null 2>&1 && scancel --user=root >/dev/null 2>&1 || true
    for d in slurmd slurmctld slurmdbd; do pkill -x "$d" 2>/dev/null || true; done
    sleep 1
    mariadb-admin -u root shutdown >/dev/null 2>&1 || pkill -x mariadbd 2>/dev/null || true
    pkill -x munged 2>/dev/null || true
    log "down"
}

status() {
    for d in munged mariadbd slurmdbd slurmctld slurmd; do
        printf '%-10s %s\n' "$d" "$(running "$d" && echo running || echo stopped)"
    done
    command -v sinfo >/dev/null 2>&1 && sinfo 2>/dev/null || true
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
