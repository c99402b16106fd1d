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
# Environment: CENTRAL_DATA_DIR (default /var/lib/central as root, else
# ~/.local/share/central), CENTRAL_CONFIG (a config file), PYTHON (interpreter to use),
# CENTRAL_VENV (default: .venv next to this script's repository; an existing venv made with
# --system-site-packages reuses what that Python has installed).
set -euo pipefail

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
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

if [ ! -f "$db" ]; then
  echo "first start: initialising $data_dir"
  "${central[@]}" init || fail "central init failed"
  echo
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
  nohup "${central[@]}" serve >>"$log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" > "$pid_file"
  for _ in $(seq 1 100); do
    if "$py" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + 'health', timeout=1)" "$url" 2>/dev/null; then
      echo "central is running (pid $pid) at $url  - log: $log; stop: $0 --stop"
      exit 0
    fi
    kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; fail "central exited at start; see $log"; }
    sleep 0.2
  done
  fail "central did not answer on $url within 20 s; see $log"
fi
echo "central at $url (Ctrl-C stops it)"
exec "${central[@]}" serve
