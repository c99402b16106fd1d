"""How the central reaches a server's agent: over SSH, or in-process for its own host.

Every server has a kind, and each kind has one Transport: `SSHTransport` talks HTTP/1.1 to the
agent through the pooled SSH connection (central.sshpool, central.agentclient);
`LocalTransport` runs the bundled agent's collectors and actions in this process (server
`local`, the central's own host). The poller, the service and actions only use this
interface, so none of them asks which kind a server is; what differs between kinds (whether
there is a host key to pin, an agent to deploy, settings that cannot change) is said by the
transport's attributes.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Mapping
from urllib.parse import urlencode

from .agentclient import AgentClient
from .bundled import agent_module, agent_sha256
from .config import Config
from .document import decode, normalise_health, normalise_inventory
from .model import ACTION_KINDS, AGENT_ERROR, AGENT_IMPOSTOR, BAD_PAYLOAD, TIMEOUT, Forbidden, PollError, Server
from .sample import normalised, parse_document
from .serverlog import server_log
from .sshpool import SSHPool

log = logging.getLogger(__name__)

SSH, LOCAL = "ssh", "local"
KINDS = (SSH, LOCAL)  # the servers table's kind column
_PROCESS_LIST = "/api/processes?sort=pid&limit=100000"
# Units an action on the central's own host never touches, whatever its policy says.
_LOCAL_PROTECTED_UNITS = ("central.service",)


class ActionChannel:
    """One action's way to its host's agent: the process table and the action itself.

    Each answer is (HTTP-like status, document), as the agent's action endpoints give them.
    """

    async def processes(self) -> tuple[int, object]:
        """The host's whole process table (/api/processes by pid)."""
        raise NotImplementedError

    async def act(self, kind: str, body: dict) -> tuple[int, object]:
        """Run one action (body already validated)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the channel holds."""


class Transport:
    """The way to the agents of one kind of server."""

    kind: str = ""
    # Why servers of this kind have no SSH host key to probe or re-trust (None: they have one).
    no_host_key: str | None = None
    # Why no agent is deployed to them (None: one is; deploy and the outdated check apply).
    no_agent: str | None = None
    # The settings an operator may change (None: all of them), and why only those.
    settable: frozenset[str] | None = None
    settable_text: str = ""
    # Collected on the central's own host: never shared among several centrals (central.cluster),
    # each polls only the one of its own name (poll.local_name).
    own_host: bool = False
    # Poll workers (central.pollworker.PollWorkers) that poll this kind's servers in processes
    # of their own (poll.workers); None: the poller polls them in-process (central.poller.poll_once).
    workers = None

    def address(self, user: str, host: str, port: int) -> str:
        """How lists show where a server is."""
        return f"{user}@{host}:{port}"

    async def prepare(self) -> None:
        """Get ready before the first poll of a server of this kind."""

    async def document(self, server: Server) -> tuple[dict, str]:
        """The server's /api/all document, checked, and its compact text; raises PollError."""
        raise NotImplementedError

    async def inventory(self, server: Server) -> dict | None:
        """The server's /api/inventory document, normalised; None (logged) when it cannot be had.
        Raises BAD_PAYLOAD naming the field when it cannot be normalised, AGENT_IMPOSTOR when
        the answer does not carry the agent's proof."""
        raise NotImplementedError

    async def check(self, server: Server, secret: str | None = None) -> dict:
        """Whether the server and its agent answer now ({ok, ...}, as `central server test` shows);
        secret: the agent secret to use (default: the one stored for the server)."""
        raise NotImplementedError

    def action_channel(self, server: Server) -> ActionChannel:
        """A channel for one action (its own, so a slow action never blocks polls)."""
        raise NotImplementedError

    async def services(self, server: Server) -> dict:
        """The agent's /api/services document (units with the verbs its policy allows); raises PollError."""
        raise NotImplementedError

    async def logs(self, server: Server, query: dict) -> tuple[int, object]:
        """(status, answer) of the agent's GET /api/logs (query: unit or container, lines)."""
        raise NotImplementedError

    def action_policy(self) -> dict | None:
        """The host policy actions run under when this process applies it (in-process), for the
        page to offer only what it allows; None when the host's agent applies its own."""
        return None

    def forget(self, server_id: int) -> None:
        """Drop what is kept for a server (removed, or its settings changed)."""

    def reset_backoff(self, server_id: int) -> None:
        """Allow an immediate retry (after an operator fixed something)."""

    async def stop_connecting(self) -> None:
        """Give up the connects under way (the poller is stopping); open connections stay."""

    async def close(self) -> None:
        """Release everything."""


