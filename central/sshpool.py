"""One persistent SSH connection per server, with pinned host keys and classified failures.

Connections open lazily on first use, are kept alive with SSH keepalives, and are reopened
after a failure with exponential backoff and jitter; connect attempts are bounded across
the whole fleet so a mass reconnect does not overwhelm the central.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from .agentclient import AgentClient
from .config import SSHConfig
from .failures import classify
from .model import (AUTH_FAILED, CentralError, Invalid, BASTION_UNREACHABLE, HOST_KEY_MISMATCH, HOST_KEY_UNKNOWN, TIMEOUT, UNREACHABLE,
                    PollError, Server)
from .serverlog import server_log

log = logging.getLogger(__name__)


def _quiet_asyncssh_logging() -> None:
    """Make asyncssh skip a log record below its level before building it.

    asyncssh's SSHLogger.log turns every argument to text (hosts, algorithm lists, bytes) and only
    then asks the logger whether the level is enabled (about a dozen records per connection), and
    every SSH packet sent or received, a poll's too, formats its packet-log line and only then
    finds that packet logging (debug level 3) is off: together about 2-5 % of the central's CPU
    in a fleet's handshakes and polls at the default WARNING level, for nothing. Here the checks
    come first; an enabled record is built and logged exactly as before. Either patch is left
    out if asyncssh renames what it wraps (tests/test_sshpool.py fails then, naming it).
    """
    def log(unchecked):
        def log(self, level, msg, *args, **kwargs):
            if self.isEnabledFor(level):
                unchecked(self, level, msg, *args, **kwargs)
        return log

    def log_packet(unchecked):
        def _log_packet(self, msg, pkttype, pktid, packet, note):
            if self.logger._debug_level >= 3:  # what SSHLogger.packet checks, after the formatting
                unchecked(self, msg, pkttype, pktid, packet, note)
        return _log_packet

    # each check written out: _log_packet runs for every packet, and a generic wrapper there
    # (*args, a check function) cost 234 ns a packet against 63
    _check_first(getattr(asyncssh.logging, "SSHLogger", None), "log", log)
    _check_first(getattr(asyncssh.packet, "SSHPacketLogger", None), "_log_packet", log_packet)


def _check_first(cls, name: str, wrap) -> None:
    """Replace cls.name by wrap(cls.name), once, and not at all if asyncssh no longer has it."""
    unchecked = getattr(cls, name, None)
    if unchecked is None or getattr(unchecked, "_central_checked", False):
        return
    checked = wrap(unchecked)
    checked._central_checked = True
    checked._central_unchecked = unchecked  # for bench/bench_ssh_logging.py's A/B
    checked.__doc__ = unchecked.__doc__
    setattr(cls, name, checked)


_quiet_asyncssh_logging()


def fingerprint(key: asyncssh.SSHKey) -> str:
    """SHA256 fingerprint as ssh-keygen -l prints it."""
    return key.get_fingerprint("sha256")


def public_key_line(key: asyncssh.SSHKey) -> str:
    """The key in OpenSSH 'type base64' form, without a comment."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def load_client_keys(path: str | Path, certificate_path: str = "") -> list:
    """What the central authenticates with: its key, paired with its user certificate when it has
    one (certificate_path, else <path>-cert.pub if that exists, as ssh looks for it)."""
    key = load_client_key(path)
    cert = Path(certificate_path) if certificate_path else Path(str(path) + "-cert.pub")
    if not cert.exists():
        if certificate_path:
            raise PollError(AUTH_FAILED, f"SSH certificate {cert} does not exist")
        return [key]
    try:
        return [(key, asyncssh.read_certificate(str(cert)))]
    except (OSError, asyncssh.KeyImportError) as exc:
        raise PollError(AUTH_FAILED, f"cannot read SSH certificate {cert}: {exc}") from None


