"""The servers table: settings, pinned host keys, poll status."""
from __future__ import annotations

import json
import time
from typing import Sequence

import aiosqlite

from ...model import BLOCKING_REASONS, Conflict, NotFound, Server
from .base import SQLiteBase, json_rows

_SERVER_UPDATABLE = {
    "host", "port", "user", "key_path", "agent_port", "tags", "interval_s",
    "host_key", "host_key_fingerprint", "status", "status_reason", "last_error",
    "consecutive_failures", "agent_version", "agent_sha256", "hostname", "inventory_hash", "via",
}
# The reasons a re-trusted host key clears (they stop polling), as SQL parameters.
_BLOCKING = tuple(sorted(BLOCKING_REASONS))
_BLOCKING_IN = ", ".join("?" * len(_BLOCKING))


class SQLiteServers(SQLiteBase):
    """central.storage.interface.Servers on SQLite."""

    async def add_server(
        self,
        name: str,
        host: str,
        *,
        kind: str = "ssh",
        port: int = 22,
        user: str = "central",
        key_path: str | None = None,
        agent_port: int = 8083,
        tags: Sequence[str] = (),
        interval_s: float | None = None,
        host_key: str | None = None,
        host_key_fingerprint: str | None = None,
        agent_secret: str | None = None,
        via: int | None = None,
    ) -> Server:
        """Insert a server with its agent secret, or the one pending for its host and port;
        Conflict if the name is taken."""
        now = time.time()
        statements = [(
            "INSERT INTO servers (name, kind, host, port, user, key_path, agent_port, tags,"
            " interval_s, host_key, host_key_fingerprint, created_at, via)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, kind, host, port, user, key_path, agent_port, json.dumps(list(tags)),
             interval_s, host_key, host_key_fingerprint, now, via),
        )]
        if kind != "local":
            if agent_secret is not None:
                statements.append(("INSERT INTO agent_secrets (server_id, secret, updated_at)"
                                   " SELECT id, ?, ? FROM servers WHERE name = ?", (agent_secret, now, name)))
            else:
                statements.append(("INSERT INTO agent_secrets (server_id, secret, updated_at)"
                                   " SELECT s.id, p.secret, ? FROM servers s, pending_agent_secrets p"
                                   " WHERE s.name = ? AND p.host = ? AND p.port = ?", (now, name, host, port)))
            statements.append(("DELETE FROM pending_agent_secrets WHERE host = ? AND port = ?", (host, port)))
        try:
            await self._write(statements)
        except aiosqlite.IntegrityError:
            raise Conflict(f"a server named {name!r} already exists") from None
        return await self.get_server(name)

    async def get_server(self, name: str) -> Server:
        """The server called name; NotFound otherwise."""
        row = await self._one("SELECT * FROM servers WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no server named {name!r}")
        return Server.from_row(row)

    async def server_by_id(self, server_id: int) -> Server:
        """The server with this id; NotFound otherwise."""
        row = await self._one("SELECT * FROM servers WHERE id = ?", (server_id,))
        if row is None:
            raise NotFound(f"no server with id {server_id}")
        return Server.from_row(row)

    async def find_server(self, name: str) -> Server | None:
        """The server called name, or None."""
        row = await self._one("SELECT * FROM servers WHERE name = ?", (name,))
        return Server.from_row(row) if row else None

    async def list_servers(self) -> list[Server]:
        """Every server, by name."""
        return [Server.from_row(r) for r in await self._all("SELECT * FROM servers ORDER BY name")]

    async def server_dicts(self) -> list[dict]:
        """Every server as a plain dict (tags decoded), by name: for lists, without building a
        frozen Server per row (that cost ~40 us a row, 40 ms for a 1,000-server page)."""
        return json_rows(await self._all("SELECT * FROM servers ORDER BY name"), tags="[]")

    async def server_page(self, *, tag: str | None = None, status: str | None = None, name: str | None = None,
                          limit: int | None = 100, offset: int = 0) -> tuple[list[dict], int]:
        """One page of servers by name as plain dicts, filtered by tag, status and a name
        substring (case-insensitive), and how many match in all."""
        where, args = [], []
        if tag:
            where.append("EXISTS (SELECT 1 FROM json_each(servers.tags) WHERE value = ?)")
            args.append(tag)
        if status:
            where.append("status = ?")
            args.append(status)
        if name:
            where.append("instr(lower(name), ?) > 0")
            args.append(name.lower())
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        total = (await self._read_one(f"SELECT count(*) FROM servers{cond}", args))[0]
        rows = await self._read_all(f"SELECT * FROM servers{cond} ORDER BY name LIMIT ? OFFSET ?", (*args, -1 if limit is None else limit, offset))
        return json_rows(rows, tags="[]"), total

    async def status_counts(self) -> dict[str, int]:
        """How many servers are in each status."""
        return {r[0]: r[1] for r in await self._read_all("SELECT status, count(*) FROM servers GROUP BY status")}

    async def online_ids(self) -> set[int]:
        """Ids of the servers whose last poll succeeded."""
        return {r[0] for r in await self._read_all("SELECT id FROM servers WHERE status = 'online'")}

    async def update_server(self, name: str, **fields) -> Server:
        """Change stored fields of a server (only known columns)."""
        bad = set(fields) - _SERVER_UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")
        if "tags" in fields:
            fields["tags"] = json.dumps(list(fields["tags"]))
        if fields:
            sets = ", ".join(f"{k} = ?" for k in fields)
            await self._write([(f"UPDATE servers SET {sets} WHERE name = ?", (*fields.values(), name))])
        return await self.get_server(name)

    async def remove_server(self, name: str) -> None:
        """Delete a server and everything stored about it."""
        server = await self.get_server(name)
        behind = [r[0] for r in await self._all("SELECT name FROM servers WHERE via = ? ORDER BY name", (server.id,))]
        if behind:
            raise Conflict(f"{name} is the bastion of {', '.join(behind)}: reach them another way first "
                           "(change their via)")
        await self._write([("DELETE FROM servers WHERE id = ?", (server.id,))])
        if self._latest is not None:
            self._latest.pop(server.id, None)
            self.latest_changes += 1

    async def pin_host_key(self, name: str, host_key: str, fingerprint: str) -> Server:
        """Pin a (new) host key and clear a host-key-mismatch status."""
        await self._write([(
            "UPDATE servers SET host_key = ?, host_key_fingerprint = ?, consecutive_failures = 0,"
            f" status = CASE WHEN status_reason IN ({_BLOCKING_IN}) THEN 'unknown' ELSE status END,"
            f" status_reason = CASE WHEN status_reason IN ({_BLOCKING_IN}) THEN NULL ELSE status_reason END"
            " WHERE name = ?",
            (host_key, fingerprint, *_BLOCKING, *_BLOCKING, name),
        )])
        return await self.get_server(name)
