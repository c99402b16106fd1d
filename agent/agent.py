#!/usr/bin/env python3
"""central agent: a small HTTP/1.1 JSON server reporting this host's state.

One file, Python standard library only, Python 3.6 or later. The central reaches it over
an SSH direct-tcpip channel to 127.0.0.1:8083; docs/agent-protocol.md is the contract.

It serves only the central: every request but an anonymous /api/health is authenticated with
the host's secret (--secret-file, root-only, re-read on SIGHUP) and every answer carries the
agent's own proof; connections from other users than root and the central's login user
(--central-user) and browser-shaped requests are refused; actions are logged to syslog
(the "trust" section below, docs/agent-protocol.md "Authentication").

Run:   agent.py [--listen 127.0.0.1] [--port 8083] [--policy /etc/central-agent.json]
              [--secret-file /etc/central-agent/secret] [--central-user central]
Debug: agent.py --once /api/all

In-process use (the central monitors its own host this way): load this file with
importlib and use ``Collector(proc="/proc", sys="/sys", policy=None)`` and its
``all()``, ``inventory()`` and ``health()`` methods. Importing has no side effects.

Action policy
-------------
Actions (kill a process, start/stop/restart a systemd service or a docker container) are
executed by the agent itself under a host-side JSON policy file (``--policy``, default
/etc/central-agent.json). Keys not given in the file take the defaults below:

    {"actions": {"kill": true, "service": true, "docker": true},
     "kill_signals": ["TERM", "INT", "HUP", "QUIT", "KILL", "USR1", "USR2"],
     "protected_processes": ["sshd", "sshd-session", "sshd-auth", "systemd", "init",
                             "systemd-journal", "systemd-logind", "dbus-daemon",
                             "dbus-broker"],
     "service_patterns": ["*"],
     "protected_units": ["ssh.service", "sshd.service", "dbus.service",
                         "dbus-broker.service", "systemd-*", "central-agent.service",
                         "getty@*", "serial-getty@*", "user@*", "user-runtime-dir@*"],
     "container_patterns": ["*"],
     "protected_containers": [],
     "watched_units": [],
     "watched_processes": [],
     "logs": true}

Why this default when the file is absent: the actions are fixed verbs on named objects
(no shell, no arguments of the caller's choosing reach a command line), every request is
role-checked and audited by the central, and the SSH key the central uses is restricted
to this port. The worst a wrong or malicious request can do is stop something, so the
default allows the feature but protects what keeps the host reachable and manageable
(sshd, systemd, dbus, this agent, logins): a mistaken click cannot lock the operator out.
An operator who wants a read-only agent writes
``{"actions": {"kill": false, "service": false, "docker": false}}``.

A policy file that exists but cannot be read, is not valid JSON, has keys of the wrong
type, or is writable by group/others or owned by another user than root/the agent
refuses every action (fail closed) and says why in the 403 detail and in /api/health.
"""

import errno
import fnmatch
import functools
import heapq
import json
import logging
import os
import pwd
import queue
import re
import selectors
import signal
import socket
import stat as stat_mod
import struct
import sys as sys_mod
import threading
import time
from urllib.parse import parse_qs, quote, urlsplit

VERSION = "1.2.1"

log = logging.getLogger("central-agent")

DEFAULT_POLICY_PATH = "/etc/central-agent.json"
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
TOP_N = 10
CMDLINE_MAX = 200
PF_KTHREAD = 0x00200000
PID_MAX_LIMIT = 4194304  # the kernel's ceiling for pid_max (larger ints overflow os.kill)

DEFAULT_POLICY = {
    "actions": {"kill": True, "service": True, "docker": True},
    "kill_signals": ["TERM", "INT", "HUP", "QUIT", "KILL", "USR1", "USR2"],
    # sshd-session / sshd-auth: OpenSSH 9.8+ runs each connection (the central's too) in them.
    "protected_processes": ["sshd", "sshd-session", "sshd-auth", "systemd", "init",
                            "systemd-journal", "systemd-logind", "dbus-daemon", "dbus-broker"],
    "service_patterns": ["*"],
    "protected_units": ["ssh.service", "sshd.service", "dbus.service", "dbus-broker.service",
                        "systemd-*", "central-agent.service", "getty@*", "serial-getty@*",
                        "user@*", "user-runtime-dir@*"],
    "container_patterns": ["*"],
    "protected_containers": [],
    "watched_units": [],
    "watched_processes": [],
    "logs": True,
}

UNIT_RE = re.compile(r"[A-Za-z0-9@_:.][A-Za-z0-9@._:-]{0,199}")
# What a unit listing may name (-.mount, escaped paths): only reported, never acted on.
LISTED_UNIT_RE = re.compile(r"[A-Za-z0-9@_:.\\-][A-Za-z0-9@._:\\-]{0,255}")
CONTAINER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
VERBS = ("start", "stop", "restart")
# Local block-device filesystems worth reporting; network filesystems are left out on
# purpose: statvfs on a dead NFS server hangs the collector.
REAL_FSTYPES = frozenset(["ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "vfat", "exfat",
                          "f2fs", "jfs", "reiserfs", "ntfs", "ntfs3", "hfsplus", "bcachefs",
                          "nilfs2"])
# Kernel and virtual filesystems that hold no user data. The root filesystem is reported
# whatever else it is (overlay in Docker and LXC clones, zfs, btrfs, tmpfs on a live system,
# 9p/virtiofs in a VM sandbox): only these are never the root worth reporting.
PSEUDO_FSTYPES = frozenset(["proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2",
                            "securityfs", "debugfs", "tracefs", "configfs", "fusectl", "mqueue",
                            "hugetlbfs", "pstore", "bpf", "autofs", "binfmt_misc", "rpc_pipefs",
                            "nsfs", "efivarfs", "selinuxfs", "fuse.lxcfs"])
# Whose statvfs total is the size of a device, so the inventory can list it: a zfs dataset's
# total is its used space plus the pool's free space (it moves with every write in the pool),
# an overlay's is whatever its upper layer's is.
FIXED_SIZE_FSTYPES = REAL_FSTYPES - frozenset(["zfs"])
# Single files a container engine bind-mounts from the host's disk (Docker, Podman,
# Kubernetes): they are not the container's filesystems.
CONTAINER_FILE_MOUNTS = frozenset(["/etc/hostname", "/etc/hosts", "/etc/resolv.conf",
                                   "/dev/termination-log", "/run/.containerenv"])
SKIP_NET = frozenset(["lo"])

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_SHA256 = []
_SHA256_CTOR = []
# http.client, hashlib (OpenSSL), subprocess and ipaddress are imported where used: on a
# host without docker they would cost several MB of resident memory for nothing.


def _sha256_ctor():
    """The sha256 constructor, preferring the builtin module over OpenSSL's (3 MB less RSS)."""
    if not _SHA256_CTOR:
        ctor = None
        for name in ("_sha256", "_sha2"):
            try:
                ctor = __import__(name).sha256
                break
            except (ImportError, AttributeError):
                continue
        if ctor is None:
            import hashlib
            ctor = hashlib.sha256
        _SHA256_CTOR.append(ctor)
    return _SHA256_CTOR[0]


def _sha256_hex(data):
    """sha256 hex digest of bytes."""
    return _sha256_ctor()(data).hexdigest()


def _which(program):
    """Find an executable in the usual system directories and PATH (like shutil.which)."""
    dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/usr/bin", "/sbin",
                                                            "/bin"]
    for d in dirs:
        path = os.path.join(d, program)
        if d and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _python_version():
    return "%d.%d.%d" % sys_mod.version_info[:3]


def agent_sha256():
    """Return the hex sha256 of this agent file (computed once per process)."""
    if not _SHA256:
        try:
            with open(os.path.abspath(__file__), "rb") as f:
                _SHA256.append(_sha256_hex(f.read()))
        except OSError:
            return None
    return _SHA256[0]


# ---------------------------------------------------------------------------- reading

