"""Each server's inventory: the latest document and the history of changes."""
from __future__ import annotations

import json
from typing import Sequence

from .base import SQLiteBase, compact, rows_per_statement, update_rows

# servers per query of inventories_latest
_CHUNK = 500
# write_inventories adds the rows, several to a statement
_LATEST_HEAD = "INSERT INTO inventory_latest (server_id, ts, hash, doc)"
_LATEST_TAIL = " ON CONFLICT (server_id) DO UPDATE SET ts = excluded.ts, hash = excluded.hash, doc = excluded.doc"
_HISTORY_HEAD = "INSERT INTO inventory_history (server_id, ts, change_type, change_summary, hash, doc)"


def inventory_rows(rows) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """write_inventories' rows of inventory_latest, inventory_history and the servers'
    (hash, id), on either backend."""
    latest, history, servers = [], [], []
    for server_id, ts, hash_, doc, change_type, summary in rows:
        text = compact(doc, sort_keys=True)
        latest.append((server_id, ts, hash_, text))
        history.append((server_id, ts, change_type, summary, hash_, text))
        servers.append((hash_, server_id))
    return latest, history, servers


class SQLiteInventory(SQLiteBase):
    """central.storage.interface.Inventory on SQLite."""

    async def inventory_latest(self, server_id: int) -> dict | None:
        """{ts, hash, doc} of the server's current inventory."""
        row = await self._one("SELECT ts, hash, doc FROM inventory_latest WHERE server_id = ?", (server_id,))
        return {"ts": row["ts"], "hash": row["hash"], "doc": json.loads(row["doc"])} if row else None

    async def inventories_latest(self, server_ids: Sequence[int]) -> dict[int, dict]:
        """{server id: {ts, hash, doc}} of these servers' current inventories (those that have one)."""
        out: dict[int, dict] = {}
        ids = list(dict.fromkeys(server_ids))
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i:i + _CHUNK]
            rows = await self._all("SELECT server_id, ts, hash, doc FROM inventory_latest"
                                   f" WHERE server_id IN ({', '.join('?' * len(chunk))})", chunk)
            out.update((r["server_id"], {"ts": r["ts"], "hash": r["hash"], "doc": json.loads(r["doc"])}) for r in rows)
        return out

    async def write_inventory(self, server_id: int, ts: float, hash_: str, doc: dict,
                              change_type: str, summary: str) -> None:
        """Store a new inventory as latest and add it to the history."""
        await self.write_inventories([(server_id, ts, hash_, doc, change_type, summary)])

    async def write_inventories(self, rows: Sequence[tuple[int, float, str, dict, str, str]]) -> None:
        """Several new inventories, in order, in one transaction (a fleet's first contact, or an
        upgrade across it, is one per server in the same batch of polls)."""
        if not rows:
            return
        latest, history, servers = inventory_rows(rows)
        # several rows to a statement (rows_per_statement): a fleet's first contact is 2,000 of
        # them in a batch, and one SQLite step per row waits for the GIL on a busy event loop;
        # all of it in one call to the database's thread (in_transaction)
        newest = {server_id: (hash_, server_id) for hash_, server_id in servers}  # each server once

        def work(conn) -> None:
            rows_per_statement(conn, _LATEST_HEAD, latest, _LATEST_TAIL)
            rows_per_statement(conn, _HISTORY_HEAD, history)
            update_rows(conn, "servers", lambda p: f"inventory_hash = {p[0]}", list(newest.values()))
        # quiet: the servers' inventory_hash is no setting the poller reads from the list (it
        # keeps its own copy up to date as it stores them)
        await self.in_transaction(work, quiet=True)

    async def inventory_history(self, server_id: int, limit: int = 100) -> list[dict]:
        """Inventory changes of a server, newest first (without the documents)."""
        rows = await self._all(
            "SELECT id, ts, change_type, change_summary, hash FROM inventory_history"
            " WHERE server_id = ? ORDER BY ts DESC, id DESC LIMIT ?", (server_id, limit))
        return [dict(r) for r in rows]

    async def inventory_changes_since(self, after_id: int) -> list[dict]:
        """Inventory changes (not first inventories) with an id above after_id, oldest first."""
        rows = await self._all(
            "SELECT id, server_id, ts, change_type, change_summary FROM inventory_history"
            " WHERE id > ? AND change_type != 'initial' ORDER BY id", (after_id,))
        return [dict(r) for r in rows]

    async def last_inventory_change_id(self) -> int:
        """The newest inventory_history id (0 when empty)."""
        return (await self._one("SELECT coalesce(max(id), 0) FROM inventory_history"))[0]
