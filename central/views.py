"""One data function per view: the JSON API returns these dicts and the HTML page renders them.

Nothing here knows about HTTP; each function takes the opened Central and returns JSON-ready
data, raising CentralError (NotFound, Invalid) for bad input.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from . import __version__, alerts
from .bundled import agent_module, agent_sha256
from .config import ConfigError, parse_duration
from .actions import VERBS
from .model import (CONTAINER_METRICS, METRICS, ONLINE, REASON_TEXT, STATUSES, Invalid, NotFound, PollError,
                    Unavailable)

if TYPE_CHECKING:
    from .service import Central

# What the fleet averages are taken over (the overview's headline figures).
AVERAGED = tuple(m.column for m in METRICS.values() if m.fleet_average)
MAX_RANGE = 400 * 86400.0


def freshness(central: Central, server: dict, now: float | None = None) -> dict:
    """How current a server's figures are: {"stale", "seen_ago", "status_text"}.

    Stale when the server is not online, was never seen, or its last good poll is older than
    three intervals (a poller that fell behind): the page greys its figures and turns its
    actions off, so nothing old passes for current.
    """
    poll = central.config.poll
    interval = server.get("interval_s") or poll.interval
    seen = server.get("last_seen")
    ago = None if seen is None else max(0.0, (time.time() if now is None else now) - seen)
    stale = server.get("status") != ONLINE or ago is None or ago > max(3 * interval, interval + poll.timeout)
    reason = server.get("status_reason")
    return {"stale": stale, "seen_ago": None if ago is None else round(ago, 1),
            "status_text": REASON_TEXT.get(reason, reason) if reason else None}


async def server_list(central: Central, *, tag: str | None = None, status: str | None = None,
                      name: str | None = None, limit: int | None = 100, offset: int = 0) -> dict:
    """Servers with status and latest key figures, filtered (tag, status, name substring) and paged
    (limit None: all of them)."""
    page, total = await central.storage.server_page(tag=tag, status=status, name=name, limit=limit, offset=offset)
    rows = await server_overview(central, page)
    return {"servers": rows, "total": total, "limit": limit, "offset": offset}


async def server_overview(central: Central, servers: list[dict] | None = None) -> list[dict]:
    """Servers (default: all) with their status and latest key figures (for lists and the page)."""
    if servers is None:
        servers = await central.storage.server_dicts()
    latest = await central.storage.latest_samples()
    bundled = agent_sha256()
    now = time.time()
    for d in servers:
        d.pop("host_key", None)
        d["sample"] = latest.get(d["id"])
        d["agent_outdated"] = (bool(d["agent_sha256"]) and central.transports.of_kind(d["kind"]).no_agent is None
                               and d["agent_sha256"] != bundled)
        d.update(freshness(central, d, now))
    return servers



async def server_detail(central: Central, name: str) -> dict:
    """One server: stored fields, latest document, inventory, recent changes."""
    server = await central.storage.get_server(name)
    latest = await central.storage.latest_document(server.id)
    inv = await central.storage.inventory_latest(server.id)
    d = server.to_dict()
    d.pop("host_key", None)
    d.update(freshness(central, d))
    return {
        "server": d,
        "latest": {"ts": latest[0], "document": latest[1]} if latest else None,
        "inventory": inv,
        "inventory_changes": await central.storage.inventory_history(server.id, limit=20),
        "agent_outdated": (bool(server.agent_sha256) and central.transports.of(server).no_agent is None
                           and server.agent_sha256 != agent_sha256()),
    }


async def fleet_stats(central: Central) -> dict:
    """Fleet totals: servers by status, open alerts, and averages over online servers."""
    by_status = await central.storage.status_counts()
    online = await central.storage.online_ids()
    latest = await central.storage.latest_samples()
    counts = {s: by_status.get(s, 0) for s in STATUSES}
    sums = dict.fromkeys(AVERAGED, 0.0)
    ns = dict.fromkeys(AVERAGED, 0)
    for sid in online:
        sample = latest.get(sid)
        if sample is None:
            continue
        for m in AVERAGED:
            if sample.get(m) is not None:
                sums[m] += sample[m]
                ns[m] += 1
    counts_ = await central.storage.alert_counts()
    return {
        "total": sum(by_status.values()),
        **counts,
        # The headline: what needs someone (warning, critical); info (inventory changes) apart.
        "alerts_firing": counts_["firing"] - counts_["firing_info"],
        "alerts_info": counts_["firing_info"],
        "alerts_pending": counts_["pending"],
        "averages": {m: (round(sums[m] / ns[m], 2) if ns[m] else None) for m in AVERAGED},
        "ts": time.time(),
    }


async def central_status(central: Central) -> dict:
    """The central itself: version, uptime, database size, poller lag, pool size, polls done, storage health."""
    poller = central.poller
    return {
        "version": __version__,
        "pid": os.getpid(),
        "started_at": central.started_at,
        "uptime": time.time() - central.started_at,
        "database": {"path": central.storage.location, "bytes": await central.storage.database_size()},
        "poller": {
            "lag": poller.lag,
            "servers": poller.scheduled,
            "polls": poller.polls,
            "polls_failed": sum(poller.errors_by_reason.values()),
            "errors_by_reason": dict(poller.errors_by_reason),
        },
        "pool": central.transports.ssh.pool_figures(),
        "notifiers": (await notifications_status(central))["notifiers"],
        "storage": central.poller.writer.status(),
        "cluster": central.membership.status() if central.membership is not None else None,
    }


def readiness(central: Central) -> tuple[bool, dict]:
    """(ready, body) for the readiness probe: not ready while poll outcomes cannot be written."""
    storage = central.poller.writer.status()
    body = {"status": "ready" if storage["ok"] else "not_ready", "uptime": time.time() - central.started_at,
            "storage": storage}
    if not storage["ok"]:
        body["reason"] = f"the database cannot be written: {storage['reason']}"
    return storage["ok"], body


async def notifications_status(central: Central) -> dict:
    """Each notification channel's health, the routes and the weekly maintenance windows (secrets masked)."""
    dispatcher = central.notifier
    if not dispatcher.started:
        await dispatcher.load_health()  # not serving (the CLI): the delivery log says how channels did
    now = time.time()
    return {"notifiers": dispatcher.health(), "routes": dispatcher.router.describe(),
            "maintenance": [w.describe(now) for w in central.alerts.windows]}


