"""The web terminal over HTTP: tickets, the WebSocket, sessions, recordings, rights and accounts.

Opening a terminal is two requests. POST /api/v1/servers/NAME/terminal (a page session with the
CSRF token; the password again unless the login is fresh) checks everything and returns a
single-use ticket; the page then opens the WebSocket GET /api/v1/terminal/ws?ticket=... on the
same origin with its session cookie. The WebSocket handshake is refused (HTTP 403, audited)
without an Origin naming this central, without a page session, without the terminal right or
without a valid ticket; the Host allow-list applies as to every route.

On the socket, binary frames are terminal bytes (input from the page, output from the host);
text frames are JSON control messages: from the page {"type": "resize", "cols", "rows"} and
{"type": "end"}; from the central {"type": "started", ...}, {"type": "ended", "reason",
"message", "exit_status"} and {"type": "error", "error", "detail"}.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import WSMsgType, web

from ..model import ADMIN, CentralError, Invalid
from ..auth import LoginAttempt
from ..terminal import TICKET_TTL, TerminalSession
from .keys import CENTRAL, LOGIN_LIMITER
from .registry import VIEWER, Call, Registry, array, boolean, integer, nullable, number, obj, string
from .security import CSRFFailed, TooManyAttempts, Unauthorized, check_origin, client_address, identify

log = logging.getLogger(__name__)

endpoints = Registry(tag="terminal")

MAX_MESSAGE = 256 * 1024
NAME = string(maxLength=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
ID = integer(minimum=1, maximum=2**62)

LIVE = obj({"id": integer(), "user": string(), "server": string(), "account": string(), "address": string(),
            "started_at": number(), "cols": integer(), "rows": integer(), "idle_seconds": number(),
            "ends_at": number(), "recording_bytes": integer()},
           required=["id", "user", "server", "account", "started_at"], closed=False)
SESSION = obj({"id": integer(), "user": string(), "server_name": string(), "account": string(),
               "started_at": number(), "ended_at": nullable(number()), "duration": nullable(number()),
               "exit_status": nullable(integer()), "end_reason": nullable(string()), "ended_by": nullable(string()),
               "message": string(), "cols": integer(), "rows": integer(), "recording_bytes": integer(),
               "live": boolean()},
              required=["id", "user", "server_name", "account", "started_at", "live"], closed=False)


@endpoints.get("/api/v1/terminal", summary="The terminal: may I open one, where is it enabled, who is connected",
               role=VIEWER,
               response=obj({"may_open": boolean(), "fresh_auth": number(), "fresh_login": boolean(),
                             "idle_timeout": number(), "max_duration": number(),
                             "servers": obj({}, closed=False), "live": array(LIVE)},
                            required=["may_open", "servers", "live"]))
async def terminal_overview(call: Call) -> dict:
    """`servers` maps each server with a terminal to its account; `live` lists open sessions
    (everyone's for admins and users with the right, else none)."""
    terminals = call.central.terminal
    may_open = call.identity.via == "session" and await terminals.may_open(call.identity)
    login_at = call.identity.logged_in_at
    cfg = call.central.config.terminal
    sees_live = may_open or call.identity.allows(ADMIN)
    return {"may_open": may_open, "fresh_auth": cfg.fresh_auth,
            "fresh_login": login_at is not None and time.time() - login_at <= cfg.fresh_auth,
            "idle_timeout": cfg.idle_timeout, "max_duration": cfg.max_duration,
            "servers": {name: a["account"] for name, a in (await terminals.accounts()).items()},
            "live": terminals.live() if sees_live else []}


@endpoints.post("/api/v1/servers/{name}/terminal", summary="Authorize a terminal session (returns a WebSocket ticket)",
                role=VIEWER, path_params={"name": NAME},
                body=obj({"password": string(minLength=1, maxLength=1024)}), body_required=False,
                response=obj({"ticket": string(), "websocket": string(), "expires_in": number(), "server": string(),
                              "account": string()}, required=["ticket", "websocket", "server", "account"]),
                errors=(403, 404, 409, 429))
async def authorize_terminal(call: Call) -> dict:
    """Needs a page session, the terminal right, the server's terminal enabled, and the password
    again (`password`) unless the login is at most terminal.fresh_auth old. Every refusal is
    audited; its `error` says why: no_right, fresh_auth_required, wrong_password, not_enabled..."""
    request = call.request
    address = client_address(request)
    password = call.body.get("password")
    attempt = None
    if password is not None:
        # Counted like a login: reserved before scrypt, given back when the password is right.
        attempt = request.app[LOGIN_LIMITER].reserve(address, call.identity.user)
        if not isinstance(attempt, LoginAttempt):
            raise TooManyAttempts("too many wrong passwords; try again later", attempt)
    ticket = await call.central.terminal.authorize(
        call.identity, call.path["name"], password=password, login_at=call.identity.logged_in_at, address=address)
    if attempt is not None:
        request.app[LOGIN_LIMITER].succeeded(attempt)
    return {"ticket": ticket.value, "websocket": f"/api/v1/terminal/ws?ticket={ticket.value}",
            "expires_in": TICKET_TTL, "server": ticket.server_name, "account": ticket.account}


def _check_ws_origin(request: web.Request) -> None:
    """A browser always sends Origin with a WebSocket: it must be present and name this central."""
    if not request.headers.get("Origin"):
        raise CSRFFailed("the terminal's WebSocket needs an Origin header naming this central")
    check_origin(request)  # a foreign Origin, Origin: null, a cross-site Sec-Fetch-Site


def _ended(session: TerminalSession) -> dict:
    return {"type": "ended", "session": session.id, "reason": session.end_reason, "message": session.message,
            "exit_status": session.exit_status}


async def terminal_websocket(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/terminal/ws?ticket=T&cols=C&rows=R: the session's WebSocket (not in the
    OpenAPI document: it is no JSON endpoint). Needs the page's session cookie. Refused before
    the upgrade (audited) for a foreign or missing Origin (checked first, before the cookie), a
    caller without a page session or the terminal right, and an unknown, used or expired ticket."""
    terminals = request.app[CENTRAL].terminal
    address = client_address(request)
    try:
        identity = await identify(request)
    except Unauthorized:
        identity = None
    try:
        _check_ws_origin(request)
    except CSRFFailed as exc:
        raise await terminals.refuse("foreign_origin", f"WebSocket refused: {exc.message}", identity=identity,
                                     address=address) from None
    if identity is None:
        raise Unauthorized("log in on the page first: the terminal's WebSocket needs the session cookie")
    if identity.via != "session":
        raise await terminals.refuse("not_a_page_session", "the terminal is opened from the page; API tokens "
                                     "cannot open one", identity=identity, address=address)
    if not await terminals.may_open(identity):
        raise await terminals.refuse("no_right", f"{identity.user} may not open terminals: an admin grants the "
                                     f"right with `central terminal grant {identity.user}`", identity=identity,
                                     address=address)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_MESSAGE)
    if not ws.can_prepare(request).ok:
        raise Invalid("expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)")
    size = _size(request)
    ticket = await terminals.redeem(request.query.get("ticket"), identity, address)
    await ws.prepare(request)
    try:
        session = await terminals.open(ticket, *size, address)
    except CentralError as exc:
        await ws.send_json({"type": "error", "error": exc.code, "detail": exc.message})
        await ws.close()
        return ws
    try:
        await ws.send_json({"type": "started", "session": session.id, "server": session.server.name,
                            "account": session.account, "started_at": session.started_at,
                            "ends_at": session.started_at + terminals.config.terminal.max_duration,
                            "idle_timeout": terminals.config.terminal.idle_timeout})
    except (ConnectionError, RuntimeError):  # the page went away at once: end (and record) the session
        session.stop("closed", by=identity.user, message="the page closed the terminal")
        await session.run(_discard)
        return ws

    async def output() -> None:
        await session.run(ws.send_bytes)
        if not ws.closed:
            await ws.send_json(_ended(session))
            await ws.close()

    pump = asyncio.create_task(output(), name=f"terminal-{session.id}-output")
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                session.write(msg.data)
            elif msg.type == WSMsgType.TEXT:
                _control(session, ws, msg.data)
            if session.end_reason is not None:
                break
    finally:
        if session.end_reason is None:
            session.stop("closed", by=identity.user, message="the page closed the terminal")
        try:
            await asyncio.shield(pump)
        except (ConnectionError, RuntimeError) as exc:  # the page went away mid-send
            log.debug("terminal session %s: %s", session.id, exc)
    return ws


async def _discard(data: bytes) -> None:
    """A sink for output nobody receives any more."""


def _size(request: web.Request) -> tuple[int, int]:
    out = []
    for name, default, low, high in (("cols", 80, 2, 1000), ("rows", 24, 1, 500)):
        raw = request.query.get(name, str(default))
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise Invalid(f"{name}: expected {low} to {high}, got {raw[:20]!r}")
        out.append(int(raw))
    return out[0], out[1]


def install_websocket(app: web.Application) -> None:
    """Add the terminal's WebSocket route."""
    app.router.add_get("/api/v1/terminal/ws", terminal_websocket, name="terminal_websocket")


def _control(session: TerminalSession, ws: web.WebSocketResponse, text: str) -> None:
    try:
        message = json.loads(text)
    except ValueError:
        message = None
    kind = message.get("type") if isinstance(message, dict) else None
    try:
        if kind == "resize":
            session.resize(message.get("cols"), message.get("rows"))
        elif kind == "end":
            session.stop("closed", by=session.user, message="session ended from the page")
        elif kind == "input" and isinstance(message.get("data"), str):
            session.write(message["data"].encode())
        else:
            raise Invalid('expected {"type": "resize", "cols", "rows"}, {"type": "input", "data"} or {"type": "end"}')
    except Invalid as exc:
        asyncio.ensure_future(ws.send_json({"type": "error", "error": "invalid", "detail": exc.message}))


@endpoints.get("/api/v1/terminal/sessions", summary="Recorded terminal sessions (and the open ones)", role=VIEWER,
               query={"server": NAME, "limit": integer(minimum=1, maximum=1000, default=100), "before_id": ID},
               response=obj({"sessions": array(SESSION), "live": array(LIVE)}, required=["sessions", "live"]))
async def terminal_sessions(call: Call) -> dict:
    """Newest first; admins see everyone's, other users their own."""
    terminals = call.central.terminal
    sessions = await terminals.sessions(call.identity, server=call.query.get("server"), limit=call.query["limit"],
                                        before_id=call.query.get("before_id"))
    sees_live = call.identity.allows(ADMIN) or await terminals.may_open(call.identity)
    return {"sessions": sessions, "live": terminals.live() if sees_live else []}


@endpoints.get("/api/v1/terminal/sessions/{id}", summary="One terminal session", role=VIEWER,
               path_params={"id": ID}, response=SESSION, errors=(403, 404))
async def terminal_session(call: Call) -> dict:
    """Its owner and admins only."""
    return await call.central.terminal.session(call.path["id"], call.identity)


@endpoints.get("/api/v1/terminal/sessions/{id}/recording", summary="A session's recording (asciicast v2)",
               role=VIEWER, path_params={"id": ID}, content_type="application/x-asciicast",
               response=string(description="asciicast v2: a JSON header line, then [seconds, code, data] lines."),
               errors=(403, 404))
async def terminal_recording(call: Call) -> web.StreamResponse:
    """Its owner and admins only; open sessions give what is recorded so far."""
    path = await call.central.terminal.recording_path(call.path["id"], call.identity)
    return web.FileResponse(path, headers={"Content-Type": "application/x-asciicast",
                                           "Content-Disposition": f'attachment; filename="terminal-{call.path["id"]}.cast"',
                                           "Cache-Control": "no-store"})


@endpoints.post("/api/v1/terminal/sessions/{id}/end", summary="End an open terminal session", role=VIEWER,
                path_params={"id": ID},
                response=obj({"id": integer(), "ended": boolean(), "ended_by": string()}, required=["id", "ended"]),
                errors=(403, 404, 409))
async def end_terminal_session(call: Call) -> dict:
    """One's own session, or anyone's for an admin (audited)."""
    return await call.central.terminal.end(call.path["id"], call.identity)


RIGHT = obj({"user": string(), "right": string(), "granted": boolean(), "had": boolean()},
            required=["user", "right", "granted"])
USER = string(maxLength=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@endpoints.get("/api/v1/terminal/users", summary="Users with the terminal right", role=ADMIN,
               response=obj({"users": array(obj({"user": string(), "role": string(), "granted_by": string(),
                                                 "granted_at": number()}, required=["user"]))}, required=["users"]))
async def terminal_users(call: Call) -> dict:
    """Who may open terminals."""
    return {"users": await call.central.terminal.holders()}


@endpoints.put("/api/v1/users/{name}/rights/terminal", summary="Grant a user the terminal right", role=ADMIN,
               path_params={"name": USER}, response=RIGHT, errors=(404,))
async def grant_terminal(call: Call) -> dict:
    """Admins need it granted too (audited)."""
    return await call.central.terminal.grant(call.path["name"], call.identity.user, call.identity.role)


@endpoints.delete("/api/v1/users/{name}/rights/terminal", summary="Revoke a user's terminal right", role=ADMIN,
                  path_params={"name": USER}, response=RIGHT, errors=(404,))
async def revoke_terminal(call: Call) -> dict:
    """Their open sessions end (audited)."""
    return await call.central.terminal.revoke(call.path["name"], call.identity.user, call.identity.role)


ACCOUNT = obj({"server": string(), "account": string(), "enabled": boolean(), "was_enabled": boolean()},
              required=["server", "enabled"])


@endpoints.put("/api/v1/servers/{name}/terminal/account", summary="Enable a server's terminal for a host account",
               role=ADMIN, path_params={"name": NAME},
               body=obj({"account": string(minLength=1, maxLength=32)}, required=["account"]),
               response=ACCOUNT, errors=(404,))
async def enable_terminal(call: Call) -> dict:
    """The terminal key must be installed for that account on the host (deploy --terminal-user)."""
    return await call.central.terminal.enable(call.path["name"], call.body["account"], call.identity.user,
                                              call.identity.role)


@endpoints.delete("/api/v1/servers/{name}/terminal/account", summary="Turn a server's terminal off", role=ADMIN,
                  path_params={"name": NAME}, response=ACCOUNT, errors=(404,))
async def disable_terminal(call: Call) -> dict:
    """Open sessions on it end (audited)."""
    return await call.central.terminal.disable(call.path["name"], call.identity.user, call.identity.role)

