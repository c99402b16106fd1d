#!/usr/bin/env bash
# Deploy the central agent to hosts over the operator's own SSH access.
set -euo pipefail

PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    cat <<EOF
Usage: $PROG [options] user@host [user@host ...]

Installs the central agent on each host: checks SSH and python3 >= 3.6, uploads agent.py
to /opt/central-agent/ (sha256 verified on the host), writes the policy file
/etc/central-agent.json, installs a systemd unit central-agent.service (or, without
systemd, a restart-loop wrapper started with nohup and at boot from /etc/rc.local or an
@reboot crontab entry), installs the central's public key restricted to the agent port,
(re)starts the agent and checks /api/health on the host. Running it again upgrades in place.
Uses your own ssh: your keys, ssh-agent and ~/.ssh/config. Non-root logins need
passwordless sudo.

Options:
  --agent PATH            agent.py to deploy (default: $SCRIPT_DIR/../agent/agent.py)
  --central-key FILE.pub  the central's public key (default:
                          \${CENTRAL_DATA_DIR:-/var/lib/central}/id_ed25519.pub)
  --no-central-key        do not install the central's key
  --full-access           install the central's key without restrictions (allows a shell)
  --agent-port PORT       port the agent listens on at 127.0.0.1 (default 8083)
  --no-actions            agent refuses every action (kill, service, docker)
  --allow-actions LIST    comma-separated subset of kill,service,docker (default: all)
  --service-pattern GLOB  units actions may touch (repeatable; default "*")
  --container-pattern GLOB  docker containers actions may touch (repeatable; default "*")
  --watch-unit UNIT       unit whose state the agent reports (repeatable)
  --identity FILE         ssh private key to log in with (ssh -i)
  --ssh-opt OPT           extra ssh option, as for ssh -o (repeatable)
  -j, --jobs N            hosts deployed in parallel (default 8)
  -h, --help              this help

Examples:
  $PROG root@web-1 root@web-2
  $PROG --central-key ./id_ed25519.pub --no-actions -j 20 \$(cat hosts.txt)
  $PROG --allow-actions service --service-pattern 'nginx*' --watch-unit nginx.service admin@db-1
  $PROG --identity ~/.ssh/deploy --ssh-opt Port=2222 --ssh-opt ProxyJump=bastion root@10.0.0.5

Exit status: 0 when every host succeeded, 1 when any failed, 2 for a usage error.
EOF
}

die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 2; }

agent_path="$SCRIPT_DIR/../agent/agent.py"
central_key="${CENTRAL_DATA_DIR:-/var/lib/central}/id_ed25519.pub"
install_key=1
full_access=0
agent_port=8083
actions="kill,service,docker"
service_patterns=()
container_patterns=()
watch_units=()
ssh_opts=()
jobs=8
targets=()

need_arg() { [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --agent) need_arg "$@"; agent_path=$2; shift 2 ;;
        --central-key) need_arg "$@"; central_key=$2; shift 2 ;;
        --no-central-key) install_key=0; shift ;;
        --full-access) full_access=1; shift ;;
        --agent-port) need_arg "$@"; agent_port=$2; shift 2 ;;
        --no-actions) actions=""; shift ;;
        --allow-actions) need_arg "$@"; actions=$2; shift 2 ;;
        --service-pattern) need_arg "$@"; service_patterns+=("$2"); shift 2 ;;
        --container-pattern) need_arg "$@"; container_patterns+=("$2"); shift 2 ;;
        --watch-unit) need_arg "$@"; watch_units+=("$2"); shift 2 ;;
        --identity) need_arg "$@"; ssh_opts+=(-i "$2"); shift 2 ;;
        --ssh-opt) need_arg "$@"; ssh_opts+=(-o "$2"); shift 2 ;;
        -j|--jobs) need_arg "$@"; jobs=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; targets+=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) targets+=("$1"); shift ;;
    esac
done

