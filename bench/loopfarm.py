"""A loopback host farm for benchmarks: one asyncssh server standing in for N hosts.

Listens on 127.0.0.1:<free port> with one fixed host key and accepts the central's key. Every
direct-tcpip channel to 127.0.0.1:<agent port> is answered with the bytes of a REAL agent's
answer (agent/agent.py running as its own process): the farm forwards each request path to
the agent and caches the answer for --cache-ttl seconds (one agent cannot compute /api/all
100 times a second; the central's work per poll is the same whatever the agent's cost). The
farm asks the agent for one answer per connection and serves it keep-alive, so the central
keeps its channel, exactly as with a real host.

The farm speaks the agent's authentication with the agent's own code (docs/agent-protocol.md;
tests/sshserver.py's AgentAuth, which the test harness uses too): it fetches from the real
agent with the secret in --secret-file, and answers the central's challenge and proves every
answer with the same secret, per channel and request.

Run: python3 bench/loopfarm.py --host-key K --authorized-keys PUB --agent 127.0.0.1:PORT --secret-file F
Prints {"port": N, "pid": P} as its first stdout line, then serves until SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from central.agentauth import AgentSession  # noqa: E402
from tests.sshserver import AgentAuth, HostServer, HttpChannel, http_answer  # noqa: E402 - the harness's channel


def read_answer(data: bytes) -> tuple[int, dict, bytes]:
    """(status, lower-cased headers, body) of one complete HTTP answer."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def authed_get(host: str, port: int, secret: str, target: str) -> tuple[int, bytes]:
    """One authenticated GET to a real agent (a connection of its own); (status, body)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        session = AgentSession(secret)
        writer.write(session.challenge_request(f"127.0.0.1:{port}"))
        head = await reader.readuntil(b"\r\n\r\n")
        status, headers, _ = read_answer(head)
        body = await reader.readexactly(int(headers["content-length"]))
        session.accept_challenge(status, headers, body)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
                     f"X-Central-Auth: {session.sign('GET', target, b'')}\r\n\r\n".encode())
        status, headers, body = read_answer(await reader.read())
        session.verify("GET", target, status, headers, body)
        return status, body
    finally:
        writer.close()


class Upstream:
    """Fetches answers from the real agent(s), round-robin, with a short single-flight cache."""

    def __init__(self, agents: list[tuple[str, int]], ttl: float, freeze_inventory: bool, secret: str):
        self.agents = agents
        self.secret = secret
        self.ttl = ttl
        self.freeze_inventory = freeze_inventory
        self._inventory_hash: bytes | None = None
        self._next = 0
        self._cache: dict[bytes, tuple[float, bytes]] = {}
        self._inflight: dict[bytes, asyncio.Future] = {}
        self.fetches = 0
        self.served = 0

    async def answer(self, request_line: bytes) -> tuple[int, bytes]:
        """The agent's answer (status, body) to 'GET /path HTTP/1.1'."""
        self.served += 1
        hit = self._cache.get(request_line)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        fut = self._inflight.get(request_line)
        if fut is None:
            fut = self._inflight[request_line] = asyncio.ensure_future(self._fetch(request_line))
            fut.add_done_callback(lambda _f: self._inflight.pop(request_line, None))
        return await asyncio.shield(fut)

    async def _fetch(self, request_line: bytes) -> tuple[int, bytes]:
        host, port = self.agents[self._next % len(self.agents)]
        self._next += 1
        self.fetches += 1
        status, body = await authed_get(host, port, self.secret, request_line.split(b" ")[1].decode())
        if self.freeze_inventory:
            body = self._freeze(body)
        answer = (status, body)
        self._cache[request_line] = (time.monotonic(), answer)
        return answer


    def _freeze(self, body: bytes) -> bytes:
        # The agent's inventory_hash covers the network interfaces, and on a shared test machine
        # other test runs add and remove veths all the time: every host of the farm would then
        # see an "inventory change" at once. Keep the first hash (same length, so
        # Content-Length holds), as on a host whose hardware and network do not change.
        start = body.find(b'"inventory_hash":"')
        if start < 0:
            return body
        start += len(b'"inventory_hash":"')
        end = body.index(b'"', start)
        if self._inventory_hash is None:
            self._inventory_hash = body[start:end]
        if len(self._inventory_hash) != end - start:
            return body
        return body[:start] + self._inventory_hash + body[end:]


def farm_server(upstream: Upstream, auth: AgentAuth, agent_port: int) -> HostServer:
    """Accepts the central's key (via authorized_client_keys) and agent-port channels only."""

    async def answer(request):
        # an OSError from the agent closes the channel, as when a real agent fails
        status, body = await upstream.answer(request.line)
        return http_answer(status, body)

    def route(dest_host, dest_port):
        if dest_host == "127.0.0.1" and dest_port == agent_port:
            return HttpChannel(answer, auth=auth)
        return False

    return HostServer(route)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host-key", required=True)
    p.add_argument("--authorized-keys", required=True)
    p.add_argument("--agent", action="append", required=True, help="HOST:PORT of a real agent (repeatable)")
    p.add_argument("--agent-port", type=int, default=8083, help="the port the central asks for")
    p.add_argument("--cache-ttl", type=float, default=1.0)
    p.add_argument("--live-inventory", action="store_true", help="pass the agent's inventory_hash through unchanged")
    p.add_argument("--secret-file", required=True, help="the agent secret (the real agent's and the farm's)")
    args = p.parse_args()
    with open(args.secret_file) as f:
        secret = f.read().strip()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    agents = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in args.agent]
    upstream = Upstream(agents, args.cache_ttl, not args.live_inventory, secret)
    auth = AgentAuth(secret, args.agent_port)
    server = await asyncssh.create_server(
        lambda: farm_server(upstream, auth, args.agent_port), "127.0.0.1", 0,
        server_host_keys=[args.host_key], authorized_client_keys=args.authorized_keys,
        allow_scp=False, x11_forwarding=False, agent_forwarding=False, keepalive_interval=0,
        # 1000 hosts connect within seconds; no artificial login delay.
        login_timeout=120,
        # one listener stands in for every host's sshd: asyncssh's default accept queue of 100
        # dropped SYNs of a fleet connecting at once (1 s retransmits: 30 of 680 polls that timed
        # out while 10,000 connected said "its TCP connect unanswered"); the kernel caps it at somaxconn
        backlog=4096,
    )
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()
    print(json.dumps({"served": upstream.served, "fetches": upstream.fetches}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
