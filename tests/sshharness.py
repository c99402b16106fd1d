"""An in-process SSH host for fast tests of the SSH side, without root or sshd.

An asyncssh server on 127.0.0.1, port 0, in the test's own event loop (the way asyncssh's own
tests run theirs: ``asyncssh.listen(port=0, ...)`` with keys generated for the test), standing
in for a host's sshd: its own host key, the central's key authorized (with the same
``restrict,permitopen=...`` options the central asks for on real hosts), and an "agent"
behind its direct-tcpip channels to 127.0.0.1:<agent port>, which the test scripts answer by
answer. The server side itself (``HttpChannel``, ``HostServer``, ``AgentAuth``) is
tests/sshserver.py, which bench/loopfarm.py shares.

Every host authenticates as the agent does (the agent's own code, tests/sshserver.AgentAuth)
with its ``secret``, by default HARNESS_SECRET, which the pools of ``make_pool`` hold: a host
given another secret is a squatter to the central, one given ``secret=None`` an agent from
before authentication. The scripted handler sees only the requests the agent would serve.

Fixtures (loaded from tests/conftest.py):

- ``ssh_host``: factory, ``await ssh_host(agent=handler, authorized=[key path]) -> SSHTestHost``;
  closed when the test ends.
- ``agent_document``: a real agent's /api/all document (the bundled agent's collectors run once
  on this machine).
- ``silent_port``: a TCP port that accepts connections and never says anything (a host whose
  sshd hangs), and ``refused_port``: a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from central.agentauth import new_secret
from central.hosttext import clean
from central.model import Server
from tests.sshserver import (
    AgentAuth,
    Handler,
    HostServer,
    HttpChannel,
    Request,
    ThenClose,
    Unproven,
    http_answer,
    public_key_line,
)

#: the agent secret of every in-process host unless a test gives one, and of make_pool's pools
HARNESS_SECRET = new_secret()

__all__ = [
    "HARNESS_SECRET",
    "AgentAuth",
    "Handler",
    "HostServer",
    "HttpChannel",
    "Request",
    "SSHTestHost",
    "ThenClose",
    "Unproven",
    "agent_client",
    "authorized_line",
    "document_agent",
    "hang",
    "harness_secret",
    "http_answer",
    "make_pool",
    "public_key_line",
    "refuse",
]


async def refuse(request: Request) -> None:
    """An agent handler that closes the channel without answering."""
    return None


async def hang(request: Request) -> bytes:
    """An agent handler that never answers (until the channel closes)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def document_agent(doc: dict, inventory: dict | None = None) -> Handler:
    """An agent handler serving a fixed /api/all document (and /api/health, /api/inventory)."""
    body = json.dumps(doc, separators=(",", ":")).encode()
    health = {
        "status": "ok",
        "version": doc.get("agent", {}).get("version"),
        "sha256": doc.get("agent", {}).get("sha256"),
    }

    async def handler(request: Request) -> bytes:
        if request.path == "/api/all":
            return http_answer(200, body)
        if request.path == "/api/health":
            return http_answer(200, health)
        if request.path == "/api/inventory":
            return http_answer(200, inventory or {"hostname": doc.get("hostname")})
        return http_answer(404, {"error": "not_found"})

    return handler