def host_authorities(ssh: SSHConfig) -> list:
    """The host CAs the config trusts (ssh.host_ca_file's @cert-authority lines and ssh.host_cas),
    as central.fleetfile.KnownHost lines; Invalid naming the file and line when one is bad."""
    from .fleetfile import parse_known_hosts

    out = []
    if ssh.host_ca_file:
        try:
            text = Path(ssh.host_ca_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise Invalid(f"ssh.host_ca_file: cannot read {ssh.host_ca_file}: {exc}") from None
        out += [k for k in parse_known_hosts(ssh.host_ca_file, text) if k.marker == "cert-authority"]
    if ssh.host_cas:
        out += parse_known_hosts("ssh.host_cas", "".join(f"@cert-authority {line}\n" for line in ssh.host_cas))
    return out


def load_client_key(path: str | Path) -> asyncssh.SSHKey:
    """Read a private key, with a clear error when it is missing or unreadable."""
    try:
        return asyncssh.read_private_key(str(path))
    except FileNotFoundError:
        raise PollError(AUTH_FAILED, f"SSH key {path} does not exist (run `central init`)") from None
    except (OSError, asyncssh.KeyImportError) as exc:
        raise PollError(AUTH_FAILED, f"cannot read SSH key {path}: {exc}") from None


def remember_local_user() -> None:
    """Set LOGNAME once when the environment names no user (a service started without one).

    asyncssh asks getpass.getuser() at every connect, and without LOGNAME, USER, LNAME or
    USERNAME that reads the password database each time (24 us here, far more under load: 2 %
    of the central's CPU while 4,000 hosts connect, bench/bench_core.py with py-spy)."""
    if any(os.environ.get(name) for name in ("LOGNAME", "USER", "LNAME", "USERNAME")):
        return
    try:
        os.environ["LOGNAME"] = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a name: asyncssh will say so at connect, as before
        pass


def connect_options(ssh: SSHConfig) -> dict:
    """asyncssh.connect keyword arguments shared by every connection of the central."""
    return dict(
        connect_timeout=ssh.connect_timeout,
        keepalive_interval=ssh.keepalive_interval,
        keepalive_count_max=ssh.keepalive_count_max,
        encryption_algs=list(ssh.ciphers),
        # The operator's ~/.ssh/config and ssh-agent must not change how the central
        # connects: it uses exactly its own key and the pinned host key.
        config=None,
        agent_path=None,
        preferred_auth="publickey",
        # no X.509 (host keys are pinned or vouched for by OpenSSH CAs): asyncssh then does not
        # look for ~/.ssh/ca-bundle.crt and ~/.ssh/crt at every connect (a third of building its
        # options, which it does per connection)
        x509_trusted_certs=None,
        x509_trusted_cert_paths=None,
    )


#: bastions a connection may pass through (a host behind a bastion behind a bastion)
MAX_BASTIONS = 2


async def fetch_host_key(host: str, port: int, ssh: SSHConfig, tunnel=None) -> asyncssh.SSHKey:
    """The host key a server presents (for trust on first use), directly or through a bastion's
    connection; raises PollError."""
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(host, port, config=None, tunnel=tunnel or ()), ssh.connect_timeout)
    except BaseException as exc:  # noqa: BLE001 - classified below
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise classify(exc) from None
    if key is None:
        raise PollError(UNREACHABLE, f"{host}:{port} sent no host key")
    return key


def retrieve_result(task: asyncio.Task) -> None:
    """Mark a task's failure as seen (a connect's waiter may have stopped waiting; a stopped
    poller's loops may end after it)."""
    if not task.cancelled():
        task.exception()


@dataclass
class _Entry:
    """Connection state of one server."""

    key: tuple
    conn: asyncssh.SSHClientConnection | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    failures: int = 0
    retry_at: float = 0.0
    last_error: PollError | None = None
    agent: AgentClient | None = None  # kept with the connection
    connecting: asyncio.Task | None = None  # the connect under way, shared by whoever waits for it
    #: set while that connect waits for one of the central's own slots (not yet on the wire):
    #: the central's backlog, which a poll's timeout must not blame on the host
    queued: asyncio.Event | None = None
    #: what the connect under way is doing: "tcp" (its TCP connect), "ssh" (the SSH handshake,
    #: directly or through a bastion), None (waiting for a slot, or no connect)
    phase: str | None = None
    #: the connection its SSH handshake is on, while the handshake runs (_Handshake)
    handshake: asyncssh.SSHClientConnection | None = None


