"""Connects N hosts of the loopback farm with the central's real SSHPool, nothing else running in
the process, and reports the central's CPU and wall time per connect (and optionally the first
authenticated agent request of each): what the connect phase of a fresh fleet costs before any
poll, storage or alert work.

Usage: PYTHONPATH=$PWD python3 bench/bench_connect.py [--hosts 2000] [--request] [--profile py-spy]
       [--code CHECKOUT] [--max-connects 50]

The farm (bench/loopfarm.py) and a real agent run as their own processes, as in bench_core.py;
the connecting side runs in a child process (`--code` chooses its central package) so that only
its CPU is counted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))


async def child(spec: dict) -> None:
    """Runs in the child: connect every host, print one JSON line of figures."""
    import gc

    from central.config import SSHConfig
    from central.model import Server
    from central.sshpool import SSHPool

    ssh = SSHConfig(ciphers=tuple(spec["ciphers"]), max_concurrent_connects=spec["max_connects"])
    pool = SSHPool(ssh, spec["key_path"])
    secret = spec["secret"]

    async def secret_of(server):
        return secret

    pool.agent_secret = secret_of
    servers = [Server(id=i + 1, name=f"h{i:05d}", host="127.0.0.1", port=spec["port"], host_key=spec["host_key"])
               for i in range(spec["hosts"])]
    gc.freeze()
    failed: dict[str, int] = {}

    async def one(server):
        try:
            await pool.connection(server)
            if spec["request"]:
                client = pool.agent_client(server, 16 << 20)
                status, _ = await client.request("GET", "/api/all", timeout=60)
                if status != 200:
                    raise RuntimeError(f"status {status}")
        except Exception as exc:  # noqa: BLE001 - counted by kind
            key = f"{type(exc).__name__}: {exc}"[:80]
            failed[key] = failed.get(key, 0) + 1

    print(json.dumps({"event": "start", "pid": os.getpid()}), flush=True)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    await asyncio.gather(*(one(s) for s in servers))
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(json.dumps({"event": "result", "wall_s": t1 - t0, "cpu_s": cpu, "connects": pool.connects,
                      "failed": failed, "cpu_ms_per_connect": cpu / max(1, pool.connects) * 1000,
                      "maxrss_mb": r1.ru_maxrss / 1024}), flush=True)
    await pool.close()


def farm_for_central(prefix: str):
    """A work directory with the central's key and the agent secret, a real agent and the
    loopback farm in front of it: (work, key path, secret, agent, farm, farm port, host key line)."""
    from bench_core import start_agent, start_farm
    from central.service import ensure_key_pair

    work = Path(tempfile.mkdtemp(prefix=prefix))
    (work / "no-policy.json").write_text("{}")
    secret = os.urandom(32).hex()
    (work / "agent-secret").write_text(secret)
    os.chmod(work / "agent-secret", 0o600)
    key = work / "id_ed25519"
    ensure_key_pair(key)
    agent, agent_port = start_agent(work)
    farm, port, host_key = start_farm(work, Path(str(key) + ".pub"), [agent_port], 1.0)
    return work, key, secret, agent, farm, port, host_key


def main() -> None:
    from bench_core import machine_busy, proc_cpu, stop

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=2000)
    p.add_argument("--request", action="store_true", help="also each host's first authenticated GET /api/all")
    p.add_argument("--max-connects", type=int, default=50)
    p.add_argument("--cipher", default="aes128-gcm@openssh.com")
    p.add_argument("--profile", choices=["py-spy"], default=None)
    p.add_argument("--code", help="the central package the connecting side imports (a checkout's root)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        asyncio.run(child(json.loads(Path(args.child).read_text())))
        return
    work, key, secret, agent, farm, port, host_key = farm_for_central("bench-connect-")
    try:
        spec = {"hosts": args.hosts, "request": args.request, "max_connects": args.max_connects,
                "ciphers": [args.cipher], "key_path": str(key), "port": port, "host_key": host_key,
                "secret": secret}
        (work / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, PYTHONPATH=args.code or str(REPO))
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(work / "spec.json")],
                                stdout=subprocess.PIPE, text=True, env=env)
        spy = None
        result = None
        for line in proc.stdout:
            msg = json.loads(line)
            if msg["event"] == "start":
                f0, m0 = proc_cpu([farm.pid, agent.pid]), machine_busy()
                if args.profile:
                    spy = subprocess.Popen(["py-spy", "record", "-p", str(msg["pid"]), "-t", "-r", "200", "-f", "raw",
                                            "-o", str(work / "py-spy.txt")],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            elif msg["event"] == "result":
                f1, m1 = proc_cpu([farm.pid, agent.pid]), machine_busy()
                result = msg
        proc.wait()
        if spy is not None:
            spy.wait()
        if result is None:
            raise SystemExit("the connecting process failed")
        result["farm_cpu_ms_per_connect"] = (f1 - f0) / max(1, result["connects"]) * 1000
        result["machine_busy_cores"] = (m1[0] - m0[0]) / (m1[1] - m0[1]) * os.cpu_count()
        result["load_average"] = os.getloadavg()
        print(json.dumps(result, indent=1))
        if args.profile:
            print(f"py-spy: {work / 'py-spy.txt'}")
    finally:
        stop(farm)
        stop(agent)
        if not args.profile:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
