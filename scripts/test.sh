#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine, then runs it.
#
#   sudo scripts/test.sh                 # the whole suite
#   sudo scripts/test.sh -m "not lxc"    # extra arguments go to pytest
#
# Needs root: the tests create network namespaces with real sshd hosts and LXC containers.
# Python packages go into .venv (created here); Debian packages are installed with apt, with
# service start-up blocked during the install so that lxc-net (which would add NAT) never runs.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  openssh-server openssh-client iproute2 util-linux procps
  lxc debootstrap distro-info lxcfs rsync
  prometheus prometheus-alertmanager
  chromium fonts-dejavu-core
  shellcheck sqlite3 python3 python3-venv
)

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: run as root (the tests create network namespaces and containers)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  # Keep package scripts from starting services (lxc-net would add a NAT route off the machine).
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    created_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

exec .venv/bin/python -m pytest "$@"
