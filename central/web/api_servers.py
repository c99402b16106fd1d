"""/api/v1/servers and the fleet: list, create (two-step host-key confirmation), show, update,
delete, test, trust, history, processes, inventory, fleet stats.

Role policy: viewer reads; operator may test a server (it opens an SSH connection); admin adds,
changes, re-trusts and removes servers.
"""
from __future__ import annotations

from .. import fleet, servers, views
from ..model import CONTAINER_METRICS
from ..sample import METRICS
from ..servers import HOST_RE, NAME_RE, TAG_RE, USER_RE
from ..transport import KINDS
from .registry import ADMIN, OPERATOR, VIEWER, Call, Registry, Reply, array, boolean, integer, nullable, number, obj, string

endpoints = Registry(tag="servers")

NAME = string(pattern=NAME_RE.pattern, maxLength=63, description="Server name.")
HOST = string(pattern=HOST_RE.pattern, maxLength=253, description="Host name or IP address.")
PORT = integer(minimum=1, maximum=65535)
TAGS = array(string(pattern=TAG_RE.pattern, maxLength=40), maxItems=32)
INTERVAL = number(minimum=1, maximum=86400, description="Poll interval in seconds (null: poll.interval).")
FINGERPRINT = string(minLength=1, maxLength=100, description="SHA256:... fingerprint of the host key to pin.")
STATUS = string(enum=list(views.STATUSES))
VIA = string(pattern=NAME_RE.pattern, maxLength=63, description="The bastion server it is reached through (null: directly).")
NUM = nullable(number())

SAMPLE = obj({"ts": number(), **{m: NUM for m in METRICS},
              "top": array(array({}), description="[[pid, name, cpu percent, rss bytes], ...]")},
             required=["ts", *METRICS], closed=False)
SERVER = obj({
    "id": integer(), "name": string(), "kind": string(enum=list(KINDS)), "host": string(),
    "port": integer(), "user": string(), "key_path": nullable(string()), "agent_port": integer(),
    "tags": array(string()), "interval_s": NUM, "host_key_fingerprint": nullable(string()),
    "status": STATUS, "status_reason": nullable(string()), "last_error": nullable(string()),
    "consecutive_failures": integer(), "last_seen": NUM, "last_poll": NUM, "poll_duration": NUM,
    "agent_version": nullable(string()), "agent_sha256": nullable(string()), "hostname": nullable(string()),
    "inventory_hash": nullable(string()), "created_at": number(),
    "stale": boolean(description="Not online, or not seen for three intervals: its figures are old and actions are off."),
    "seen_ago": nullable(number(description="Seconds since the last good poll.")),
    "status_text": nullable(string(description="What status_reason means, in words.")),
}, required=["id", "name", "kind", "host", "port", "user", "tags", "status", "status_reason"], closed=False)
PROCESS = obj({"pid": integer(), "start_time": nullable(integer()), "name": nullable(string()), "user": nullable(string()),
               "cmdline": nullable(string()), "cpu_percent": NUM, "rss": NUM,
               "kill": boolean(description="Whether the host would accept a kill of this process now.")},
              required=["pid", "kill"], closed=False)
SERVER_ROW = {**SERVER, "properties": {**SERVER["properties"], "sample": nullable(SAMPLE), "agent_outdated": boolean()},
              "required": [*SERVER["required"], "sample", "agent_outdated"]}
AGENT_CHECK = obj({"ok": boolean(), "reason": string(), "error": string(), "hint": string(), "version": nullable(string()),
                   "sha256": nullable(string()), "outdated": boolean(), "ssh_ms": number(), "local": boolean(),
                   "hostname": nullable(string())}, required=["ok"], closed=False)
PROBE = obj({"host": string(), "port": integer(), "host_key": string(), "fingerprint": string(),
             "algorithm": string()}, required=["host", "port", "fingerprint", "algorithm"], closed=False)
CONFIRM = obj({"stored": boolean(enum=[False]), "confirm": PROBE, "current": nullable(string()),
               "next": string()}, required=["stored", "confirm", "next"], closed=False)


@endpoints.get("/api/v1/servers", summary="List servers with status and latest key figures", role=VIEWER,
               query={"tag": string(maxLength=40), "status": STATUS, "name": string(maxLength=63, description="Substring of the name."),
                      "limit": integer(minimum=1, maximum=1000, default=100), "offset": integer(minimum=0, default=0)},
               response=obj({"servers": array(SERVER_ROW), "total": integer(), "limit": integer(), "offset": integer()},
                            required=["servers", "total", "limit", "offset"]))