[[ ${#targets[@]} -gt 0 ]] || { usage >&2; exit 2; }
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive number, not '$jobs'"
[[ $agent_port =~ ^[1-9][0-9]{0,4}$ && $agent_port -le 65535 ]] \
    || die "--agent-port must be a port number, not '$agent_port'"
[[ -r $agent_path ]] || die "agent file $agent_path not found or unreadable (use --agent PATH)"
target_re='^[][A-Za-z0-9_.@%:-]+$'
for t in "${targets[@]}"; do
    # ssh would take a leading '-' as an option; anything else odd is a typo
    [[ $t =~ $target_re && $t != -* ]] || die "'$t' does not look like user@host"
done

json_list() {
    # JSON array of strings already checked to need no escaping
    local out="" item
    for item in "$@"; do out+="${out:+, }\"$item\""; done
    printf '[%s]' "$out"
}

glob_re='^[][A-Za-z0-9@_.:*?!-]+$'
for p in "${service_patterns[@]}" "${container_patterns[@]}" "${watch_units[@]}"; do
    [[ $p =~ $glob_re ]] || die "pattern or unit '$p' has characters other than A-Z a-z 0-9 @ _ . : * ? ! [ ] -"
done
kill_on=false service_on=false docker_on=false
IFS=, read -r -a action_list <<<"$actions"
for a in "${action_list[@]}"; do
    case $a in
        kill) kill_on=true ;;
        service) service_on=true ;;
        docker) docker_on=true ;;
        "") ;;
        *) die "--allow-actions takes kill, service and docker, not '$a'" ;;
    esac
