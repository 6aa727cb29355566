#!/usr/bin/env bash
# A real single-node Slurm (slurmctld + slurmd + munge) for rto's Slurm integration tests.
#
#   bash .ci/slurm.sh start    # install (Debian slurm-wlm + munge) if needed, configure, start, smoke-test
#   bash .ci/slurm.sh stop     # stop the daemons this script started, by the pids they recorded
#   bash .ci/slurm.sh status
#
# Everything lives in $RTO_SLURM_DIR (default /tmp/rto-slurm): slurm.conf, state, spool, logs and pid files.
# Clients find the cluster through SLURM_CONF=$RTO_SLURM_DIR/slurm.conf (the tests also look there when
# SLURM_CONF is unset). The node offers this machine's CPUs and memory and two fake GPUs (Slurm sets
# CUDA_VISIBLE_DEVICES for `--gres=gpu:N` jobs). No systemd is needed; it must run as root (it re-executes
# itself under sudo otherwise). Recipe: ../shared/reference/orchestrators.md §7.1.
set -euo pipefail

DIR="${RTO_SLURM_DIR:-/tmp/rto-slurm}"
CONF="$DIR/slurm.conf"
MUNGE_RUN=/run/munge

if [ "$(id -u)" != 0 ]; then
  exec sudo -E RTO_SLURM_DIR="$DIR" bash "$0" "$@"
fi

log() { echo "slurm.sh: $*" >&2; }

# True if the pid in file $1 names a live process.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null; then
    return
  fi
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Without systemd the packages' service starts fail harmlessly; this script starts the daemons itself.
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

configure() {
  local node mem
  node="$(hostname -s)"
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  # Describe the node as slurmd sees it, so that it is not drained for claiming more than it has; leave
  # memory headroom for the daemons themselves.
  local hw
  hw="$(slurmd -C | head -n 1)"
  mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
  mem=$((mem * 9 / 10))
  hw="$(sed -e "s/ RealMemory=[0-9]*//" <<<"$hw")"
  cat >"$CONF" <<EOF
# Written by .ci/slurm.sh: a one-node cluster for tests.
ClusterName=rtotest
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
ReturnToService=2
KillWait=5
# Finished jobs stay visible to scontrol this long (there is no accounting database).
MinJobAge=1800
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
GresTypes=gpu
$hw NodeAddr=127.0.0.1 RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  # Slurm 22.05 drops GPUs without a device file; these two stand in for real ones.
  printf 'NodeName=%s Name=gpu File=/dev/null\nNodeName=%s Name=gpu File=/dev/zero\n' "$node" "$node" \
    >"$DIR/gres.conf"
  echo "# No cgroup plugins: proctrack/linuxproc and task/none (see slurm.conf)." >"$DIR/cgroup.conf"
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  mkdir -p "$MUNGE_RUN" /var/log/munge /var/lib/munge
  chown munge:munge "$MUNGE_RUN" /var/log/munge /var/lib/munge
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return  # a munged is already serving (ours or the system's)
  fi
  su -s /bin/sh munge -c /usr/sbin/munged
  cp "$MUNGE_RUN/munged.pid" "$DIR/munged.pid"
  munge -n | unmunge >/dev/null
}

start() {
  install
  configure
  export SLURM_CONF="$CONF"
  start_munge
  if ! alive "$DIR/slurmctld.pid"; then
    slurmctld -i
  fi
  if ! alive "$DIR/slurmd.pid"; then
    slurmd
  fi
  local node state i
  node="$(hostname -s)"
  for i in $(seq 1 60); do
    state="$(sinfo -h -n "$node" -o %T 2>/dev/null || true)"
    case "$state" in
      idle* | mixed* | allocated*) break ;;
      down* | drain*) scontrol update nodename="$node" state=resume || true ;;
    esac
    sleep 1
  done
  if ! sinfo -h -n "$node" -o %T | grep -Eq '^(idle|mixed|allocated)'; then
    log "the node did not come up; see $DIR/log/"
    sinfo -N -l >&2 || true
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 1
  fi
  # End to end: a job that needs a GPU runs and sees one.
  local out
  out="$(mktemp)"
  if ! timeout 120 sbatch --parsable --wait --quiet --mem=10 --gres=gpu:1 --output="$out" \
    --wrap 'echo "gpu=$CUDA_VISIBLE_DEVICES"' >/dev/null; then
    log "the smoke-test job failed"
    cat "$out" >&2
    exit 1
  fi
  log "up: $(sinfo -h -o '%P %D %T %c cpus %m MB %G'); smoke job printed '$(cat "$out")'"
  rm -f "$out"
  echo "export SLURM_CONF=$CONF"
}

stop_one() {
  local name="$1" pidfile="$2" pid i
  alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid="$(cat "$pidfile")"
  kill "$pid"
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop: killing it"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  log "stopped $name (pid $pid)"
}

stop() {
  # slurmd first, so that no job step outlives its controller.
  stop_one slurmd "$DIR/slurmd.pid"
  stop_one slurmctld "$DIR/slurmctld.pid"
  # Only a munged this script started (its pid was copied into $DIR).
  stop_one munged "$DIR/munged.pid"
}

status() {
  local f
  for f in slurmd slurmctld munged; do
    if alive "$DIR/$f.pid"; then echo "$f: running (pid $(cat "$DIR/$f.pid"))"; else echo "$f: not running"; fi
  done
  SLURM_CONF="$CONF" sinfo 2>&1 || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    echo "usage: bash .ci/slurm.sh start|stop|status" >&2
    exit 2
    ;;
esac
