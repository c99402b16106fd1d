#!/usr/bin/env python3
"""Capture the /proc, /sys and /etc files the agent reads into a tree for tests.

Usage: python3 tests/data/capture.py tests/data/host [--processes 12]

Process command lines are replaced by the process name and /proc/1/environ is not
copied, so a capture never carries arguments or environment secrets.
"""

import argparse
import os
import shutil

PROC_FILES = ["stat", "meminfo", "loadavg", "uptime", "diskstats", "net/dev", "net/if_inet6",
              "self/mounts", "self/cgroup", "1/cgroup", "sys/kernel/hostname",
              "sys/kernel/osrelease"]
CGROUP_FILES = ["memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat",
                "memory.memsw.limit_in_bytes", "memory.memsw.usage_in_bytes",
                "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpuacct.usage", "cpuacct.stat",
                "cpuset.cpus", "cpuset.effective_cpus", "memory.max", "memory.current",
                "memory.swap.max", "memory.swap.current", "cpu.max", "cpu.stat",
                "cpuset.cpus.effective", "cgroup.controllers"]


def copy(src, dst, limit=65536):
    """Copy at most limit bytes of a pseudo-file; skip what cannot be read."""
    try:
        with open(src, "rb") as f:
            data = f.read(limit)
    except OSError:
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "wb") as f:
        f.write(data)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--processes", type=int, default=12)
    args = p.parse_args()
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    proc, sys_, etc = (os.path.join(args.out, d) for d in ("proc", "sys", "etc"))
    for rel in PROC_FILES:
        copy("/proc/" + rel, os.path.join(proc, rel))
    copy("/proc/cpuinfo", os.path.join(proc, "cpuinfo"), 16384)
    pids = sorted(int(d) for d in os.listdir("/proc") if d.isdigit())[:args.processes]
    for pid in pids:
        base = "/proc/%d" % pid
        try:
            with open(base + "/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        os.makedirs(os.path.join(proc, str(pid)), exist_ok=True)
        with open(os.path.join(proc, str(pid), "stat"), "wb") as f:
            f.write(stat)
        comm = stat[stat.find(b"(") + 1:stat.rfind(b")")]
        with open(os.path.join(proc, str(pid), "cmdline"), "wb") as f:
            f.write(comm + b"\0")
    for rel in ["devices/system/cpu/online"]:
        copy("/sys/" + rel, os.path.join(sys_, rel))
    for name in os.listdir("/sys/block"):
        for rel in ("size", "removable", "queue/rotational", "device/model"):
            copy("/sys/block/%s/%s" % (name, rel), os.path.join(sys_, "block", name, rel))
        os.makedirs(os.path.join(sys_, "block", name), exist_ok=True)
    for name in os.listdir("/sys/class/net"):
        for rel in ("address", "mtu"):
            copy("/sys/class/net/%s/%s" % (name, rel), os.path.join(sys_, "class/net", name, rel))
    for root, dirs, files in os.walk("/sys/fs/cgroup"):
        if root.count("/") > 6:
            continue
        for name in files:
            if name in CGROUP_FILES:
                copy(os.path.join(root, name), os.path.join(sys_, root[len("/sys/"):], name))
    copy("/etc/os-release", os.path.join(etc, "os-release"))


if __name__ == "__main__":
    main()