def parse_range(range_: str | None, start: float | None, end: float | None, now: float | None = None) -> tuple[float, float]:
    """[start, end) from explicit Unix times and/or a range like 1h, 24h, 7d, 30d (default 1h ending now)."""
    now = time.time() if now is None else now
    if range_ is not None:
        try:
            span = parse_duration(range_, "range")
        except ConfigError as exc:
            raise Invalid(str(exc)) from None
        if span <= 0:
            raise Invalid("range: must be longer than 0")
        if start is not None and end is not None:
            raise Invalid("range: give range with start or end, not both")
        if start is not None:
            end = start + span
        else:
            end = now if end is None else end
            start = end - span
    else:
        end = now if end is None else end
        start = end - 3600.0 if start is None else start
    if end <= start:
        raise Invalid("end: must be after start")
    if end - start > MAX_RANGE:
        raise Invalid(f"range: at most {MAX_RANGE / 86400:.0f} days")
    return start, end


async def server_history(central: Central, name: str, *, metrics: list[str] | None = None,
                         start: float | None = None, end: float | None = None, range_: str | None = None,
                         max_points: int = 500) -> dict:
    """A server's key figures over a range, from the finest stored tier that keeps it under max_points."""
    metrics = list(metrics or METRICS)
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise Invalid(f"metrics: unknown metric {bad[0]!r} (known: {', '.join(METRICS)})")
    server = await central.storage.get_server(name)
    start, end = parse_range(range_, start, end)
    r = central.config.retention
    data = await central.storage.history(server.id, start, end, max_points=max_points, retention_raw=r.raw,
                                         retention_minute=r.minute, metrics=metrics)
    return {"server": name, "metrics": metrics, **data}


# The containers table's sparklines cover this much of the recent past (raw samples).
SPARK_SECONDS = 1800.0
_CONTAINER_TEXT = ("name", "id", "engine", "image", "state", "status", "health")
_CONTAINER_NUMBERS = ("restarts", "uptime", "cpu_percent", "cpu_limit", "memory_used", "memory_limit",
                      "memory_percent", "pids", "read_rate", "write_rate", "rx_rate", "tx_rate")


def _container_entries(doc: dict) -> tuple[dict, list[dict]]:
    """(containers section, its entries checked) of a stored document."""
    section = doc.get("containers") if isinstance(doc.get("containers"), dict) else {}
    out = []
    for c in section.get("containers") or []:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            continue
        entry = {k: c[k] if isinstance(c.get(k), str) else None for k in _CONTAINER_TEXT}
        entry.update({k: c[k] if isinstance(c.get(k), (int, float)) and not isinstance(c.get(k), bool) else None
                      for k in _CONTAINER_NUMBERS})
        out.append(entry)
    return section, out


