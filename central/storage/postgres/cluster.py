"""Members and server leases on PostgreSQL (central.storage.interface.Cluster), on the
database's clock (clock_timestamp()), so the centrals' own clocks need not agree."""
from __future__ import annotations

from typing import Sequence

from .base import PostgresBase

_NOW = "extract(epoch from clock_timestamp())::float8"


class PostgresCluster(PostgresBase):
    """central.storage.interface.Cluster on PostgreSQL."""

    async def heartbeat(self, member: str, address: str, ttl: float, lag: float | None = None) -> list[dict]:
        """Record that member is alive now; the live members."""
        async with self.transaction() as con:
            await con.execute(
                f"INSERT INTO members (member, address, started_at, heartbeat_at, lag) VALUES ($1, $2, {_NOW}, {_NOW}, $3)"
                " ON CONFLICT (member) DO UPDATE SET address = excluded.address, heartbeat_at = excluded.heartbeat_at,"
                " lag = excluded.lag", member, address, lag)
            # members silent for a long while (ten TTLs) are forgotten
            await con.execute(f"DELETE FROM members WHERE heartbeat_at < {_NOW} - $1::float8", 10 * ttl)
            rows = await con.fetch(
                f"SELECT m.member, m.address, m.started_at, m.heartbeat_at, m.lag, {_NOW} AS now,"
                f" (SELECT count(*) FROM leases l WHERE l.member = m.member AND l.expires_at > {_NOW}) AS servers"
                f" FROM members m WHERE m.heartbeat_at > {_NOW} - $1::float8 ORDER BY m.member COLLATE \"C\"", ttl)
        return [dict(r) for r in rows]

    async def claim_servers(self, member: str, server_ids: Sequence[int], ttl: float) -> set[int]:
        """Take or renew these servers' leases unless another member holds one unexpired."""
        if not server_ids:
            return set()
        async with self.transaction() as con:
            rows = await con.fetch(
                f"WITH claimed AS (INSERT INTO leases (server_id, member, expires_at)"
                f" SELECT s.id, $2, {_NOW} + $3::float8 FROM servers s WHERE s.id = ANY($1::bigint[])"
                " ON CONFLICT (server_id) DO UPDATE SET member = excluded.member, expires_at = excluded.expires_at"
                f" WHERE leases.member = excluded.member OR leases.expires_at <= {_NOW}"
                f" RETURNING server_id, expires_at) SELECT server_id FROM claimed WHERE expires_at > {_NOW}",
                sorted(set(server_ids)), member, ttl)
        return {r[0] for r in rows}

    async def release_servers(self, member: str, server_ids: Sequence[int]) -> None:
        """Give up member's leases of these servers."""
        if server_ids:
            await self._write([("DELETE FROM leases WHERE member = $1 AND server_id = ANY($2::bigint[])",
                                (member, sorted(set(server_ids))))])

    async def leave(self, member: str) -> None:
        """Remove member and its leases."""
        await self._write([("DELETE FROM leases WHERE member = $1", (member,)),
                           ("DELETE FROM members WHERE member = $1", (member,))])
