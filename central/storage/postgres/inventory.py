"""Each server's inventory on PostgreSQL: the latest document and the history of changes."""
from __future__ import annotations

import json

from .base import PostgresBase, compact


class PostgresInventory(PostgresBase):
    """central.storage.interface.Inventory on PostgreSQL."""

    async def inventory_latest(self, server_id: int) -> dict | None:
        """{ts, hash, doc} of the server's current inventory."""
        row = await self._one("SELECT ts, hash, doc FROM inventory_latest WHERE server_id = $1", (server_id,))
        return {"ts": row["ts"], "hash": row["hash"], "doc": json.loads(row["doc"])} if row else None

    async def write_inventory(self, server_id: int, ts: float, hash_: str, doc: dict,
                              change_type: str, summary: str) -> None:
        """Store a new inventory as latest and add it to the history."""
        text = compact(doc, sort_keys=True)
        await self._write([
            ("INSERT INTO inventory_latest (server_id, ts, hash, doc) VALUES ($1, $2, $3, $4)"
             " ON CONFLICT (server_id) DO UPDATE SET ts = excluded.ts, hash = excluded.hash, doc = excluded.doc",
             (server_id, ts, hash_, text)),
            ("INSERT INTO inventory_history (server_id, ts, change_type, change_summary, hash, doc)"
             " VALUES ($1, $2, $3, $4, $5, $6)", (server_id, ts, change_type, summary, hash_, text)),
            ("UPDATE servers SET inventory_hash = $1 WHERE id = $2", (hash_, server_id)),
        ])

    async def inventory_history(self, server_id: int, limit: int = 100) -> list[dict]:
        """Inventory changes of a server, newest first (without the documents)."""
        rows = await self._all(
            "SELECT id, ts, change_type, change_summary, hash FROM inventory_history"
            " WHERE server_id = $1 ORDER BY ts DESC, id DESC LIMIT $2", (server_id, limit))
        return [dict(r) for r in rows]

    async def inventory_changes_since(self, after_id: int) -> list[dict]:
        """Inventory changes (not first inventories) with an id above after_id, oldest first."""
        rows = await self._all(
            "SELECT id, server_id, ts, change_type, change_summary FROM inventory_history"
            " WHERE id > $1 AND change_type != 'initial' ORDER BY id", (after_id,))
        return [dict(r) for r in rows]

    async def last_inventory_change_id(self) -> int:
        """The newest inventory_history id (0 when empty)."""
        return await self._val("SELECT coalesce(max(id), 0) FROM inventory_history")
