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
/etc/central-agent.json, creates the agent secret /etc/central-agent/secret (kept when
sound), creates the central's login user (central) whose key may only forward to the
agent port (an sshd Match block, validated with sshd -t before sshd reloads), installs a
systemd unit central-agent.service (or, without systemd, a restart-loop wrapper started
with nohup and at boot from /etc/rc.local or an @reboot crontab entry), (re)starts the
agent, checks that it proves it holds the secret, checks that you can still log in
(rolling the sshd changes back if not) and hands the secret to the local central
('central server secret --host HOST'), which keeps it until 'central server add' adds the
host. Running it again upgrades in place. Uses your own ssh: your keys, ssh-agent and
~/.ssh/config. Non-root logins need passwordless sudo.

Options:
  --agent PATH            agent.py to deploy (default: $SCRIPT_DIR/../agent/agent.py)
  --central-key FILE.pub  the central's public key (default:
                          \${CENTRAL_DATA_DIR:-/var/lib/central}/id_ed25519.pub)
  --no-central-key        do not install the central's key
  --full-access           install the central's key without restrictions, for your login
                          user (allows a shell; add the server with --user that user)
  --central-user NAME     the central's login user to create (default central)
  --rotate-secret         give the agent a new secret even if it has a sound one
  --uninstall             remove what deploying installed instead: the agent and its service
                          (unit or fallback loop and boot entry), /opt/central-agent, the
                          policy, /etc/central-agent (secret, the login user's key), the sshd
                          Match block, the central's (and terminal) key lines in
                          authorized_keys, and the login user deploy created (--central-user)
  --central CMD           the central CLI that stores the secrets (default: central on
                          PATH, else $SCRIPT_DIR/../.venv/bin/central)
  --secret-dir DIR        write each host's secret to DIR/HOST.secret (mode 0600) instead;
                          give it to the central later with 'central server secret'
  --terminal-user NAME    also install the web terminal's key for this existing account,
                          restricted to a PTY session (restrict,pty; see docs/terminal.md)
  --terminal-key FILE.pub the terminal's public key (default:
                          \${CENTRAL_DATA_DIR:-/var/lib/central}/terminal_ed25519.pub)
  --agent-port PORT       port the agent listens on at 127.0.0.1 (default 8083)
  --no-actions            agent refuses every action (kill, service, docker)
  --allow-actions LIST    comma-separated subset of kill,service,docker (default: all)
  --service-pattern GLOB  units actions may touch (repeatable; default "*")
  --container-pattern GLOB  docker containers actions may touch (repeatable; default "*")
  --watch-unit UNIT       unit whose state the agent reports (repeatable)
  --identity FILE         ssh private key to log in with (ssh -i)
  --ssh-opt OPT           extra ssh option, as for ssh -o (repeatable)
  --ssh-config FILE       ssh config file to use instead of ~/.ssh/config (ssh -F; the
                          jump hosts' ssh reads it too)
  --inventory FILE        deploy the hosts of an Ansible inventory, ssh config or CSV (as
                          central server import reads it): addresses, ports, users and
                          bastions (central_via, ProxyJump, via) from the file
  --jump [USER@]HOST[:PORT][,...]  reach the hosts through these bastions (ssh -J, ProxyJump);
                          the bastions' settings (key, known_hosts) come from the ssh config
  -j, --jobs N            hosts deployed in parallel (default 8)
  -h, --help              this help

Examples:
  $PROG root@web-1 root@web-2
  $PROG --central-key ./id_ed25519.pub --no-actions -j 20 \$(cat hosts.txt)
  $PROG --allow-actions service --service-pattern 'nginx*' --watch-unit nginx.service admin@db-1
  $PROG --identity ~/.ssh/deploy --ssh-opt Port=2222 --ssh-opt ProxyJump=bastion root@10.0.0.5
  $PROG --inventory inventory.ini -j 20          # hosts, users, bastions from the file
  $PROG --ssh-config ./fleet_ssh_config --jump bastion1 root@10.1.0.7
  $PROG --terminal-user ops root@web-1    # then: central terminal enable web-1 --user ops

Exit status: 0 when every host succeeded, 1 when any failed, 2 for a usage error.
EOF
}

die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 2; }

