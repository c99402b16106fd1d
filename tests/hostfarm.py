"""Real test hosts for the central: network namespaces running OpenSSH sshd and the agent.

A :class:`HostFarm` owns one private bridge (no route off the machine, no NAT) with an
address block 10.98.N.0/24 picked so that concurrent farms on one machine never collide.
Each :class:`TestHost` is a network namespace with a veth on that bridge, inside which an
``unshare --uts --mount --pid --fork --mount-proc`` tree runs (tests/hostinit.py as PID 1,
tmpfs over /root, /tmp, /opt and /var/tmp, copy-on-write overlays of /etc and /var, its own
hostname), and in it the machine's real
``/usr/sbin/sshd`` with its own ed25519 host key, plus optionally the agent.

By default a host looks as deploy leaves it (docs/deploying.md): the central's login user
``central`` (in the host's own /etc/passwd), an sshd ``Match User central`` drop-in that lets it
forward to the agent's port and nothing else, the central keys in
/etc/central-agent/authorized_keys, and an agent secret in /etc/central-agent/secret
(``host.agent_secret``) that the agent authenticates with. ``login_user=False`` gives a host as
before any deploy (no login user, no drop-in, no secret). The host's sshd reads
/etc/ssh/sshd_config (the host's copy-on-write /etc), which includes /etc/ssh/sshd_config.d/
like Debian's unless ``sshd_include=False``, and writes its pid to /var/lib/sshd.pid.

Everything is torn down by host-side PID (the PidFile in a PID namespace would say 1).
A small reaper process cleans up if the process owning the farm dies without ``close()``.

Needs root, ``ip`` (iproute2), ``unshare``/``nsenter`` (util-linux), openssh-server and
/usr/bin/python3 (processes inside a host cannot see /root, so a pyenv python is invisible
there). Stdlib only; usable without pytest::

    with HostFarm() as farm:
        host = farm.add_host("web-1", authorized_keys=[open(pub).read()])
        host.run(["hostname"]).stdout      # "web-1\\n"
"""
import base64
import collections
import ctypes
import fcntl
import hashlib
import json
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CENTRAL_USER = "central"
CENTRAL_USER_MARKER = "central agent access (created by central deploy)"
SECRET_PATH = "/etc/central-agent/secret"

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
HOST_INIT = TESTS_DIR / "hostinit.py"
FAKE_AGENT = TESTS_DIR / "fakeagent.py"
STANDIN_AGENT = TESTS_DIR / "standin_agent.py"
REAL_AGENT = REPO_DIR / "agent" / "agent.py"