def _container_actions(central: Central, server, entry: dict, stale: bool) -> list[str]:
    """The verbs the page offers on a container: Docker ones (the docker action kind, which the
    agent carries out on the Docker socket), none on Podman or LXC containers (no action kind for
    them) or while the server does not answer; the host policy still decides."""
    if stale or entry["engine"] != "docker":
        return []
    return list(VERBS)


async def server_containers(central: Central, name: str) -> dict:
    """Every container of the server's newest document (running first), each with sparkline series
    of the last SPARK_SECONDS (cpu, mem_used) and the verbs the page may offer on it."""
    server = await central.storage.get_server(name)
    fresh = freshness(central, server.to_dict())
    latest = await central.storage.latest_document(server.id)
    ts, doc = latest if latest else (None, {})
    section, entries = _container_entries(doc)
    since = (ts or time.time()) - SPARK_SECONDS
    recent = await central.storage.container_recent(server.id, since, ("cpu", "mem_used"))
    for e in entries:
        e["spark"] = recent.get(e["name"]) or {"ts": [], "cpu": [], "mem_used": []}
        e["actions"] = _container_actions(central, server, e, fresh["stale"])
    return {"server": name, "ts": ts, "stale": fresh["stale"], "available": section.get("available") is True,
            "reason": section.get("reason") if isinstance(section.get("reason"), str) else None,
            "cgroup": section.get("cgroup") if section.get("cgroup") in (1, 2) else None,
            "count": section.get("count") if isinstance(section.get("count"), int) else len(entries),
            "containers": entries}


async def container_detail(central: Central, name: str, container: str, *, start: float | None = None,
                           end: float | None = None, range_: str | None = None, max_points: int = 500,
                           metrics: list[str] | None = None) -> dict:
    """One container: its entry in the newest document (null once it is gone) and its history."""
    metrics = list(metrics or CONTAINER_METRICS)
    bad = [m for m in metrics if m not in CONTAINER_METRICS]
    if bad:
        raise Invalid(f"metrics: unknown metric {bad[0]!r} (known: {', '.join(CONTAINER_METRICS)})")
    server = await central.storage.get_server(name)
    fresh = freshness(central, server.to_dict())
    latest = await central.storage.latest_document(server.id)
    ts, doc = latest if latest else (None, {})
    entry = next((e for e in _container_entries(doc)[1] if e["name"] == container), None)
    start, end = parse_range(range_, start, end)
    r = central.config.retention
    history = await central.storage.container_history(server.id, container, start, end, max_points=max_points,
                                                      retention_raw=r.raw, retention_minute=r.minute, metrics=metrics)
    if entry is None and not history["series"]["ts"]:
        raise NotFound(f"no container {container!r} on {name}", "it is not in the newest document and has no stored figures")
    if entry is not None:
        entry["actions"] = _container_actions(central, server, entry, fresh["stale"])
    return {"server": name, "container": container, "ts": ts, "stale": fresh["stale"], "current": entry,
            "metrics": metrics, **history}


def _kill_offered(p: dict, policy: dict | None) -> bool:
    """Whether the page may offer a Kill for this process entry."""
    if policy is not None:  # in-process: the policy its actions run under decides
        return agent_module().kill_offered(policy, p)
    if isinstance(p.get("kill"), bool):
        return p["kill"]  # the agent's own answer
    # An agent from before `kill`: leave out what it always refuses that a list can tell.
    return p.get("pid") != 1 and bool(p.get("cmdline"))


async def server_processes(central: Central, name: str) -> dict:
    """The latest top-CPU and top-memory process lists the server's agent reported.

    Each process says whether a kill would be accepted (`kill`); `stale` says the list is the
    last one a server that no longer answers sent, and nothing in it can be acted on.
    """
    server = await central.storage.get_server(name)
    fresh = freshness(central, server.to_dict())
    latest = await central.storage.latest_document(server.id)
    if latest is None:
        return {"server": name, "ts": None, "count": None, "stale": fresh["stale"], "top_cpu": [], "top_memory": []}
    ts, doc = latest
    procs = doc.get("processes") if isinstance(doc.get("processes"), dict) else {}
    policy = central.transports.of(server).action_policy()
    lists = {}
    for key in ("top_cpu", "top_memory"):
        lists[key] = [dict(p, kill=not fresh["stale"] and _kill_offered(p, policy))
                      for p in procs.get(key) or [] if isinstance(p, dict) and isinstance(p.get("pid"), int)]
    return {
        "server": name,
        "ts": ts,
        "count": procs.get("count") if isinstance(procs.get("count"), int) else None,
        "stale": fresh["stale"],
        **lists,
    }


