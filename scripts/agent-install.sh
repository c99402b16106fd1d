#!/bin/sh
# central agent installer: runs on the host, as root, read by `sh -s` from stdin.
#
# The one remote half of both deploy paths: scripts/deploy-agent.sh pipes it over ssh and
# `central deploy` sends it over asyncssh (the wheel carries it as central/_bundled/).
# Before it runs, the client has uploaded the agent to /opt/central-agent/agent.py.new.
#
# Arguments (base64 or checked tokens only, so no host or user text is ever parsed by a
# shell):  SHA256 PORT POLICY_B64 KEY_B64 KEY_BLOB LOGIN_USER ROTATE
#   SHA256      expected sha256 of the uploaded agent
#   PORT        port the agent listens on at 127.0.0.1
#   POLICY_B64  base64 of the policy JSON for /etc/central-agent.json
#   KEY_B64     base64 of the authorized_keys line for the central ("" : none)
#   KEY_BLOB    base64 blob of the central's key (drops older lines of the same key)
#   LOGIN_USER  the dedicated user the central logs in as (created here, restricted by an
#               sshd Match block to forwarding to the agent), or "-" for --full-access: the
#               key then goes, unrestricted, to the login user's own authorized_keys
#   ROTATE      1: replace the agent secret even if a valid one exists
# or `rollback`: put back the sshd configuration and authorized_keys files the last run
# replaced (the client does this when you cannot log in any more after a run),
# or `uninstall KEY_BLOB TERMINAL_BLOB LOGIN_USER`: remove what deploys installed (below).
#
# Output, one per line: "STEP name" as each step begins, "MODE systemd|fallback",
# "LOGIN user" (the user the central must log in as), "AGENT version sha256" and
# "SECRET hex" (the agent secret, for the client to hand to the central) at the end; on
# failure "FAIL step<TAB>what happened<TAB>what to do" and exit status 1.
set -eu
dir=/opt/central-agent
etc=/etc/central-agent
dropin=/etc/ssh/sshd_config.d/central-agent.conf
sshd_main=/etc/ssh/sshd_config
bak=.central-bak
STEP=python
step() { STEP=$1; echo "STEP $1"; }
fail() { printf 'FAIL %s\t%s\t%s\n' "$STEP" "$1" "${2:-Fix that on the host and run again}"; exit 1; }

sshd_bin() { command -v sshd 2>/dev/null || { [ -x /usr/sbin/sshd ] && echo /usr/sbin/sshd; } || true; }

reload_sshd() {
    # New connections use a changed sshd config only after the listener re-reads it.
    if [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
        for unit in ssh.service sshd.service; do
            if systemctl is-active --quiet "$unit" 2>/dev/null; then
                systemctl reload "$unit" && return 0
                return 1
            fi
        done
        # socket-activated sshd (ssh.socket) reads its config for every connection
        systemctl is-active --quiet ssh.socket 2>/dev/null && return 0
    fi
    pidfile=$("$sshd" -T 2>/dev/null | awk '$1 == "pidfile" { print $2; exit }')
    pid=$(cat "$pidfile" 2>/dev/null || true)
    case $pid in ''|*[!0-9]*) return 1 ;; esac
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sshd ] || return 1
    kill -HUP "$pid"
}

# Files this run replaces are kept as FILE.central-bak (or FILE.central-none when there was
# none), so `rollback` can put back exactly what was there.
keep() {
    rm -f "$1$bak" "$1.central-none"
    if [ -e "$1" ]; then cp -p "$1" "$1$bak"; else : > "$1.central-none"; fi
}
restore() {
    if [ -e "$1$bak" ]; then mv -f "$1$bak" "$1"; elif [ -e "$1.central-none" ]; then rm -f "$1"; fi
    rm -f "$1.central-none"
}

if [ "${1:-}" = rollback ]; then
    STEP=rollback
    echo "STEP rollback"
    sshd=$(sshd_bin)
    restore "$dropin"
    restore "$sshd_main"
    if [ -f "$etc/changed-keys" ]; then
        while read -r f; do restore "$f"; done < "$etc/changed-keys"
    fi
    if [ -n "$sshd" ]; then
        "$sshd" -t 2>/dev/null || fail "sshd -t fails even after the rollback" "Check $sshd_main by hand"
        reload_sshd || fail "cannot reload sshd after the rollback" "Reload sshd by hand"
    fi
    echo "ROLLED-BACK"
    exit 0
