"""Turning an agent document into the key figures stored per sample.

A host is untrusted input: central.document normalises every document first (types,
bounds, caps); the extraction here still takes a figure only if it is a finite number.
"""
from __future__ import annotations

import math

from .document import decode, dumps, normalise
from .model import METRICS

# Where each key figure (central.model.METRICS) comes from, grouped by document section so a
# poll looks each section up once: ((section, ((column, key, integer), ...)), ...).
_SOURCES: tuple = tuple(
    (section, tuple((m.column, m.key, m.integer) for m in METRICS.values() if m.section == section))
    for section in dict.fromkeys(m.section for m in METRICS.values())
)
_EMPTY = dict.fromkeys(METRICS)
TOP_N = 5
_MAX_TEXT = 200


def _num(value: object) -> float | None:
    """A finite int/float (not bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range
        return None
    return value if math.isfinite(value) else None


def _get(doc: dict, section: str) -> dict:
    part = doc.get(section)
    return part if isinstance(part, dict) else {}


def _text(value: object, limit: int = _MAX_TEXT) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def parse_document(body: bytes) -> tuple[dict, str]:
    """Decode and normalise an /api/all body; returns (document, its stored text). Raises PollError."""
    raw = decode(body)
    doc = normalise(raw)
    if doc == raw:
        # Normalising changed nothing (the usual case): the agent's own compact text decodes
        # to this very document, so it is stored as it came (re-serialising costs ~70 us).
        return doc, body.decode("utf-8")
    return doc, dumps(doc)


def normalised(doc: object) -> tuple[dict, str]:
    """(normalised document, its stored text) of a decoded /api/all document. Raises PollError."""
    doc = normalise(doc)
    return doc, dumps(doc)


def _top(processes: dict) -> list:
    """Compact top-N list [[pid, name, cpu_percent, rss], ...] from the agent's top_cpu."""
    out = []
    entries = processes.get("top_cpu")
    if not isinstance(entries, list):
        return out
    for p in entries[:TOP_N]:
        if not isinstance(p, dict):
            continue
        pid = p.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int):
            continue
        out.append([pid, _text(p.get("name"), 64) or "?", _num(p.get("cpu_percent")), _num(p.get("rss"))])
    return out


def extract_sample(doc: dict) -> dict:
    """The key figures of a checked document, as {metric: float|None, 'top': [...]}"""
    out = _EMPTY.copy()
    for section, fields in _SOURCES:
        part = doc.get(section)
        if isinstance(part, dict):
            for column, key, integer in fields:
                value = _num(part.get(key))
                if integer and value is not None:
                    value = int(value)
                out[column] = value
        elif isinstance(part, list):
            # A list section (filesystems): the largest value over its entries.
            for column, key, integer in fields:
                values = [_num(e.get(key)) for e in part if isinstance(e, dict)]
                values = [v for v in values if v is not None]
                value = max(values) if values else None
                if integer and value is not None:
                    value = int(value)
                out[column] = value
    out["top"] = _top(_get(doc, "processes"))
    return out


def agent_identity(doc: dict) -> tuple[str | None, str | None]:
    """(version, sha256) the agent reports about itself."""
    agent = _get(doc, "agent")
    return _text(agent.get("version"), 64), _text(agent.get("sha256"), 64)


def inventory_hash(doc: dict) -> str | None:
    """The agent's inventory hash, if it is a sane string."""
    value = doc.get("inventory_hash")
    if isinstance(value, str) and 0 < len(value) <= 128:
        return value
    return None


def _named_numbers(entries: object, name_key: str, keys: tuple[str, ...], limit: int = 64) -> list:
    """[[name, n1, n2, ...], ...] from a list of dicts, skipping malformed entries."""
    out = []
    if not isinstance(entries, list):
        return out
    for e in entries[:limit]:
        if isinstance(e, dict) and isinstance(e.get(name_key), str):
            out.append([e[name_key][:_MAX_TEXT], *(_num(e.get(k)) for k in keys)])
    return out


def _state_map(value: object, limit: int = 256) -> dict:
    """{name: value} of a watched-units or watched-processes map, names and values sane."""
    out: dict = {}
    if not isinstance(value, dict):
        return out
    for k, v in list(value.items())[:limit]:
        if isinstance(k, str):
            out[k[:_MAX_TEXT]] = v[:64] if isinstance(v, str) else _num(v)
    return out


def extract_facts(doc: dict) -> dict:
    """What alert rules need beyond the key figures: per-mount, per-interface, watched units and processes.

    Small on purpose: the poller attaches it to each outcome so that alert evaluation never
    parses the document a second time.
    """
    cpu, procs = _get(doc, "cpu"), _get(doc, "processes")
    systemd, errors = _get(doc, "systemd"), doc.get("errors")
    failed = systemd.get("failed")
    return {
        "iowait": _num(cpu.get("iowait")),
        "steal": _num(cpu.get("steal")),
        "uptime": _num(doc.get("uptime")),
        # [mountpoint, percent, inodes_percent]
        "filesystems": _named_numbers(doc.get("filesystems"), "mountpoint", ("percent", "inodes_percent")),
        # [interface, rx_errors, tx_errors, rx_drops, tx_drops] (counters since boot)
        "interfaces": _named_numbers(_get(doc, "network").get("interfaces"), "name",
                                     ("rx_errors", "tx_errors", "rx_drops", "tx_drops")),
        "systemd_failed": len(failed) if isinstance(failed, list) else None,
        "units": _state_map(systemd.get("watched")),  # {unit: "active" | "inactive" | ... | None}
        "watched_processes": _state_map(procs.get("watched")),  # {name: count}, agent policy
        "collector_errors": len(errors) if isinstance(errors, dict) else 0,
    }
