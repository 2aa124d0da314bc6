#!/usr/bin/env bash
# tests/slurm/cluster.sh start|stop|status -- a real single-node SLURM cluster on this
# machine (Debian/Ubuntu, slurm-wlm 22.05, munge, slurmdbd + a private MariaDB), all on
# loopback, for the tests in tests/test_slurm.py and for anyone trying the cluster path.
#
#   sudo tests/slurm/cluster.sh start    # installs missing packages, starts the daemons (~15 s)
#   tests/slurm/cluster.sh status        # daemons, node state, where the logs are
#   sudo tests/slurm/cluster.sh stop     # stops the daemons it started, by PID
#
# The node advertises what profiles/slurm/config.yaml asks for (SlurmdParameters=
# config_overrides lets it claim more than the box has): LCT_SLURM_CPUS CPUs,
# LCT_SLURM_MEM_MB MB and LCT_SLURM_GPUS GPUs of type LCT_SLURM_GPU_TYPE (device files are
# clones of /dev/null: jobs get CUDA_VISIBLE_DEVICES, no real GPU).
# Knobs (environment): LCT_SLURM_DIR [/tmp/lct-slurm], LCT_SLURM_CPUS [64],
# LCT_SLURM_MEM_MB [512000], LCT_SLURM_GPUS [8], LCT_SLURM_GPU_TYPE [a100],
# LCT_SLURM_PARTITIONS ["debug gpu", first is default], LCT_SLURM_ACCOUNTS [lct_ci],
# LCT_SLURM_DB_PORT [3307].
set -euo pipefail

DIR=${LCT_SLURM_DIR:-/tmp/lct-slurm}
CPUS=${LCT_SLURM_CPUS:-64}
MEM_MB=${LCT_SLURM_MEM_MB:-512000}
GPUS=${LCT_SLURM_GPUS:-8}
GPU_TYPE=${LCT_SLURM_GPU_TYPE:-a100}
PARTITIONS=${LCT_SLURM_PARTITIONS:-debug gpu}
ACCOUNTS=${LCT_SLURM_ACCOUNTS:-lct_ci}
DB_PORT=${LCT_SLURM_DB_PORT:-3307}
NODE=$(hostname -s)
CONF=/etc/slurm                # where Debian's binaries look
PKGS="slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
DAEMONS="slurmd slurmctld slurmdbd mysqld munged"   # stop order

