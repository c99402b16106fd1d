"""Remote actions: kill a process, start/stop/restart a systemd service or a docker container.

`run_action` is the one entry point for the CLI and the HTTP API. It checks the caller's
role, validates the arguments centrally with the agent's own patterns (an invalid request
never reaches a host), resolves a kill's process start time from what the central saw, sends
the request to the agent's action endpoint on a channel of its own (a slow restart never
blocks polls), and records every request and its outcome in the audit table: refusals,
invalid requests and failures included.

Roles: ``admin`` and ``operator`` may act, ``viewer`` may not (Forbidden). The HTTP layer
passes the logged-in user's role; the CLI passes ``admin`` (LOCAL_OPERATOR_ROLE) with actor
``cli:<unix user>``, because whoever can run it already holds the central's database and SSH
key.

The ``local`` server (the central's own host, collected in-process) is supported when
``actions.local`` is true (the default): the bundled agent's own action functions run
in-process under the policy file ``actions.local_policy`` (default /etc/central-agent.json,
read exactly like the agent reads it; absent: the agent's default policy), with
``central.service`` added to the protected units, and the central's own pid refused as the
agent refuses its own. The central usually runs unprivileged, so a kill of another user's
process or a systemctl call then fails cleanly (ok: false) instead of escalating.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from typing import Awaitable, Callable

from .bundled import agent_module
from .model import (
    ACTION_KINDS, BAD_PAYLOAD, HOST_KEY_MISMATCH, HOST_KEY_UNKNOWN, OFFLINE, REASON_TEXT, ROLES, CentralError, Conflict,
    Forbidden, Invalid, NotFound, PollError, Server, Unavailable,
)
from .serverlog import server_log
from .transport import ActionChannel

log = logging.getLogger(__name__)

KINDS = tuple(ACTION_KINDS)
SIGNALS = ("TERM", "INT", "HUP", "QUIT", "KILL", "USR1", "USR2")
VERBS = ("start", "stop", "restart")
ACTING_ROLES = tuple(r.name for r in reversed(ROLES.values()) if r.may_act)
LOCAL_OPERATOR_ROLE = "admin"
PID_MAX = 4194304  # the kernel's ceiling for pid_max
# Audit results.
OK, FAILED, REFUSED, INVALID, ERROR = "ok", "failed", "refused", "invalid", "error"
RESULTS = (OK, FAILED, REFUSED, INVALID, ERROR)

_SIGNAL_RE = re.compile(r"(?:SIG)?([A-Z0-9]{1,8})", re.ASCII | re.IGNORECASE)
# Unit types other than services: refused here with a clear word rather than letting the
# agent turn reboot.target into a nonexistent reboot.target.service.
_OTHER_UNIT_TYPES = (".socket", ".device", ".mount", ".automount", ".swap", ".target", ".path",
                     ".timer", ".slice", ".scope")

Confirm = Callable[[dict], Awaitable[bool]]


class Cancelled(CentralError):
    """The operator did not confirm; nothing was sent (and nothing audited)."""

    status, code = 409, "cancelled"


# validation

def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: object) -> str:
    return _clip(repr(value), 60)


def check_signal(value: object) -> str:
    """A signal name from the allow-list: TERM, SIGTERM and term are all TERM."""
    m = _SIGNAL_RE.fullmatch(value) if isinstance(value, str) else None
    name = m.group(1).upper() if m else None
    if name not in SIGNALS:
        raise Invalid(f"signal: expected one of {', '.join(SIGNALS)}, got {_show(value)}")
    return name


def check_unit(value: object) -> str:
    """A systemd service name, with the agent's strict pattern."""
    agent = agent_module()
    if not isinstance(value, str) or not agent.UNIT_RE.fullmatch(value) or value.startswith("-") \
            or ".." in value:
        raise Invalid(f"unit: expected a service name (letters, digits, @ . _ : -), got {_show(value)}")
    if value.endswith(_OTHER_UNIT_TYPES):
        raise Invalid(f"unit: only services can be started, stopped or restarted, not {value}")
    return value


def check_container(value: object) -> str:
    """A docker container name or id, with the agent's strict pattern."""
    if not isinstance(value, str) or not agent_module().CONTAINER_RE.fullmatch(value):
        raise Invalid(f"container: expected a container name or id (letters, digits, _ . -), got {_show(value)}")
    return value


def validate(kind: object, args: object) -> dict:
    """The action's arguments checked and normalised; Invalid names the first bad one."""
    if kind not in KINDS:
        raise Invalid(f"unknown action {_show(kind)}: expected one of {', '.join(KINDS)}")
    if not isinstance(args, dict):
        raise Invalid("arguments must be an object")
    known = ACTION_KINDS[kind].arguments
    for key in args:
        if key not in known:
            raise Invalid(f"unknown argument {_show(key)} for {kind} (expected {', '.join(known)})")
    if kind == "kill":
        pid = args.get("pid")
        if not _is_int(pid) or not 0 < pid <= PID_MAX:
            raise Invalid(f"pid: expected a process id from 1 to {PID_MAX}, got {_show(pid)}")
        start_time = args.get("start_time")
        if start_time is not None and (not _is_int(start_time) or not 0 <= start_time < 2**63):
            raise Invalid(f"start_time: expected clock ticks after boot (an integer >= 0), got {_show(start_time)}")
        return {"pid": pid, "signal": check_signal(args.get("signal", "TERM")), "start_time": start_time}
    verb = args.get("verb")
    if verb not in VERBS:
        raise Invalid(f"verb: expected one of {', '.join(VERBS)}, got {_show(verb)}")
    if kind == "service":
        return {"unit": check_unit(args.get("unit")), "verb": verb}
    return {"container": check_container(args.get("container")), "verb": verb}


