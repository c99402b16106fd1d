"""A loopback farm of N Prometheus scrape targets: one asyncio process, N listening ports.

Every port on 127.0.0.1 answers GET /metrics (HTTP/1.1 keep-alive) with a captured
node_exporter body (bench/data/node_exporter-metrics.txt), gzip-compressed when the request
accepts it, as node_exporter itself answers Prometheus. So that the scraper does not store one
constant value per series (which its chunk encoding would make nearly free), the farm holds
--variants copies of the body with every sample value shifted by the copy's index, and each
connection answers them in turn. All copies are built and compressed at start: a scrape costs
the farm one write.

Run: python3 bench/metricsfarm.py --body FILE --targets N [--variants 8]
Prints {"pid": P, "control": PORT, "ports": [...]} as its first stdout line, then serves until
SIGTERM. GET /count on the control port answers {"served": total /metrics answers so far,
"targets": how many targets answered at least one}.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import os
import resource
import signal
import sys

HEAD = ("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        "Content-Length: {n}\r\n{enc}\r\n")


def variants(body: bytes, k: int) -> list[bytes]:
    """k copies of a text-format body, copy i with every finite sample value plus i."""
    lines = body.decode().split("\n")
    out = []
    for i in range(k):
        copy = []
        for line in lines:
            if line and not line.startswith("#") and i:
                series, _, value = line.rpartition(" ")
                try:
                    v = float(value)
                except ValueError:
                    copy.append(line)
                    continue
                if math.isfinite(v):
                    line = f"{series} {v + i:.17g}"
            copy.append(line)
        out.append("\n".join(copy).encode())
    return out


def answers(bodies: list[bytes]) -> dict[bool, list[bytes]]:
    """The complete HTTP answers, plain (False) and gzip (True), for each body."""
    plain = [HEAD.format(n=len(b), enc="").encode() + b for b in bodies]
    gz = []
    for b in bodies:
        z = gzip.compress(b, 6)
        gz.append(HEAD.format(n=len(z), enc="Content-Encoding: gzip\r\n").encode() + z)
    return {False: plain, True: gz}


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class Farm:
    def __init__(self, ans: dict[bool, list[bytes]]):
        self.answers = ans
        self.served = 0
        self.ports_served: set[int] = set()  # targets answered at least once


class Target(asyncio.Protocol):
    """One scrape connection: answers each complete request head with the next body copy."""

    def __init__(self, farm: Farm):
        self.farm = farm
        self.buf = b""
        self.n = 0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def data_received(self, data):
        self.buf += data
        while True:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                if len(self.buf) > 65536:
                    self.transport.close()
                return
            self.buf = rest
            if not head.startswith(b"GET /metrics"):
                self.transport.write(NOT_FOUND)
                continue
            lower = head.lower()
            gz = b"accept-encoding:" in lower and b"gzip" in lower.split(b"accept-encoding:", 1)[1].split(b"\r\n", 1)[0]
            copies = self.farm.answers[gz]
            self.transport.write(copies[self.n % len(copies)])
            self.n += 1
            self.farm.served += 1
            self.farm.ports_served.add(self.port)


class Control(asyncio.Protocol):
    def __init__(self, farm: Farm):
        self.farm = farm

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        body = json.dumps({"served": self.farm.served, "targets": len(self.farm.ports_served)}).encode()
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.transport.close()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--body", required=True, help="a captured node_exporter /metrics body")
    p.add_argument("--targets", type=int, required=True)
    p.add_argument("--variants", type=int, default=8)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with open(args.body, "rb") as f:
        farm = Farm(answers(variants(f.read(), max(1, args.variants))))
    loop = asyncio.get_running_loop()
    control = await loop.create_server(lambda: Control(farm), "127.0.0.1", 0)
    servers = [await loop.create_server(lambda: Target(farm), "127.0.0.1", 0, backlog=16)
               for _ in range(args.targets)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print(json.dumps({"pid": os.getpid(), "control": control.sockets[0].getsockname()[1], "ports": ports}), flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for s in servers + [control]:
        s.close()
    print(json.dumps({"served": farm.served}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
