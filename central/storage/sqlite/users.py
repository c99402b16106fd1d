"""Users, API tokens and page sessions."""
from __future__ import annotations

import time

import aiosqlite

from ...model import Conflict, NotFound
from .base import SQLiteBase


class SQLiteUsers(SQLiteBase):
    """central.storage.interface.Users on SQLite."""

    async def add_user(self, name: str, role: str, password_hash: str) -> dict:
        """Insert a user; Conflict if the name is taken."""
        try:
            await self._write([("INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                                (name, role, password_hash, time.time()))])
        except aiosqlite.IntegrityError:
            raise Conflict(f"a user named {name!r} already exists") from None
        return await self.get_user(name)

    async def get_user(self, name: str) -> dict:
        """The user called name (with password_hash); NotFound otherwise."""
        row = await self._one("SELECT * FROM users WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no user named {name!r}")
        return dict(row)

    async def find_user(self, name: str) -> dict | None:
        """The user called name, or None."""
        row = await self._one("SELECT * FROM users WHERE name = ?", (name,))
        return dict(row) if row else None

    async def get_user_by_id(self, user_id: int) -> dict | None:
        """The user with this id, or None."""
        row = await self._one("SELECT * FROM users WHERE id = ?", (user_id,))
        return dict(row) if row else None

    async def list_users(self) -> list[dict]:
        """Every user (without password hashes), by name."""
        return [dict(r) for r in await self._all("SELECT id, name, role, created_at FROM users ORDER BY name")]

    async def count_users(self, role: str | None = None) -> int:
        """How many users there are (with this role)."""
        if role is None:
            return (await self._one("SELECT count(*) FROM users"))[0]
        return (await self._one("SELECT count(*) FROM users WHERE role = ?", (role,)))[0]

    async def set_user_password(self, name: str, password_hash: str) -> None:
        """Replace a user's password hash and end their page sessions (one transaction)."""
        user = await self.get_user(name)
        await self._write([("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user["id"])),
                           ("DELETE FROM sessions WHERE user_id = ?", (user["id"],))])

    async def set_user_role(self, name: str, role: str) -> None:
        """Change a user's role."""
        await self.get_user(name)
        await self._write([("UPDATE users SET role = ? WHERE name = ?", (role, name))])

    async def remove_user(self, name: str) -> None:
        """Delete a user, their API tokens and their page sessions."""
        user = await self.get_user(name)
        await self._write([("DELETE FROM sessions WHERE user_id = ?", (user["id"],)),
                           ("DELETE FROM users WHERE id = ?", (user["id"],))])

    async def add_session(self, user_id: int, id_hash: str, created_at: float, expires_at: float,
                          address: str) -> None:
        """Store a new page session (by the hash of its id); expired ones are dropped on the way."""
        await self._write([("DELETE FROM sessions WHERE expires_at <= ?", (created_at,)),
                           ("INSERT INTO sessions (id_hash, user_id, created_at, expires_at, address)"
                            " VALUES (?, ?, ?, ?, ?)", (id_hash, user_id, created_at, expires_at, address))])

    async def session_user(self, id_hash: str, now: float) -> dict | None:
        """The unexpired session with this id hash joined with its user, or None."""
        row = await self._one(
            "SELECT s.id AS session_id, s.created_at, u.id AS user_id, u.name AS user, u.role FROM sessions s"
            " JOIN users u ON u.id = s.user_id WHERE s.id_hash = ? AND s.expires_at > ?", (id_hash, now))
        return dict(row) if row else None

    async def remove_session(self, id_hash: str) -> None:
        """End one page session (logout)."""
        await self._write([("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))])

    async def remove_user_sessions(self, name: str) -> int:
        """End every page session of a user; returns how many there were."""
        user = await self.get_user(name)
        count = (await self._one("SELECT count(*) FROM sessions WHERE user_id = ?", (user["id"],)))[0]
        await self._write([("DELETE FROM sessions WHERE user_id = ?", (user["id"],))])
        return count

    async def add_token(self, user_id: int, name: str, token_hash: str) -> dict:
        """Store a new API token's hash; returns the token row."""
        now = time.time()
        await self._write([("INSERT INTO api_tokens (user_id, name, token_hash, created_at) VALUES (?, ?, ?, ?)",
                            (user_id, name, token_hash, now))])
        row = await self._one("SELECT id, user_id, name, created_at, last_used, revoked_at FROM api_tokens"
                              " WHERE token_hash = ?", (token_hash,))
        return dict(row)

    async def token_user(self, token_hash: str) -> dict | None:
        """The unrevoked token with this hash joined with its user, or None."""
        row = await self._read_one(
            "SELECT t.id AS token_id, t.name AS token_name, t.last_used, u.id AS user_id, u.name AS user,"
            " u.role FROM api_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.token_hash = ? AND t.revoked_at IS NULL", (token_hash,))
        return dict(row) if row else None

    async def list_tokens(self, user: str | None = None) -> list[dict]:
        """API tokens (never their hashes), newest first; only one user's when named."""
        sql = ("SELECT t.id, t.name, u.name AS user, t.created_at, t.last_used, t.revoked_at FROM api_tokens t"
               " JOIN users u ON u.id = t.user_id")
        if user is None:
            return [dict(r) for r in await self._all(sql + " ORDER BY t.id DESC")]
        return [dict(r) for r in await self._all(sql + " WHERE u.name = ? ORDER BY t.id DESC", (user,))]

    async def revoke_token(self, token_id: int) -> dict:
        """Mark a token revoked (kept for the record); NotFound if there is no such token."""
        row = await self._one("SELECT id, revoked_at FROM api_tokens WHERE id = ?", (token_id,))
        if row is None:
            raise NotFound(f"no API token with id {token_id}")
        if row["revoked_at"] is None:
            await self._write([("UPDATE api_tokens SET revoked_at = ? WHERE id = ?", (time.time(), token_id))])
        return dict(await self._one("SELECT id, name, created_at, last_used, revoked_at FROM api_tokens WHERE id = ?",
                                    (token_id,)))

    async def touch_tokens(self, last_used: dict[int, float]) -> None:
        """Record when tokens were last used (batched by the caller)."""
        if last_used:
            # quiet: no server changed, the poller need not read its list again
            await self._write_many([("UPDATE api_tokens SET last_used = ? WHERE id = ?",
                                     [(ts, tid) for tid, ts in last_used.items()])], quiet=True)
