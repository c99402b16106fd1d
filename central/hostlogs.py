"""Logs of a host's units and containers, fetched on demand through its agent.

The last N lines of a systemd unit's journal or of a container's log (Docker's, or an LXC
container's own journal on an LXC host), read by the agent (GET /api/logs, docs/agent-protocol.md)
and never stored: operator role, every request in the audit table (action "logs", with what was
asked and how many lines came back), lines and bytes capped on both sides, and the host policy's
`"logs": false` refuses it on the host. A host is untrusted: each line is type-checked and its
text cleaned here (central.hosttext.clean); terminals and logs escape it again.
"""
from __future__ import annotations

import logging
import re
import time

from .actions import _clip, _detail, _raise_for, _result_of, check_role
from .hosttext import clean
from .model import HOST_KEY_MISMATCH, HOST_KEY_UNKNOWN, OFFLINE, REASON_TEXT, CentralError, Conflict, Invalid, PollError
from .serverlog import server_log

log = logging.getLogger(__name__)

LINES_DEFAULT = 100
LINES_MAX = 1000  # the agent's cap too
MESSAGE_CHARS = 2000
UNIT_RE = re.compile(r"[A-Za-z0-9@_:.\\-][A-Za-z0-9@._:\\-]{0,255}")
CONTAINER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# a name with a unit suffix is a unit; anything else is tried as a container first
UNIT_SUFFIXES = (".service", ".timer", ".socket", ".mount", ".scope", ".slice", ".target", ".path", ".swap",
                 ".device", ".automount")


def target_of(name: str) -> dict:
    """{"unit": NAME} or {"container": NAME} for the CLI's UNIT|CONTAINER argument."""
    if not isinstance(name, str) or not name:
        raise Invalid("give a unit or a container name")
    if name.endswith(UNIT_SUFFIXES):
        return {"unit": name}
    return {"container": name}


def _check(unit: object, container: object, lines: object) -> tuple[str, str, int]:
    if (unit is None) == (container is None):
        raise Invalid("give unit or container (one of them)")
    if unit is not None:
        if not isinstance(unit, str) or not UNIT_RE.fullmatch(unit) or ".." in unit or unit.startswith("-"):
            raise Invalid(f"unit: expected a systemd unit name, got {clean(str(unit), 80)!r}")
        kind, name = "unit", unit
    else:
        if not isinstance(container, str) or not CONTAINER_RE.fullmatch(container):
            raise Invalid(f"container: expected a container name (letters, digits, _ . -), got {clean(str(container), 80)!r}")
        kind, name = "container", container
    if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= LINES_MAX:
        raise Invalid(f"lines: expected an integer from 1 to {LINES_MAX}, got {clean(str(lines), 40)!r}")
    return kind, name, lines


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value and 0 <= value < 1e11 else None


def _line(entry: object) -> dict | None:
    """One log line of the agent's answer, checked and cleaned (None when it is not one)."""
    if not isinstance(entry, dict):
        return None
    message = entry.get("message")
    prio = entry.get("priority")
    pid = entry.get("pid")
    ident = entry.get("identifier")
    return {"ts": _num(entry.get("ts")),
            "priority": prio if isinstance(prio, int) and not isinstance(prio, bool) and 0 <= prio <= 7 else None,
            "identifier": clean(ident, 200) if isinstance(ident, str) else None,
            "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**22 else None,
            "message": clean(message, MESSAGE_CHARS) if isinstance(message, str) else ""}


def _answer(doc: object, lines: int) -> dict:
    if not isinstance(doc, dict) or not isinstance(doc.get("lines"), list):
        raise PollError("bad_payload", "the agent's logs answer has no lines")
    out = [x for x in (_line(e) for e in doc["lines"][-lines:]) if x is not None]
    source = doc.get("source")
    return {"source": clean(source, 32) if isinstance(source, str) else None,
            "name": clean(doc["name"], 255) if isinstance(doc.get("name"), str) else None,
            "lines": out, "count": len(out), "truncated": doc.get("truncated") is True}


async def fetch_logs(central, actor: str, role: str, server_name: str, *, unit: str | None = None,
                     container: str | None = None, lines: int = LINES_DEFAULT) -> dict:
    """The last `lines` lines of a unit's journal or a container's log on a server, oldest first:
    {server, source, name, lines: [{ts, priority, identifier, pid, message}], count, truncated, audit_id}.

    Raises Forbidden (role, or the host policy turns logs off), Invalid, NotFound (no such server,
    unit journal or container), Conflict (the server does not answer), PollError/Unavailable.
    Every outcome is in the audit table."""
    started = time.monotonic()
    server = None
    asked = {"unit": unit, "container": container, "lines": lines}
    audited = {k: _clip(str(v), 200) if isinstance(v, str) else v for k, v in asked.items() if v is not None}

    async def audit(result: str, output: str) -> int:
        return await central.storage.add_audit(
            actor=_clip(str(actor), 200), role=_clip(str(role), 32), server_id=server.id if server else None,
            server_name=_clip(str(server_name), 200), action="logs", arguments=audited, result=result,
            output=_clip(output, 2000), duration_ms=round((time.monotonic() - started) * 1000, 2))

    try:
        check_role(role)
        kind, name, lines = _check(unit, container, lines)
        server = await central.storage.get_server(server_name)
        if server.status == OFFLINE or server.status_reason in (HOST_KEY_MISMATCH, HOST_KEY_UNKNOWN):
            why = REASON_TEXT.get(server.status_reason or "", server.status_reason or "no answer")
            raise Conflict(f"{server.name} is {server.status} ({why}); logs need a host that answers")
        status, doc = await central.transports.of(server).logs(server, {kind: name, "lines": lines})
        if status != 200:
            _raise_for(status, _detail(doc))
        answer = _answer(doc, lines)
    except CentralError as exc:
        await audit(_result_of(exc), str(exc) if isinstance(exc, PollError) else exc.message)
        raise
    audit_id = await audit("ok", f"{answer['count']} lines from {answer['source']}"
                           + (" (cut to the size cap)" if answer["truncated"] else ""))
    server_log(log, server.name).info("logs of %s %s by %s: %d lines", kind, name, actor, answer["count"])
    return {"server": server.name, **answer, "audit_id": audit_id}
