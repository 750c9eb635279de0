#!/usr/bin/env bash
# Installs the browser that the dashboard's tests (tests/test_dashboard.py,
# `pytest -m browser`) and the benchmark's `web` section drive: Debian's
# `chromium`, at /usr/bin/chromium. Playwright for Python (the dev extra) drives
# it; `playwright install` is never run, since its download cannot reach the
# internet from these machines.
#
#   tools/browser.sh          install chromium when missing (a no-op, in milliseconds, when present)
#   tools/browser.sh --check  exit 1 and say what is missing, install nothing
set -euo pipefail

CHROMIUM=/usr/bin/chromium
PACKAGES=(chromium)

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "${1:-}" = "--check" ]; then
    echo "browser: $CHROMIUM is missing (run tools/browser.sh as root to install ${PACKAGES[*]})" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "browser: $CHROMIUM is missing; installing the Debian package ${PACKAGES[*]} needs root." >&2
    echo "browser: run as root: apt-get install ${PACKAGES[*]}   (or: sudo $0)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "browser: $CHROMIUM is missing and there is no apt-get here: install Chromium by hand." >&2
    exit 1
fi

echo "browser: $CHROMIUM is missing; installing ${PACKAGES[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
# An install from a stale or empty package list fails with 404s or "no
# installation candidate": refresh the lists first.
apt-get "${apt_opts[@]}" update >&2
apt-get "${apt_opts[@]}" install --no-install-recommends "${PACKAGES[@]}" >&2

if [ ! -x "$CHROMIUM" ]; then
    echo "browser: $CHROMIUM is still missing after installing ${PACKAGES[*]}" >&2
    exit 1
fi
echo "browser: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)" >&2
