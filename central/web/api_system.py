"""The central itself: /health, /readiness, /metrics, /api/v1/status, /api/v1/openapi.json."""
from __future__ import annotations

import asyncio

from aiohttp import web

from .. import __version__, metrics, views
from ..config import Config
from .keys import CONFIG, ENDPOINTS
from .openapi import build_openapi
from .api_notifiers import NOTIFIER
from .registry import NONE, VIEWER, Call, Registry, Reply, array, boolean, integer, nullable, number, obj, string

endpoints = Registry(tag="system")


def _metrics_role(config: Config) -> str:
    return VIEWER if config.http.metrics_auth else NONE


@endpoints.get("/health", summary="Liveness: the process answers", role=NONE,
               response=obj({"status": string(enum=["ok"]), "version": string()}, required=["status", "version"]))
async def health(call: Call) -> dict:
    """Always 200 while the process serves requests (no authentication)."""
    return {"status": "ok", "version": __version__}


STORAGE = obj({"ok": boolean(), "reason": nullable(string()), "since": nullable(number()), "failed_writes": integer(),
               "buffered": integer(), "buffer_capacity": integer(), "dropped": integer()},
              required=["ok", "reason", "since", "failed_writes", "buffered", "buffer_capacity", "dropped"])


CLUSTER = obj({"member": string(description="This central's name among the members."), "ttl": number(),
               "servers": integer(description="Servers this central polls (its leases)."),
               "members": array(obj({"member": string(), "address": string(), "started_at": number(),
                                     "heartbeat_at": number(), "servers": integer(),
                                     "lag": nullable(number(description="How late its last poll started, seconds, "
                                                                        "at its last heartbeat.")),
                                     "age": number(description="Seconds since its last heartbeat.")},
                                    required=["member", "address", "started_at", "heartbeat_at", "servers", "lag",
                                              "age"]))},
              required=["member", "ttl", "servers", "members"])


@endpoints.get("/readiness", summary="Readiness: database open and writable, poller running", role=NONE,
               responses={200: obj({"status": string(enum=["ready"]), "uptime": number(), "storage": STORAGE},
                                   required=["status", "uptime", "storage"]),
                          503: obj({"status": string(enum=["not_ready"]), "reason": string(), "uptime": number(),
                                    "storage": STORAGE}, required=["status", "reason", "uptime", "storage"])})
async def readiness(call: Call) -> Reply:
    """200 once the database is open and the poller started; 503 with the reason while poll
    outcomes cannot be written (they wait in memory; `storage` has the counts). No authentication."""
    ready, body = views.readiness(call.central)
    return Reply(body, 200 if ready else 503)


@endpoints.get("/metrics", summary="Prometheus metrics", role=_metrics_role, content_type=metrics.CONTENT_TYPE,
               response=string(description="Prometheus text exposition format 0.0.4."))
async def prometheus_metrics(call: Call) -> web.Response:
    """Every online server's key figures with a `server` label, `central_server_up`, the poll
    duration histogram, poll errors by reason, and the central's own process metrics. Needs the
    viewer role unless http.metrics_auth is false."""
    central = call.central
    servers = await central.storage.list_servers()
    latest = await central.storage.latest_samples()
    alerts = await central.storage.alert_counts()
    process = await asyncio.to_thread(metrics.process_stats)
    poller = central.poller
    text = metrics.render(servers, latest, durations=poller.durations, errors_by_reason=poller.errors_by_reason,
                          polls=poller.polls, alerts_firing=alerts["firing"], process=process,
                          storage=poller.writer.status(), failed_writes=poller.writer.failed_writes,
                          remote_write=central.remote_write.status() if central.remote_write else None)
    return web.Response(text=text, headers={"Content-Type": metrics.CONTENT_TYPE})


POLL_WORKER = obj({"index": integer(), "pid": nullable(integer()), "running": boolean(), "restarts": integer(),
                   "connections": integer(), "polls_under_way": integer(), "last_exit": nullable(string())},
                  required=["index", "pid", "running", "restarts", "connections", "polls_under_way", "last_exit"])


@endpoints.get("/api/v1/status", summary="The central: version, uptime, database size, poller, pool", role=VIEWER,
               response=obj({"version": string(), "pid": integer(), "started_at": number(), "uptime": number(),
                             "database": obj({"path": string(), "bytes": integer()}, required=["path", "bytes"]),
                             "poller": obj({"lag": number(), "servers": integer(), "polls": integer(),
                                            "polls_failed": integer(), "errors_by_reason": obj({}, closed=False)},
                                           required=["lag", "servers", "polls", "polls_failed"]),
                             "pool": obj({"connections": integer(), "connects": integer(),
                                          "workers": array(POLL_WORKER)}, required=["connections", "connects"]),
                             "notifiers": array(NOTIFIER), "storage": STORAGE, "cluster": nullable(CLUSTER)},
                            required=["version", "uptime", "database", "poller", "pool", "storage"]))
async def central_status(call: Call) -> dict:
    """`poller.lag` is how late (seconds) the last poll started against its slot; `notifiers` is each
    notification channel's health (as in /api/v1/notifiers); `storage` says whether poll outcomes
    can be written and how many wait in memory; `cluster` (null unless cluster.enabled) names this
    central among the members sharing the database and lists the live ones (docs/scaling.md);
    `pool` counts SSH connections and connects, its poll workers' included, and `pool.workers`
    (with poll.workers) lists each worker process: pid, whether it runs, restarts, connections,
    polls under way and how the last one ended."""
    return await views.central_status(call.central)


@endpoints.get("/api/v1/openapi.json", summary="This API's OpenAPI 3.1 document", role=VIEWER,
               response=obj({"openapi": string(), "info": obj({}, closed=False), "paths": obj({}, closed=False)},
                            required=["openapi", "info", "paths"], closed=False))
async def openapi_document(call: Call) -> dict:
    """Generated from the declared endpoints, so it always matches the handlers."""
    app = call.request.app
    return build_openapi(app[ENDPOINTS], app[CONFIG])