async def list_servers(call: Call) -> dict:
    """Servers sorted by name; `total` counts all matches, `servers` holds one page (limit/offset)."""
    q = call.query
    return await views.server_list(call.central, tag=q.get("tag"), status=q.get("status"), name=q.get("name"),
                                   limit=q["limit"], offset=q["offset"])


@endpoints.post("/api/v1/servers", summary="Add a server (two steps: probe the host key, then pin it)", role=ADMIN,
                body=obj({"name": NAME, "host": HOST, "port": PORT, "user": string(pattern=USER_RE.pattern, maxLength=32),
                          "tags": TAGS, "interval": nullable(INTERVAL), "agent_port": PORT, "fingerprint": FINGERPRINT,
                          "via": nullable(VIA)},
                         required=["name", "host"]),
                responses={201: obj({"stored": boolean(enum=[True]), "server": SERVER, "agent": AGENT_CHECK,
                                     "warnings": array(string())},
                                    required=["stored", "server", "agent", "warnings"]),
                           200: CONFIRM},
                errors=(409, 502))
async def create_server(call: Call):
    """Without `fingerprint`: connects to the host, returns the host key fingerprint to confirm
    (200, nothing stored). With it: pins the key only if the host still presents that
    fingerprint, checks SSH login and the agent, and stores the server (201). An unreachable host
    or a refused key is a 502 and nothing is stored; an agent that does not answer yet is
    reported in `agent` with a deploy hint. `warnings` names each other server that looks like the
    same host (the same address and port, or the same pinned host key)."""
    b = call.body
    if not b.get("fingerprint"):
        probed = await servers.probe_new(call.central, b["name"], b["host"], b.get("port", 22), via=b.get("via"))
        return Reply({"stored": False, "confirm": probed, "current": None,
                      "next": "repeat the request with fingerprint set to confirm.fingerprint"}, 200)
    result = await servers.add_server(call.central,
        b["name"], b["host"], port=b.get("port", 22), user=b.get("user", "central"), tags=b.get("tags", ()),
        interval=b.get("interval"), agent_port=b.get("agent_port", 8083), fingerprint=b["fingerprint"],
        via=b.get("via"))
    return {"stored": True, **result}


IMPORT_ROW = obj({"name": string(), "where": string(), "action": string(enum=["add", "change", "skip", "error"]),
                  "host": string(), "port": integer(), "user": string(), "tags": array(string()), "via": nullable(string()),
                  "fingerprint": nullable(string()), "key_source": nullable(string(enum=["row", "known_hosts", "fetched", "pinned", "cert_authority"])),
                  "changes": array(string()), "error": nullable(string())},
                 required=["name", "where", "action", "fingerprint", "error"], closed=False)


@endpoints.post("/api/v1/servers/import", summary="Add or update many servers from an inventory file", role=ADMIN,
                body=obj({"content": string(maxLength=1_000_000, description="The fleet file's text."),
                          "filename": string(maxLength=200, description="Its name, for messages and the format guess."),
                          "format": string(enum=["ansible-ini", "ansible-yaml", "ssh-config", "csv"]),
                          "known_hosts": string(maxLength=1_000_000, description="A known_hosts file's text you trust."),
                          "fetch": boolean(description="Fetch the keys of hosts without a trusted one (confirm them)."),
                          "user": string(pattern=USER_RE.pattern, maxLength=32),
                          "inventory_user": boolean(), "tags": TAGS,
                          "dry_run": boolean(default=True, description="Only say what would happen (the default)."),
                          "confirmation": string(maxLength=64, description="The dry run's confirmation for fetched keys."),
                          "skip_errors": boolean()},
                         required=["content"]),
                response=obj({"rows": array(IMPORT_ROW), "summary": obj({}, closed=False),
                              "confirmation": nullable(string()), "dry_run": boolean(),
                              "result": nullable(obj({"added": integer(), "changed": integer(), "skipped": integer()}))},
                             required=["rows", "summary", "confirmation", "dry_run", "result"]),
                errors=(409,))
