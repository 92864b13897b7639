#!/usr/bin/env bash
# A single-node SLURM cluster with accounting, on this machine, without systemd.
#
#   bash scripts/slurm-local.sh up       # install (once) and start munged, mariadbd, slurmdbd, slurmctld, slurmd
#   bash scripts/slurm-local.sh status   # which daemons run, and sinfo
#   bash scripts/slurm-local.sh down     # stop every daemon this script started (by its pid file)
#
# Needs root and Debian/Ubuntu (apt-get). The node is this host with 2 CPUs and the real memory
# from /proc/meminfo; one partition `debug`. Accounting goes through slurmdbd into a private MariaDB
# instance, so `sacct` works (submitit relies on it to notice jobs that died without a result).
# Daemons keep their state, logs and pid files under $RMPEFT_SLURM_DIR (default /var/tmp/rmpeft-slurm).
# `up` is idempotent: daemons already running are left alone; packages are installed only if missing.
# It refuses to overwrite an /etc/slurm/slurm.conf it did not write (a real cluster's config).
set -euo pipefail

STATE=${RMPEFT_SLURM_DIR:-/var/tmp/rmpeft-slurm}
CLUSTER=rmpeft-local
PARTITION=debug
NODE=$(hostname -s)
CPUS=${RMPEFT_SLURM_CPUS:-$(( $(nproc) < 2 ? $(nproc) : 2 ))}   # 2, or fewer on a smaller machine
DB_PORT=${RMPEFT_SLURM_DB_PORT:-3307}          # private MariaDB, 127.0.0.1 only
DBD_PORT=${RMPEFT_SLURM_DBD_PORT:-6819}
CTLD_PORT=${RMPEFT_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${RMPEFT_SLURM_SLURMD_PORT:-6818}
DB_PASS=rmpeft-local-slurm                      # local-only test database, bound to 127.0.0.1
CONF_DIR=/etc/slurm
MARKER="# written by rmpeft scripts/slurm-local.sh"
PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)
WAIT_S=${RMPEFT_SLURM_WAIT_S:-60}

die() { echo "slurm-local: error: $*" >&2; exit 1; }
say() { echo "slurm-local: $*"; }

pid_alive() {  # pid_alive FILE: the pid in FILE names a live process
  [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for DESCRIPTION LOGFILE COMMAND...: retry COMMAND until it succeeds or WAIT_S passes
  local what=$1 logfile=$2; shift 2
  local deadline=$((SECONDS + WAIT_S))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "slurm-local: error: $what did not come up within ${WAIT_S}s; last lines of $logfile:" >&2
      tail -n 20 "$logfile" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.5
  done
}

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts system daemons)"; }

installed() {
  local bin
  for bin in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sinfo sbatch sacct sacctmgr; do
    command -v "$bin" >/dev/null 2>&1 || [[ -x /usr/sbin/$bin ]] || return 1
  done
}

install_packages() {
  installed && return 0
  command -v apt-get >/dev/null || die "apt-get not found: install ${PACKAGES[*]} with your package manager"
  say "installing ${PACKAGES[*]} (apt-get)"
  # Package scripts must not try to start services (there is no init system here).
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${PACKAGES[@]}" >"$STATE/apt.log" 2>&1; } || rc=$?
  ((own_policy)) && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install failed (log: $STATE/apt.log)"; }
  installed || die "packages installed but daemons are missing from PATH (${PACKAGES[*]})"
}

real_memory_mb() {  # MemTotal minus 10% for the OS, in MB
  awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo
}

write_configs() {
  mkdir -p "$CONF_DIR" "$STATE"/{ctld,slurmd,log,run}
  if [[ -e $CONF_DIR/slurm.conf ]] && ! grep -qF "$MARKER" "$CONF_DIR/slurm.conf"; then
    die "$CONF_DIR/slurm.conf exists and was not written by this script; refusing to overwrite a real cluster's config"
  fi
  cat >"$CONF_DIR/slurm.conf" <<EOF
$MARKER (single-node test cluster; 'down' stops it)
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Kill jobs quickly after scancel / time limit (SIGTERM, then SIGKILL after KillWait seconds).
KillWait=5
MinJobAge=600
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$(real_memory_mb) State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$CONF_DIR/slurmdbd.conf" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$CONF_DIR/slurmdbd.conf"
  # cgroup.conf is read by slurmd even with proctrack/linuxproc on some versions; keep it inert.
  [[ -e $CONF_DIR/cgroup.conf ]] || echo "$MARKER" >"$CONF_DIR/cgroup.conf"
}

