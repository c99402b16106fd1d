"""Real Debian 12 LXC containers for end-to-end tests.

One base container (``central-test-base``) is built once with the Debian template
(debootstrap from the machine's Debian mirror) and cached across test runs; tests get
overlay snapshot clones of it (``lxc-copy -s -B overlay``), each with a fresh ed25519 host
key, its own hostname, a static address on a private bridge 10.99.N.0/24 (no NAT, no
route off the machine; ``lxc-net`` is never used), a memory limit, and the central's key
in root's authorized_keys. systemd runs as PID 1 inside; the base carries a tiny service,
``central-test-echo.service`` (``python3 -m http.server 8099 --bind 127.0.0.1``), for action
tests.

lxcfs is not started: the agent reads the container's cgroup limits itself (its
memory.source says "cgroup-v1"/"cgroup-v2"), which is what a host without lxcfs looks like.

Usage::

    with LxcFarm() as farm:                      # builds or reuses the base
        c = farm.clone("web-1", authorized_keys=[pubkey])
        c.attach(["hostname"]).stdout            # "web-1\\n"
"""
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from tests.hostfarm import PinnedSSHTarget, _wait_for, claim_subnet, generate_key

BASE_NAME = "central-test-base"
#: bump when the recipe changes: a cached base with another recipe is rebuilt
BASE_RECIPE = "1"
BASE_PACKAGES = ["python3", "openssh-server", "procps", "cron", "iproute2"]
LXC_PATH = Path("/var/lib/lxc")
STATE_ROOT = Path("/run/central-lxc")
CLONE_PREFIX = "central-tc-"
DEFAULT_MEMORY = "256M"
ECHO_UNIT = "central-test-echo.service"
ECHO_PORT = 8099
ATTACH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

ECHO_UNIT_TEXT = """[Unit]
Description=central test service (a loopback HTTP server whose MainPID tests watch)

[Service]
ExecStart=/usr/bin/python3 -m http.server %d --bind 127.0.0.1 --directory /var/empty
Restart=always

[Install]
WantedBy=multi-user.target
""" % ECHO_PORT


class LxcError(RuntimeError):
    """An LXC container could not be built, cloned or controlled."""


class MirrorUnreachable(LxcError):
    """The Debian mirror cannot be reached, so the base container cannot be built."""


def missing_requirements():
    """Why LXC containers cannot be used here, or None."""
    if os.geteuid() != 0:
        return "LXC tests need root"
    for tool in ("lxc-create", "lxc-copy", "lxc-start", "lxc-attach", "debootstrap", "ip"):
        if shutil.which(tool) is None:
            return "%s not found (apt-get install lxc debootstrap iproute2)" % tool
    if not Path("/usr/share/lxc/templates/lxc-debian").exists():
        return "the LXC debian template is missing (apt-get install lxc-templates / lxc)"
    return None


