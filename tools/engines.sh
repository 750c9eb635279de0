#!/usr/bin/env bash
# Installs the batch engines that the engine tests (`pytest -m slurm`) and the
# benchmark start for themselves: Debian's Slurm (slurmctld, slurmd and the
# client commands) and MUNGE, which Slurm authenticates with.
#
#   tools/engines.sh          install what is missing (a no-op, in milliseconds, when all is there)
#   tools/engines.sh --check  exit 1 and name what is missing, install nothing
#
# Nothing is configured or started here: tools/testclusters/slurm.py writes its
# own slurm.conf and munge key in a temporary directory and runs its own
# daemons. So that the packages' own system services do not start either, the
# install runs under a policy-rc.d that forbids it (unless the machine already
# has one).
set -euo pipefail

# Commands that tools/testclusters/slurm.py and the tests run.
COMMANDS=(munged slurmctld slurmd sbatch squeue scontrol scancel sinfo)
PACKAGES=(slurm-wlm munge)

missing=()
for cmd in "${COMMANDS[@]}"; do
    # The daemons live in /usr/sbin, which a non-root PATH may lack.
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1; then
        missing+=("$cmd")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "engines: missing ${missing[*]} (run tools/engines.sh as root to install ${PACKAGES[*]})" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "engines: missing ${missing[*]}; installing the Debian packages ${PACKAGES[*]} needs root." >&2
    echo "engines: run as root: apt-get install ${PACKAGES[*]}   (or: sudo $0)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "engines: missing ${missing[*]} and no apt-get here: install Slurm (22.05 or later) and MUNGE by hand." >&2
    exit 1
fi

echo "engines: missing ${missing[*]}; installing ${PACKAGES[*]} with apt-get" >&2
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# Written by baton tools/engines.sh for the length of an install.\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
# An install from a stale or empty package list fails with 404s or "no
# installation candidate": refresh the lists first (about a second).
apt-get "${apt_opts[@]}" update >&2
apt-get "${apt_opts[@]}" install --no-install-recommends "${PACKAGES[@]}" >&2

for cmd in "${COMMANDS[@]}"; do
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1; then
        echo "engines: $cmd is still missing after installing ${PACKAGES[*]}" >&2
        exit 1
    fi
done
echo "engines: installed $(PATH="$PATH:/usr/sbin" slurmctld -V 2>/dev/null || echo slurm) and munge" >&2
