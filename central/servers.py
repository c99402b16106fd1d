"""Operations on servers: probe, add, test, trust, change, remove, poll now.

Each is an async function taking the opened Central first (the shape of every operation, see
central/service.py); the CLI and the HTTP API call these and nothing below them. Nothing here
knows about HTTP or terminals.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from .agentauth import check_secret
from .model import ERROR, HOST_KEY_MISMATCH, HOST_KEY_UNKNOWN, Conflict, Invalid, PollError, Server
from .sample import parse_document
from .sshpool import MAX_BASTIONS, fetch_host_key, fingerprint, public_key_line
from .transport import LOCAL, Transport

if TYPE_CHECKING:
    from .service import Central

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
HOST_RE = re.compile(r"^[A-Za-z0-9_.:\[\]-]{1,253}$")
USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
TAG_RE = re.compile(r"^[A-Za-z0-9._:/-]{1,40}$")
#: the dedicated, unprivileged user deploy creates on each host for the central to log in as
CENTRAL_LOGIN_USER = "central"


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


async def check_via(central: Central, via: object, name: str | None = None) -> Server | None:
    """The bastion server a server is reached through (None: directly): an SSH server itself,
    not the server, at most MAX_BASTIONS deep, never a loop."""
    if via is None or via == "":
        return None
    if not isinstance(via, str):
        raise Invalid(f"invalid bastion {via!r}: expected a server name")
    if via == name:
        raise Invalid(f"{name} cannot be its own bastion")
    bastion = await central.storage.find_server(via)
    if bastion is None:
        raise Invalid(f"no server named {via!r} to be the bastion (add the bastion first)")
    if central.transports.of(bastion).no_host_key is not None:
        raise Invalid(f"{via} is not reached over SSH, so it cannot be a bastion")
    chain, hop = [via], bastion
    while hop.via is not None:
        hop = await central.storage.server_by_id(hop.via)
        if hop.name == name or hop.name in chain:
            raise Invalid(f"bastion {via} would make a loop through {hop.name}")
        chain.append(hop.name)
    if len(chain) > MAX_BASTIONS:
        raise Invalid(f"{' -> '.join(chain)}: at most {MAX_BASTIONS} bastions in a row")
    return bastion


def normalise_fingerprint(fp: str) -> str:
    """Accept 'SHA256:abc' or 'abc' (as ssh-keygen -l prints, without the prefix)."""
    fp = fp.strip()
    return fp if fp.startswith("SHA256:") else "SHA256:" + fp


# operations

async def ensure_local_server(central: Central) -> Server:
    """The central's own host as server `local` (collected in-process, no SSH)."""
    name = central.config.poll.local_name
    existing = await central.storage.find_server(name)
    if existing is not None:
        return existing
    return await central.storage.add_server(name, "localhost", kind=LOCAL, port=0, tags=("central",))


async def probe(central: Central, host: str, port: int = 22) -> dict:
    """The host key a host presents, for the operator to confirm before pinning."""
    check_host(host)
    check_port(port)
    key = await fetch_host_key(host, port, central.config.ssh)
    return {"host": host, "port": port, "host_key": public_key_line(key),
            "fingerprint": fingerprint(key), "algorithm": key.get_algorithm()}


async def probe_key(central: Central, host: str, port: int = 22, *, via: Server | None = None) -> dict:
    """The host key a host presents (directly, or through its bastion server `via`)."""
    if via is None:
        return await probe(central, host, port)
    key = await central.pool.fetch_host_key_via(via, host, port)
    return {"host": host, "port": port, "host_key": public_key_line(key),
            "fingerprint": fingerprint(key), "algorithm": key.get_algorithm()}


async def check_new(central: Central, name: str, host: str, port: int = 22) -> None:
    """Check a new server's name, host and port (the first step when a host CA vouches for it)."""
    check_name(name)
    check_host(host)
    check_port(port)
    if await central.storage.find_server(name) is not None:
        raise Conflict(f"a server named {name!r} already exists")


async def probe_new(central: Central, name: str, host: str, port: int = 22, via: str | None = None) -> dict:
    """The first step of adding a server: check the name is free, return the host key to confirm
    (fetched through the bastion `via`, if given)."""
    check_name(name)
    if await central.storage.find_server(name) is not None:
        raise Conflict(f"a server named {name!r} already exists")
    bastion = await check_via(central, via, name)
    check_port(port)
    return await probe_key(central, check_host(host), port, via=bastion)


