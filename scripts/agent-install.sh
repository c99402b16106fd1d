#!/bin/sh
# central agent installer: runs on the host, as root, read by `sh -s` from stdin.
#
# The one remote half of both deploy paths: scripts/deploy-agent.sh pipes it over ssh and
# `central deploy` sends it over asyncssh (the wheel carries it as central/_bundled/).
# Before it runs, the client has uploaded the agent to /opt/central-agent/agent.py.new.
#
# Arguments (base64 or checked tokens only, so no host or user text is ever parsed by a
# shell):  SHA256 PORT POLICY_B64 KEY_B64 KEY_BLOB
#   SHA256      expected sha256 of the uploaded agent
#   PORT        port the agent listens on at 127.0.0.1
#   POLICY_B64  base64 of the policy JSON for /etc/central-agent.json
#   KEY_B64     base64 of the authorized_keys line for the central ("" : none)
#   KEY_BLOB    base64 blob of the central's key (drops older lines of the same key)
# The key goes to the login user's authorized_keys ($SUDO_USER when run through sudo).
#
# Output, one per line: "STEP name" as each step begins, "MODE systemd|fallback",
# "AGENT version sha256" at the end; on failure "FAIL step<TAB>what happened<TAB>what to do"
# and exit status 1.
set -eu
sha=$1 port=$2 policy_b64=$3 key_b64=$4 blob=$5
dir=/opt/central-agent
STEP=python
step() { STEP=$1; echo "STEP $1"; }
fail() { printf 'FAIL %s\t%s\t%s\n' "$STEP" "$1" "${2:-Fix that on the host and run again}"; exit 1; }

step python
py=$(command -v python3 2>/dev/null) || py=""
[ -n "$py" ] && ver=$("$py" -c 'import sys; print("%d %d" % sys.version_info[:2])' 2>/dev/null) || py=""
[ -n "$py" ] || fail "python3 not found on the host (or it does not run)" \
    "Install it (Debian/Ubuntu: apt-get install python3; RHEL: dnf install python3) and run again"
# shellcheck disable=SC2086  # split into major and minor on purpose
set -- $ver
if [ "$1" -lt 3 ] || { [ "$1" -eq 3 ] && [ "$2" -lt 6 ]; }; then
    fail "python3 is $1.$2; the agent needs 3.6 or later" "Install a newer python3 and run again"
fi

