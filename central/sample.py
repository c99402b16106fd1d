"""Turning an agent document into the key figures stored per sample.

A host is untrusted input: central.document normalises every document first (types,
bounds, caps); the extraction here still takes a figure only if it is a finite number.
"""
from __future__ import annotations

import math

from .document import decode, dumps, normalise
from .model import CONTAINER_METRICS, MAX_STORED_CONTAINERS, METRICS

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


_CONTAINER_KEYS = tuple((m.key, m.integer) for m in CONTAINER_METRICS.values())


def _containers(doc: dict) -> list:
    """The containers stored per poll: [[name, figure per CONTAINER_METRICS...], ...], running
    ones first (the agent's order), at most MAX_STORED_CONTAINERS, names unique."""
    section = doc.get("containers")
    entries = section.get("containers") if isinstance(section, dict) else None
    out: list = []
    if not isinstance(entries, list):
        return out
    seen = set()
    for c in entries:
        if len(out) >= MAX_STORED_CONTAINERS:
            break
        if not isinstance(c, dict) or c.get("state") != "running":
            continue
        name = c.get("name")
        if not isinstance(name, str) or not name or name in seen:
            continue
        seen.add(name)
        row = [name[:_MAX_TEXT]]
        for key, integer in _CONTAINER_KEYS:
            v = _num(c.get(key))
            row.append(None if v is None else int(v) if integer else v)
        out.append(row)
    return out


def _largest(entries: list, key: str) -> float | None:
    """The largest finite value of key over a list section's entries (the fullest filesystem)."""
    values = [_num(e.get(key)) for e in entries if isinstance(e, dict)]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def _compile_extract_sample():
    """extract_sample, written out from central.model.METRICS as straight-line code.

    It runs on every poll of every server: a loop over the table costs 10-20% more per call
    than the hand-written function it replaces (bench/bench_poll_path.py), so the table is
    turned into that function once, at import. Each figure is doc[section][key] when the
    section is an object, the largest value of key over its entries when it is a list."""
    lines = ["def extract_sample(doc):"]
    sections = list(dict.fromkeys(m.section for m in METRICS.values()))
    for i, section in enumerate(sections):
        lines.append(f"    s{i} = doc.get({section!r})")
        lines.append(f"    d{i} = s{i} if isinstance(s{i}, dict) else None")
        lines.append(f"    l{i} = s{i} if isinstance(s{i}, list) else None")
    items = []
    for m in METRICS.values():
        i = sections.index(m.section)
        value = (f"(_num(d{i}.get({m.key!r})) if d{i} is not None else"
                 f" _largest(l{i}, {m.key!r}) if l{i} is not None else None)")
        if m.integer:
            value = f"_int_or_none({value})"
        items.append(f"{m.column!r}: {value}")
    lines.append("    return {" + ", ".join(items) + ", 'top': _top(_get(doc, 'processes')),"
                 " 'containers': _containers(doc)}")
    namespace = {"_num": _num, "_largest": _largest, "_top": _top, "_get": _get, "_int_or_none": _int_or_none,
                 "_containers": _containers}
    exec("\n".join(lines), namespace)  # noqa: S102 - code made from our own table, not from input
    fn = namespace["extract_sample"]
    fn.__doc__ = ("The key figures of a checked document, as {metric: float|None, 'top': [...],"
                  " 'containers': [[name, figures...], ...]}")
    return fn


extract_sample = _compile_extract_sample()


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
        "containers": _container_facts(doc),
        # [[label, celsius, critical], ...] of sensors with a critical mark
        "sensors": [[_text(t.get("label"), 64) or _text(t.get("name"), 64) or "?", _num(t.get("celsius")),
                     _num(t.get("critical"))]
                    for t in (_get(doc, "sensors").get("temperatures") or [])[:64]
                    if isinstance(t, dict) and _num(t.get("critical")) is not None],
        # {device: passed} of the disks smartctl reports on
        "smart": {d["device"][:_MAX_TEXT]: d.get("passed") for d in (_get(doc, "smart").get("disks") or [])[:32]
                  if isinstance(d, dict) and isinstance(d.get("device"), str)},
    }


def _container_facts(doc: dict) -> dict:
    """{name: [state, health, restarts, figure per CONTAINER_METRICS...]} of every container the
    agent lists (stopped ones too), for container alerts."""
    section = doc.get("containers")
    entries = section.get("containers") if isinstance(section, dict) else None
    out: dict = {}
    if not isinstance(entries, list):
        return out
    for c in entries[:200]:
        if isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"] not in out:
            out[c["name"][:_MAX_TEXT]] = [_text(c.get("state"), 64), _text(c.get("health"), 64),
                                          _num(c.get("restarts")), *(_num(c.get(k)) for k, _ in _CONTAINER_KEYS)]
    return out
