"""What the CLI and the HTTP API both do: one function per operation over the core.

Handlers and click commands parse input, call one of these, and map CentralError to their
own error form. Nothing here knows about HTTP or terminals.
"""
from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from pathlib import Path

import asyncssh

from .agentclient import AgentClient
from .alerts import AlertEngine

from .auth import Auth
from .bundled import agent_sha256
from .config import Config
from .model import HOST_KEY_MISMATCH, ONLINE, REASON_TEXT, Conflict, Invalid, PollError, Server
from .notifiers import Dispatcher
from .poller import Poller
from .sample import parse_document
from .sshpool import SSHPool, fetch_host_key, fingerprint, public_key_line
from .storage import Storage

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
HOST_RE = re.compile(r"^[A-Za-z0-9_.:\[\]-]{1,253}$")
USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
TAG_RE = re.compile(r"^[A-Za-z0-9._:/-]{1,40}$")


def restricted_key_line(public_key: str, agent_port: int = 8083) -> str:
    """The authorized_keys line that lets the central forward to the agent and nothing else."""
    return f'restrict,port-forwarding,permitopen="127.0.0.1:{agent_port}",command="/bin/false" {public_key}'


# validation

def check_name(name: object) -> str:
    """A server name: letters, digits, '.', '_', '-'; up to 63 characters."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise Invalid(f"invalid server name {name!r}: use letters, digits, '.', '_' or '-' (up to 63, not starting with a symbol)")
    return name


def check_host(host: object) -> str:
    """A host name or address (never starting with '-', so it cannot become an option)."""
    if not isinstance(host, str) or not HOST_RE.match(host) or host.startswith("-"):
        raise Invalid(f"invalid host {host!r}: expected a host name or IP address")
    return host.strip("[]")


def check_port(port: object, what: str = "port") -> int:
    """A TCP port number."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise Invalid(f"invalid {what} {port!r}: expected 1-65535")
    return port


def check_user(user: object) -> str:
    """A Unix user name."""
    if not isinstance(user, str) or not USER_RE.match(user):
        raise Invalid(f"invalid user {user!r}")
    return user


def check_tags(tags: object) -> tuple[str, ...]:
    """A list of short tags."""
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
        raise Invalid("tags must be a list of strings")
    out = []
    for t in tags:
        if not isinstance(t, str) or not TAG_RE.match(t):
            raise Invalid(f"invalid tag {t!r}: letters, digits and . _ : / - up to 40 characters")
        if t not in out:
            out.append(t)
    if len(out) > 32:
        raise Invalid("at most 32 tags per server")
    return tuple(out)


def check_interval(interval: object) -> float | None:
    """A poll interval override in seconds (None: the global one)."""
    if interval is None:
        return None
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 1 <= interval <= 86400:
        raise Invalid(f"invalid interval {interval!r}: expected 1 to 86400 seconds")
    return float(interval)


def normalise_fingerprint(fp: str) -> str:
    """Accept 'SHA256:abc' or 'abc' (as ssh-keygen -l prints, without the prefix)."""
    fp = fp.strip()
    return fp if fp.startswith("SHA256:") else "SHA256:" + fp


# key pair

def ensure_key_pair(path: Path) -> tuple[str, bool]:
    """Create the central's ed25519 key pair if missing; returns (public key line, created)."""
    pub = Path(str(path) + ".pub")
    if path.exists():
        key = asyncssh.read_private_key(str(path))
        line = public_key_line(key)
        if not pub.exists():
            pub.write_text(line + " central\n")
        return line, False
    path.parent.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="central@" + socket.gethostname())
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.export_private_key())
    line = public_key_line(key)
    pub.write_text(line + f" central@{socket.gethostname()}\n")
    return line, True


def freshness(server: dict, default_interval: float, timeout: float, now: float) -> dict:
    """How current a server's figures are: {"stale", "seen_ago", "status_text"}.

    Stale when the server is not online, was never seen, or its last good poll is older than
    three intervals (a poller that fell behind): the page greys its figures and turns its
    actions off, so nothing old passes for current.
    """
    interval = server.get("interval_s") or default_interval
    seen = server.get("last_seen")
    ago = None if seen is None else max(0.0, now - seen)
    stale = server.get("status") != ONLINE or ago is None or ago > max(3 * interval, interval + timeout)
    reason = server.get("status_reason")
    return {"stale": stale, "seen_ago": None if ago is None else round(ago, 1),
            "status_text": REASON_TEXT.get(reason, reason) if reason else None}


