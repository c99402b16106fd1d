"""How long the non-root test command takes: `scripts/test.sh --unit`'s pytest run, timed.

Runs the unit selection (the markers scripts/test.sh uses) once per --workers value and prints
wall time, CPU time of pytest and everything it started (getrusage of the children), the
count line and the machine's load before and after. Run from the repository root:

    .venv/bin/python bench/bench_unit.py                  # in one process
    .venv/bin/python bench/bench_unit.py --workers 2
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def unit_markers() -> str:
    """The marker expression scripts/test.sh --unit passes to pytest."""
    text = (ROOT / "scripts" / "test.sh").read_text()
    no_root = re.search(r'^NO_ROOT_MARKERS="([^"]+)"', text, re.M).group(1)
    return re.search(r'^UNIT_MARKERS="([^"]+)"', text, re.M).group(1).replace("$NO_ROOT_MARKERS", no_root)


def run(workers: str) -> dict:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", unit_markers()]
    if workers != "0":
        argv += ["-n", workers]
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = res.stdout.strip().splitlines()
    return {
        "workers": workers,
        "wall": wall,
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "load": (load_before, os.getloadavg()[0]),
        "result": lines[-1] if lines else res.stderr[-200:],
        "rc": res.returncode,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", action="append", help="pytest-xdist -n value; 0 = no xdist (repeatable)")
    args = p.parse_args()
    rows = [run(w) for w in (args.workers or ["0"])]
    print(f"cores: {os.cpu_count()}\n")
    print("| xdist workers | wall s | CPU s (pytest + children) | load 1-min before/after | result |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['load'][0]:.1f} / {r['load'][1]:.1f} | {r['result']} |"
        )
    if any(r["rc"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