T0=$(date +%s.%N)
say() { awk -v a="$T0" -v b="$(date +%s.%N)" -v m="$*" 'BEGIN{printf "[cluster.sh %5.1fs] %s\n", b-a, m}'; }
die() { echo "cluster.sh: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
ctld_up() { scontrol ping 2>/dev/null | grep -q UP; }
node_ok() { sinfo -h -n "$NODE" -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }

install_packages() {
    local missing=""
    for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    [ -z "$missing" ] && return 0
    say "installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q --no-install-recommends $missing; } \
        >"$DIR/log/apt.log" 2>&1 || { tail -30 "$DIR/log/apt.log"; die "apt-get failed (log: $DIR/log/apt.log)"; }
}

start_munge() {
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key --force
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
        for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
        cp /run/munge/munged.pid "$DIR/run/munged.pid"
    fi
    munge -n | unmunge >/dev/null || die "munged does not answer"
}

write_configs() {
    local parts="" def=YES p
    for p in $PARTITIONS; do
        parts+="PartitionName=$p Nodes=ALL Default=$def MaxTime=INFINITE State=UP"$'\n'; def=NO
    done
    mkdir -p "$DIR/fakegpu"
    local i
    for i in $(seq 0 $((GPUS - 1))); do
        [ -c "$DIR/fakegpu/nvidia$i" ] || mknod -m 666 "$DIR/fakegpu/nvidia$i" c 1 3
    done
    echo "NodeName=$NODE Name=gpu Type=$GPU_TYPE File=$DIR/fakegpu/nvidia[0-$((GPUS - 1))]" >"$DIR/etc/gres.conf"
    cat >"$DIR/etc/slurm.conf" <<EOF
# written by tests/slurm/cluster.sh (single-node test cluster)
ClusterName=lctci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire + 1 s before it may start again (SLURM's default: 120 s); short
# here so the requeue drills (scontrol requeue; the controller job's self-requeue) take seconds
AuthInfo=cred_expire=15
CredType=cred/munge
MpiDefault=none
# no cgroups in containers: no CPU/memory enforcement
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it a job that gives no --mem takes the whole node
DefMemPerCPU=1000
SchedulerType=sched/backfill
# advertise the production-sized node below even though the box is smaller
SlurmdParameters=config_overrides
ReturnToService=2
# finished jobs stay visible to squeue 5 min (the plugin's squeue mode needs >= 3x its first poll)
MinJobAge=300
InactiveLimit=0
KillWait=10
OverTimeLimit=0
Waittime=0
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM_MB Gres=gpu:$GPU_TYPE:$GPUS State=UNKNOWN
$parts
EOF
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=lct-ci-local-only
StorageLoc=slurm_acct_db
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
DebugLevel=info
EOF
    mkdir -p "$CONF"
    install -m 644 "$DIR/etc/slurm.conf" "$CONF/slurm.conf"
    install -m 644 "$DIR/etc/gres.conf" "$CONF/gres.conf"
    install -m 600 "$DIR/etc/slurmdbd.conf" "$CONF/slurmdbd.conf"
}

start_db() {
    local sock="$DIR/mysql/run/mysqld.sock" mysqld
    mysqld=$(command -v mariadbd || command -v mysqld)
    if ! alive "$DIR/run/mysqld.pid"; then
        mkdir -p "$DIR/mysql/data" "$DIR/mysql/run"
        chown -R mysql:mysql "$DIR/mysql"
        rm -f "$sock"
        [ -d "$DIR/mysql/data/mysql" ] || mariadb-install-db --user=mysql --datadir="$DIR/mysql/data" \
            --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mysql-install.log" 2>&1
        setsid nohup "$mysqld" --no-defaults --user=mysql --datadir="$DIR/mysql/data" \
            --socket="$sock" --pid-file="$DIR/mysql/run/mysqld.pid" --bind-address=127.0.0.1 \
            --port="$DB_PORT" --innodb-buffer-pool-size=64M >"$DIR/log/mysqld.log" 2>&1 </dev/null &
        echo $! >"$DIR/run/mysqld.pid"
        for _ in $(seq 150); do [ -S "$sock" ] && break; sleep 0.2; done
        [ -S "$sock" ] || { tail -20 "$DIR/log/mysqld.log"; die "MariaDB did not start"; }
    fi
    mariadb --socket="$sock" -u root <<'EOF'
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'lct-ci-local-only';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'lct-ci-local-only';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
}

start_slurm() {
    if ! alive "$DIR/run/slurmdbd.pid"; then
        /usr/sbin/slurmdbd
        for _ in $(seq 150); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
    fi
    sacctmgr -n list cluster >/dev/null 2>&1 || { tail -20 "$DIR/log/slurmdbd.log"; die "slurmdbd does not answer"; }
    sacctmgr -n list cluster format=cluster | grep -qw lctci || sacctmgr -i add cluster lctci >/dev/null
    say "slurmdbd up (MariaDB on 127.0.0.1:$DB_PORT)"
    if ! ctld_up; then
        /usr/sbin/slurmctld -i
        for _ in $(seq 100); do ctld_up && break; sleep 0.2; done
    fi
    ctld_up || { tail -20 "$DIR/log/slurmctld.log"; die "slurmctld does not answer"; }
    alive "$DIR/run/slurmd.pid" || /usr/sbin/slurmd -N "$NODE"
    for _ in $(seq 100); do node_ok && break; sleep 0.2; done
    node_ok || { scontrol update nodename="$NODE" state=resume 2>/dev/null || true; sleep 1; }
    node_ok || { scontrol show node; tail -20 "$DIR/log/slurmd.log"; die "node $NODE is not idle"; }
    local a first=${ACCOUNTS%% *} u
    for a in $ACCOUNTS; do
        sacctmgr -n list account format=account | grep -qw "$a" \
            || sacctmgr -i add account "$a" Description=lct-ci Organization=lct-ci >/dev/null
    done
    for u in root ${SUDO_USER:-}; do
        sacctmgr -i add user "$u" Account="${ACCOUNTS// /,}" DefaultAccount="$first" >/dev/null 2>&1 || true
    done
    say "slurmctld + slurmd up; node $NODE: $CPUS CPUs, $MEM_MB MB, gpu:$GPU_TYPE:$GPUS; accounts [$ACCOUNTS]"
}

status() {
    local d
    for d in $DAEMONS; do
        if alive "$DIR/run/$d.pid"; then echo "$d: running (pid $(cat "$DIR/run/$d.pid"))"; else echo "$d: not running"; fi
    done
    ctld_up && sinfo -o '%P %a %D %t %c %m %G' || echo "slurmctld: no answer"
    echo "logs: $DIR/log/ (slurmctld.log slurmd.log slurmdbd.log mysqld.log); config: $CONF/slurm.conf"
}

stop() {
    local d pid
    for d in $DAEMONS; do
        alive "$DIR/run/$d.pid" || { rm -f "$DIR/run/$d.pid"; continue; }
        pid=$(cat "$DIR/run/$d.pid")
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        rm -f "$DIR/run/$d.pid"
        echo "stopped $d (pid $pid)"
    done
}

case "${1:-}" in
    start)
        [ "$(id -u)" -eq 0 ] || die "start needs root (sudo -E $0 start)"
        mkdir -p "$DIR"/{etc,state/ctld,state/d,log,run}
        install_packages
        start_munge; say "munged up"
        write_configs
        start_db
        start_slurm
        echo "logs: $DIR/log/   stop with: $0 stop"
        ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
