"""What /proc says of processes, for the benches: CPU seconds, peak memory, children.

Imports nothing of central, so the central driver (bench/central_driver.py, run on another
checkout's code with --code) and the orchestrators share it.
"""
from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (field 3 on: state, ppid, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def proc_cpu(pids) -> float:
    """User + system CPU seconds of these processes (vanished ones count 0)."""
    total = 0.0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError):
            pass
    return total


def family(pid: int) -> list[int]:
    """The process and its children (a central's poll workers)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    kids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return [pid, *kids]


def peak_rss_kb(pids) -> list[int]:
    """Each process's peak resident set (VmHWM), kB (vanished ones left out)."""
    out = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            out.append(next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM:")))
        except (OSError, StopIteration):
            pass
    return out