fi

if [ "${1:-}" = uninstall ]; then
    # Removes exactly what the deploys put on the host: the service (systemd unit, or the
    # fallback loop with its @reboot/rc.local entry), /opt/central-agent, the policy, the secret
    # and the login user's key (/etc/central-agent), the sshd Match block (drop-in or marked
    # block) and the backups of it, every authorized_keys line holding the central's key or the
    # terminal key (KEY_BLOB, TERMINAL_BLOB; "-": none), the agent's fallback log, and the login
    # user LOGIN_USER if deploy created it (its comment says so; "-": none).
    blob=$2 tblob=$3 login=$4
    case $blob$tblob in *[!A-Za-z0-9+/=-]*) STEP=uninstall; fail "bad key blob argument" ;; esac
    case $login in -|[a-z_]*) ;; *) STEP=uninstall; fail "bad login user argument" ;; esac
    case $login in *[!a-z0-9_-]*) STEP=uninstall; fail "bad login user argument" ;; esac
    removed() { echo "REMOVED $1"; }
    step stop-agent
    if [ -f /etc/systemd/system/central-agent.service ]; then
        if [ -d /run/systemd/system ]; then
            systemctl disable --now central-agent.service >/dev/null 2>&1 || true
        fi
        rm -f /etc/systemd/system/central-agent.service
        if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
        removed "systemd unit central-agent.service"
    fi
    ours() {  # the fallback wrapper or the agent, by the pid files deploy wrote
        tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -q -F -e run-agent.sh -e agent.py -e ' -m agent '
    }
    for f in wrapper.pid agent.pid; do
        pid=$(cat "$dir/$f" 2>/dev/null || true)
        case $pid in ''|*[!0-9]*) continue ;; esac
        if ours "$pid"; then kill "$pid" 2>/dev/null || true; removed "agent process $pid ($f)"; fi
    done
    if command -v crontab >/dev/null 2>&1 && crontab -l 2>/dev/null | grep -q -F "$dir/run-agent.sh"; then
        { crontab -l 2>/dev/null | grep -v -F "$dir/run-agent.sh" || true; } | crontab - \
            || fail "cannot remove the @reboot crontab entry" "Remove it by hand (crontab -e)"
        removed "@reboot crontab entry"
    fi
    if [ -f /etc/rc.local ] && grep -q -F "$dir/run-agent.sh" /etc/rc.local; then
        { grep -v -F "$dir/run-agent.sh" /etc/rc.local || true; } > /etc/rc.local.new
        chmod 0755 /etc/rc.local.new && mv -f /etc/rc.local.new /etc/rc.local
        removed "/etc/rc.local entry"
        # the file as a deploy creates it, with nothing else in it: the deploy's own
        if [ "$(cat /etc/rc.local)" = "$(printf '#!/bin/sh\nexit 0')" ]; then
            rm -f /etc/rc.local
            removed /etc/rc.local
        fi
    fi
    step files
    for f in "$dir" "$etc" /etc/central-agent.json /etc/central-agent.json.new /var/log/central-agent.log; do
        if [ -e "$f" ]; then rm -rf "$f"; removed "$f"; fi
    done
    step sshd-config
    sshd=$(sshd_bin)
    changed=0
    for f in "$dropin" "$dropin.new" "$dropin$bak" "$dropin.central-none" "$sshd_main.central-none"; do
        if [ -e "$f" ]; then rm -f "$f"; removed "$f"; changed=1; fi
    done
    if [ -f "$sshd_main$bak" ]; then rm -f "$sshd_main$bak"; removed "$sshd_main$bak"; fi
    if grep -q '^# BEGIN central-agent' "$sshd_main" 2>/dev/null; then
        awk '/^# BEGIN central-agent/ { skip = 1 } !skip { print } /^# END central-agent/ { skip = 0 }' \
            "$sshd_main" > "$sshd_main.central-new" && cat "$sshd_main.central-new" > "$sshd_main"
        rm -f "$sshd_main.central-new"
        removed "the central-agent block of $sshd_main"
        changed=1
    fi
    if [ "$changed" = 1 ] && [ -n "$sshd" ]; then
        "$sshd" -t >/dev/null 2>&1 || fail "sshd -t fails after removing the Match block: $("$sshd" -t 2>&1 | tail -n1)" \
            "Check $sshd_main by hand"
        reload_sshd || fail "cannot reload sshd (no systemd unit and no live sshd pid file)" "Reload sshd by hand"
    fi
    step authorized-keys
    for b in "$blob" "$tblob"; do
        [ "$b" != - ] || continue
        homes=$(mktemp) || fail "cannot create a temporary file"
        awk -F: '{ print $6 }' /etc/passwd | sort -u > "$homes"
        while IFS= read -r h; do
            ak="$h/.ssh/authorized_keys"
            for f in "$ak$bak" "$ak.central-none"; do  # what a deploy kept for its rollback
                if [ -e "$f" ]; then rm -f "$f"; removed "$f"; fi
            done
            if [ ! -f "$ak" ] || ! grep -q -F -e "$b" "$ak" 2>/dev/null; then continue; fi
            { grep -v -F -e "$b" "$ak" || true; } > "$ak.central-new" || fail "cannot write $ak"
            chmod 0600 "$ak.central-new"
            chown "$(stat -c %u:%g "$ak")" "$ak.central-new" 2>/dev/null || true
            mv -f "$ak.central-new" "$ak"
            rm -f "$ak$bak" "$ak.central-none"
            removed "the central's key line in $ak"
        done < "$homes"
        rm -f "$homes"
    done
    if [ "$login" != - ]; then
        step login-user
        entry=$(awk -F: -v u="$login" '$1 == u { print; exit }' /etc/passwd)
        if [ -n "$entry" ] && [ "$(echo "$entry" | cut -d: -f5)" = "central agent access (created by central deploy)" ]; then
            uid=$(echo "$entry" | cut -d: -f3)
            # its sessions (the central's forward) end first: by pid, only that uid's
            for p in /proc/[0-9]*; do
                [ "$(awk '$1 == "Uid:" { print $2; exit }' "$p/status" 2>/dev/null)" = "$uid" ] || continue
                kill "${p#/proc/}" 2>/dev/null || true
            done
            if command -v userdel >/dev/null 2>&1; then
                userdel "$login" 2>/dev/null || userdel -f "$login" || fail "userdel $login failed"
            else
                deluser "$login" >/dev/null || fail "deluser $login failed"
            fi
            removed "user $login"
        elif [ -n "$entry" ]; then
            echo "NOTE user $login was not created by central deploy: left as it is"
        fi
    fi
    echo "UNINSTALLED"
    exit 0