def check_role(role: object) -> None:
    """Forbidden unless the role may run actions (admin, operator)."""
    if role not in ACTING_ROLES:
        raise Forbidden(f"role {_show(role)} may not run actions ({' or '.join(ACTING_ROLES)} only)")


# audit text: a host and a caller are untrusted input, and SQLite wants valid UTF-8

def _clip(text: str, limit: int) -> str:
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip_tail(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return data.decode("utf-8")
    return "…" + data[-(max_bytes - 3):].decode("utf-8", "ignore")


def _audit_value(value: object) -> object:
    if value is None or isinstance(value, bool) or (_is_int(value) and abs(value) < 2**63):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str):
        return _clip(value, 256)
    return _clip(repr(value), 256)


def _audit_arguments(args: object) -> dict:
    if not isinstance(args, dict):
        return {"_invalid": _audit_value(args)}
    return {_clip(str(k), 64): _audit_value(v) for k, v in list(args.items())[:16]}


def _result_of(exc: BaseException) -> str:
    if isinstance(exc, (Forbidden, Conflict)):
        return REFUSED
    if isinstance(exc, Invalid):
        return INVALID
    if isinstance(exc, NotFound):
        return FAILED
    return ERROR


# the agent's answer

def _raise_for(status: int, detail: str) -> None:
    """Turn an agent refusal (HTTP status) into the matching domain error."""
    if status == 400:
        raise Invalid(f"the agent refused the arguments: {detail}")
    if status == 403:
        raise Forbidden(f"the host's policy refuses this: {detail}")
    if status == 409:
        raise Conflict(detail)
    if status == 404:
        raise NotFound(detail)
    raise Unavailable(f"the agent answered {status}: {detail}")


def _detail(doc: object) -> str:
    if isinstance(doc, dict):
        return _clip(str(doc.get("detail") or doc.get("error") or "no detail"), 500)
    return "no detail"


def _answer(doc: object) -> dict:
    """The agent's {ok, exit_status, output, duration_ms}, type-checked."""
    if not isinstance(doc, dict) or not isinstance(doc.get("ok"), bool):
        raise PollError(BAD_PAYLOAD, "the agent's action answer is not {ok, exit_status, output, duration_ms}")
    exit_status = doc.get("exit_status")
    duration = doc.get("duration_ms")
    output = doc.get("output")
    return {
        "ok": doc["ok"],
        "exit_status": exit_status if _is_int(exit_status) and abs(exit_status) < 2**63 else None,
        "output": output if isinstance(output, str) else "",
        "duration_ms": float(duration) if isinstance(duration, (int, float)) and not isinstance(duration, bool)
        and math.isfinite(duration) else None,
    }


def _process_entry(p: object) -> dict | None:
    if not isinstance(p, dict) or not _is_int(p.get("pid")) or not _is_int(p.get("start_time")):
        return None
    return {"pid": p["pid"], "start_time": p["start_time"],
            "name": p.get("name") if isinstance(p.get("name"), str) else None,
            "user": p.get("user") if isinstance(p.get("user"), str) else None,
            "cmdline": p.get("cmdline") if isinstance(p.get("cmdline"), str) else None}


def _find_process(entries: object, pid: int, start_time: int | None) -> dict | None:
    for p in entries if isinstance(entries, list) else ():
        entry = _process_entry(p)
        if entry and entry["pid"] == pid and (start_time is None or entry["start_time"] == start_time):
            return entry
    return None


def describe(server_name: str, kind: str, params: dict, process: dict | None = None) -> str:
    """One line saying what the action will do (for confirmations and pages)."""
    if kind == "kill":
        what = f"pid {params['pid']}"
        if process:
            what += f" ({process.get('name') or '?'}"
            if process.get("user"):
                what += f", user {process['user']}"
            what += ")"
            if process.get("cmdline"):
                what += f": {_clip(process['cmdline'], 200)}"
        return f"send SIG{params['signal']} to {what} on {server_name}"
    if kind == "service":
        return f"{params['verb']} service {params['unit']} on {server_name}"
    return f"{params['verb']} docker container {params['container']} on {server_name}"