async def import_servers(call: Call) -> dict:
    """A dry run (the default) returns one row per host: add, change, skip (unchanged) or error
    (naming file, line and host). With dry_run false the rows are stored, unless one is in error
    (400, nothing stored; skip_errors imports the others) or fetched keys are not confirmed with
    the dry run's `confirmation` (409)."""
    b = call.body
    return await fleet.import_text(call.central, b["content"], filename=b.get("filename") or "upload",
                                   fmt=b.get("format"), known_hosts=b.get("known_hosts") or "", fetch=b.get("fetch", False),
                                   user=b.get("user"), inventory_user=b.get("inventory_user", False),
                                   tags=b.get("tags") or (), dry_run=b.get("dry_run", True),
                                   confirmation=b.get("confirmation"), skip_errors=b.get("skip_errors", False))


@endpoints.get("/api/v1/servers/{name}", summary="One server: settings, status, latest document, inventory",
               role=VIEWER, path_params={"name": NAME},
               response=obj({"server": SERVER, "latest": nullable(obj({"ts": number(), "document": obj({}, closed=False)},
                                                                       closed=False)),
                             "inventory": nullable(obj({}, closed=False)), "inventory_changes": array(obj({}, closed=False)),
                             "agent_outdated": boolean()},
                            required=["server", "latest", "inventory", "inventory_changes", "agent_outdated"]))
async def show_server(call: Call) -> dict:
    """The stored fields (without the raw host key), the newest agent document and the inventory."""
    return await views.server_detail(call.central, call.path["name"])


@endpoints.patch("/api/v1/servers/{name}", summary="Change a server's settings", role=ADMIN,
                 path_params={"name": NAME},
                 body=obj({"host": HOST, "port": PORT, "user": string(pattern=USER_RE.pattern, maxLength=32),
                           "tags": TAGS, "interval": nullable(INTERVAL), "agent_port": PORT, "via": nullable(VIA)}),
                 response=obj({"server": SERVER}, required=["server"]))
async def update_server(call: Call) -> dict:
    """Only the given fields change. A new host or port un-pins the host key (trust it again)."""
    server = await servers.update_server(call.central, call.path["name"], **call.body)
    d = server.to_dict()
    d.pop("host_key", None)
    return {"server": d}


@endpoints.delete("/api/v1/servers/{name}", summary="Remove a server and its history", role=ADMIN,
                  path_params={"name": NAME}, response=obj({"removed": string()}, required=["removed"]))
async def delete_server(call: Call) -> dict:
    """Deletes the server with its samples, rollups, inventory and alerts."""
    await servers.remove_server(call.central, call.path["name"])
    return {"removed": call.path["name"]}


@endpoints.post("/api/v1/servers/{name}/test", summary="Check SSH and the agent of a server", role=OPERATOR,
                path_params={"name": NAME}, response=AGENT_CHECK)
async def test_server(call: Call) -> dict:
    """Connects with the pinned key and asks the agent for its health; `ok` says if both work."""
    return await servers.test_server(call.central, call.path["name"])


@endpoints.post("/api/v1/servers/{name}/trust", summary="Re-pin a changed host key (two steps)", role=ADMIN,
                path_params={"name": NAME}, body=obj({"fingerprint": FINGERPRINT}), body_required=False,
                responses={201: obj({"stored": boolean(enum=[True]), "server": SERVER, "previous_fingerprint": nullable(string())},
                                    required=["stored", "server", "previous_fingerprint"]),
                           200: CONFIRM},
                errors=(502,))
async def trust_server(call: Call):
    """Without `fingerprint`: returns the key the host presents now and the pinned one (200,
    nothing stored). With it: pins the new key if the host presents exactly that fingerprint,
    and polling resumes (201)."""
    name = call.path["name"]
    if not call.body.get("fingerprint"):
        probed = await servers.probe_server(call.central, name)
        return Reply({"stored": False, "confirm": probed["probe"], "current": probed["pinned"],
                      "next": "repeat the request with fingerprint set to confirm.fingerprint"}, 200)
    result = await servers.trust_server(call.central, name, call.body["fingerprint"])
    result["server"].pop("host_key", None)
    return {"stored": True, **result}


@endpoints.get("/api/v1/servers/{name}/history", summary="Key figures over a time range", role=VIEWER,
               path_params={"name": NAME},
               query={"metrics": string(maxLength=200, description=f"Comma-separated, of: {', '.join(METRICS)} (default all)."),
                      "start": number(minimum=0, maximum=1e11, description="Unix time."),
                      "end": number(minimum=0, maximum=1e11, description="Unix time (default now)."),
                      "range": string(pattern=r"^\d{1,6}[smhdw]$", description="Length like 1h, 24h, 7d, 30d (default 1h)."),
                      "points": integer(minimum=10, maximum=2000, default=500, description="At most this many points.")},
               response=obj({"server": string(), "metrics": array(string()), "source": string(enum=["raw", "minute", "hour"]),
                             "step": number(), "start": number(), "end": number(),
                             "series": obj({"ts": array(number())}, required=["ts"], closed=False)},
                            required=["server", "metrics", "source", "step", "start", "end", "series"]))
