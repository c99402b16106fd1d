#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine, then runs it.
#
#   sudo scripts/test.sh                 # the whole suite
#   sudo scripts/test.sh -m "not lxc"    # extra arguments go to pytest
#   scripts/test.sh --unit               # no root, no apt: the fast in-process tests (marker
#                                        # `unit`: SSH against an in-process host, pure logic)
#   scripts/test.sh --no-root -n auto    # no root, no apt: every test that needs no real hosts,
#                                        # containers or browser (-n auto: on every core)
#
# The whole suite needs root: the tests create network namespaces with real sshd hosts and LXC
# containers. Python packages go into .venv (created here, reinstalled when pyproject.toml
# changes); Debian packages are installed with apt, with service start-up blocked during the
# install so that lxc-net (which would add NAT) never runs.
#
# Under CI=true (.ci/run) a skipped test fails the run, naming what was missing (see
# tests/skippolicy.py): everything a test needs must be installed here.
set -euo pipefail
cd "$(dirname "$0")/.."

# Installed with --no-install-recommends, so every package a test uses is named here,
# including what the others only recommend: lxc-templates (the Debian template for the LXC
# base), debian-archive-keyring (debootstrap checks the mirror's signatures), openssl (the
# template's MAC addresses), distro-info (without debian-distro-info the template writes
# bookworm/updates as the security suite and apt fails).
APT_PACKAGES=(
  openssh-server openssh-client iproute2 util-linux procps
  lxc lxc-templates debootstrap debian-archive-keyring openssl wget distro-info lxcfs rsync
  prometheus prometheus-alertmanager
  chromium fonts-dejavu-core
  shellcheck sqlite3 python3 python3-venv
  postgresql
)
# What a contributor without root can run (tests/skippolicy.py gives tests that use the host
# or LXC fixtures their marker, and the fast modules the `unit` marker).
NO_ROOT_MARKERS="not hosts and not lxc and not browser"
UNIT_MARKERS="unit and $NO_ROOT_MARKERS and not slow"

markers=""
case "${1:-}" in
  --unit) markers=$UNIT_MARKERS; shift ;;
  --no-root) markers=$NO_ROOT_MARKERS; shift ;;
esac

if [ -z "$markers" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: run as root (the tests create network namespaces and containers);" \
         "without root: scripts/test.sh --unit (or --no-root)" >&2
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
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# Reinstall only when the dependencies changed (a no-op install still builds the editable wheel).
stamp=.venv/.central-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi

if [ -n "$markers" ]; then
  exec .venv/bin/python -m pytest -m "$markers" "$@"
fi
exec .venv/bin/python -m pytest "$@"