done
[[ ${#service_patterns[@]} -gt 0 ]] || service_patterns=("*")
[[ ${#container_patterns[@]} -gt 0 ]] || container_patterns=("*")
policy_json=$(printf '{"actions": {"kill": %s, "service": %s, "docker": %s}, "service_patterns": %s, "container_patterns": %s, "watched_units": %s}\n' \
    "$kill_on" "$service_on" "$docker_on" "$(json_list "${service_patterns[@]}")" \
    "$(json_list "${container_patterns[@]}")" "$(json_list "${watch_units[@]+"${watch_units[@]}"}")")

key_line=""
if [[ $install_key == 1 ]]; then
    [[ -r $central_key ]] || die "central public key $central_key not found (run 'central init', pass --central-key FILE.pub, or --no-central-key)"
    read -r key_type key_blob _ < "$central_key" || true
    [[ ${key_type:-} =~ ^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh.com)$ && ${key_blob:-} =~ ^[A-Za-z0-9+/=]+$ ]] \
        || die "$central_key is not an OpenSSH public key line"
    if [[ $full_access == 1 ]]; then
        key_line="$key_type $key_blob central"
    else
        key_line="restrict,port-forwarding,permitopen=\"127.0.0.1:$agent_port\",command=\"/bin/false\" $key_type $key_blob central"
    fi
fi

agent_sha=$(sha256sum "$agent_path" | cut -d' ' -f1)
b64() { printf '%s' "$1" | base64 -w0; }
policy_b64=$(b64 "$policy_json")
key_b64=$(b64 "$key_line")

work=$(mktemp -d "${TMPDIR:-/tmp}/deploy-agent.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Runs on the host as root (sh -s). Arguments are base64 or checked tokens; the uploaded
# file waits in /opt/central-agent/agent.py.new.
cat >"$work/install.sh" <<'REMOTE'
set -eu
sha=$1 port=$2 policy_b64=$3 key_b64=$4 key_home_b64=$5 key_owner_b64=$6 py=$7 blob=$8
dir=/opt/central-agent
STEP=verify-upload
fail() { echo "FAIL $STEP: $*"; exit 1; }
unb64() { "$py" -c 'import base64,sys; sys.stdout.write(base64.b64decode(sys.argv[1]).decode())' "$1"; }
got=$("$py" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$dir/agent.py.new") \
    || fail "cannot read the uploaded file"
[ "$got" = "$sha" ] || fail "uploaded agent.py has sha256 $got, expected $sha"
chmod 0644 "$dir/agent.py.new"
mv -f "$dir/agent.py.new" "$dir/agent.py"

STEP=policy
umask 022
unb64 "$policy_b64" > /etc/central-agent.json.new || fail "cannot write /etc/central-agent.json"
chown 0:0 /etc/central-agent.json.new && chmod 0644 /etc/central-agent.json.new
mv -f /etc/central-agent.json.new /etc/central-agent.json

STEP=authorized-key
key=$(unb64 "$key_b64")
if [ -n "$key" ]; then
    home=$(unb64 "$key_home_b64") owner=$(unb64 "$key_owner_b64")
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
    STEP=systemd-unit
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
    STEP=start
    systemctl restart central-agent.service \
        || fail "systemctl restart failed; see journalctl -u central-agent"
    echo "MODE systemd"
else
    STEP=fallback-wrapper
    cat > "$dir/run-agent.sh.new" <<EOF
#!/bin/sh
# Keeps the central agent running on a host without systemd (installed by deploy-agent.sh).
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
    STEP=boot-entry
    boot="$dir/run-agent.sh >>/var/log/central-agent.log 2>&1 &"
    if command -v crontab >/dev/null 2>&1; then
        { crontab -l 2>/dev/null | grep -v -F "$dir/run-agent.sh" || true
          echo "@reboot $boot"; } | crontab - || fail "cannot install the @reboot crontab entry"
        echo "BOOT crontab"
    else
        if [ ! -f /etc/rc.local ]; then
            printf '#!/bin/sh\nexit 0\n' > /etc/rc.local
        fi
        if ! grep -q -F "$dir/run-agent.sh" /etc/rc.local; then
            { grep -v '^exit 0' /etc/rc.local; echo "$boot"; echo "exit 0"; } > /etc/rc.local.new
            mv -f /etc/rc.local.new /etc/rc.local
        fi
        chmod 0755 /etc/rc.local
        echo "BOOT rc.local"
    fi
    STEP=start
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
    echo "MODE fallback"
fi
REMOTE

# Runs on the host with its python: waits for /api/health, prints "version sha256".
cat >"$work/health.py" <<'REMOTE'
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
REMOTE

last_line() { tail -n1 "$1" | tr -d '\r'; }

result() {  # host result version sha message
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" > "$work/result.$idx"
}

deploy_host() {
    local target=$1 out log="$work/log.$idx"
    local ssh_cmd=(ssh -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=10
                   -o ControlMaster=auto -o "ControlPath=$work/cm-$idx" -o ControlPersist=120
                   "${ssh_opts[@]+"${ssh_opts[@]}"}" --)
    fail() {  # step, what happened, what to do
        "${ssh_cmd[@]}" -O exit "$target" >/dev/null 2>&1 || true
        printf '[%s] FAILED at %s: %s. %s\n' "$target" "$1" "$2" "$3" >&2
        result "$target" "FAILED" "-" "-" "$1: $2. $3"
        exit 1
    }
    say() { printf '[%s] %s\n' "$target" "$*" >&2; }

    say "connecting"
    # shellcheck disable=SC2016  # expanded by the remote shell, on purpose
    if ! out=$("${ssh_cmd[@]}" "$target" 'echo "ok $(id -u) $(id -un)"; printf "%s\n" "$HOME"' 2>"$log"); then
        fail connect "cannot log in over SSH ($(last_line "$log"))" \
            "Check that the host is up, that 'ssh $target' works without a password prompt (ssh-copy-id), and that its host key is in known_hosts"
    fi
    local uid user home
    read -r _ uid user <<<"$(head -n1 <<<"$out")"
    home=$(sed -n 2p <<<"$out")
    local sudo=""
    if [[ $uid != 0 ]]; then
        sudo="sudo -n"
        "${ssh_cmd[@]}" "$target" 'sudo -n true' >"$log" 2>&1 \
            || fail privileges "$user is not root and 'sudo -n' failed" \
                "Log in as root or allow $user passwordless sudo"
    fi

    say "checking python3"
    # shellcheck disable=SC2016  # expanded by the remote shell, on purpose
    out=$("${ssh_cmd[@]}" "$target" 'p=$(command -v python3) && v=$("$p" -c "import sys; print(\"%d %d\" % sys.version_info[:2])" 2>/dev/null) && echo "$p $v" || echo none' 2>"$log") \
        || fail python "the python3 check failed ($(last_line "$log"))" "Run again"
    local py major minor
    read -r py major minor <<<"$out"
    if [[ $py == none ]]; then
        fail python "python3 not found on the host (or it does not run)" \
            "Install it (Debian/Ubuntu: apt-get install python3; RHEL: dnf install python3) and run again"
    fi
    [[ $py =~ ^/[A-Za-z0-9._/+-]+$ && $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] \
        || fail python "unexpected answer '$out'" "Check python3 and PATH on the host"
    if (( major < 3 || (major == 3 && minor < 6) )); then
        fail python "python3 is $major.$minor; the agent needs 3.6 or later" \
            "Install a newer python3 and run again"
    fi

    say "uploading agent.py ($(cut -c1-12 <<<"$agent_sha"))"
    "${ssh_cmd[@]}" "$target" "$sudo sh -c 'mkdir -p /opt/central-agent && cat > /opt/central-agent/agent.py.new'" \
        <"$agent_path" >"$log" 2>&1 \
        || fail upload "could not write /opt/central-agent/agent.py.new ($(last_line "$log"))" \
            "Check free space and that /opt is writable"

    say "installing"
    local args
    args=$(printf ' %q' "$agent_sha" "$agent_port" "$policy_b64" "$key_b64" \
        "$(b64 "$home")" "$(b64 "$user")" "$py" "${key_blob:-none}")
    out=$("${ssh_cmd[@]}" "$target" "$sudo sh -s --$args" <"$work/install.sh" 2>&1) || {
        local failed
        failed=$(grep '^FAIL ' <<<"$out" | tail -n1)
        if [[ -n $failed ]]; then
            read -r _ step msg <<<"$failed"
            fail "${step%:}" "$msg" "Fix that on the host and run again"
        fi
        fail install "$(tail -n1 <<<"$out")" "Run again; if it persists, check the host by hand"
    }
    local mode
    mode=$(sed -n 's/^MODE //p' <<<"$out")

    say "checking /api/health ($mode)"
    if ! out=$("${ssh_cmd[@]}" "$target" "$(printf '%q - %q' "$py" "$agent_port")" <"$work/health.py" 2>"$log"); then
        local where="journalctl -u central-agent"
        [[ $mode == systemd ]] || where="/var/log/central-agent.log"
        fail health "the agent does not answer on 127.0.0.1:$agent_port ($(tail -n1 <<<"$out"))" \
            "See $where on the host"
    fi
    local version sha
    read -r version sha <<<"$out"
    [[ $sha == "$agent_sha" ]] || fail health "the agent answering reports sha256 ${sha:0:12}, deployed ${agent_sha:0:12}" \
        "Another process may hold port $agent_port: stop it and run again"
    "${ssh_cmd[@]}" -O exit "$target" >/dev/null 2>&1 || true
    say "done: agent $version ($mode)"
    result "$target" "ok" "$version" "${sha:0:12}" "$mode"
}

idx=0
running=0
for target in "${targets[@]}"; do
    idx=$((idx + 1))
    if [[ $running -ge $jobs ]]; then
        wait -n || true
        running=$((running - 1))
    fi
    ( deploy_host "$target" ) &
    running=$((running + 1))
done
wait || true

failed=0
printf '\n%-32s %-7s %-10s %-13s %s\n' HOST RESULT AGENT SHA256 MESSAGE
for i in $(seq 1 "$idx"); do
    if [[ -f $work/result.$i ]]; then
        IFS=$'\t' read -r host res version sha msg <"$work/result.$i"
    else
        host=${targets[$((i - 1))]} res=FAILED version=- sha=- msg="deploy stopped unexpectedly"
    fi
    [[ $res == ok ]] || failed=$((failed + 1))
    printf '%-32s %-7s %-10s %-13s %s\n' "$host" "$res" "$version" "$sha" "$msg"
done
printf '\n%d of %d hosts deployed\n' "$((idx - failed))" "$idx"
[[ $failed == 0 ]]
