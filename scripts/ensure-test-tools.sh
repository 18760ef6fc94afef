#!/usr/bin/env bash
# Tools the tests drive from Debian's packages: Chromium for the browser test (Playwright uses it, no
# browser download) and docker-compose to validate docker-compose.yml. Installed once when missing.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v docker-compose >/dev/null || missing+=(docker-compose)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "Missing ${missing[*]}; install Debian's packages to run every test (the tests that need them say so)." >&2
  exit 0
fi
echo "Installing ${missing[*]} from Debian's packages..."
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
