#!/usr/bin/env bash
# Stops the test cluster of tests/slurm/start_cluster.sh: cancels its jobs, then ends slurmd, slurmctld
# and munged by the pids recorded in the state dir (only the processes that script started), and removes
# the configuration that script wrote (none other): left behind, it names a controller that is gone, and
# every later snakemake start waits about 9 s (the SLURM executor plugin queries it when it is loaded).
set -uo pipefail

STATE=${LPMNET_SLURM_STATE:-/tmp/lpmnet-slurm}
[ -s "$STATE/pids" ] || { echo "stop_cluster.sh: no test cluster recorded in $STATE"; exit 0; }

scancel --user "$(id -un)" 2>/dev/null || true
# reverse order: slurmd, slurmctld, munged
tac "$STATE/pids" | while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "stop_cluster.sh: stopped $name ($pid)"
    fi
done
: > "$STATE/pids"
if grep -q "^# Written by tests/slurm/start_cluster.sh" /etc/slurm/slurm.conf 2>/dev/null; then
    rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf
fi
