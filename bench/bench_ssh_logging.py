"""In-process A/B of the central's checks in front of asyncssh's logging (central/sshpool.py
`_quiet_asyncssh_logging`): the central's own CPU (its thread's) per agent request on kept
channels, and per connect, with asyncssh's unchecked functions and with the checks, alternated
in one process so that the machine's drift (this VM's figures move 50 % between runs) cancels.

Usage: PYTHONPATH=$PWD python3 bench/bench_ssh_logging.py [--hosts 50] [--rounds 10]
Prints the median and best of each side; the farm and agent are bench_core's.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))

import asyncssh  # noqa: E402

import central.sshpool as sshpool  # noqa: E402 - installs the checks
from bench_connect import farm_for_central  # noqa: E402
from bench_core import stop  # noqa: E402
from central.config import SSHConfig  # noqa: E402
from central.model import Server  # noqa: E402

CHECKED = (asyncssh.logging.SSHLogger.log, asyncssh.packet.SSHPacketLogger._log_packet)
UNCHECKED = tuple(f._central_unchecked for f in CHECKED)  # what each check wraps


def use(functions) -> None:
    asyncssh.logging.SSHLogger.log, asyncssh.packet.SSHPacketLogger._log_packet = functions


def summary(values: list[float]) -> str:
    values = sorted(values)
    return f"median {values[len(values) // 2] * 1e6:.0f} µs, best {values[0] * 1e6:.0f} µs"


async def run(args, key: Path, port: int, host_key: str, secret: str) -> None:
    pool = sshpool.SSHPool(SSHConfig(ciphers=("aes128-gcm@openssh.com",)), str(key))

    async def secret_of(server):
        return secret

    pool.agent_secret = secret_of
    next_id = [0]

    def servers(n: int) -> list[Server]:
        out = [Server(id=next_id[0] + i + 1, name=f"h{next_id[0] + i}", host="127.0.0.1", port=port, host_key=host_key)
               for i in range(n)]
        next_id[0] += n
        return out

    kept = servers(args.hosts)
    await asyncio.gather(*(pool.connection(s) for s in kept))
    clients = [pool.agent_client(s, 16 << 20) for s in kept]
    await asyncio.gather(*(c.request("GET", "/api/all", timeout=30) for c in clients))
    request = {"unchecked": [], "checked": []}
    connect = {"unchecked": [], "checked": []}
    for rnd in range(args.rounds):
        order = (("unchecked", UNCHECKED), ("checked", CHECKED))
        for name, functions in (order if rnd % 2 else order[::-1]):
            use(functions)
            t = time.thread_time()
            for _ in range(20):
                await asyncio.gather(*(c.request("GET", "/api/all", timeout=30) for c in clients))
            request[name].append((time.thread_time() - t) / (20 * len(clients)))
            fresh = servers(50)
            t = time.thread_time()
            await asyncio.gather(*(pool.connection(s) for s in fresh))
            connect[name].append((time.thread_time() - t) / len(fresh))
    use(CHECKED)
    for name in ("unchecked", "checked"):
        print(f"{name:9}: per request {summary(request[name])}; per connect {summary(connect[name])}")
    await pool.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=50, help="kept channels the requests go over")
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    work, key, secret, agent, farm, port, host_key = farm_for_central("bench-ssh-logging-")
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        asyncio.run(run(args, key, port, host_key, secret))
    finally:
        stop(farm)
        stop(agent)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