class Central:
    """The running system: config, database, SSH pool and poller, opened together."""

    def __init__(self, config: Config, storage: Storage, pool: SSHPool):
        self.config = config
        self.storage = storage
        self.pool = pool
        self.poller = Poller(config, storage, pool)
        self.auth = Auth(storage)
        self.started_at = time.time()
        self.notifier = Dispatcher(storage, config.notifiers, queue_size=config.alerts.queue_size)
        # Starts on the first stored poll batch: short-lived CLI processes never evaluate or notify.
        self.alerts = AlertEngine(config, storage, self.notifier)
        self.poller.hooks.append(self.alerts.on_batch)

    @classmethod
    async def open(cls, config: Config) -> "Central":
        """Open the database (creating it) and make sure the local server exists."""
        storage = await Storage.open(config.database_path)
        central = cls(config, storage, SSHPool(config.ssh, config.key_path))
        if config.poll.local:
            await central.ensure_local_server()
        return central

    async def close(self) -> None:
        """Stop polling and close connections and the database."""
        await self.poller.stop()
        await self.alerts.stop()
        await self.notifier.stop()
        await self.pool.close()
        await self.storage.close()

    async def ensure_local_server(self) -> Server:
        """The central's own host as server `local` (collected in-process, no SSH)."""
        name = self.config.poll.local_name
        existing = await self.storage.find_server(name)
        if existing is not None:
            return existing
        return await self.storage.add_server(name, "localhost", kind="local", port=0, tags=("central",))

    # servers

    async def probe(self, host: str, port: int = 22) -> dict:
        """The host key a host presents, for the operator to confirm before pinning."""
        check_host(host)
        check_port(port)
        key = await fetch_host_key(host, port, self.config.ssh)
        return {"host": host, "port": port, "host_key": public_key_line(key),
                "fingerprint": fingerprint(key), "algorithm": key.get_algorithm()}

    async def probe_new(self, name: str, host: str, port: int = 22) -> dict:
        """The first step of adding a server: check the name is free, return the host key to confirm."""
        check_name(name)
        if await self.storage.find_server(name) is not None:
            raise Conflict(f"a server named {name!r} already exists")
        return await self.probe(check_host(host), port)

    async def probe_server(self, name: str) -> dict:
        """The first step of re-trusting: the key the server presents now and the pinned fingerprint."""
        server = await self.storage.get_server(name)
        if server.kind == "local":
            raise Invalid(f"{name} is the central's own host; it has no SSH host key")
        return {"probe": await self.probe(server.host, server.port), "pinned": server.host_key_fingerprint}

    async def add_server(
        self, name: str, host: str, *, port: int = 22, user: str = "root",
        key_path: str | None = None, tags=(), interval: float | None = None,
        agent_port: int = 8083, fingerprint: str | None = None,
    ) -> dict:
        """Add a server whose host key the operator confirmed (its fingerprint is given).

        Connects with the pinned key and the central's key first: an unreachable host or a
        refused key is an error and nothing is stored. When the agent does not answer the
        server is still added, and the result says how to deploy the agent.
        """
        check_name(name)
        host = check_host(host)
        check_port(port)
        check_port(agent_port, "agent port")
        check_user(user)
        tags = check_tags(tags)
        interval = check_interval(interval)
        if key_path is not None and not Path(key_path).is_file():
            raise Invalid(f"key file {key_path} does not exist")
        if await self.storage.find_server(name) is not None:
            raise Conflict(f"a server named {name!r} already exists")
        if not fingerprint:
            raise Invalid("the host key fingerprint must be confirmed (probe the host first)")
        probed = await self.probe(host, port)
        if probed["fingerprint"] != normalise_fingerprint(fingerprint):
            raise PollError(HOST_KEY_MISMATCH,
                            f"{host}:{port} presents {probed['fingerprint']}, not the confirmed {normalise_fingerprint(fingerprint)}")
        candidate = Server(id=-1, name=name, host=host, port=port, user=user, key_path=key_path,
                           agent_port=agent_port, host_key=probed["host_key"],
                           host_key_fingerprint=probed["fingerprint"])
        check = await self._check(candidate)
        server = await self.storage.add_server(
            name, host, port=port, user=user, key_path=key_path, agent_port=agent_port, tags=tags,
            interval_s=interval, host_key=probed["host_key"], host_key_fingerprint=probed["fingerprint"])
        return {"server": server.to_dict(), "agent": check}

    async def _check(self, server: Server) -> dict:
        """Connect (raising on SSH failures) and ask the agent for its health."""
        pool = SSHPool(self.config.ssh, self.config.key_path)
        try:
            t0 = time.perf_counter()
            await pool.connection(server)
            ssh_ms = (time.perf_counter() - t0) * 1000
            client = AgentClient(pool, server, self.config.poll.max_response_bytes)
            try:
                status, health = await client.request_json("GET", "/api/health", timeout=self.config.poll.timeout)
            except PollError as err:
                return {"ok": False, "reason": err.reason, "error": err.message, "ssh_ms": round(ssh_ms, 1),
                        "hint": deploy_hint(server)}
            if status != 200 or not isinstance(health, dict):
                return {"ok": False, "reason": "agent_error", "error": f"/api/health answered {status}",
                        "ssh_ms": round(ssh_ms, 1), "hint": deploy_hint(server)}
            sha = health.get("sha256")
            return {"ok": True, "version": health.get("version"), "sha256": sha,
                    "outdated": bool(sha) and sha != agent_sha256(), "ssh_ms": round(ssh_ms, 1)}
        finally:
            await pool.close()

    async def test_server(self, name: str) -> dict:
        """Check SSH (with the pinned key) and the agent of a stored server."""
        server = await self.storage.get_server(name)
        if server.kind == "local":
            doc = await asyncio.to_thread(self.poller.local.all)
            return {"ok": True, "local": True, "hostname": doc.get("hostname")}
        try:
            result = await self._check(server)
        except PollError as err:
            return {"ok": False, "reason": err.reason, "error": err.message}
        return result

    async def trust_server(self, name: str, fingerprint: str | None = None) -> dict:
        """Re-pin a server's host key after the operator verified the new fingerprint."""
        server = await self.storage.get_server(name)
        if server.kind == "local":
            raise Invalid(f"{name} is the central's own host; it has no SSH host key")
        probed = await self.probe(server.host, server.port)
        if fingerprint is None:
            raise Invalid("the new fingerprint must be confirmed", detail=probed["fingerprint"])
        if probed["fingerprint"] != normalise_fingerprint(fingerprint):
            raise PollError(HOST_KEY_MISMATCH,
                            f"{server.host}:{server.port} presents {probed['fingerprint']}, not the confirmed {normalise_fingerprint(fingerprint)}")
        updated = await self.storage.pin_host_key(name, probed["host_key"], probed["fingerprint"])
        self.pool.forget(server.id)
        return {"server": updated.to_dict(), "previous_fingerprint": server.host_key_fingerprint}

    async def update_server(self, name: str, **changes) -> Server:
        """Change a server's settings (tags, interval, user, port, agent port, key)."""
        server = await self.storage.get_server(name)
        fields = {}
        for key, value in changes.items():
            if key == "tags":
                fields["tags"] = check_tags(value)
            elif key == "interval":
                fields["interval_s"] = check_interval(value)
            elif key == "port":
                fields["port"] = check_port(value)
            elif key == "agent_port":
                fields["agent_port"] = check_port(value, "agent port")
            elif key == "user":
                fields["user"] = check_user(value)
            elif key == "host":
                fields["host"] = check_host(value)
            elif key == "key_path":
                if value is not None and not Path(value).is_file():
                    raise Invalid(f"key file {value} does not exist")
                fields["key_path"] = value
            else:
                raise Invalid(f"unknown field {key!r}")
        if server.kind == "local" and set(fields) - {"tags", "interval_s"}:
            raise Invalid(f"{name} is the central's own host: only tags and interval can change")
        if "host" in fields or "port" in fields:
            # A different address may be a different machine: the key must be confirmed again.
            fields["host_key"] = None
            fields["host_key_fingerprint"] = None
            fields["status"] = "error"
            fields["status_reason"] = "host_key_unknown"
        return await self.storage.update_server(name, **fields)

    async def remove_server(self, name: str) -> None:
        """Delete a server and its history."""
        server = await self.storage.get_server(name)
        await self.storage.remove_server(name)
        self.pool.forget(server.id)

    async def poll_now(self, name: str) -> dict:
        """Poll a server once and return the outcome with the agent document (not stored)."""
        server = await self.storage.get_server(name)
        outcome = await self.poller.poll(server)
        result = {"server": name, "ok": outcome.ok, "duration_ms": round(outcome.duration * 1000, 2)}
        if outcome.ok:
            doc, _ = parse_document(outcome.doc_text.encode())
            result["sample"] = outcome.sample
            result["document"] = doc
        else:
            result["reason"] = outcome.reason
            result["error"] = outcome.error
        return result

    async def server_overview(self, servers: list[dict] | None = None) -> list[dict]:
        """Servers (default: all) with their status and latest key figures (for lists and the page)."""
        if servers is None:
            servers = await self.storage.server_dicts()
        latest = await self.storage.latest_samples()
        bundled = agent_sha256()
        now, poll = time.time(), self.config.poll
        for d in servers:
            d.pop("host_key", None)
            d["sample"] = latest.get(d["id"])
            d["agent_outdated"] = bool(d["agent_sha256"]) and d["kind"] != "local" and d["agent_sha256"] != bundled
            d.update(freshness(d, poll.interval, poll.timeout, now))
        return servers

    async def server_detail(self, name: str) -> dict:
        """One server: stored fields, latest document, inventory, recent changes."""
        server = await self.storage.get_server(name)
        latest = await self.storage.latest_document(server.id)
        inv = await self.storage.inventory_latest(server.id)
        d = server.to_dict()
        d.pop("host_key", None)
        d.update(freshness(d, self.config.poll.interval, self.config.poll.timeout, time.time()))
        return {
            "server": d,
            "latest": {"ts": latest[0], "document": latest[1]} if latest else None,
            "inventory": inv,
            "inventory_changes": await self.storage.inventory_history(server.id, limit=20),
            "agent_outdated": bool(server.agent_sha256) and server.kind != "local" and server.agent_sha256 != agent_sha256(),
        }


def deploy_hint(server: Server) -> str:
    """What to run when a server's agent does not answer."""
    target = f"{server.user}@{server.host}"
    port = f" --ssh-opt Port={server.port}" if server.port != 22 else ""
    return (f"the agent does not answer on {server.host}'s 127.0.0.1:{server.agent_port}; deploy it with: "
            f"scripts/deploy-agent.sh{port} {target}   (or: central deploy {server.name})")

