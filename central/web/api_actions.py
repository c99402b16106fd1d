"""/api/v1/servers/{name}/actions, /logs and /api/v1/audit: run a remote action, read a unit's or a
container's log through the agent (central.hostlogs), read the audit trail.

Thin handlers over central.actions.run_action and audit_log (the CLI's functions too):
run_action checks the role (admin, operator), validates the arguments, sends the action to
the host's agent and records the outcome in the audit table, refusals included.
"""
from __future__ import annotations

from .. import hostlogs
from ..actions import KINDS, RESULTS, SIGNALS, VERBS, audit_log, run_action
from .registry import OPERATOR, VIEWER, Call, Registry, array, boolean, integer, nullable, number, obj, string

endpoints = Registry(tag="actions")

NAME = string(maxLength=63, description="Server name.")
ARGUMENTS = obj({
    "pid": integer(minimum=1), "signal": string(maxLength=12, description=f"One of {', '.join(SIGNALS)} (default TERM)."),
    "start_time": nullable(integer(minimum=0, description="The process's start time as the central saw it (a reused pid is refused).")),
    "unit": string(maxLength=256), "container": string(maxLength=128), "verb": string(enum=list(VERBS)),
}, description="kill: pid, signal, start_time; service: unit, verb; docker: container, verb.")
RESULT = obj({"ok": boolean(), "exit_status": nullable(integer()), "output": string(), "duration_ms": nullable(number()),
              "server": string(), "action": string(), "arguments": obj({}, closed=False), "audit_id": integer(),
              "result": string(enum=list(RESULTS))},
             required=["ok", "exit_status", "output", "server", "action", "arguments", "audit_id", "result"], closed=False)
AUDIT_ROW = obj({"id": integer(), "ts": number(), "actor": string(), "role": string(), "server_id": nullable(integer()),
                 "server_name": string(), "action": string(), "arguments": obj({}, closed=False),
                 "result": string(), "exit_status": nullable(integer()), "output": string(), "duration_ms": nullable(number())},
                required=["id", "ts", "actor", "server_name", "action", "arguments", "result", "output"], closed=False)


@endpoints.post("/api/v1/servers/{name}/actions", summary="Run a remote action (kill, service, docker)", role=OPERATOR,
                path_params={"name": NAME},
                body=obj({"action": string(enum=list(KINDS)), "arguments": ARGUMENTS}, required=["action", "arguments"]),
                response=RESULT, errors=(404, 409, 502))
async def run_server_action(call: Call) -> dict:
    """Sends the action to the host's agent and waits for its answer: `ok`, `exit_status` and
    `output` are the host's. A refusal (policy, pid 1, a reused pid) is 403/409, an unknown
    process or container 404, an unreachable host 502; every outcome is in the audit log."""
    ident = call.identity
    return await run_action(call.central, ident.user, ident.role, call.path["name"], call.body["action"],
                            call.body["arguments"])


LOG_LINE = obj({"ts": nullable(number()), "priority": nullable(integer(minimum=0, maximum=7)),
                "identifier": nullable(string()), "pid": nullable(integer()), "message": string()},
               required=["ts", "message"], closed=False)


@endpoints.get("/api/v1/servers/{name}/logs", summary="The last lines of a unit's journal or a container's log",
               role=OPERATOR, path_params={"name": NAME},
               query={"unit": string(maxLength=256, description="A systemd unit (nginx means nginx.service)."),
                      "container": string(maxLength=128, description="A container name (Docker, or LXC on an LXC host)."),
                      "lines": integer(minimum=1, maximum=hostlogs.LINES_MAX, default=hostlogs.LINES_DEFAULT)},
               response=obj({"server": string(), "source": nullable(string(description="journal, docker or lxc-journal")),
                             "name": nullable(string()), "lines": array(LOG_LINE), "count": integer(),
                             "truncated": boolean(description="Cut to the agent's size cap (512 KiB of messages)."),
                             "audit_id": integer()},
                            required=["server", "source", "lines", "count", "truncated", "audit_id"]),
               errors=(404, 409, 502))
async def server_logs(call: Call) -> dict:
    """Asked of the host's agent now and never stored: `journalctl -o json` for a unit, the Engine's
    logs for a Docker container, an LXC container's own journal; oldest line first. The host policy's
    `"logs": false` refuses it (403); every request is in the audit log (action `logs`)."""
    ident, q = call.identity, call.query
    return await hostlogs.fetch_logs(call.central, ident.user, ident.role, call.path["name"], unit=q.get("unit"),
                                     container=q.get("container"), lines=q["lines"])


@endpoints.get("/api/v1/audit", summary="The audit trail of actions, newest first", role=VIEWER,
               query={"server": NAME, "limit": integer(minimum=1, maximum=1000, default=100),
                      "before_id": integer(minimum=1, description="Only rows older than this id (paging).")},
               response=obj({"audit": array(AUDIT_ROW)}, required=["audit"]))
async def list_audit(call: Call) -> dict:
    """Who asked for what on which server, and the outcome (refusals and failures included)."""
    q = call.query
    return {"audit": await audit_log(call.central, q.get("server"), q["limit"], q.get("before_id"))}