async def _resolve_process(channel: ActionChannel, central, server: Server, params: dict) -> dict | None:
    """The process a kill aims at, from the latest stored sample, else from the host's table."""
    pid, start_time = params["pid"], params["start_time"]
    latest = await central.storage.latest_document(server.id)
    procs = (latest[1].get("processes") if latest and isinstance(latest[1], dict) else None) or {}
    if isinstance(procs, dict):
        for key in ("top_cpu", "top_memory"):
            found = _find_process(procs.get(key), pid, start_time)
            if found:
                return found
    if start_time is not None:
        return None  # the caller pinned the process; the agent checks it
    status, doc = await channel.processes()
    if status != 200:
        _raise_for(status, _detail(doc))
    found = _find_process(doc.get("processes") if isinstance(doc, dict) else [], pid, None)
    if found is None:
        raise NotFound(f"no process with pid {pid} on {server.name}")
    return found


async def run_action(central, actor: str, role: str, server_name: str, kind: str, args: dict,
                     *, confirm: Confirm | None = None) -> dict:
    """Check, send and audit one action; returns {ok, exit_status, output, duration_ms, ...}.

    Raises Forbidden (role or host policy), Invalid (arguments, central or agent side),
    NotFound (server, process, container), Conflict (the pid now belongs to another
    process), PollError/Unavailable (host or agent unreachable, timeout) and Cancelled when
    `confirm` (awaited with the preview, see `describe`) returns False. Every outcome except
    Cancelled is in the audit table.
    """
    started = time.monotonic()
    actor = _clip(str(actor), 200)
    role_text = _clip(str(role), 32)
    name_text = _clip(str(server_name), 200)
    kind_text = _clip(str(kind), 32)
    audited_args = _audit_arguments(args)
    server: Server | None = None
    slog = server_log(log, name_text)

    async def audit(result: str, answer: dict | None = None, output: str = "") -> int:
        max_bytes = central.config.actions.output_max_bytes
        text = answer["output"] if answer else output
        return await central.storage.add_audit(
            actor=actor, role=role_text, server_id=server.id if server else None, server_name=name_text,
            action=kind_text, arguments=audited_args, result=result,
            exit_status=answer["exit_status"] if answer else None, output=_clip_tail(text, max_bytes),
            duration_ms=answer["duration_ms"] if answer and answer["duration_ms"] is not None
            else round((time.monotonic() - started) * 1000, 2))

    channel = None
    try:
        server = await central.storage.find_server(server_name) if isinstance(server_name, str) else None
        check_role(role)
        params = validate(kind, args)
        if params.get("pid") == 1:
            raise Forbidden("refusing to signal pid 1 (init)")
        if server is None:
            raise Invalid(f"no server named {_show(server_name)}")
        if server.status == OFFLINE or server.status_reason in (HOST_KEY_MISMATCH, HOST_KEY_UNKNOWN):
            # Refused before trying: the page shows such a server as stale with its buttons off.
            why = REASON_TEXT.get(server.status_reason or "", server.status_reason or "no answer")
            raise Conflict(f"{server.name} is {server.status} ({why}); actions need a host that answers")
        channel = central.transports.of(server).action_channel(server)
        process = None
        if kind == "kill":
            process = await _resolve_process(channel, central, server, params)
            if process is not None:
                params["start_time"] = process["start_time"]
            if params["start_time"] is None:
                raise NotFound(f"no process with pid {params['pid']} on {server.name}")
        audited_args = dict(params)
        if confirm is not None:
            preview = {"server": server.name, "action": kind, "arguments": dict(params), "process": process,
                       "text": describe(server.name, kind, params, process)}
            if not await confirm(preview):
                raise Cancelled("not confirmed; nothing was sent")
        # requested_by: the host's own log then says who asked (the agent ignores it otherwise)
        status, doc = await channel.act(kind, dict(params, requested_by=actor))
        if status != 200:
            _raise_for(status, _detail(doc))
        answer = _answer(doc)
    except Cancelled:
        raise
    except asyncio.CancelledError:
        # The caller went away (a closed HTTP request): the host may have acted anyway.
        await audit(ERROR, output="cancelled while waiting for the host; the action may have run")
        raise
    except CentralError as exc:
        result = _result_of(exc)
        slog.info("%s %s by %s: %s: %s", kind_text, audited_args, actor, result, exc.message)
        await audit(result, output=str(exc) if isinstance(exc, PollError) else exc.message)
        raise
    except Exception as exc:
        slog.exception("%s by %s failed", kind_text, actor)
        await audit(ERROR, output=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if channel is not None:
            channel.close()
    result = OK if answer["ok"] else FAILED
    audit_id = await audit(result, answer)
    slog.info("%s %s by %s: %s (exit %s)", kind, audited_args, actor, result, answer["exit_status"])
    return dict(answer, server=server.name, action=kind, arguments=audited_args, audit_id=audit_id,
                result=result)


async def audit_log(central, server_name: str | None = None, limit: int = 100,
                    before_id: int | None = None) -> list[dict]:
    """The audit trail, newest first (optionally one server's; before_id pages back)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise Invalid(f"limit: expected 1 to 1000, got {_show(limit)}")
    if before_id is not None and (isinstance(before_id, bool) or not isinstance(before_id, int)):
        raise Invalid(f"before_id: expected an integer, got {_show(before_id)}")
    if server_name is not None and not isinstance(server_name, str):
        raise Invalid("server: expected a server name")
    return await central.storage.audit_log(server_name, limit, before_id)
