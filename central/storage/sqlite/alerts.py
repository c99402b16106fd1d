"""Alerts and acknowledgements, silences, and the notification log."""
from __future__ import annotations

import json
from typing import Sequence

from ...model import NotFound
from .base import SQLiteBase, compact, json_rows


class SQLiteAlerts(SQLiteBase):
    """central.storage.interface.Alerts on SQLite."""

    _ALERT_COLUMNS = ("rule", "server_id", "label", "severity", "state", "summary", "value", "started_at",
                      "fired_at", "last_evaluated", "cleared_at", "resolved_at", "last_notified", "details")

    async def alert_counts(self) -> dict[str, int]:
        """Open alerts by state (pending, firing), and firing_info: the firing ones of severity info."""
        rows = await self._read_all("SELECT state, severity = 'info', count(*) FROM alerts"
                               " WHERE state IN ('pending', 'firing') GROUP BY 1, 2")
        counts = {"pending": 0, "firing": 0, "firing_info": 0}
        for state, info, n in rows:
            counts[state] += n
            if state == "firing" and info:
                counts["firing_info"] += n
        return counts

    async def open_alerts(self) -> list[dict]:
        """Every pending or firing alert (the evaluator's state after a restart)."""
        rows = await self._all("SELECT * FROM alerts WHERE state IN ('pending', 'firing') ORDER BY id")
        return json_rows(rows, details="{}")

    async def save_alerts(self, inserts: Sequence[dict], updates: Sequence[dict], deletes: Sequence[int]) -> list[int]:
        """Insert new alert rows, rewrite changed ones and delete aborted ones in one transaction; the new ids."""
        cols = self._ALERT_COLUMNS
        mutable = [c for c in cols if c not in ("rule", "server_id", "label")]
        insert = f"INSERT INTO alerts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        update = f"UPDATE alerts SET {', '.join(f'{c} = ?' for c in mutable)} WHERE id = ?"
        insert_rows = [[_alert_column(row, c) for c in cols] for row in inserts]
        changed = [[_alert_column(row, c) for c in mutable] + [row["id"]] for row in updates]

        def work(conn) -> list[int]:
            # one at a time: each new row's id (on the database's thread, all in one call to it:
            # a fleet's first batch opens an alert per host)
            ids = [conn.execute(insert, row).lastrowid for row in insert_rows]
            # the rest in one call each: the minute's rewrite of 10,000 open alerts took 10,000
            # round trips to the database thread, 0.9 s of the event loop
            if changed:
                conn.executemany(update, changed)
            if deletes:
                conn.executemany("DELETE FROM alerts WHERE id = ?", [(i,) for i in deletes])
            return ids
        return await self.in_transaction(work, quiet=True)  # the servers stay as they are

    async def list_alerts(self, *, firing_only: bool = False, open_only: bool = False, server_id: int | None = None,
                          limit: int = 100) -> list[dict]:
        """Alerts newest first, with the server's name; firing_only: firing ones, open_only: pending or firing."""
        where, args = [], []
        if firing_only:
            where.append("a.state = 'firing'")
        elif open_only:
            where.append("a.state IN ('pending', 'firing')")
        if server_id is not None:
            where.append("a.server_id = ?")
            args.append(server_id)
        sql = ("SELECT a.*, s.name AS server FROM alerts a LEFT JOIN servers s ON s.id = a.server_id"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY CASE a.state WHEN 'firing' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END, a.started_at DESC, a.id DESC"
               " LIMIT ?")
        return json_rows(await self._all(sql, (*args, limit)), details="{}")

    async def get_alert(self, alert_id: int) -> dict:
        """One alert with its server's name; NotFound otherwise."""
        row = await self._one("SELECT a.*, s.name AS server FROM alerts a LEFT JOIN servers s ON s.id = a.server_id"
                              " WHERE a.id = ?", (alert_id,))
        if row is None:
            raise NotFound(f"no alert with id {alert_id}")
        return json_rows([row], details="{}")[0]

    async def ack_alert(self, alert_id: int, user: str, ts: float) -> None:
        """Record who acknowledged an alert and when."""
        await self._write([("UPDATE alerts SET acked_by = ?, acked_at = ? WHERE id = ?", (user, ts, alert_id))])

    async def acked_open_alerts(self) -> dict[int, str]:
        """{alert id: who} of open alerts someone acknowledged."""
        rows = await self._all("SELECT id, acked_by FROM alerts WHERE state IN ('pending', 'firing') AND acked_at IS NOT NULL")
        return {r[0]: r[1] for r in rows}

    async def add_silence(self, matcher: dict, starts_at: float, ends_at: float, comment: str,
                          created_by: str, kind: str = "silence") -> int:
        """Store a silence (or maintenance window); its id."""
        [silence_id] = await self._write([(
            "INSERT INTO silences (matcher, starts_at, ends_at, comment, created_by, created_at, kind)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (json.dumps(matcher, sort_keys=True), starts_at, ends_at, comment, created_by, starts_at, kind))])
        return silence_id

    async def get_silence(self, silence_id: int) -> dict:
        """One silence; NotFound otherwise."""
        row = await self._one("SELECT * FROM silences WHERE id = ?", (silence_id,))
        if row is None:
            raise NotFound(f"no silence with id {silence_id}")
        return json_rows([row], matcher="")[0]

    async def end_silence(self, silence_id: int, ts: float) -> None:
        """End a silence now (the record stays, for the history)."""
        await self._write([("UPDATE silences SET ends_at = min(ends_at, ?) WHERE id = ?", (ts, silence_id))])

    async def list_silences(self, *, active_at: float | None = None, limit: int = 100) -> list[dict]:
        """Silences newest first; active_at: only those in force (or still to come) at that time."""
        if active_at is None:
            rows = await self._all("SELECT * FROM silences ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = await self._all("SELECT * FROM silences WHERE ends_at > ? ORDER BY id DESC LIMIT ?",
                                   (active_at, limit))
        return json_rows(rows, matcher="")

    async def log_notification(self, alert_id: int | None, channel: str, event: str, ts: float,
                               attempt: int, ok: bool, detail: str) -> None:
        """Record one delivery attempt."""
        await self._write([(
            "INSERT INTO notifications (alert_id, channel, event, ts, attempt, ok, detail)"
            " SELECT ?, ?, ?, ?, ?, ?, ? WHERE ? IS NULL OR EXISTS (SELECT 1 FROM alerts WHERE id = ?)",
            (alert_id, channel, event, ts, attempt, int(ok), detail[:2000], alert_id, alert_id))])

    async def log_notifications(self, rows: Sequence[tuple]) -> None:
        """Record one attempt of a message: (alert_id, channel, event, ts, attempt, ok, detail) per alert in it."""
        await self._write([(
            "INSERT INTO notifications (alert_id, channel, event, ts, attempt, ok, detail)"
            " SELECT ?, ?, ?, ?, ?, ?, ? WHERE ? IS NULL OR EXISTS (SELECT 1 FROM alerts WHERE id = ?)",
            (a, ch, ev, ts, att, int(ok), detail[:2000], a, a)) for a, ch, ev, ts, att, ok, detail in rows])

    async def channel_health(self) -> dict[str, dict]:
        """Per channel: last_success, last_error_at, last_error, failures_in_row (attempts since the success)."""
        out: dict[str, dict] = {}
        for channel, last_ok in await self._all(
                "SELECT channel, max(CASE WHEN ok = 1 THEN ts END) FROM notifications GROUP BY channel"):
            # The rows of one attempt of a message share (ts, attempt): count attempts, not rows.
            fails = await self._one(
                "SELECT count(DISTINCT ts || ':' || attempt) FROM notifications WHERE channel = ? AND ok = 0 AND ts > ?",
                (channel, last_ok if last_ok is not None else -1.0))
            last_error = await self._one(
                "SELECT ts, detail FROM notifications WHERE channel = ? AND ok = 0 ORDER BY ts DESC, id DESC LIMIT 1",
                (channel,))
            out[channel] = {"last_success": last_ok, "failures_in_row": fails[0] or 0,
                            "last_error_at": last_error[0] if last_error else None,
                            "last_error": last_error[1] if last_error else None}
        return out

    async def notifications(self, alert_id: int | None = None, limit: int = 100) -> list[dict]:
        """Delivery attempts newest first, of one alert or all."""
        if alert_id is None:
            rows = await self._all("SELECT * FROM notifications ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = await self._all("SELECT * FROM notifications WHERE alert_id = ? ORDER BY id DESC LIMIT ?",
                                   (alert_id, limit))
        return [dict(r) | {"ok": bool(r["ok"])} for r in rows]

    async def last_sent(self) -> dict[tuple[int, str], float]:
        """{(alert id, channel): time} of the last delivered firing/repeat of each open alert."""
        rows = await self._all(
            "SELECT n.alert_id, n.channel, max(n.ts) FROM notifications n JOIN alerts a ON a.id = n.alert_id"
            " WHERE a.state = 'firing' AND n.ok = 1 AND n.event IN ('firing', 'repeat')"
            " GROUP BY n.alert_id, n.channel")
        return {(r[0], r[1]): r[2] for r in rows}


def _alert_column(row: dict, column: str) -> object:
    value = row.get(column)
    if column == "details":
        return compact(value or {}, sort_keys=True)
    return value
