"""HTTP/1.1 to the agent over an SSH direct-tcpip channel, kept open between polls.

Deliberately small: the agent always answers with Content-Length, so the client needs no
chunked decoding. Everything the host sends is bounded (header size, body size) and any
surprise closes the channel, so the next request starts from a clean one.
"""
from __future__ import annotations

import asyncio
import json
import logging

import asyncssh

from .model import AGENT_DOWN, AGENT_ERROR, BAD_PAYLOAD, TIMEOUT, UNREACHABLE, PollError, Server
from .failures import classify
from .serverlog import server_log

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
_READ = 65536


class AgentClient:
    """Requests to one server's agent, one at a time, over a reused channel."""

    def __init__(self, pool, server: Server, max_bytes: int):
        self.pool = pool
        self.server = server
        self.max_bytes = max_bytes
        self._reader: asyncssh.SSHReader | None = None
        self._writer: asyncssh.SSHWriter | None = None
        self._buf = bytearray()
        self._lock = asyncio.Lock()
        self.log = server_log(log, server.name)
        self.channels_opened = 0
        self._connecting = False  # waiting for the SSH connection (a timeout then means unreachable)

    def close(self) -> None:
        """Drop the channel (the connection stays)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - closing a broken channel may fail; it's gone either way
                pass
        self._reader = self._writer = None
        self._buf = bytearray()

    async def _open(self) -> None:
        # Not reset in a `finally`: the request's timeout cancels this await, and request()
        # must still see that it was waiting for SSH (unreachable, not an agent timeout).
        self._connecting = True
        conn = await self.pool.connection(self.server)
        self._connecting = False
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

    async def request(self, method: str, path: str, body: object = None, *, timeout: float) -> tuple[int, bytes]:
        """Send one request, return (status, body bytes). Raises a classified PollError."""
        async with self._lock:
            self._connecting = False
            try:
                # asyncio.timeout, not wait_for: wait_for wraps the request in a new Task on
                # every poll (about twice the event-loop cost per call, measured in bench/).
                async with asyncio.timeout(timeout):
                    return await self._request(method, path, body)
            except TimeoutError:
                self.close()
                if self._connecting:
                    # no SSH session yet: the host is not answering (a stopped machine whose
                    # address still sits in the neighbour cache swallows SYNs), not the agent
                    self._connecting = False
                    raise PollError(UNREACHABLE, f"no SSH connection to {self.server.host}:{self.server.port} "
                                                 f"within {timeout:g}s") from None
                raise PollError(TIMEOUT, f"the agent did not answer {method} {path} within {timeout:g}s") from None
            except PollError:
                self.close()
                raise
            except (OSError, asyncssh.Error, asyncio.IncompleteReadError) as exc:
                self.close()
                raise PollError(AGENT_DOWN, f"the agent channel broke: {exc}") from None

    async def request_json(self, method: str, path: str, body: object = None, *, timeout: float) -> tuple[int, object]:
        """Like request, with the body decoded as JSON (BAD_PAYLOAD if it is not)."""
        status, data = await self.request(method, path, body, timeout=timeout)
        try:
            return status, json.loads(data)
        except (ValueError, RecursionError):
            raise PollError(BAD_PAYLOAD, f"{method} {path}: the agent's answer is not JSON") from None

    async def _request(self, method: str, path: str, body: object) -> tuple[int, bytes]:
        fresh = self._writer is None
        if fresh:
            await self._open()
        payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n")
        if payload:
            head += "Content-Type: application/json\r\n"
        try:
            self._writer.write(head.encode() + b"\r\n" + payload)
            status, headers = await self._read_head()
        except (_Closed, BrokenPipeError):
            # BrokenPipeError: the channel was closed by the host before this write (asyncssh
            # refuses to send on it), so the request never left; _Closed: closed before answering.
            if fresh:
                raise PollError(AGENT_DOWN, "the agent closed the connection without answering") from None
            # A kept channel the agent closed while idle: retry once on a new one.
            self.close()
            await self._open()
            self._writer.write(head.encode() + b"\r\n" + payload)
            try:
                status, headers = await self._read_head()
            except _Closed:
                raise PollError(AGENT_DOWN, "the agent closed the connection without answering") from None
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            raise PollError(BAD_PAYLOAD, "the agent's answer has no valid Content-Length")
        n = int(length)
        if n > self.max_bytes:
            raise PollError(BAD_PAYLOAD, f"the agent's answer is {n} bytes, over the {self.max_bytes}-byte limit")
        data = await self._read_exactly(n)
        if headers.get("connection", "").lower() == "close":
            self.close()
        if status >= 500:
            raise PollError(AGENT_ERROR, f"the agent answered {status}: {_error_text(data)}")
        return status, data

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

