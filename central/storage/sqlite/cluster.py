"""Members and server leases on SQLite (central.storage.interface.Cluster): several central
processes sharing one file on one machine, on that machine's clock."""
from __future__ import annotations

import time
from typing import Sequence

from .base import SQLiteBase


class SQLiteCluster(SQLiteBase):
    """central.storage.interface.Cluster on SQLite."""

    async def heartbeat(self, member: str, address: str, ttl: float, lag: float | None = None) -> list[dict]:
        """Record that member is alive now; the live members."""
        now = time.time()
        await self._write([
            ("INSERT INTO members (member, address, started_at, heartbeat_at, lag) VALUES (?, ?, ?, ?, ?)"
             " ON CONFLICT (member) DO UPDATE SET address = excluded.address, heartbeat_at = excluded.heartbeat_at,"
             " lag = excluded.lag", (member, address, now, now, lag)),
            ("DELETE FROM members WHERE heartbeat_at < ?", (now - 10 * ttl,)),
        ])
        rows = await self._all(
            "SELECT m.member, m.address, m.started_at, m.heartbeat_at, m.lag, ? AS now,"
            " (SELECT count(*) FROM leases l WHERE l.member = m.member AND l.expires_at > ?) AS servers"
            " FROM members m WHERE m.heartbeat_at > ? ORDER BY m.member", (now, now, now - ttl))
        return [dict(r) for r in rows]

    async def claim_servers(self, member: str, server_ids: Sequence[int], ttl: float) -> set[int]:
        """Take or renew these servers' leases unless another member holds one unexpired."""
        ids = sorted(set(server_ids))
        if not ids:
            return set()
        now = time.time()
        async with self.transaction() as db:
            await db.executemany(
                "INSERT INTO leases (server_id, member, expires_at) SELECT id, ?, ? FROM servers WHERE id = ?"
                " ON CONFLICT (server_id) DO UPDATE SET member = excluded.member, expires_at = excluded.expires_at"
                " WHERE leases.member = excluded.member OR leases.expires_at <= ?",
                [(member, now + ttl, i, now) for i in ids])
            async with db.execute(f"SELECT server_id FROM leases WHERE member = ? AND expires_at > ?"
                                  f" AND server_id IN ({', '.join('?' * len(ids))})", (member, now, *ids)) as cur:
                return {r[0] for r in await cur.fetchall()}

    async def release_servers(self, member: str, server_ids: Sequence[int]) -> None:
        """Give up member's leases of these servers."""
        if server_ids:
            await self._write_many([("DELETE FROM leases WHERE member = ? AND server_id = ?",
                                     [(member, i) for i in set(server_ids)])])

    async def leave(self, member: str) -> None:
        """Remove member and its leases."""
        await self._write([("DELETE FROM leases WHERE member = ?", (member,)),
                           ("DELETE FROM members WHERE member = ?", (member,))])
