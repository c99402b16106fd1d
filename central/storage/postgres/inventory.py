"""Each server's inventory on PostgreSQL: the latest document and the history of changes."""
from __future__ import annotations

import json
from typing import Sequence

from ..sqlite.inventory import inventory_rows
from .base import PostgresBase

# servers per query of inventories_latest
_CHUNK = 500
_LATEST = ("INSERT INTO inventory_latest (server_id, ts, hash, doc) VALUES ($1, $2, $3, $4)"
           " ON CONFLICT (server_id) DO UPDATE SET ts = excluded.ts, hash = excluded.hash, doc = excluded.doc")
_HISTORY = ("INSERT INTO inventory_history (server_id, ts, change_type, change_summary, hash, doc)"
            " VALUES ($1, $2, $3, $4, $5, $6)")
_SERVER = "UPDATE servers SET inventory_hash = $1 WHERE id = $2"


class PostgresInventory(PostgresBase):
    """central.storage.interface.Inventory on PostgreSQL."""

    async def inventory_latest(self, server_id: int) -> dict | None:
        """{ts, hash, doc} of the server's current inventory."""
        row = await self._one("SELECT ts, hash, doc FROM inventory_latest WHERE server_id = $1", (server_id,))
        return {"ts": row["ts"], "hash": row["hash"], "doc": json.loads(row["doc"])} if row else None

    async def inventories_latest(self, server_ids: Sequence[int]) -> dict[int, dict]:
        """{server id: {ts, hash, doc}} of these servers' current inventories (those that have one)."""
        out: dict[int, dict] = {}
        ids = list(dict.fromkeys(server_ids))
        for i in range(0, len(ids), _CHUNK):
            rows = await self._all("SELECT server_id, ts, hash, doc FROM inventory_latest"
                                   " WHERE server_id = ANY($1::bigint[])", (ids[i:i + _CHUNK],))
            out.update((r["server_id"], {"ts": r["ts"], "hash": r["hash"], "doc": json.loads(r["doc"])}) for r in rows)
        return out

    async def write_inventory(self, server_id: int, ts: float, hash_: str, doc: dict,
                              change_type: str, summary: str) -> None:
        """Store a new inventory as latest and add it to the history."""
        await self.write_inventories([(server_id, ts, hash_, doc, change_type, summary)])

    async def write_inventories(self, rows: Sequence[tuple[int, float, str, dict, str, str]]) -> None:
        """Several new inventories, in order, in one transaction (a fleet's first contact, or an
        upgrade across it, is one per server in the same batch of polls)."""
        if rows:
            latest, history, servers = inventory_rows(rows)
            # not a change of the servers' settings (inventory_hash: the poller keeps its own copy
            # up to date as it stores them): the servers marker stays (schema.py, version 3)
            await self._write_many([(_LATEST, latest), (_HISTORY, history), (_SERVER, servers)], quiet=True)

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