STATE_ROOT = Path("/run/central-hostfarm")
HOST_PYTHON = "/usr/bin/python3"
SSHD = "/usr/sbin/sshd"
AGENT_PORT = 8083
OVERLAYS = ("/root", "/tmp", "/opt", "/var/tmp")
#: copy-on-write per host, so what a host writes there (a deployed agent's policy file,
#: /etc/rc.local, logs) never reaches the machine or another host
COW_DIRS = ("/etc", "/var")
HOST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "LANG": "C.UTF-8",
}
FAKE_AGENT_MODES = ("garbage", "huge", "trickle", "badutf8", "notjson", "hang", "close",
                    "error500", "squatter")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def claim_subnet(base, bridge_prefix, lock_dir, wanted=None):
    """(N, lock fd) for a BASE.N.0/24 test subnet that no route, address or bridge on this
    machine uses and no other farm holds (an flock on a file in lock_dir); (None, None) if
    every N is taken. The lock lasts as long as the fd stays open."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    candidates = [wanted] if wanted is not None else random.sample(range(1, 254), 253)
    seen = (_ip(["-4", "route", "show", "table", "all"]).stdout + _ip(["-4", "-o", "addr"]).stdout
            + _ip(["-o", "link"]).stdout)
    for n in candidates:
        if ("%s.%d." % (base, n)) in seen or (" %s%d:" % (bridge_prefix, n)) in seen:
            continue
        fd = os.open(str(lock_dir / ("%s.%d.lock" % (base, n))), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return n, fd
    return None, None


class HostFarmError(RuntimeError):
    """A test host could not be created or controlled."""


class HostCommandError(subprocess.CalledProcessError):
    """A command run inside a test host failed; the message carries its output."""

    def __str__(self):
        return "%s\nstdout: %s\nstderr: %s" % (
            super().__str__(), (self.stdout or "")[-2000:], (self.stderr or "")[-2000:])


def missing_requirements():
    """Return why test hosts cannot be created on this machine, or None if they can."""
    if os.geteuid() != 0:
        return "test hosts need root (network namespaces, sshd), running as uid %d" % os.geteuid()
    for tool in ("ip", "unshare", "nsenter", "ssh-keygen"):
        if shutil.which(tool) is None:
            return "%s not found on PATH (install iproute2 / util-linux / openssh-client)" % tool
    for path in (SSHD, HOST_PYTHON):
        if not os.access(path, os.X_OK):
            return "%s not found (apt-get install openssh-server python3)" % path
    probe = "hfprobe%d" % os.getpid()
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if added.returncode != 0:
        return "`ip netns add` does not work here: %s" % added.stderr.strip()
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def default_agent_path():
    """$CENTRAL_TEST_AGENT, else the real agent/agent.py if present, else the test stand-in."""
    if os.environ.get("CENTRAL_TEST_AGENT"):
        return Path(os.environ["CENTRAL_TEST_AGENT"]).resolve()
    return REAL_AGENT if REAL_AGENT.exists() else STANDIN_AGENT


def fingerprint_of(public_key_line):
    """SHA256 fingerprint of an OpenSSH public key line, exactly as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(public_key_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return "SHA256:" + digest


def generate_key(path, comment=""):
    """Create an ed25519 key pair at path / path.pub (replacing any) and return the pub line."""
    path = Path(path)
    for old in (path, path.with_name(path.name + ".pub")):
        if old.exists():
            old.unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return path.with_name(path.name + ".pub").read_text().strip()


def _ip(args, batch=None, netns=None, check=True):
    """Run ip(8), optionally in a netns and/or with a batch of commands on stdin."""
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    if batch is not None:
        argv += ["-batch", "-"]
    res = subprocess.run(argv, input=batch, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise HostFarmError("%s failed: %s" % (" ".join(argv), res.stderr.strip()))
    return res


def _children(pid):
    """Host-side pids of the direct children of pid."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def _ns_pid(host_pid):
    """The pid a process has inside its innermost PID namespace."""
    with open("/proc/%d/status" % host_pid) as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise HostFarmError("no NSpid for pid %d" % host_pid)


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def _netns_inode_of_pid(pid):
    try:
        return os.stat("/proc/%d/ns/net" % pid).st_ino
    except OSError:
        return None


def _in_netns(netns, fn):
    """Call fn() on a fresh thread switched into the named network namespace."""
    result = {}

    def target():
        try:
            fd = os.open("/run/netns/" + netns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, "setns %s: %s" % (netns, os.strerror(err)))
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name="netns-" + netns)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _wait_for(predicate, timeout, what, interval=0.005, alive=None):
    """Poll predicate() until true; alive() returning a message aborts early."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if alive is not None:
            problem = alive()
            if problem:
                raise HostFarmError("%s: %s" % (what, problem))
        if time.monotonic() > deadline:
            raise HostFarmError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)
        interval = min(interval * 1.5, 0.1)


def _tail(path, limit=1500):
    try:
        return Path(path).read_text(errors="replace")[-limit:]
    except OSError:
        return ""


class HostProcess:
    """A process running inside a test host, started through nsenter."""

    def __init__(self, host, argv, log_path):
        self.host = host
        self.argv = list(argv)
        self.log_path = Path(log_path)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                host._nsenter_argv() + self.argv, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=HOST_ENV, cwd="/", start_new_session=True)
        self.host_pid = None
        _wait_for(self._find_child, 5, "process %r to start in host %s" % (argv[0], host.name),
                  alive=self._died)
        #: pid of the process as seen inside the host (what its agent reports)
        self.ns_pid = _ns_pid(self.host_pid)

    def _find_child(self):
        kids = _children(self.popen.pid)
        if kids:
            self.host_pid = kids[0]
        return bool(kids)

    def _died(self):
        if self.popen.poll() is not None:
            return "exited with %s: %s" % (self.popen.returncode, _tail(self.log_path))
        return None

    @property
    def pid(self):
        """Alias of ns_pid: the pid inside the host."""
        return self.ns_pid

    def alive(self):
        """True while the process runs (nsenter waits for it and exits with it)."""
        return self.popen.poll() is None

    def signal(self, sig=signal.SIGTERM):
        """Send a signal by host-side pid, if the process is still ours."""
        if self.alive():
            try:
                os.kill(self.host_pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout=5.0):
        """SIGTERM, then SIGKILL after timeout; wait for it. Returns the exit status."""
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.popen.wait(timeout)

    def wait(self, timeout=None):
        """Wait for the process to end; returns nsenter's status (negative signal if killed)."""
        return self.popen.wait(timeout)

    def __repr__(self):
        return "<HostProcess %s ns_pid=%s host_pid=%s on %s>" % (
            self.argv[0], self.ns_pid, self.host_pid, self.host.name)


class PinnedSSHTarget(object):
    """SSH access to a test machine with its host key pinned; needs .address, .port,
    .host_key_path and ._known_hosts_path()."""

    @property
    def host_public_key(self):
        """The machine's public host key as an OpenSSH line: ``ssh-ed25519 AAAA... comment``."""
        return Path(str(self.host_key_path) + ".pub").read_text().strip()

    @property
    def fingerprint(self):
        """``SHA256:...`` of the current host key, as ``ssh-keygen -l`` prints it."""
        return fingerprint_of(self.host_public_key)

    def known_hosts_line(self):
        """A known_hosts line pinning this machine's key to its address."""
        kind, blob = self.host_public_key.split()[:2]
        return "%s %s %s" % (self.address, kind, blob)

    def write_known_hosts(self, path):
        """Write a known_hosts file holding just this machine's key; returns the path."""
        Path(path).write_text(self.known_hosts_line() + "\n")
        return Path(path)

    def ssh_argv(self, identity, known_hosts=None, user="root", options=()):
        """argv prefix for OpenSSH ``ssh`` to this machine with its key pinned (append a command).

        Ignores ~/.ssh/config; known_hosts defaults to a file in the machine's state dir.
        """
        if known_hosts is None:
            known_hosts = self.write_known_hosts(self._known_hosts_path())
        argv = ["ssh", "-F", "/dev/null", "-i", str(identity), "-p", str(self.port),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=%s" % known_hosts,
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
                "-o", "LogLevel=ERROR"]
        for opt in options:
            argv += ["-o", opt]
        return argv + ["%s@%s" % (user, self.address)]


