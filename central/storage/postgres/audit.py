"""The audit table on PostgreSQL: every action request and its outcome."""
from __future__ import annotations

import time

from .base import PostgresBase, compact, json_rows


class PostgresAudit(PostgresBase):
    """central.storage.interface.Audit on PostgreSQL."""

    async def add_audit(
        self, *, actor: str, role: str, server_id: int | None, server_name: str, action: str,
        arguments: dict, result: str, exit_status: int | None = None, output: str = "",
        duration_ms: float | None = None, ts: float | None = None,
    ) -> int:
        """Record one action request and its outcome; returns the row id."""
        (audit_id,) = await self._write([(
            "INSERT INTO audit (ts, actor, role, server_id, server_name, action, arguments, result,"
            " exit_status, output, duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
            (time.time() if ts is None else ts, actor, role, server_id, server_name, action,
             compact(arguments, sort_keys=True), result, exit_status, output, duration_ms),
        )])
        return audit_id

    async def audit_log(self, server_name: str | None = None, limit: int = 100,
                        before_id: int | None = None) -> list[dict]:
        """Audit rows, newest first: optionally one server's, and older than before_id (paging)."""
        where, args = [], []
        if server_name is not None:
            args.append(server_name)
            where.append(f"server_name = ${len(args)}")
        if before_id is not None:
            args.append(before_id)
            where.append(f"id < ${len(args)}")
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
        rows = await self._all(sql + f" ORDER BY id DESC LIMIT ${len(args) + 1}", (*args, limit))
        return json_rows(rows, arguments="")
