"""Per-container figures on PostgreSQL: raw container samples written with each poll batch,
their rollups and retention (in the same passes as the host's samples, samples.py), and
history per container. Partitioned by time as samples and rollups are."""
from __future__ import annotations

import time
from typing import Sequence

from ...model import CONTAINER_METRICS
from .. import history
from ..interface import TIER_HOUR, TIER_MINUTE
from ..sqlite.containers import sample_rows  # noqa: F401 - the same rows (cap, one per name) on both backends
from .base import PostgresBase

CONTAINER_COLUMNS = tuple(CONTAINER_METRICS)
INTEGER_CONTAINER_COLUMNS = tuple(m.column for m in CONTAINER_METRICS.values() if m.integer)
_COLS = ", ".join(CONTAINER_COLUMNS)
_ROLLUP_COLS = ", ".join(f"{m}_min, {m}_avg, {m}_max" for m in CONTAINER_COLUMNS)
# the container_rollups partitions of each tier
TIER_PARENT = {TIER_MINUTE: "container_rollups_60", TIER_HOUR: "container_rollups_3600"}

INSERT_SAMPLES = (
    f"INSERT INTO container_samples (server_id, name, ts, {_COLS})"
    f" VALUES ({', '.join(f'${i}' for i in range(1, len(CONTAINER_COLUMNS) + 4))})"
    " ON CONFLICT (server_id, name, ts) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in CONTAINER_COLUMNS)
)


def _rollup_select(source_min: str, source_avg: str, source_max: str, weight: str) -> str:
    cols = []
    for m in CONTAINER_COLUMNS:
        avg = source_avg.format(m=m)
        cols.append(f"min({source_min.format(m=m)})")
        cols.append(f"sum({avg}::float8 * {weight}) / nullif(sum(CASE WHEN {avg} IS NOT NULL THEN {weight} END), 0)")
        cols.append(f"max({source_max.format(m=m)})")
    return ", ".join(cols)


_UPSERT_ROLLUP = (" ON CONFLICT (server_id, name, tier, ts) DO UPDATE SET n = excluded.n, "
                  + ", ".join(f"{c} = excluded.{c}" for c in _ROLLUP_COLS.split(", ")))
ROLLUP_RAW = (
    f"INSERT INTO container_rollups (server_id, name, tier, ts, n, {_ROLLUP_COLS}) "
    f"SELECT server_id, name, {TIER_MINUTE}, floor(ts / {TIER_MINUTE}) * {TIER_MINUTE} AS b, count(*), "
    + _rollup_select("{m}", "{m}", "{m}", "1")
    + " FROM container_samples WHERE ts >= $1 AND ts < $2 GROUP BY server_id, name, b" + _UPSERT_ROLLUP
)
ROLLUP_MIN = (
    f"INSERT INTO container_rollups (server_id, name, tier, ts, n, {_ROLLUP_COLS}) "
    f"SELECT server_id, name, {TIER_HOUR}, floor(ts / {TIER_HOUR}) * {TIER_HOUR} AS b, sum(n), "
    + _rollup_select("{m}_min", "{m}_avg", "{m}_max", "n")
    + f" FROM container_rollups WHERE tier = {TIER_MINUTE} AND ts >= $1 AND ts < $2 GROUP BY server_id, name, b"
    + _UPSERT_ROLLUP
)


def check_container_integers(rows: Sequence[tuple]) -> None:
    """OverflowError for an integer container figure beyond PostgreSQL's bigint (rows as sample_rows gives)."""
    at = {m: 3 + CONTAINER_COLUMNS.index(m) for m in INTEGER_CONTAINER_COLUMNS}
    for row in rows:
        for m, i in at.items():
            v = row[i]
            if isinstance(v, int) and not -2 ** 63 <= v < 2 ** 63:
                raise OverflowError(f"container {row[1]!r}: {m} = {v} is beyond a 64-bit integer")


class PostgresContainers(PostgresBase):
    """central.storage.interface.Containers on PostgreSQL."""

    async def container_samples(self, server_id: int, name: str, start: float, end: float) -> list[dict]:
        """Raw samples of one container in [start, end), oldest first: {ts, <metric>...}."""
        rows = await self._all(
            f"SELECT ts, {_COLS} FROM container_samples WHERE server_id = $1 AND name = $2 AND ts >= $3 AND ts < $4"
            " ORDER BY ts", (server_id, name, start, end))
        return [dict(r) for r in rows]

    async def container_names(self, server_id: int, since: float = 0.0) -> list[str]:
        """Names of the server's containers with samples at or after since, by name."""
        rows = await self._all("SELECT name FROM container_samples WHERE server_id = $1 AND ts >= $2"
                               ' GROUP BY name ORDER BY name COLLATE "C"', (server_id, since))
        return [r[0] for r in rows]

    async def container_recent(self, server_id: int, since: float,
                               metrics: Sequence[str] = ("cpu", "mem", "mem_used")) -> dict[str, dict]:
        """Raw series of every container of a server since a time (the page's sparklines):
        {name: {"ts": [...], <metric>: [...]}}."""
        bad = set(metrics) - set(CONTAINER_COLUMNS)
        if bad:
            raise ValueError(f"unknown container metrics: {sorted(bad)}")
        rows = await self._all(
            f"SELECT name, ts, {', '.join(metrics)} FROM container_samples WHERE server_id = $1 AND ts >= $2"
            ' ORDER BY name COLLATE "C", ts', (server_id, since))
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
        progress = "SELECT done_until FROM rollup_progress WHERE tier = $1"
        source, step, spans = history.plan(
            start, end, max_points=max_points, now=now, retention_raw=retention_raw,
            retention_minute=retention_minute, minute_done=await self._val(progress, (TIER_MINUTE,)) or 0.0,
            hour_done=await self._val(progress, (TIER_HOUR,)) or 0.0)
        parts, args = [], []
        for span in spans:
            table, where = (("container_samples", "true") if span.tier is None
                            else ("container_rollups", f"tier = {span.tier}"))
            args.extend((server_id, name, span.lo, span.hi))
            n = len(args)
            parts.append(self._container_part(table, metrics, step, where, (n - 3, n - 2, n - 1, n)))
        sql = f"SELECT b, {history.bucket_columns(metrics)} FROM ({' UNION ALL '.join(parts)}) u GROUP BY b ORDER BY b"
        return history.answer(source, step, start, end, await self._all(sql, args), metrics)

    @staticmethod
    def _container_part(table: str, metrics: Sequence[str], step: int, where: str, p: tuple[int, ...]) -> str:
        """One source of container_history() as rows (bucket, n, then avg/min/max per metric)."""
        if table == "container_samples":
            cols = ", ".join(f"{m}::float8 AS {m}_avg, {m}::float8 AS {m}_min, {m}::float8 AS {m}_max"
                             for m in metrics)
            n = "1::bigint AS n"
        else:
            cols = ", ".join(f"{m}_avg, {m}_min, {m}_max" for m in metrics)
            n = "n"
        return (f"SELECT floor(ts / {step})::bigint * {step} AS b, {n}, {cols} FROM {table}"
                f" WHERE server_id = ${p[0]} AND name = ${p[1]} AND {where} AND ts >= ${p[2]} AND ts < ${p[3]}")