def _address_literal(host: str, port: int) -> list[tuple] | None:
    """getaddrinfo's answer for an IPv4 or (unscoped) IPv6 address literal, without asking the
    resolver: most fleets' hosts are addresses, and loop.getaddrinfo hands every connect to a
    thread and back (and even a numeric getaddrinfo costs tens of microseconds). None for a name."""
    for family, address in ((socket.AF_INET, (host, port)), (socket.AF_INET6, (host, port, 0, 0))):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)]
    return None


class _Handshake(asyncssh.SSHClient):
    """Hands the pool's entry the connection a handshake is on as soon as TCP is up (asyncssh
    returns it only once authenticated), so a poll can tell whether the host has spoken SSH."""

    def __init__(self, entry: "_Entry"):
        self._entry = entry

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._entry.handshake = conn


#: TCP connects in flight at once, per handshake slot (ssh.max_concurrent_connects). A TCP
#: connect costs the central almost nothing, so many go at once and an outage's unanswered
#: SYNs are found within one connect_timeout; a connected socket then waits for a handshake
#: slot, holding its dial slot, so at most this many sockets wait at the host's sshd
#: (LoginGraceTime) for the central to start its handshake.
DIAL_SLOTS_PER_CONNECT = 20


class SSHPool:
    """Hands out each server's connection, connecting and reconnecting as needed."""

    def __init__(self, ssh: SSHConfig, default_key_path: str | Path):
        self.ssh = ssh
        self.default_key_path = Path(default_key_path)
        self._entries: dict[int, _Entry] = {}
        # handshakes (the CPU of a connect) in flight at once, and TCP connects with their
        # sockets waiting for a handshake slot
        self._connect_slots = asyncio.Semaphore(ssh.max_concurrent_connects)
        self._dial_slots = asyncio.Semaphore(ssh.max_concurrent_connects * DIAL_SLOTS_PER_CONNECT)
        self._keys: dict[str, list] = {}
        self._authorities: list | None = None
        self._options = connect_options(ssh)
        remember_local_user()
        self.connects = 0  # successful connects, for status and tests
        #: where agent clients find a server's secret (central.agentclient.SecretSource); the
        #: Central sets it, a pool without one authenticates no agent
        self.agent_secret = None
        #: async (server id) -> Server: where the pool finds a server's bastion (Server.via); the
        #: Central sets it, a pool without one connects only directly
        self.resolve_server = None

    def _client_keys(self, server: Server) -> list:
        path = server.key_path or str(self.default_key_path)
        keys = self._keys.get(path)
        if keys is None:
            # the configured certificate belongs to the central's own key, not to a per-server one
            cert = self.ssh.certificate_path if not server.key_path else ""
            keys = self._keys[path] = load_client_keys(path, cert)
        return keys

    def host_cas(self, host: str, port: int) -> list[str]:
        """The CA keys ('type base64') trusted to vouch for host:port (central.fleetfile matching)."""
        from .fleetfile import trusted_cas

        if self._authorities is None:
            from .fleetfile import KnownHostsIndex

            self._authorities = KnownHostsIndex(host_authorities(self.ssh))
        return trusted_cas(self._authorities, host, port) if self._authorities.revoked or \
            self._authorities.literal or self._authorities.hashed or self._authorities.patterned else []

    def _entry(self, server: Server) -> _Entry:
        entry = self._entries.get(server.id)
        if entry is None or entry.key != server.connection_key:
            if entry is not None:
                self._close_entry(entry)
            entry = self._entries[server.id] = _Entry(key=server.connection_key)
        return entry

    @property
    def size(self) -> int:
        """Open connections."""
        return sum(1 for e in self._entries.values() if e.conn is not None and not e.conn.is_closed())

    async def connection(self, server: Server, depth: int = 0) -> asyncssh.SSHClientConnection:
        """The server's open connection, connecting if needed (through its bastion, if any);
        raises a classified PollError."""
        entry = self._entry(server)
        conn = entry.conn
        if conn is not None and not conn.is_closed():
            return conn
        async with entry.lock:
            if entry.conn is not None and not entry.conn.is_closed():
                return entry.conn
            entry.conn = None
            entry.agent = None
            now = time.monotonic()
            if now < entry.retry_at and entry.last_error is not None:
                err = entry.last_error
                raise PollError(err.reason, f"{err.message} (next retry in {entry.retry_at - now:.0f}s)")
            if entry.connecting is None:
                entry.connecting = asyncio.create_task(self._connect_entry(server, entry, depth),
                                                       name=f"ssh-connect-{server.name}")
                entry.connecting.add_done_callback(retrieve_result)
            task = entry.connecting
        # Shielded: a poll's timeout ends this wait, not the connect. Cancelled with it, a connect
        # to a blackholed host never failed, so no backoff was recorded and every poll sent a new SYN.
        return await asyncio.shield(task)

    async def _connect_entry(self, server: Server, entry: _Entry, depth: int = 0) -> asyncssh.SSHClientConnection:
        try:
            conn = await self._connect(server, entry, depth)
        except PollError as err:
            self._backoff(entry, err)
            raise
        finally:
            entry.connecting = None
        entry.conn = conn
        entry.failures = 0
        entry.last_error = None
        self.connects += 1
        return conn

    def _backoff(self, entry: _Entry, err: PollError) -> None:
        entry.failures += 1
        entry.last_error = err
        delay = min(self.ssh.backoff_max, self.ssh.backoff_initial * 2 ** (entry.failures - 1))
        # "Equal jitter": at least half the delay, so a dead host is not hammered, and
        # spread so a fleet that lost its network does not reconnect in lockstep.
        entry.retry_at = time.monotonic() + delay / 2 + random.uniform(0, delay / 2)

    async def bastion_of(self, server: Server, depth: int = 0) -> tuple[Server, asyncssh.SSHClientConnection] | None:
        """(bastion, its pooled connection) for a server reached through one, None for a direct one.

        The bastion's connection is the one the pool keeps for the bastion itself, so one
        connection carries the tunnels of every host behind it. Its failure is the
        bastion's: raised as BASTION_UNREACHABLE, naming the bastion and why."""
        if server.via is None:
            return None
        if self.resolve_server is None:
            raise PollError(BASTION_UNREACHABLE, f"{server.name} is reached through a bastion this pool cannot look up")
        if depth >= MAX_BASTIONS:
            raise PollError(BASTION_UNREACHABLE, f"more than {MAX_BASTIONS} bastions in a row to reach {server.name}")
        try:
            bastion = await self.resolve_server(server.via)
        except CentralError:
            raise PollError(BASTION_UNREACHABLE, f"the bastion of {server.name} is not a server any more") from None
        try:
            conn = await self.connection(bastion, depth + 1)
        except PollError as err:
            raise PollError(BASTION_UNREACHABLE, f"unreachable via bastion {bastion.name}: {err.reason}: "
                                                 f"{err.message}") from None
        return bastion, conn

    async def blame_bastion(self, server: Server, err: PollError) -> PollError:
        """A host's failed poll, as BASTION_UNREACHABLE when the connection broke because its
        bastion's did (the bastion went down while the host's tunnelled connection was open)."""
        if server.via is None or err.reason not in (UNREACHABLE, TIMEOUT) or self.resolve_server is None:
            return err
        entry = self._entries.get(server.via)
        if entry is not None and entry.conn is not None and not entry.conn.is_closed():
            return err
        try:
            bastion = await self.resolve_server(server.via)
        except CentralError:
            return err
        return PollError(BASTION_UNREACHABLE, f"unreachable via bastion {bastion.name}: its connection closed "
                                              f"({err.message})")

    async def fetch_host_key_via(self, bastion: Server, host: str, port: int) -> asyncssh.SSHKey:
        """The host key a host behind a bastion presents, fetched through the bastion's pooled connection."""
        try:
            conn = await self.connection(bastion)
        except PollError as err:
            raise PollError(BASTION_UNREACHABLE, f"unreachable via bastion {bastion.name}: {err.reason}: "
                                                 f"{err.message}") from None
        return await fetch_host_key(host, port, self.ssh, tunnel=conn)

    @contextlib.asynccontextmanager
    async def _waiting(self, entry: _Entry, slots: asyncio.Semaphore):
        """Hold one of slots, the entry marked queued while it waits for it."""
        if slots.locked():
            entry.queued = entry.queued or asyncio.Event()
        try:
            await slots.acquire()
        finally:
            self._dequeue(entry)
        try:
            yield
        finally:
            slots.release()

    @staticmethod
    def _dequeue(entry: _Entry) -> None:
        if entry.queued is not None:
            entry.queued.set()
            entry.queued = None

    def connect_phase(self, server: Server) -> str | None:
        """What the server's connect under way is doing: "tcp" (its TCP connect), "ssh" (the SSH
        handshake), None (waiting for one of the central's slots, or not connecting)."""
        entry = self._entries.get(server.id)
        return entry.phase if entry is not None and entry.connecting is not None else None

    async def wait_handshake(self, server: Server) -> bool:
        """Wait for the end of the server's SSH handshake if the host has spoken SSH already (sent
        its version): True if it waited. The host answers; what is left is CPU at both ends, which
        a fleet connecting at a start makes slow on the central's side, and ssh.connect_timeout
        bounds it. A host that accepts TCP and says nothing is not waited for."""
        entry = self._entries.get(server.id)
        task = entry.connecting if entry is not None else None
        conn = entry.handshake if task is not None else None
        if conn is None or not conn.get_extra_info("server_version"):
            return False
        await asyncio.wait([task])  # its outcome is the caller's next attempt's; a cancel of the caller leaves it
        return True

    async def wait_queued(self, server: Server) -> bool:
        """Wait while the server's connect waits for one of the central's connect slots (its own
        backlog, e.g. a whole fleet connecting at a start); True if it was waiting. A poll that
        timed out there has learnt nothing about the host, and polls again (AgentClient.request)."""
        entry = self._entries.get(server.id)
        event = entry.queued if entry is not None else None
        if event is None:
            return False
        await event.wait()
        return True

    @staticmethod
    async def _dial(host: str, port: int) -> socket.socket:
        """A TCP connection to host:port (each address in turn, as asyncio's create_connection)."""
        loop = asyncio.get_running_loop()
        infos = _address_literal(host, port)
        if infos is None:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        first: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
                return sock
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError):
                    raise
                first = first or exc
        raise first or OSError(f"no address for {host}")

    async def _connect(self, server: Server, entry: _Entry, depth: int = 0) -> asyncssh.SSHClientConnection:
        slog = server_log(log, server.name)
        cas = [asyncssh.import_public_key(k) for k in self.host_cas(server.host, server.port)]
        if not server.host_key and not cas:
            raise PollError(HOST_KEY_UNKNOWN, "no host key pinned and no host CA trusted for it; run `central server trust`")
        try:
            pinned = [asyncssh.import_public_key(server.host_key)] if server.host_key else []
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise PollError(HOST_KEY_MISMATCH, f"the pinned host key cannot be read: {exc}") from None
        client_keys = self._client_keys(server)
        via = await self.bastion_of(server, depth)
        tunnel = via[1] if via else ()
        sock = None
        try:
            async with self._waiting(entry, self._dial_slots):
                try:
                    if not via:  # the TCP connect, outside the handshake slots (see DIAL_SLOTS_PER_CONNECT)
                        entry.phase = "tcp"
                        sock = await asyncio.wait_for(self._dial(server.host, server.port), self.ssh.connect_timeout)
                        entry.phase = None
                    async with self._waiting(entry, self._connect_slots):
                        entry.phase = "ssh"
                        conn = await asyncio.wait_for(asyncssh.connect(
                            server.host, server.port,
                            sock=sock,
                            tunnel=tunnel,
                            username=server.user,
                            client_keys=client_keys,
                            # the pinned key, and/or the CAs whose certificate for this name is accepted
                            known_hosts=(pinned, cas, []),
                            client_factory=lambda: _Handshake(entry),
                            **self._options,
                        ), self.ssh.connect_timeout + 1)
                except BaseException as exc:  # noqa: BLE001 - classified below
                    if sock is not None:
                        sock.close()  # never handed over, or already closed by asyncssh's failure
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    err = classify(exc)
                    if via and via[1].is_closed():
                        # the bastion went away under the connect: its failure, not the host's
                        err = PollError(BASTION_UNREACHABLE, f"unreachable via bastion {via[0].name}: its connection closed")
                    elif via and isinstance(exc, asyncssh.ChannelOpenError):
                        # the bastion works but cannot open the way on (host down, or not permitted)
                        err = PollError(UNREACHABLE, f"bastion {via[0].name} cannot reach {server.host}:{server.port}: "
                                                     f"{exc.reason}")
                    if err.reason == TIMEOUT:
                        # nothing answered the connect: for the operator that host is unreachable
                        err = PollError(UNREACHABLE, f"no SSH answer from {server.host}:{server.port} "
                                                     f"within {self.ssh.connect_timeout:g}s")
                    # per attempt, so debug: the poller logs the server's state changes once
                    slog.debug("connect failed: %s", err)
                    raise err from None
        finally:
            self._dequeue(entry)
            entry.phase = entry.handshake = None
        slog.debug("connected to %s:%s%s", server.host, server.port, f" via {via[0].name}" if via else "")
        return conn

    def agent_client(self, server: Server, max_bytes: int):
        """The server's kept agent client (one HTTP/1.1 channel reused across polls)."""
        entry = self._entry(server)
        if entry.agent is None or entry.agent.server.agent_port != server.agent_port:
            entry.agent = AgentClient(self, server, max_bytes)
        else:
            entry.agent.server = server
        return entry.agent

    def failed(self, server: Server) -> None:
        """Forget a connection that broke mid-use, so the next use reconnects."""
        entry = self._entries.get(server.id)
        if entry is not None and entry.conn is not None and entry.conn.is_closed():
            entry.conn = None

    def forget(self, server_id: int) -> None:
        """Close and drop a server's connection (removed server, changed settings)."""
        entry = self._entries.pop(server_id, None)
        if entry is not None:
            self._close_entry(entry)

    def reset_backoff(self, server_id: int) -> None:
        """Allow an immediate reconnect (after an operator fixed something)."""
        entry = self._entries.get(server_id)
        if entry is not None:
            entry.retry_at = 0.0
            entry.failures = 0

    async def stop_connecting(self, wait: float | None = 1.0) -> None:
        """Cancel every connect under way or waiting for a slot, and give them up to wait seconds
        to end (None: until they have; the poller is stopping: with 10,000 hosts refused, their
        connects kept the event loop busy through the stop's flush)."""
        tasks = [e.connecting for e in self._entries.values() if e.connecting is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=wait)

    @staticmethod
    def _close_entry(entry: _Entry) -> None:
        if entry.connecting is not None:
            entry.connecting.cancel()
        if entry.agent is not None:
            entry.agent.close()
        if entry.conn is not None:
            entry.conn.close()

    async def close(self) -> None:
        """Close every connection and wait for them to finish."""
        await self.stop_connecting(wait=None)
        entries = list(self._entries.values())
        self._entries.clear()
        for entry in entries:
            self._close_entry(entry)
        for entry in entries:
            if entry.conn is not None:
                try:
                    await asyncio.wait_for(entry.conn.wait_closed(), 5)
                except (asyncio.TimeoutError, OSError, asyncssh.Error):
                    pass
