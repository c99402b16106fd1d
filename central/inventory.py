"""Inventory changes: what kind of change a new inventory document is, in words."""
from __future__ import annotations

import hashlib
import json

# Top-level inventory keys by the kind of change they make (agent's /api/inventory).
_KINDS = (
    ("hardware_change", ("cpu", "cpu_model", "cpu_count", "memory", "memory_total", "block_devices",
                         "disks", "filesystems", "arch", "virtualization", "dmi")),
    ("os_change", ("os", "os_release", "kernel", "distribution", "boot_id")),
    ("network_change", ("network", "interfaces", "addresses", "hostname")),
)


def digest(doc: dict) -> str:
    """A stable hash of an inventory document."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _describe(key: str, old: object, new: object) -> str:
    if isinstance(old, (str, int, float)) and isinstance(new, (str, int, float)):
        return f"{key}: {_short(old)} -> {_short(new)}"
    if isinstance(old, dict) and isinstance(new, dict):
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        parts = []
        for k in changed[:4]:
            o, n = old.get(k), new.get(k)
            if isinstance(o, (str, int, float, type(None))) and isinstance(n, (str, int, float, type(None))):
                parts.append(f"{key}.{k}: {_short(o)} -> {_short(n)}")
            else:
                parts.append(f"{key}.{k} changed")
        more = f" (+{len(changed) - 4} more)" if len(changed) > 4 else ""
        return "; ".join(parts) + more
    if isinstance(old, list) and isinstance(new, list):
        return f"{key}: {len(old)} -> {len(new)} entries" if len(old) != len(new) else f"{key} changed"
    return f"{key} changed"


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def classify_change(old: dict | None, new: dict) -> tuple[str, str]:
    """(change_type, human summary) of going from old to new (old None: first inventory)."""
    if old is None:
        return "initial", "first inventory"
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not changed:
        return "other_change", "no visible change"
    kind = "other_change"
    for name, keys in _KINDS:
        if any(k in keys for k in changed):
            kind = name
            break
    summary = "; ".join(_describe(k, old.get(k), new.get(k)) for k in changed)
    return kind, summary[:1000]
