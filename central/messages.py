"""What a notification says: a short title and a plain text readable on a phone.

For each alert: severity, server, what (the rule and its summary), since when, the value
against the threshold, and the link to the alert's page; a resolved alert says how long it
lasted. Times are in `alerts.time_zone`, 24-hour, ISO-like dates. Host text (labels, summaries)
is cleaned of control and bidi characters before it goes anywhere.
"""
from __future__ import annotations

import datetime
import zoneinfo

from .hosttext import clean
from .model import ALERT_METRICS
from .routing import Message

# Beyond this many alerts a message lists the first ones and says how many more (the page has all).
MAX_LISTED = 20
_OP_TEXT = {">": ">", ">=": "≥", "<": "<", "<=": "≤", "==": "=", "!=": "≠"}


def fmt_duration(seconds: float) -> str:
    """3d 4h, 2h 5m, 12m, 45s."""
    s = max(0, int(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h" if h else f"{d}d"
    if h:
        return f"{h}h {m}m" if m else f"{h}h"
    if m:
        return f"{m}m"
    return f"{s}s"


def fmt_when(ts: float | None, zone: zoneinfo.ZoneInfo) -> str:
    """2027-01-15 08:00 UTC (in the configured zone)."""
    if ts is None:
        return "–"
    return datetime.datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%d %H:%M %Z")


def fmt_value(value: float | None, metric: str | None) -> str:
    """A value in its metric's unit (93.2%, 3 polls, 1.2 MB/s, 2h 5m)."""
    if value is None:
        return "–"
    m = ALERT_METRICS.get(metric or "")
    unit = m.unit if m else ""
    if unit == "percent":
        return f"{value:.1f}%"
    if m is not None and m.reasons:
        return f"{value:g} polls"
    if unit == "bytes_per_second":
        for name in ("B/s", "kB/s", "MB/s", "GB/s"):
            if abs(value) < 1000 or name == "GB/s":
                return f"{value:.3g} {name}"
            value /= 1000
    if unit == "per_second":
        return f"{value:.3g}/s"
    if unit == "seconds":
        return fmt_duration(value)
    return f"{value:.4g}"


def _what(alert: dict) -> str:
    what = alert["rule"].replace("_", " ")
    label = clean(alert.get("label") or "", 200)
    return f"{what} {label}" if label else what


def headline(alert: dict) -> str:
    """SEVERITY server: what."""
    return f"{alert['severity'].upper()} {clean(alert.get('server') or '-', 100)}: {_what(alert)}"


def alert_lines(alert: dict, zone: zoneinfo.ZoneInfo, now: float) -> list[str]:
    """The lines about one alert (after its headline)."""
    lines = []
    summary = clean(alert.get("summary") or "", 500)
    if summary:
        lines.append(summary)
    if alert["state"] == "resolved":
        start = alert.get("started_at")
        end = alert.get("resolved_at") or now
        lines.append(f"Resolved after {fmt_duration(end - start)} (since {fmt_when(start, zone)})")
    else:
        m = ALERT_METRICS.get(alert.get("metric") or "")
        if alert.get("threshold") is not None and alert.get("value") is not None and not (m and m.unit == "boolean"):
            op = _OP_TEXT.get(alert.get("op") or "", alert.get("op") or "")
            lines.append(f"Value {fmt_value(alert['value'], alert.get('metric'))} "
                         f"(threshold {op} {fmt_value(alert['threshold'], alert.get('metric'))})")
        started = alert.get("started_at")
        if started is not None:
            lines.append(f"Since {fmt_when(started, zone)} ({fmt_duration(now - started)})")
        if alert.get("acked_by"):
            lines.append(f"Acknowledged by {clean(alert['acked_by'], 100)}")
    if alert.get("url"):
        lines.append(alert["url"])
    return lines


def title(message: Message) -> str:
    """One line: what kind of news, and about what."""
    if message.event == "test":
        return "central: test notification"
    alerts = message.alerts
    if len(alerts) == 1:
        a = alerts[0]
        state = "RESOLVED" if a["state"] == "resolved" else "FIRING"
        return f"[{state}] {headline(a)}"
    counts = []
    if message.firing:
        counts.append(f"FIRING {len(message.firing)}")
    if message.resolved:
        counts.append(f"RESOLVED {len(message.resolved)}")
    about = ", ".join(f"{clean(str(v), 100)}" for k, v in message.group.items() if v not in (None, ""))
    return f"[{' · '.join(counts)}] {about or 'alerts'}"


def body(message: Message, zone: zoneinfo.ZoneInfo, now: float) -> str:
    """The message text: one block per alert, firing first; long groups are cut with a count."""
    if message.event == "test":
        return (f"A test message from central, sent {fmt_when(now, zone)} to channel {message.channel!r}. "
                "If you read this, the channel works.")
    alerts = message.alerts
    blocks = []
    if message.gathered > 1:
        blocks.append(f"{message.gathered} notifications in one: more came than this channel sends within its "
                      "storm limit (alerts.storm_messages per alerts.storm_window).")
    if len(alerts) == 1:
        return "\n".join(blocks + alert_lines(alerts[0], zone, now))
    for heading, items in (("Firing", message.firing), ("Resolved", message.resolved)):
        if not items:
            continue
        blocks.append(f"{heading} ({len(items)}):")
        for a in items[:MAX_LISTED]:
            blocks.append("- " + headline(a))
            blocks.extend("  " + line for line in alert_lines(a, zone, now))
        if len(items) > MAX_LISTED:
            blocks.append(f"... and {len(items) - MAX_LISTED} more")
    return "\n".join(blocks)
