"""Real receivers on loopback for notifier tests: an HTTP server and an SMTP server (aiosmtpd)."""
from __future__ import annotations

import asyncio
import email
import email.policy
import json
import time
from urllib.parse import parse_qs

from aiohttp import web


class HTTPReceiver:
    """Records every request (any method and path); answers 200, or 500 while `failing`."""

    def __init__(self):
        self.requests: list[dict] = []
        self.failing = False
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        entry = {"method": request.method, "path": request.path, "content_type": request.content_type,
                 "arrived": time.monotonic(), "raw": raw, "headers": dict(request.headers), "query": dict(request.query)}
        if request.content_type == "application/json":
            entry["json"] = json.loads(raw)
        elif request.content_type == "application/x-www-form-urlencoded":
            entry["form"] = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        self.requests.append(entry)
        self.arrived.set()
        if self.failing:
            return web.json_response({"error": "down for a test"}, status=500)
        return web.json_response({"ok": True})

    async def start(self) -> "HTTPReceiver":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[dict]:
        """The requests that went to one path, in order."""
        return [r for r in self.requests if r["path"] == path]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class SMTPReceiver:
    """aiosmtpd on 127.0.0.1, port 0; accepts AUTH LOGIN/PLAIN without TLS and records the credentials."""

    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list = []
        self.logins: list[tuple[str, str]] = []
        self.server: asyncio.AbstractServer | None = None
        self.port: int | None = None

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's handler name
        self.envelopes.append(envelope)
        self.messages.append(email.message_from_bytes(envelope.original_content or envelope.content,
                                                      policy=email.policy.default))
        return "250 OK"

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if isinstance(auth_data, LoginPassword):
            self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=True)

    async def start(self) -> "SMTPReceiver":
        from aiosmtpd.smtp import SMTP

        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self, authenticator=self._authenticate, auth_require_tls=False), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