def central_match_block(user=CENTRAL_USER, port=AGENT_PORT, permit_open=()):
    """The sshd Match block deploy installs for the central's login user (the same lines as
    scripts/agent-install.sh writes; a test compares the two). permit_open: more host:port
    targets it may forward to (a bastion's: the SSH ports of the hosts behind it)."""
    return "\n".join([
        "# Written by central deploy: the central's login user may only forward to the agent.",
        "Match User %s" % user,
        "    AuthorizedKeysFile /etc/central-agent/authorized_keys",
        "    AuthorizedKeysCommand none",
        "    AuthorizedPrincipalsFile none",
        "    AuthenticationMethods publickey",
        "    PasswordAuthentication no",
        "    KbdInteractiveAuthentication no",
        "    AllowTcpForwarding local",
        "    PermitOpen %s" % " ".join(["127.0.0.1:%d" % port] + list(permit_open)),
        "    PermitListen none",
        "    AllowStreamLocalForwarding no",
        "    PermitTunnel no",
        "    GatewayPorts no",
        "    X11Forwarding no",
        "    AllowAgentForwarding no",
        "    PermitTTY no",
        "    PermitUserRC no",
        "    ForceCommand /bin/false",
    ]) + "\n"


def restricted_line(public_key_line, port=AGENT_PORT, permit_open=()):
    """The central's restricted authorized_keys line for a public key line (options dropped);
    permit_open: more host:port targets (a bastion's)."""
    parts = public_key_line.split()
    start = next(i for i, p in enumerate(parts) if p.startswith(("ssh-", "ecdsa-", "sk-")))
    opens = "".join(',permitopen="%s"' % t for t in ["127.0.0.1:%d" % port] + list(permit_open))
    return 'restrict,port-forwarding%s,command="/bin/false" %s %s central' % (opens, parts[start], parts[start + 1])


