#!/usr/bin/env bash
# Integration-test host set-up (run as root by tests/integration/conftest.py when
# REPROTUNE_INTEGRATION=1; CI sets it). Installs podman + runc + debootstrap + a local image
# registry + a one-node SLURM (munge, slurmctld, slurmd), builds a Debian 12 base image offline
# with debootstrap, and starts the daemons. PIDs go to $W/pids.txt (teardown.sh stops them).
# Idempotent: packages, base image and registry data are reused when present.
set -euo pipefail
W=${W:?set W to a work directory}
mkdir -p "$W"
t() { local s=$SECONDS; "$@"; echo "[setup] $1 ${2:-}: $((SECONDS - s)) s" >&2; }
export DEBIAN_FRONTEND=noninteractive
: > "$W/pids.txt"

# ---- packages -------------------------------------------------------------------------
PKGS="podman runc debootstrap slurm-wlm munge docker-registry"
missing=$(for p in $PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"; done)
if [ -n "$missing" ]; then
  t apt-get update -qq
  t apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# ---- podman: runc (crun fails on hybrid cgroups), rlimits within the hard limits -------
NOFILE=$(ulimit -Hn)
mkdir -p /etc/containers
cat > /etc/containers/containers.conf <<CONF
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
# the test registry on localhost speaks plain HTTP
cat > /etc/containers/registries.conf.d/50-reprotune-ci.conf <<CONF
[[registry]]
location = "localhost:5000"
insecure = true
CONF

# ---- Debian 12 base image, made offline and reproducibly ------------------------------
BASE=localhost/reprotune-ci-base:bookworm
if ! podman image exists "$BASE"; then
  rm -rf "$W/rootfs" "$W/base" && mkdir -p "$W/base"
  MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
  t env SOURCE_DATE_EPOCH=0 debootstrap --variant=minbase bookworm "$W/rootfs" ${MIRROR:-http://deb.debian.org/debian} >/dev/null
  rm -f "$W"/rootfs/var/log/{alternatives,bootstrap,dpkg}.log "$W/rootfs/var/cache/ldconfig/aux-cache"
  sed -i -E 's/^([^:]*:[^:]*:)[0-9]*:/\119000:/' "$W/rootfs/etc/shadow"
  tar -C "$W/rootfs" --sort=name --mtime=@0 --clamp-mtime --owner=0 --group=0 --numeric-owner \
      --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -cf "$W/base/rootfs.tar" .
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["bash"]\n' > "$W/base/Containerfile"
  t podman build -q --timestamp 0 -t "$BASE" "$W/base" >/dev/null
  rm -rf "$W/rootfs" "$W/base"
fi
echo "[setup] base image $(podman image inspect --format '{{.Id}}' "$BASE")" >&2

# ---- local image registry (Debian's docker-registry) on localhost:5000 -----------------
mkdir -p "$W/registry"
cat > "$W/registry.yml" <<CONF
version: 0.1
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: 127.0.0.1:5000
CONF
nohup docker-registry serve "$W/registry.yml" > "$W/registry.log" 2>&1 &
echo "registry $!" >> "$W/pids.txt"
for i in $(seq 50); do curl -sf http://127.0.0.1:5000/v2/ >/dev/null && break; sleep 0.2; done
curl -sf http://127.0.0.1:5000/v2/ >/dev/null || { echo "[setup] registry did not start" >&2; cat "$W/registry.log" >&2; exit 1; }

# ---- one-node SLURM ---------------------------------------------------------------------
mkdir -p /run/munge && chown munge:munge /run/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
rm -f /run/munge/munged.pid
runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
for i in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
echo "munged $(cat /run/munge/munged.pid)" >> "$W/pids.txt"
H=$(hostname); S=$W/slurm; rm -rf "$S"; mkdir -p "$S"/{state,spool,log}
mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=reprotune-ci
SlurmctldHost=$H
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=300
KillWait=5
NodeName=$H CPUs=$(nproc) RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF
nohup slurmctld -D > "$S/log/slurmctld.fg" 2>&1 &
echo "slurmctld $!" >> "$W/pids.txt"
nohup slurmd -D > "$S/log/slurmd.fg" 2>&1 &
echo "slurmd $!" >> "$W/pids.txt"
for i in $(seq 100); do [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && break; sleep 0.3; done
[ "$(sinfo -h -o %T)" = idle ] || { echo "[setup] slurm node not idle: $(sinfo -h -o %T)" >&2; exit 1; }
echo "[setup] done in ${SECONDS} s" >&2