agent_path="$SCRIPT_DIR/../agent/agent.py"
central_key="${CENTRAL_DATA_DIR:-/var/lib/central}/id_ed25519.pub"
install_key=1
full_access=0
central_user=central
rotate=0
uninstall=0
central_cli=""
secret_dir=""
terminal_user=""
terminal_key="${CENTRAL_DATA_DIR:-/var/lib/central}/terminal_ed25519.pub"
agent_port=8083
actions="kill,service,docker"
service_patterns=()
container_patterns=()
watch_units=()
ssh_opts=()
ssh_config_file=""
inventory=""
jobs=8
targets=()

need_arg() { [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --agent) need_arg "$@"; agent_path=$2; shift 2 ;;
        --central-key) need_arg "$@"; central_key=$2; shift 2 ;;
        --no-central-key) install_key=0; shift ;;
        --full-access) full_access=1; shift ;;
        --central-user) need_arg "$@"; central_user=$2; shift 2 ;;
        --rotate-secret) rotate=1; shift ;;
        --uninstall) uninstall=1; shift ;;
        --central) need_arg "$@"; central_cli=$2; shift 2 ;;
        --secret-dir) need_arg "$@"; secret_dir=$2; shift 2 ;;
        --terminal-user) need_arg "$@"; terminal_user=$2; shift 2 ;;
        --terminal-key) need_arg "$@"; terminal_key=$2; shift 2 ;;
        --agent-port) need_arg "$@"; agent_port=$2; shift 2 ;;
        --no-actions) actions=""; shift ;;
        --allow-actions) need_arg "$@"; actions=$2; shift 2 ;;
        --service-pattern) need_arg "$@"; service_patterns+=("$2"); shift 2 ;;
        --container-pattern) need_arg "$@"; container_patterns+=("$2"); shift 2 ;;
        --watch-unit) need_arg "$@"; watch_units+=("$2"); shift 2 ;;
        --identity) need_arg "$@"; ssh_opts+=(-i "$2"); shift 2 ;;
        --ssh-opt) need_arg "$@"; ssh_opts+=(-o "$2"); shift 2 ;;
        --ssh-config) need_arg "$@"; ssh_opts+=(-F "$2"); ssh_config_file=$2; shift 2 ;;
        --inventory) need_arg "$@"; inventory=$2; shift 2 ;;
        --jump) need_arg "$@"; ssh_opts+=(-J "$2"); shift 2 ;;
        -j|--jobs) need_arg "$@"; jobs=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; targets+=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) targets+=("$1"); shift ;;
    esac
done

