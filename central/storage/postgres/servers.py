"""The servers table on PostgreSQL: settings, pinned host keys, poll status."""
from __future__ import annotations

import json
import time
from typing import Sequence

import asyncpg

from ...model import BLOCKING_REASONS, Conflict, NotFound, Server
from ..sqlite.servers import _SERVER_UPDATABLE
from .base import PostgresBase, json_rows

_BLOCKING = sorted(BLOCKING_REASONS)


class PostgresServers(PostgresBase):
    """central.storage.interface.Servers on PostgreSQL."""

    async def add_server(
        self, name: str, host: str, *, kind: str = "ssh", port: int = 22, user: str = "central",
        key_path: str | None = None, agent_port: int = 8083, tags: Sequence[str] = (),
        interval_s: float | None = None, host_key: str | None = None, host_key_fingerprint: str | None = None,
        agent_secret: str | None = None, via: int | None = None,
    ) -> Server:
        """Insert a server with its agent secret, or the one pending for its host and port;
        Conflict if the name is taken. via: the id of its bastion."""
        now = time.time()
        try:
            async with self.transaction() as con:
                server_id = await con.fetchval(
                    'INSERT INTO servers (name, kind, host, port, "user", key_path, agent_port, tags,'
                    " interval_s, host_key, host_key_fingerprint, created_at, via)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
                    name, kind, host, port, user, key_path, agent_port, json.dumps(list(tags)),
                    interval_s, host_key, host_key_fingerprint, now, via)
                if kind != "local":
                    if agent_secret is not None:
                        await con.execute("INSERT INTO agent_secrets (server_id, secret, updated_at)"
                                          " VALUES ($1, $2, $3)", server_id, agent_secret, now)
                    else:
                        await con.execute("INSERT INTO agent_secrets (server_id, secret, updated_at)"
                                          " SELECT $1, secret, $2 FROM pending_agent_secrets"
                                          " WHERE host = $3 AND port = $4", server_id, now, host, port)
                    await con.execute("DELETE FROM pending_agent_secrets WHERE host = $1 AND port = $2", host, port)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a server named {name!r} already exists") from None
        return await self.get_server(name)

    async def get_server(self, name: str) -> Server:
        """The server called name; NotFound otherwise."""
        row = await self._one("SELECT * FROM servers WHERE name = $1", (name,))
        if row is None:
            raise NotFound(f"no server named {name!r}")
        return Server.from_row(row)

    async def server_by_id(self, server_id: int) -> Server:
        """The server with this id; NotFound otherwise."""
        row = await self._one("SELECT * FROM servers WHERE id = $1", (server_id,))
        if row is None:
            raise NotFound(f"no server with id {server_id}")
        return Server.from_row(row)

    async def find_server(self, name: str) -> Server | None:
        """The server called name, or None."""
        row = await self._one("SELECT * FROM servers WHERE name = $1", (name,))
        return Server.from_row(row) if row else None

    async def list_servers(self) -> list[Server]:
        """Every server, by name."""
        return [Server.from_row(r) for r in await self._all("SELECT * FROM servers ORDER BY name COLLATE \"C\"")]

    async def server_dicts(self) -> list[dict]:
        """Every server as a plain dict (tags decoded), by name."""
        return json_rows(await self._all('SELECT * FROM servers ORDER BY name COLLATE "C"'), tags="[]")

    async def server_page(self, *, tag: str | None = None, status: str | None = None, name: str | None = None,
                          limit: int | None = 100, offset: int = 0) -> tuple[list[dict], int]:
        """One page of servers by name as plain dicts, filtered by tag, status and a name
        substring (case-insensitive), and how many match in all."""
        where, args = [], []
        if tag:
            args.append(tag)
            where.append(f"tags::jsonb ? ${len(args)}")
        if status:
            args.append(status)
            where.append(f"status = ${len(args)}")
        if name:
            args.append(name.lower())
            where.append(f"strpos(lower(name), ${len(args)}) > 0")
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        total = await self._val(f"SELECT count(*) FROM servers{cond}", args)
        n = len(args)
        rows = await self._all(f'SELECT * FROM servers{cond} ORDER BY name COLLATE "C" LIMIT ${n + 1} OFFSET ${n + 2}',
                               (*args, limit, offset))
        return json_rows(rows, tags="[]"), total

    async def status_counts(self) -> dict[str, int]:
        """How many servers are in each status."""
        return {r[0]: r[1] for r in await self._all("SELECT status, count(*) FROM servers GROUP BY status")}

    async def online_ids(self) -> set[int]:
        """Ids of the servers whose last poll succeeded."""
        return {r[0] for r in await self._all("SELECT id FROM servers WHERE status = 'online'")}

    async def update_server(self, name: str, **fields) -> Server:
        """Change stored fields of a server (only known columns)."""
        bad = set(fields) - _SERVER_UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")
        if "tags" in fields:
            fields["tags"] = json.dumps(list(fields["tags"]))
        if fields:
            sets = ", ".join(f'"{k}" = ${i}' for i, k in enumerate(fields, 1))
            await self._write([(f"UPDATE servers SET {sets} WHERE name = ${len(fields) + 1}", (*fields.values(), name))])
        return await self.get_server(name)

    async def remove_server(self, name: str) -> None:
        """Delete a server and everything stored about it; Conflict while it is the bastion of others."""
        server = await self.get_server(name)
        behind = [r[0] for r in await self._all('SELECT name FROM servers WHERE via = $1 ORDER BY name COLLATE "C"',
                                                (server.id,))]
        if behind:
            raise Conflict(f"{name} is the bastion of {', '.join(behind)}: reach them another way first "
                           "(change their via)")
        try:
            await self._write([("DELETE FROM servers WHERE id = $1", (server.id,))])
        except asyncpg.ForeignKeyViolationError:  # a host put behind it meanwhile
            raise Conflict(f"{name} is the bastion of another server now: reach it another way first") from None
        if self._latest is not None:
            self._latest.pop(server.id, None)
            self.latest_changes += 1

    async def pin_host_key(self, name: str, host_key: str, fingerprint: str) -> Server:
        """Pin a (new) host key and clear a status whose reason blocks polling."""
        await self._write([(
            "UPDATE servers SET host_key = $1, host_key_fingerprint = $2, consecutive_failures = 0,"
            " status = CASE WHEN status_reason = ANY($3::text[]) THEN 'unknown' ELSE status END,"
            " status_reason = CASE WHEN status_reason = ANY($3::text[]) THEN NULL ELSE status_reason END"
            " WHERE name = $4", (host_key, fingerprint, _BLOCKING, name))])
        return await self.get_server(name)
