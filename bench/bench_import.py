"""Benchmark: `central server import` of a 1,000-host Ansible inventory with host keys from a
known_hosts file (half of its entries hashed, as `ssh-keygen -H` writes them).

    python3 bench/bench_import.py [--hosts 1000] [--runs 3]

Per run, on a fresh database: parse the inventory and the known_hosts file, plan the import
(dry run: every host matched against known_hosts, nothing contacted), apply it (1,000 servers
stored), and plan again (the idempotent re-run: every row `skip`). Host keys are real ed25519
public keys made with `cryptography`; addresses are in 10.200.0.0/16 and nothing connects to
them (a known_hosts import never contacts a host). Prints one JSON line per run and a summary.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from central import fleet, fleetfile  # noqa: E402
from central.config import load_config  # noqa: E402
from central.service import Central, ensure_key_pair  # noqa: E402


def key_line() -> str:
    pub = Ed25519PrivateKey.generate().public_key()
    return pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def hashed(name: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def write_files(directory: Path, n: int) -> tuple[Path, Path]:
    inventory, known = [], []
    groups = ("web", "db", "cache", "batch")
    for i in range(n):
        address = f"10.200.{i // 250}.{i % 250 + 1}"
        inventory.append((groups[i % len(groups)], f"node{i:04d} ansible_host={address} ansible_user=deploy"))
        known.append(f"{hashed(address) if i % 2 else address} {key_line()}")
    text = ""
    for g in groups:
        text += f"[{g}]\n" + "".join(line + "\n" for grp, line in inventory if grp == g) + "\n"
    text += "[prod:children]\n" + "".join(g + "\n" for g in groups)
    inv = directory / "inventory.ini"
    inv.write_text(text)
    kh = directory / "known_hosts"
    kh.write_text("\n".join(known) + "\n")
    return inv, kh


async def one_run(directory: Path, inv: Path, kh: Path) -> dict:
    data = directory / "data"
    shutil.rmtree(data, ignore_errors=True)
    cfg = load_config(env={"CENTRAL_DATA_DIR": str(data)})
    cfg = dataclasses.replace(cfg, poll=dataclasses.replace(cfg.poll, local=False))
    data.mkdir(parents=True)
    ensure_key_pair(cfg.key_path)
    central = await Central.open(cfg)
    try:
        t0 = time.perf_counter()
        entries = fleet.read_fleet_file(str(inv))
        known = fleet.read_known_hosts([str(kh)])
        t1 = time.perf_counter()
        plan = await fleet.plan_import(central, entries, known_hosts=known)
        t2 = time.perf_counter()
        assert plan.summary()["add"] == len(entries), plan.summary()
        result = await fleet.apply_import(central, plan)
        t3 = time.perf_counter()
        again = await fleet.plan_import(central, entries, known_hosts=known)
        t4 = time.perf_counter()
        assert again.summary()["skip"] == len(entries), again.summary()
        assert result["added"] == len(entries)
        return {"hosts": len(entries), "parse_s": round(t1 - t0, 3), "dry_run_s": round(t2 - t1, 3),
                "apply_s": round(t3 - t2, 3), "rerun_dry_run_s": round(t4 - t3, 3),
                "total_s": round(t3 - t0, 3)}
    finally:
        await central.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="central-bench-import-"))
    try:
        inv, kh = write_files(directory, args.hosts)
        runs = []
        for _ in range(args.runs):
            runs.append(asyncio.run(one_run(directory, inv, kh)))
            print(json.dumps(runs[-1]))
        best = {k: min(r[k] for r in runs) for k in runs[0] if k != "hosts"}
        print(json.dumps({"best_of": args.runs, "loadavg": os.getloadavg(), **best}))
        # the matching alone, for the record: hashed entries cost one HMAC per line per host
        known = fleetfile.parse_known_hosts(str(kh), kh.read_text())
        t0 = time.perf_counter()
        fleetfile.trusted_keys(known, "10.200.3.250", 22)
        print(json.dumps({"one_lookup_ms": round((time.perf_counter() - t0) * 1000, 2)}))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
