"""Fixtures for HTTP tests: the real app from create_app(config) behind aiohttp's test server,
with a real SQLite database in tmp_path and one user plus API token per role.

Import the fixtures into a test module: ``from tests.apiclient import api  # noqa: F401``.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache

import pytest
from aiohttp.test_utils import TestClient, TestServer

from central.auth import hash_password
from central.web.app import create_app
from central.web.keys import CENTRAL

PASSWORD = "correct horse battery"


@lru_cache(maxsize=1)
def password_hash() -> str:
    """One scrypt hash for every test user (hashing costs ~0.1 s; once per session is enough)."""
    return hash_password(PASSWORD)


class Api:
    """A running app, its Central, and bearer headers per role."""

    def __init__(self, client: TestClient):
        self.client = client
        self.app = client.server.app
        self.central = self.app[CENTRAL]
        self.tokens: dict[str, str] = {}

    def headers(self, role: str = "admin", **extra) -> dict:
        """Authorization headers of the role's user."""
        return {"Authorization": f"Bearer {self.tokens[role]}", **extra}

    async def request(self, method: str, path: str, role: str | None = "admin", **kw):
        """A request as role (None: no credentials); returns (status, parsed JSON or text, response)."""
        headers = kw.pop("headers", {})
        if role is not None:
            headers = {**self.headers(role), **headers}
        async with self.client.request(method, path, headers=headers, **kw) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json(), resp
            return resp.status, await resp.text(), resp

    async def get(self, path: str, role: str | None = "admin", **kw):
        """GET as role."""
        return await self.request("GET", path, role, **kw)


async def start_api(config, **http) -> Api:
    """Start the real app for config (with http overrides) and create a user and token per role."""
    if http:
        config = dataclasses.replace(config, http=dataclasses.replace(config.http, **http))
    client = TestClient(TestServer(create_app(config)))
    await client.start_server()
    api = Api(client)
    try:
        for role in ("viewer", "operator", "admin"):
            if await api.central.storage.find_user(role + "1") is None:  # a restart keeps them
                await api.central.storage.add_user(role + "1", role, password_hash())
            api.tokens[role], _ = await api.central.auth.create_token(role + "1", "tests")
    except BaseException:
        await client.close()
        raise
    return api


@pytest.fixture
async def api(config):
    """The app with users viewer1/operator1/admin1 (password PASSWORD) and their tokens."""
    a = await start_api(config)
    yield a
    await a.client.close()
