#!/usr/bin/env bash
# Start the central on this machine: creates a virtual environment, installs central,
# initialises the data directory on first run, and serves on http://127.0.0.1:9083.
#
#   scripts/start-central.sh                  # foreground; Ctrl-C stops it
#   scripts/start-central.sh --background     # detached; log and pid file in the data dir
#   scripts/start-central.sh --listen 0.0.0.0 --port 9083
#   scripts/start-central.sh --stop           # stops the central started with --background
#   scripts/start-central.sh --no-venv        # use $PYTHON's own packages, run this checkout
#
# Run as root (sudo, or a root shell), the central itself does not run as root: the script
# creates the system user CENTRAL_USER (default centrald; no login shell, home = the data
# directory), gives it the data directory (mode 0700; an existing root-owned one is chowned
# over, with a message) and runs init and serve as that user.
#
# Environment: CENTRAL_DATA_DIR (default /var/lib/central as root, else
# ~/.local/share/central), CENTRAL_CONFIG (a config file), CENTRAL_USER (as root: the user the
# central runs as; "root" keeps it root, which refuses actions on this host), PYTHON
# (interpreter to use), CENTRAL_VENV (default: .venv next to this script's repository; an
# existing venv made with --system-site-packages reuses what that Python has installed),
# CENTRAL_BIN_DIR (where the `central` command is written: default /usr/local/bin as root;
# unset otherwise, and the script names the venv's own `central`).
#
# The `central` command it writes runs the CLI of this install on this data directory from any
# shell (CENTRAL_DATA_DIR or --data-dir still pick another); it never replaces a `central` it
# did not write.
set -euo pipefail

usage() {
  sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
}

fail() { echo "start-central.sh: $*" >&2; exit 1; }

listen=""
port=""
background=0
stop=0
use_venv=1
while [ $# -gt 0 ]; do
  case "$1" in
    --listen) [ $# -ge 2 ] || fail "--listen needs an address"; listen=$2; shift 2 ;;
    --port) [ $# -ge 2 ] || fail "--port needs a number"; port=$2; shift 2 ;;
    --background) background=1; shift ;;
    --stop) stop=1; shift ;;
    --no-venv) use_venv=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "start-central.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$port" ] && ! [[ $port =~ ^[0-9]{1,5}$ && $port -ge 1 && $port -le 65535 ]]; then
  fail "--port must be a port number (1-65535), not '$port'"
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
venv=${CENTRAL_VENV:-$repo/.venv}

command -v "$python" >/dev/null || fail "no $python found; install Python 3.11 or newer (apt-get install python3 python3-venv)"
"$python" - <<'PY' || fail "central needs Python 3.11 or newer (tomllib); found $("$python" --version 2>&1)"
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

# Whether this interpreter imports central from this checkout (a --system-site-packages
# venv may see another copy installed for the system python).
from_this_repo() {
  "$1" -P - "$repo" 2>/dev/null <<'PY'
import pathlib, sys
try:
    import central, asyncssh, aiosqlite, aiohttp, click, rich, jinja2  # noqa: F401
except ImportError:
    sys.exit(1)
here = pathlib.Path(central.__file__).resolve().parent
sys.exit(0 if here == pathlib.Path(sys.argv[1]).resolve() / "central" else 1)
PY
}

if [ "$use_venv" = 1 ]; then
  if [ ! -x "$venv/bin/python" ]; then
    echo "creating virtual environment $venv"
    "$python" -m venv "$venv" || fail "cannot create a virtual environment (on Debian: apt-get install python3-venv)"
  fi
  py="$venv/bin/python"
  if ! from_this_repo "$py" || [ "$repo/pyproject.toml" -nt "$venv/.central-installed" ]; then
    echo "installing central into $venv"
    pip_args=(-m pip install -q --disable-pip-version-check)
    # with hatchling already at hand, nothing needs fetching to build the editable install
    if "$py" -c "import hatchling" 2>/dev/null; then pip_args+=(--no-build-isolation); fi
    "$py" "${pip_args[@]}" -e "$repo" || fail "pip could not install central (see the messages above)"
    touch "$venv/.central-installed"
  fi
  from_this_repo "$py" || fail "$venv does not import central from $repo after installing it"
else
  py=$(command -v "$python")
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
  from_this_repo "$py" \
    || fail "--no-venv: $python lacks central's dependencies (pip install -e $repo, or drop --no-venv)"
fi
central=("$py" -P -m central)