[[ ${#targets[@]} -gt 0 || -n $inventory ]] || { usage >&2; exit 2; }
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive number, not '$jobs'"
[[ $agent_port =~ ^[1-9][0-9]{0,4}$ && $agent_port -le 65535 ]] \
    || die "--agent-port must be a port number, not '$agent_port'"
[[ -r $agent_path ]] || die "agent file $agent_path not found or unreadable (use --agent PATH)"
[[ $central_user =~ ^[a-z_][a-z0-9_-]{0,31}$ && $central_user != root ]] \
    || die "--central-user must be a user name (not root), not '$central_user'"
if [[ $uninstall == 1 ]]; then
    :  # nothing goes to the central
elif [[ -n $secret_dir ]]; then
    { mkdir -p "$secret_dir" && chmod 0700 "$secret_dir"; } || die "cannot create --secret-dir $secret_dir"
else
    # each host's agent secret goes to the central's database, so the central must be here
    if [[ -z $central_cli ]]; then
        central_cli=$(command -v central 2>/dev/null || true)
        [[ -n $central_cli || ! -x $SCRIPT_DIR/../.venv/bin/central ]] || central_cli=$SCRIPT_DIR/../.venv/bin/central
    fi
    { [[ -n $central_cli ]] && "$central_cli" --help >/dev/null 2>&1; } \
        || die "the central CLI was not found${central_cli:+ ($central_cli does not run)}: run this where the central runs, pass --central CMD, or --secret-dir DIR"
fi
if [[ -n $inventory ]]; then
    # the inventory's hosts as ssh sees them: a generated ssh config (HostName, Port, User,
    # ProxyJump to the bastion) that includes yours for everything else; its Host names are the targets
    [[ -n $central_cli ]] || central_cli=$(command -v central 2>/dev/null || true)
    [[ -n $central_cli || ! -x $SCRIPT_DIR/../.venv/bin/central ]] || central_cli=$SCRIPT_DIR/../.venv/bin/central
    [[ -n $central_cli ]] || die "--inventory needs the central CLI (pass --central CMD)"
    inventory_config=$(mktemp "${TMPDIR:-/tmp}/deploy-agent-inventory.XXXXXX")
    trap 'rm -f "$inventory_config"' EXIT
    include=${ssh_config_file:-}
    [[ -n $include || ! -r $HOME/.ssh/config ]] || include=$HOME/.ssh/config
    "$central_cli" server ssh-config "$inventory" ${include:+--include "$include"} >"$inventory_config" \
        || die "cannot read the inventory $inventory"
    ssh_opts+=(-F "$inventory_config")  # the last -F is the one ssh reads
    while read -r word name _; do
        [[ $word == Host && $name != "*" ]] && targets+=("$name")
    done <"$inventory_config"
    [[ ${#targets[@]} -gt 0 ]] || die "the inventory $inventory names no hosts"
fi
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
uninstall_blobs=()
if [[ $uninstall == 1 ]]; then
    # the public keys name the lines to remove; a key file that is not here: none of its lines
    for f in "$central_key" "$terminal_key"; do
        blob=-
        if [[ -r $f ]]; then
            read -r _ blob _ < "$f" || true
            [[ ${blob:-} =~ ^[A-Za-z0-9+/=]+$ ]] || die "$f is not an OpenSSH public key line"
        fi
        uninstall_blobs+=("$blob")
    done
    install_key=0
fi
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

terminal_b64="" terminal_blob=""
if [[ -n $terminal_user ]]; then
    [[ $terminal_user =~ ^[A-Za-z_][A-Za-z0-9_.-]{0,31}$ ]] || die "--terminal-user '$terminal_user' is not a user name"
    [[ -r $terminal_key ]] || die "terminal public key $terminal_key not found (run 'central terminal key', or pass --terminal-key FILE.pub)"
    read -r t_type terminal_blob _ < "$terminal_key" || true
    [[ ${t_type:-} =~ ^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521))$ && ${terminal_blob:-} =~ ^[A-Za-z0-9+/=]+$ ]] \
        || die "$terminal_key is not an OpenSSH public key line"
    [[ -z $central_key || ! -r $central_key ]] || ! grep -qF -- "$terminal_blob" "$central_key" \
        || die "$terminal_key is the polling key; the terminal needs a key pair of its own"
    terminal_b64=$(printf '%s' "restrict,pty $t_type $terminal_blob central-terminal" | base64 -w0)
    terminal_installer="$SCRIPT_DIR/terminal-key-install.sh"
    [[ -r $terminal_installer ]] || die "installer $terminal_installer not found (incomplete checkout?)"
fi

agent_sha=$(sha256sum "$agent_path" | cut -d' ' -f1)
b64() { printf '%s' "$1" | base64 -w0; }
policy_b64=$(b64 "$policy_json")
key_b64=$(b64 "$key_line")

work=$(mktemp -d "${TMPDIR:-/tmp}/deploy-agent.XXXXXX")
trap 'rm -rf "$work"; [[ -z ${inventory_config:-} ]] || rm -f "$inventory_config"' EXIT

# The remote half (shared with `central deploy`): runs on the host as root under `sh -s`.
installer="$SCRIPT_DIR/agent-install.sh"
[[ -r $installer ]] || die "installer $installer not found (incomplete checkout?)"

last_line() { tail -n1 "$1" | tr -d '\r'; }

# Run on the host before anything is uploaded: "python MAJOR MINOR", or nothing.
# shellcheck disable=SC2016  # expanded by the remote shell, on purpose
PYTHON_CHECK='command -v python3 >/dev/null 2>&1 && python3 -c "import sys; print(\"python %d %d\" % sys.version_info[:2])"'

secret_name() {  # a file name for a host's secret (ssh target text made safe)
    printf '%s' "$1" | tr -c 'A-Za-z0-9._-' '_'
}

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

    # the address and port ssh dials for the target (after ~/.ssh/config and --ssh-opt)
    local resolved host port
    resolved=$(ssh -G "${ssh_opts[@]+"${ssh_opts[@]}"}" "$target" 2>/dev/null || true)
    host=$(awk '$1 == "hostname" { print $2; exit }' <<<"$resolved")
    port=$(awk '$1 == "port" { print $2; exit }' <<<"$resolved")
    [[ -n $host ]] || host=${target#*@}
    [[ -n $port ]] || port=22

    say "connecting"
    # shellcheck disable=SC2016  # expanded by the remote shell, on purpose
    if ! out=$("${ssh_cmd[@]}" "$target" 'echo "ok $(id -u) $(id -un)"' 2>"$log"); then
        if grep -q "REMOTE HOST IDENTIFICATION HAS CHANGED" "$log"; then
            fail connect "the host key of $host changed since you last logged in (ssh: REMOTE HOST IDENTIFICATION HAS CHANGED)" \
                "If the host was reinstalled, check its new key (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on it), then: ssh-keygen -R $host, and run again"
        elif grep -q "Host key verification failed" "$log"; then
            local presents
            presents=$(ssh-keyscan -T 5 -p "$port" "$host" 2>/dev/null | ssh-keygen -lf - 2>/dev/null \
                | awk '{ printf "%s%s %s", sep, $2, $NF; sep = ", " }' || true)
            fail connect "the host key of $host is not in your known_hosts (ssh: Host key verification failed)${presents:+; it presents $presents}" \
                "deploy-agent.sh never accepts an unknown key: compare it with 'ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub' on the host, log in once with 'ssh $target' and answer yes (or add it to ~/.ssh/known_hosts), then run again"
        fi
        fail connect "cannot log in over SSH ($(last_line "$log"))" \
            "Check that the host is up, that 'ssh $target' works without a password prompt (ssh-copy-id), and that its host key is in known_hosts"
    fi
    local uid user
    read -r _ uid user <<<"$out"
    local sudo=""
    if [[ $uid != 0 ]]; then
        sudo="sudo -n"
        "${ssh_cmd[@]}" "$target" 'sudo -n true' >"$log" 2>&1 \
            || fail privileges "$user is not root and 'sudo -n' failed" \
                "Log in as root or allow $user passwordless sudo"
    fi

    if [[ $uninstall == 1 ]]; then
        say "uninstalling"
        local code=0 line step msg hint
        out=$("${ssh_cmd[@]}" "$target" "$sudo sh -s --$(printf ' %q' uninstall "${uninstall_blobs[@]}" "$central_user")" \
            <"$installer" 2>&1) || code=$?
        if [[ $code != 0 ]] || ! grep -qx UNINSTALLED <<<"$out"; then
            line=$(grep '^FAIL ' <<<"$out" | tail -n1)
            if [[ -n $line ]]; then
                IFS=$'\t' read -r step msg hint <<<"${line#FAIL }"
                fail "$step" "$msg" "$hint"
            fi
            fail uninstall "$(tail -n1 <<<"$out")" "Run again; if it persists, check the host by hand"
        fi
        "${ssh_cmd[@]}" -O exit "$target" >/dev/null 2>&1 || true
        local n
        n=$(grep -c '^REMOVED ' <<<"$out" || true)
        sed -n 's/^REMOVED /  removed /p; s/^NOTE /  note: /p' <<<"$out" | sed "s|^|[$target]|" >&2
        say "uninstalled ($n items removed); forget it in the central with: central server remove NAME"
        result "$target" "removed" "-" "-" "$n items removed"
        exit 0
    fi

    # python3 first: nothing is uploaded to a host the agent cannot run on
    say "checking python3"
    local pyver
    pyver=$("${ssh_cmd[@]}" "$target" "$PYTHON_CHECK" 2>"$log" | tail -n1 | tr -d '\r') || true
    case $pyver in
        "python "[0-9]*) ;;
        *) fail python "python3 not found on the host (or it does not run)" \
               "Install it (Debian/Ubuntu: apt-get install python3; RHEL: dnf install python3) and run again" ;;
    esac
    local major minor
    read -r _ major minor <<<"$pyver"
    if (( major < 3 || (major == 3 && minor < 6) )); then
        fail python "python3 is $major.$minor; the agent needs 3.6 or later" "Install a newer python3 and run again"
    fi

    say "uploading agent.py ($(cut -c1-12 <<<"$agent_sha"))"
    "${ssh_cmd[@]}" "$target" "$sudo sh -c 'mkdir -p /opt/central-agent && cat > /opt/central-agent/agent.py.new'" \
        <"$agent_path" >"$log" 2>&1 \
        || fail upload "could not write /opt/central-agent/agent.py.new ($(last_line "$log"))" \
            "Check free space and that /opt is writable"

    say "installing"
    local args line step msg hint mode="" version="" sha="" secret="" login="" code=0
    local wanted_login=$central_user
    [[ $full_access == 0 ]] || wanted_login=-
    args=$(printf ' %q' "$agent_sha" "$agent_port" "$policy_b64" "$key_b64" "${key_blob:-none}" \
        "$wanted_login" "$rotate")
    out=$("${ssh_cmd[@]}" "$target" "$sudo sh -s --$args" <"$installer" 2>&1) || code=$?
    # the secret goes to the central only: never into a message or the terminal
    secret=$(sed -n 's/^SECRET //p' <<<"$out")
    out=$(grep -v '^SECRET ' <<<"$out" || true)
    if [[ $code != 0 ]]; then
        line=$(grep '^FAIL ' <<<"$out" | tail -n1)
        if [[ -n $line ]]; then
            IFS=$'\t' read -r step msg hint <<<"${line#FAIL }"
            fail "$step" "$msg" "$hint"
        fi
        fail install "$(tail -n1 <<<"$out")" "Run again; if it persists, check the host by hand"
    fi
    mode=$(sed -n 's/^MODE //p' <<<"$out")
    login=$(sed -n 's/^LOGIN //p' <<<"$out")
    read -r version sha <<<"$(sed -n 's/^AGENT //p' <<<"$out")"
    [[ $secret =~ ^[0-9a-f]{64}$ ]] || fail install "the installer did not hand over the agent secret" \
        "Run again; if it persists, check the host by hand"

    # a fresh login (not through the kept master connection) must still work
    say "checking that you can still log in"
    local fresh=(ssh -o BatchMode=yes -o ConnectTimeout=10 -o ControlMaster=no -o ControlPath=none
                 "${ssh_opts[@]+"${ssh_opts[@]}"}" --)
    if ! "${fresh[@]}" "$target" true >"$log" 2>&1; then
        local why
        why=$(last_line "$log")
        if "${ssh_cmd[@]}" "$target" "$sudo sh -s -- rollback" <"$installer" 2>&1 | grep -q '^ROLLED-BACK$'; then
            fail operator-access "after the install you could no longer log in ($why); the sshd and authorized_keys changes were rolled back" \
                "Check the host's sshd configuration and your key, then run again"
        fi
        fail operator-access "after the install you could no longer log in ($why) and rolling back failed" \
            "Log in through a console and restore /etc/ssh from the *.central-bak files"
    fi
    if [[ -n $terminal_user ]]; then
        say "installing the terminal key for $terminal_user"
        args=$(printf ' %q' "$terminal_user" "$terminal_b64" "$terminal_blob" "$login")
        out=$("${ssh_cmd[@]}" "$target" "$sudo sh -s --$args" <"$terminal_installer" 2>&1) || {
            line=$(grep '^FAIL ' <<<"$out" | tail -n1)
            if [[ -n $line ]]; then
                IFS=$'\t' read -r step msg hint <<<"${line#FAIL }"
                fail "$step" "$msg" "$hint"
            fi
            fail terminal-key "$(tail -n1 <<<"$out")" "Run again; if it persists, check the host by hand"
        }
        mode="$mode, terminal: $terminal_user (record it: central terminal enable SERVER --user $terminal_user)"
    fi
    "${ssh_cmd[@]}" -O exit "$target" >/dev/null 2>&1 || true

    # hand the secret to the central for the address it will know the host by
    local where
    if [[ -n $secret_dir ]]; then
        where="$secret_dir/$(secret_name "$host").secret"
        (umask 077; printf '%s\n' "$secret" > "$where") || fail secret "cannot write $where" "Check --secret-dir"
        where="secret in $where"
    else
        if ! printf '%s\n' "$secret" | "$central_cli" server secret --host "$host" --port "$port" >"$log" 2>&1; then
            fail secret "the central did not take the secret ($(last_line "$log"))" \
                "Run again, or give it by hand: ssh $target cat /etc/central-agent/secret | central server secret --host $host"
        fi
        where="secret kept for $host:$port"
    fi
    say "done: agent $version ($mode), central logs in as $login, $where"
    result "$target" "ok" "$version" "${sha:0:12}" "$mode; login $login; $where"
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
    [[ $res == ok || $res == removed ]] || failed=$((failed + 1))
    printf '%-32s %-7s %-10s %-13s %s\n' "$host" "$res" "$version" "$sha" "$msg"
done
if [[ $uninstall == 1 ]]; then
    printf '\n%d of %d hosts uninstalled\n' "$((idx - failed))" "$idx"
else
    printf '\n%d of %d hosts deployed\n' "$((idx - failed))" "$idx"
fi
[[ $failed == 0 ]]
