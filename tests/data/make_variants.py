#!/usr/bin/env python3
"""Write the hand-made /proc + /sys trees used by the collector tests.

Usage: python3 tests/data/make_variants.py   (rewrites tests/data/lxc-v1, lxc-v2, lxcfs)

Each tree shows a container whose /proc reports the host's figures (a 64 GiB, 16-CPU
host) while its cgroup limits it, so the agent must read the limits.
"""

import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 1 << 30

HOST_MEMINFO = """MemTotal:       67108864 kB
MemFree:        33554432 kB
MemAvailable:   50331648 kB
Buffers:          524288 kB
Cached:         16777216 kB
SwapTotal:       8388608 kB
SwapFree:        8388608 kB
"""
HOST_STAT = "cpu  1000 0 500 98000 100 0 0 0 0 0\n" + "".join(
    "cpu%d 60 0 30 6100 6 0 0 0 0 0\n" % i for i in range(16)) + "intr 0\nctxt 0\nbtime 0\n"
COMMON_PROC = {
    "stat": HOST_STAT,
    "loadavg": "0.50 0.40 0.30 1/120 4242\n",
    "uptime": "1000.00 15000.00\n",
    "diskstats": "",
    "net/dev": "Inter-|\n face |\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n"
               "  eth0: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0\n",
    "sys/kernel/hostname": "web1\n",
    "sys/kernel/osrelease": "6.1.0-test\n",
    "cpuinfo": "processor\t: 0\nmodel name\t: Test CPU @ 3.00GHz\n\n",
    "1/stat": "1 (systemd) S 0 1 1 0 -1 4194560 1 0 0 0 5 5 0 0 20 0 1 0 10 1000 100 0\n",
    "1/cmdline": "/sbin/init\0",
}
V1_MOUNTS = """/dev/vda1 / ext4 rw,relatime 0 0
proc /proc proc rw 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,memory 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,nosuid,cpuset 0 0
"""
V2_MOUNTS = """/dev/vda1 / ext4 rw,relatime 0 0
proc /proc proc rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nsdelegate 0 0
"""


def write(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def tree(name, proc_files, sys_files):
    root = os.path.join(HERE, name)
    if os.path.exists(root):
        shutil.rmtree(root)
    for rel, text in dict(COMMON_PROC, **proc_files).items():
        write(root, "proc/" + rel, text)
    for rel, text in sys_files.items():
        write(root, "sys/" + rel, text)
    write(root, "sys/devices/system/cpu/online", "0-15\n")
    write(root, "etc/os-release", 'ID=debian\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n')


def main():
    # LXC with cgroup v1, no cgroup namespace: the container is /lxc.payload.web1 in each
    # hierarchy; limits 2 GiB, 1.5 CPUs (quota), cpuset 0-3.
    cg = "fs/cgroup/"
    c = "/lxc.payload.web1"
    tree("lxc-v1", {
        "meminfo": HOST_MEMINFO,
        "self/mounts": V1_MOUNTS, "1/cgroup":
            "3:cpuset:%s\n2:cpu,cpuacct:%s\n1:memory:%s\n0::/\n" % (c, c, c),
    }, {
        cg + "memory/memory.limit_in_bytes": "9223372036854771712\n",
        cg + "memory/memory.usage_in_bytes": "%d\n" % (40 * GIB),
        cg + "memory" + c + "/memory.limit_in_bytes": "%d\n" % (2 * GIB),
        cg + "memory" + c + "/memory.usage_in_bytes": "%d\n" % GIB,
        cg + "memory" + c + "/memory.stat": "cache 400000000\ninactive_file 1\n"
                                            "total_inactive_file %d\n" % (GIB // 4),
        cg + "memory" + c + "/memory.memsw.limit_in_bytes": "%d\n" % (3 * GIB),
        cg + "memory" + c + "/memory.memsw.usage_in_bytes": "%d\n" % (GIB + GIB // 2),
        cg + "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        cg + "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        cg + "cpu,cpuacct" + c + "/cpu.cfs_quota_us": "150000\n",
        cg + "cpu,cpuacct" + c + "/cpu.cfs_period_us": "100000\n",
        cg + "cpu,cpuacct" + c + "/cpuacct.usage": "5000000000\n",
        cg + "cpu,cpuacct" + c + "/cpuacct.stat": "user 300\nsystem 200\n",
        cg + "cpuset/cpuset.cpus": "0-15\n",
        cg + "cpuset" + c + "/cpuset.cpus": "0-3\n",
    })
    # LXC with cgroup v2 and a cgroup namespace: /proc/1/cgroup says /init.scope and the
    # container's root is the mount root; limits 1 GiB, 2 CPUs (cpu.max), cpuset 0-7.
    tree("lxc-v2", {
        "meminfo": HOST_MEMINFO, "self/mounts": V2_MOUNTS, "1/cgroup": "0::/init.scope\n",
    }, {
        cg + "cgroup.controllers": "cpuset cpu io memory pids\n",
        cg + "memory.max": "%d\n" % GIB,
        cg + "memory.current": "%d\n" % (GIB // 2),
        cg + "memory.stat": "anon 300000000\nfile 200000000\ninactive_file %d\n" % (GIB // 8),
        cg + "memory.swap.max": "%d\n" % (GIB // 2),
        cg + "memory.swap.current": "%d\n" % (GIB // 16),
        cg + "cpu.max": "200000 100000\n",
        cg + "cpuset.cpus.effective": "0-7\n",
        cg + "cpu.stat": "usage_usec 9000000\nuser_usec 6000000\nsystem_usec 3000000\n",
        cg + "init.scope/memory.max": "max\n",
        cg + "init.scope/memory.current": "%d\n" % (GIB // 32),
        cg + "init.scope/cpu.max": "max 100000\n",
    })
    # LXC with LXCFS: /proc/meminfo and /proc/stat are already the container's view (4 GiB,
    # 2 CPUs); the cgroup v2 limits are there too but must not be applied twice.
    lxcfs_mounts = V2_MOUNTS + "".join(
        "lxcfs /proc/%s fuse.lxcfs rw,nosuid,nodev,relatime,user_id=0,group_id=0,"
        "allow_other 0 0\n" % f for f in ("cpuinfo", "diskstats", "loadavg", "meminfo",
                                          "stat", "swaps", "uptime"))
    tree("lxcfs", {
        "meminfo": "MemTotal:        4194304 kB\nMemFree:         3145728 kB\n"
                   "MemAvailable:    3670016 kB\nSwapTotal:             0 kB\n"
                   "SwapFree:              0 kB\n",
        "stat": "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\n"
                "cpu1 50 0 50 350 50 0 0 0 0 0\nintr 0\n",
        "self/mounts": lxcfs_mounts, "1/cgroup": "0::/init.scope\n",
    }, {
        cg + "cgroup.controllers": "cpuset cpu io memory pids\n",
        cg + "memory.max": "%d\n" % (4 * GIB),
        cg + "memory.current": "%d\n" % GIB,
        cg + "cpu.max": "200000 100000\n",
        cg + "cpuset.cpus.effective": "0-1\n",
        cg + "init.scope/memory.max": "max\n",
    })


if __name__ == "__main__":
    main()