async def server_history(call: Call) -> dict:
    """Buckets of avg/min/max per metric from raw samples, 1-minute or 1-hour rollups, whichever
    is finest while keeping the range within `points` buckets (and still retained)."""
    q = call.query
    metrics = [m.strip() for m in q["metrics"].split(",") if m.strip()] if q.get("metrics") else None
    return await views.server_history(call.central, call.path["name"], metrics=metrics, start=q.get("start"),
                                      end=q.get("end"), range_=q.get("range"), max_points=q["points"])


@endpoints.get("/api/v1/servers/{name}/processes", summary="Latest top process lists", role=VIEWER,
               path_params={"name": NAME},
               response=obj({"server": string(), "ts": NUM, "count": nullable(integer()),
                             "stale": boolean(description="The server does not answer: the lists are its last ones."),
                             "top_cpu": array(PROCESS), "top_memory": array(PROCESS)},
                            required=["server", "ts", "count", "stale", "top_cpu", "top_memory"]))
async def server_processes(call: Call) -> dict:
    """The top-CPU and top-memory lists of the newest agent document; `kill` on each says whether
    the host would accept a kill of it (never PID 1, kernel threads, the agent, protected names)."""
    return await views.server_processes(call.central, call.path["name"])


UNIT = obj({"unit": string(), "load": nullable(string()), "active": nullable(string()), "sub": nullable(string()),
            "description": nullable(string()), "watched": boolean(),
            "type": nullable(string(description="service, timer, or the type of a watched unit")),
            "since": nullable(number(description="When the unit last changed state (Unix time).")),
            "main_pid": nullable(integer()), "restarts": nullable(integer(description="systemd's NRestarts.")),
            "memory": nullable(number(description="Bytes its cgroup uses.")),
            "cpu_percent": nullable(number(description="Its cgroup's CPU, percent of one core, between the last two samples.")),
            "last_trigger": nullable(number(description="A timer's last run (Unix time).")),
            "next_elapse": nullable(number(description="A calendar timer's next run (Unix time).")),
            "actions": array(string(enum=["start", "stop", "restart"]),
                             description="The verbs the host policy allows on this unit.")},
           required=["unit", "active", "watched", "actions"], closed=False)


@endpoints.get("/api/v1/servers/{name}/services", summary="The host's systemd services and timers and the actions allowed on each",
               role=VIEWER, path_params={"name": NAME},
               query={"live": boolean(default=True, description="Ask the host (false: what the last poll said).")},
               response=obj({"server": string(), "live": boolean(), "ts": NUM, "available": boolean(),
                             "units": array(UNIT), "error": nullable(string()),
                             "details_at": nullable(number(description="When the host last sampled the units' details."))},
                            required=["server", "live", "ts", "available", "units", "error"]))
async def server_services(call: Call) -> dict:
    """Failed units first, then watched, running and the rest; services and timers, each with when it
    last changed state, its main PID and its cgroup's memory and CPU. Asked of the host's agent (which
    lists units at most every 10 s and samples their details at most every 60 s); when the server does
    not answer, the failed and watched units of its last poll with no actions, `live` false and `error`
    saying why."""
    return await views.server_services(call.central, call.path["name"], live=call.query["live"])


