#!/usr/bin/env bash
# Stop the SLURM started by slurm_start.sh (slurmd, slurmctld, munged), by pid file.
# Leaves state/config in place so a later slurm_start.sh is fast.
# SLURM_WIPE=1 also removes job state (StateSaveLocation/spool) and logs.
set -uo pipefail
STATE=${SLURM_STATE:-/var/lib/pvn-slurm}
stop_pidfile() {
  local f=$1 name=$2
  [ -f "$f" ] || return 0
  local p; p=$(cat "$f" 2>/dev/null)
  # only signal the process if its name still matches (pid files can be stale after a reboot)
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$name" ]; then
    kill "$p" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null
    echo "[slurm_stop] stopped $name ($p)"
  fi
  rm -f "$f"
}
# Cancel whatever is still queued/running so slurmstepd children don't linger.
if [ -f "$STATE/slurmctld.pid" ] && command -v scancel >/dev/null; then
  timeout 5 scancel --user=root 2>/dev/null || true
  for _ in $(seq 30); do [ -z "$(timeout 2 squeue -h -t R,CG 2>/dev/null)" ] && break; sleep 0.2; done
fi
stop_pidfile "$STATE/slurmd.pid" slurmd
stop_pidfile "$STATE/slurmctld.pid" slurmctld
stop_pidfile /run/munge/munged.pid munged
if [ "${SLURM_WIPE:-0}" = 1 ]; then rm -rf "$STATE"; echo "[slurm_stop] wiped $STATE"; fi
exit 0
