#!/bin/sh
# central terminal key installer: runs on the host, as root, read by `sh -s` from stdin.
#
# Installs the central's terminal key for one named, existing host account, restricted to a
# PTY session (`restrict,pty`: no port, agent or X11 forwarding, no ~/.ssh/rc). Run after the
# agent installer by `central deploy --terminal-user NAME` and by
# scripts/deploy-agent.sh --terminal-user NAME (the wheel carries it as central/_bundled/).
#
# Arguments (checked tokens or base64 only):  ACCOUNT KEY_B64 KEY_BLOB POLL_USER
#   ACCOUNT    the account the web terminal logs in as (must exist; root only when named)
#   KEY_B64    base64 of the authorized_keys line (restrict,pty ssh-ed25519 ... central-terminal)
#   KEY_BLOB   base64 blob of the terminal key (older lines of the same key are replaced)
#   POLL_USER  the account the central polls as ("-": none named); never the terminal account
#              unless both are root
#
# Output, one per line: "STEP name" as each step begins, "TERMINAL account file" at the end;
# on failure "FAIL step<TAB>what happened<TAB>what to do" and exit status 1.
set -eu
account=$1 key_b64=$2 blob=$3 poll_user=$4
STEP=terminal-account
step() { STEP=$1; echo "STEP $1"; }
fail() { printf 'FAIL %s\t%s\t%s\n' "$STEP" "$1" "${2:-Fix that on the host and run again}"; exit 1; }

step terminal-account
case $account in
    ''|-*|*[!A-Za-z0-9_.-]*) fail "'$account' is not a user name" "Name an existing account with --terminal-user" ;;
esac
case $blob in
    ''|*[!A-Za-z0-9+/=]*) fail "the terminal key blob is not base64" "Run again with the central's terminal key" ;;
esac
entry=$(awk -F: -v u="$account" '$1 == u { print; exit }' /etc/passwd 2>/dev/null || true)
[ -n "$entry" ] || entry=$(getent passwd "$account" 2>/dev/null || true)
[ -n "$entry" ] || fail "there is no account $account on this host" \
    "Create it first (useradd -m -s /bin/bash $account) or name another with --terminal-user"
uid=$(echo "$entry" | cut -d: -f3)
gid=$(echo "$entry" | cut -d: -f4)
home=$(echo "$entry" | cut -d: -f6)
shell=$(echo "$entry" | cut -d: -f7)
if [ "$account" = "$poll_user" ] && [ "$account" != root ]; then
    fail "$account is the account the central polls as; the terminal needs an account of its own" \
        "Name another account with --terminal-user (the polling user's sshd Match block forbids a TTY)"
fi
case $shell in
    */nologin|*/false|'') fail "$account has no login shell ($shell)" "Give it one (usermod -s /bin/bash $account) or name another account" ;;
esac
if [ -z "$home" ] || [ ! -d "$home" ]; then
    fail "the home directory of $account ($home) does not exist" "Create it (mkhomedir_helper $account) or name another account"
fi

step terminal-sshd
sshd=$(command -v sshd 2>/dev/null || true)
[ -n "$sshd" ] || { [ -x /usr/sbin/sshd ] && sshd=/usr/sbin/sshd; } || true
files=".ssh/authorized_keys"
if [ -n "$sshd" ] && settings=$("$sshd" -T -C "user=$account,host=localhost,addr=127.0.0.1" 2>/dev/null); then
    # What sshd would apply to this account (Match blocks included): it must allow a key and a TTY.
    value() { echo "$settings" | awk -v k="$1" '$1 == k { $1 = ""; sub(/^ /, ""); print; exit }'; }
    [ "$(value permittty)" != no ] || fail "sshd gives $account no TTY (PermitTTY no applies to it)" \
        "Change the sshd Match block that applies to $account, or name another account"
    [ "$(value pubkeyauthentication)" != no ] || fail "sshd refuses keys for $account (PubkeyAuthentication no)" \
        "Allow public keys for $account in sshd_config, or name another account"
    [ "$account" != root ] || [ "$(value permitrootlogin)" != no ] || fail "sshd refuses root logins (PermitRootLogin no)" \
        "Name another account with --terminal-user"
    files=$(value authorizedkeysfile)
else
    echo "NOTE cannot read sshd's effective settings for $account (sshd -T); assuming ~/.ssh/authorized_keys"
fi
# The first per-user file sshd reads for the account (%h, %u or relative to the home).
ak=""
for f in $files; do
    case $f in
        none) continue ;;
        /*) case $f in *%h*|*%u*|*%U*) ;; *) continue ;; esac ;;
    esac
    f=$(printf '%s' "$f" | sed -e "s|%h|$home|g" -e "s|%u|$account|g" -e "s|%U|$uid|g" -e 's|%%|%|g')
    case $f in /*) ak=$f ;; *) ak="$home/$f" ;; esac
    break
done
[ -n "$ak" ] || fail "sshd's AuthorizedKeysFile ($files) has no file per user" \
    "Let sshd read ~/.ssh/authorized_keys for $account"

step terminal-key
key=$(printf '%s' "$key_b64" | base64 -d 2>/dev/null) || fail "the terminal key line is not base64"
case $key in
    "restrict,pty "*) ;;
    *) fail "the terminal key line is not restricted to a PTY session" "Run again with the central's terminal key" ;;
esac
# What goes into the account's own directory is written as the account, so a link it planted
# there can only ever point at its own files. (Argument 3 "keepdir": leave a root directory's
# mode alone.)
script=$(cat <<'EOF'
set -eu
ak=$1 blob=$2
IFS= read -r line
umask 077
mkdir -p "$(dirname "$ak")"
[ "${3:-}" = keepdir ] || chmod 0700 "$(dirname "$ak")"
touch "$ak"
{ grep -v -F -e "$blob" "$ak" || true; printf '%s\n' "$line"; } > "$ak.central-new"
chmod 0600 "$ak.central-new"
mv -f "$ak.central-new" "$ak"
EOF
)
case $ak in
    "$home"/*)
        if command -v setpriv >/dev/null 2>&1; then
            printf '%s\n' "$key" | setpriv --reuid="$uid" --regid="$gid" --init-groups -- sh -c "$script" sh "$ak" "$blob" \
                || fail "cannot write $ak as $account" "Check that $account owns $home"
        elif command -v runuser >/dev/null 2>&1; then
            printf '%s\n' "$key" | runuser -u "$account" -- sh -c "$script" sh "$ak" "$blob" \
                || fail "cannot write $ak as $account" "Check that $account owns $home"
        else
            fail "neither setpriv nor runuser is here to write $ak as $account" "Install util-linux"
        fi
        ;;
    *)
        # A file outside the home (AuthorizedKeysFile /etc/ssh/keys/%u): root's to write, in a
        # directory nobody else may change.
        d=$(dirname "$ak")
        [ -d "$d" ] || mkdir -p "$d"
        perms=$(stat -c '%u %A' "$d")
        case $perms in
            "0 d????"[!w]"??"[!w]*) ;;
            *) fail "$d is writable by others than root ($perms)" "chmod go-w $d" ;;
        esac
        printf '%s\n' "$key" | sh -c "$script" sh "$ak" "$blob" keepdir || fail "cannot write $ak"
        chown "$uid:$gid" "$ak"
        ;;
esac
echo "TERMINAL $account $ak"
