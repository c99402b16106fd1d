"""How long `central serve` takes to stop: SIGTERM to the process gone, on a big database.

    python3 bench/bench_stop.py [--db-dir /tmp/central-bench10k] [--code DIR ...] [--runs 2] [--serve 20]

The database is one bench/bench_api.py generated (e.g. `bench_api.py --servers 10000 --db-dir
/tmp/central-bench10k --raw-hours 2 --minute-days 0.5 --hour-days 7`): its servers point at a
refused loopback port, so the central is in a fleet-wide outage (connecting, backing off,
storing failures, alerts open). For each run and each --code checkout (alternating), `central
serve` runs --serve seconds, gets SIGTERM, and the time until it has exited is measured; what it
logged about the stop (outcomes not written) is printed. Only processes it started are signalled.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one(db_dir: Path, code: str, serve: float, backoff_max: str) -> tuple[float, list[str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CENTRAL_DATA_DIR": str(db_dir), "CENTRAL_CONFIG": "", "PYTHONPATH": code,
           "CENTRAL_SSH_BACKOFF_MAX": backoff_max, "CENTRAL_SSH_CONNECT_TIMEOUT": "3s"}
    with tempfile.TemporaryFile("w+") as out:
        # cwd: `-m central` puts the working directory first on sys.path, ahead of PYTHONPATH
        proc = subprocess.Popen([sys.executable, "-m", "central", "serve", "--port", str(port)], env=env,
                                cwd=code, stdout=out, stderr=subprocess.STDOUT)
        try:
            time.sleep(serve)  # the central runs (connects, fails, stores) for this long
            t0 = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
            took = time.perf_counter() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        lines = [line.strip()[:200] for line in out if "not written" in line or "could not be written" in line]
    return took, lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db-dir", default="/tmp/central-bench10k")
    p.add_argument("--code", action="append", help="checkout(s) to run (default: this one)")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--serve", type=float, default=20.0, help="seconds served before SIGTERM")
    p.add_argument("--backoff-max", default="30s", help="ssh.backoff_max (the default is 30s)")
    args = p.parse_args()
    db_dir = Path(args.db_dir)
    if not (db_dir / "generated").exists():
        sys.exit(f"no generated database in {db_dir}: run bench/bench_api.py --db-dir {db_dir} first")
    codes = args.code or [str(ROOT)]
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    results: dict[str, list[float]] = {c: [] for c in codes}
    for _ in range(args.runs):
        for code in codes:
            took, lines = one(db_dir, code, args.serve, args.backoff_max)
            results[code].append(took)
            print(f"{code}: SIGTERM to exit {took:.2f} s" + "".join(f"\n    {line}" for line in lines), flush=True)
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    print("\n| code | SIGTERM to exit, each run |")
    print("|---|---|")
    for code, times in results.items():
        print(f"| {code} | {', '.join(f'{t:.2f} s' for t in times)} |")


if __name__ == "__main__":
    main()