class SSHTransport(Transport):
    """The agent over the server's pooled SSH connection (a kept HTTP/1.1 channel for polls)."""

    kind = SSH

    def __init__(self, config: Config, pool: SSHPool):
        self.config = config
        self.pool = pool

    async def document(self, server: Server) -> tuple[dict, str]:
        """GET /api/all on the kept channel."""
        client = self.pool.agent_client(server, self.config.poll.max_response_bytes)
        try:
            status, body = await client.request("GET", "/api/all", timeout=self.config.poll.timeout)
        except PollError as err:
            raise await self.pool.blame_bastion(server, err) from None
        if status != 200:
            raise PollError(AGENT_ERROR, f"GET /api/all answered {status}")
        return parse_document(body)

    async def inventory(self, server: Server) -> dict | None:
        """GET /api/inventory on the kept channel."""
        client = self.pool.agent_client(server, self.config.poll.max_response_bytes)
        try:
            status, body = await client.request("GET", "/api/inventory", timeout=self.config.poll.timeout)
        except PollError as err:
            # a document that cannot be normalised, or an answer without the agent's proof,
            # fails the poll like /api/all's would; anything else only skips the inventory
            if err.reason in (BAD_PAYLOAD, AGENT_IMPOSTOR):
                raise PollError(err.reason, f"inventory: {err.message}") from None
            server_log(log, server.name).warning("inventory fetch failed: %s", err)
            return None
        if status != 200:
            server_log(log, server.name).warning("inventory fetch answered %s", status)
            return None
        return normalise_inventory(decode(body, "inventory"))

    async def check(self, server: Server, secret: str | None = None) -> dict:
        """Connect with a pool of its own (raising a PollError on SSH failures) and ask /api/health,
        authenticated with the given secret or the stored one."""
        pool = SSHPool(self.config.ssh, self.config.key_path)
        pool.resolve_server = self.pool.resolve_server
        stored = self.pool.agent_secret

        async def source(server: Server) -> str | None:
            if secret is not None:
                return secret
            return await stored(server) if stored is not None else None

        try:
            t0 = time.perf_counter()
            await pool.connection(server)
            ssh_ms = (time.perf_counter() - t0) * 1000
            client = AgentClient(pool, server, self.config.poll.max_response_bytes, secret=source)
            try:
                status, health = await client.request_json("GET", "/api/health", timeout=self.config.poll.timeout)
            except PollError as err:
                return {"ok": False, "reason": err.reason, "error": err.message, "ssh_ms": round(ssh_ms, 1),
                        "hint": deploy_hint(server)}
            if status != 200 or not isinstance(health, dict):
                return {"ok": False, "reason": AGENT_ERROR, "error": f"/api/health answered {status}",
                        "ssh_ms": round(ssh_ms, 1), "hint": deploy_hint(server)}
            try:
                health = normalise_health(health)
            except PollError as err:
                return {"ok": False, "reason": err.reason, "error": err.message, "ssh_ms": round(ssh_ms, 1)}
            sha = health.get("sha256")
            return {"ok": True, "version": health.get("version"), "sha256": sha,
                    "outdated": bool(sha) and sha != agent_sha256(), "ssh_ms": round(ssh_ms, 1)}
        finally:
            await pool.close()

    def action_channel(self, server: Server) -> ActionChannel:
        """A new agent client: its own direct-tcpip channel, separate from the poller's."""
        return _SSHActionChannel(AgentClient(self.pool, server, self.config.poll.max_response_bytes), self.config)

    async def services(self, server: Server) -> dict:
        """GET /api/services on a channel of its own (a page never waits behind a poll)."""
        client = AgentClient(self.pool, server, self.config.poll.max_response_bytes)
        try:
            status, doc = await client.request_json("GET", "/api/services", timeout=self.config.poll.timeout)
        finally:
            client.close()
        if status != 200 or not isinstance(doc, dict):
            raise PollError(AGENT_ERROR, f"GET /api/services answered {status}")
        return doc

    async def logs(self, server: Server, query: dict) -> tuple[int, object]:
        """GET /api/logs on a channel of its own; a journalctl of 1,000 lines can take seconds."""
        client = AgentClient(self.pool, server, self.config.poll.max_response_bytes)
        try:
            return await client.request_json("GET", "/api/logs?" + urlencode(query),
                                             timeout=max(self.config.poll.timeout, 20.0))
        finally:
            client.close()

    def forget(self, server_id: int) -> None:
        """Close the server's connections (the poll worker's too)."""
        self.pool.forget(server_id)
        if self.workers is not None:
            self.workers.forget(server_id)

    def reset_backoff(self, server_id: int) -> None:
        """Let the next poll reconnect at once."""
        self.pool.reset_backoff(server_id)
        if self.workers is not None:
            self.workers.reset_backoff(server_id)

    async def stop_connecting(self) -> None:
        """Cancel the connects under way and those waiting for a slot."""
        if self.workers is not None:
            await self.workers.stop_connecting()
        await self.pool.stop_connecting()

    async def close(self) -> None:
        """Close every connection (and end the poll workers)."""
        if self.workers is not None:
            await self.workers.close()
        await self.pool.close()

    def pool_figures(self) -> dict:
        """Open connections and successful connects, this process's and its poll workers' together."""
        figures = {"connections": self.pool.size, "connects": self.pool.connects}
        if self.workers is not None:
            figures["connections"] += self.workers.size
            figures["connects"] += self.workers.connects
            figures["workers"] = self.workers.figures()
        return figures