CONTAINER_NAME = string(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", description="Container name (as the agent lists it).")
CONTAINER = obj({
    "name": string(), "id": nullable(string()), "engine": nullable(string(description="docker, podman or lxc")),
    "image": nullable(string()), "state": nullable(string()), "status": nullable(string()),
    "health": nullable(string(description="healthy, unhealthy, starting; null without a healthcheck")),
    "restarts": NUM, "uptime": NUM, "cpu_percent": NUM, "cpu_limit": NUM, "memory_used": NUM, "memory_limit": NUM,
    "memory_percent": NUM, "pids": NUM, "read_rate": NUM, "write_rate": NUM, "rx_rate": NUM, "tx_rate": NUM,
    "actions": array(string(enum=["start", "stop", "restart"]), description="Verbs the page offers (Docker containers)."),
}, required=["name", "state", "actions"], closed=False)


@endpoints.get("/api/v1/servers/{name}/containers", summary="The host's containers with figures and sparklines",
               role=VIEWER, path_params={"name": NAME},
               response=obj({"server": string(), "ts": NUM, "stale": boolean(), "available": boolean(),
                             "reason": nullable(string()), "cgroup": nullable(integer()), "count": integer(),
                             "containers": array({**CONTAINER, "properties": {
                                 **CONTAINER["properties"],
                                 "spark": obj({"ts": array(number()), "cpu": array(NUM), "mem_used": array(NUM)},
                                              description="Stored samples of the last 30 minutes.")}})},
                            required=["server", "ts", "stale", "available", "count", "containers"]))
async def server_containers(call: Call) -> dict:
    """Docker, Podman and (on an LXC host) LXC containers of the newest poll, running first, with
    their CPU and memory over the last 30 minutes; figures come from each container's cgroup."""
    return await views.server_containers(call.central, call.path["name"])


@endpoints.get("/api/v1/servers/{name}/containers/{container}", summary="One container: now and its history",
               role=VIEWER, path_params={"name": NAME, "container": CONTAINER_NAME},
               query={"metrics": string(maxLength=200, description=f"Comma-separated, of: {', '.join(CONTAINER_METRICS)} (default all)."),
                      "start": number(minimum=0, maximum=1e11, description="Unix time."),
                      "end": number(minimum=0, maximum=1e11, description="Unix time (default now)."),
                      "range": string(pattern=r"^\d{1,6}[smhdw]$", description="Length like 1h, 24h, 7d, 30d (default 1h)."),
                      "points": integer(minimum=10, maximum=2000, default=500, description="At most this many points.")},
               response=obj({"server": string(), "container": string(), "ts": NUM, "stale": boolean(),
                             "current": nullable(CONTAINER), "metrics": array(string()),
                             "source": string(enum=["raw", "minute", "hour"]), "step": number(), "start": number(),
                             "end": number(), "series": obj({"ts": array(number())}, required=["ts"], closed=False)},
                            required=["server", "container", "current", "metrics", "source", "series"]))
async def container_detail(call: Call) -> dict:
    """The container's entry in the newest poll (null once it is gone) and its figures over a range,
    from the finest stored tier that keeps the range within `points` buckets."""
    q = call.query
    metrics = [m.strip() for m in q["metrics"].split(",") if m.strip()] if q.get("metrics") else None
    return await views.container_detail(call.central, call.path["name"], call.path["container"], metrics=metrics,
                                        start=q.get("start"), end=q.get("end"), range_=q.get("range"),
                                        max_points=q["points"])


@endpoints.get("/api/v1/servers/{name}/inventory", summary="Inventory and its change history", role=VIEWER,
               path_params={"name": NAME}, query={"limit": integer(minimum=1, maximum=1000, default=100)},
               response=obj({"server": string(),
                             "latest": nullable(obj({"ts": number(), "hash": string(), "doc": obj({}, closed=False)},
                                                    closed=False)),
                             "history": array(obj({"id": integer(), "ts": number(), "hash": string(), "change_summary": string(),
                                                   "change_type": string(enum=["initial", "hardware_change", "network_change",
                                                                               "os_change", "other_change"])},
                                                  closed=False))},
                            required=["server", "latest", "history"]))
async def server_inventory(call: Call) -> dict:
    """Hardware, network and OS facts now, and every change with its type, newest first."""
    return await views.server_inventory(call.central, call.path["name"], limit=call.query["limit"])


@endpoints.get("/api/v1/fleet", summary="Fleet totals, open alerts and averages", role=VIEWER,
               response=obj({"total": integer(), **{s: integer() for s in views.STATUSES},
                             "alerts_firing": integer(description="Firing alerts of severity warning or critical."),
                             "alerts_info": integer(description="Firing alerts of severity info (inventory changes...)."),
                             "alerts_pending": integer(),
                             "averages": obj({m: NUM for m in views.AVERAGED}, required=list(views.AVERAGED)),
                             "ts": number()},
                            required=["total", *views.STATUSES, "alerts_firing", "alerts_info", "alerts_pending",
                                      "averages", "ts"]))
async def fleet_stats(call: Call) -> dict:
    """Servers by status, alerts firing (warning and critical; info apart) and pending, and average
    key figures over online servers."""
    return await views.fleet_stats(call.central)