def _units(doc: dict, limit: int = 2000) -> list[dict]:
    """The unit entries of an agent's /api/services answer, checked (a host is untrusted)."""
    out = []
    for u in (doc.get("units") if isinstance(doc.get("units"), list) else [])[:limit]:
        if not isinstance(u, dict) or not isinstance(u.get("unit"), str):
            continue
        verbs = u.get("actions") if isinstance(u.get("actions"), list) else []
        out.append({"unit": u["unit"][:256],
                    **{k: u[k][:200] if isinstance(u.get(k), str) else None for k in ("load", "active", "sub", "description")},
                    "type": u["unit"].rsplit(".", 1)[-1][:32] if "." in u["unit"] else None,
                    "watched": u.get("watched") is True,
                    "actions": [v for v in VERBS if v in verbs],
                    **{k: _finite(u.get(k)) for k in _UNIT_NUMBERS}})
    return out


# what the agent's /api/services says of each unit beyond its state (agent 1.2.0; null before)
_UNIT_NUMBERS = ("since", "main_pid", "restarts", "memory", "cpu_percent", "last_trigger", "next_elapse")


def _finite(value) -> float | int | None:
    """A host's number if it is a finite, non-negative int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (value == value and abs(value) < 1e18):
        return None
    return value if 0 <= value < 2**63 else None


def _unit_order(u: dict) -> tuple:
    # failed first, then watched, then running, then the rest; by name within each
    rank = 0 if u["active"] == "failed" else 1 if u["watched"] else 2 if u["active"] == "active" else 3
    return (rank, u["unit"])


async def server_services(central: Central, name: str, *, live: bool = True) -> dict:
    """The host's systemd service units with the actions its policy allows on each.

    Asked of the agent (GET /api/services, which lists units at most every 10 s) when live
    and the server answers; otherwise what the last poll said (failed and watched units only,
    no actions), with `live` false and `error` saying why.
    """
    server = await central.storage.get_server(name)
    fresh = freshness(central, server.to_dict())
    error = None
    if live and not fresh["stale"]:
        try:
            doc = await central.transports.of(server).services(server)
        except (PollError, Unavailable) as exc:
            error = exc.message
        else:
            units = sorted(_units(doc), key=_unit_order)
            return {"server": name, "live": True, "ts": time.time(), "available": doc.get("available") is True,
                    "units": units, "error": None, "details_at": _finite(doc.get("details_at"))}
    elif live:
        error = f"{name} is {server.status}: showing what its last poll said"
    latest = await central.storage.latest_document(server.id)
    ts, doc = latest if latest else (None, {})
    sd = doc.get("systemd") if isinstance(doc.get("systemd"), dict) else {}
    failed = [u for u in sd.get("failed") or [] if isinstance(u, str)]
    watched = sd.get("watched") if isinstance(sd.get("watched"), dict) else {}
    units = {u: {"unit": u[:256], "load": None, "active": "failed", "sub": None, "description": None,
                 "watched": False, "actions": []} for u in failed}
    for u, state in watched.items():
        if isinstance(u, str):
            entry = units.setdefault(u, {"unit": u[:256], "load": None, "sub": None, "description": None, "actions": []})
            entry.update(watched=True, active=state[:64] if isinstance(state, str) else None)
    for entry in units.values():
        entry.setdefault("type", entry["unit"].rsplit(".", 1)[-1] if "." in entry["unit"] else None)
        for k in _UNIT_NUMBERS:
            entry.setdefault(k, None)
    return {"server": name, "live": False, "ts": ts, "available": sd.get("available") is True,
            "units": sorted(units.values(), key=_unit_order), "error": error, "details_at": None}


async def alert_detail(central: Central, alert_id: int) -> dict:
    """One alert with its delivery log and, when it concerns a server, that server's status."""
    alert = await alerts.get_alert(central, alert_id)
    server = None
    if alert.get("server"):
        found = await central.storage.find_server(alert["server"])
        if found is not None:
            d = found.to_dict()
            server = {"name": d["name"], "status": d["status"], "status_reason": d["status_reason"],
                      "hostname": d["hostname"], "last_seen": d["last_seen"],
                      **freshness(central, d)}
    return {"alert": alert, "server": server}


async def server_inventory(central: Central, name: str, limit: int = 100) -> dict:
    """The server's current inventory and its change history (newest first)."""
    server = await central.storage.get_server(name)
    return {
        "server": name,
        "latest": await central.storage.inventory_latest(server.id),
        "history": await central.storage.inventory_history(server.id, limit=limit),
    }
