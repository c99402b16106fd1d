"""The agent_secrets and pending_agent_secrets tables on PostgreSQL."""
from __future__ import annotations

import time

from .base import PostgresBase


class PostgresAgentSecrets(PostgresBase):
    """central.storage.interface.AgentSecrets on PostgreSQL."""

    async def agent_secret(self, server_id: int) -> str | None:
        """The server's agent secret, or None."""
        return await self._val("SELECT secret FROM agent_secrets WHERE server_id = $1", (server_id,))

    async def agent_secret_ids(self) -> set[int]:
        """The ids of the servers the central has an agent secret for."""
        return {r[0] for r in await self._all("SELECT server_id FROM agent_secrets")}

    async def set_agent_secret(self, server_id: int, secret: str) -> None:
        """Store (or replace) a server's agent secret."""
        await self._write([("INSERT INTO agent_secrets (server_id, secret, updated_at) VALUES ($1, $2, $3)"
                            " ON CONFLICT (server_id) DO UPDATE SET secret = excluded.secret,"
                            " updated_at = excluded.updated_at", (server_id, secret, time.time()))])

    async def put_pending_secret(self, host: str, port: int, secret: str) -> None:
        """Keep a secret for a host and SSH port until a server with them is added."""
        await self._write([("INSERT INTO pending_agent_secrets (host, port, secret, created_at) VALUES ($1, $2, $3, $4)"
                            " ON CONFLICT (host, port) DO UPDATE SET secret = excluded.secret,"
                            " created_at = excluded.created_at", (host, port, secret, time.time()))])

    async def pending_secret(self, host: str, port: int) -> str | None:
        """The secret kept for a host and SSH port, or None."""
        return await self._val("SELECT secret FROM pending_agent_secrets WHERE host = $1 AND port = $2", (host, port))

    async def pending_secret_hosts(self) -> list[dict]:
        """The hosts secrets are kept for ({host, port, created_at}; never the secrets)."""
        return [dict(r) for r in await self._all(
            'SELECT host, port, created_at FROM pending_agent_secrets ORDER BY host COLLATE "C", port')]