def _read_bytes(path, size=65536):
    """Read up to size bytes of a (usually /proc or /sys) file with one syscall pair."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _read_text(path, size=1 << 20):
    """Read a text file (at most size bytes) as str, in 64 KiB reads.

    One big os.read() would allocate a buffer of the full size each time, and glibc then
    keeps such sizes on the heap: reading in chunks keeps the agent's RSS flat.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        total = 0
        while total < size:
            chunk = os.read(fd, min(65536, size - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def _read_opt(path):
    """Read a small text file, stripped; None when it is missing or unreadable."""
    try:
        return _read_text(path).strip()
    except (OSError, ValueError):
        return None


def _read_int(path):
    """Read an integer file; None when missing, unreadable or not a number."""
    value = _read_opt(path)
    if value is None:
        return None
    try:
        return int(value.split()[0])
    except (ValueError, IndexError):
        return None


def _kv_file(path, scale=1):
    """Parse 'key value' lines (memory.stat, cpu.stat, meminfo-style) into ints."""
    out = {}
    for line in _read_text(path).splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2:
            try:
                out[parts[0]] = int(parts[1]) * scale
            except ValueError:
                pass
    return out


def _pct(part, whole):
    """Percentage rounded to 0.1 (0.0 of nothing), or None when a figure is unknown."""
    if part is None or whole is None:
        return None
    if whole == 0:
        return 0.0
    return round(100.0 * part / whole, 1)


def _parse_cpu_list(text):
    """Count CPUs in a kernel list like '0-3,8,10-11'."""
    count = 0
    for chunk in (text or "").strip().split(","):
        chunk = chunk.strip()
        if not chunk:
            continue
        if "-" in chunk:
            lo, hi = chunk.split("-", 1)
            count += int(hi) - int(lo) + 1
        else:
            count += 1
    return count


def _mounts(proc):
    """List (device, mountpoint, fstype, options) from <proc>/self/mounts."""
    try:
        text = _read_text(os.path.join(proc, "self", "mounts"), 4 << 20)
    except OSError:
        text = _read_text(os.path.join(proc, "mounts"), 4 << 20)
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out.append((_unescape_mount(parts[0]), _unescape_mount(parts[1]), parts[2],
                        parts[3]))
    return out


def _unescape_mount(field):
    """Undo the octal escaping (\\040 for space) of /proc/mounts fields."""
    if "\\" not in field:
        return field
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _sys_path(sys, mountpoint):
    """Map an absolute /sys/... mountpoint under a (possibly captured) sys root."""
    if mountpoint == "/sys" or mountpoint.startswith("/sys/"):
        return os.path.join(sys, mountpoint[len("/sys/"):]) if mountpoint != "/sys" else sys
    return mountpoint


# ----------------------------------------------------------------------------- cgroups

def detect_cgroup(proc="/proc", sys="/sys"):
    """Describe the cgroup hierarchy around PID 1 (the container's init) and LXCFS mounts.

    Returns {"version": 1|2|None, "lxcfs": [paths], "v1": {controller: [dirs]},
    "v2": [dirs]} where each list of dirs runs from the visible hierarchy root down to
    PID 1's cgroup: the effective limit is the smallest one along that chain.
    """
    mounts = _mounts(proc)
    lxcfs = sorted(mp for dev, mp, fstype, opts in mounts if fstype == "fuse.lxcfs")
    v1_mounts = {}
    v2_mount = None
    for dev, mp, fstype, opts in mounts:
        if fstype == "cgroup":
            for opt in opts.split(","):
                if opt in ("memory", "cpu", "cpuacct", "cpuset") and opt not in v1_mounts:
                    v1_mounts[opt] = _sys_path(sys, mp)
        elif fstype == "cgroup2" and v2_mount is None:
            v2_mount = _sys_path(sys, mp)
    membership = {}
    for name in ("1", "self"):
        try:
            text = _read_text(os.path.join(proc, name, "cgroup"))
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3:
                for ctl in (parts[1].split(",") if parts[1] else [""]):
                    membership[ctl] = parts[2]
        break

    def chain(mount, path):
        dirs = [mount]
        cur = mount
        for part in [p for p in (path or "/").split("/") if p]:
            cur = os.path.join(cur, part)
            if not os.path.isdir(cur):
                break  # a cgroup namespace: the path is relative to a root we cannot see
            dirs.append(cur)
        return dirs

    v1 = {}
    for ctl, mount in v1_mounts.items():
        v1[ctl] = chain(mount, membership.get(ctl, "/"))
    v2 = chain(v2_mount, membership.get("", "/")) if v2_mount else []
    version = None
    if "memory" in v1 or "cpu" in v1:
        version = 1
    elif v2:
        controllers = _read_opt(os.path.join(v2[0], "cgroup.controllers")) or ""
        if "memory" in controllers.split() or "cpu" in controllers.split() or len(v2) > 1:
            version = 2
    return {"version": version, "lxcfs": lxcfs, "v1": v1, "v2": v2}


def _cgroup_memory_limit(cg):
    """(limit_bytes, dir) of the smallest memory limit on the chain, or (None, None)."""
    best = (None, None)
    if cg["version"] == 1:
        dirs, fname = cg["v1"].get("memory", []), "memory.limit_in_bytes"
    elif cg["version"] == 2:
        dirs, fname = cg["v2"], "memory.max"
    else:
        return best
    for d in dirs:
        value = _read_opt(os.path.join(d, fname))
        if value is None or value == "max":
            continue
        try:
            limit = int(value)
        except ValueError:
            continue
        if limit >= (1 << 62):
            continue  # v1 "unlimited"
        if best[0] is None or limit < best[0]:
            best = (limit, d)
    return best


def _cgroup_cpu_limit(cg):
    """(cpus as float, dir whose usage to read) for the cgroup CPU limit, or (None, None)."""
    limit, where = None, None
    if cg["version"] == 1:
        for d in cg["v1"].get("cpu", []):
            quota = _read_int(os.path.join(d, "cpu.cfs_quota_us"))
            period = _read_int(os.path.join(d, "cpu.cfs_period_us"))
            if quota and quota > 0 and period:
                cpus = float(quota) / period
                if limit is None or cpus < limit:
                    limit, where = cpus, d
        cpuset_dirs = cg["v1"].get("cpuset", [])
        if cpuset_dirs:
            d = cpuset_dirs[-1]
            text = _read_opt(os.path.join(d, "cpuset.effective_cpus"))
            if text is None:
                text = _read_opt(os.path.join(d, "cpuset.cpus"))
            n = _parse_cpu_list(text) if text else 0
            if n and (limit is None or n < limit):
                limit, where = float(n), d
    elif cg["version"] == 2:
        for d in cg["v2"]:
            text = _read_opt(os.path.join(d, "cpu.max"))
            if text:
                parts = text.split()
                if len(parts) == 2 and parts[0] != "max":
                    cpus = float(parts[0]) / float(parts[1])
                    if limit is None or cpus < limit:
                        limit, where = cpus, d
        if cg["v2"]:
            d = cg["v2"][-1]
            text = _read_opt(os.path.join(d, "cpuset.cpus.effective"))
            n = _parse_cpu_list(text) if text else 0
            if n and (limit is None or n < limit):
                limit, where = float(n), d
    return limit, where


def _cgroup_cpu_usage(cg, where):
    """Cumulative cgroup CPU usage as (total_ns, user_ns, system_ns); parts may be None."""
    if cg["version"] == 2:
        d = where if where and where in cg["v2"] else cg["v2"][0]
        st = _kv_file(os.path.join(d, "cpu.stat"))
        def ns(key):
            return st[key] * 1000 if key in st else None
        return ns("usage_usec"), ns("user_usec"), ns("system_usec")
    # v1: cpuacct may be its own hierarchy; use the same relative path as the limit.
    acct = cg["v1"].get("cpuacct", [])
    if not acct:
        return None, None, None
    d = acct[-1]
    if where:
        for ctl in ("cpu", "cpuset"):
            dirs = cg["v1"].get(ctl, [])
            if where in dirs:
                rel = os.path.relpath(where, dirs[0])
                candidate = os.path.normpath(os.path.join(acct[0], rel))
                if os.path.isdir(candidate):
                    d = candidate
                break
    total = _read_int(os.path.join(d, "cpuacct.usage"))
    user = system = None
    try:
        st = _kv_file(os.path.join(d, "cpuacct.stat"))
        ns_per_tick = 1e9 / _CLK_TCK
        if "user" in st:
            user = st["user"] * ns_per_tick
        if "system" in st:
            system = st["system"] * ns_per_tick
    except OSError:
        pass
    return total, user, system


# -------------------------------------------------------------------------- collectors

def collect_memory(proc="/proc", cgroup=None):
    """Memory and swap figures; cgroup limits replace /proc figures inside a container."""
    info = _kv_file(os.path.join(proc, "meminfo"), 1024)
    total = info.get("MemTotal")
    available = info.get("MemAvailable")
    if available is None and total is not None:
        available = info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0)
    swap_total = info.get("SwapTotal")
    swap_used = None if swap_total is None else swap_total - info.get("SwapFree", 0)
    source = "proc"
    lxcfs = cgroup and os.path.join("/proc", "meminfo") in cgroup.get("lxcfs", [])
    if lxcfs:
        source = "lxcfs"
    elif cgroup and cgroup.get("version"):
        limit, d = _cgroup_memory_limit(cgroup)
        if limit is not None and (total is None or limit < total):
            if cgroup["version"] == 1:
                usage = _read_int(os.path.join(d, "memory.usage_in_bytes"))
                st = _kv_file(os.path.join(d, "memory.stat"))
                inactive = st.get("total_inactive_file", st.get("inactive_file", 0))
                msw_limit = _read_int(os.path.join(d, "memory.memsw.limit_in_bytes"))
                msw_usage = _read_int(os.path.join(d, "memory.memsw.usage_in_bytes"))
                if msw_limit is not None and msw_limit < (1 << 62) and msw_usage is not None:
                    swap_total = max(0, msw_limit - limit)
                    swap_used = max(0, msw_usage - (usage or 0))
                source = "cgroup-v1"
            else:
                usage = _read_int(os.path.join(d, "memory.current"))
                st = _kv_file(os.path.join(d, "memory.stat"))
                inactive = st.get("inactive_file", 0)
                sw_max = _read_opt(os.path.join(d, "memory.swap.max"))
                sw_cur = _read_int(os.path.join(d, "memory.swap.current"))
                if sw_max is not None and sw_max != "max" and sw_cur is not None:
                    swap_total, swap_used = int(sw_max), sw_cur
                source = "cgroup-v2"
            used = None if usage is None else max(0, usage - inactive)
            total = limit
            avail_cg = None if used is None else max(0, limit - used)
            available = avail_cg if available is None else min(available, avail_cg or 0)
            return {"total": total, "available": available, "used": used,
                    "percent": _pct(used, total), "swap_total": swap_total,
                    "swap_used": swap_used, "swap_percent": _pct(swap_used, swap_total),
                    "source": source}
    used = None if total is None or available is None else total - available
    return {"total": total, "available": available, "used": used,
            "percent": _pct(used, total), "swap_total": swap_total, "swap_used": swap_used,
            "swap_percent": _pct(swap_used, swap_total), "source": source}


def read_cpu_sample(proc="/proc", cgroup=None):
    """Cumulative CPU counters (for rates): /proc/stat lines, plus cgroup usage if limited."""
    total = None
    cores = []
    for line in _read_text(os.path.join(proc, "stat")).splitlines():
        if not line.startswith("cpu"):
            break
        parts = line.split()
        values = [int(v) for v in parts[1:9]] + [0] * max(0, 8 - len(parts[1:9]))
        if parts[0] == "cpu":
            total = values
        else:
            cores.append(values)
    sample = {"t": time.monotonic(), "total": total, "cores": cores, "count": len(cores),
              "source": "proc", "limit": None, "usage": None}
    if cgroup and os.path.join("/proc", "stat") in cgroup.get("lxcfs", []):
        sample["source"] = "lxcfs"
    elif cgroup and cgroup.get("version"):
        limit, where = _cgroup_cpu_limit(cgroup)
        if limit is not None and limit < len(cores):
            sample["limit"] = limit
            sample["usage"] = _cgroup_cpu_usage(cgroup, where)
            sample["source"] = "cgroup-v%d" % cgroup["version"]
    return sample


def _cpu_split(prev, cur):
    """Percent breakdown between two /proc/stat rows (user nice system idle iowait irq softirq steal)."""
    d = [c - p for c, p in zip(cur, prev)]
    total = sum(d)
    if total <= 0:
        return None
    busy = total - d[3] - d[4]
    return {"percent": round(100.0 * busy / total, 1),
            "user": round(100.0 * (d[0] + d[1]) / total, 1),
            "system": round(100.0 * (d[2] + d[5] + d[6]) / total, 1),
            "iowait": round(100.0 * d[4] / total, 1),
            "steal": round(100.0 * d[7] / total, 1)}


def cpu_rates(prev, cur):
    """The cpu section of /api/all from two read_cpu_sample() results."""
    out = {"percent": None, "user": None, "system": None, "iowait": None, "steal": None,
           "count": cur["count"], "per_core": None, "limit": cur["limit"],
           "source": cur["source"]}
    if cur["source"].startswith("cgroup"):
        out["count"] = int(-(-cur["limit"] // 1))
        if prev and prev.get("usage") and cur["usage"] and cur["usage"][0] is not None \
                and prev["usage"][0] is not None:
            wall_ns = (cur["t"] - prev["t"]) * 1e9 * cur["limit"]
            if wall_ns > 0:
                def rate(i):
                    if cur["usage"][i] is None or prev["usage"][i] is None:
                        return None
                    return round(min(100.0, max(0.0, 100.0 * (cur["usage"][i] - prev["usage"][i])
                                                / wall_ns)), 1)
                out["percent"], out["user"], out["system"] = rate(0), rate(1), rate(2)
        return out
    if prev and prev.get("total") and cur["total"]:
        split = _cpu_split(prev["total"], cur["total"])
        if split:
            out.update(split)
        if len(prev["cores"]) == len(cur["cores"]):
            per = []
            for p, c in zip(prev["cores"], cur["cores"]):
                s = _cpu_split(p, c)
                per.append(s["percent"] if s else 0.0)
            out["per_core"] = per
    return out


def collect_load(proc="/proc"):
    """Load averages from /proc/loadavg."""
    parts = _read_text(os.path.join(proc, "loadavg")).split()
    return {"load1": float(parts[0]), "load5": float(parts[1]), "load15": float(parts[2])}


def collect_uptime(proc="/proc"):
    """Seconds since boot (from /proc/uptime)."""
    return float(_read_text(os.path.join(proc, "uptime")).split()[0])


def collect_hostname(proc="/proc"):
    """The host name (kernel UTS name)."""
    name = _read_opt(os.path.join(proc, "sys", "kernel", "hostname"))
    return name or socket.gethostname()


def list_filesystems(proc="/proc"):
    """Real local filesystems as (device, mountpoint, fstype), bind mounts folded.

    The root filesystem is always listed (unless it is a pseudo filesystem), whatever its
    type: a container's root is often an overlay, a zfs dataset or a bind mount.
    """
    mounts = _mounts(proc)
    root = None
    for dev, mp, fstype, opts in mounts:
        if mp == "/":
            root = (dev, mp, fstype)  # the last mount on / is the one in use
    seen = {}
    for dev, mp, fstype, opts in mounts:
        if fstype not in REAL_FSTYPES or mp in CONTAINER_FILE_MOUNTS:
            continue
        if fstype not in ("zfs", "btrfs") and not dev.startswith("/"):
            continue
        if dev in seen and len(seen[dev][1]) <= len(mp):
            continue  # one entry per device, at its shortest mountpoint
        seen[dev] = (dev, mp, fstype)
    if root is not None and root[2] not in PSEUDO_FSTYPES:
        # A root of another type (overlay, tmpfs, 9p...) is keyed by mountpoint: every
        # overlay's device is called "overlay", and only the root's is reported.
        key = root[0] if root[2] in REAL_FSTYPES else ("", "/")
        seen[key] = root
    return sorted(seen.values(), key=lambda x: x[1])


def collect_filesystems(proc="/proc", root=""):
    """Usage of every real filesystem (statvfs under root, '' for the live system)."""
    out = []
    for dev, mp, fstype in list_filesystems(proc):
        entry = {"device": dev, "mountpoint": mp, "fstype": fstype, "total": None,
                 "used": None, "free": None, "percent": None, "inodes_total": None,
                 "inodes_used": None, "inodes_percent": None}
        try:
            st = os.statvfs(root + mp if root else mp)
        except OSError:
            out.append(entry)
            continue
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        inodes_used = st.f_files - st.f_ffree
        entry.update({"total": total, "used": used, "free": free,
                      # as df: used / (used + available to unprivileged users)
                      "percent": _pct(used, used + free),
                      "inodes_total": st.f_files, "inodes_used": inodes_used,
                      "inodes_percent": _pct(inodes_used, st.f_files)})
        out.append(entry)
    return out


def read_disk_sample(proc="/proc", sys="/sys"):
    """Cumulative read/write bytes per whole disk from /proc/diskstats."""
    try:
        disks = set(os.listdir(os.path.join(sys, "block")))
    except OSError:
        disks = None
    devices = {}
    for line in _read_text(os.path.join(proc, "diskstats"), 1 << 20).splitlines():
        parts = line.split()
        if len(parts) < 10:
            continue
        name = parts[2]
        if name.startswith(("loop", "ram", "zram", "fd", "sr")):
            continue
        if disks is not None and name not in disks:
            continue  # a partition: counted in its disk already
        devices[name] = (int(parts[5]) * 512, int(parts[9]) * 512)
    return {"t": time.monotonic(), "devices": devices}


def disk_rates(prev, cur):
    """The disk_io section from two read_disk_sample() results."""
    dt = (cur["t"] - prev["t"]) if prev else 0
    devs = []
    total_r = total_w = 0.0 if dt > 0 else None
    for name in sorted(cur["devices"]):
        r, w = cur["devices"][name]
        entry = {"name": name, "read_rate": None, "write_rate": None,
                 "read_bytes": r, "write_bytes": w}
        if dt > 0 and name in prev["devices"]:
            pr, pw = prev["devices"][name]
            entry["read_rate"] = round(max(0, r - pr) / dt, 1)
            entry["write_rate"] = round(max(0, w - pw) / dt, 1)
            total_r += entry["read_rate"]
            total_w += entry["write_rate"]
        devs.append(entry)
    return {"read_rate": None if total_r is None else round(total_r, 1),
            "write_rate": None if total_w is None else round(total_w, 1),
            "devices": devs}


def read_net_sample(proc="/proc"):
    """Cumulative counters per interface from /proc/net/dev (loopback left out)."""
    return {"t": time.monotonic(), "ifaces": parse_net_dev(_read_text(os.path.join(proc, "net", "dev"), 1 << 20))}


def parse_net_dev(text):
    """{interface: (rx bytes, tx bytes, rx errors, tx errors, rx drops, tx drops)} of a net/dev
    text (loopback and the links of SKIP_NET left out)."""
    ifaces = {}
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        name = name.strip()
        if not name or name in SKIP_NET:
            continue
        f = rest.split()
        if len(f) < 16:
            continue
        ifaces[name] = (int(f[0]), int(f[8]), int(f[2]), int(f[10]), int(f[3]), int(f[11]))
    return ifaces


def net_rates(prev, cur):
    """The network section from two read_net_sample() results."""
    dt = (cur["t"] - prev["t"]) if prev else 0
    out = []
    rx_total = tx_total = 0.0 if dt > 0 else None
    for name in sorted(cur["ifaces"]):
        rx, tx, rxe, txe, rxd, txd = cur["ifaces"][name]
        entry = {"name": name, "rx_bytes": rx, "tx_bytes": tx, "rx_rate": None,
                 "tx_rate": None, "rx_errors": rxe, "tx_errors": txe, "rx_drops": rxd,
                 "tx_drops": txd}
        if dt > 0 and name in prev["ifaces"]:
            p = prev["ifaces"][name]
            entry["rx_rate"] = round(max(0, rx - p[0]) / dt, 1)
            entry["tx_rate"] = round(max(0, tx - p[1]) / dt, 1)
            rx_total += entry["rx_rate"]
            tx_total += entry["tx_rate"]
        out.append(entry)
    return {"rx_rate": None if rx_total is None else round(rx_total, 1),
            "tx_rate": None if tx_total is None else round(tx_total, 1),
            "interfaces": out}


def parse_stat(data):
    """Parse /proc/PID/stat bytes into (name, fields after the name); fields[0] is state."""
    lp = data.find(b"(")
    rp = data.rfind(b")")
    if lp < 0 or rp < 0:
        raise ValueError("malformed stat")
    return data[lp + 1:rp].decode("utf-8", "replace"), data[rp + 2:].split()


# The real /proc's stat files stay open between scans (pid -> fd), so a scan costs one pread
# per process instead of open + read + close and a path lookup: about half the scan's CPU at
# 400 processes (BENCHMARKS.md, Agent). A kept fd reads the same process or fails with ESRCH
# once it is gone (a reused pid gets a fresh open). At most _STAT_FDS_MAX are kept (a share of
# the fd limit); the rest are read as before.
_STAT_FDS = {}
_STAT_FDS_LOCK = threading.Lock()
_STAT_FDS_MAX = []


def _stat_fds_max():
    if not _STAT_FDS_MAX:
        try:
            import resource
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):
            soft = 1024
        if soft < 0:  # RLIM_INFINITY
            soft = 1 << 20
        _STAT_FDS_MAX.append(max(0, min(4096, soft // 2 - 64)))
    return _STAT_FDS_MAX[0]


def _read_stat(prefix, entry, kept):
    """The stat file's bytes of one process (through its kept fd when kept is a dict)."""
    if kept is not None:
        fd = kept.get(entry)
        if fd is not None:
            try:
                return os.pread(fd, 2048, 0)
            except OSError:  # gone (ESRCH): its pid may belong to a new process now
                del kept[entry]
                os.close(fd)
        if len(kept) < _stat_fds_max():
            fd = os.open(prefix + entry + "/stat", os.O_RDONLY)
            try:
                data = os.pread(fd, 2048, 0)
            except OSError:
                os.close(fd)
                raise
            kept[entry] = fd
            return data
    fd = os.open(prefix + entry + "/stat", os.O_RDONLY)
    try:
        return os.read(fd, 2048)
    finally:
        os.close(fd)


def scan_processes(proc="/proc"):
    """One pass over <proc>/PID/stat: {(pid, start_time): (ticks, rss_bytes, name)}.

    Only the stat file is read per process (the cheap part); a process that vanishes
    or cannot be read mid-scan is skipped.
    """
    with _STAT_FDS_LOCK:
        return _scan_processes(proc)


def _scan_processes(proc):
    table = {}
    page = _PAGE_SIZE
    prefix = proc.rstrip("/") + "/"
    kept = _STAT_FDS if prefix == "/proc/" else None  # a test's fake /proc is read as files
    entries = os.listdir(proc)
    if kept:
        alive = set(entries)
        for entry in [e for e in kept if e not in alive]:
            os.close(kept.pop(entry))
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            data = _read_stat(prefix, entry, kept)
            rp = data.rfind(b")")
            f = data[rp + 2:].split(None, 22)  # fields 3..24 are all we need
            table[(int(entry), int(f[19]))] = (int(f[11]) + int(f[12]), int(f[21]) * page,
                                              data[data.find(b"(") + 1:rp])
        except (OSError, ValueError, IndexError):
            continue
    return table


_USER_CACHE = {}


def _user_name(uid):
    """User name for a uid, cached (numeric string when unknown)."""
    name = _USER_CACHE.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except (KeyError, OverflowError):
            name = str(uid)
        if len(_USER_CACHE) > 4096:
            _USER_CACHE.clear()
        _USER_CACHE[uid] = name
    return name


def process_details(proc, pid):
    """(user, cmdline) for one process; None fields when it vanished or is unreadable."""
    base = os.path.join(proc, str(pid))
    try:
        user = _user_name(os.stat(base).st_uid)
    except OSError:
        user = None
    try:
        raw = _read_bytes(os.path.join(base, "cmdline"), 4096)
        cmdline = raw.replace(b"\0", b" ").strip().decode("utf-8", "replace")[:CMDLINE_MAX]
    except OSError:
        cmdline = None
    return user, cmdline


def process_entries(proc, prev, cur, dt, keys, details=None):
    """Build process dicts for the given (pid, start_time) keys with cpu percent since prev.
    details: a dict shared by the calls of one scan, so a process in both top lists is read once."""
    out = []
    for key in keys:
        ticks, rss, comm = cur[key]
        found = details.get(key) if details is not None else None
        if found is None:
            found = process_details(proc, key[0])
            if details is not None:
                details[key] = found
        user, cmdline = found
        out.append({"pid": key[0], "start_time": key[1], "user": user,
                    "name": comm.decode("utf-8", "replace"), "cmdline": cmdline,
                    "cpu_percent": _proc_cpu(prev, cur, dt, key), "rss": rss})
    return out


def _kernel_thread(proc, pid, start_time=None):
    """Whether a process is a kernel thread (PF_KTHREAD in its stat flags). With its start time
    the answer is kept (a process is a kernel thread or not for its whole life), so the top
    lists' entries are not read again at every poll."""
    key = (proc, pid, start_time)
    if start_time is not None and key in _KTHREAD_CACHE:
        return _KTHREAD_CACHE[key]
    try:
        fields = parse_stat(_read_bytes(os.path.join(proc, str(pid), "stat"), 2048))[1]
        kthread = bool(int(fields[6]) & PF_KTHREAD)
    except (OSError, ValueError, IndexError):
        return False
    if start_time is not None and fields[19] == str(start_time).encode():  # the same process
        if len(_KTHREAD_CACHE) > 4096:
            _KTHREAD_CACHE.clear()
        _KTHREAD_CACHE[key] = kthread
    return kthread


_KTHREAD_CACHE = {}


def kill_offered(policy, entry, proc="/proc", own_pid=None):
    """Whether a SIGTERM to this process would pass the checks action_kill makes up front
    (policy, pid 1, the agent itself, kernel threads, protected names): the page offers a
    Kill button only then."""
    if not policy["actions"]["kill"] or "TERM" not in policy["kill_signals"]:
        return False
    pid = entry["pid"]
    if pid == 1 or pid == (own_pid or os.getpid()):
        return False
    if any(fnmatch.fnmatchcase(entry["name"], p) for p in policy["protected_processes"]):
        return False
    return not _kernel_thread(proc, pid, entry.get("start_time"))


def _proc_cpu(prev, cur, dt, key):
    """Percent of one core used by a process since the previous scan (None: no baseline)."""
    if prev is None or dt <= 0:
        return None
    before = prev["table"].get(key)
    if before is None:
        # Started after the previous scan: everything it used counts; else unknown (0).
        if key[1] >= prev["boot_ticks"]:
            delta = cur[key][0]
        else:
            delta = 0
    else:
        delta = cur[key][0] - before[0]
    return round(max(0.0, 100.0 * delta / _CLK_TCK / dt), 1)


def systemctl_path(systemctl=None):
    """The systemctl to use, or None when systemd is not running here (no spawn)."""
    exe = systemctl or _which("systemctl")
    if not exe or not os.path.exists(exe):
        return None
    if systemctl is None and not os.path.isdir("/run/systemd/system"):
        return None
    return exe


def list_units(systemctl, timeout=5.0):
    """Every unit systemd has loaded, one `systemctl list-units --all` call (argv, no shell):
    [{"unit", "load", "active", "sub", "description"}]."""
    code, out = _run([systemctl, "list-units", "--all", "--plain", "--no-legend", "--no-pager",
                      "--full"], timeout)
    if code != 0:
        raise RuntimeError("systemctl list-units exited %s: %s" % (code, out[:200]))
    units = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith(("\u25cf", "*")):  # the failed-unit marker some versions print
            line = line[1:].lstrip()
        f = line.split(None, 4)
        if len(f) < 4 or not LISTED_UNIT_RE.fullmatch(f[0]):
            continue
        units.append({"unit": f[0], "load": f[1], "active": f[2], "sub": f[3],
                      "description": f[4].strip()[:200] if len(f) > 4 else ""})
    return units


def _unit_key(name):
    return name if "." in name else name + ".service"


def collect_systemd(watched=(), systemctl=None, timeout=5.0, units=None):
    """Failed units and the state of the watched units, from a units listing (list_units;
    fetched here when not given)."""
    if units is None:
        exe = systemctl_path(systemctl)
        if exe is None:
            return _no_systemd(watched)
        units = list_units(exe, timeout)
    state = {u["unit"]: u["active"] for u in units}
    # A unit systemd has not loaded is inactive (what `systemctl is-active` says of it).
    return {"available": True, "failed": [u["unit"] for u in units if u["active"] == "failed"],
            "watched": {w: state.get(_unit_key(w), "inactive") for w in watched}}


def _no_systemd(watched):
    return {"available": False, "failed": [], "watched": dict((u, None) for u in watched)}


def unit_verbs(policy, unit):
    """The verbs the host policy lets the central use on a unit (what action_service checks
    before it asks systemd for the unit's aliases)."""
    if not unit.endswith(".service") or not policy["actions"]["service"] \
            or not UNIT_RE.fullmatch(unit) or ".." in unit:
        return []
    if any(fnmatch.fnmatchcase(unit, p) for p in policy["protected_units"]):
        return []
    if not any(fnmatch.fnmatchcase(unit, p) for p in policy["service_patterns"]):
        return []
    return list(VERBS)


_UNIT_DETAIL_FIELDS = ("since", "main_pid", "restarts", "memory", "cpu_percent", "last_trigger", "next_elapse")


def listed_units(policy, units):
    """The units /api/services lists: services and timers systemd has loaded, and the watched
    units of any type (a unit only referenced by others, load state not-found, is left out
    unless watched)."""
    keys = set(_unit_key(w) for w in policy["watched_units"])
    return [u for u in units if u["unit"] in keys or (u["unit"].endswith((".service", ".timer"))
                                                     and u["load"] != "not-found")]


def services_document(policy, units, details=None):
    """The /api/services document: systemd's summary plus every service and timer unit with the
    verbs the policy allows on it (watched units, of any type, included) and its details (since,
    main PID, cgroup memory and CPU; null when not yet sampled); units None: no systemd."""
    watched = policy["watched_units"]
    if units is None:
        return dict(_no_systemd(watched), units=[], details_at=None)
    doc = collect_systemd(watched, units=units)
    keys = set(_unit_key(w) for w in watched)
    details = details or {}
    rows = []
    for u in listed_units(policy, units):
        d = details.get(u["unit"]) or {}
        row = dict(u, type=u["unit"].rsplit(".", 1)[-1], watched=u["unit"] in keys,
                   actions=unit_verbs(policy, u["unit"]))
        for k in _UNIT_DETAIL_FIELDS:
            row[k] = d.get(k)
        rows.append(row)
    doc["units"] = rows
    doc["details_at"] = None
    return doc


def _run(argv, timeout, stderr=True, limit=None):
    """Run argv (never through a shell); return (exit status, output: stdout and stderr, or
    stdout alone when stderr is False; read until limit bytes when given, then the command is
    ended)."""
    import subprocess
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT if stderr else subprocess.DEVNULL, close_fds=True,
                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "TZ": "UTC",
                              "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})
    if limit is not None:
        return _run_capped(p, timeout, limit)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        return None, "timed out after %.0f s: %s" % (timeout, out.decode("utf-8", "replace"))
    return p.returncode, out.decode("utf-8", "replace")


def _run_capped(p, timeout, limit):
    """Read a started process's stdout up to limit bytes or the deadline, then end it."""
    import select
    deadline = time.monotonic() + timeout
    chunks, total, timed_out = [], 0, False
    fd = p.stdout.fileno()
    try:
        while total < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, min(65536, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        if p.poll() is None:
            p.kill()
        p.stdout.close()
        p.wait()
    out = b"".join(chunks).decode("utf-8", "replace")
    return (None if timed_out else p.returncode), out


# --------------------------------------------------------------------------- logs
#
# The last lines of a unit's journal or of a container's log, on demand (GET /api/logs): the
# journal through `journalctl -o json` (argv, no shell), a Docker container's through the
# Engine's logs endpoint, an LXC container's from its own journal files (seen through
# /proc/PID/root of its init, so nothing runs inside it). Capped in lines and bytes; the host
# policy's "logs": false refuses it.

LOG_LINES_DEFAULT = 100
LOG_LINES_MAX = 1000
LOG_MESSAGE_CHARS = 2000
LOG_BYTES_MAX = 512 * 1024  # of the answer's messages together
LOG_READ_MAX = 8 << 20  # what is read of journalctl's or the Engine's output at most


def _journal_entry(record):
    """{"ts", "priority", "identifier", "pid", "message"} of one journalctl -o json record."""
    msg = record.get("MESSAGE")
    if isinstance(msg, list):  # a message that is not UTF-8 comes as a list of byte values
        try:
            msg = bytes(b for b in msg if isinstance(b, int) and 0 <= b < 256).decode("utf-8", "replace")
        except ValueError:
            msg = None
    ts = _usec_int(record.get("__REALTIME_TIMESTAMP"))
    prio = _usec_int(record.get("PRIORITY"))
    pid = _usec_int(record.get("_PID") or record.get("SYSLOG_PID"))
    ident = record.get("SYSLOG_IDENTIFIER") or record.get("_COMM")
    return {"ts": round(ts / 1e6, 6) if ts else None,
            "priority": prio if prio is not None else (0 if record.get("PRIORITY") == "0" else None),
            "identifier": ident[:200] if isinstance(ident, str) else None,
            "pid": pid if pid and pid <= PID_MAX_LIMIT else None,
            "message": msg[:LOG_MESSAGE_CHARS] if isinstance(msg, str) else None}


def _cap_lines(entries):
    """The newest entries that fit LOG_BYTES_MAX together (oldest first); (entries, truncated)."""
    out, total = [], 0
    for e in reversed(entries):
        size = len(e.get("message") or "") + 64
        if total + size > LOG_BYTES_MAX:
            return list(reversed(out)), True
        out.append(e)
        total += size
    return list(reversed(out)), False


def journal_lines(journalctl, lines, unit=None, directory=None, timeout=15.0):
    """The last lines of a unit's journal (or of a whole journal directory), oldest first."""
    argv = [journalctl, "--no-pager", "-o", "json", "-n", str(int(lines))]
    if directory:
        argv += ["-D", directory]
    if unit:
        argv += ["-u", unit]
    code, out = _run(argv, timeout, stderr=False, limit=LOG_READ_MAX)
    if code not in (0, None) and not out:
        raise ActionError(502, "agent_error", "journalctl exited %s" % code)
    entries = []
    for line in out.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by the read limit
        if isinstance(record, dict):
            entries.append(_journal_entry(record))
    return entries[-lines:]


def docker_log_lines(sock_path, container, lines, timeout=15.0):
    """The last lines of a Docker container's log (stdout and stderr, with the Engine's timestamps)."""
    import http.client
    conn = _unix_http_class()(sock_path, timeout)
    try:
        conn.request("GET", "/containers/%s/logs?stdout=1&stderr=1&timestamps=1&tail=%d"
                     % (quote(container, safe=""), lines), headers={"Host": "docker"})
        resp = conn.getresponse()
        raw = resp.read(LOG_READ_MAX)
        if resp.status == 404:
            raise ActionError(404, "not_found", "no container %r" % container)
        if resp.status != 200:
            raise ActionError(502, "agent_error", "docker API answered %s" % resp.status)
        # without a TTY the Engine multiplexes stdout and stderr in frames: 1 byte stream, 3 zero bytes, size
        tty = not (len(raw) >= 8 and raw[0] in (0, 1, 2) and raw[1:4] == b"\x00\x00\x00")
    except (OSError, http.client.HTTPException) as e:
        raise ActionError(503, "unavailable", "docker API on %s: %s" % (sock_path, e))
    finally:
        conn.close()
    entries = []
    for stream, text in _docker_frames(raw, tty):
        for line in text.splitlines():
            stamp, _, message = line.partition(" ")
            entries.append({"ts": _rfc3339(stamp), "priority": 3 if stream == 2 else 6,
                            "identifier": "stderr" if stream == 2 else "stdout", "pid": None,
                            "message": message[:LOG_MESSAGE_CHARS]})
    return entries[-lines:]


def _docker_frames(raw, tty):
    """[(stream, text)] of the Engine's multiplexed log stream (8-byte headers), or the raw text."""
    if tty:
        return [(1, raw.decode("utf-8", "replace"))]
    out, i = [], 0
    while i + 8 <= len(raw):
        stream, size = raw[i], struct.unpack(">I", raw[i + 4:i + 8])[0]
        out.append((stream, raw[i + 8:i + 8 + size].decode("utf-8", "replace")))
        i += 8 + size
    return out


def _rfc3339(stamp):
    """Unix seconds of the Engine's 2024-01-02T03:04:05.123456789Z timestamps, None otherwise."""
    import calendar
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z\Z", stamp)
    if not m:
        return None
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(m.group(2) or 0)


def lxc_journal_dir(proc, pid):
    """The journal directory of an LXC container, through its init's root: persistent first."""
    for sub in ("var/log/journal", "run/log/journal"):
        d = os.path.join(proc, str(pid), "root", sub)
        try:
            if os.listdir(d):
                return d
        except OSError:
            continue
    return None


# --------------------------------------------------------------------------- hardware
#
# Temperatures and fans (hwmon, thermal zones: file reads per poll, no spawn), SMART health
# (`smartctl --json`, at most every SMART_TTL seconds, in a thread of its own so no poll waits
# for it) and GPUs (`nvidia-smi --query-gpu` at most every GPU_TTL seconds, likewise; AMD from
# sysfs per poll). A section without anything to read says `available: false` and why; a tool
# that is not installed is looked up once and never run.

MAX_SENSORS = 64
SMART_TTL = 1800.0
GPU_TTL = 60.0
NVIDIA_FIELDS = ("index", "name", "uuid", "utilization.gpu", "memory.used", "memory.total", "temperature.gpu",
                 "power.draw", "power.limit")
# per-process GPU memory, asked in the same sample (one more nvidia-smi run a minute, only where it exists)
NVIDIA_APP_FIELDS = ("gpu_uuid", "pid", "process_name", "used_memory")
GPU_PROCESSES = 8  # per GPU, the largest first


def _milli(path):
    value = _read_int(path)
    return None if value is None else round(value / 1000.0, 1)


def _natural(name):
    """Sort key putting hwmon2 before hwmon10 and temp2_input before temp10_input."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def collect_sensors(sys="/sys"):
    """{"available", "reason", "temperatures": [{"name", "label", "celsius", "high", "critical"}],
    "fans": [{"name", "label", "rpm"}]} from hwmon chips and thermal zones."""
    temps, fans = [], []
    hw = os.path.join(sys, "class", "hwmon")
    try:
        chips = sorted(os.listdir(hw), key=_natural)
    except OSError:
        chips = []
    for chip in chips:
        d = os.path.join(hw, chip)
        name = _read_opt(os.path.join(d, "name")) or chip
        try:
            files = sorted(os.listdir(d), key=_natural)
        except OSError:
            continue
        for f in files:
            m = re.match(r"(temp|fan)(\d+)_input\Z", f)
            if not m or len(temps) + len(fans) >= MAX_SENSORS:
                continue
            base = os.path.join(d, m.group(1) + m.group(2))
            label = _read_opt(base + "_label") or "%s%s" % (m.group(1), m.group(2))
            if m.group(1) == "temp":
                celsius = _milli(base + "_input")
                if celsius is not None:
                    temps.append({"name": name[:64], "label": label[:64], "celsius": celsius,
                                  "high": _milli(base + "_max"), "critical": _milli(base + "_crit")})
            else:
                rpm = _read_int(base + "_input")
                if rpm is not None:
                    fans.append({"name": name[:64], "label": label[:64], "rpm": rpm})
    th = os.path.join(sys, "class", "thermal")
    try:
        zones = sorted((z for z in os.listdir(th) if z.startswith("thermal_zone")), key=_natural)
    except OSError:
        zones = []
    for zone in zones:
        d = os.path.join(th, zone)
        celsius = _milli(os.path.join(d, "temp"))
        if celsius is None or len(temps) >= MAX_SENSORS:
            continue
        critical = None
        for i in range(16):
            kind = _read_opt(os.path.join(d, "trip_point_%d_type" % i))
            if kind is None:
                break
            if kind == "critical":
                critical = _milli(os.path.join(d, "trip_point_%d_temp" % i))
        temps.append({"name": zone[:64], "label": (_read_opt(os.path.join(d, "type")) or zone)[:64],
                      "celsius": celsius, "high": None, "critical": critical})
    available = bool(temps or fans)
    return {"available": available,
            "reason": None if available else "no hwmon sensors or thermal zones in %s/class" % sys,
            "temperatures": temps, "fans": fans}


def parse_smartctl(doc):
    """One disk's figures from `smartctl --json -a DEV`: {"device", "model", "serial", "passed",
    "temperature", "reallocated", "pending", "percentage_used", "media_errors", "power_on_hours",
    "error"}. A SCSI/SAS disk's model is `scsi_model_name` from smartctl 7.3 on (`model_name`
    before), and its grown defect list stands for the reallocated sectors."""
    dev = doc.get("device") if isinstance(doc.get("device"), dict) else {}
    status = doc.get("smart_status") if isinstance(doc.get("smart_status"), dict) else {}
    temp = doc.get("temperature") if isinstance(doc.get("temperature"), dict) else {}
    attrs = {}
    table = (doc.get("ata_smart_attributes") or {}).get("table") if isinstance(doc.get("ata_smart_attributes"), dict) else None
    for a in table or []:
        if isinstance(a, dict) and isinstance(a.get("raw"), dict):
            attrs[a.get("id")] = a["raw"].get("value")
    nvme = doc.get("nvme_smart_health_information_log")
    nvme = nvme if isinstance(nvme, dict) else {}
    poh = doc.get("power_on_time") if isinstance(doc.get("power_on_time"), dict) else {}
    messages = (doc.get("smartctl") or {}).get("messages") if isinstance(doc.get("smartctl"), dict) else None
    errors = [m.get("string") for m in messages or [] if isinstance(m, dict) and m.get("severity") == "error"]

    def num(v):
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None
    model = doc.get("model_name")
    if not isinstance(model, str):
        model = doc.get("scsi_model_name")
    reallocated = attrs.get(5) if 5 in attrs else doc.get("scsi_grown_defect_list")
    return {"device": dev.get("name") if isinstance(dev.get("name"), str) else None,
            "model": model if isinstance(model, str) else None,
            "serial": doc.get("serial_number") if isinstance(doc.get("serial_number"), str) else None,
            "passed": status.get("passed") if isinstance(status.get("passed"), bool) else None,
            "temperature": num(temp.get("current")),
            "reallocated": num(reallocated), "pending": num(attrs.get(197)),
            "percentage_used": num(nvme.get("percentage_used")), "media_errors": num(nvme.get("media_errors")),
            "power_on_hours": num(poh.get("hours")),
            "error": "; ".join(e for e in errors if isinstance(e, str))[:200] or None}


def collect_smart(smartctl, timeout=30.0):
    """Every disk `smartctl --scan` finds, each from `smartctl --json -a DEV` (argv, no shell)."""
    code, out = _run([smartctl, "--scan", "--json"], timeout, stderr=False)
    try:
        scan = json.loads(out)
    except ValueError:
        raise RuntimeError("smartctl --scan exited %s without JSON" % code)
    disks = []
    for d in (scan.get("devices") or [])[:MAX_DISKS_SMART]:
        name = d.get("name") if isinstance(d, dict) else None
        if not isinstance(name, str) or not re.match(r"/dev/[A-Za-z0-9/_-]{1,64}\Z", name):
            continue
        argv = [smartctl, "--json", "-a", name]
        kind = d.get("type")
        if not isinstance(kind, str) or not re.match(r"[a-z0-9+,]{1,32}\Z", kind):
            kind = None
        if kind:
            argv[3:3] = ["-d", kind]
        # disks behind a RAID controller ("-d megaraid,N", "cciss,N", ...) share one device name:
        # the type keeps them apart
        label = "%s [%s]" % (name, kind) if kind and "," in kind else None
        code, out = _run(argv, timeout, stderr=False)
        try:
            doc = json.loads(out)
            if not isinstance(doc, dict):
                raise ValueError(out[:40])
            disk = parse_smartctl(doc)
        except ValueError:
            disk = {"device": name, "error": "smartctl exited %s without JSON" % code}
        if label:
            disk["device"] = label
        disks.append(disk)
    return disks


MAX_DISKS_SMART = 32


def parse_nvidia_smi(text):
    """GPUs from `nvidia-smi --query-gpu=<NVIDIA_FIELDS> --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.splitlines():
        f = [x.strip() for x in line.split(",")]
        if len(f) != len(NVIDIA_FIELDS):
            continue

        def num(v):
            try:
                return float(v)
            except ValueError:
                return None  # "[N/A]", "[Not Supported]"
        mem_used, mem_total = num(f[4]), num(f[5])
        gpus.append({"vendor": "nvidia", "index": int(f[0]) if f[0].isdigit() else None, "name": f[1][:100],
                     "id": f[2][:64], "utilization": num(f[3]),
                     "memory_used": int(mem_used * 1048576) if mem_used is not None else None,
                     "memory_total": int(mem_total * 1048576) if mem_total is not None else None,
                     "temperature": num(f[6]), "power": num(f[7]), "power_limit": num(f[8])})
    return gpus


def parse_nvidia_apps(text):
    """{gpu uuid: [{pid, name, memory_used}], largest first} from `nvidia-smi
    --query-compute-apps=<NVIDIA_APP_FIELDS> --format=csv,noheader,nounits`. A process name may
    hold commas (it is a path), so the line is split from both ends; a line that does not fit
    (a message such as "No running processes found") is skipped."""
    apps = {}
    for line in text.splitlines():
        head = line.split(",", 2)
        if len(head) != 3 or "," not in head[2]:
            continue
        name, mem = head[2].rsplit(",", 1)
        try:
            pid, used = int(head[1].strip()), float(mem.strip())
        except ValueError:
            continue  # "[N/A]" memory (a MIG instance without the figure) or not a process line
        if pid < 1:
            continue
        apps.setdefault(head[0].strip()[:64], []).append(
            {"pid": pid, "name": name.strip()[:200], "memory_used": int(used * 1048576)})
    for procs in apps.values():
        procs.sort(key=lambda p: -p["memory_used"])
        del procs[GPU_PROCESSES:]
    return apps


def collect_amd_gpus(sys="/sys"):
    """AMD GPUs from the amdgpu driver's sysfs files (busy percent, VRAM, hwmon temperature, power)."""
    out = []
    drm = os.path.join(sys, "class", "drm")
    try:
        cards = sorted(c for c in os.listdir(drm) if re.match(r"card\d+\Z", c))
    except OSError:
        return out
    for card in cards:
        dev = os.path.join(drm, card, "device")
        if _read_opt(os.path.join(dev, "vendor")) != "0x1002":
            continue
        temp = power = None
        try:
            for h in os.listdir(os.path.join(dev, "hwmon")):
                temp = _milli(os.path.join(dev, "hwmon", h, "temp1_input"))
                watts = _read_int(os.path.join(dev, "hwmon", h, "power1_average"))
                power = round(watts / 1e6, 1) if watts is not None else None
        except OSError:
            pass
        out.append({"vendor": "amd", "index": int(card[4:]), "name": card, "id": None,
                    "utilization": _read_int(os.path.join(dev, "gpu_busy_percent")),
                    "memory_used": _read_int(os.path.join(dev, "mem_info_vram_used")),
                    "memory_total": _read_int(os.path.join(dev, "mem_info_vram_total")),
                    "temperature": temp, "power": power, "power_limit": None})
    return out


class SlowTool(object):
    """A tool's answer refreshed at most every ttl seconds in a thread of its own, so that no
    poll waits for it: a poll gets the last answer (`sampled_at` says when)."""

    def __init__(self, fn, ttl):
        self.fn, self.ttl = fn, ttl
        self._lock = threading.Lock()
        self._at = None  # monotonic time of the last start
        self._result = None  # (Unix time, value, error)

    def get(self):
        with self._lock:
            now = time.monotonic()
            if self._at is None or now - self._at >= self.ttl:
                self._at = now
                threading.Thread(target=self._refresh, name="agent-slow-tool", daemon=True).start()
            return self._result

    def _refresh(self):
        try:
            result = (time.time(), self.fn(), None)
        except Exception as e:  # kept until the next refresh
            result = (time.time(), None, "%s: %s" % (type(e).__name__, e))
        with self._lock:
            self._result = result


# --------------------------------------------------------------------------- units
#
# Every service and timer with its state, since when, main PID and its cgroup's memory and CPU:
# one `systemctl show` of the listed units (argv, no shell) at most every UNITS_TTL seconds,
# the cgroup files read then too, so a poll never pays for it.

UNIT_PROPERTIES = ("Id", "MainPID", "ControlGroup", "StateChangeTimestampMonotonic", "NRestarts",
                   "LastTriggerUSecMonotonic", "NextElapseUSecRealtime")
MAX_DETAILED_UNITS = 1000


def parse_unit_show(text):
    """{unit: {property: value}} from `systemctl show -p ... UNIT...` (blank-line separated blocks)."""
    out = {}
    block = {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if block.get("Id"):
                out[block["Id"]] = block
            block = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            block[key] = value
    return out


def _usec_int(value):
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def _utc_time(text):
    """Unix seconds of a systemd timestamp printed under TZ=UTC ("Thu 2026-12-03 02:01:52 UTC")."""
    import calendar
    parts = (text or "").split()
    if len(parts) != 4 or parts[3] != "UTC":
        return None
    try:
        return float(calendar.timegm(time.strptime(parts[1] + " " + parts[2], "%Y-%m-%d %H:%M:%S")))
    except ValueError:
        return None


def unit_cgroup_usage(roots, control_group):
    """(memory bytes, cpu ns) of a unit's cgroup (ControlGroup=/system.slice/x.service); None
    where the hierarchy has no such cgroup (v1 without accounting for it)."""
    if not control_group or not control_group.startswith("/") or ".." in control_group:
        return None, None
    rel = control_group.lstrip("/")
    if roots["version"] == 2:
        d = os.path.join(roots["v2"], rel)
        mem = _read_int(os.path.join(d, "memory.current"))
        try:
            st = _kv_file(os.path.join(d, "cpu.stat"))
        except OSError:
            st = {}
        return mem, (st["usage_usec"] * 1000 if "usage_usec" in st else None)
    v1 = roots["v1"]
    mem = _read_int(os.path.join(v1["memory"], rel, "memory.usage_in_bytes")) if "memory" in v1 else None
    cpu = _read_int(os.path.join(v1["cpuacct"], rel, "cpuacct.usage")) if "cpuacct" in v1 else None
    return mem, cpu


def unit_details(systemctl, names, roots, prev=None, timeout=10.0):
    """{unit: {"since", "main_pid", "restarts", "memory", "cpu_percent", "last_trigger", "next_elapse"}}
    of the named units: one `systemctl show` and their cgroups' files; cpu_percent since prev
    (a previous result with its "_t" and "_cpu" kept)."""
    names = [n for n in names if LISTED_UNIT_RE.fullmatch(n)][:MAX_DETAILED_UNITS]
    if not names:
        return {}
    code, out = _run([systemctl, "show", "--no-pager", "-p", ",".join(UNIT_PROPERTIES), "--"] + names,
                     timeout, stderr=False)
    if code != 0:
        raise RuntimeError("systemctl show exited %s" % code)
    now_mono, now = time.monotonic(), time.time()
    prev = prev or {}
    result = {}
    for unit, p in parse_unit_show(out).items():
        changed = _usec_int(p.get("StateChangeTimestampMonotonic"))
        trigger = _usec_int(p.get("LastTriggerUSecMonotonic"))
        mem, cpu_ns = unit_cgroup_usage(roots, p.get("ControlGroup")) if roots else (None, None)
        pid = _usec_int(p.get("MainPID"))
        entry = {"since": round(now - (now_mono - changed / 1e6), 1) if changed else None,
                 "main_pid": pid if pid and pid <= PID_MAX_LIMIT else None,
                 "restarts": _usec_int(p.get("NRestarts")) or (0 if p.get("NRestarts") == "0" else None),
                 "memory": mem, "cpu_percent": None,
                 "last_trigger": round(now - (now_mono - trigger / 1e6), 1) if trigger else None,
                 "next_elapse": _utc_time(p.get("NextElapseUSecRealtime")), "_t": now_mono, "_cpu": cpu_ns}
        before = prev.get(unit)
        if before and before.get("_cpu") is not None and cpu_ns is not None and cpu_ns >= before["_cpu"] \
                and now_mono > before["_t"]:
            entry["cpu_percent"] = round((cpu_ns - before["_cpu"]) / (now_mono - before["_t"]) / 1e7, 2)
        result[unit] = entry
    return result


_UNIX_HTTP = []


def _unix_http_class():
    """http.client.HTTPConnection over an AF_UNIX socket, defined on first use."""
    if not _UNIX_HTTP:
        import http.client

        class UnixHTTPConnection(http.client.HTTPConnection):
            def __init__(self, path, timeout):
                http.client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
                self._unix_path = path

            def connect(self):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(self.timeout)
                try:
                    s.connect(self._unix_path)
                except Exception:
                    s.close()
                    raise
                self.sock = s

        _UNIX_HTTP.append(UnixHTTPConnection)
    return _UNIX_HTTP[0]


class DockerError(Exception):
    """The Docker Engine API could not be reached or answered garbage."""


def docker_request(sock_path, method, path, timeout=5.0):
    """One Engine API request; returns (status, parsed JSON or text or None)."""
    import http.client
    conn = _unix_http_class()(sock_path, timeout)
    try:
        conn.request(method, path, headers={"Host": "docker", "Content-Length": "0"}
                     if method == "POST" else {"Host": "docker"})
        resp = conn.getresponse()
        raw = resp.read(8 << 20)
        body = None
        if raw:
            try:
                body = json.loads(raw.decode("utf-8", "replace"))
            except ValueError:
                body = raw.decode("utf-8", "replace")
        return resp.status, body
    except (OSError, http.client.HTTPException) as e:
        raise DockerError("docker API on %s: %s" % (sock_path, e))
    finally:
        conn.close()


def docker_usable(sock_path):
    """Whether the Engine socket exists and this process may use it (no request made)."""
    return bool(sock_path) and os.path.exists(sock_path) and os.access(sock_path, os.R_OK | os.W_OK)


def docker_list(sock_path, timeout=5.0):
    """The Engine's GET /containers/json?all=1 list (raises DockerError/RuntimeError)."""
    status, body = docker_request(sock_path, "GET", "/containers/json?all=1", timeout)
    if status != 200 or not isinstance(body, list):
        raise RuntimeError("docker API answered %s" % status)
    return body


def collect_docker(sock_path=DEFAULT_DOCKER_SOCKET, timeout=5.0, listing=None):
    """Containers from the Docker Engine API on the unix socket (never the docker CLI)."""
    if not sock_path or not os.path.exists(sock_path):
        return {"available": False, "containers": []}
    if not os.access(sock_path, os.R_OK | os.W_OK):
        # An unprivileged reader (the central collecting its own host) may not use the socket,
        # and being allowed to would amount to root: no docker here, not a failing collector.
        return {"available": False, "containers": []}
    body = docker_list(sock_path, timeout) if listing is None else listing
    out = []
    for c in body[:200]:
        names = c.get("Names") or []
        out.append({"name": names[0].lstrip("/") if names else None,
                    "id": (c.get("Id") or "")[:12] or None, "image": c.get("Image"),
                    "state": c.get("State"), "status": c.get("Status")})
    out.sort(key=lambda c: c["name"] or "")
    return {"available": True, "containers": out}


# --------------------------------------------------------------------------- containers
#
# Per-container figures come from the containers' cgroups (v1 or v2), never from the Engine's
# stats endpoint (which sleeps a second per container); names, images, health and restart
# counts from the Docker/Podman Engine API on its unix socket when there is one, LXC
# containers from their cgroups (lxc.payload.NAME, lxc/NAME) and /var/lib/lxc/NAME/config.

DEFAULT_LXC_PATH = "/var/lib/lxc"
PODMAN_SOCKET = "/run/podman/podman.sock"
MAX_AGENT_CONTAINERS = 100  # the document's containers list holds at most this many
_ID_RE = re.compile(r"[0-9a-f]{64}\Z")
# where each engine puts its containers' cgroups: (parent dir, pattern of the entry, engine)
_CGROUP_ENGINE_DIRS = (
    ("docker", re.compile(r"([0-9a-f]{64})\Z"), "docker"),  # cgroupfs driver
    ("system.slice", re.compile(r"docker-([0-9a-f]{64})\.scope\Z"), "docker"),  # systemd driver
    ("machine.slice", re.compile(r"libpod-([0-9a-f]{64})\.scope\Z"), "podman"),
)


def cgroup_roots(proc="/proc", sys="/sys"):
    """The host's cgroup mounts: {"version": 1|2|None, "v2": dir or None, "v1": {controller: dir}}.

    version 2 when the unified hierarchy holds the controllers, 1 when v1 controllers are
    mounted (a hybrid host's unified mount then only names cgroups)."""
    v1, v2 = {}, None
    for dev, mp, fstype, opts in _mounts(proc):
        if fstype == "cgroup":
            for opt in opts.split(","):
                if opt in ("memory", "cpu", "cpuacct", "pids", "blkio", "freezer") and opt not in v1:
                    v1[opt] = _sys_path(sys, mp)
        elif fstype == "cgroup2" and v2 is None:
            v2 = _sys_path(sys, mp)
    version = 1 if "memory" in v1 else None
    if version is None and v2 is not None:
        controllers = (_read_opt(os.path.join(v2, "cgroup.controllers")) or "").split()
        version = 2 if ("memory" in controllers or "cpu" in controllers) else None
    return {"version": version, "v2": v2, "v1": v1}


def _container_dirs(root):
    """[(engine, key, relative cgroup path)] of the container cgroups under one hierarchy root:
    lxc.payload.NAME and lxc/NAME (LXC, Proxmox), docker/ID and system.slice/docker-ID.scope
    (Docker, cgroupfs and systemd drivers), machine.slice/libpod-ID.scope (Podman)."""
    out = []
    try:
        top = os.listdir(root)
    except OSError:
        return out
    for entry in top:
        if entry.startswith("lxc.payload."):
            out.append(("lxc", entry[len("lxc.payload."):], entry))
    if "lxc" in top:  # LXC 3 and Proxmox: lxc/NAME (lxc/NAME/ns on Proxmox is inside it)
        try:
            for entry in os.listdir(os.path.join(root, "lxc")):
                if CONTAINER_RE.fullmatch(entry) and os.path.isdir(os.path.join(root, "lxc", entry)):
                    out.append(("lxc", entry, "lxc/" + entry))
        except OSError:
            pass
    for parent, pattern, engine in _CGROUP_ENGINE_DIRS:
        if parent not in top:
            continue
        try:
            names = os.listdir(os.path.join(root, parent))
        except OSError:
            continue
        for entry in names:
            m = pattern.match(entry)
            if m:
                out.append((engine, m.group(1), parent + "/" + entry))
    return out


def _read_small(path, size=4096):
    """Up to size bytes of a file: one open, read and close (ContainerCollector's default reader)."""
    return _read_bytes(path, size)


def _io_stat_v2(path, read=_read_small):
    """(read bytes, written bytes) summed over the devices of a v2 io.stat."""
    rd = wr = 0
    for line in read(path, 65536).decode("ascii", "replace").splitlines():
        for field in line.split()[1:]:
            if field.startswith("rbytes="):
                rd += int(field[7:])
            elif field.startswith("wbytes="):
                wr += int(field[7:])
    return rd, wr


def _io_stat_v1(path, read=_read_small):
    """(read bytes, written bytes) of a v1 blkio.throttle.io_service_bytes(_recursive)."""
    rd = wr = 0
    for line in read(path, 65536).decode("ascii", "replace").splitlines():
        f = line.split()
        if len(f) == 3 and f[1] == "Read":
            rd += int(f[2])
        elif len(f) == 3 and f[1] == "Write":
            wr += int(f[2])
    return rd, wr


def _limit(value):
    """A cgroup byte limit, None for "max" or v1's near-2^63 "unlimited"."""
    if value is None or value == "max":
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return None if n >= (1 << 62) else n


def _cgroup_pids(dirs):
    """Up to 200 pids from the cgroup.procs of the given dirs and their children (3 levels)."""
    pids = []
    todo = [(d, 0) for d in dirs]
    seen = 0
    while todo and len(pids) < 200 and seen < 64:
        d, depth = todo.pop(0)
        seen += 1
        try:
            pids.extend(int(p) for p in _read_text(os.path.join(d, "cgroup.procs")).split()[:200])
        except (OSError, ValueError):
            continue
        if depth < 3 and not pids:
            try:
                todo.extend((os.path.join(d, e), depth + 1) for e in sorted(os.listdir(d))
                            if os.path.isdir(os.path.join(d, e)))
            except OSError:
                pass
    return pids


def _start_ticks(proc, pid):
    """The start time (clock ticks after boot) of a process, None when it is gone."""
    try:
        return int(parse_stat(_read_bytes(os.path.join(proc, str(pid), "stat")))[1][19])
    except (OSError, ValueError, IndexError):
        return None


def _cg(path, size=4096, read=_read_small):
    """A small cgroup file's text (one read), None when it is missing or unreadable."""
    try:
        return read(path, size).decode("ascii", "replace")
    except OSError:
        return None


def _cg_int(path, read=_read_small):
    text = _cg(path, 4096, read)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


_STAT_RES = {}


def _stat_value(path, key, read=_read_small):
    """One 'key value' line of a memory.stat/cpu.stat file (without parsing the rest): its value,
    0 when the key is absent, None when the file cannot be read."""
    text = _cg(path, 16384, read)
    if text is None:
        return None
    pattern = _STAT_RES.get(key)
    if pattern is None:
        pattern = _STAT_RES[key] = re.compile(r"(?m)^%s (\d+)$" % re.escape(key))
    m = pattern.search(text)
    return int(m.group(1)) if m else 0


def read_container_limits(roots, rel):
    """(memory limit bytes, CPU limit in CPUs) of a container cgroup; None where unlimited."""
    if roots["version"] == 2:
        d = os.path.join(roots["v2"], rel)
        cpu_max = (_cg(os.path.join(d, "cpu.max")) or "max").split()
        return (_limit((_cg(os.path.join(d, "memory.max")) or "").strip() or None),
                round(float(cpu_max[0]) / float(cpu_max[1]), 2) if len(cpu_max) == 2 and cpu_max[0] != "max"
                else None)
    v1 = roots["v1"]
    limit = _limit((_cg(os.path.join(v1["memory"], rel, "memory.limit_in_bytes")) or "").strip() or None)
    cpu = v1.get("cpu")
    quota = _cg_int(os.path.join(cpu, rel, "cpu.cfs_quota_us")) if cpu else None
    period = _cg_int(os.path.join(cpu, rel, "cpu.cfs_period_us")) if cpu else None
    return limit, (round(float(quota) / period, 2) if quota and quota > 0 and period else None)


def container_cgroup_files(roots, rel):
    """The files read_container_cgroup reads for one container cgroup (relative path rel under
    each hierarchy), joined once: {"version", "cpu", "memory", "memory_stat", "pids", "io",
    "frozen", "dir", "dirs"}; an entry is None where its hierarchy is not mounted."""
    if roots["version"] == 2:
        d = os.path.join(roots["v2"], rel)
        return {"version": 2, "cpu": os.path.join(d, "cpu.stat"), "memory": os.path.join(d, "memory.current"),
                "memory_stat": os.path.join(d, "memory.stat"), "pids": os.path.join(d, "pids.current"),
                "io": os.path.join(d, "io.stat"), "frozen": os.path.join(d, "cgroup.events"), "dir": d,
                "dirs": [d]}
    v1 = roots["v1"]

    def path(controller, name):
        return os.path.join(v1[controller], rel, name) if v1.get(controller) else None

    mem = os.path.join(v1["memory"], rel)
    return {"version": 1, "cpu": path("cpuacct", "cpuacct.usage"),
            "memory": os.path.join(mem, "memory.usage_in_bytes"),
            "memory_stat": os.path.join(mem, "memory.stat"), "pids": path("pids", "pids.current"),
            "io": path("blkio", "blkio.throttle.io_service_bytes_recursive"),
            "frozen": path("freezer", "freezer.state"), "dir": mem,
            "dirs": [os.path.join(v1[c], rel) for c in ("pids", "memory") if c in v1]}


def read_container_cgroup(roots, rel, limits=None, files=None, read=_read_small):
    """Cumulative figures of one container cgroup (relative path rel under each hierarchy):
    {"cpu_ns", "memory_used", "memory_limit", "cpu_limit", "pids", "read_bytes", "write_bytes",
    "frozen", "dirs"}; None when the cgroup is gone (the container stopped). limits: the
    (memory, cpu) limits when the caller keeps them (read_container_limits), else read here;
    files: container_cgroup_files(roots, rel) when the caller keeps it; read(path, size): how
    a file's bytes are read (ContainerCollector re-reads files it keeps open)."""
    f = files or container_cgroup_files(roots, rel)
    out = {}
    if f["version"] == 2:
        if not os.path.isdir(f["dir"]):
            return None
        usage = _stat_value(f["cpu"], "usage_usec", read)
        out["cpu_ns"] = usage * 1000 if usage else None
        current = _cg_int(f["memory"], read)
        inactive = _stat_value(f["memory_stat"], "inactive_file", read) if current is not None else 0
        out["memory_used"] = None if current is None else max(0, current - (inactive or 0))
        out["pids"] = _cg_int(f["pids"], read)
        try:
            out["read_bytes"], out["write_bytes"] = _io_stat_v2(f["io"], read)
        except (OSError, ValueError):
            out["read_bytes"] = out["write_bytes"] = None
        out["frozen"] = "frozen 1" in (_cg(f["frozen"], 4096, read) or "")
    else:
        usage = _cg_int(f["memory"], read)
        if usage is None and not os.path.isdir(f["dir"]):
            return None
        inactive = _stat_value(f["memory_stat"], "total_inactive_file", read) if usage is not None else 0
        out["memory_used"] = None if usage is None else max(0, usage - (inactive or 0))
        out["cpu_ns"] = _cg_int(f["cpu"], read) if f["cpu"] else None
        out["pids"] = _cg_int(f["pids"], read) if f["pids"] else None
        out["read_bytes"] = out["write_bytes"] = None
        if f["io"]:
            try:
                out["read_bytes"], out["write_bytes"] = _io_stat_v1(f["io"], read)
            except (OSError, ValueError):
                pass
        out["frozen"] = bool(f["frozen"]) and (_cg(f["frozen"], 4096, read) or "").strip() == "FROZEN"
    out["dirs"] = f["dirs"]
    out["memory_limit"], out["cpu_limit"] = limits if limits is not None else read_container_limits(roots, rel)
    return out


def _container_net(proc, pid, read=_read_small):
    """(rx bytes, tx bytes) over the non-loopback interfaces of a process's network namespace."""
    path = "%s/%d/net/dev" % (proc, pid)
    data = read(path, 65536)
    text = data.decode("utf-8", "replace") if len(data) < 65536 else _read_text(path, 1 << 20)
    ifaces = parse_net_dev(text)
    return sum(v[0] for v in ifaces.values()), sum(v[1] for v in ifaces.values())


def _docker_health(status):
    """healthy / unhealthy / starting from the Engine's Status text, None without a healthcheck."""
    status = status or ""
    if "(healthy)" in status:
        return "healthy"
    if "(unhealthy)" in status:
        return "unhealthy"
    if "(health: starting)" in status:
        return "starting"
    return None


def lxc_configured(lxc_path=DEFAULT_LXC_PATH):
    """{name: image} of the LXC containers defined under lxc_path (image: the template that
    created it, from the config's comment, or None)."""
    out = {}
    try:
        names = os.listdir(lxc_path)
    except OSError:
        return out
    for name in names[:1000]:
        if not CONTAINER_RE.fullmatch(name):
            continue
        try:
            head = _read_bytes(os.path.join(lxc_path, name, "config"), 4096).decode("utf-8", "replace")
        except OSError:
            continue
        image = None
        m = re.search(r"Template used to create this container: \S*?lxc-(\S+)", head)
        if m:
            image = m.group(1)[:64]
        m = re.search(r"^lxc\.include = \S*/config/(\S+?)\.common\.conf", head, re.M)
        if image is None and m:
            image = m.group(1)[:64]
        out[name] = image
    return out


def _counter_rate(prev, cur, dt, i, scale=1.0, digits=1):
    """The rate of counter i between two samples (None without both, or after a reset)."""
    if dt <= 0 or cur[i] is None or prev[i] is None or cur[i] < prev[i]:
        return None
    return round((cur[i] - prev[i]) / dt * scale, digits)


_NO_FIGURES = dict((k, None) for k in ("uptime", "cpu_percent", "cpu_limit", "memory_used", "memory_limit",
                                         "memory_percent", "pids", "read_rate", "write_rate", "rx_rate",
                                         "tx_rate"))


class KeptFiles(object):
    """Files kept open between polls and re-read with one pread from offset 0: a poll of the
    containers' cgroup files and net/dev then costs one syscall per file instead of a path
    lookup, open, read and close (about half the kernel time per container; BENCHMARKS.md).

    Every read is fresh: cgroup files and /proc files format their figures at each read. A kept
    file whose cgroup was removed fails (ENODEV), and is then opened again by its path, which
    finds the new cgroup of that name or none (the error the caller sees). sweep() closes the
    files not read since the previous sweep (stopped containers, a container's new init pid).
    At most `limit` are kept (a share of the fd limit); the rest are read with open/read/close."""

    def __init__(self, limit=None):
        self.fds = {}
        self.used = set()
        self.reopened = 0  # kept files that failed and were opened again (a cgroup replaced)
        if limit is None:
            try:
                import resource
                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            except (ImportError, OSError, ValueError):
                soft = 1024
            if soft < 0:  # RLIM_INFINITY
                soft = 1 << 20
            limit = max(0, min(2048, soft // 4))
        self.limit = limit

    def read(self, path, size=4096):
        self.used.add(path)
        fd = self.fds.get(path)
        if fd is not None:
            try:
                return os.pread(fd, size, 0)
            except OSError:  # its cgroup (or process) is gone: open the path again
                del self.fds[path]
                os.close(fd)
                self.reopened += 1
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, size, 0)
        except OSError:
            os.close(fd)
            raise
        if len(self.fds) < self.limit:
            self.fds[path] = fd
        else:
            os.close(fd)
        return data

    def sweep(self):
        """Close the kept files not read since the last sweep."""
        for path in [p for p in self.fds if p not in self.used]:
            os.close(self.fds.pop(path))
        self.used = set()

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class ContainerCollector(object):
    """Every container on the host, with rates since the previous call (Collector.all)."""

    INSPECT_TTL = 60.0  # a running container's RestartCount is re-read at most this often
    LXC_TTL = 30.0  # /var/lib/lxc is listed at most this often
    LIMITS_TTL = 30.0  # a container's memory and CPU limits are re-read at most this often

    def __init__(self, proc="/proc", sys="/sys", lxc_path=DEFAULT_LXC_PATH,
                 sockets=(DEFAULT_DOCKER_SOCKET, PODMAN_SOCKET), keep_open=None):
        self.proc, self.sys, self.lxc_path, self.sockets = proc, sys, lxc_path, sockets
        # The real /sys and /proc's files stay open between polls (KeptFiles); a test's fake
        # tree is read file by file (a removed regular file would stay readable through its fd).
        if keep_open is None:
            keep_open = proc == "/proc" and sys == "/sys"
        self._kept = KeptFiles() if keep_open else None
        self._read = self._kept.read if keep_open else _read_small
        self._files = {}  # key -> container_cgroup_files()
        self._collect_lock = threading.Lock()  # the kept fds are closed by sweep(): one poll at a time
        self._roots = None
        self._prev = {}  # key -> (t, cpu_ns, read, write, rx, tx)
        self._init = {}  # key -> (pid, start ticks)
        self._inspect = {}  # engine id -> (monotonic time, restart count)
        self._lxc = (0.0, {})
        self._limits = {}  # key -> (monotonic time, (memory limit, cpu limit))

    def roots(self):
        if self._roots is None:
            self._roots = cgroup_roots(self.proc, self.sys)
        return self._roots

    def _engines(self, docker_list):
        """{full id: (engine, socket, listing entry)} from the Engine APIs."""
        out = {}
        for i, sock in enumerate(self.sockets):
            if not sock:
                continue
            engine = "docker" if i == 0 else "podman"
            if i == 0:
                # the docker socket's listing is the Collector's (shared with the docker section)
                if docker_list is None:
                    continue
                listing = docker_list
            elif docker_usable(sock):
                try:
                    listing = docker_list(sock)
                except (DockerError, RuntimeError):
                    continue
            else:
                continue
            for c in listing[:500]:
                if isinstance(c, dict) and _ID_RE.match(str(c.get("Id") or "")):
                    out[c["Id"]] = (engine, sock, c)
        return out

    def _restarts(self, sock, cid, now):
        cached = self._inspect.get(cid)
        if cached is not None and now - cached[0] < self.INSPECT_TTL:
            return cached[1]
        try:
            status, body = docker_request(sock, "GET", "/containers/%s/json" % cid, 5.0)
        except DockerError:
            status, body = None, None
        count = body.get("RestartCount") if status == 200 and isinstance(body, dict) else None
        count = count if isinstance(count, int) and not isinstance(count, bool) else None
        self._inspect[cid] = (now, count)
        return count

    def _uptime(self, key, dirs, boot_ticks):
        """(seconds since the container's first process started, a pid in it) or (None, None)."""
        cached = self._init.get(key)
        now = time.monotonic()
        # the cached init is re-checked (its start time read again) at most every LIMITS_TTL: a
        # container that restarts gets a new cgroup, and with it a new key
        if cached is not None and (now - cached[2] < self.LIMITS_TTL
                                   or _start_ticks(self.proc, cached[0]) == cached[1]):
            pid, start = cached[0], cached[1]
            if now - cached[2] >= self.LIMITS_TTL:
                self._init[key] = (pid, start, now)
        else:
            best = None
            for pid in _cgroup_pids(dirs):
                start = _start_ticks(self.proc, pid)
                if start is not None and (best is None or start < best[1]):
                    best = (pid, start)
            if best is None:
                self._init.pop(key, None)
                return None, None
            pid, start = best
            self._init[key] = (pid, start, now)
        return round(max(0.0, (boot_ticks - start) / float(_CLK_TCK)), 1), pid

    def collect(self, docker_list=None, docker_error=None):
        """The containers section: {"available", "reason"?, "cgroup", "count", "containers"}."""
        with self._collect_lock:
            try:
                return self._collect(docker_list)
            finally:
                if self._kept is not None:
                    self._kept.sweep()

    def _collect(self, docker_list):
        roots = self.roots()
        now = time.monotonic()
        boot_ticks = int(collect_uptime(self.proc) * _CLK_TCK)
        ref = roots["v2"] if roots["version"] == 2 else roots["v1"].get("memory")
        found = _container_dirs(ref) if ref else []
        engines = self._engines(docker_list)
        if now - self._lxc[0] >= self.LXC_TTL:
            self._lxc = (now, lxc_configured(self.lxc_path))
        lxc = self._lxc[1]
        rows, seen = [], set()
        for engine, key, rel in found:
            info = engines.get(key) if engine != "lxc" else None
            ident = (engine, key)
            seen.add(ident)
            row = {"name": key if engine == "lxc" else key[:12], "id": None if engine == "lxc" else key[:12],
                   "engine": info[0] if info else engine, "image": lxc.get(key) if engine == "lxc" else None,
                   "state": "running", "status": None, "health": None, "restarts": None}
            if info:
                c = info[2]
                names = c.get("Names") or []
                row.update(name=str(names[0]).lstrip("/") if names else key[:12], image=c.get("Image"),
                           state=c.get("State") or "running", status=c.get("Status"),
                           health=_docker_health(c.get("Status")),
                           restarts=self._restarts(info[1], key, now))
            limits = self._limits.get(ident)
            if limits is None or now - limits[0] >= self.LIMITS_TTL:
                try:
                    limits = self._limits[ident] = (now, read_container_limits(roots, rel))
                except (OSError, ValueError, KeyError):
                    limits = (now, (None, None))
            try:
                files = self._files.get(ident)
                if files is None:
                    files = self._files[ident] = container_cgroup_files(roots, rel)
                reopened = self._kept.reopened if self._kept is not None else 0
                fig = read_container_cgroup(roots, rel, limits[1], files, self._read)
                if fig is not None and self._kept is not None and self._kept.reopened != reopened:
                    # a new cgroup of the same name (the container restarted): a new init and
                    # network namespace, and its limits read again
                    self._init.pop(ident, None)
                    if limits[0] != now:
                        limits = self._limits[ident] = (now, read_container_limits(roots, rel))
                        fig["memory_limit"], fig["cpu_limit"] = limits[1]
            except (OSError, ValueError, KeyError):
                fig = None
            if fig is None:
                continue
            if fig.pop("frozen") and row["state"] == "running":
                row["state"] = "frozen" if engine == "lxc" else "paused"
            row["uptime"], pid = self._uptime(ident, fig.pop("dirs"), boot_ticks)
            rx = tx = None
            if pid is not None:
                try:
                    rx, tx = _container_net(self.proc, pid, self._read)
                except (OSError, ValueError):
                    pass
            prev = self._prev.get(ident)
            cur = (now, fig["cpu_ns"], fig["read_bytes"], fig["write_bytes"], rx, tx)
            self._prev[ident] = cur
            dt = now - prev[0] if prev else 0.0

            rate = functools.partial(_counter_rate, prev, cur, dt)
            row.update(cpu_percent=rate(1, 1e-7, 2), cpu_limit=fig["cpu_limit"],
                       memory_used=fig["memory_used"], memory_limit=fig["memory_limit"],
                       memory_percent=_pct(fig["memory_used"], fig["memory_limit"]),
                       pids=fig["pids"], read_rate=rate(2), write_rate=rate(3),
                       rx_rate=rate(4), tx_rate=rate(5))
            rows.append(row)
        # Containers that exist but run no cgroup: stopped LXC ones, exited Engine ones.
        running_lxc = set(k for e, k, r in found if e == "lxc")
        for name, image in lxc.items():
            if name not in running_lxc:
                rows.append(dict(_NO_FIGURES, name=name, id=None, engine="lxc", image=image, state="stopped",
                                 status=None, health=None, restarts=None))
        cgroup_ids = set(k for e, k, r in found if e != "lxc")
        for cid, (engine, sock, c) in engines.items():
            if cid not in cgroup_ids:
                names = c.get("Names") or []
                rows.append(dict(_NO_FIGURES, name=str(names[0]).lstrip("/") if names else cid[:12],
                                 id=cid[:12], engine=engine, image=c.get("Image"), state=c.get("State"),
                                 status=c.get("Status"), health=_docker_health(c.get("Status")),
                                 restarts=self._restarts(sock, cid, now)))
        for gone in [k for k in self._prev if k not in seen]:
            del self._prev[gone]
            self._init.pop(gone, None)
            self._limits.pop(gone, None)
        for gone in [k for k in self._files if k not in seen]:
            del self._files[gone]
        for gone in [k for k in self._inspect if k not in engines]:
            del self._inspect[gone]
        rows.sort(key=lambda r: (r["state"] != "running", r["name"] or ""))
        available = bool(rows) or bool(ref)
        return {"available": available, "reason": None if available else
                "no cgroup hierarchy with the memory controller is mounted, and no container engine answers",
                "cgroup": roots["version"], "count": len(rows), "containers": rows[:MAX_AGENT_CONTAINERS]}


# --------------------------------------------------------------------------- inventory

def parse_os_release(text):
    """KEY=value lines of os-release into a dict (quotes removed)."""
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
                v = v[1:-1]
            out[k.strip()] = v
    return out


def detect_virtualization(proc="/proc", sys="/sys", root=""):
    """'lxc', 'docker', 'podman', 'kvm', 'vmware', ... or 'none' (systemd-detect-virt's clues)."""
    try:
        env = _read_bytes(os.path.join(proc, "1", "environ"), 65536).split(b"\0")
        for item in env:
            if item.startswith(b"container="):
                return item[len(b"container="):].decode("ascii", "replace") or "container"
    except OSError:
        pass
    value = _read_opt(root + "/run/systemd/container")
    if value:
        return value
    if os.path.exists(root + "/.dockerenv"):
        return "docker"
    if os.path.exists(root + "/run/.containerenv"):
        return "podman"
    vendor = " ".join(filter(None, [
        _read_opt(os.path.join(sys, "class", "dmi", "id", "sys_vendor")),
        _read_opt(os.path.join(sys, "class", "dmi", "id", "product_name"))])).lower()
    for clue, name in (("qemu", "kvm"), ("kvm", "kvm"), ("vmware", "vmware"),
                       ("virtualbox", "oracle"), ("microsoft", "microsoft"), ("xen", "xen"),
                       ("amazon ec2", "amazon"), ("google", "google")):
        if clue in vendor:
            return name
    try:
        head = _read_text(os.path.join(proc, "cpuinfo"), 16384)
        if " hypervisor" in head:
            return "vm"
    except OSError:
        pass
    return "none"


def _iface_ipv4(name):
    """Primary IPv4 address/prefix of a live interface via ioctl, or None."""
    import ipaddress
    try:
        import fcntl
        import struct
    except ImportError:
        return None
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("256s", name.encode()[:15])
        addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])
        mask = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x891B, req)[20:24])
        prefix = ipaddress.IPv4Network("0.0.0.0/" + mask).prefixlen
        return "%s/%d" % (addr, prefix)
    except OSError:
        return None
    finally:
        s.close()


# Interfaces that come and go with containers, VMs and tunnels: the host side of veth pairs
# (veth, Calico's cali, Cilium's lxc), VM taps, container and VM bridges (docker0, br-<id>,
# lxcbr0, lxdbr0, virbr0, cni0, podman0...), overlay and tunnel devices (vxlan, flannel,
# WireGuard, tun, the sit0/gre0/ip6tnl0 fallbacks a module load adds) and Proxmox firewall
# links. Listing them would make every container start, VM migration or VPN reconnect an
# inventory change (a history row and an alert).
EPHEMERAL_INTERFACES = ("veth", "vnet", "tap", "tun", "cali", "lxc", "lxdbr", "docker", "br-",
                        "virbr", "cni", "flannel", "cilium", "weave", "podman", "vxlan",
                        "genev", "kube-", "wg", "tailscale", "zt", "ppp", "ifb", "dummy",
                        "nlmon", "sit", "gre", "gretap", "erspan", "ip6tnl", "ip6gre", "ip_vti",
                        "ip6_vti", "tunl", "fwbr", "fwpr", "fwln")


IFA_F_TEMPORARY, IFA_F_DEPRECATED = 0x01, 0x20


def _physical(net, name, depth=0):
    """Whether an interface is a device (a NIC, virtio, a USB adapter) or sits on one
    (a bond, a VLAN: their lower_* links lead to it)."""
    base = os.path.join(net, name)
    if os.path.lexists(os.path.join(base, "device")):
        return True
    if depth >= 3:
        return False
    try:
        lower = [e[len("lower_"):] for e in os.listdir(base) if e.startswith("lower_")]
    except OSError:
        return False
    return any(_physical(net, n, depth + 1) for n in lower)


def stable_interface(net, name):
    """Whether an interface belongs in the inventory: not lo, nor one that comes and goes.

    Besides the names above, by what sysfs says it is: a tun/tap device, a virtual port of
    a bridge (a container's or VM's link, whatever it is called), or a bridge with no
    physical port (a workload network; a bridge over a NIC, such as Proxmox's vmbr0 or a
    host's br0, is the host's own network and stays).
    """
    if name == "lo" or name.startswith(EPHEMERAL_INTERFACES):
        return False
    base = os.path.join(net, name)
    if os.path.exists(os.path.join(base, "tun_flags")):
        return False
    if os.path.isdir(os.path.join(base, "brport")) and not _physical(net, name):
        return False
    if os.path.isdir(os.path.join(base, "bridge")):
        try:
            ports = os.listdir(os.path.join(base, "brif"))
        except OSError:
            ports = []
        return any(_physical(net, p) for p in ports)
    return True


def collect_inventory(proc="/proc", sys="/sys", etc="/etc", cgroup=None, live=True):
    """The stable description of the host: OS, kernel, hardware, disks, interfaces."""
    osr = {}
    for path in (os.path.join(etc, "os-release"), "/usr/lib/os-release" if live else ""):
        if path and os.path.exists(path):
            osr = parse_os_release(_read_text(path))
            break
    cpu_model = None
    try:
        for line in _read_text(os.path.join(proc, "cpuinfo"), 16384).splitlines():
            if line.startswith(("model name", "Processor", "cpu model", "Model")):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu_count = _parse_cpu_list(_read_opt(os.path.join(sys, "devices", "system", "cpu",
                                                       "online"))) or None
    mem_total = None
    try:
        mem = collect_memory(proc, cgroup)
        mem_total = mem["total"]
    except (OSError, ValueError, KeyError):
        pass
    cpu_limit = None
    if cgroup and cgroup.get("version") and \
            os.path.join("/proc", "stat") not in cgroup.get("lxcfs", []):
        limit, _ = _cgroup_cpu_limit(cgroup)
        if limit is not None and (cpu_count is None or limit < cpu_count):
            cpu_limit = limit
    disks = []
    block = os.path.join(sys, "block")
    try:
        names = sorted(os.listdir(block))
    except OSError:
        names = []
    for name in names:
        if name.startswith(("loop", "ram", "zram", "fd")):
            continue
        d = os.path.join(block, name)
        size = _read_int(os.path.join(d, "size"))
        disks.append({"name": name, "size": None if size is None else size * 512,
                      "model": _read_opt(os.path.join(d, "device", "model")),
                      "rotational": _read_int(os.path.join(d, "queue", "rotational")) == 1,
                      "removable": _read_int(os.path.join(d, "removable")) == 1})
    fss = []
    try:
        for dev, mp, fstype in list_filesystems(proc):
            total = None
            if live and fstype in FIXED_SIZE_FSTYPES:
                try:
                    st = os.statvfs(mp)
                    total = st.f_blocks * st.f_frsize
                except OSError:
                    pass
            fss.append({"device": dev, "mountpoint": mp, "fstype": fstype, "total": total})
    except OSError:
        pass
    import ipaddress
    ifaces = []
    v6 = {}
    try:
        for line in _read_text(os.path.join(proc, "net", "if_inet6")).splitlines():
            f = line.split()
            # Privacy (temporary) addresses rotate by themselves, deprecated ones are on their
            # way out. (A tentative one stays: it is there from the moment the link is up, and
            # leaving it out until duplicate detection ends would make every boot a change.)
            if len(f) >= 6 and not int(f[4], 16) & (IFA_F_TEMPORARY | IFA_F_DEPRECATED):
                addr = str(ipaddress.IPv6Address(int(f[0], 16)))
                v6.setdefault(f[5], []).append("%s/%d" % (addr, int(f[2], 16)))
    except (OSError, ValueError):
        pass
    net = os.path.join(sys, "class", "net")
    try:
        names = sorted(os.listdir(net))
    except OSError:
        names = []
    for name in names:
        if not stable_interface(net, name):
            continue
        addrs = []
        v4 = _iface_ipv4(name) if live else None
        if v4:
            addrs.append(v4)
        addrs.extend(sorted(v6.get(name, [])))
        ifaces.append({"name": name, "mac": _read_opt(os.path.join(net, name, "address")),
                       "addresses": addrs, "mtu": _read_int(os.path.join(net, name, "mtu"))})
    uname = os.uname()
    return {
        "hostname": collect_hostname(proc),
        "os": {"id": osr.get("ID"), "name": osr.get("NAME"),
               "version_id": osr.get("VERSION_ID"), "pretty_name": osr.get("PRETTY_NAME")},
        "kernel": _read_opt(os.path.join(proc, "sys", "kernel", "osrelease")) or uname.release,
        "arch": uname.machine,
        "virtualization": detect_virtualization(proc, sys, "" if live else "/nonexistent"),
        "cpu": {"model": cpu_model, "count": cpu_count, "limit": cpu_limit},
        "memory_total": mem_total,
        "block_devices": disks,
        "filesystems": fss,
        "interfaces": ifaces,
    }


def inventory_hash(inventory):
    """Hash of the inventory's stable content: changes exactly when the document does."""
    blob = json.dumps(inventory, sort_keys=True, separators=(",", ":")).encode()
    return _sha256_hex(blob)


# ------------------------------------------------------------------------------ policy

def load_policy(source):
    """Return (policy dict, status string). source: None (defaults), a dict, or a path.

    Any problem with an existing file yields a policy with every action disabled.
    """
    if source is None:
        return _merge_policy({}), "default"
    if isinstance(source, dict):
        try:
            return _merge_policy(source), "given"
        except ValueError as e:
            reason = "%s" % e
        return _closed_policy(reason), reason
    try:
        st = os.stat(source)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return _merge_policy({}), "default (no %s)" % source
        reason = "cannot stat %s: %s" % (source, e.strerror)
        return _closed_policy(reason), reason
    if st.st_mode & (stat_mod.S_IWGRP | stat_mod.S_IWOTH):
        reason = "%s is writable by group or others" % source
        return _closed_policy(reason), reason
    if st.st_uid not in (0, os.geteuid()):
        reason = "%s is owned by uid %d" % (source, st.st_uid)
        return _closed_policy(reason), reason
    try:
        with open(source, "rb") as f:
            data = json.loads(f.read(1 << 20).decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        return _merge_policy(data), "file %s" % source
    except (OSError, ValueError) as e:
        reason = "%s: %s" % (source, e)
        return _closed_policy(reason), reason


def _closed_policy(reason):
    pol = _merge_policy({})
    pol["actions"] = {"kill": False, "service": False, "docker": False}
    pol["_refusal"] = "the host policy file is invalid, so every action is refused: " + reason
    return pol


def _merge_policy(data):
    """Defaults overlaid with data, type-checked (ValueError on a wrong type)."""
    pol = json.loads(json.dumps(DEFAULT_POLICY))
    for key, value in data.items():
        if key not in DEFAULT_POLICY:
            raise ValueError("unknown key %r" % key)
        if key == "actions":
            if not isinstance(value, dict):
                raise ValueError("actions must be an object")
            for k, v in value.items():
                if k not in pol["actions"] or not isinstance(v, bool):
                    raise ValueError("actions.%s must be one of kill/service/docker with a "
                                     "boolean value" % k)
                pol["actions"][k] = v
        elif key == "logs":
            if not isinstance(value, bool):
                raise ValueError("logs must be true or false")
            pol[key] = value
        else:
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise ValueError("%s must be a list of strings" % key)
            pol[key] = list(value)
    pol["kill_signals"] = [_signal_name(s) or s for s in pol["kill_signals"]]
    return pol


def _signal_name(name):
    """Normalise 'SIGTERM'/'term'/'TERM' to 'TERM' if it is a real signal, else None."""
    if not isinstance(name, str):
        return None
    n = name.upper()
    if n.startswith("SIG"):
        n = n[3:]
    return n if hasattr(signal, "SIG" + n) and not n.startswith(("_", "RT")) \
        and n not in ("IGN", "DFL") else None


# ----------------------------------------------------------------------------- actions

class ActionError(Exception):
    """An action refused or impossible: carries the HTTP status, error code and detail."""

    def __init__(self, status, code, detail):
        Exception.__init__(self, detail)
        self.status, self.code, self.detail = status, code, detail


def _bad(field, why):
    return ActionError(400, "bad_request", "%s: %s" % (field, why))


def _forbidden(why):
    return ActionError(403, "forbidden", why)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def action_kill(body, policy, proc="/proc", own_pid=None):
    """Signal a process after checking pid, start time, kernel-thread status and policy."""
    pid, start_time, sig = body.get("pid"), body.get("start_time"), body.get("signal", "TERM")
    if not _is_int(pid) or not 0 < pid <= PID_MAX_LIMIT:
        raise _bad("pid", "must be an integer from 1 to %d" % PID_MAX_LIMIT)
    if not _is_int(start_time) or start_time < 0:
        raise _bad("start_time", "must be a non-negative integer (field 22 of /proc/PID/stat)")
    name = _signal_name(sig)
    if name is None:
        raise _bad("signal", "unknown signal %r" % (sig,))
    if not policy["actions"]["kill"]:
        raise _forbidden(policy.get("_refusal") or "kill actions are disabled by the host policy")
    if name not in policy["kill_signals"]:
        raise _forbidden("signal %s is not in the policy's kill_signals" % name)
    if pid == 1:
        raise _forbidden("refusing to signal pid 1 (init)")
    if pid == (own_pid or os.getpid()):
        raise _forbidden("refusing to signal the agent itself")
    started = time.monotonic()
    pidfd = None
    pidfd_open = getattr(os, "pidfd_open", None)
    send = getattr(signal, "pidfd_send_signal", None)
    if pidfd_open and send and proc == "/proc":
        try:
            pidfd = pidfd_open(pid)  # pins the process: no pid reuse between check and kill
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise ActionError(404, "no_such_process", "no process with pid %d" % pid)
            pidfd = None
    try:
        try:
            data = _read_bytes(os.path.join(proc, str(pid), "stat"), 2048)
            comm, f = parse_stat(data)
            flags, st = int(f[6]), int(f[19])
        except (OSError, ValueError, IndexError):
            raise ActionError(404, "no_such_process", "no process with pid %d" % pid)
        # /proc/TID/stat exists for every thread, and kill(TID) signals the whole process:
        # without this, a worker thread's id would bypass the checks below (and kill the
        # agent through one of its own threads).
        tgid = _thread_group(proc, pid)
        if tgid != pid:
            raise _bad("pid", "%d is a thread of process %s, not a process" % (pid, tgid))
        if st != start_time:
            raise ActionError(409, "stale_pid", "pid %d has start_time %d, not %d: the process "
                              "you saw is gone" % (pid, st, start_time))
        # PF_KTHREAD alone: inside a PID namespace (LXC, docker) pid 2 and its children are
        # ordinary processes, and kernel threads are not visible at all.
        if flags & PF_KTHREAD:
            raise _forbidden("refusing to signal kernel thread %d (%s)" % (pid, comm))
        for pattern in policy["protected_processes"]:
            if fnmatch.fnmatchcase(comm, pattern):
                raise _forbidden("process %s is protected by the policy (%s)" % (comm, pattern))
        signum = getattr(signal, "SIG" + name)
        try:
            if pidfd is not None:
                send(pidfd, signum)
            else:
                os.kill(pid, signum)
        except OSError as e:
            return {"ok": False, "exit_status": e.errno, "output": "kill %d: %s" % (pid, e.strerror),
                    "duration_ms": _ms(started)}
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return {"ok": True, "exit_status": 0, "output": "sent SIG%s to %d (%s)" % (name, pid, comm),
            "duration_ms": _ms(started)}


def _thread_group(proc, pid):
    """The Tgid (process id) of a task id from <proc>/PID/status; None if unreadable."""
    try:
        for line in _read_bytes(os.path.join(proc, str(pid), "status"), 4096).splitlines():
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _ms(started):
    return round((time.monotonic() - started) * 1000.0, 2)


def _check_verb(body):
    verb = body.get("verb")
    if verb not in VERBS:
        raise _bad("verb", "must be one of start, stop, restart")
    return verb


def action_service(body, policy, systemctl=None, timeout=90.0):
    """start/stop/restart a systemd service with systemctl (argv list, timeout)."""
    unit = body.get("unit")
    if not isinstance(unit, str) or not UNIT_RE.fullmatch(unit) or unit.startswith("-") \
            or ".." in unit:
        raise _bad("unit", "must match %s" % UNIT_RE.pattern)
    verb = _check_verb(body)
    # Only services: 'reboot.target' becomes 'reboot.target.service', which does not exist.
    if not unit.endswith(".service"):
        unit += ".service"
    if not policy["actions"]["service"]:
        raise _forbidden(policy.get("_refusal") or "service actions are disabled by the host policy")
    for pattern in policy["protected_units"]:
        if fnmatch.fnmatchcase(unit, pattern):
            raise _forbidden("unit %s is protected by the policy (%s)" % (unit, pattern))
    if not any(fnmatch.fnmatchcase(unit, p) for p in policy["service_patterns"]):
        raise _forbidden("unit %s matches none of the policy's service_patterns" % unit)
    exe = systemctl or _which("systemctl")
    if not exe or not os.access(exe, os.X_OK):
        raise ActionError(503, "unavailable", "systemctl not found on this host")
    started = time.monotonic()
    # An alias must not get past the policy: dbus-org.freedesktop.login1.service is
    # systemd-logind.service, autovt@tty1.service is getty@tty1.service.
    try:
        names, unit_id = _unit_names(exe, unit, min(timeout, 15.0))
    except OSError as e:
        raise ActionError(503, "unavailable", "cannot run systemctl: %s" % e.strerror)
    for pattern in policy["protected_units"]:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if hit:
            raise _forbidden("unit %s is %s, protected by the policy (%s)" % (unit, hit[0], pattern))
    if not any(fnmatch.fnmatchcase(unit_id, p) for p in policy["service_patterns"]):
        raise _forbidden("unit %s is %s, which matches none of the policy's service_patterns"
                         % (unit, unit_id))
    try:
        code, out = _run([exe, verb, "--no-ask-password", "--", unit], timeout)
    except OSError as e:
        raise ActionError(503, "unavailable", "cannot run systemctl: %s" % e.strerror)
    return {"ok": code == 0, "exit_status": code, "output": out[-4000:],
            "duration_ms": _ms(started)}


def _unit_names(systemctl, unit, timeout):
    """(every name systemd knows the unit by, its canonical Id) via systemctl show."""
    code, out = _run([systemctl, "show", "--property=Id", "--property=Names", "--", unit], timeout)
    if code != 0:
        raise ActionError(503, "unavailable", "systemctl show %s exited %s: %s"
                          % (unit, code, out.strip()[:200]))
    names, unit_id = [unit], unit
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key == "Id" and value.strip():
            unit_id = value.strip()
            names.append(unit_id)
        elif key == "Names":
            names.extend(value.split())
    return names, unit_id


def action_docker(body, policy, sock_path=DEFAULT_DOCKER_SOCKET, timeout=90.0):
    """start/stop/restart a container through the Engine API on the unix socket."""
    name = body.get("container")
    if not isinstance(name, str) or not CONTAINER_RE.fullmatch(name):
        raise _bad("container", "must match %s" % CONTAINER_RE.pattern)
    verb = _check_verb(body)
    if not policy["actions"]["docker"]:
        raise _forbidden(policy.get("_refusal") or "docker actions are disabled by the host policy")
    if not sock_path or not os.path.exists(sock_path):
        raise ActionError(503, "unavailable", "no docker socket at %s" % sock_path)
    started = time.monotonic()
    try:
        status, listing = docker_request(sock_path, "GET", "/containers/json?all=1", 10.0)
    except DockerError as e:
        raise ActionError(503, "unavailable", str(e))
    if status != 200 or not isinstance(listing, list):
        raise ActionError(502, "docker_error", "docker API answered %s" % status)
    match = None
    for c in listing:
        names = [n.lstrip("/") for n in (c.get("Names") or [])]
        cid = c.get("Id") or ""
        if name in names or (len(name) >= 12 and cid.startswith(name)):
            match = (names, cid)
            break
    if match is None:
        raise ActionError(404, "no_such_container", "no container named %s" % name)
    candidates = match[0] + [match[1][:12]]
    for pattern in policy["protected_containers"]:
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            raise _forbidden("container %s is protected by the policy (%s)" % (name, pattern))
    if not any(fnmatch.fnmatchcase(c, p) for p in policy["container_patterns"]
               for c in candidates):
        raise _forbidden("container %s matches none of the policy's container_patterns" % name)
    path = "/containers/%s/%s" % (quote(match[1] or name, safe=""), verb)
    if verb in ("stop", "restart"):
        path += "?t=10"
    try:
        status, resp = docker_request(sock_path, "POST", path, timeout)
    except DockerError as e:
        return {"ok": False, "exit_status": None, "output": str(e),
                "duration_ms": _ms(started)}
    ok = status in (204, 304)
    if isinstance(resp, dict):
        text = resp.get("message", "")
    else:
        text = resp or ""
    if status == 304:
        text = text or "already %s" % ("started" if verb == "start" else "stopped")
    return {"ok": ok, "exit_status": 0 if ok else status, "output": str(text)[:4000],
            "duration_ms": _ms(started)}


# --------------------------------------------------------------------------- collector

class Collector(object):
    """Collects the documents the agent serves; keeps previous counters for rates.

    Thread-safe. ``all()`` is what the central stores per poll.
    """

    CGROUP_TTL = 60.0
    # Units are listed (one systemctl spawn) at most this often; polls in between reuse the
    # listing, and a service action clears it.
    SYSTEMD_TTL = 10.0
    # inventory_hash in all() reuses an inventory at most this old (seconds): collecting
    # it costs about a quarter of a poll, and inventory changes are rare.
    INVENTORY_TTL = 25.0
    # Unit details (since, main PID, cgroup memory/CPU: one systemctl show) at most this often.
    UNITS_TTL = 60.0

    def __init__(self, proc="/proc", sys="/sys", policy=None, etc="/etc",
                 docker_socket=DEFAULT_DOCKER_SOCKET, systemctl=None, live=None,
                 lxc_path=DEFAULT_LXC_PATH, podman_socket=PODMAN_SOCKET):
        self.proc = proc
        self.sys = sys
        self.etc = etc
        self.policy_source = policy
        self.docker_socket = docker_socket
        self.systemctl = systemctl
        self.live = (proc == "/proc") if live is None else live
        self.started = time.time()
        self._lock = threading.Lock()
        self._cgroup = None
        self._cgroup_at = 0.0
        self._prev = {}
        self._inventory_cache = None  # (monotonic time, inventory, hash)
        self._units_lock = threading.Lock()
        self._units = None  # (monotonic time, units or None without systemd, error)
        self._unit_details = None  # (monotonic time, {unit: details}, Unix time)
        self._tools = {}  # "smart", "nvidia": SlowTool, made on first use when the tool exists
        self.containers = ContainerCollector(proc, sys, lxc_path if self.live or lxc_path != DEFAULT_LXC_PATH
                                             else "/nonexistent",
                                             (docker_socket, podman_socket if self.live else None))
        try:
            self._baseline("all")
        except Exception:  # a broken /proc must not make the agent unstartable
            log.exception("baseline failed")

    # --- shared state

    def cgroup(self):
        """The cgroup layout, re-detected at most once a minute."""
        now = time.monotonic()
        if self._cgroup is None or now - self._cgroup_at > self.CGROUP_TTL:
            try:
                self._cgroup = detect_cgroup(self.proc, self.sys)
            except OSError:
                self._cgroup = {"version": None, "lxcfs": [], "v1": {}, "v2": []}
            self._cgroup_at = now
        return self._cgroup

    def units(self):
        """Loaded systemd units (list_units), listed at most every SYSTEMD_TTL seconds;
        None when systemd is not running (then nothing is spawned at all)."""
        with self._units_lock:
            now = time.monotonic()
            cached = self._units
            if cached is None or now - cached[0] >= self.SYSTEMD_TTL:
                exe = systemctl_path(self.systemctl)
                try:
                    cached = (now, None if exe is None else list_units(exe), None)
                except Exception as e:  # kept for the TTL too: a broken systemctl is not re-run per poll
                    cached = (now, None, e)
                self._units = cached
        if cached[2] is not None:
            raise cached[2]
        return cached[1]

    def forget_units(self):
        """Make the next poll list the units again, and their details (after a service action)."""
        self._units = None
        self._unit_details = None

    def _systemd(self, watched):
        units = self.units()
        return _no_systemd(watched) if units is None else collect_systemd(watched, units=units)

    def policy(self):
        """(policy, status), re-read each time so edits apply without a restart."""
        return load_policy(self.policy_source)

    def _boot_ticks(self):
        return int(collect_uptime(self.proc) * _CLK_TCK)

    def _proc_snapshot(self):
        return {"t": time.monotonic(), "boot_ticks": self._boot_ticks(),
                "table": scan_processes(self.proc)}

    def _baseline(self, channel):
        state = self._prev.setdefault(channel, {})
        cg = self.cgroup()
        state["cpu"] = read_cpu_sample(self.proc, cg)
        state["disk"] = read_disk_sample(self.proc, self.sys)
        state["net"] = read_net_sample(self.proc)
        state["procs"] = self._proc_snapshot()

    # --- documents

    def _section(self, doc, errors, name, fn):
        try:
            doc[name] = fn()
        except Exception as e:  # one broken collector never fails the document
            doc[name] = None
            errors[name] = "%s: %s" % (type(e).__name__, e)

    def _system(self, doc, errors, state):
        cg = self.cgroup()

        def cpu():
            cur = read_cpu_sample(self.proc, cg)
            prev, state["cpu"] = state.get("cpu"), cur
            return cpu_rates(prev, cur)

        def disk():
            cur = read_disk_sample(self.proc, self.sys)
            prev, state["disk"] = state.get("disk"), cur
            return disk_rates(prev, cur)

        def net():
            cur = read_net_sample(self.proc)
            prev, state["net"] = state.get("net"), cur
            return net_rates(prev, cur)

        self._section(doc, errors, "hostname", lambda: collect_hostname(self.proc))
        self._section(doc, errors, "uptime", lambda: collect_uptime(self.proc))
        self._section(doc, errors, "cpu", cpu)
        self._section(doc, errors, "load", lambda: collect_load(self.proc))
        self._section(doc, errors, "memory", lambda: collect_memory(self.proc, cg))
        self._section(doc, errors, "filesystems",
                      lambda: collect_filesystems(self.proc, "" if self.live else "/nonexistent"))
        self._section(doc, errors, "disk_io", disk)
        self._section(doc, errors, "network", net)

    def _head(self):
        return {"agent": {"version": VERSION, "sha256": agent_sha256(),
                          "python": _python_version()},
                "timestamp": round(time.time(), 3)}

    def _processes_summary(self, state, policy):
        cur = self._proc_snapshot()
        prev, state["procs"] = state.get("procs"), cur
        dt = cur["t"] - prev["t"] if prev else 0.0
        table = cur["table"]
        prev_table = prev["table"] if prev else {}

        def delta(key):
            before = prev_table.get(key)
            if before is not None:
                return table[key][0] - before[0]
            return table[key][0] if prev and key[1] >= prev["boot_ticks"] else 0

        top_cpu = heapq.nlargest(TOP_N, table, key=delta)
        top_mem = heapq.nlargest(TOP_N, table, key=lambda k: table[k][1])
        details = {}  # (pid, start) -> (user, cmdline), read once per poll
        out = {"count": len(table),
               "top_cpu": process_entries(self.proc, prev, table, dt, top_cpu, details),
               "top_memory": process_entries(self.proc, prev, table, dt, top_mem, details)}
        offered = {}
        for entry in out["top_cpu"] + out["top_memory"]:
            if entry["pid"] not in offered:
                offered[entry["pid"]] = kill_offered(policy, entry, self.proc)
            entry["kill"] = offered[entry["pid"]]
        watched = policy["watched_processes"]
        if watched:
            counts = dict((w, 0) for w in watched)
            for ticks, rss, name in table.values():
                n = name.decode("utf-8", "replace")
                if n in counts:
                    counts[n] += 1
            out["watched"] = counts
        return out

    def all(self):
        """The /api/all document (rates since the previous all() call)."""
        with self._lock:
            doc = self._head()
            errors = {}
            state = self._prev.setdefault("all", {})
            policy, _ = self.policy()
            self._system(doc, errors, state)
            self._section(doc, errors, "processes",
                          lambda: self._processes_summary(state, policy))
            self._section(doc, errors, "systemd", lambda: self._systemd(policy["watched_units"]))
            self._docker_and_containers(doc, errors)
            self._section(doc, errors, "sensors", lambda: collect_sensors(self.sys))
            self._section(doc, errors, "smart", self.smart)
            self._section(doc, errors, "gpus", self.gpus)
            self._section(doc, errors, "inventory_hash", self._inventory_hash)
            doc["errors"] = errors
            return doc

    def _tool(self, key, program, fn, ttl):
        """The SlowTool of a program, None when it is not installed (looked up once, never run)."""
        if key not in self._tools:
            exe = _which(program) if self.live else None
            self._tools[key] = SlowTool(lambda: fn(exe), ttl) if exe else None
        return self._tools[key]

    def smart(self):
        """The smart section: disks' health from smartctl, sampled every SMART_TTL seconds."""
        tool = self._tool("smart", "smartctl", collect_smart, SMART_TTL)
        if tool is None:
            return {"available": False, "reason": "smartctl is not installed (smartmontools)",
                    "sampled_at": None, "disks": []}
        got = tool.get()
        if got is None:
            return {"available": False, "reason": "first sample under way", "sampled_at": None, "disks": []}
        at, disks, error = got
        if error is not None:
            return {"available": False, "reason": error[:200], "sampled_at": round(at, 3), "disks": []}
        return {"available": bool(disks), "reason": None if disks else "smartctl --scan finds no disk",
                "sampled_at": round(at, 3), "disks": disks}

    def gpus(self):
        """The gpus section: NVIDIA from nvidia-smi (every GPU_TTL seconds), AMD from sysfs."""
        gpus, reasons, at = collect_amd_gpus(self.sys), [], None

        def query(exe):
            code, out = _run([exe, "--query-gpu=" + ",".join(NVIDIA_FIELDS), "--format=csv,noheader,nounits"],
                             15.0, stderr=False)
            if code != 0:
                raise RuntimeError("nvidia-smi exited %s" % code)
            found = parse_nvidia_smi(out)
            if found:
                code, out = _run([exe, "--query-compute-apps=" + ",".join(NVIDIA_APP_FIELDS),
                                  "--format=csv,noheader,nounits"], 15.0, stderr=False)
                apps = parse_nvidia_apps(out) if code == 0 else None
                for gpu in found:  # null: not known (the query failed), [] none
                    gpu["processes"] = apps.get(gpu["id"], []) if apps is not None else None
            return found
        tool = self._tool("nvidia", "nvidia-smi", query, GPU_TTL)
        if tool is None:
            reasons.append("nvidia-smi is not installed")
        else:
            got = tool.get()
            if got is not None:
                at = round(got[0], 3)
                if got[2]:
                    reasons.append(got[2][:200])
                gpus.extend(got[1] or [])
        if not gpus:
            reasons.append("no amdgpu card in %s/class/drm" % self.sys)
        return {"available": bool(gpus), "reason": None if gpus else "; ".join(reasons), "sampled_at": at,
                "gpus": gpus[:16]}

    def _docker_and_containers(self, doc, errors):
        """The docker and containers sections from one Engine listing per poll."""
        listing, failure = None, None
        if docker_usable(self.docker_socket):
            try:
                listing = docker_list(self.docker_socket)
            except Exception as e:
                failure = "%s: %s" % (type(e).__name__, e)
        if failure is not None:
            doc["docker"] = None
            errors["docker"] = failure
        else:
            self._section(doc, errors, "docker", lambda: collect_docker(self.docker_socket, listing=listing))
        self._section(doc, errors, "containers", lambda: self.containers.collect(listing, failure))

    def system(self):
        """The /api/system document (its own rate baseline, independent of all())."""
        with self._lock:
            doc = self._head()
            errors = {}
            self._system(doc, errors, self._prev.setdefault("system", {}))
            doc["errors"] = errors
            return doc

    def processes(self, sort="cpu", limit=None):
        """The full process list (user and cmdline included), sorted and limited."""
        with self._lock:
            state = self._prev.setdefault("processes", {})
            cur = self._proc_snapshot()
            prev, state["procs"] = state.get("procs"), cur
        dt = cur["t"] - prev["t"] if prev else 0.0
        table = cur["table"]
        rows = [(key, _proc_cpu(prev, table, dt, key)) for key in table]
        if sort == "cpu":
            rows.sort(key=lambda r: (-(r[1] or 0.0), r[0][0]))
        elif sort == "memory":
            rows.sort(key=lambda r: (-table[r[0]][1], r[0][0]))
        elif sort == "name":
            rows.sort(key=lambda r: (table[r[0]][2], r[0][0]))
        else:
            rows.sort(key=lambda r: r[0][0])
        if limit is not None:
            rows = rows[:limit]
        out = []
        for key, cpu in rows:
            user, cmdline = process_details(self.proc, key[0])
            out.append({"pid": key[0], "start_time": key[1], "user": user,
                        "name": table[key][2].decode("utf-8", "replace"), "cmdline": cmdline,
                        "cpu_percent": cpu, "rss": table[key][1]})
        return {"timestamp": round(time.time(), 3), "count": len(table), "sort": sort,
                "processes": out}

    def unit_details(self, policy, units):
        """(unit details, their Unix time) for the listed units, sampled at most every UNITS_TTL
        seconds (one systemctl show); the previous sample when a refresh fails."""
        with self._units_lock:
            now = time.monotonic()
            cached = self._unit_details
            if cached is None or now - cached[0] >= self.UNITS_TTL:
                exe = systemctl_path(self.systemctl)
                names = [u["unit"] for u in listed_units(policy, units)]
                try:
                    details = unit_details(exe, names, self.containers.roots(),
                                           cached[1] if cached else None) if exe else {}
                except Exception:
                    log.exception("unit details")
                    details = cached[1] if cached else {}
                cached = self._unit_details = (now, details, time.time())
        return cached[1], cached[2]

    def logs(self, query):
        """The /api/logs document: the last lines of a unit's journal (unit=NAME) or of a container's
        log (container=NAME), lines=N (1 to LOG_LINES_MAX). Raises ActionError."""
        policy, _ = self.policy()
        if not policy.get("logs", True):
            raise ActionError(403, "forbidden", "the host policy turns logs off (\"logs\": false)")
        unit, container, lines = (query.get(k, [None])[-1] for k in ("unit", "container", "lines"))
        if (unit is None) == (container is None):
            raise ActionError(400, "bad_request", "give unit or container")
        if lines is None:
            lines = LOG_LINES_DEFAULT
        elif lines.isdigit() and 1 <= int(lines) <= LOG_LINES_MAX:
            lines = int(lines)
        else:
            raise ActionError(400, "bad_request", "lines: must be an integer from 1 to %d" % LOG_LINES_MAX)
        journalctl = _which("journalctl")
        if unit is not None:
            if not LISTED_UNIT_RE.fullmatch(unit) or ".." in unit or unit.startswith("-"):
                raise ActionError(400, "bad_request", "unit: not a unit name")
            if systemctl_path(self.systemctl) is None or journalctl is None:
                raise ActionError(404, "not_found", "no systemd journal on this host")
            source, name = "journal", _unit_key(unit)
            entries = journal_lines(journalctl, lines, unit=name)
        else:
            if not CONTAINER_RE.fullmatch(container):
                raise ActionError(400, "bad_request", "container: not a container name")
            source, name, entries = self._container_logs(container, lines, journalctl)
        entries, cut = _cap_lines(entries)
        return {"source": source, "name": name, "lines": entries, "count": len(entries),
                "truncated": cut, "timestamp": round(time.time(), 3)}

    def _container_logs(self, container, lines, journalctl):
        doc = self.containers.collect(docker_list(self.docker_socket) if docker_usable(self.docker_socket) else None)
        found = [c for c in doc["containers"] if container in (c["name"], c["id"])]
        if not found:
            raise ActionError(404, "not_found", "no container %r on this host" % container)
        c = found[0]
        if c["engine"] == "docker":
            return "docker", c["name"], docker_log_lines(self.docker_socket, c["id"] or c["name"], lines)
        if c["engine"] == "lxc":
            cached = self.containers._init.get(("lxc", c["name"]))
            directory = lxc_journal_dir(self.proc, cached[0]) if cached else None
            if directory is None or journalctl is None:
                raise ActionError(404, "not_found", "container %r has no journal to read (not running, or no "
                                  "systemd journal inside)" % container)
            return "lxc-journal", c["name"], journal_lines(journalctl, lines, directory=directory)
        raise ActionError(404, "not_found", "logs of %s containers are not read here" % c["engine"])

    def services(self):
        """The /api/services document (units listed at most every SYSTEMD_TTL seconds, their
        details at most every UNITS_TTL seconds)."""
        policy, _ = self.policy()
        units = self.units()
        if units is None:
            return services_document(policy, None)
        details, at = self.unit_details(policy, units)
        doc = services_document(policy, units, details)
        doc["details_at"] = round(at, 3)
        return doc

    def docker(self):
        """The /api/docker document."""
        return collect_docker(self.docker_socket)

    def inventory(self):
        """The /api/inventory document (also refreshes the cached inventory_hash)."""
        inv = collect_inventory(self.proc, self.sys, self.etc, self.cgroup(), self.live)
        self._inventory_cache = (time.monotonic(), inv, inventory_hash(inv))
        return inv

    def _inventory_hash(self):
        cached = self._inventory_cache
        if cached is None or time.monotonic() - cached[0] >= self.INVENTORY_TTL:
            self.inventory()
            cached = self._inventory_cache
        return cached[2]

    def health(self):
        """The /api/health document."""
        _, status = self.policy()
        return {"status": "ok", "version": VERSION, "sha256": agent_sha256(),
                "uptime": round(time.time() - self.started, 3),
                "python": _python_version(), "pid": os.getpid(), "policy": status}

    def action(self, kind, body):
        """Run a validated action; returns the answer dict or raises ActionError."""
        policy, _ = self.policy()
        if kind == "kill":
            return action_kill(body, policy, self.proc)
        if kind == "service":
            try:
                return action_service(body, policy, self.systemctl)
            finally:
                self.forget_units()
        if kind == "docker":
            return action_docker(body, policy, self.docker_socket)
        raise ActionError(404, "not_found", "no such action %r" % kind)


# ---------------------------------------------------------------------------- trust
#
# Only the central may use the agent (docs/agent-protocol.md, "Authentication"). Layers, in
# the order a connection meets them: the peer socket's owner must be root, the agent's own
# user or the central's login user; a request shaped like a browser's (Origin, Sec-Fetch-*,
# a Host that is not this agent's address) is refused; every request but the challenge and
# the public health check carries an HMAC-SHA256 with the host's secret, bound to a nonce
# the agent chose for this connection and to a sequence number, and every answer to such a
# request carries the agent's own HMAC, so the central can tell the agent from a squatter.
#
# HMAC and SHA-256 come from the builtin _sha256 module, nonces from os.urandom: hashlib,
# hmac and secrets would load OpenSSL for 3-4 MB more resident memory.

DEFAULT_SECRET_PATH = "/etc/central-agent/secret"
DEFAULT_SYSLOG = "/dev/log"
PROTOCOL = "central-agent/1"
AUTH_HEADER = "X-Central-Auth"
PROOF_HEADER = "X-Agent-Auth"
NONCE_HEADER = "X-Central-Nonce"
NONCE_RE = re.compile(r"[0-9a-f]{32}\Z")
SECRET_RE = re.compile(r"[0-9a-f]{64}\Z")
AUTH_RE = re.compile(r"seq=([1-9][0-9]{0,17}) mac=([0-9a-f]{64})\Z")
LOG_AUTHPRIV = 10  # syslog facility (sudo logs there too); severities below
LOG_WARNING, LOG_NOTICE, LOG_INFO = 4, 5, 6

try:
    from _operator import _compare_digest as _same  # what hmac.compare_digest is
except ImportError:  # pragma: no cover - every CPython has it
    def _same(a, b):
        """Constant-time comparison of two ASCII strings."""
        if len(a) != len(b):
            return False
        diff = 0
        for x, y in zip(a.encode(), b.encode()):
            diff |= x ^ y
        return diff == 0


class HmacKey(object):
    """HMAC-SHA256 (RFC 2104) with one key; the padded key states are hashed once."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key):
        sha = _sha256_ctor()
        if len(key) > 64:
            key = sha(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = sha(bytes(b ^ 0x36 for b in key))
        self._outer = sha(bytes(b ^ 0x5C for b in key))

    def hexdigest(self, message):
        """The hex HMAC of message (bytes)."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def mac(self, *fields):
        """The protocol's MAC: HMAC over the ASCII fields joined by newlines."""
        return self.hexdigest("\n".join(fields).encode("ascii"))


def load_secret(path):
    """(HmacKey or None, status text): the host's secret from a root-only file of 64 hex digits."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None, ("no secret file %s: deploy the agent with `central deploy` or "
                      "scripts/deploy-agent.sh" % path)
    except OSError as e:
        return None, "cannot read the secret file %s: %s" % (path, e.strerror or e)
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            return None, "the secret file %s is not a regular file" % path
        if st.st_uid not in (0, os.geteuid()):
            return None, "the secret file %s is owned by uid %d, not root" % (path, st.st_uid)
        if st.st_mode & 0o077:
            return None, ("the secret file %s has mode %03o: group and others must have no "
                          "access (chmod 600)" % (path, stat_mod.S_IMODE(st.st_mode)))
        data = os.read(fd, 256)
    finally:
        os.close(fd)
    text = data.decode("ascii", "replace").strip()
    if not SECRET_RE.match(text):
        return None, "the secret file %s does not hold 64 lowercase hex digits" % path
    return HmacKey(bytes.fromhex(text)), "file %s" % path


def _new_nonce():
    return "%032x" % int.from_bytes(os.urandom(16), "big")


def _proc_net_key(family, addr):
    """How /proc/net/tcp{,6} prints an address: native-endian 32-bit words in hex, then the port."""
    packed = socket.inet_pton(family, addr[0])
    words = struct.unpack("=%dI" % (len(packed) // 4), packed)
    return "".join("%08X" % w for w in words) + ":%04X" % addr[1]


def _proc_net_candidates(family, first, second):
    """(file, key of first, key of second) to look for: an IPv4 socket may also be an IPv6
    socket's v4-mapped address."""
    if family == socket.AF_INET:
        yield "tcp", _proc_net_key(socket.AF_INET, first), _proc_net_key(socket.AF_INET, second)
        first, second = ("::ffff:" + first[0], first[1]), ("::ffff:" + second[0], second[1])
    yield "tcp6", _proc_net_key(socket.AF_INET6, first), _proc_net_key(socket.AF_INET6, second)


def peer_uid(sock, proc="/proc"):
    """The uid owning the other end of a local TCP connection (from /proc/net/tcp{,6}), or None."""
    try:
        peer, local = sock.getpeername(), sock.getsockname()
        candidates = list(_proc_net_candidates(sock.family, peer, local))
    except (OSError, ValueError):
        return None
    for name, want_local, want_remote in candidates:
        try:
            with open(os.path.join(proc, "net", name)) as f:
                next(f, None)
                for line in f:
                    if want_local not in line:
                        continue
                    fields = line.split()
                    if len(fields) > 7 and fields[1] == want_local and fields[2] == want_remote:
                        return int(fields[7])
        except (OSError, ValueError):
            continue
    return None


def port_holder(host, port, proc="/proc"):
    """Who listens on host:port or its wildcard: "uid N (name), pid P (comm)", or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    wild = "::" if family == socket.AF_INET6 else "0.0.0.0"
    keys = set()
    for addr in (host, wild):
        for name, key, _ in _proc_net_candidates(family, (addr, port), (addr, port)):
            keys.add((name, key))
    found = None
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc, "net", name)) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == "0A" and (name, fields[1]) in keys:
                        found = (int(fields[7]), fields[9])
                        break
        except (OSError, ValueError):
            continue
        if found:
            break
    if not found:
        return None
    uid, inode = found
    text = "uid %d (%s)" % (uid, _user_name(uid))
    target = "socket:[%s]" % inode
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(os.path.join(proc, entry, "fd")):
                if os.readlink(os.path.join(proc, entry, "fd", fd)) == target:
                    comm = _read_text(os.path.join(proc, entry, "comm"), 64).strip()
                    return text + ", pid %s (%s)" % (entry, inert(comm))
        except OSError:
            continue
    return text


_UNSAFE_RE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e"
                        "\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]")


def _escape_char(match):
    ch = match.group(0)
    if ch == "\\":
        return "\\\\"
    return "\\x%02x" % ord(ch) if ord(ch) <= 0xFF else "\\u%04x" % ord(ch)


def inert(text, limit=500):
    """Text from the host made safe for a log line: control, bidi and zero-width characters
    (and the backslash) escaped, cut to limit characters."""
    text = str(text)
    cut = len(text) > limit
    return _UNSAFE_RE.sub(_escape_char, text[:limit]) + ("..." if cut else "")


class HostLog(object):
    """Security events to the host's syslog (journal) and the agent's own log (stderr).

    Refusals are rate-limited (a local user must not be able to flood the log by knocking);
    actions are always written.
    """

    BURST = 20
    WINDOW = 60.0
    # A datagram to a syslogd whose queue is full blocks the sender; the agent must never wait
    # on its log (the line is in the agent's own log anyway), so give up after this long.
    SEND_TIMEOUT = 0.1

    def __init__(self, address=DEFAULT_SYSLOG):
        self.address = address
        self._sock = None
        self._lock = threading.Lock()
        self._window_start = 0.0
        self._in_window = 0
        self._dropped = 0

    def _syslog(self, severity, message):
        if not self.address:
            return
        data = ("<%d>central-agent[%d]: %s" % (LOG_AUTHPRIV * 8 + severity, os.getpid(),
                                               message)).encode("utf-8", "replace")
        with self._lock:
            for _ in range(2):  # reconnect once: syslogd may have restarted
                try:
                    if self._sock is None:
                        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                        sock.settimeout(self.SEND_TIMEOUT)
                        try:
                            sock.connect(self.address)
                        except OSError:
                            sock.close()
                            raise
                        self._sock = sock
                    self._sock.send(data[:8192])
                    return
                except socket.timeout:
                    return  # syslogd is not keeping up: dropped here, kept in the agent's log
                except OSError:
                    if self._sock is not None:
                        self._sock.close()
                        self._sock = None

    def event(self, severity, message):
        """Write one line that must not be lost (an action and its result)."""
        log.log(logging.WARNING if severity <= LOG_WARNING else logging.INFO, "%s", message)
        self._syslog(severity, message)

    def refusal(self, message):
        """Write a refusal, at most BURST per WINDOW seconds (then a count of the rest)."""
        now = time.monotonic()
        with self._lock:
            if now - self._window_start > self.WINDOW:
                dropped, self._dropped = self._dropped, 0
                self._window_start, self._in_window = now, 0
            else:
                dropped = 0
            self._in_window += 1
            if self._in_window > self.BURST:
                self._dropped += 1
                return
        if dropped:
            self.event(LOG_WARNING, "%d more refusals in the last minute were not logged" % dropped)
        self.event(LOG_WARNING, message)


def _peer_text(uid):
    return "uid %s (%s)" % (uid, inert(_user_name(uid))) if uid is not None else "an unknown peer"


class Gate(object):
    """The agent's trust boundary: who may connect, which requests are served, the MACs."""

    def __init__(self, secret_path=DEFAULT_SECRET_PATH, central_user=None, host_log=None,
                 proc="/proc"):
        self.secret_path = secret_path
        self.proc = proc
        self.host_log = host_log or HostLog(None)
        self.key, self.key_status = load_secret(secret_path)
        self.allowed_uids = set([0, os.geteuid()])
        self.central_user = central_user
        if central_user:
            try:
                self.allowed_uids.add(pwd.getpwnam(central_user).pw_uid)
            except KeyError:
                log.warning("--central-user %s: no such user on this host; only root may connect",
                            inert(central_user))
        self.hosts = frozenset()

    def bound(self, address):
        """Record the address the server listens on: the only Host header accepted."""
        host, port = address[0], address[1]
        self.hosts = frozenset(["[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)])

    def reload(self):
        """Re-read the secret (SIGHUP)."""
        self.key, self.key_status = load_secret(self.secret_path)
        if self.key is None:
            self.host_log.event(LOG_WARNING, "secret not reloaded, every request is now refused: "
                                + self.key_status)
        else:
            self.host_log.event(LOG_NOTICE, "secret reloaded from " + self.key_status)

    def admit(self, sock):
        """(uid, None) for a peer that may connect, else (uid, why not)."""
        uid = peer_uid(sock, self.proc)
        if uid is None:
            return None, "the owner of the connecting socket cannot be determined"
        if uid not in self.allowed_uids:
            return uid, ("connections from %s are refused: only root and the central's login "
                         "user may use the agent" % _peer_text(uid))
        return uid, None

    def _browser(self, req):
        host = req.headers.get("host")
        if host not in self.hosts:
            return "Host %s is not this agent's address (%s)" % (
                inert(host, 100) if host is not None else "(none)", ", ".join(sorted(self.hosts)))
        if "origin" in req.headers:
            return "requests carrying Origin are refused (a web page cannot use the agent)"
        for name in req.headers:
            if name.startswith("sec-fetch-"):
                return "requests carrying %s are refused (a web page cannot use the agent)" % name
        return None

    def handle(self, conn, req, handler):
        """Answer one request: (status, payload, extra headers, signer or None, keep-alive ok)."""
        why = self._browser(req)
        if why:
            self.host_log.refusal("refused %s %s from %s: %s" % (
                req.method, inert(req.target, 200), _peer_text(conn.peer_uid), why))
            return 403, {"error": "forbidden", "detail": why}, (), None, False
        path = req.path.rstrip("/") or "/"
        if path == "/api/challenge":
            return self._challenge(conn, req)
        header = req.headers.get(AUTH_HEADER.lower())
        if header is None and path == "/api/health" and req.method == "GET":
            return 200, self.public_health(), (), None, True
        key = self.key
        why, seq = self._verify(conn, req, header, key)
        if why:
            self.host_log.refusal("refused %s %s from %s: %s" % (
                req.method, inert(req.target, 200), _peer_text(conn.peer_uid), why))
            return 401, {"error": "unauthenticated", "detail": why}, (), None, False
        conn.seq = seq
        nonce, cnonce, method, target = conn.nonce, conn.cnonce, req.method, req.target

        def sign(status, body):
            return "seq=%d mac=%s" % (seq, key.mac(PROTOCOL + " response", nonce, cnonce, str(seq),
                                                   method, target, str(status), _sha256_hex(body)))

        try:
            status, payload, extra = handler(req)
        except Exception as e:  # still a signed answer: the central must see it is ours
            log.exception("handler failed for %s %s", req.method, inert(req.path, 200))
            status, payload, extra = 500, {"error": "internal", "detail": type(e).__name__}, ()
        return status, payload, extra, sign, True

    def _challenge(self, conn, req):
        if req.method != "GET":
            return 405, {"error": "method_not_allowed", "detail": "use GET"}, [("Allow", "GET")], \
                None, False
        cnonce = req.headers.get(NONCE_HEADER.lower(), "")
        if not NONCE_RE.match(cnonce):
            return 400, {"error": "bad_request", "detail": "%s: must be 32 lowercase hex digits"
                         % NONCE_HEADER}, (), None, False
        key = self.key
        if key is None:
            return 503, {"error": "no_secret", "detail": self.key_status}, (), None, False
        conn.nonce, conn.cnonce, conn.seq = _new_nonce(), cnonce, 0
        proof = "mac=" + key.mac(PROTOCOL + " challenge", conn.nonce, cnonce)
        return 200, {"nonce": conn.nonce, "protocol": PROTOCOL}, [(PROOF_HEADER, proof)], None, True

    def _verify(self, conn, req, header, key):
        if key is None:
            return "this agent has no usable secret (%s)" % self.key_status, None
        if header is None:
            return "%s is missing: every request must be authenticated" % AUTH_HEADER, None
        match = AUTH_RE.match(header)
        if not match:
            return "%s is malformed" % AUTH_HEADER, None
        if conn.nonce is None:
            return "no challenge on this connection: GET /api/challenge first", None
        seq = int(match.group(1))
        if seq <= conn.seq:
            return "sequence number %d is not above %d: a replayed request" % (seq, conn.seq), None
        want = key.mac(PROTOCOL + " request", conn.nonce, conn.cnonce, str(seq), req.method,
                       req.target, _sha256_hex(req.body))
        if not _same(want, match.group(2)):
            return "the request's MAC is wrong (another secret, or a forged request)", None
        return None, seq

    def public_health(self):
        """What /api/health tells a caller without the secret: nothing about the host."""
        return {"status": "ok", "version": VERSION, "sha256": agent_sha256(),
                "python": _python_version(), "protocol": PROTOCOL,
                "auth": "ready" if self.key is not None else self.key_status}


# ---------------------------------------------------------------------------- HTTP

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
           413: "Payload Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}
TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class Request(object):
    """A parsed HTTP request."""

    __slots__ = ("method", "target", "path", "query", "version", "headers", "body", "keep_alive",
                 "peer_uid")

    def __init__(self, method, target, path, query, version, headers, body, keep_alive):
        self.method, self.target, self.path, self.query = method, target, path, query
        self.version, self.headers, self.body, self.keep_alive = version, headers, body, keep_alive
        self.peer_uid = None


class HTTPError(Exception):
    """A request the server answers with an error status and then closes."""

    def __init__(self, status, code, detail):
        Exception.__init__(self, detail)
        self.status, self.code, self.detail = status, code, detail


def parse_request(buf, max_header, max_body):
    """Parse one request from the front of buf.

    Returns (Request, consumed bytes), or None if more bytes are needed; raises HTTPError
    for garbage or limits.
    """
    start = 0
    while buf[start:start + 2] == b"\r\n":
        start += 2
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        if len(buf) - start > max_header:
            raise HTTPError(431, "headers_too_large", "request head exceeds %d bytes" % max_header)
        if b"\n" in buf[start:start + 8192] and not buf[start:start + 16].strip(
                b"\r\n ").split(b" ")[0].isalpha():
            raise HTTPError(400, "bad_request", "malformed request line")
        return None
    if end - start > max_header:
        raise HTTPError(431, "headers_too_large", "request head exceeds %d bytes" % max_header)
    head = bytes(buf[start:end])
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HTTPError(400, "bad_request", "non-ASCII bytes in the request head")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not TOKEN_RE.fullmatch(parts[0]) or not parts[1].startswith("/"):
        raise HTTPError(400, "bad_request", "malformed request line")
    method, target, version = parts
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
        raise HTTPError(400, "bad_request", "control characters in the request target")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/") and re.match(r"^HTTP/\d\.\d$", version):
            raise HTTPError(505, "bad_version", "only HTTP/1.0 and HTTP/1.1 are supported")
        raise HTTPError(400, "bad_request", "malformed request line")
    if len(lines) > 101:
        raise HTTPError(431, "headers_too_large", "more than 100 header lines")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not TOKEN_RE.fullmatch(name):
            raise HTTPError(400, "bad_request", "malformed header line")
        name = name.lower()
        value = value.strip(" \t")
        if name in headers and name == "content-length" and headers[name] != value:
            raise HTTPError(400, "bad_request", "conflicting Content-Length headers")
        headers[name] = value if name not in headers or name == "content-length" \
            else headers[name] + ", " + value
    if "transfer-encoding" in headers:
        raise HTTPError(501, "not_implemented", "Transfer-Encoding is not supported; "
                        "send Content-Length")
    length = 0
    if "content-length" in headers:
        cl = headers["content-length"]
        if not cl.isdigit() or len(cl) > 12:
            raise HTTPError(400, "bad_request", "invalid Content-Length")
        length = int(cl)
        if length > max_body:
            raise HTTPError(413, "body_too_large", "request body exceeds %d bytes" % max_body)
    total = end + 4 + length
    if len(buf) < total:
        return None
    body = bytes(buf[end + 4:total])
    conn_hdr = headers.get("connection", "").lower()
    if version == "HTTP/1.1":
        keep_alive = "close" not in conn_hdr
    else:
        keep_alive = "keep-alive" in conn_hdr
    split = urlsplit(target)
    query = parse_qs(split.query, keep_blank_values=True)
    return Request(method, target, split.path, query, version, headers, body, keep_alive), total


def render_response(status, payload, keep_alive, extra_headers=(), sign=None):
    """Serialise a JSON response with Content-Length (and the agent's MAC when sign is given)."""
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
    head = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Unknown")),
            "Content-Type: application/json", "Content-Length: %d" % len(body),
            "Connection: %s" % ("keep-alive" if keep_alive else "close"),
            "Cache-Control: no-store"]
    for name, value in extra_headers:
        head.append("%s: %s" % (name, value))
    if sign is not None:
        head.append("%s: %s" % (PROOF_HEADER, sign(status, body)))
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class _Conn(object):
    __slots__ = ("sock", "buf", "started", "last", "closed", "peer_uid", "nonce", "cnonce", "seq")

    def __init__(self, sock, now, peer_uid=None):
        self.sock = sock
        self.buf = bytearray()
        self.started = None  # monotonic time the current request's first byte arrived
        self.last = now
        self.closed = False
        self.peer_uid = peer_uid
        self.nonce = None  # the agent's challenge nonce for this connection (hex)
        self.cnonce = None  # the central's nonce sent with the challenge
        self.seq = 0  # the last authenticated sequence number


class Server(object):
    """HTTP/1.1 server: one selector thread does all reading, N workers build answers.

    The selector thread reads bytes into per-connection buffers and enforces deadlines
    (a whole request head+body within request_timeout; idle keep-alive connections closed
    after idle_timeout), so a slow client costs a buffer, never a worker. Complete requests
    go through a bounded queue to a fixed pool of workers; when the queue is full the
    client gets 503. Connections beyond max_connections get 503 and are closed.
    """

    def __init__(self, handler, host="127.0.0.1", port=8083, workers=4, queue_size=32,
                 max_connections=128, request_timeout=10.0, idle_timeout=300.0,
                 send_timeout=10.0, max_header=16384, max_body=65536, gate=None):
        self.handler = handler
        self.gate = gate
        self.workers_n = workers
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.max_header = max_header
        self.max_body = max_body
        self.max_connections = max_connections
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((host, port))
            self.listener.listen(128)
        except Exception:
            self.listener.close()
            raise
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()
        if gate is not None:
            gate.bound(self.address)
        self.queue = queue.Queue(maxsize=queue_size)
        self.conns = set()
        self.lingering = {}  # refused sockets still being read: socket -> deadline
        self.returned = []
        self.returned_lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        self.threads = []

    # --- lifecycle

    def serve_forever(self):
        """Run the selector loop in this thread until shutdown()."""
        for i in range(self.workers_n):
            t = threading.Thread(target=self._worker, name="agent-worker-%d" % i)
            t.daemon = True
            t.start()
            self.threads.append(t)
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        try:
            self._loop()
        finally:
            self._close_all()

    def shutdown(self):
        """Ask the loop to stop (safe from signal handlers and other threads)."""
        self.stopping = True
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass

    def _close_all(self):
        for t in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join(timeout=15)
        for conn in list(self.conns):
            self._close(conn)
        for sock in list(self.lingering):
            self._unlinger(sock)
        try:
            self.sel.close()
        finally:
            self.listener.close()
            os.close(self.wake_r)
            os.close(self.wake_w)

    # --- selector thread

    def _loop(self):
        last_sweep = time.monotonic()
        while not self.stopping:
            events = self.sel.select(0.5)
            now = time.monotonic()
            for key, _ in events:
                if key.data == "listen":
                    self._accept(now)
                elif key.data == "wake":
                    self._drain_wake(now)
                elif isinstance(key.data, tuple):
                    self._linger(key.data[1])
                else:
                    self._read(key.data, now)
            if now - last_sweep >= 0.25:
                self._sweep(now)
                last_sweep = now

    def _accept(self, now):
        for _ in range(64):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("accept failed: %s", e)  # e.g. EMFILE: keep serving others
                return
            if len(self.conns) >= self.max_connections:
                self._refuse(sock, 503, "busy", "too many connections")
                continue
            uid = None
            if self.gate is not None:
                uid, why = self.gate.admit(sock)
                if why:
                    self.gate.host_log.refusal("refused a connection: " + why)
                    self._refuse(sock, 403, "forbidden", why)
                    continue
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            conn = _Conn(sock, now, uid)
            self.conns.add(conn)
            self.sel.register(sock, selectors.EVENT_READ, conn)

    LINGER = 2.0  # seconds a refused connection may take to read its answer
    MAX_LINGERING = 64

    def _refuse(self, sock, status, code, detail):
        try:
            sock.setblocking(False)
            sock.send(render_response(status, {"error": code, "detail": detail}, False))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        # Closing with the client's request unread would send a reset, and the client would
        # lose the answer: read and drop what it sends for a moment, then close.
        if len(self.lingering) >= self.MAX_LINGERING:
            sock.close()
            return
        self.lingering[sock] = time.monotonic() + self.LINGER
        self.sel.register(sock, selectors.EVENT_READ, ("linger", sock))

    def _linger(self, sock):
        try:
            if sock.recv(65536):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._unlinger(sock)

    def _unlinger(self, sock):
        self.lingering.pop(sock, None)
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    def _drain_wake(self, now):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        with self.returned_lock:
            back, self.returned = self.returned, []
        for conn in back:
            if conn.closed:
                self.conns.discard(conn)
                continue
            conn.last = now
            self.sel.register(conn.sock, selectors.EVENT_READ, conn)
            if conn.buf:
                conn.started = now
                self._dispatch(conn, now)

    def _read(self, conn, now):
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        if conn.started is None:
            conn.started = now
        conn.last = now
        conn.buf += data
        self._dispatch(conn, now)

    def _dispatch(self, conn, now):
        try:
            parsed = parse_request(conn.buf, self.max_header, self.max_body)
        except HTTPError as e:
            self._fail(conn, e.status, e.code, e.detail)
            return
        if parsed is None:
            return
        req, used = parsed
        del conn.buf[:used]
        conn.started = now if conn.buf else None
        self.sel.unregister(conn.sock)
        try:
            self.queue.put_nowait((conn, req))
        except queue.Full:
            self._fail(conn, 503, "busy", "all workers are busy; retry shortly", registered=False)

    def _fail(self, conn, status, code, detail, registered=True):
        if registered:
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        self.conns.discard(conn)
        conn.closed = True
        self._refuse(conn.sock, status, code, detail)

    def _close(self, conn):
        if conn.closed:
            return
        conn.closed = True
        self.conns.discard(conn)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _sweep(self, now):
        for sock, deadline in list(self.lingering.items()):
            if now > deadline:
                self._unlinger(sock)
        for conn in list(self.conns):
            try:
                self.sel.get_key(conn.sock)
            except (KeyError, ValueError):
                continue  # with a worker right now
            if conn.started is not None and now - conn.started > self.request_timeout:
                self._fail(conn, 408, "timeout", "request not complete within %.0f s"
                           % self.request_timeout)
            elif conn.started is None and now - conn.last > self.idle_timeout:
                self._close(conn)

    # --- workers

    def _worker(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            conn, req = item
            keep = False
            try:
                keep = self._answer(conn, req)
            except Exception:
                log.exception("worker failed")
            if not keep:
                conn.closed = True
                try:
                    conn.sock.close()
                except OSError:
                    pass
            with self.returned_lock:
                self.returned.append(conn)
            try:
                os.write(self.wake_w, b"x")
            except OSError:
                pass

    def _answer(self, conn, req):
        req.peer_uid = conn.peer_uid
        sign, allowed = None, True
        try:
            if self.gate is None:
                status, payload, extra = self.handler(req)
            else:
                status, payload, extra, sign, allowed = self.gate.handle(conn, req, self.handler)
        except Exception as e:
            log.exception("handler failed for %s %s", req.method, inert(req.path, 200))
            status, payload, extra = 500, {"error": "internal", "detail": type(e).__name__}, ()
        keep = req.keep_alive and allowed and not self.stopping
        data = render_response(status, payload, keep, extra, sign)
        sock = conn.sock
        sock.settimeout(self.send_timeout)
        try:
            sock.sendall(data)
        except OSError:
            return False
        finally:
            try:
                sock.setblocking(False)
            except OSError:
                pass
        return keep


class Agent(object):
    """Routes HTTP requests to a Collector."""

    GET_ROUTES = ("/api/health", "/api/all", "/api/system", "/api/processes",
                  "/api/services", "/api/docker", "/api/inventory", "/api/logs")
    POST_ROUTES = ("/api/actions/kill", "/api/actions/service", "/api/actions/docker")

    def __init__(self, collector, host_log=None):
        self.collector = collector
        self.host_log = host_log or HostLog(None)

    def __call__(self, req):
        path = req.path.rstrip("/") or "/"
        if path in self.GET_ROUTES:
            if req.method != "GET":
                return 405, {"error": "method_not_allowed", "detail": "use GET"}, \
                    [("Allow", "GET")]
            return self.get(path, req.query, req)
        if path in self.POST_ROUTES:
            if req.method != "POST":
                return 405, {"error": "method_not_allowed", "detail": "use POST"}, \
                    [("Allow", "POST")]
            return self.post(path.rsplit("/", 1)[1], req)
        return 404, {"error": "not_found", "detail": "no such endpoint %s" % path[:100]}, ()

    def get(self, path, query, req=None):
        """Serve one GET endpoint (a log read is written to the host's log, as actions are)."""
        c = self.collector
        if path == "/api/logs":
            try:
                status, payload = 200, c.logs(query or {})
            except ActionError as e:
                status, payload = e.status, {"error": e.code, "detail": e.detail}
            what = " ".join("%s=%s" % (k, inert(json.dumps((query or {}).get(k, [None])[-1]), 120))
                            for k in ("unit", "container", "lines") if (query or {}).get(k))
            who = "by %s" % _peer_text(req.peer_uid) if req is not None else "in-process"
            result = ("ok %d lines" % payload["count"]) if status == 200 else "refused %d %s: %s" % (
                status, payload.get("error"), inert(payload.get("detail") or "", 300))
            self.host_log.event(LOG_NOTICE if status == 200 else LOG_WARNING, "logs %s %s -> %s" % (what, who, result))
            return status, payload, ()
        try:
            return 200, endpoint(c, path, query), ()
        except ValueError as e:
            return 400, {"error": "bad_request", "detail": str(e)}, ()

    def post(self, kind, req):
        """Serve one action, and write it with its result to the host's log."""
        status, payload, body = self._act(kind, req)
        self._log_action(kind, req, body, status, payload)
        return status, payload, ()

    def _act(self, kind, req):
        ctype = req.headers.get("content-type")
        # a missing Content-Type is not JSON: a browser's no-cors fetch sends none
        if ctype is None or ctype.split(";")[0].strip().lower() != "application/json":
            return 400, {"error": "bad_request",
                         "detail": "body must be sent with Content-Type: application/json"}, None
        try:
            body = json.loads(req.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return 400, {"error": "bad_request", "detail": "body: not valid JSON"}, None
        if not isinstance(body, dict):
            return 400, {"error": "bad_request", "detail": "body: must be a JSON object"}, None
        try:
            return 200, self.collector.action(kind, body), body
        except ActionError as e:
            return e.status, {"error": e.code, "detail": e.detail}, body

    def _log_action(self, kind, req, body, status, payload):
        what = ["action " + kind]
        if body:
            for field in ("pid", "start_time", "signal", "unit", "container", "verb"):
                if field in body:
                    what.append("%s=%s" % (field, inert(json.dumps(body[field]), 120)))
            if "requested_by" in body:
                what.append("requested_by=%s" % inert(json.dumps(body["requested_by"]), 80))
        who = "by %s" % _peer_text(req.peer_uid)
        if status == 200:
            result = "%s exit_status=%s: %s" % ("ok" if payload.get("ok") else "failed",
                                                payload.get("exit_status"),
                                                inert(payload.get("output") or "", 300))
        else:
            result = "refused %d %s: %s" % (status, payload.get("error"),
                                            inert(payload.get("detail") or "", 300))
        self.host_log.event(LOG_NOTICE if status == 200 else LOG_WARNING,
                            "%s %s -> %s" % (" ".join(what), who, result))


def endpoint(collector, path, query=None):
    """The document of a GET endpoint (raises ValueError for a bad query parameter)."""
    query = query or {}
    if path == "/api/health":
        return collector.health()
    if path == "/api/all":
        return collector.all()
    if path == "/api/system":
        return collector.system()
    if path == "/api/processes":
        sort = (query.get("sort") or ["cpu"])[-1]
        if sort not in ("cpu", "memory", "pid", "name"):
            raise ValueError("sort: must be one of cpu, memory, pid, name")
        limit = (query.get("limit") or [None])[-1]
        if limit is not None:
            if not limit.isdigit() or not 1 <= int(limit) <= 100000:
                raise ValueError("limit: must be an integer from 1 to 100000")
            limit = int(limit)
        return collector.processes(sort, limit)
    if path == "/api/services":
        return collector.services()
    if path == "/api/docker":
        return collector.docker()
    if path == "/api/inventory":
        return collector.inventory()
    raise KeyError(path)


# ---------------------------------------------------------------------------- CLI

def _is_loopback(host):
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser():
    """The command-line parser."""
    import argparse
    p = argparse.ArgumentParser(prog="agent.py", description="central monitoring agent")
    p.add_argument("--listen", default="127.0.0.1",
                   help="loopback address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8083, help="TCP port (default 8083)")
    p.add_argument("--policy", default=DEFAULT_POLICY_PATH,
                   help="action policy file (default %s)" % DEFAULT_POLICY_PATH)
    p.add_argument("--secret-file", default=DEFAULT_SECRET_PATH,
                   help="the host's secret shared with the central, 64 hex digits in a "
                        "root-only file; re-read on SIGHUP (default %s)" % DEFAULT_SECRET_PATH)
    p.add_argument("--central-user", metavar="USER",
                   help="the central's login user on this host: its connections are "
                        "accepted besides root's")
    p.add_argument("--syslog-socket", default=DEFAULT_SYSLOG, help=argparse.SUPPRESS)
    p.add_argument("--once", metavar="PATH", help="print one endpoint's JSON and exit")
    p.add_argument("--proc", default="/proc", help=argparse.SUPPRESS)
    p.add_argument("--sys", default="/sys", help=argparse.SUPPRESS)
    p.add_argument("--docker-socket", default=DEFAULT_DOCKER_SOCKET,
                   help="Docker Engine API socket (default %s)" % DEFAULT_DOCKER_SOCKET)
    p.add_argument("--systemctl", default=None, help="systemctl binary (default: from PATH)")
    p.add_argument("--workers", type=int, default=4, help="worker threads (default 4)")
    p.add_argument("--max-connections", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--request-timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    p.add_argument("--idle-timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version="central-agent " + VERSION)
    return p


def _tune_malloc():
    """Keep glibc from giving each worker thread its own malloc arena (RSS creep).

    With one arena per thread, every worker's JSON buffers and /proc reads stay resident
    in its own heap; one shared arena keeps the agent's RSS flat. Also hand back what the
    start-up left free. A no-op where glibc or ctypes is missing.
    """
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.mallopt(-8, 1)  # M_ARENA_MAX
        libc.malloc_trim(0)
    except Exception:  # best effort only
        pass


def main(argv=None):
    """Entry point: serve, or print one endpoint with --once."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys_mod.stderr,
                        format="%(asctime)s central-agent %(levelname)s %(message)s")
    collector = Collector(args.proc, args.sys, args.policy, docker_socket=args.docker_socket,
                          systemctl=args.systemctl)
    if args.once:
        path = urlsplit(args.once)
        if path.path not in Agent.GET_ROUTES:
            sys_mod.stderr.write("agent.py: --once needs one of %s\n" % ", ".join(Agent.GET_ROUTES))
            return 2
        if path.path in ("/api/all", "/api/system"):
            time.sleep(0.25)  # so rates cover a real interval
            if path.path == "/api/system":
                collector.system()
                time.sleep(0.25)
        try:
            doc = endpoint(collector, path.path, parse_qs(path.query))
        except ValueError as e:
            sys_mod.stderr.write("agent.py: %s\n" % e)
            return 2
        sys_mod.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return 0
    if not _is_loopback(args.listen):
        sys_mod.stderr.write("agent.py: refusing to listen on %s: the agent binds a loopback "
                             "address only (the central reaches it through SSH)\n" % args.listen)
        return 2
    host = "127.0.0.1" if args.listen == "localhost" else args.listen
    host_log = HostLog(args.syslog_socket)
    gate = Gate(args.secret_file, args.central_user, host_log, args.proc)
    try:
        server = Server(Agent(collector, host_log), host, args.port, workers=max(1, args.workers),
                        max_connections=args.max_connections,
                        request_timeout=args.request_timeout, idle_timeout=args.idle_timeout,
                        gate=gate)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            holder = port_holder(host, args.port, args.proc)
            host_log.event(LOG_WARNING, (
                "refusing to start: port %d on %s is already taken by another process%s. The "
                "central never polls whatever holds this port (it cannot prove it holds this "
                "host's secret) and reports the host as agent_impostor; stop that process and "
                "the agent starts again" % (args.port, host, " (%s)" % holder if holder else "")))
        else:
            host_log.event(LOG_WARNING, "cannot listen on %s:%d: %s"
                           % (host, args.port, e.strerror or e))
        return 1

    def stop(signum, frame):
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: gate.reload())
    _tune_malloc()
    log.info("listening on %s:%d (version %s, policy: %s, secret: %s)", server.address[0],
             server.address[1], VERSION, collector.policy()[1], gate.key_status)
    if gate.key is None:
        host_log.event(LOG_WARNING, "no usable secret, every request but /api/health is refused: "
                       + gate.key_status)
    server.serve_forever()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys_mod.exit(main())
