"""Per-container figures: raw container samples written with each poll batch, their rollups and
retention (in the same passes as the host's samples), and history per container."""
from __future__ import annotations

import time
from typing import Sequence

from ...model import CONTAINER_METRICS, MAX_STORED_CONTAINERS
from .. import history
from ..interface import TIER_HOUR, TIER_MINUTE
from .base import SQLiteBase

CONTAINER_COLUMNS = tuple(CONTAINER_METRICS)
_COLS = ", ".join(CONTAINER_COLUMNS)
_ROLLUP_COLS = ", ".join(f"{m}_min, {m}_avg, {m}_max" for m in CONTAINER_COLUMNS)

# (write_polls adds the rows: several to a statement)
INSERT_HEAD = f"INSERT OR REPLACE INTO container_samples (server_id, name, ts, {_COLS})"


def _rollup_select(source_min: str, source_avg: str, source_max: str, weight: str) -> str:
    cols = []
    for m in CONTAINER_COLUMNS:
        cols.append(f"min({source_min.format(m=m)})")
        cols.append(f"sum({source_avg.format(m=m)} * {weight}) / nullif(sum(CASE WHEN {source_avg.format(m=m)}"
                    f" IS NOT NULL THEN {weight} END), 0)")
        cols.append(f"max({source_max.format(m=m)})")
    return ", ".join(cols)


ROLLUP_RAW = (
    f"INSERT OR REPLACE INTO container_rollups (server_id, name, tier, ts, n, {_ROLLUP_COLS}) "
    f"SELECT server_id, name, {TIER_MINUTE}, CAST(ts / {TIER_MINUTE} AS INTEGER) * {TIER_MINUTE} AS b, count(*), "
    + _rollup_select("{m}", "{m}", "{m}", "1")
    + " FROM container_samples WHERE server_id = ? AND ts >= ? AND ts < ? GROUP BY name, b"
)
ROLLUP_MIN = (
    f"INSERT OR REPLACE INTO container_rollups (server_id, name, tier, ts, n, {_ROLLUP_COLS}) "
    f"SELECT server_id, name, {TIER_HOUR}, CAST(ts / {TIER_HOUR} AS INTEGER) * {TIER_HOUR} AS b, sum(n), "
    + _rollup_select("{m}_min", "{m}_avg", "{m}_max", "n")
    + f" FROM container_rollups WHERE server_id = ? AND tier = {TIER_MINUTE} AND ts >= ? AND ts < ? GROUP BY name, b"
)
PRUNE = (
    "DELETE FROM container_samples WHERE server_id = ? AND ts < ?",
    f"DELETE FROM container_rollups WHERE server_id = ? AND tier = {TIER_MINUTE} AND ts < ?",
    f"DELETE FROM container_rollups WHERE server_id = ? AND tier = {TIER_HOUR} AND ts < ?",
)


def sample_rows(server_id: int, ts: float, containers: Sequence) -> list[tuple]:
    """container_samples rows of one poll's sample["containers"] ([[name, figures...], ...]),
    at most MAX_STORED_CONTAINERS, each name once."""
    rows, seen = [], set()
    width = len(CONTAINER_COLUMNS)
    for c in containers or ():
        if len(rows) >= MAX_STORED_CONTAINERS:
            break
        if not c or not isinstance(c[0], str) or c[0] in seen or len(c) != width + 1:
            continue
        seen.add(c[0])
        rows.append((server_id, c[0], ts, *c[1:]))
    return rows


class SQLiteContainers(SQLiteBase):
    """The per-container part of central.storage.interface.Samples on SQLite."""

    async def container_samples(self, server_id: int, name: str, start: float, end: float) -> list[dict]:
        """Raw samples of one container in [start, end), oldest first: {ts, <metric>...}."""
        rows = await self._all(
            f"SELECT ts, {_COLS} FROM container_samples WHERE server_id = ? AND name = ? AND ts >= ? AND ts < ?"
            " ORDER BY ts", (server_id, name, start, end))
        return [dict(r) for r in rows]

    async def container_names(self, server_id: int, since: float = 0.0) -> list[str]:
        """Names of the server's containers with samples at or after since, by name."""
        rows = await self._all("SELECT DISTINCT name FROM container_samples WHERE server_id = ? AND ts >= ?"
                               " ORDER BY name", (server_id, since))
        return [r[0] for r in rows]

    async def container_recent(self, server_id: int, since: float,
                               metrics: Sequence[str] = ("cpu", "mem", "mem_used")) -> dict[str, dict]:
        """Raw series of every container of a server since a time (the page's sparklines):
        {name: {"ts": [...], <metric>: [...]}}."""
        bad = set(metrics) - set(CONTAINER_COLUMNS)
        if bad:
            raise ValueError(f"unknown container metrics: {sorted(bad)}")
        rows = await self._all(
            f"SELECT name, ts, {', '.join(metrics)} FROM container_samples WHERE server_id = ? AND ts >= ?"
            " ORDER BY name, ts", (server_id, since))
        out: dict[str, dict] = {}
        for r in rows:
            series = out.get(r[0])
            if series is None:
                series = out[r[0]] = {"ts": [], **{m: [] for m in metrics}}
            series["ts"].append(r[1])
            for i, m in enumerate(metrics):
                series[m].append(r[2 + i])
        return out

    async def container_history(
        self, server_id: int, name: str, start: float, end: float, *, max_points: int = 500,
        retention_raw: float, retention_minute: float, now: float | None = None,
        metrics: Sequence[str] = CONTAINER_COLUMNS,
    ) -> dict:
        """One container's figures over [start, end) in at most max_points buckets, from the finest
        tier that covers the range (as history() for a server)."""
        now = time.time() if now is None else now
        history.check_metrics(metrics, CONTAINER_COLUMNS, "container metrics")
        source, step, spans = history.plan(
            start, end, max_points=max_points, now=now, retention_raw=retention_raw,
            retention_minute=retention_minute, minute_done=await self._progress_of(TIER_MINUTE) or 0.0,
            hour_done=await self._progress_of(TIER_HOUR) or 0.0)
        parts, args = [], []
        for span in spans:
            table, where = (("container_samples", "1") if span.tier is None
                            else ("container_rollups", f"tier = {span.tier}"))
            parts.append(self._part(table, metrics, step, where))
            args += [server_id, name, span.lo, span.hi]
        sql = f"SELECT b, {history.bucket_columns(metrics)} FROM ({' UNION ALL '.join(parts)}) GROUP BY b ORDER BY b"
        return history.answer(source, step, start, end, await self._all(sql, args), metrics)

    @staticmethod
    def _part(table: str, metrics: Sequence[str], step: int, where: str = "1") -> str:
        if table == "container_samples":
            cols = ", ".join(f"{m} AS {m}_avg, {m} AS {m}_min, {m} AS {m}_max" for m in metrics)
            n = "1 AS n"
        else:
            cols = ", ".join(f"{m}_avg, {m}_min, {m}_max" for m in metrics)
            n = "n"
        return (f"SELECT CAST(ts / {step} AS INTEGER) * {step} AS b, {n}, {cols} FROM {table}"
                f" WHERE server_id = ? AND name = ? AND {where} AND ts >= ? AND ts < ?")

    async def _progress_of(self, tier: int) -> float | None:
        row = await self._one("SELECT done_until FROM rollup_progress WHERE tier = ?", (tier,))
        return row[0] if row else None