class _SSHActionChannel(ActionChannel):
    def __init__(self, client: AgentClient, config: Config):
        self.client = client
        self.config = config

    async def processes(self) -> tuple[int, object]:
        return await self.client.request_json("GET", _PROCESS_LIST, timeout=self.config.poll.timeout)

    async def act(self, kind: str, body: dict) -> tuple[int, object]:
        return await self.client.request_json("POST", f"/api/actions/{kind}", body,
                                              timeout=self.config.actions.timeout)

    def close(self) -> None:
        self.client.close()


class LocalTransport(Transport):
    """The central's own host, collected in-process with the bundled agent's collectors.

    Actions run the bundled agent's own action functions in-process when `actions.local` is
    true, under the policy file `actions.local_policy` (read exactly like the agent reads it),
    with central.service added to the protected units.
    """

    kind = LOCAL
    no_host_key = "{name} is the central's own host; it has no SSH host key"
    no_agent = "the central's own host: collected in-process, no agent"
    own_host = True
    settable = frozenset({"tags", "interval_s"})
    settable_text = "{name} is the central's own host: only tags and interval can change"

    def __init__(self, config: Config):
        self.config = config
        self._collector = None

    def collector(self):
        """The bundled agent's Collector (created on first use; it records its first counters)."""
        if self._collector is None:
            self._collector = agent_module().Collector()
        return self._collector

    def address(self, user: str, host: str, port: int) -> str:
        """Not an address: this host."""
        return "(this host)"

    async def prepare(self) -> None:
        """Take the CPU baseline now, so the first poll has figures to compare with."""
        await asyncio.to_thread(self.collector)

    async def document(self, server: Server) -> tuple[dict, str]:
        """One /api/all document, collected in a thread."""
        try:
            doc = await asyncio.to_thread(lambda: self.collector().all())
        except Exception as exc:  # noqa: BLE001 - the in-process agent failing is an agent error
            raise PollError(AGENT_ERROR, f"local collection failed: {exc}") from None
        return normalised(doc)

    async def inventory(self, server: Server) -> dict | None:
        """The /api/inventory document, collected in a thread."""
        try:
            doc = await asyncio.to_thread(lambda: self.collector().inventory())
        except Exception as exc:  # noqa: BLE001 - a failed inventory is logged, as a remote one
            server_log(log, server.name).warning("inventory fetch failed: %s", exc)
            return None
        return normalise_inventory(doc)

    async def check(self, server: Server, secret: str | None = None) -> dict:
        """Collect once: it works when the collectors run."""
        doc = await asyncio.to_thread(lambda: self.collector().all())
        return {"ok": True, "local": True, "hostname": doc.get("hostname")}

    def action_channel(self, server: Server) -> ActionChannel:
        """The bundled agent's functions, in-process."""
        return _LocalActionChannel(self, server)

    async def services(self, server: Server) -> dict:
        """The units the polls list, with the verbs the local action policy allows and their details."""
        policy = self.action_policy()

        def collect():
            c = self.collector()
            units = c.units()
            if units is None:
                return agent_module().services_document(policy, None)
            details, at = c.unit_details(policy, units)
            return dict(agent_module().services_document(policy, units, details), details_at=round(at, 3))
        return await asyncio.to_thread(collect)

    async def logs(self, server: Server, query: dict) -> tuple[int, object]:
        """The bundled agent's logs, in-process (actions.local_policy's "logs" says whether)."""
        agent = agent_module()
        if not self.action_policy().get("logs", True):
            return 403, {"error": "forbidden", "detail": "actions.local_policy turns logs off (\"logs\": false)"}
        try:
            return 200, await asyncio.to_thread(self.collector().logs, {k: [str(v)] for k, v in query.items()})
        except agent.ActionError as exc:
            return exc.status, {"error": exc.code, "detail": exc.detail}

    def action_policy(self) -> dict:
        """The agent's policy from actions.local_policy, with central.service protected; every
        action off when actions.local is false."""
        config = self.config.actions
        policy, _ = agent_module().load_policy(config.local_policy)
        policy["protected_units"] = list(policy["protected_units"]) + list(_LOCAL_PROTECTED_UNITS)
        if not config.local:
            policy["actions"] = {k: False for k in policy["actions"]}
        return policy