async def probe_server(central: Central, name: str) -> dict:
    """The first step of re-trusting: the key the server presents now and the pinned fingerprint."""
    server = await central.storage.get_server(name)
    _refuse_without_host_key(central.transports.of(server), name)
    return {"probe": await _probe_stored(central, server), "pinned": server.host_key_fingerprint}


async def store_agent_secret(central: Central, secret: str, *, name: str | None = None, host: str | None = None,
                             port: int = 22) -> dict:
    """Keep the agent secret of a server (by name), or of a host and SSH port: for the servers
    with that address, or, when there is none yet, until `add_server` adds it."""
    secret = check_secret(secret)
    if name is not None:
        found = [await central.storage.get_server(name)]
    else:
        host = check_host(host)
        check_port(port)
        found = [s for s in await central.storage.list_servers()
                 if s.host == host and s.port == port and not central.transports.of(s).no_agent]
    for server in found:
        if central.transports.of(server).no_agent:
            raise Invalid(f"{server.name} has no agent to authenticate ({central.transports.of(server).no_agent})")
        await central.storage.set_agent_secret(server.id, secret)
        central.transports.forget(server.id)  # the next poll opens a channel with the new secret
    if found:
        return {"stored_for": [s.name for s in found], "pending": None}
    await central.storage.put_pending_secret(host, port, secret)
    return {"stored_for": [], "pending": {"host": host, "port": port}}


async def add_server(
    central: Central, name: str, host: str, *, port: int = 22, user: str = CENTRAL_LOGIN_USER,
    key_path: str | None = None, tags=(), interval: float | None = None,
    agent_port: int = 8083, fingerprint: str | None = None, agent_secret: str | None = None,
    via: str | None = None,
) -> dict:
    """Add a server whose host key the operator confirmed (its fingerprint is given).

    Connects with the pinned key and the central's key first: an unreachable host or a
    refused key is an error and nothing is stored. When the agent does not answer the
    server is still added, and the result says how to deploy the agent. The agent secret is
    the one given, else the one kept for this host and port (scripts/deploy-agent.sh hands
    it over before the server exists).
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
    if agent_secret is not None:
        agent_secret = check_secret(agent_secret)
    if await central.storage.find_server(name) is not None:
        raise Conflict(f"a server named {name!r} already exists")
    bastion = await check_via(central, via, name)
    if fingerprint:
        probed = await probe_key(central, host, port, via=bastion)
        if probed["fingerprint"] != normalise_fingerprint(fingerprint):
            raise PollError(HOST_KEY_MISMATCH, f"{host}:{port} presents {probed['fingerprint']}, "
                                               f"not the confirmed {normalise_fingerprint(fingerprint)}")
    elif central.pool.host_cas(host, port):
        # a trusted host CA vouches for this name: nothing to pin; the check below connects and
        # refuses a certificate that is expired, foreign or for another name (host_cert_invalid)
        probed = {"host_key": None, "fingerprint": None}
    else:
        raise Invalid("the host key fingerprint must be confirmed (probe the host first), "
                      "or a host CA trusted for it (ssh.host_ca_file, ssh.host_cas)")
    candidate = Server(id=-1, name=name, host=host, port=port, user=user, key_path=key_path,
                       agent_port=agent_port, host_key=probed["host_key"],
                       host_key_fingerprint=probed["fingerprint"], via=bastion.id if bastion else None)
    secret = agent_secret or await central.storage.pending_secret(host, port)
    check = await central.transports.ssh.check(candidate, secret=secret)
    server = await central.storage.add_server(
        name, host, port=port, user=user, key_path=key_path, agent_port=agent_port, tags=tags,
        interval_s=interval, host_key=probed["host_key"], host_key_fingerprint=probed["fingerprint"],
        agent_secret=secret, via=bastion.id if bastion else None)
    warnings = await same_host_warnings(central, server)
    return {"server": server.to_dict(), "agent": check, "warnings": warnings}


async def same_host_warnings(central: Central, server: Server) -> list[str]:
    """One line per other server that looks like the same host under another name: the same
    address and port, or the same pinned host key. Adding it is allowed (a host may be
    reached two ways on purpose) but is most often a mistake that polls and alerts twice."""
    out = []
    for other in await central.storage.list_servers():
        if other.id == server.id:
            continue
        same = []
        if other.host.lower() == server.host.lower() and other.port == server.port:
            same.append(f"the same address and port ({server.host}:{server.port})")
        if other.host_key_fingerprint and other.host_key_fingerprint == server.host_key_fingerprint:
            same.append(f"the same host key ({server.host_key_fingerprint})")
        if same:
            out.append(f"{server.name} has {' and '.join(same)} as server {other.name}: the same host under "
                       f"two names is polled and alerted twice (`central server remove {server.name}` if unintended)")
    return out


async def test_server(central: Central, name: str) -> dict:
    """Check SSH (with the pinned key) and the agent of a stored server."""
    server = await central.storage.get_server(name)
    try:
        result = await central.transports.of(server).check(server)
    except PollError as err:
        return {"ok": False, "reason": err.reason, "error": err.message}
    return result


async def trust_server(central: Central, name: str, fingerprint: str | None = None) -> dict:
    """Re-pin a server's host key after the operator verified the new fingerprint."""
    server = await central.storage.get_server(name)
    _refuse_without_host_key(central.transports.of(server), name)
    probed = await _probe_stored(central, server)
    if fingerprint is None:
        raise Invalid("the new fingerprint must be confirmed", detail=probed["fingerprint"])
    if probed["fingerprint"] != normalise_fingerprint(fingerprint):
        raise PollError(HOST_KEY_MISMATCH,
                        f"{server.host}:{server.port} presents {probed['fingerprint']}, not the confirmed {normalise_fingerprint(fingerprint)}")
    updated = await central.storage.pin_host_key(name, probed["host_key"], probed["fingerprint"])
    central.transports.forget(server.id)
    return {"server": updated.to_dict(), "previous_fingerprint": server.host_key_fingerprint}