start_munge() {
  local dir=$STATE/munge
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged already answering"; return 0
  fi
  mkdir -p /etc/munge /run/munge "$dir"
  [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 \
    || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown munge:munge /etc/munge/munge.key /run/munge "$dir" && chmod 400 /etc/munge/munge.key
  runuser -u munge -- munged --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" \
    || die "munged failed to start (log: $dir/munged.log)"
  wait_for munged "$dir/munged.log" bash -c 'munge -n </dev/null | unmunge'
  say "munged started"
}

start_mariadb() {
  local dir=$STATE/mariadb
  local sock=$dir/mysqld.sock
  if pid_alive "$dir/mariadbd.pid"; then say "mariadbd already running"; return 0; fi
  mkdir -p "$dir" && chown mysql:mysql "$dir"
  if [[ ! -d $dir/data/mysql ]]; then
    runuser -u mysql -- mariadb-install-db --no-defaults --datadir="$dir/data" --auth-root-authentication-method=socket \
      >"$dir/install.log" 2>&1 || die "mariadb-install-db failed (log: $dir/install.log)"
  fi
  runuser -u mysql -- mariadbd --no-defaults --datadir="$dir/data" --bind-address=127.0.0.1 --port="$DB_PORT" \
    --socket="$sock" --pid-file="$dir/mariadbd.pid" --log-error="$dir/mariadbd.log" >/dev/null 2>&1 &
  wait_for mariadbd "$dir/mariadbd.log" mariadb --no-defaults -uroot --socket="$sock" -e 'SELECT 1'
  mariadb --no-defaults -uroot --socket="$sock" <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
  say "mariadbd started (127.0.0.1:$DB_PORT)"
}

start_slurmdbd() {
  if pid_alive "$STATE/run/slurmdbd.pid"; then say "slurmdbd already running"; return 0; fi
  slurmdbd || die "slurmdbd failed to start (log: $STATE/log/slurmdbd.log)"
  wait_for slurmdbd "$STATE/log/slurmdbd.log" sacctmgr -n list cluster
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
  say "slurmdbd started"
}

start_slurmctld() {
  if pid_alive "$STATE/run/slurmctld.pid"; then say "slurmctld already running"; return 0; fi
  slurmctld || die "slurmctld failed to start (log: $STATE/log/slurmctld.log)"
  wait_for slurmctld "$STATE/log/slurmctld.log" scontrol ping
  say "slurmctld started"
}

start_slurmd() {
  if pid_alive "$STATE/run/slurmd.pid"; then say "slurmd already running"; return 0; fi
  slurmd || die "slurmd failed to start (log: $STATE/log/slurmd.log)"
  wait_for "node $NODE" "$STATE/log/slurmd.log" node_ready
  say "slurmd started"
}

node_ready() {  # the node is idle (or allocated); resume it if it came back down/drained
  local state
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1)
  case $state in
    idle* | mix* | alloc* | completing*) return 0 ;;
    down* | drain* | unknown*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true; return 1 ;;
    *) return 1 ;;
  esac
}

stop_pidfile() {  # stop_pidfile NAME FILE: TERM the pid in FILE, KILL after 10s
  local name=$1 file=$2 pid i
  if ! pid_alive "$file"; then rm -f "$file"; return 0; fi
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$file"
  say "stopped $name (pid $pid)"
}

cmd_up() {
  need_root
  mkdir -p "$STATE"/{log,run}
  install_packages
  write_configs
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurmctld
  start_slurmd
  srun -N1 -n1 -t 1 hostname >/dev/null 2>&1 || die "srun hostname failed (logs: $STATE/log)"
  sacct -n -X -o JobID -S now-1hours >/dev/null 2>&1 || die "sacct failed (log: $STATE/log/slurmdbd.log)"
  say "up: cluster $CLUSTER, node $NODE ($CPUS CPUs, $(real_memory_mb) MB), partition $PARTITION"
}

pidfile_of() {  # the pid file of a daemon started by this script
  case $1 in
    munged) echo "$STATE/munge/munged.pid" ;;
    mariadbd) echo "$STATE/mariadb/mariadbd.pid" ;;
    *) echo "$STATE/run/$1.pid" ;;
  esac
}

cmd_down() {
  need_root
  local name
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    stop_pidfile "$name" "$(pidfile_of "$name")"
  done
  say "down"
}

cmd_status() {
  local name file rc=0
  for name in munged mariadbd slurmdbd slurmctld slurmd; do
    file=$(pidfile_of "$name")
    if pid_alive "$file"; then
      echo "$name: running (pid $(cat "$file"))"
    else
      echo "$name: stopped"; rc=1
    fi
  done
  if command -v sinfo >/dev/null && ((rc == 0)); then sinfo; fi
  return $rc
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
