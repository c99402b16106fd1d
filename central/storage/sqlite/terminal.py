"""The web terminal's tables: user rights, each server's terminal account, terminal sessions."""
from __future__ import annotations

from ...model import NotFound
from .base import SQLiteBase


class SQLiteTerminal(SQLiteBase):
    """central.storage.interface.Terminal on SQLite (user_rights, terminal_accounts, terminal_sessions)."""

    # rights

    async def grant_right(self, user: str, right: str, by: str, ts: float) -> None:
        """Give user a right (granting it again keeps the first grant)."""
        row = await self.get_user(user)
        await self._write([("INSERT OR IGNORE INTO user_rights (user_id, name, granted_by, granted_at)"
                             " VALUES (?, ?, ?, ?)", (row["id"], right, by, ts))])

    async def revoke_right(self, user: str, right: str) -> bool:
        """Take a right back; False when the user did not have it."""
        row = await self.get_user(user)
        had = await self.has_right(row["id"], right)
        await self._write([("DELETE FROM user_rights WHERE user_id = ? AND name = ?", (row["id"], right))])
        return had

    async def has_right(self, user_id: int, right: str) -> bool:
        """Whether the user holds the right now."""
        row = await self._one("SELECT 1 FROM user_rights WHERE user_id = ? AND name = ?", (user_id, right))
        return row is not None

    async def right_holders(self, right: str) -> list[dict]:
        """Users holding a right: name, role, who granted it and when."""
        rows = await self._all(
            "SELECT u.name AS user, u.role, r.granted_by, r.granted_at FROM user_rights r"
            " JOIN users u ON u.id = r.user_id WHERE r.name = ? ORDER BY u.name", (right,))
        return [dict(r) for r in rows]

    # accounts

    async def set_terminal_account(self, server_id: int, account: str, by: str, ts: float) -> None:
        """Record the host account the server's terminal logs in as."""
        await self._write([(
            "INSERT INTO terminal_accounts (server_id, account, set_by, set_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (server_id) DO UPDATE SET account = excluded.account, set_by = excluded.set_by,"
            " set_at = excluded.set_at", (server_id, account, by, ts))])

    async def clear_terminal_account(self, server_id: int) -> bool:
        """Forget the server's terminal account; False when it had none."""
        had = await self.terminal_account(server_id) is not None
        await self._write([("DELETE FROM terminal_accounts WHERE server_id = ?", (server_id,))])
        return had

    async def terminal_account(self, server_id: int) -> str | None:
        """The server's terminal account, or None: not enabled."""
        row = await self._one("SELECT account FROM terminal_accounts WHERE server_id = ?", (server_id,))
        return row[0] if row else None

    async def terminal_accounts(self) -> dict[str, dict]:
        """Every enabled server by name: account, set_by, set_at."""
        rows = await self._all(
            "SELECT s.name, a.account, a.set_by, a.set_at FROM terminal_accounts a"
            " JOIN servers s ON s.id = a.server_id ORDER BY s.name")
        return {r["name"]: {"account": r["account"], "set_by": r["set_by"], "set_at": r["set_at"]} for r in rows}

    # sessions

    async def add_terminal_session(self, *, user_id: int, user: str, server_id: int, server_name: str, account: str,
                          address: str, started_at: float, cols: int, rows: int, recording: str) -> int:
        """A new open session row; returns its id."""
        (session_id,) = await self._write([(
            "INSERT INTO terminal_sessions (user_id, user, server_id, server_name, account, address, started_at,"
            " cols, rows, recording) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (user_id, user, server_id, server_name, account, address, started_at, cols, rows, recording))])
        return session_id

    async def end_terminal_session(self, session_id: int, *, ended_at: float, exit_status: int | None, end_reason: str,
                          ended_by: str | None, message: str, recording_bytes: int) -> None:
        """Close a session row."""
        await self._write([(
            "UPDATE terminal_sessions SET ended_at = ?, exit_status = ?, end_reason = ?, ended_by = ?, message = ?,"
            " recording_bytes = ? WHERE id = ?",
            (ended_at, exit_status, end_reason, ended_by, message, recording_bytes, session_id))])

    async def get_terminal_session(self, session_id: int) -> dict:
        """One session row; NotFound when there is none."""
        row = await self._one("SELECT * FROM terminal_sessions WHERE id = ?", (session_id,))
        if row is None:
            raise NotFound(f"no terminal session {session_id}")
        return dict(row)

    async def list_terminal_sessions(self, *, user_id: int | None = None, server: str | None = None,
                            open_only: bool = False, limit: int = 100, before_id: int | None = None) -> list[dict]:
        """Session rows, newest first (optionally one user's, one server's, only open ones)."""
        where, args = [], []
        if user_id is not None:
            where.append("user_id = ?")
            args.append(user_id)
        if server is not None:
            where.append("server_name = ?")
            args.append(server)
        if open_only:
            where.append("ended_at IS NULL")
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        sql = "SELECT * FROM terminal_sessions" + (" WHERE " + " AND ".join(where) if where else "")
        return [dict(r) for r in await self._all(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]

    async def close_interrupted_terminal_sessions(self, ts: float, message: str) -> list[dict]:
        """Mark rows left open by a central that stopped mid-session; returns them."""
        rows = [dict(r) for r in await self._all("SELECT * FROM terminal_sessions WHERE ended_at IS NULL")]
        if rows:
            await self._write([(
                "UPDATE terminal_sessions SET ended_at = ?, end_reason = 'interrupted', message = ?"
                " WHERE id = ? AND ended_at IS NULL", (ts, message, r["id"])) for r in rows])
        return rows

    async def prune_terminal_sessions(self, before: float) -> list[str]:
        """Delete ended sessions that started before `before`; returns their recording file names."""
        rows = await self._all(
            "SELECT id, recording FROM terminal_sessions WHERE started_at < ? AND ended_at IS NOT NULL", (before,))
        if rows:
            await self._write([("DELETE FROM terminal_sessions WHERE id = ?", (r["id"],)) for r in rows])
        return [r["recording"] for r in rows]