async def update_server(central: Central, name: str, **changes) -> Server:
    """Change a server's settings (tags, interval, user, port, agent port, key)."""
    server = await central.storage.get_server(name)
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
        elif key == "via":
            bastion = await check_via(central, value, name)
            fields["via"] = bastion.id if bastion else None
        elif key == "key_path":
            if value is not None and not Path(value).is_file():
                raise Invalid(f"key file {value} does not exist")
            fields["key_path"] = value
        else:
            raise Invalid(f"unknown field {key!r}")
    transport = central.transports.of(server)
    if transport.settable is not None and set(fields) - transport.settable:
        raise Invalid(transport.settable_text.format(name=name))
    if "host" in fields or "port" in fields:
        # A different address may be a different machine: the key must be confirmed again.
        fields["host_key"] = None
        fields["host_key_fingerprint"] = None
        fields["status"] = ERROR
        fields["status_reason"] = HOST_KEY_UNKNOWN
    return await central.storage.update_server(name, **fields)


async def remove_server(central: Central, name: str) -> None:
    """Delete a server and its history."""
    server = await central.storage.get_server(name)
    await central.storage.remove_server(name)
    central.transports.forget(server.id)


async def poll_now(central: Central, name: str) -> dict:
    """Poll a server once and return the outcome with the agent document (not stored)."""
    server = await central.storage.get_server(name)
    outcome = await central.poller.poll(server)
    result = {"server": name, "ok": outcome.ok, "duration_ms": round(outcome.duration * 1000, 2)}
    if outcome.ok:
        doc, _ = parse_document(outcome.doc_text.encode())
        result["sample"] = outcome.sample
        result["document"] = doc
    else:
        result["reason"] = outcome.reason
        result["error"] = outcome.error
    return result


async def _probe_stored(central: Central, server: Server) -> dict:
    """The key a stored server presents now (through its bastion, if it has one)."""
    bastion = await central.storage.server_by_id(server.via) if server.via is not None else None
    return await probe_key(central, server.host, server.port, via=bastion)


def _refuse_without_host_key(transport: Transport, name: str) -> None:
    """Invalid for a server without an SSH host key (the central's own host)."""
    if transport.no_host_key is not None:
        raise Invalid(transport.no_host_key.format(name=name))
