#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine for tests/slurm/test_slurm.py (needs root; Debian/Ubuntu).
# Installs Debian's slurmctld, slurmd, slurm-client and munge when missing, writes /etc/slurm/slurm.conf
# (the executor's job-step srun ignores SLURM_CONF, so the file must be at the default path) with two
# partitions, cpu (default) and gpu, and one GRES gpu backed by a stand-in device file (no real GPU:
# jobs see CUDA_VISIBLE_DEVICES=0, torch still finds no CUDA). munged, slurmctld and slurmd run as
# background processes whose pids are recorded in the state dir; tests/slurm/stop_cluster.sh stops them.
# SLURM's own job records (one line per finished job) go to $STATE/jobcomp.txt (jobcomp/filetxt).
#   STATE: LPMNET_SLURM_STATE (default /tmp/lpmnet-slurm)
set -euo pipefail

STATE=${LPMNET_SLURM_STATE:-/tmp/lpmnet-slurm}
HOST=$(hostname -s)

if [ "$(id -u)" != 0 ]; then
    echo "start_cluster.sh: must run as root (it installs packages and writes /etc/slurm)" >&2
    exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null \
    || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
if [ -s "$STATE/pids" ] && sinfo -h >/dev/null 2>&1; then
    echo "start_cluster.sh: a test cluster is already running (state $STATE)"
    exit 0
fi

rm -rf "$STATE"
mkdir -p "$STATE"/{ctld,spool,dev,log}
: > "$STATE/pids"

# munge: a key if missing, the daemon in the foreground of a background process
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged -F > "$STATE/log/munged.out" 2>&1 &
    echo "munged $!" >> "$STATE/pids"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null

# the stand-in GPU: a character device named nvidia0 (a link to /dev/null)
ln -sf /dev/null "$STATE/dev/nvidia0"

# this machine's CPUs and memory as slurmd sees them; RealMemory a little lower (slurmd rounds)
NODE=$(slurmd -C | head -1)
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$NODE")
NODE=$(sed "s/RealMemory=[0-9]*/RealMemory=$((MEM * 9 / 10))/" <<< "$NODE")

mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<CONF
# Written by tests/slurm/start_cluster.sh: a single-node test cluster (not for production).
ClusterName=lpmnettest
SlurmctldHost=$HOST
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
# squeue (the test profile's status command) must still list finished jobs for a while
MinJobAge=600
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
$NODE Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/gres.conf <<CONF
NodeName=$HOST Name=gpu File=$STATE/dev/nvidia0
CONF

/usr/sbin/slurmctld -D -i > "$STATE/log/slurmctld.out" 2>&1 &
echo "slurmctld $!" >> "$STATE/pids"
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
/usr/sbin/slurmd -D > "$STATE/log/slurmd.out" 2>&1 &
echo "slurmd $!" >> "$STATE/pids"

for _ in $(seq 300); do
    if [ "$(sinfo -h -n "$HOST" -o %t 2>/dev/null | head -1)" = idle ]; then
        sinfo
        echo "start_cluster.sh: cluster up (state $STATE, job records $STATE/jobcomp.txt)"
        exit 0
    fi
    sleep 0.2
done
echo "start_cluster.sh: node $HOST did not become idle:" >&2
sinfo -N -l >&2 || true
tail -n 20 "$STATE"/log/*.log "$STATE"/log/*.out >&2 || true
exit 1
