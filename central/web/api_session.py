"""Logging in and out of the page: POST /api/v1/login, POST /api/v1/logout, GET /api/v1/session.

The login sets an encrypted session cookie and returns the session's CSRF token, which the page
sends back in X-CSRF-Token (or a csrf_token form field) with every POST/PATCH/DELETE. Failed
logins are limited per client address and per user name (http.login_attempts_per_minute; 429
with Retry-After). An HTML form may post here too (application/x-www-form-urlencoded): on
success it is redirected (303) to `next` (a local path, default /).
"""
from __future__ import annotations

import logging

from aiohttp import web

from ..model import ROLES
from .keys import LOGIN_LIMITER
from .registry import NONE, VIEWER, Call, Registry, nullable, obj, string
from .security import TooManyAttempts, Unauthorized, check_origin, client_address, end_session, session_csrf, start_session

log = logging.getLogger(__name__)

endpoints = Registry(tag="session")

SESSION = obj({"user": string(), "role": string(enum=list(ROLES)), "via": string(enum=["session", "token"]),
               "csrf_token": nullable(string())}, required=["user", "role", "via", "csrf_token"])


def _local_path(target: str | None) -> str:
    """Only same-site paths as redirect targets (no //host or scheme: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@endpoints.post("/api/v1/login", summary="Log in; sets the session cookie", role=NONE, form=True,
                body=obj({"username": string(minLength=1, maxLength=64), "password": string(minLength=1, maxLength=1024),
                          "next": string(maxLength=500)}, required=["username", "password"]),
                responses={200: SESSION, 303: {}}, errors=(401, 403, 429))
async def login(call: Call):
    """JSON in, JSON out (with the CSRF token); or a form post, answered with a redirect to `next`."""
    request = call.request
    check_origin(request)
    limiter = request.app[LOGIN_LIMITER]
    name, address = call.body["username"], client_address(request)
    wait = limiter.retry_after(address, name)
    if wait > 0:
        raise TooManyAttempts("too many failed logins; try again later", wait)
    identity = await call.central.auth.login(name, call.body["password"])
    if identity is None:
        limiter.failed(address, name)
        log.warning("failed login for %r from %s", name[:64], address)
        raise Unauthorized("wrong user name or password")
    csrf = await start_session(request, identity)
    log.info("%s logged in from %s", identity.user, address)
    if request.content_type == "application/x-www-form-urlencoded":
        raise web.HTTPSeeOther(_local_path(call.body.get("next")))
    return {"user": identity.user, "role": identity.role, "via": "session", "csrf_token": csrf}


@endpoints.post("/api/v1/logout", summary="Log out; drops the session cookie", role=VIEWER,
                response=obj({"logged_out": string()}, required=["logged_out"]))
async def logout(call: Call) -> dict:
    """Ends the session (cookie callers must send the CSRF token, like any POST)."""
    await end_session(call.request)
    return {"logged_out": call.identity.user}


@endpoints.get("/api/v1/session", summary="Who is calling (and the session's CSRF token)", role=VIEWER,
               response=SESSION)
async def current_session(call: Call) -> dict:
    """The user, role and how they authenticated; for the page, also the CSRF token to send back."""
    ident = call.identity
    csrf = await session_csrf(call.request) if ident.via == "session" else None
    return {"user": ident.user, "role": ident.role, "via": ident.via, "csrf_token": csrf}
