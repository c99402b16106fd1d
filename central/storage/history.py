"""What every backend's history reads share (a server's key figures, a container's figures):
which tier answers a range, in which time spans each tier is read, the SQL aggregate over the
buckets, and the answer's shape. Each backend only writes its own SQL around them."""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from .interface import TIER_HOUR, TIER_MINUTE


class Span(NamedTuple):
    """One source of a history read: raw samples (tier None) or one rollup tier, over [lo, hi)."""

    tier: int | None
    lo: float
    hi: float


def check_metrics(metrics: Sequence[str], known: Sequence[str], what: str = "metrics") -> None:
    """ValueError naming the metrics that are not in known."""
    bad = set(metrics) - set(known)
    if bad:
        raise ValueError(f"unknown {what}: {sorted(bad)}")


def plan(start: float, end: float, *, max_points: int, now: float, retention_raw: float,
         retention_minute: float, minute_done: float, hour_done: float) -> tuple[str, int, list[Span]]:
    """(source, step, spans): the finest tier that covers [start, end) in at most max_points
    buckets, the bucket width, and the spans to read. Each tier answers for the time it has
    rolled up (minute_done, hour_done); what is newer comes from the next finer tier, so a range
    never misses its newest minutes (or a new server's data)."""
    span = max(end - start, 1.0)
    # Buckets are aligned to multiples of step, so a range can touch one more than span/step.
    step = span / max(max_points - 1, 1)
    if start >= now - retention_raw and step < TIER_MINUTE:
        source, resolution = "raw", 0
    elif start >= now - retention_minute and step < TIER_HOUR:
        source, resolution = "minute", TIER_MINUTE
    else:
        source, resolution = "hour", TIER_HOUR
    step = math.ceil(max(step, float(resolution), 1.0))
    spans = []
    if source == "hour":
        spans.append(Span(TIER_HOUR, start, min(end, hour_done)))
    if source in ("hour", "minute"):
        lo = max(start, hour_done) if source == "hour" else start
        spans.append(Span(TIER_MINUTE, lo, min(end, minute_done)))
        start_raw = max(start, minute_done, hour_done if source == "hour" else 0.0)
    else:
        start_raw = start
    spans.append(Span(None, start_raw, end))
    return source, step, spans


def bucket_columns(metrics: Sequence[str]) -> str:
    """The aggregate over the spans' rows per bucket: weighted average, min, max of each metric."""
    return ", ".join(f"sum({m}_avg * n) / nullif(sum(CASE WHEN {m}_avg IS NOT NULL THEN n END), 0),"
                     f" min({m}_min), max({m}_max)" for m in metrics)


def answer(source: str, step: int, start: float, end: float, rows, metrics: Sequence[str]) -> dict:
    """history()'s answer from rows of (bucket, then avg, min, max per metric)."""
    series: dict = {"ts": [r[0] for r in rows]}
    for i, m in enumerate(metrics):
        series[m] = [r[1 + 3 * i] for r in rows]
        series[m + "_min"] = [r[2 + 3 * i] for r in rows]
        series[m + "_max"] = [r[3 + 3 * i] for r in rows]
    return {"source": source, "step": step, "start": start, "end": end, "series": series}