if [ -n "$listen" ]; then export CENTRAL_HTTP_LISTEN="$listen"; fi
if [ -n "$port" ]; then export CENTRAL_HTTP_PORT="$port"; fi

# Resolve the effective settings through central itself, so config file and env agree.
settings=$("$py" -P - <<'PY'
from central.config import ConfigError, load_config
try:
    c = load_config()
except ConfigError as exc:
    raise SystemExit(f"config: {exc}")
print(c.data_path, c.database_path, c.http.listen, c.http.port)
PY
) || fail "invalid configuration (see above)"
read -r data_dir db listen port <<<"$settings"
pid_file="$data_dir/central.pid"
# The central must resolve the same directory whoever it runs as (its own user's default
# would be that user's ~/.local/share/central).
export CENTRAL_DATA_DIR="$data_dir"


# A pid file names our central only while that process still runs `central serve`.
running_pid() {
  local pid
  pid=$(cat "$pid_file" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-m central serve" || return 1
  echo "$pid"
}

if [ "$stop" = 1 ]; then
  pid=$(running_pid) || { rm -f "$pid_file"; echo "central is not running (no live pid in $pid_file)"; exit 0; }
  kill -TERM "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; echo "stopped central (pid $pid)"; exit 0; }
    sleep 0.1
  done
  fail "central (pid $pid) did not stop within 10 s"
fi

if pid=$(running_pid); then
  fail "central already runs from $data_dir (pid $pid); stop it with: $0 --stop"
fi

if ! "$py" - "$listen" "$port" <<'PY'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((host, port))
except OSError as exc:
    sys.exit(f"{host}:{port}: {exc.strerror}")
finally:
    s.close()
PY
then
  fail "port $port on $listen is in use; stop what runs there or pass --port"
fi

# As root: run the central as its own unprivileged user (run_as prefixes every central command).
run_as=()
central_user=""
as_user=""  # set when the central runs as another user than this script
if [ "$(id -u)" = 0 ]; then
  central_user=${CENTRAL_USER:-centrald}
  [[ $central_user =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || fail "CENTRAL_USER must be a user name, not '$central_user'"
fi
if [ -n "$central_user" ] && [ "$central_user" != root ]; then
  if ! id -u "$central_user" >/dev/null 2>&1; then
    command -v useradd >/dev/null || fail "no useradd to create the user $central_user (apt-get install passwd)"
    nologin=$(command -v nologin || echo /usr/sbin/nologin)
    useradd --system --user-group --home-dir "$data_dir" --no-create-home --shell "$nologin" \
      --comment "central fleet monitor" "$central_user" || fail "cannot create the system user $central_user"
    echo "created system user $central_user (no login shell, home $data_dir); the central runs as $central_user"
  fi
  [ "$(id -u "$central_user")" != 0 ] || fail "CENTRAL_USER $central_user has uid 0; pick an unprivileged user"
  group=$(id -gn "$central_user")
  mkdir -p "$data_dir"
  owner=$(stat -c %U "$data_dir")
  if [ "$owner" != "$central_user" ]; then
    # An install from before the central had its own user: hand its data over (-h: links
    # themselves, never what they point to).
    echo "$data_dir belongs to $owner: giving it to $central_user (chown -R), so the central runs without root"
    chown -hR "$central_user:$group" "$data_dir" || fail "cannot chown $data_dir to $central_user"
  fi
  chmod 700 "$data_dir"
  as_user=$central_user
  if command -v setpriv >/dev/null; then
    # setpriv execs (no process in between, so the pid file names the central itself);
    # no-new-privs: nothing the central starts can gain privileges (setuid programs).
    run_as=(setpriv --reuid="$central_user" --regid="$group" --init-groups --no-new-privs --
            env HOME="$data_dir" USER="$central_user" LOGNAME="$central_user")
  else
    run_as=(runuser -u "$central_user" --)
  fi
  "${run_as[@]}" "$py" -P -c "import central" 2>/dev/null \
    || fail "user $central_user cannot run $py (is the checkout or Python under a private directory such as /root?); put the checkout where other users can read it (e.g. /opt/central), or set CENTRAL_VENV/PYTHON"
  "${run_as[@]}" test -w "$data_dir" -a -w "$(dirname "$db")" \
    || fail "user $central_user cannot write $data_dir and $(dirname "$db"); check the directories above them"
  if [ -n "${CENTRAL_CONFIG:-}" ]; then
    "${run_as[@]}" test -r "$CENTRAL_CONFIG" || fail "user $central_user cannot read $CENTRAL_CONFIG"
  fi
elif [ "$central_user" = root ]; then
  echo "warning: CENTRAL_USER=root: the central runs as root, and refuses actions on this host (actions.local_as_root)" >&2
fi

if [ ! -f "$db" ]; then
  echo "first start: initialising $data_dir"
  "${run_as[@]}" "${central[@]}" init || fail "central init failed"
  echo
fi

# The `central` command for every shell: a wrapper that runs this install's CLI on this data
# directory (as root in /usr/local/bin, or CENTRAL_BIN_DIR).
wrapper_mark="# Written by scripts/start-central.sh: the central CLI of this install."
# shellcheck disable=SC2016  # the wrapper's own expansions, written as they are
wrapper_text() {
  printf '#!/bin/sh\n%s\n# Another data directory: CENTRAL_DATA_DIR=DIR or --data-dir DIR.\n' "$wrapper_mark"
  printf ': "${CENTRAL_DATA_DIR:=%s}"\nexport CENTRAL_DATA_DIR\n' "$data_dir"
  if [ -n "${CENTRAL_CONFIG:-}" ]; then printf ': "${CENTRAL_CONFIG:=%s}"\nexport CENTRAL_CONFIG\n' "$CENTRAL_CONFIG"; fi
  if [ "$use_venv" = 0 ]; then printf 'export PYTHONPATH=%s${PYTHONPATH:+:$PYTHONPATH}\n' "'$repo'"; fi
  printf 'exec %s -P -m central "$@"\n' "'$py'"
}
bin_dir=${CENTRAL_BIN_DIR-}
if [ -z "${CENTRAL_BIN_DIR+set}" ] && [ "$(id -u)" = 0 ]; then bin_dir=/usr/local/bin; fi
central_cmd=""
if [ -n "$bin_dir" ]; then
  wrapper="$bin_dir/central"
  # the paths are written inside quotes: none may hold a quote, a backslash, $ or `
  # shellcheck disable=SC1003  # a single quote or a backslash, on purpose
  case "$py$data_dir$repo${CENTRAL_CONFIG:-}" in
    *"'"*|*'\'*|*'"'*|*'$'*|*'`'*) echo "warning: not writing $wrapper: a path holds a quote, a backslash, \$ or \`" >&2 ;;
    *)
      if [ -e "$wrapper" ] && ! grep -qxF "$wrapper_mark" "$wrapper" 2>/dev/null; then
        echo "warning: $wrapper exists and was not written by this script: left as it is" >&2
      elif mkdir -p "$bin_dir" && wrapper_text > "$wrapper.new" && chmod 0755 "$wrapper.new" && mv -f "$wrapper.new" "$wrapper"; then
        central_cmd=$wrapper
      else
        rm -f "$wrapper.new"
        echo "warning: cannot write $wrapper" >&2
      fi ;;
  esac
fi
if [ -z "$central_cmd" ]; then
  if [ "$use_venv" = 1 ]; then central_cmd="$venv/bin/central"; else central_cmd="PYTHONPATH=$repo $py -m central"; fi
  echo "the central command: $central_cmd (with CENTRAL_DATA_DIR=$data_dir)"
else
  echo "the central command: $central_cmd (for $data_dir, from any shell)"
fi

# what a local client dials: a wildcard listen address is reached through loopback
case $listen in
  0.0.0.0|"") probe_host=127.0.0.1 ;;
  ::) probe_host="[::1]" ;;
  *:*) probe_host="[$listen]" ;;
  *) probe_host=$listen ;;
esac
url="http://$probe_host:$port/"
if [ "$background" = 1 ]; then
  log="$data_dir/central.log"
  if [ ! -e "$log" ]; then
    (umask 077 && : >"$log")
    if [ -n "$as_user" ]; then chown "$as_user:$group" "$log"; fi
  fi
  nohup "${run_as[@]}" "${central[@]}" serve >>"$log" 2>&1 </dev/null &
  pid=$!
  (umask 077 && echo "$pid" > "$pid_file")
  for _ in $(seq 1 100); do
    if "$py" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + 'health', timeout=1)" "$url" 2>/dev/null; then
      echo "central is running (pid $pid${as_user:+, user $as_user}) at $url  - log: $log; stop: $0 --stop"
      exit 0
    fi
    kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; fail "central exited at start; see $log"; }
    sleep 0.2
  done
  fail "central did not answer on $url within 20 s; see $log"
fi
echo "central at $url${as_user:+ as user $as_user} (Ctrl-C stops it)"
exec "${run_as[@]}" "${central[@]}" serve