fi

sha=$1 port=$2 policy_b64=$3 key_b64=$4 blob=$5 login=${6:--} rotate=${7:-0}
case $login in -|[a-z_]*) ;; *) fail "bad login user argument" ;; esac

step python
# The clients check python3 before they upload; should this fail anyway, leave nothing behind.
no_python() {
    rm -f "$dir/agent.py.new"
    rmdir "$dir" 2>/dev/null || true
    fail "$@"
}
py=$(command -v python3 2>/dev/null) || py=""
[ -n "$py" ] && ver=$("$py" -c 'import sys; print("%d %d" % sys.version_info[:2])' 2>/dev/null) || py=""
[ -n "$py" ] || no_python "python3 not found on the host (or it does not run)" \
    "Install it (Debian/Ubuntu: apt-get install python3; RHEL: dnf install python3) and run again"
# shellcheck disable=SC2086  # split into major and minor on purpose
set -- $ver
if [ "$1" -lt 3 ] || { [ "$1" -eq 3 ] && [ "$2" -lt 6 ]; }; then
    no_python "python3 is $1.$2; the agent needs 3.6 or later" "Install a newer python3 and run again"
fi

step verify-upload
unb64() { "$py" -c 'import base64,sys; sys.stdout.write(base64.b64decode(sys.argv[1]).decode())' "$1"; }
got=$("$py" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$dir/agent.py.new") \
    || fail "cannot read the uploaded file $dir/agent.py.new" "Check free space and that /opt is writable"
[ "$got" = "$sha" ] || fail "uploaded agent.py has sha256 $got, expected $sha" "Run again (the upload was cut short)"
chmod 0644 "$dir/agent.py.new"
mv -f "$dir/agent.py.new" "$dir/agent.py"
# The agent runs as `python3 -m agent` from its directory, which must be root's alone (the
# directory is on its import path), from bytecode compiled here: compiling a 2,500-line
# script at every start leaves about 6 MB in the process (BENCHMARKS.md, Agent).
chown 0:0 "$dir" && chmod 0755 "$dir"
"$py" -c 'import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)' "$dir/agent.py" 2>/dev/null || true

step policy
umask 022
unb64 "$policy_b64" > /etc/central-agent.json.new || fail "cannot write /etc/central-agent.json"
chown 0:0 /etc/central-agent.json.new && chmod 0644 /etc/central-agent.json.new
mv -f /etc/central-agent.json.new /etc/central-agent.json

step secret
# The secret the agent and the central share: 32 random bytes, root-only. Kept across
# redeploys (the central already has it), replaced when asked or when it is not sound.
{ mkdir -p "$etc" && chown 0:0 "$etc" && chmod 0755 "$etc"; } || fail "cannot create $etc"
sound=$("$py" -c '
import os, re, stat, sys
try:
    st = os.lstat(sys.argv[1])
    ok = stat.S_ISREG(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o077 and \
        re.match(r"[0-9a-f]{64}\Z", open(sys.argv[1]).read().strip())
except OSError:
    ok = False
print("yes" if ok else "no")' "$etc/secret")
if [ "$rotate" = 1 ] || [ "$sound" != yes ]; then
    rm -f "$etc/secret.new"
    (umask 077; "$py" -c 'import os; print("%064x" % int.from_bytes(os.urandom(32), "big"))' > "$etc/secret.new") \
        || fail "cannot write $etc/secret"
    { chown 0:0 "$etc/secret.new" && chmod 0600 "$etc/secret.new" && mv -f "$etc/secret.new" "$etc/secret"; } \
        || fail "cannot install $etc/secret"
fi

key=$(unb64 "$key_b64")
owner=${SUDO_USER:-$(id -un)}
home_of() { awk -F: -v u="$1" '$1 == u { print $6; exit }' /etc/passwd 2>/dev/null || true; }
: > "$etc/changed-keys"
drop_key_lines() {  # drop every line holding the central's key from one authorized_keys file
    [ -f "$1" ] && grep -q -F -e "$blob" "$1" 2>/dev/null || return 0
    keep "$1"
    echo "$1" >> "$etc/changed-keys"
    { grep -v -F -e "$blob" "$1" || true; } > "$1.central-new" || fail "cannot write $1"
    chmod 0600 "$1.central-new"
    chown "$(stat -c %u:%g "$1")" "$1.central-new" 2>/dev/null || true
    mv -f "$1.central-new" "$1"
}

central_user=""
if [ "$login" != - ]; then
    central_user=$login
    step login-user
    # A system user with no password (not locked: sshd refuses locked accounts without PAM),
    # no home and no shell; the sshd Match block below is what it may do.
    marker="central agent access (created by central deploy)"
    nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/sbin/nologin
    [ -x "$nologin" ] || nologin=/bin/false
    entry=$(awk -F: -v u="$login" '$1 == u { print; exit }' /etc/passwd)
    if [ -z "$entry" ]; then
        if command -v useradd >/dev/null 2>&1; then
            useradd --system --no-create-home --home-dir /nonexistent --shell "$nologin" \
                --comment "$marker" "$login" || fail "useradd $login failed"
        elif command -v adduser >/dev/null 2>&1; then
            adduser -S -D -H -h /nonexistent -s "$nologin" -g "$marker" "$login" \
                || fail "adduser $login failed"
        else
            fail "neither useradd nor adduser is available to create the user $login"
        fi
    elif [ "$(echo "$entry" | cut -d: -f5)" != "$marker" ]; then
        fail "a user named $login exists already and was not created by central deploy" \
            "Pass --central-user NAME to use another name (or remove that user)"
    fi
    if command -v usermod >/dev/null 2>&1; then
        usermod -p '*' "$login" || fail "usermod -p '*' $login failed"
    else
        echo "$login:*" | chpasswd -e || fail "cannot set $login's password field to '*'"
    fi

    step authorized-key
    # Only the central's key, restricted, in a root-owned file the Match block names: the
    # login user cannot change it, and without the Match block the key opens nothing.
    if [ -n "$key" ]; then
        printf '%s\n' "$key" > "$etc/authorized_keys.new" || fail "cannot write $etc/authorized_keys"
        { chown 0:0 "$etc/authorized_keys.new" && chmod 0644 "$etc/authorized_keys.new" \
            && mv -f "$etc/authorized_keys.new" "$etc/authorized_keys"; } || fail "cannot install $etc/authorized_keys"
    fi
    # an earlier deploy put the central's key in the login user's (or root's) own file
    for h in "$(home_of "$owner")" "$(home_of root)"; do
        if [ -n "$h" ]; then drop_key_lines "$h/.ssh/authorized_keys"; fi
    done

    step sshd-config
    sshd=$(sshd_bin)
    [ -n "$sshd" ] || fail "sshd not found on the host" "Install openssh-server"
    "$sshd" -t >/dev/null 2>&1 || fail "sshd -t already fails before any change: $("$sshd" -t 2>&1 | tail -n1)" \
        "Fix the sshd configuration first; nothing was changed"
    block="# Written by central deploy: the central's login user may only forward to the agent.
Match User $login
    AuthorizedKeysFile $etc/authorized_keys
    AuthorizedKeysCommand none
    AuthorizedPrincipalsFile none
    AuthenticationMethods publickey
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    AllowTcpForwarding local
    PermitOpen 127.0.0.1:$port
    PermitListen none
    AllowStreamLocalForwarding no
    PermitTunnel no
    GatewayPorts no
    X11Forwarding no
    AllowAgentForwarding no
    PermitTTY no
    PermitUserRC no
    ForceCommand /bin/false"
    keep "$dropin"
    keep "$sshd_main"
    rollback_fail() {
        restore "$dropin"
        restore "$sshd_main"
        while read -r f; do restore "$f"; done < "$etc/changed-keys"
        fail "$1" "${2:-Nothing was changed in sshd; fix that and run again}"
    }
    # a marked block a run on a host without the drop-in directory appended
    if grep -q '^# BEGIN central-agent' "$sshd_main"; then
        awk '/^# BEGIN central-agent/ { skip = 1 } !skip { print } /^# END central-agent/ { skip = 0 }' \
            "$sshd_main" > "$sshd_main.central-new" && cat "$sshd_main.central-new" > "$sshd_main"
        rm -f "$sshd_main.central-new"
    fi
    effective() {
        "$sshd" -T -C "user=$login,host=localhost,addr=127.0.0.1,laddr=127.0.0.1,lport=22" 2>/dev/null \
            | awk -v p="127.0.0.1:$port" '
                $1 == "forcecommand" && $2 == "/bin/false" { n++ }
                $1 == "allowtcpforwarding" && $2 == "local" { n++ }
                $1 == "permitopen" && $2 == p && NF == 2 { n++ }
                $1 == "allowstreamlocalforwarding" && $2 == "no" { n++ }
                $1 == "permittunnel" && $2 == "no" { n++ }
                END { exit n == 5 ? 0 : 1 }'
    }
    placed=""
    if [ -d /etc/ssh/sshd_config.d ]; then
        printf '%s\n' "$block" > "$dropin.new" && chmod 0644 "$dropin.new" && mv -f "$dropin.new" "$dropin"
        if "$sshd" -t >/dev/null 2>&1 && effective; then placed=$dropin; fi
    fi
    if [ -z "$placed" ]; then
        # no drop-in directory, or the main config does not include it: a marked block at the
        # end of the main config (a Match block at the end applies to nothing after it)
        rm -f "$dropin"
        { printf '\n# BEGIN central-agent\n%s\n# END central-agent\n' "$block"; } >> "$sshd_main" \
            || rollback_fail "cannot write $sshd_main"
        placed=$sshd_main
    fi
    if ! out=$("$sshd" -t 2>&1); then
        rollback_fail "sshd -t refuses the Match block: $(echo "$out" | tail -n1)" \
            "Nothing was changed in sshd; this sshd may be too old (PermitListen needs OpenSSH 7.8)"
    fi
    effective || rollback_fail "sshd does not apply the Match block for $login (sshd -T -C user=$login)" \
        "Check that $sshd_main does not override it in an earlier Match block"
    echo "SSHD $placed"
    step sshd-reload
    reload_sshd || rollback_fail "cannot reload sshd (no systemd unit and no live sshd pid file)" \
        "Reload sshd by hand (kill -HUP its listener) and run again"
    echo "LOGIN $login"
else
    step authorized-key
    if [ -n "$key" ]; then
        home=$(home_of "$owner")
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
        # and no longer through the dedicated user, if an earlier deploy made one
        if [ -f "$etc/authorized_keys" ]; then : > "$etc/authorized_keys"; fi
    fi
    central_user=$owner
    echo "LOGIN $owner"
fi

cmd="$py -m agent --listen 127.0.0.1 --port $port --policy /etc/central-agent.json --secret-file $etc/secret --central-user $central_user"
if [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    mode=systemd logs="journalctl -u central-agent"
    step systemd-unit
    cat > /etc/systemd/system/central-agent.service.new <<EOF
[Unit]
Description=central monitoring agent (reached by the central over SSH on 127.0.0.1:$port)
After=network.target

[Service]
WorkingDirectory=$dir
ExecStart=$cmd
ExecReload=/bin/kill -HUP \$MAINPID
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
cd $dir || exit 1
trap 'kill \$child 2>/dev/null; exit 0' TERM INT
trap 'kill -HUP \$child 2>/dev/null' HUP
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
    ours() {  # the wrapper or the agent (this one runs as `-m agent`, older ones as agent.py)
        tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -q -F -e run-agent.sh -e agent.py -e ' -m agent '
    }
    for f in wrapper.pid agent.pid; do
        pid=$(cat "$dir/$f" 2>/dev/null || true)
        case $pid in ''|*[!0-9]*) continue ;; esac
        # only our own processes: the pid file may be stale after a reboot
        if ours "$pid"; then
            kill "$pid" 2>/dev/null || true
        fi
    done
    i=0
    while [ $i -lt 50 ]; do
        alive=0
        for f in wrapper.pid agent.pid; do
            pid=$(cat "$dir/$f" 2>/dev/null || true)
            case $pid in ''|*[!0-9]*) continue ;; esac
            if ours "$pid"; then alive=1; fi
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
# Waits for the agent, then checks that what answers proves it holds the secret (a process
# squatting the port cannot) and runs the version deployed; prints "version sha256".
code=0
out=$("$py" -c '
import hashlib, hmac, json, os, socket, sys, time
port, secret_file = int(sys.argv[1]), sys.argv[2]
key = bytes.fromhex(open(secret_file).read().strip())
def exchange(sock, request):
    sock.sendall(request)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (l.partition(":") for l in lines[1:]))
    n = int(headers.get("content-length", "0"))
    while len(body) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("connection closed")
        body += chunk
    return int(lines[0].split()[1]), headers, body[:n]
deadline, err = time.time() + 20, None
while time.time() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            host = "127.0.0.1:%d" % port
            status, _, body = exchange(s, ("GET /api/health HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode())
            health = json.loads(body.decode())
            cnonce = os.urandom(16).hex()
            status, headers, body = exchange(s, ("GET /api/challenge HTTP/1.1\r\nHost: %s\r\n"
                                                 "X-Central-Nonce: %s\r\n\r\n" % (host, cnonce)).encode())
            nonce = json.loads(body.decode()).get("nonce", "") if status == 200 else ""
            want = "mac=" + hmac.new(key, ("central-agent/1 challenge\n%s\n%s" % (nonce, cnonce)).encode(),
                                     hashlib.sha256).hexdigest()
            if status != 200 or not hmac.compare_digest(headers.get("x-agent-auth", ""), want):
                print("IMPOSTOR %s %s" % (health.get("version"), health.get("auth")))
                sys.exit(2)
            print("%s %s" % (health.get("version"), health.get("sha256")))
            sys.exit(0)
    except (OSError, ValueError) as exc:
        err = exc
        time.sleep(0.3)
print("no answer from 127.0.0.1:%d: %s" % (port, err))
sys.exit(1)
' "$port" "$etc/secret") || code=$?
case $code in
    0) ;;
    2) fail "what answers on 127.0.0.1:$port cannot prove it holds the new secret (${out#IMPOSTOR })" \
           "Another process may hold port $port (see $logs): stop it and run again" ;;
    *) fail "the agent does not answer on 127.0.0.1:$port ($out)" "See $logs on the host" ;;
esac
# shellcheck disable=SC2086  # split into version and sha256 on purpose
set -- $out
[ "${2:-}" = "$sha" ] || fail "the agent answering reports sha256 $(echo "${2:-none}" | cut -c1-12), deployed $(echo "$sha" | cut -c1-12)" \
    "Another process may hold port $port: stop it and run again"
echo "AGENT $1 $2"
echo "SECRET $(cat "$etc/secret")"
