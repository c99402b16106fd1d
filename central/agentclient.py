"""HTTP/1.1 to the agent over an SSH direct-tcpip channel, kept open between polls.

Deliberately small: the agent always answers with Content-Length, so the client needs no
chunked decoding. Everything the host sends is bounded (header size, body size) and any
surprise closes the channel, so the next request starts from a clean one.

Every channel starts with the agent's challenge and every request is signed with the
server's secret; every answer's proof is checked before its body is used
(central.agentauth, docs/agent-protocol.md). Whatever cannot prove it holds the secret is
AGENT_IMPOSTOR and gets nothing more; a server whose secret the central does not have is
AGENT_NEEDS_REDEPLOY and its agent is not contacted.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import asyncssh

from .agentauth import AgentSession
from .model import (
    AGENT_DOWN, AGENT_ERROR, AGENT_NEEDS_REDEPLOY, BAD_PAYLOAD, TIMEOUT, UNREACHABLE, PollError, Server,
)
from .failures import classify
from .serverlog import server_log

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
_READ = 65536

#: how a client finds a server's agent secret (None: the central has none for it)
SecretSource = Callable[[Server], Awaitable["str | None"]]


async def no_secret(server: Server) -> None:
    """The secret source of a pool nobody gave one: no server has a secret."""
    return None


class AgentClient:
    """Requests to one server's agent, one at a time, over a reused, authenticated channel."""

    def __init__(self, pool, server: Server, max_bytes: int, secret: SecretSource | None = None):
        self.pool = pool
        self.server = server
        self.max_bytes = max_bytes
        # read at each channel open, so a secret a deploy stored in the meantime is used
        self.secret = secret or getattr(pool, "agent_secret", None) or no_secret
        self._session: AgentSession | None = None
        self._reader: asyncssh.SSHReader | None = None
        self._writer: asyncssh.SSHWriter | None = None
        self._buf = bytearray()
        self._lock = asyncio.Lock()
        self.log = server_log(log, server.name)
        self.channels_opened = 0
        self._connecting = False  # waiting for the SSH connection (a timeout then means unreachable)
        self._conn: asyncssh.SSHClientConnection | None = None  # the connection the channel is on

    def close(self) -> None:
        """Drop the channel (the connection stays)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - closing a broken channel may fail; it's gone either way
                pass
        self._reader = self._writer = None
        self._session = None
        self._buf = bytearray()

    async def _open(self) -> None:
        # Not reset in a `finally`: the request's timeout cancels this await, and request()
        # must still see that it was waiting for SSH (unreachable, not an agent timeout).
        self._connecting = True
        conn = await self.pool.connection(self.server)
        self._connecting = False
        self._conn = conn
        secret = await self.secret(self.server)
        if secret is None:
            raise PollError(AGENT_NEEDS_REDEPLOY, f"the central has no agent secret for {self.server.name}, so its "
                                                  f"agent is not asked anything: run `central deploy {self.server.name}` "
                                                  "(or `central server secret`)")
        try:
            self._reader, self._writer = await conn.open_connection("127.0.0.1", self.server.agent_port)
        except asyncssh.ChannelOpenError as exc:
            if exc.code == asyncssh.OPEN_CONNECT_FAILED:
                raise PollError(AGENT_DOWN, f"nothing listens on the host's 127.0.0.1:{self.server.agent_port} ({exc.reason})") from None
            if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
                raise PollError(AGENT_DOWN, f"sshd refused forwarding to 127.0.0.1:{self.server.agent_port}: check AllowTcpForwarding and the key's permitopen ({exc.reason})") from None
            raise PollError(AGENT_DOWN, f"cannot open a channel to the agent: {exc.reason}") from None
        except (OSError, asyncssh.Error) as exc:
            self.pool.failed(self.server)
            raise classify(exc) from None
        self._buf = bytearray()
        self.channels_opened += 1
        await self._challenge(secret)

    async def _challenge(self, secret: str) -> None:
        """Open the channel's authentication: the agent must prove it holds the secret."""
        session = AgentSession(secret)
        self._writer.write(session.challenge_request(self._host_header))
        try:
            status, headers = await self._read_head()
        except _Closed:
            raise PollError(AGENT_DOWN, "the agent closed the connection without answering") from None
        data = await self._read_body(headers)
        session.accept_challenge(status, headers, data)
        if headers.get("connection", "").lower() == "close":
            raise PollError(AGENT_DOWN, "the agent closed the channel after its challenge")
        self._session = session

    async def request(self, method: str, path: str, body: object = None, *, timeout: float) -> tuple[int, bytes]:
        """Send one request, return (status, body bytes). Raises a classified PollError."""
        async with self._lock:
            waits = 0
            handshake_waited = False
            while True:
                self._connecting = False
                try:
                    # asyncio.timeout, not wait_for: wait_for wraps the request in a new Task on
                    # every poll (about twice the event-loop cost per call, measured in bench/).
                    async with asyncio.timeout(timeout):
                        return await self._request(method, path, body)
                except TimeoutError:
                    self.close()
                    if not self._connecting:
                        raise PollError(TIMEOUT, f"the agent did not answer {method} {path} within {timeout:g}s") from None
                    self._connecting = False
                    # The connect was still waiting for one of the central's own connect slots
                    # (a fleet connecting at a start): nothing was asked of the host yet, so
                    # that is no failure of it. Ask again, with the whole timeout, once the
                    # connect is on the wire (a slot for the TCP connect, then one for the
                    # handshake: at most one wait for each).
                    if waits < 2 and await self.pool.wait_queued(self.server):
                        waits += 1
                        continue
                    # The host has spoken SSH and the handshake goes on (slowly, on the central's
                    # side when the fleet connects at a start): ask once it is done, with the
                    # whole timeout; ssh.connect_timeout bounds the wait, a failed handshake is
                    # the outcome.
                    if not handshake_waited and await self.pool.wait_handshake(self.server):
                        handshake_waited = True
                        continue
                    # no SSH session yet: the host is not answering (a stopped machine whose
                    # address still sits in the neighbour cache swallows SYNs), not the agent
                    phase = {"tcp": " (its TCP connect unanswered)", "ssh": " (its SSH handshake unfinished)"}.get(
                        self.pool.connect_phase(self.server), "")
                    raise PollError(UNREACHABLE, f"no SSH connection to {self.server.host}:{self.server.port} "
                                                 f"within {timeout:g}s{phase}") from None
                except PollError as err:
                    self.close()
                    raise self._unless_ssh_lost(err) from None
                except (OSError, asyncssh.Error, asyncio.IncompleteReadError) as exc:
                    self.close()
                    raise self._unless_ssh_lost(PollError(AGENT_DOWN, f"the agent channel broke: {exc}")) from None

    def _unless_ssh_lost(self, err: PollError) -> PollError:
        """err, unless the SSH connection itself is gone: AGENT_DOWN means sshd answered and the
        agent did not. When the transport broke (a killed sshd, a stopped machine, keepalives
        unanswered across a partition) asyncssh ends the channel too, and fails a channel
        being opened with OPEN_CONNECT_FAILED "SSH connection closed": that is UNREACHABLE."""
        conn = self._conn
        if err.reason != AGENT_DOWN or conn is None or not conn.is_closed():
            return err
        self.pool.failed(self.server)
        return PollError(UNREACHABLE, f"the SSH connection to {self.server.host}:{self.server.port} was lost "
                                      f"({err.message})")

    async def request_json(self, method: str, path: str, body: object = None, *, timeout: float) -> tuple[int, object]:
        """Like request, with the body decoded as JSON (BAD_PAYLOAD if it is not)."""
        status, data = await self.request(method, path, body, timeout=timeout)
        try:
            return status, json.loads(data)
        except (ValueError, RecursionError):
            raise PollError(BAD_PAYLOAD, f"{method} {path}: the agent's answer is not JSON") from None

    @property
    def _host_header(self) -> str:
        return f"127.0.0.1:{self.server.agent_port}"

    def _send(self, method: str, path: str, payload: bytes) -> None:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self._host_header}\r\nAccept: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nX-Central-Auth: {self._session.sign(method, path, payload)}\r\n")
        if payload:
            head += "Content-Type: application/json\r\n"
        self._writer.write(head.encode() + b"\r\n" + payload)

    async def _request(self, method: str, path: str, body: object) -> tuple[int, bytes]:
        fresh = self._writer is None
        if fresh:
            await self._open()
        payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            self._send(method, path, payload)
            status, headers = await self._read_head()
        except (_Closed, BrokenPipeError):
            # BrokenPipeError: the channel was closed by the host before this write (asyncssh
            # refuses to send on it), so the request never left; _Closed: closed before answering.
            if fresh:
                raise PollError(AGENT_DOWN, "the agent closed the connection without answering") from None
            # A kept channel the agent closed while idle: retry once on a new one.
            self.close()
            await self._open()
            self._send(method, path, payload)
            try:
                status, headers = await self._read_head()
            except _Closed:
                raise PollError(AGENT_DOWN, "the agent closed the connection without answering") from None
        data = await self._read_body(headers)
        session = self._session
        if headers.get("connection", "").lower() == "close":
            self.close()
        # nothing of the answer is used before the agent's proof on it is checked
        session.verify(method, path, status, headers, data)
        if status >= 500:
            raise PollError(AGENT_ERROR, f"the agent answered {status}: {_error_text(data)}")
        return status, data

    async def _read_body(self, headers: dict) -> bytes:
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            raise PollError(BAD_PAYLOAD, "the agent's answer has no valid Content-Length")
        n = int(length)
        if n > self.max_bytes:
            raise PollError(BAD_PAYLOAD, f"the agent's answer is {n} bytes, over the {self.max_bytes}-byte limit")
        return await self._read_exactly(n)

    async def _fill(self) -> None:
        chunk = await self._reader.read(_READ)
        if not chunk:
            raise _Closed()
        self._buf.extend(chunk)

    async def _read_head(self) -> tuple[int, dict]:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buf) > MAX_HEADER_BYTES:
                raise PollError(BAD_PAYLOAD, "the agent's answer headers are too long or not HTTP")
            if not self._buf.startswith(b"HTTP/"[: len(self._buf)]):
                raise PollError(BAD_PAYLOAD, "the agent's answer is not HTTP")
            await self._fill()
        head = bytes(self._buf[:end])
        del self._buf[:end + 4]
        try:
            lines = head.decode("latin-1").split("\r\n")
            version, code, *_ = lines[0].split(" ", 2)
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise ValueError
            status = int(code)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        except ValueError:
            raise PollError(BAD_PAYLOAD, "the agent's answer is not HTTP") from None
        return status, headers

    async def _read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            try:
                await self._fill()
            except _Closed:
                raise PollError(BAD_PAYLOAD, f"the agent's answer ended after {len(self._buf)} of {n} bytes") from None
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data


class _Closed(Exception):
    """The agent closed the channel."""


def _error_text(data: bytes) -> str:
    try:
        doc = json.loads(data)
        if isinstance(doc, dict):
            return str(doc.get("detail") or doc.get("error"))[:300]
    except (ValueError, RecursionError):
        pass
    return data[:200].decode("utf-8", "replace")

