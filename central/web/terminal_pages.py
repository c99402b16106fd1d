"""The terminal's pages: a server's terminal, the sessions list, and a recording's player.

The data comes from the same functions as the JSON API (central.terminal). xterm.js writes
<style> elements and, for true-colour text, style attributes: these pages' Content-Security-
Policy allows <style> elements carrying the page's nonce (static/terminal-csp.js hands it to
xterm.js) and inline style attributes, nothing else inline; scripts stay 'self' only.
"""
from __future__ import annotations

import secrets

from aiohttp import web

from ..auth import Identity
from ..model import ADMIN, CentralError
from .dispatch import CONTENT_SECURITY_POLICY
from .keys import CENTRAL
from .pages import _env, _identity, _render

PAGE_ROUTE_NAMES = ("terminal_page", "terminal_sessions_page", "terminal_replay_page")


def fmt_duration(seconds) -> str:
    """5m, 1h 30m, 42s, 2d: a duration as the config writes it."""
    if seconds is None:
        return "–"
    s = int(round(float(seconds)))
    if s < 60:
        return f"{s}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    return " ".join(parts[:2])


_env.filters["duration"] = fmt_duration


def terminal_csp(nonce: str) -> str:
    """The page CSP, with <style> elements allowed by nonce and style attributes for xterm.js."""
    return CONTENT_SECURITY_POLICY.replace(
        "style-src 'self';", f"style-src 'self'; style-src-elem 'self' 'nonce-{nonce}'; style-src-attr 'unsafe-inline';")


def _terminal_page(template: str):
    def decorate(fn):
        async def handler(request: web.Request) -> web.Response:
            identity = await _identity(request)
            nonce = secrets.token_urlsafe(16)
            try:
                context = await fn(request, identity)
            except CentralError as exc:
                return await _render(request, "error.html", identity, status=exc.status, error=exc)
            response = await _render(request, template, identity, active="terminal", csp_nonce=nonce, **context)
            response.headers["Content-Security-Policy"] = terminal_csp(nonce)
            return response
        handler.__name__ = fn.__name__
        return handler
    return decorate


async def _common(request: web.Request, identity: Identity) -> dict:
    terminals = request.app[CENTRAL].terminal
    may_open = identity.via == "session" and await terminals.may_open(identity)
    return {"may_open": may_open, "is_admin": identity.allows(ADMIN),
            "live": terminals.live() if may_open or identity.allows(ADMIN) else [],
            "limits": request.app[CENTRAL].config.terminal}


@_terminal_page("terminal.html")
async def terminal_page(request: web.Request, identity: Identity) -> dict:
    """A server's terminal (POST /api/v1/servers/NAME/terminal, then the WebSocket)."""
    central = request.app[CENTRAL]
    server = await central.storage.get_server(request.match_info["name"])
    account = await central.terminal.account(server)
    common = await _common(request, identity)
    common["live"] = [s for s in common["live"] if s["server"] == server.name]
    return {"server": server, "account": account, **common}


@_terminal_page("terminal_sessions.html")
async def terminal_sessions_page(request: web.Request, identity: Identity) -> dict:
    """Who is connected where, and the recorded sessions (GET /api/v1/terminal/sessions)."""
    terminals = request.app[CENTRAL].terminal
    return {"sessions": await terminals.sessions(identity, limit=200), "servers": await terminals.accounts(),
            "retention": request.app[CENTRAL].config.retention.recordings, **await _common(request, identity)}


@_terminal_page("terminal_replay.html")
async def terminal_replay_page(request: web.Request, identity: Identity) -> dict:
    """One recording in the player (GET /api/v1/terminal/sessions/ID and .../recording)."""
    try:
        session_id = int(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    session = await request.app[CENTRAL].terminal.session(session_id, identity)
    return {"session": session, **await _common(request, identity)}


def install_terminal_pages(app: web.Application) -> None:
    """Add the terminal's page routes."""
    app.router.add_get("/servers/{name}/terminal", terminal_page, name="terminal_page")
    app.router.add_get("/terminal", terminal_sessions_page, name="terminal_sessions_page")
    app.router.add_get(r"/terminal/sessions/{id:\d+}", terminal_replay_page, name="terminal_replay_page")
