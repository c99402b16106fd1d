"""The web terminal's tables on PostgreSQL: user rights, terminal accounts, terminal sessions."""
from __future__ import annotations

from ...model import NotFound
from .base import PostgresBase


class PostgresTerminal(PostgresBase):
    """central.storage.interface.Terminal on PostgreSQL."""

    async def grant_right(self, user: str, right: str, by: str, ts: float) -> None:
        """Give user a right (granting it again keeps the first grant)."""
        row = await self.get_user(user)
        await self._write([("INSERT INTO user_rights (user_id, name, granted_by, granted_at) VALUES ($1, $2, $3, $4)"
                            " ON CONFLICT DO NOTHING", (row["id"], right, by, ts))])

    async def revoke_right(self, user: str, right: str) -> bool:
        """Take a right back; False when the user did not have it."""
        row = await self.get_user(user)
        (gone,) = await self._write([("WITH d AS (DELETE FROM user_rights WHERE user_id = $1 AND name = $2"
                                      " RETURNING 1) SELECT count(*) FROM d", (row["id"], right))])
        return gone > 0

    async def has_right(self, user_id: int, right: str) -> bool:
        """Whether the user holds the right now."""
        return await self._one("SELECT 1 FROM user_rights WHERE user_id = $1 AND name = $2", (user_id, right)) is not None

    async def right_holders(self, right: str) -> list[dict]:
        """Users holding a right: name, role, who granted it and when."""
        rows = await self._all(
            'SELECT u.name AS "user", u.role, r.granted_by, r.granted_at FROM user_rights r'
            ' JOIN users u ON u.id = r.user_id WHERE r.name = $1 ORDER BY u.name COLLATE "C"', (right,))
        return [dict(r) for r in rows]

    async def set_terminal_account(self, server_id: int, account: str, by: str, ts: float) -> None:
        """Record the host account the server's terminal logs in as."""
        await self._write([(
            "INSERT INTO terminal_accounts (server_id, account, set_by, set_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (server_id) DO UPDATE SET account = excluded.account, set_by = excluded.set_by,"
            " set_at = excluded.set_at", (server_id, account, by, ts))])

    async def clear_terminal_account(self, server_id: int) -> bool:
        """Forget the server's terminal account; False when it had none."""
        (gone,) = await self._write([("WITH d AS (DELETE FROM terminal_accounts WHERE server_id = $1 RETURNING 1)"
                                      " SELECT count(*) FROM d", (server_id,))])
        return gone > 0

    async def terminal_account(self, server_id: int) -> str | None:
        """The server's terminal account, or None: not enabled."""
        return await self._val("SELECT account FROM terminal_accounts WHERE server_id = $1", (server_id,))

    async def terminal_accounts(self) -> dict[str, dict]:
        """Every enabled server by name: account, set_by, set_at."""
        rows = await self._all(
            "SELECT s.name, a.account, a.set_by, a.set_at FROM terminal_accounts a"
            ' JOIN servers s ON s.id = a.server_id ORDER BY s.name COLLATE "C"')
        return {r["name"]: {"account": r["account"], "set_by": r["set_by"], "set_at": r["set_at"]} for r in rows}

    async def add_terminal_session(self, *, user_id: int, user: str, server_id: int, server_name: str, account: str,
                                   address: str, started_at: float, cols: int, rows: int, recording: str) -> int:
        """A new open session row; returns its id."""
        (session_id,) = await self._write([(
            'INSERT INTO terminal_sessions (user_id, "user", server_id, server_name, account, address, started_at,'
            " cols, rows, recording) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            (user_id, user, server_id, server_name, account, address, started_at, cols, rows, recording))])
        return session_id

    async def end_terminal_session(self, session_id: int, *, ended_at: float, exit_status: int | None, end_reason: str,
                                   ended_by: str | None, message: str, recording_bytes: int) -> None:
        """Close a session row."""
        await self._write([(
            "UPDATE terminal_sessions SET ended_at = $1, exit_status = $2, end_reason = $3, ended_by = $4,"
            " message = $5, recording_bytes = $6 WHERE id = $7",
            (ended_at, exit_status, end_reason, ended_by, message, recording_bytes, session_id))])

    async def get_terminal_session(self, session_id: int) -> dict:
        """One session row; NotFound when there is none."""
        row = await self._one("SELECT * FROM terminal_sessions WHERE id = $1", (session_id,))
        if row is None:
            raise NotFound(f"no terminal session {session_id}")
        return dict(row)

    async def list_terminal_sessions(self, *, user_id: int | None = None, server: str | None = None,
                                     open_only: bool = False, limit: int = 100,
                                     before_id: int | None = None) -> list[dict]:
        """Session rows, newest first (optionally one user's, one server's, only open ones)."""
        where, args = [], []
        if user_id is not None:
            args.append(user_id)
            where.append(f"user_id = ${len(args)}")
        if server is not None:
            args.append(server)
            where.append(f"server_name = ${len(args)}")
        if open_only:
            where.append("ended_at IS NULL")
        if before_id is not None:
            args.append(before_id)
            where.append(f"id < ${len(args)}")
        sql = "SELECT * FROM terminal_sessions" + (" WHERE " + " AND ".join(where) if where else "")
        return [dict(r) for r in await self._all(sql + f" ORDER BY id DESC LIMIT ${len(args) + 1}", (*args, limit))]

    async def close_interrupted_terminal_sessions(self, ts: float, message: str) -> list[dict]:
        """Mark rows left open by a central that stopped mid-session; returns them (as they were)."""
        async with self.transaction() as con:
            rows = [dict(r) for r in await con.fetch(
                "SELECT * FROM terminal_sessions WHERE ended_at IS NULL ORDER BY id FOR UPDATE")]
            await con.execute("UPDATE terminal_sessions SET ended_at = $1, end_reason = 'interrupted', message = $2"
                              " WHERE id = ANY($3::bigint[])", ts, message, [r["id"] for r in rows])
        return rows

    async def prune_terminal_sessions(self, before: float) -> list[str]:
        """Delete ended sessions that started before `before`; returns their recording file names."""
        async with self.transaction() as con:
            rows = await con.fetch("DELETE FROM terminal_sessions WHERE started_at < $1 AND ended_at IS NOT NULL"
                                   " RETURNING recording", before)
        return [r["recording"] for r in rows]
