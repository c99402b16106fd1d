"""The SSH side of a stand-in host, in-process: an asyncssh server class that routes
direct-tcpip channels, and a channel that speaks HTTP/1.1 keep-alive with an async handler,
behind the agent's authentication (AgentAuth: the real agent's own trust code).

Used by the test harness (tests/sshharness.py) and the benchmark's loopback host farm
(bench/loopfarm.py); it needs asyncssh and the repository's agent/agent.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import asyncssh

from central.bundled import agent_module


@dataclass
class Request:
    """One HTTP request read from a channel."""

    method: str
    path: str
    headers: dict
    body: bytes
    line: bytes  # the request line as sent, e.g. b"GET /api/all HTTP/1.1"
    at: float = field(default_factory=time.time)  # when the host read it (wall clock)

    @property
    def target(self) -> str:
        """The request target as sent (path and query)."""
        return self.path


class ThenClose(bytes):
    """An answer after which the host closes the channel (an agent closing an idle keep-alive
    connection, or restarting), although the answer said keep-alive."""


class Unproven(bytes):
    """An answer sent without the agent's proof, on an authenticated channel (what another
    process answering in the agent's place would send)."""


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


class _ChannelAuth:
    """One channel's authentication state on the agent's side (what the agent keeps per connection)."""

    __slots__ = ("nonce", "cnonce", "seq", "peer_uid")

    def __init__(self):
        self.nonce = self.cnonce = None
        self.seq = 0
        self.peer_uid = 0  # sshd forwards as root: the agent's peer-owner check passes


class AgentAuth:
    """The agent's side of the authentication (docs/agent-protocol.md) for a stand-in host.

    Done by the real agent's own code (agent/agent.py's Gate: the challenge, each request's MAC
    and sequence number, the refusal of browser-shaped requests, the proof on every answer),
    with the host's secret: whatever passes here would pass the agent, and the central's
    client is checked against the agent's implementation, not a copy of its own.
    """

    def __init__(self, secret: str, agent_port: int = 8083):
        agent = agent_module()
        self._render = agent.render_response
        self._request = agent.Request
        # no secret file: the key is set below (a stand-in host has no /etc/central-agent)
        self.gate = agent.Gate(secret_path="/nonexistent/central-agent-secret", host_log=agent.HostLog(None))
        self.gate.key = agent.HmacKey(bytes.fromhex(secret))
        self.gate.key_status = "the stand-in host's secret"
        self.gate.bound(("127.0.0.1", agent_port))

    def channel(self) -> _ChannelAuth:
        """The state of a new channel (no challenge yet)."""
        return _ChannelAuth()

    def admit(self, state: _ChannelAuth, request: Request):
        """(None, sign) when the request is authenticated (sign(status, body) is the proof for
        its answer); (answer bytes, None) when the agent answers it itself: the challenge, a
        refusal, the public health."""
        version = request.line.decode("latin-1").rpartition(" ")[2]
        req = self._request(request.method, request.path, request.path.split("?", 1)[0], {}, version,
                            request.headers, request.body, "close" not in request.headers.get("connection", ""))
        # Gate.handle runs the agent's handler itself; here the scripted handler answers once the
        # gate has admitted the request, so it is given a placeholder and only the signer is kept.
        status, payload, extra, sign, keep = self.gate.handle(state, req, lambda _req: (200, None, ()))
        if sign is not None:
            return None, sign
        answer = self._render(status, payload, keep, extra)
        return (answer if keep else ThenClose(answer)), None


def with_proof(answer: bytes, sign: Callable[[int, bytes], str]) -> bytes:
    """The answer with the agent's X-Agent-Auth proof over its status and body added."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep or isinstance(answer, Unproven):
        return answer  # an unfinished head, or meant to go without a proof: sent as scripted
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return answer  # not an HTTP answer: sent as scripted
    proved = head + f"\r\nX-Agent-Auth: {sign(status, body)}".encode() + sep + body
    return ThenClose(proved) if isinstance(answer, ThenClose) else proved


class HttpChannel(asyncssh.SSHTCPSession):
    """One direct-tcpip channel speaking HTTP/1.1 keep-alive: requests are answered in order by
    an async handler, which returns the answer's bytes, or None to close the channel instead.
    With an AgentAuth the channel authenticates as the agent does: the handler sees only the
    requests the agent would serve, and each of its answers carries the agent's proof."""

    def __init__(self, handler: Handler, on_close: Callable[[], None] | None = None, auth: AgentAuth | None = None):
        self.handler = handler
        self.on_close = on_close
        self.auth = auth
        self.auth_state = auth.channel() if auth is not None else None
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

    async def _answer(self, request: Request) -> bytes | None:
        if self.auth is None:
            return await self.handler(request)
        answer, sign = self.auth.admit(self.auth_state, request)
        if sign is None:
            return answer
        answer = await self.handler(request)
        return None if answer is None else with_proof(answer, sign)

    async def _serve(self, request: Request):
        try:
            answer = await self._answer(request)
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

    def __init__(self, route: Callable, on_connect: Callable | None = None, auth_delay: float = 0.0):
        self.route = route
        self.on_connect = on_connect
        self.auth_delay = auth_delay  # seconds the handshake stalls after the key exchange (a slow host)

    def connection_made(self, conn):
        if self.on_connect is not None:
            self.on_connect(conn)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        return self.route(dest_host, dest_port)

    def begin_auth(self, username):
        if not self.auth_delay:
            return True

        async def slow() -> bool:
            await asyncio.sleep(self.auth_delay)
            return True

        return slow()


def public_key_line(key: asyncssh.SSHKey) -> str:
    """'type base64' of a key, as the central pins it."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])