@dataclass
class SSHTestHost:
    """One in-process host: its sshd stand-in on 127.0.0.1:port and the agent behind it."""

    agent: Handler | None  # None: nothing listens on the agent port
    agent_port: int = 8083
    forwarding: bool = True  # False: every channel is administratively prohibited
    drop_on_connect: bool = False  # True: close every connection as soon as it is accepted
    auth_delay: float = 0.0  # seconds each handshake stalls after its key exchange (a slow host)
    name: str = "h1"
    secret: str | None = HARNESS_SECRET  # the agent's secret; None: an agent that does not authenticate
    host_key: asyncssh.SSHKey = field(default_factory=lambda: asyncssh.generate_private_key("ssh-ed25519"))
    port: int = 0
    connections: list = field(default_factory=list)  # every SSH connection accepted (asyncssh objects)
    connected_at: list = field(default_factory=list)  # time.monotonic() of each, before any auth
    requests: list = field(default_factory=list)  # every Request the agent saw
    channels: int = 0  # agent channels opened
    channels_closed: int = 0  # agent channels fully closed (both sides)
    _acceptor: asyncssh.SSHAcceptor | None = None
    _auth: AgentAuth | None = None

    @property
    def host_key_line(self) -> str:
        """The host key as the central pins it."""
        return public_key_line(self.host_key)

    @property
    def fingerprint(self) -> str:
        """SHA256 fingerprint of the host key."""
        return self.host_key.get_fingerprint("sha256")

    async def start(self, authorized_lines: list[str]) -> "SSHTestHost":
        """Listen on a free port, accepting the given authorized_keys lines."""
        authorized = asyncssh.import_authorized_keys("\n".join(authorized_lines) + "\n")
        self._auth = AgentAuth(self.secret, self.agent_port) if self.secret is not None else None
        self._acceptor = await asyncssh.listen(
            "127.0.0.1",
            self.port,
            family=socket.AF_INET,
            server_factory=lambda: HostServer(self._route, self._connected, self.auth_delay),
            server_host_keys=[self.host_key],
            authorized_client_keys=authorized,
            # no password or keyboard-interactive fallback, like the test sshd
            password_auth=False,
            kbdint_auth=False,
            gss_host=None,
            allow_scp=False,
            x11_forwarding=False,
            agent_forwarding=False,
            keepalive_interval=0,
        )
        self.port = self._acceptor.sockets[0].getsockname()[1]
        return self

    def _connected(self, conn):
        self.connections.append(conn)
        self.connected_at.append(time.monotonic())
        if self.drop_on_connect:
            conn.close()

    def _route(self, dest_host, dest_port):
        if not self.forwarding:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "port forwarding is disabled")
        if dest_host != "127.0.0.1" or dest_port != self.agent_port or self.agent is None:
            return False  # nothing listens there: "connection refused"
        self.channels += 1
        return HttpChannel(self._answer, self._channel_closed, auth=self._auth)

    def _channel_closed(self):
        self.channels_closed += 1

    async def _answer(self, request: Request):
        self.requests.append(request)
        return await self.agent(request)

    def server(self, id: int = 1, **changes) -> Server:
        """A Server record pointing at this host, with its host key pinned."""
        fields = dict(
            id=id,
            name=self.name,
            host="127.0.0.1",
            port=self.port,
            agent_port=self.agent_port,
            host_key=self.host_key_line,
            host_key_fingerprint=self.fingerprint,
        )
        fields.update(changes)
        return Server(**fields)

    def drop_connections(self) -> None:
        """Close every SSH connection from the server side (sshd restarted, network blip)."""
        for conn in self.connections:
            conn.close()

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        self.drop_connections()
        for conn in self.connections:
            await conn.wait_closed()


async def harness_secret(server: Server) -> str:
    """The secret source of make_pool's pools: every server's agent holds HARNESS_SECRET."""
    return HARNESS_SECRET


def make_pool(config, **ssh_changes):
    """The central's SSH pool for config (ssh settings overridden by ssh_changes), holding
    HARNESS_SECRET for every server's agent."""
    import dataclasses

    from central.sshpool import SSHPool

    pool = SSHPool(dataclasses.replace(config.ssh, **ssh_changes), config.key_path)
    pool.agent_secret = harness_secret
    return pool


def agent_client(pool, server: Server, max_bytes: int = 4 * 1024 * 1024):
    """The server's kept agent client from the pool."""
    return pool.agent_client(server, max_bytes)


def authorized_line(public_key_path: str | Path, agent_port: int = 8083, restricted: bool = True) -> str:
    """The authorized_keys line for a central key: by default the central's own restricted line."""
    key = " ".join(Path(str(public_key_path)).read_text().split()[:2])
    if not restricted:
        return key
    from central.service import restricted_key_line

    return restricted_key_line(key, agent_port)


@pytest.fixture
async def ssh_host(config):
    """Factory: ``await ssh_host(agent=handler, authorized=None, **fields)`` -> a started SSHTestHost.

    By default the host authorizes the central's key of the ``config`` fixture, restricted to
    the agent port (permitopen), and its agent closes every channel without answering.
    """
    hosts: list[SSHTestHost] = []

    async def make(agent: Handler = refuse, authorized: list[str] | None = None, **fields) -> SSHTestHost:
        fields.setdefault("name", f"h{len(hosts) + 1}")
        host = SSHTestHost(agent=agent, **fields)
        if authorized is None:
            authorized = [authorized_line(str(config.key_path) + ".pub", host.agent_port)]
        hosts.append(host)
        return await host.start(authorized)

    yield make
    for host in hosts:
        await host.close()


_DOCUMENT: dict = {}


@pytest.fixture
def agent_document() -> dict:
    """A real /api/all document: the bundled agent's collectors, run on this machine once."""
    if not _DOCUMENT:
        from central.bundled import agent_module

        collector = agent_module().Collector()
        collector.all()  # the first document has no CPU figures yet (no earlier counters)
        _DOCUMENT.update(collector.all())
    return json.loads(json.dumps(_DOCUMENT))


def cleaned(value):
    """value with its text cleaned as the central's normaliser cleans it: the one change a real
    document may see (a command line with a newline or a tab in it, say)."""
    if isinstance(value, dict):
        return {clean(k): cleaned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [cleaned(v) for v in value]
    return clean(value) if isinstance(value, str) else value


@pytest.fixture
async def silent_port():
    """A port that accepts TCP connections and never sends a byte (sshd hung, or a tarpit)."""
    held = []

    async def accept(reader, writer):
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
def refused_port() -> int:
    """A port nobody listens on (bound, then released: the kernel answers RST)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