step verify-upload
unb64() { "$py" -c 'import base64,sys; sys.stdout.write(base64.b64decode(sys.argv[1]).decode())' "$1"; }
got=$("$py" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$dir/agent.py.new") \
    || fail "cannot read the uploaded file $dir/agent.py.new" "Check free space and that /opt is writable"
[ "$got" = "$sha" ] || fail "uploaded agent.py has sha256 $got, expected $sha" "Run again (the upload was cut short)"
chmod 0644 "$dir/agent.py.new"
mv -f "$dir/agent.py.new" "$dir/agent.py"

step policy
umask 022
unb64 "$policy_b64" > /etc/central-agent.json.new || fail "cannot write /etc/central-agent.json"
chown 0:0 /etc/central-agent.json.new && chmod 0644 /etc/central-agent.json.new
mv -f /etc/central-agent.json.new /etc/central-agent.json

step authorized-key
key=$(unb64 "$key_b64")
if [ -n "$key" ]; then
    owner=${SUDO_USER:-$(id -un)}
    home=$(awk -F: -v u="$owner" '$1 == u { print $6; exit }' /etc/passwd 2>/dev/null || true)
    [ -n "$home" ] || home=$HOME
    ak="$home/.ssh/authorized_keys"
    mkdir -p "$home/.ssh" || fail "cannot create $home/.ssh"
    touch "$ak" || fail "cannot write $ak"
    # drop every line holding this key (restricted or not), then add the wanted one
    { grep -v -F -e "$blob" "$ak" || true; printf '%s\n' "$key"; } > "$ak.central-new" \
        || fail "cannot write $ak"
    chmod 0600 "$ak.central-new"
    chown "$owner" "$ak.central-new" "$home/.ssh" 2>/dev/null || true
    chmod 0700 "$home/.ssh"
    mv -f "$ak.central-new" "$ak"
fi

cmd="$py $dir/agent.py --listen 127.0.0.1 --port $port --policy /etc/central-agent.json"
if [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    mode=systemd logs="journalctl -u central-agent"
    step systemd-unit
    cat > /etc/systemd/system/central-agent.service.new <<EOF
[Unit]
Description=central monitoring agent (reached by the central over SSH on 127.0.0.1:$port)
After=network.target

[Service]
ExecStart=$cmd
Restart=always
RestartSec=2
User=root
Nice=5

[Install]
WantedBy=multi-user.target
EOF
    mv -f /etc/systemd/system/central-agent.service.new /etc/systemd/system/central-agent.service
    systemctl daemon-reload || fail "systemctl daemon-reload failed"
    systemctl enable central-agent.service >/dev/null 2>&1 || fail "systemctl enable failed"
    step start
    systemctl restart central-agent.service \
        || fail "systemctl restart failed" "See journalctl -u central-agent on the host"
else
    mode=fallback logs=/var/log/central-agent.log
    step fallback-wrapper
    cat > "$dir/run-agent.sh.new" <<EOF
#!/bin/sh
# Keeps the central agent running on a host without systemd (installed by central's deploy).
echo \$\$ > $dir/wrapper.pid
trap 'kill \$child 2>/dev/null; exit 0' TERM INT
while :; do
    $cmd &
    child=\$!
    echo \$child > $dir/agent.pid
    wait \$child
    sleep 2
done
EOF
    chmod 0755 "$dir/run-agent.sh.new"
    mv -f "$dir/run-agent.sh.new" "$dir/run-agent.sh"
    step boot-entry
    boot="$dir/run-agent.sh >>/var/log/central-agent.log 2>&1 &"
    if command -v crontab >/dev/null 2>&1; then
        { crontab -l 2>/dev/null | grep -v -F "$dir/run-agent.sh" || true
          echo "@reboot $boot"; } | crontab - || fail "cannot install the @reboot crontab entry"
    else
        if [ ! -f /etc/rc.local ]; then
            printf '#!/bin/sh\nexit 0\n' > /etc/rc.local
        fi
        if ! grep -q -F "$dir/run-agent.sh" /etc/rc.local; then
            { grep -v '^exit 0' /etc/rc.local; echo "$boot"; echo "exit 0"; } > /etc/rc.local.new
            mv -f /etc/rc.local.new /etc/rc.local
        fi
        chmod 0755 /etc/rc.local
    fi
    step start
    for f in wrapper.pid agent.pid; do
        pid=$(cat "$dir/$f" 2>/dev/null || true)
        case $pid in ''|*[!0-9]*) continue ;; esac
        # only our own processes: the pid file may be stale after a reboot
        if grep -q -F -e run-agent.sh -e agent.py "/proc/$pid/cmdline" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
        fi
    done
    i=0
    while [ $i -lt 50 ]; do
        alive=0
        for f in wrapper.pid agent.pid; do
            pid=$(cat "$dir/$f" 2>/dev/null || true)
            case $pid in ''|*[!0-9]*) continue ;; esac
            grep -q -F -e run-agent.sh -e agent.py "/proc/$pid/cmdline" 2>/dev/null && alive=1
        done
        [ $alive = 0 ] && break
        sleep 0.1; i=$((i + 1))
    done
    mkdir -p /var/log
    if command -v setsid >/dev/null 2>&1; then
        nohup setsid "$dir/run-agent.sh" >>/var/log/central-agent.log 2>&1 </dev/null &
    else
        nohup "$dir/run-agent.sh" >>/var/log/central-agent.log 2>&1 </dev/null &
    fi
fi
echo "MODE $mode"

step health
# waits for /api/health and prints "version sha256" (or why it got no answer)
out=$("$py" -c '
import json, sys, time, urllib.request
url = "http://127.0.0.1:%s/api/health" % sys.argv[1]
deadline, err = time.time() + 20, None
while time.time() < deadline:
    try:
        doc = json.loads(urllib.request.urlopen(url, timeout=3).read().decode())
        print("%s %s" % (doc.get("version"), doc.get("sha256")))
        sys.exit(0)
    except Exception as exc:
        err = exc
        time.sleep(0.3)
print("no answer from %s: %s" % (url, err))
sys.exit(1)
' "$port") || fail "the agent does not answer on 127.0.0.1:$port ($out)" "See $logs on the host"
# shellcheck disable=SC2086  # split into version and sha256 on purpose
set -- $out
[ "${2:-}" = "$sha" ] || fail "the agent answering reports sha256 $(echo "${2:-none}" | cut -c1-12), deployed $(echo "$sha" | cut -c1-12)" \
    "Another process may hold port $port: stop it and run again"
echo "AGENT $1 $2"