class TestHost(PinnedSSHTarget):
    """One test host: netns + veth, UTS/mount/PID namespaces, sshd, optionally the agent."""

    __test__ = False  # not a pytest test class

    port = 22

    def __init__(self, farm, name, index, network=None, extra_networks=()):
        self.farm = farm
        self.name = name
        self.index = index
        #: the PrivateNetwork the host sits on (None: the farm's bridge, which the machine reaches)
        self.network = network
        self.address = "%s.%d" % (network.prefix if network else farm.subnet_prefix, index)
        #: its addresses on further private networks (a bastion's legs), by network
        self.extra_networks = list(extra_networks)
        self.addresses = {net: "%s.%d" % (net.prefix, index) for net in self.extra_networks}
        self.netns = "hf-%d-%d" % (farm.subnet_index, index)
        self.veth = "hfv%d-%d" % (farm.subnet_index, index)
        self.extra_veths = ["hfw%d-%d-%d" % (farm.subnet_index, index, i + 1) for i in range(len(self.extra_networks))]
        self.state_dir = farm.base_dir / name
        self.host_key_path = self.state_dir / "ssh_host_ed25519_key"
        self.authorized_keys_path = self.state_dir / "authorized_keys"
        self.sshd_config_path = self.state_dir / "sshd_config"
        self.sshd_log_path = self.state_dir / "sshd.log"
        self.agent_log_path = self.state_dir / "agent.log"
        #: where the agent sends its syslog lines (read them with syslog_lines())
        self.syslog_path = self.state_dir / "syslog"
        self._syslog = None
        self._syslog_lines = []
        #: the central's login user on this host (None: as before any deploy)
        self.login_user = None
        #: the agent secret (64 hex digits) in the host's /etc/central-agent/secret, or None
        self.agent_secret = None
        self.init_pid = None        # host-side pid of the PID namespace's init
        self._unshare = None
        self.sshd = None            # HostProcess
        self.agent = None           # HostProcess (real agent or a fake one)
        self.processes = []

    def __repr__(self):
        return "<TestHost %s %s>" % (self.name, self.address)

    def _known_hosts_path(self):
        return self.state_dir / "known_hosts"

    def authorize(self, public_key_line):
        """Append a line to the host's authorized_keys (options allowed in front)."""
        with open(self.authorized_keys_path, "a") as f:
            f.write(public_key_line.strip() + "\n")

    def regenerate_host_key(self):
        """Give the host a new ed25519 host key and restart sshd with it."""
        was_running = self.sshd is not None
        self.stop_sshd()
        generate_key(self.host_key_path, "root@" + self.name)
        if was_running:
            self.start_sshd()

    # ----- processes inside the host

    def _nsenter_argv(self):
        return ["nsenter", "-t", str(self.init_pid), "-n", "-m", "-u", "-p", "--"]

    def spawn(self, argv, log_name=None):
        """Start argv inside the host (output to a log in the state dir); returns HostProcess."""
        log = self.state_dir / (log_name or "process-%d.log" % len(self.processes))
        proc = HostProcess(self, argv, log)
        self.processes.append(proc)
        return proc

    def run(self, argv, check=True, input=None, timeout=60):
        """Run argv inside the host's namespaces; returns CompletedProcess (text)."""
        res = subprocess.run(self._nsenter_argv() + list(argv), input=input, capture_output=True,
                             text=True, env=HOST_ENV, cwd="/", timeout=timeout)
        if check and res.returncode != 0:
            raise HostCommandError(res.returncode, list(argv), res.stdout, res.stderr)
        return res

    def hide_path(self, path):
        """Make path unusable inside this host only (bind-mounts /dev/null over it)."""
        self.run(["mount", "--bind", "/dev/null", path])

    def connect(self, port=AGENT_PORT, address="127.0.0.1", timeout=5.0):
        """A TCP socket connected to address:port inside the host's network namespace."""
        def dial():
            return socket.create_connection((address, port), timeout=timeout)
        return _in_netns(self.netns, dial)

    def port_open(self, port=AGENT_PORT, address="127.0.0.1"):
        """True if something accepts TCP connections on address:port inside the host."""
        try:
            self.connect(port, address, timeout=1.0).close()
            return True
        except OSError:
            return False

    # ----- sshd

    def _upper(self, path):
        """Where a file under /etc or /var of this host lives in its copy-on-write layer
        (write there only before the host starts)."""
        top, rest = path.strip("/").split("/", 1)
        return self.state_dir / "cow" / top / "upper" / rest

    def _prepare_etc(self, login_user, central_keys, sshd_include, permit_open=()):
        """Write the host's own /etc files before it starts: sshd's config and, for a deployed
        host, the login user, the Match drop-in, the central keys and the agent secret."""
        def write(path, text, mode=0o644):
            target = self._upper(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            for parent in (target.parent, target.parent.parent):
                os.chmod(str(parent), 0o755)
            target.write_text(text)
            os.chmod(str(target), mode)

        self.sshd_config_path = self._upper("/etc/ssh/sshd_config")
        write("/etc/ssh/sshd_config", self._sshd_config(sshd_include))
        if not login_user:
            return
        self.login_user = CENTRAL_USER
        with open("/etc/passwd") as f:
            passwd = [line for line in f.read().splitlines() if not line.startswith(CENTRAL_USER + ":")]
        with open("/etc/group") as f:
            group = [line for line in f.read().splitlines() if not line.startswith(CENTRAL_USER + ":")]
        uid = 999
        used = {int(line.split(":")[2]) for line in passwd if line.count(":") >= 6}
        while uid in used:
            uid -= 1
        write("/etc/passwd", "\n".join(passwd + ["%s:x:%d:%d:%s:/nonexistent:/usr/sbin/nologin" % (
            CENTRAL_USER, uid, uid, CENTRAL_USER_MARKER)]) + "\n")
        write("/etc/group", "\n".join(group + ["%s:x:%d:" % (CENTRAL_USER, uid)]) + "\n")
        # '*': no password, yet not locked (sshd without PAM refuses locked accounts)
        with open("/etc/shadow") as f:
            shadow = [line for line in f.read().splitlines() if not line.startswith(CENTRAL_USER + ":")]
        write("/etc/shadow", "\n".join(shadow + ["%s:*:19000:0:99999:7:::" % CENTRAL_USER]) + "\n", 0o640)
        write("/etc/ssh/sshd_config.d/central-agent.conf", central_match_block(permit_open=permit_open))
        write("/etc/central-agent/authorized_keys",
              "".join(restricted_line(k, permit_open=permit_open) + "\n" for k in central_keys))
        self.agent_secret = os.urandom(32).hex()
        write(SECRET_PATH, self.agent_secret + "\n", 0o600)

    def _sshd_config(self, include):
        return "\n".join(([
            "Include /etc/ssh/sshd_config.d/*.conf",  # first, as Debian's sshd_config has it
        ] if include else []) + [
            "Port %d" % self.port,
            "ListenAddress 0.0.0.0",
            "HostKey %s" % self.host_key_path,
            # in the host's own /var (copy-on-write): deploy reloads sshd through it
            "PidFile /var/lib/sshd.pid",
            "StrictModes no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            # per-host operator keys first, then root's own file (on this host's tmpfs /root)
            "AuthorizedKeysFile %s .ssh/authorized_keys" % self.authorized_keys_path,
            "AllowTcpForwarding yes",
            "MaxStartups 2000:100:4000",
            "MaxSessions 200",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "LogLevel VERBOSE",
            "Subsystem sftp /usr/lib/openssh/sftp-server",
            "",
        ])

    def _sshd_answers(self):
        try:
            if self.network is not None:  # the machine has no way there: ask from inside
                s = self.connect(self.port, self.address, timeout=1.0)
            else:
                s = socket.create_connection((self.address, self.port), timeout=1.0)
            with s:
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def _start_sshd_process(self):
        # /etc/ssh/sshd_config is the host's own (_prepare_etc), as on a real host
        self.sshd = self.spawn([SSHD, "-D", "-e"], log_name="sshd.log")

    def syslog_lines(self):
        """The lines the agent sent to its syslog socket so far (the farm's agent only)."""
        with self.farm._syslog_lock:
            return list(self._syslog_lines)

    def _open_syslog(self):
        if self._syslog is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            if self.syslog_path.exists():
                self.syslog_path.unlink()
            sock.bind(str(self.syslog_path))
            sock.setblocking(False)
            self._syslog = sock
            self.farm._watch_syslog(self)

    def _wait_sshd(self, timeout=10):
        _wait_for(self._sshd_answers, timeout, "sshd on %s (%s)" % (self.name, self.address),
                  alive=self._sshd_died)

    def _sshd_died(self):
        if self.sshd is None or not self.sshd.alive():
            return "sshd exited: " + _tail(self.sshd_log_path)
        return None

    def start_sshd(self, timeout=10):
        """Start sshd (if not running) and wait until it sends its banner."""
        if self.sshd is not None and self.sshd.alive():
            return
        self._start_sshd_process()
        self._wait_sshd(timeout)

    def stop_sshd(self):
        """Stop sshd (its listener and every session it forked)."""
        if self.sshd is not None:
            self.sshd.stop()
            self.sshd = None
        # sessions are separate processes: end those too, so "sshd stopped" means unreachable
        for pid in self.host_pids():
            if _comm(pid) == "sshd":
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def host_pids(self):
        """Host-side pids of every process inside this host (its PID namespace)."""
        try:
            ns = os.stat("/proc/%d/ns/pid" % self.init_pid).st_ino
        except OSError:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat("/proc/%s/ns/pid" % entry).st_ino == ns:
                        pids.append(int(entry))
                except OSError:
                    pass
        return pids

    # ----- agent

    def _start_agent_process(self, argv_extra=(), policy=None, agent_path=None, port=AGENT_PORT):
        source = Path(agent_path or self.farm.agent_path)
        path = self.farm.visible(source)  # a copy named <digest>-<name> when source is hidden in hosts
        argv = [HOST_PYTHON, str(path), "--listen", "127.0.0.1", "--port", str(port)]
        if source.name == "agent.py":  # the real agent (the stand-in knows no such options)
            self._open_syslog()
            argv += ["--secret-file", SECRET_PATH, "--syslog-socket", str(self.syslog_path)]
            if self.login_user:
                argv += ["--central-user", self.login_user]
        elif source.name == STANDIN_AGENT.name and self.agent_secret and REAL_AGENT.exists():
            # the stand-in authenticates with the real agent's code and the host's secret
            argv += ["--secret-file", SECRET_PATH, "--agent-module", str(self.farm.visible(REAL_AGENT))]
        if policy is not None:
            policy_path = self.state_dir / "agent-policy.json"
            if isinstance(policy, (dict, list)):
                policy_path.write_text(json.dumps(policy))
            else:
                policy_path = Path(policy)
            argv += ["--policy", str(policy_path)]
        self.agent = self.spawn(argv + list(argv_extra), log_name="agent.log")
        self._agent_port = port

    def _agent_died(self):
        if self.agent is None or not self.agent.alive():
            return "agent exited: " + _tail(self.agent_log_path)
        return None

    def _wait_agent(self, timeout=10):
        _wait_for(lambda: self.port_open(self._agent_port), timeout,
                  "agent on %s 127.0.0.1:%d" % (self.name, self._agent_port),
                  alive=self._agent_died)

    def start_agent(self, argv_extra=(), policy=None, agent_path=None, port=AGENT_PORT,
                    timeout=10):
        """Start the agent on 127.0.0.1:port inside the host and wait until it listens.

        policy: a dict/list (written as JSON) or a path to a policy file.
        """
        self.stop_agent()
        self._start_agent_process(argv_extra, policy, agent_path, port)
        self._wait_agent(timeout)
        return self.agent

    def stop_agent(self):
        """Stop the agent (or fake agent) if one runs."""
        if self.agent is not None:
            self.agent.stop()
            self.agent = None

    def start_fake_agent(self, mode, port=AGENT_PORT, timeout=10):
        """Serve a hostile "agent" on 127.0.0.1:port (see FAKE_AGENT_MODES / tests/fakeagent.py).

        It holds the host's secret (a compromised host's root could), so its answers carry
        valid proofs, except in mode "squatter", which does not know the secret.
        """
        if mode not in FAKE_AGENT_MODES:
            raise ValueError("unknown fake agent mode %r (one of %s)" % (mode, FAKE_AGENT_MODES))
        self.stop_agent()
        self.agent = self.spawn([HOST_PYTHON, str(self.farm.visible(FAKE_AGENT)), mode, "--port", str(port),
                                 "--secret-file", SECRET_PATH], log_name="agent.log")
        self._agent_port = port
        self._wait_agent(timeout)
        return self.agent

    @property
    def agent_pid(self):
        """The agent's pid inside the host, or None."""
        return self.agent.ns_pid if self.agent is not None and self.agent.alive() else None

    def start_process(self, argv):
        """Start an arbitrary process in the host (e.g. ["sleep", "1000"]); returns HostProcess.

        Its ``.ns_pid`` is what the host's agent reports; ``.host_pid`` is the machine's view.
        """
        return self.spawn(argv)


class PrivateNetwork:
    """A bridge 10.97.N.0/24 with no address on the machine (see HostFarm.add_network)."""

    def __init__(self, subnet_index, lock_fd):
        self.subnet_index = subnet_index
        self.prefix = "10.97.%d" % subnet_index
        self.bridge = "hfp-%d" % subnet_index
        self.lock_fd = lock_fd

    def __repr__(self):
        return "<PrivateNetwork %s.0/24 on %s>" % (self.prefix, self.bridge)


class HostFarm:
    """A set of test hosts on one private bridge; a context manager.

    base_dir holds per-host state (keys, configs, logs). It must not be under one of the
    directories hidden inside hosts (/root, /tmp, /opt, /var/tmp), because sshd and the agent
    read it from inside; the default is a fresh directory under /run/central-hostfarm.
    """

    def __init__(self, base_dir=None, agent_path=None, subnet_index=None, keep_state=None):
        reason = missing_requirements()
        if reason:
            raise HostFarmError(reason)
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        #: remove base_dir on close() (only a directory the farm made; HOSTFARM_KEEP=1 keeps it)
        self._remove_base_dir = base_dir is None and not (
            keep_state if keep_state is not None else os.environ.get("HOSTFARM_KEEP"))
        if base_dir is None:
            base_dir = tempfile.mkdtemp(prefix="farm-", dir=str(STATE_ROOT))
        self.base_dir = Path(base_dir).resolve()
        for hidden in OVERLAYS:
            if self.base_dir == Path(hidden) or Path(hidden) in self.base_dir.parents:
                raise HostFarmError("base_dir %s is under %s, which test hosts cannot see"
                                    % (self.base_dir, hidden))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.agent_path = Path(agent_path) if agent_path else default_agent_path()
        self.hosts = {}
        self.networks = []  # PrivateNetwork, see add_network
        self._next_index = 1
        # indices of removed hosts, the longest freed first: taken once the 253 fresh ones are used
        self._free_indices = collections.deque()
        self._lock = threading.Lock()
        # one thread drains every host's syslog socket (a full datagram queue would block the agent)
        self._syslog_lock = threading.Lock()
        self._syslog_sel = None
        self._closed = False
        self._lock_fd = None
        self.subnet_index = self._claim_subnet(subnet_index)
        self.subnet_prefix = "10.98.%d" % self.subnet_index
        self.subnet = self.subnet_prefix + ".0/24"
        self.bridge = "hfb-%d" % self.subnet_index
        #: the machine's own address on the bridge (the central's source address)
        self.gateway = self.subnet_prefix + ".254"
        self._reaper = None
        try:
            _ip(["link", "add", self.bridge, "type", "bridge"])
            self._write_state()
            self._start_reaper()
            _ip([], batch="addr add %s/24 dev %s\nlink set %s up\n"
                % (self.gateway, self.bridge, self.bridge))
        except BaseException:
            self.close()
            raise

    # ----- subnet and crash safety

    def _claim_subnet(self, wanted):
        """Pick N for 10.98.N.0/24: held by a lock file and absent from routes and links."""
        n, self._lock_fd = claim_subnet("10.98", "hfb-", STATE_ROOT / "locks", wanted)
        if n is None:
            raise HostFarmError("no free 10.98.N.0/24 test subnet")
        return n

    def _state(self):
        return {
            "closed": self._closed,
            "remove_base_dir": self._remove_base_dir,
            "bridge": self.bridge,
            "bridges": [n.bridge for n in self.networks],
            "hosts": [{"netns": h.netns, "veth": h.veth, "extra_veths": h.extra_veths, "pids": [p for p in (h.init_pid, h._unshare and
                                                              h._unshare.pid) if p]}
                      for h in self.hosts.values()],
        }

    def _write_state(self):
        tmp = self.base_dir / "farm.json.tmp"
        tmp.write_text(json.dumps(self._state()))
        os.replace(str(tmp), str(self.base_dir / "farm.json"))

    def _start_reaper(self):
        # Holds a pipe from us: at EOF (we exited, even by SIGKILL) it tears down what
        # farm.json lists. Own session, so a Ctrl-C to pytest does not reach it.
        self._reaper = subprocess.Popen(
            [HOST_PYTHON, "-I", str(Path(__file__).resolve()), "--reap", str(self.base_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd="/")

    def _watch_syslog(self, host):
        with self._syslog_lock:
            if self._syslog_sel is None:
                self._syslog_sel = selectors.DefaultSelector()
                threading.Thread(target=self._drain_syslogs, name="hostfarm-syslog", daemon=True).start()
            self._syslog_sel.register(host._syslog, selectors.EVENT_READ, host)

    def _drain_syslogs(self):
        sel = self._syslog_sel
        while not self._closed:
            try:
                events = sel.select(0.2)
            except (OSError, ValueError):
                continue  # a host's socket closed under us
            for key, _ in events:
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    continue
                with self._syslog_lock:
                    key.data._syslog_lines.append(data.decode("utf-8", "replace"))

    def visible(self, path):
        """A path the hosts can read: files under a directory hidden inside hosts (the
        checkout may live under /tmp or /root) are copied into the farm's state directory."""
        path = Path(path).resolve()
        if not any(path == Path(h) or Path(h) in path.parents for h in OVERLAYS):
            return path
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        copy = self.base_dir / "files" / ("%s-%s" % (digest, path.name))
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(str(path), str(copy) + ".tmp")
            os.replace(str(copy) + ".tmp", str(copy))
        return copy

    # ----- hosts

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add_host(self, name=None, agent=True, authorized_keys=(), policy=None,
                 agent_argv_extra=(), **kwargs):
        """Create one host (sshd running, agent too unless agent=False); returns TestHost."""
        return self.add_hosts([name], agent=agent, authorized_keys=authorized_keys,
                              policy=policy, agent_argv_extra=agent_argv_extra, **kwargs)[0]

    def add_hosts(self, names, agent=True, authorized_keys=(), policy=None,
                  agent_argv_extra=(), login_user=True, central_keys=None, sshd_include=True,
                  network=None, extra_networks=(), permit_open=()):
        """Create several hosts at once (faster: each step runs for all, then all are awaited).

        names: a list of hostnames (None entries get a generated name) or a count.
        authorized_keys: lines root accepts (the operator's access; options allowed).
        login_user: make the host as deploy leaves it (the central's login user, its sshd
        Match drop-in, the agent secret); central_keys (default: authorized_keys) are the
        keys that user accepts, restricted to forwarding to the agent.
        sshd_include: the host's sshd_config includes /etc/ssh/sshd_config.d/*.conf.
        network: a PrivateNetwork (add_network) to put the hosts on instead of the farm's bridge:
        the machine cannot reach them, only hosts with a leg on it can. extra_networks: more
        private networks each host gets a leg on (a bastion: farm bridge + private network).
        permit_open: host:port targets the central's login user may forward to besides the
        agent (a bastion's hosts behind it).
        """
        if central_keys is None:
            central_keys = list(authorized_keys)
        if self._closed:
            raise HostFarmError("farm is closed")
        if isinstance(names, int):
            names = [None] * names
        with self._lock:
            hosts = []
            for name in names:
                if self._next_index <= 253:
                    index = self._next_index
                    self._next_index += 1
                elif self._free_indices:
                    index = self._free_indices.popleft()
                else:
                    raise HostFarmError("a farm holds at most 253 hosts at once")
                name = name or "host-%d-%d" % (self.subnet_index, index)
                if name in self.hosts:
                    raise HostFarmError("host %s exists already" % name)
                host = TestHost(self, name, index, network, extra_networks)
                self.hosts[name] = host
                hosts.append(host)
            self._create_network(hosts)
        for host in hosts:
            host.state_dir.mkdir(parents=True, exist_ok=True)
            generate_key(host.host_key_path, "root@" + host.name)
            host.authorized_keys_path.write_text(
                "".join(k.strip() + "\n" for k in authorized_keys))
            host._prepare_etc(login_user, central_keys, sshd_include, permit_open)
            self._launch_init(host)
        with self._lock:
            self._write_state()
        for host in hosts:
            self._await_init(host)
            host._start_sshd_process()
            if agent:
                host._start_agent_process(agent_argv_extra, policy)
        for host in hosts:
            host._wait_sshd()
            if agent:
                host._wait_agent()
        return hosts

    def _create_network(self, hosts):
        root_batch = []
        for host in hosts:
            root_batch += [
                "netns add %s" % host.netns,
                "link add %s type veth peer name eth0 netns %s" % (host.veth, host.netns),
                "link set %s master %s up" % (host.veth, host.network.bridge if host.network else self.bridge),
            ]
            for i, (net, veth) in enumerate(zip(host.extra_networks, host.extra_veths)):
                root_batch += ["link add %s type veth peer name eth%d netns %s" % (veth, i + 1, host.netns),
                               "link set %s master %s up" % (veth, net.bridge)]
        _ip([], batch="\n".join(root_batch) + "\n")
        for host in hosts:
            # only the test subnets: no default route, so nothing can leave the machine
            batch = "link set lo up\naddr add %s/24 dev eth0\nlink set eth0 up\n" % host.address
            for i, net in enumerate(host.extra_networks):
                batch += "addr add %s/24 dev eth%d\nlink set eth%d up\n" % (host.addresses[net], i + 1, i + 1)
            _ip([], netns=host.netns, batch=batch)

    def add_network(self):
        """A private network: a bridge of its own with no address on the machine, so only the
        hosts on it (and bastions with a leg on it) reach each other; returns PrivateNetwork."""
        if self._closed:
            raise HostFarmError("farm is closed")
        n, fd = claim_subnet("10.97", "hfp-", STATE_ROOT / "locks")
        if n is None:
            raise HostFarmError("no free 10.97.N.0/24 private test subnet")
        net = PrivateNetwork(n, fd)
        try:
            _ip([], batch="link add %s type bridge\nlink set %s up\n" % (net.bridge, net.bridge))
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            self.networks.append(net)
            self._write_state()
        return net

    def _launch_init(self, host):
        argv = ["ip", "netns", "exec", host.netns,
                "unshare", "--uts", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                HOST_PYTHON, "-I", "-S", str(HOST_INIT), host.name]
        for path in COW_DIRS:  # before the tmpfs mounts: /var/tmp lies inside /var
            upper = host.state_dir / "cow" / path.strip("/")
            (upper / "upper").mkdir(parents=True, exist_ok=True)
            (upper / "work").mkdir(parents=True, exist_ok=True)
            argv.append("overlay=%s:%s:%s" % (path, upper / "upper", upper / "work"))
        argv += list(OVERLAYS)
        with open(host.state_dir / "init.log", "ab") as log:
            host._unshare = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=log,
                                             env=HOST_ENV, cwd="/", start_new_session=True)

    def _await_init(self, host):
        line = host._unshare.stdout.readline()
        if line.strip() != b"ready":
            host._unshare.wait(5)
            raise HostFarmError("host %s did not start: %s" % (
                host.name, _tail(host.state_dir / "init.log")))
        kids = _children(host._unshare.pid)
        if not kids:
            raise HostFarmError("host %s: no namespace init under unshare" % host.name)
        host.init_pid = kids[0]
        host._unshare.stdout.close()
        with self._lock:
            self._write_state()

    def remove_network(self, net):
        """Delete a private network's bridge (after the hosts on it are removed)."""
        with self._lock:
            self.networks.remove(net)
            self._write_state()
        _ip(["link", "del", net.bridge], check=False)
        os.close(net.lock_fd)

    def host(self, name):
        """The host called name."""
        return self.hosts[name]

    def unused_address(self):
        """An address on the farm's subnet that no host answers on (for unreachable tests)."""
        return "%s.%d" % (self.subnet_prefix, 250)

    def remove_host(self, name):
        """Tear one host down (all its processes, its netns and veth)."""
        host = self.hosts.pop(name)
        self._teardown_host(host)
        # the address may go to a later host, with another MAC: no neighbour entry may outlive it
        _ip(["neigh", "flush", "to", host.address], check=False)
        with self._lock:
            self._free_indices.append(host.index)
            self._write_state()

    def _teardown_host(self, host):
        if host.init_pid and _netns_inode_of_pid(host.init_pid) == _netns_inode(host.netns):
            try:
                os.kill(host.init_pid, signal.SIGKILL)  # the kernel then kills the whole host
            except ProcessLookupError:
                pass
        if host._unshare is not None:
            try:
                host._unshare.wait(10)
            except subprocess.TimeoutExpired:
                host._unshare.kill()
                host._unshare.wait(5)
        for proc in [host.sshd, host.agent] + host.processes:
            if proc is not None:
                try:
                    proc.popen.wait(10)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
        if host._syslog is not None:
            with self._syslog_lock:
                try:
                    self._syslog_sel.unregister(host._syslog)
                except (KeyError, ValueError):
                    pass
            host._syslog.close()
            host._syslog = None
        # deleting the veth explicitly is synchronous; the netns would drop it only later
        for veth in [host.veth] + host.extra_veths:
            _ip(["link", "del", veth], check=False)
        _ip(["netns", "del", host.netns], check=False)

    def close(self):
        """Stop every host by host-side PID, then delete netns, veths and the bridge."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for host in list(self.hosts.values()):
            try:
                self._teardown_host(host)
            except Exception as exc:  # keep tearing down the rest
                errors.append("%s: %s" % (host.name, exc))
        self.hosts.clear()
        _ip(["link", "del", self.bridge], check=False)
        for net in self.networks:
            _ip(["link", "del", net.bridge], check=False)
            os.close(net.lock_fd)
        if self.base_dir.exists():
            self._write_state()
        if self._reaper is not None:
            self._reaper.stdin.close()
            try:
                self._reaper.wait(10)
            except subprocess.TimeoutExpired:
                self._reaper.kill()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._remove_base_dir and not errors:
            shutil.rmtree(str(self.base_dir), ignore_errors=True)
        if errors:
            raise HostFarmError("teardown problems: " + "; ".join(errors))


def _netns_inode(netns):
    try:
        return os.stat("/run/netns/" + netns).st_ino
    except OSError:
        return None


def _reap(base_dir):
    """Reaper process: wait for the farm's owner to go, then tear down what it left."""
    try:
        sys.stdin.buffer.read()
    except OSError:
        pass
    try:
        state = json.loads((Path(base_dir) / "farm.json").read_text())
    except (OSError, ValueError):
        return
    if state.get("closed"):
        return
    for host in state["hosts"]:
        ino = _netns_inode(host["netns"])
        for pid in host["pids"]:
            # only pids still living in that host's netns: never a recycled pid
            if ino is not None and _netns_inode_of_pid(pid) == ino:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.2)
        for veth in [host["veth"]] + host.get("extra_veths", []):
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", host["netns"]], capture_output=True)
    for bridge in [state["bridge"]] + state.get("bridges", []):
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    if state.get("remove_base_dir"):
        shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--reap":
    _reap(sys.argv[2])
