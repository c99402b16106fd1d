#!/usr/bin/env bash
# Start the central on this machine: creates a virtual environment, installs central,
# initialises the data directory on first run, and serves on http://127.0.0.1:9083.
#
#   scripts/start-central.sh                  # foreground; Ctrl-C stops it
#   scripts/start-central.sh --background     # detached; log and pid file in the data dir
#   scripts/start-central.sh --listen 0.0.0.0 --port 9083
#
# Environment: CENTRAL_DATA_DIR (default /var/lib/central as root, else
# ~/.local/share/central), CENTRAL_CONFIG (a config file), PYTHON (interpreter to use),
# CENTRAL_VENV (default: .venv next to this script's repository).
set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
}

listen=""
port=""
background=0
while [ $# -gt 0 ]; do
  case "$1" in
    --listen) listen=${2:?--listen needs an address}; shift 2 ;;
    --port) port=${2:?--port needs a number}; shift 2 ;;
    --background) background=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "start-central.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
venv=${CENTRAL_VENV:-$repo/.venv}

fail() { echo "start-central.sh: $*" >&2; exit 1; }

command -v "$python" >/dev/null || fail "no $python found; install Python 3.11 or newer (apt-get install python3 python3-venv)"
"$python" - <<'PY' || fail "central needs Python 3.11 or newer (tomllib); found $("$python" --version 2>&1)"
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

if [ ! -x "$venv/bin/python" ]; then
  echo "creating virtual environment $venv"
  "$python" -m venv "$venv" || fail "cannot create a virtual environment (on Debian: apt-get install python3-venv)"
fi
if ! "$venv/bin/python" -c "import central" 2>/dev/null \
   || [ "$repo/pyproject.toml" -nt "$venv/.central-installed" ]; then
  echo "installing central into $venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q -e "$repo" || fail "pip could not install central (see the messages above)"
  touch "$venv/.central-installed"
fi
central="$venv/bin/central"

if [ -n "$listen" ]; then export CENTRAL_HTTP_LISTEN="$listen"; fi
if [ -n "$port" ]; then export CENTRAL_HTTP_PORT="$port"; fi

# Resolve the effective settings through central itself, so config file and env agree.
read -r data_dir db listen port < <("$venv/bin/python" - <<'PY'
from central.config import ConfigError, load_config
try:
    c = load_config()
except ConfigError as exc:
    raise SystemExit(f"config: {exc}")
print(c.data_path, c.database_path, c.http.listen, c.http.port)
PY
) || fail "invalid configuration"

if ! "$venv/bin/python" - "$listen" "$port" <<'PY'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((host, port))
except OSError as exc:
    sys.exit(f"{host}:{port} is not free: {exc.strerror}")
finally:
    s.close()
PY
then
  fail "port $port on $listen is in use; stop what runs there or pass --port"
fi

if [ ! -f "$db" ]; then
  echo "first start: initialising $data_dir"
  "$central" init || fail "central init failed"
  echo
  echo "Keep the admin password above: it is shown only once."
fi

url="http://$listen:$port/"
if [ "$background" = 1 ]; then
  log="$data_dir/central.log"
  nohup "$central" serve >>"$log" 2>&1 &
  pid=$!
  echo "$pid" > "$data_dir/central.pid"
  for _ in $(seq 1 50); do
    if "$venv/bin/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + 'health', timeout=1)" "$url" 2>/dev/null; then
      echo "central is running (pid $pid) at $url  - log: $log"
      exit 0
    fi
    kill -0 "$pid" 2>/dev/null || fail "central exited at start; see $log"
    sleep 0.2
  done
  fail "central did not answer on $url within 10 s; see $log"
fi
echo "central at $url (Ctrl-C stops it)"
exec "$central" serve
