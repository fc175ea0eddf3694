#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs them (offline, CPU).
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
.venv/bin/python -m pip install --quiet -r requirements-ray.txt

# The end-to-end test drives Debian's Chromium (test tools cannot download their own browser here).
if [ ! -x /usr/bin/chromium ]; then
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "Chromium is missing: install Debian's 'chromium' package (needs root)." >&2; exit 1; }
    sudo_cmd="sudo"
  fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi

exec .venv/bin/python -m pytest "$@"
