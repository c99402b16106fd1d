"""One data function per view: the JSON API returns these dicts and the HTML page renders them.

Nothing here knows about HTTP; each function takes the opened Central and returns JSON-ready
data, raising CentralError (NotFound, Invalid) for bad input.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from . import __version__
from .bundled import agent_sha256
from .config import ConfigError, parse_duration
from .model import METRICS, STATUSES, Invalid

if TYPE_CHECKING:
    from .service import Central

# What the fleet averages are taken over (the overview's headline figures).
AVERAGED = tuple(m.column for m in METRICS.values() if m.fleet_average)
MAX_RANGE = 400 * 86400.0


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
    for d in servers:
        d.pop("host_key", None)
        d["sample"] = latest.get(d["id"])
        d["agent_outdated"] = (bool(d["agent_sha256"]) and central.transports.of_kind(d["kind"]).no_agent is None
                               and d["agent_sha256"] != bundled)
    return servers



async def server_detail(central: Central, name: str) -> dict:
    """One server: stored fields, latest document, inventory, recent changes."""
    server = await central.storage.get_server(name)
    latest = await central.storage.latest_document(server.id)
    inv = await central.storage.inventory_latest(server.id)
    d = server.to_dict()
    d.pop("host_key", None)
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
    alerts = await central.storage.alert_counts()
    return {
        "total": sum(by_status.values()),
        **counts,
        "alerts_firing": alerts["firing"],
        "alerts_pending": alerts["pending"],
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
        "pool": {"connections": central.pool.size, "connects": central.pool.connects},
        "notifiers": (await notifications_status(central))["notifiers"],
        "storage": central.poller.writer.status(),
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


async def server_processes(central: Central, name: str) -> dict:
    """The latest top-CPU and top-memory process lists the server's agent reported."""
    server = await central.storage.get_server(name)
    latest = await central.storage.latest_document(server.id)
    if latest is None:
        return {"server": name, "ts": None, "count": None, "top_cpu": [], "top_memory": []}
    ts, doc = latest
    procs = doc.get("processes") if isinstance(doc.get("processes"), dict) else {}
    return {
        "server": name,
        "ts": ts,
        "count": procs.get("count") if isinstance(procs.get("count"), int) else None,
        "top_cpu": [p for p in procs.get("top_cpu") or [] if isinstance(p, dict)],
        "top_memory": [p for p in procs.get("top_memory") or [] if isinstance(p, dict)],
    }


async def server_inventory(central: Central, name: str, limit: int = 100) -> dict:
    """The server's current inventory and its change history (newest first)."""
    server = await central.storage.get_server(name)
    return {
        "server": name,
        "latest": await central.storage.inventory_latest(server.id),
        "history": await central.storage.inventory_history(server.id, limit=limit),
    }
