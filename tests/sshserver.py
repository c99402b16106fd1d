"""The SSH side of a stand-in host, in-process: an asyncssh server class that routes
direct-tcpip channels, and a channel that speaks HTTP/1.1 keep-alive with an async handler.

Used by the test harness (tests/sshharness.py) and the benchmark's loopback host farm
(bench/loopfarm.py); it needs only asyncssh.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import asyncssh


@dataclass
class Request:
    """One HTTP request read from a channel."""

    method: str
    path: str
    headers: dict
    body: bytes
    line: bytes  # the request line as sent, e.g. b"GET /api/all HTTP/1.1"
    at: float = field(default_factory=time.time)  # when the host read it (wall clock)


class ThenClose(bytes):
    """An answer after which the host closes the channel (an agent closing an idle keep-alive
    connection, or restarting), although the answer said keep-alive."""


Handler = Callable[[Request], Awaitable["bytes | None"]]

MAX_REQUEST_HEAD = 64 * 1024


def http_answer(
    status: int = 200,
    body: bytes | str | dict | list = b"",
    *,
    keep_alive: bool = True,
    headers: dict | None = None,
    content_type: str = "application/json",
) -> bytes:
    """The bytes of an HTTP/1.1 answer the way the agent sends them (always with Content-Length)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body, separators=(",", ":"))
    if isinstance(body, str):
        body = body.encode()
    lines = [
        f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HttpChannel(asyncssh.SSHTCPSession):
    """One direct-tcpip channel speaking HTTP/1.1 keep-alive: requests are answered in order by
    an async handler, which returns the answer's bytes, or None to close the channel instead."""

    def __init__(self, handler: Handler, on_close: Callable[[], None] | None = None):
        self.handler = handler
        self.on_close = on_close
        self.buf = b""
        self.chan = None
        self.busy = False
        self.task: asyncio.Task | None = None

    def connection_made(self, chan):
        self.chan = chan

    def connection_lost(self, exc):
        if self.task is not None:
            self.task.cancel()
        if self.on_close is not None:
            self.on_close()

    def data_received(self, data, datatype):
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self):
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_REQUEST_HEAD:
                self.chan.close()
            return
        head = self.buf[:end].split(b"\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        length = int(headers.get("content-length") or 0)
        if len(self.buf) < end + 4 + length:
            return  # the body is still on its way
        body = self.buf[end + 4 : end + 4 + length]
        self.buf = self.buf[end + 4 + length :]
        method, _, rest = head[0].decode("latin-1").partition(" ")
        request = Request(method, rest.rsplit(" ", 1)[0], headers, body, head[0])
        self.busy = True
        self.task = asyncio.ensure_future(self._serve(request))

    async def _serve(self, request: Request):
        try:
            answer = await self.handler(request)
        except (OSError, asyncssh.Error):
            answer = None
        if answer is None:
            self.chan.close()
            return
        try:
            self.chan.write(answer)
        except (OSError, asyncssh.Error):
            return  # the client is gone
        if isinstance(answer, ThenClose):
            self.chan.close()
            return
        self.busy = False
        self._next()


class HostServer(asyncssh.SSHServer):
    """An sshd stand-in: ``route(dest_host, dest_port)`` decides each direct-tcpip channel (an
    SSHTCPSession, False for "connection refused", or raise asyncssh.ChannelOpenError)."""

    def __init__(self, route: Callable, on_connect: Callable | None = None):
        self.route = route
        self.on_connect = on_connect

    def connection_made(self, conn):
        if self.on_connect is not None:
            self.on_connect(conn)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        return self.route(dest_host, dest_port)


def public_key_line(key: asyncssh.SSHKey) -> str:
    """'type base64' of a key, as the central pins it."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])