class _LocalActionChannel(ActionChannel):
    def __init__(self, transport: LocalTransport, server: Server):
        self.transport = transport
        self.server = server

    async def processes(self) -> tuple[int, object]:
        return 200, await asyncio.to_thread(lambda: self.transport.collector().processes("pid", None))

    async def act(self, kind: str, body: dict) -> tuple[int, object]:
        config = self.transport.config.actions
        if not config.local:
            raise Forbidden(f"actions on the central's own host ({self.server.name}) are disabled (actions.local = false)")
        if os.geteuid() == 0 and not config.local_as_root:
            # In-process actions run with the central's own privileges: as root, a kill would
            # reach any process of this host. The agent's policy is no limit for root.
            raise Forbidden(f"the central runs as root, so actions on its own host ({self.server.name}) are refused: "
                            "run it as its own user (scripts/start-central.sh does), or set actions.local_as_root = true")
        agent = agent_module()
        policy = self.transport.action_policy()
        fn = getattr(agent, ACTION_KINDS[kind].agent_function)
        try:
            return 200, await asyncio.wait_for(asyncio.to_thread(fn, body, policy), config.timeout)
        except agent.ActionError as exc:
            return exc.status, {"error": exc.code, "detail": exc.detail}
        except asyncio.TimeoutError:
            raise PollError(TIMEOUT, f"the action did not finish within {config.timeout:g}s") from None
        finally:
            if kind == "service":
                self.transport.collector().forget_units()  # the next poll lists the units again


class Transports:
    """The transport of every kind of server; `of(server)` is the one to use for it."""

    def __init__(self, config: Config, pool: SSHPool):
        self.ssh = SSHTransport(config, pool)
        self.local = LocalTransport(config)
        self._by_kind: dict[str, Transport] = {t.kind: t for t in (self.ssh, self.local)}

    def of(self, server: Server) -> Transport:
        """The transport for this server."""
        return self._by_kind[server.kind]

    def of_kind(self, kind: str) -> Transport:
        """The transport for servers of this kind."""
        return self._by_kind[kind]

    def address(self, server: Mapping | Server) -> str:
        """Where a server is, for lists (a Server or a server dict)."""
        d = server if isinstance(server, Mapping) else server.__dict__
        return self._by_kind[d["kind"]].address(d["user"], d["host"], d["port"])

    async def prepare(self, servers) -> None:
        """Get the transports of these servers ready for their first polls."""
        for transport in {id(t): t for t in map(self.of, servers)}.values():
            await transport.prepare()

    def forget(self, server_id: int) -> None:
        """Drop what any transport keeps for a server."""
        for transport in self._by_kind.values():
            transport.forget(server_id)

    def reset_backoff(self, server_id: int) -> None:
        """Allow an immediate retry of a server."""
        for transport in self._by_kind.values():
            transport.reset_backoff(server_id)

    async def stop_connecting(self) -> None:
        """Give up every connect under way (the poller is stopping)."""
        for transport in self._by_kind.values():
            await transport.stop_connecting()

    async def close(self) -> None:
        """Close every transport."""
        for transport in self._by_kind.values():
            await transport.close()


def deploy_hint(server: Server) -> str:
    """What to run when a server's agent does not answer or cannot be authenticated."""
    target = f"root@{server.host}"
    port = f" --ssh-opt Port={server.port}" if server.port != 22 else ""
    return (f"deploy the agent (it creates the central's login user and the agent secret) with: "
            f"scripts/deploy-agent.sh{port} {target}   (or: central deploy {server.name})")