def debian_mirror():
    """The Debian mirror to build from: $CENTRAL_TEST_DEBIAN_MIRROR, else the apt sources."""
    env = os.environ.get("CENTRAL_TEST_DEBIAN_MIRROR") or os.environ.get("MIRROR")
    if env:
        return env.rstrip("/")
    candidates = []
    for path in [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*")):
        try:
            text = path.read_text()
        except OSError:
            continue
        candidates += re.findall(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M)
        candidates += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s+bookworm\b", text, re.M)
    return candidates[0].rstrip("/") if candidates else "http://deb.debian.org/debian"


def check_mirror(mirror, timeout=15):
    """Raise MirrorUnreachable unless mirror serves bookworm's Release file."""
    url = mirror + "/dists/bookworm/Release"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read(64)
    except OSError as exc:
        raise MirrorUnreachable("Debian mirror %s unreachable (%s): cannot build the LXC base "
                                "container" % (url, exc)) from exc


def _run(argv, check=True, timeout=300, **kwargs):
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and res.returncode != 0:
        raise LxcError("%s failed (%d): %s" % (" ".join(argv), res.returncode,
                                               (res.stderr or res.stdout).strip()[-2000:]))
    return res


def _raise_inotify_limit(minimum=1024):
    # every container's systemd takes several inotify instances; 128 runs out after a few
    path = Path("/proc/sys/fs/inotify/max_user_instances")
    if int(path.read_text()) < minimum:
        path.write_text(str(minimum))


def _base_dir(name=BASE_NAME):
    return LXC_PATH / name


def base_is_valid(name=BASE_NAME):
    """True if the cached base was built completely with the current recipe."""
    marker = _base_dir(name) / "central-test-base.json"
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    rootfs = _base_dir(name) / "rootfs"
    return (info.get("recipe") == BASE_RECIPE
            and (rootfs / "usr/bin/python3").exists()
            and (rootfs / "usr/sbin/sshd").exists()
            and (rootfs / "lib/systemd/systemd").exists())


def ensure_base(name=BASE_NAME, log_dir=None):
    """Build the cached base container unless a valid one exists; returns seconds spent.

    Raises MirrorUnreachable when the Debian mirror cannot be reached, LxcError otherwise.
    """
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    _raise_inotify_limit()
    with open(STATE_ROOT / "base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs never build it twice
        if base_is_valid(name):
            return 0.0
        started = time.monotonic()
        if _base_dir(name).exists():
            _run(["lxc-destroy", "-n", name, "-f"], check=False)
            shutil.rmtree(str(_base_dir(name)), ignore_errors=True)
        mirror = debian_mirror()
        check_mirror(mirror)
        log_path = Path(log_dir or STATE_ROOT) / "base-build.log"
        env = dict(os.environ, MIRROR=mirror, LANG="C.UTF-8")
        with open(log_path, "w") as log:
            res = subprocess.run(
                ["lxc-create", "-n", name, "-t", "debian", "--", "-r", "bookworm",
                 "--packages=" + ",".join(BASE_PACKAGES)],
                stdout=log, stderr=subprocess.STDOUT, env=env, timeout=1200)
        text = log_path.read_text(errors="replace")
        if res.returncode != 0 or "Apt update failed" in text:
            if re.search(r"Failed to fetch|Could not resolve|Temporary failure resolving|"
                         r"Couldn't download|Connection timed out|Unable to connect", text):
                raise MirrorUnreachable("building %s from %s failed while downloading; see %s"
                                        % (name, mirror, log_path))
            raise LxcError("lxc-create %s failed (%d); see %s:\n%s"
                           % (name, res.returncode, log_path, text[-2000:]))
        _customise_base(name)
        if not (_base_dir(name) / "rootfs/usr/bin/python3").exists():
            raise LxcError("base %s was built without python3; see %s" % (name, log_path))
        (_base_dir(name) / "central-test-base.json").write_text(json.dumps(
            {"recipe": BASE_RECIPE, "mirror": mirror, "packages": BASE_PACKAGES,
             "built": time.time(), "seconds": time.monotonic() - started}))
        return time.monotonic() - started


def _customise_base(name):
    base = _base_dir(name)
    rootfs = base / "rootfs"
    # the address comes from the LXC config; no DHCP client waiting at boot
    (rootfs / "etc/network/interfaces").write_text("auto lo\niface lo inet loopback\n")
    # every clone gets its own host key
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    unit = rootfs / "etc/systemd/system" / ECHO_UNIT
    unit.write_text(ECHO_UNIT_TEXT)
    wants = rootfs / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    link = wants / ECHO_UNIT
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/" + ECHO_UNIT)
    (rootfs / "var/empty").mkdir(exist_ok=True)
    config = base / "config"
    lines = [line for line in config.read_text().splitlines()
             if not line.startswith(("lxc.net.0.link", "lxc.net.0.hwaddr",
                                     "lxc.apparmor."))]
    # this kernel has no AppArmor; "generated" would fail where it has one without profiles
    lines.append("lxc.apparmor.profile = unconfined")
    config.write_text("\n".join(lines) + "\n")


def _cgroup_memory_key():
    """The config key for a memory limit: cgroup v1 controller if mounted, else v2."""
    if Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
        return "lxc.cgroup.memory.limit_in_bytes"
    return "lxc.cgroup2.memory.max"


class Container(PinnedSSHTarget):
    """One overlay clone of the base container."""

    port = 22

    def __init__(self, farm, lxc_name, name, index):
        self.farm = farm
        #: the container's hostname (what the agent reports)
        self.name = name
        #: the LXC container name (central-tc-N-I: crashed runs can be found and cleaned up)
        self.lxc_name = lxc_name
        self.index = index
        self.address = "%s.%d" % (farm.subnet_prefix, index)
        self.dir = LXC_PATH / lxc_name
        self.delta = self.dir / "overlay" / "delta"
        self.host_key_path = farm.state_dir / (lxc_name + "_host_ed25519_key")
        self.clone_seconds = None
        self.ready_seconds = None

    def __repr__(self):
        return "<Container %s %s>" % (self.name, self.address)

    def _known_hosts_path(self):
        return self.farm.state_dir / (self.lxc_name + ".known")

    def _write_identity(self, authorized_keys):
        # written into the overlay's upper dir while stopped: the clone sees them, the
        # base stays untouched
        public = generate_key(self.host_key_path, "root@" + self.name)
        ssh_dir = self.delta / "etc/ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(str(self.delta / "etc"), 0o755)
        os.chmod(str(ssh_dir), 0o755)
        shutil.copyfile(str(self.host_key_path), str(ssh_dir / "ssh_host_ed25519_key"))
        os.chmod(str(ssh_dir / "ssh_host_ed25519_key"), 0o600)
        (ssh_dir / "ssh_host_ed25519_key.pub").write_text(public + "\n")
        (self.delta / "etc/hostname").write_text(self.name + "\n")
        (self.delta / "etc/hosts").write_text(
            "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            % self.name)
        root_ssh = self.delta / "root/.ssh"
        root_ssh.mkdir(parents=True, exist_ok=True)
        os.chmod(str(self.delta / "root"), 0o700)
        os.chmod(str(root_ssh), 0o700)
        keys = root_ssh / "authorized_keys"
        keys.write_text("".join(k.strip() + "\n" for k in authorized_keys))
        os.chmod(str(keys), 0o600)

    def _configure(self, memory):
        config = self.dir / "config"
        lines = [line for line in config.read_text().splitlines()
                 if not line.startswith(("lxc.net.0.link", "lxc.net.0.ipv4", "lxc.net.0.hwaddr",
                                         "lxc.cgroup", "lxc.uts.name"))]
        lines += [
            "lxc.uts.name = %s" % self.name,
            "lxc.net.0.link = %s" % self.farm.bridge,
            "lxc.net.0.ipv4.address = %s/24" % self.address,
            "lxc.net.0.hwaddr = 00:16:3e:63:%02x:%02x" % (self.farm.subnet_index, self.index),
        ]
        if memory:
            lines.append("%s = %s" % (_cgroup_memory_key(), memory))
        config.write_text("\n".join(lines) + "\n")

    def start(self, timeout=60):
        """Start the container and wait until its sshd answers."""
        _run(["lxc-start", "-n", self.lxc_name, "-d", "-l", "INFO",
              "-o", str(self.farm.state_dir / (self.lxc_name + ".log"))])
        self.wait_ssh(timeout)

    def _ssh_answers(self):
        try:
            with socket.create_connection((self.address, self.port), timeout=1.0) as s:
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def wait_ssh(self, timeout=60):
        """Wait until sshd in the container sends its banner."""
        _wait_for(self._ssh_answers, timeout, "sshd in container %s (%s)" % (
            self.name, self.address), interval=0.05)

    def stop(self, timeout=30):
        """Stop the container (clean shutdown, killed after timeout)."""
        _run(["lxc-stop", "-n", self.lxc_name, "-t", str(timeout)], check=False,
             timeout=timeout + 30)

    def kill(self):
        """Stop the container at once (like pulling the plug)."""
        _run(["lxc-stop", "-n", self.lxc_name, "-k"], check=False)

    def state(self):
        """RUNNING, STOPPED, ..."""
        return _run(["lxc-info", "-n", self.lxc_name, "-s", "-H"]).stdout.strip()

    def attach(self, argv, check=True, input=None, timeout=120):
        """Run argv inside the container (lxc-attach, clean environment); CompletedProcess."""
        res = subprocess.run(["lxc-attach", "-n", self.lxc_name, "--clear-env",
                              "--set-var", "PATH=" + ATTACH_PATH, "--set-var", "HOME=/root",
                              "--set-var", "LANG=C.UTF-8", "--"] + list(argv),
                             input=input, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise LxcError("in %s: %s exited %d: %s" % (self.name, " ".join(argv),
                                                       res.returncode,
                                                       (res.stderr + res.stdout)[-2000:]))
        return res

    def wait_system_running(self, timeout=60):
        """Wait until ``systemctl is-system-running`` says running (or degraded); returns it."""
        res = self.attach(["systemctl", "is-system-running", "--wait"], check=False,
                          timeout=timeout)
        return res.stdout.strip()

    def destroy(self):
        """Stop and delete the clone (never the base)."""
        self.kill()
        _run(["lxc-destroy", "-n", self.lxc_name, "-f"], check=False)


class LxcFarm:
    """Clones of the cached base container on one private bridge; a context manager."""

    def __init__(self, base=BASE_NAME, subnet_index=None):
        reason = missing_requirements()
        if reason:
            raise LxcError(reason)
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.containers = {}
        self._lock = threading.Lock()
        self._next_index = 1
        self._lock_fd = None
        self.bridge = None
        #: seconds the base build took in this farm (0.0 when the cached one was reused)
        self.base_build_seconds = ensure_base(base)
        self._remove_stale_clones()
        self.subnet_index = self._claim_subnet(subnet_index)
        self.subnet_prefix = "10.99.%d" % self.subnet_index
        self.subnet = self.subnet_prefix + ".0/24"
        self.gateway = self.subnet_prefix + ".254"
        self.state_dir = STATE_ROOT / ("farm-%d" % self.subnet_index)
        shutil.rmtree(str(self.state_dir), ignore_errors=True)
        self.state_dir.mkdir(parents=True)
        self.bridge = "lxb-%d" % self.subnet_index
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", self.gateway + "/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])

    def _claim_subnet(self, wanted):
        n, self._lock_fd = claim_subnet("10.99", "lxb-", STATE_ROOT / "locks", wanted)
        if n is None:
            raise LxcError("no free 10.99.N.0/24 test subnet")
        return n

    def _remove_stale_clones(self):
        """Destroy clones left by a test run that died (its subnet lock is free again)."""
        lock_dir = STATE_ROOT / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        names = _run(["lxc-ls", "-1"]).stdout.split()
        by_subnet = {}
        for name in names:
            m = re.match(re.escape(CLONE_PREFIX) + r"(\d+)-\d+$", name)
            if m:
                by_subnet.setdefault(int(m.group(1)), []).append(name)
        for n, stale in by_subnet.items():
            fd = os.open(str(lock_dir / ("10.99.%d.lock" % n)), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live run owns them
            try:
                for name in stale:
                    _run(["lxc-stop", "-n", name, "-k"], check=False)
                    _run(["lxc-destroy", "-n", name, "-f"], check=False)
                _run(["ip", "link", "del", "lxb-%d" % n], check=False)
            finally:
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def clone(self, name=None, authorized_keys=(), memory=DEFAULT_MEMORY, start=True):
        """A new overlay clone of the base, started and answering SSH unless start=False.

        name is the container's hostname (default: its LXC name, ``central-tc-N-I``).
        """
        with self._lock:
            index = self._next_index
            self._next_index += 1
        lxc_name = "%s%d-%d" % (CLONE_PREFIX, self.subnet_index, index)
        container = Container(self, lxc_name, name or lxc_name, index)
        started = time.monotonic()
        _run(["lxc-copy", "-n", self.base, "-N", lxc_name, "-s", "-B", "overlay"])
        self.containers[lxc_name] = container
        container._write_identity(authorized_keys)
        container._configure(memory)
        container.clone_seconds = time.monotonic() - started
        if start:
            container.start()
        container.ready_seconds = time.monotonic() - started
        return container

    def close(self):
        """Destroy every clone (the cached base stays), then the bridge."""
        for container in list(self.containers.values()):
            container.destroy()
        self.containers.clear()
        if self.bridge:
            _run(["ip", "link", "del", self.bridge], check=False)
            shutil.rmtree(str(self.state_dir), ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def install_agent(container, policy):
    """Copy the bundled agent, a host policy and a fresh agent secret into a container and run
    the agent under systemd (no deploy: the central's key is root's); returns the secret."""
    from central.bundled import agent_path

    secret = os.urandom(32).hex()
    container.attach(["tee", "/usr/local/lib/central-agent.py"], input=agent_path().read_text())
    container.attach(["tee", "/etc/central-agent.json"], input=json.dumps(policy))
    container.attach(["chmod", "600", "/etc/central-agent.json"])
    container.attach(["sh", "-c", "umask 077 && mkdir -p /etc/central-agent && cat > /etc/central-agent/secret"],
                     input=secret + "\n")
    container.attach(["systemd-run", "--unit", "central-agent", "/usr/bin/python3",
                      "/usr/local/lib/central-agent.py", "--policy", "/etc/central-agent.json"])
    probe = ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 8083), 1)"]
    _wait_for(lambda: container.attach(probe, check=False).returncode == 0, 30, "the agent in " + container.name,
              interval=0.2)
    return secret
