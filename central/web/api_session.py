"""Logging in and out of the page: POST /api/v1/login, POST /api/v1/logout, GET /api/v1/session.

The login starts a server-side session (its random id in an encrypted cookie) and returns the
session's CSRF token, which the page sends back in X-CSRF-Token (or a csrf_token form field)
with every POST/PATCH/DELETE; logout ends the session in the database. Each attempt is reserved
before the password is checked, and failures back off per user name and client address, with a
higher allowance per user name (http.login_attempts, http.login_attempts_per_user; 429 with
Retry-After; auth.LoginLimiter). An HTML form may post here too
(application/x-www-form-urlencoded): on success it is redirected (303) to `next` when that is a
path on this site (security.safe_redirect), else to /.
"""
from __future__ import annotations

import logging

from aiohttp import web

from ..auth import LoginAttempt
from ..model import ROLES
from .keys import LOGIN_LIMITER
from .registry import NONE, VIEWER, Call, Registry, nullable, obj, string
from .security import (MAX_REDIRECT, TooManyAttempts, Unauthorized, client_address, end_session, safe_redirect,
                       session_csrf, start_session)

log = logging.getLogger(__name__)

endpoints = Registry(tag="session")

SESSION = obj({"user": string(), "role": string(enum=list(ROLES)), "via": string(enum=["session", "token"]),
               "csrf_token": nullable(string())}, required=["user", "role", "via", "csrf_token"])


@endpoints.post("/api/v1/login", summary="Log in; sets the session cookie", role=NONE, form=True,
                body=obj({"username": string(minLength=1, maxLength=64), "password": string(minLength=1, maxLength=1024),
                          "next": string(maxLength=MAX_REDIRECT)}, required=["username", "password"]),
                responses={200: SESSION, 303: {}}, errors=(401, 403, 429))
async def login(call: Call):
    """JSON in, JSON out (with the CSRF token); or a form post, answered with a redirect to `next`."""
    request = call.request  # cross-site posts were refused by the dispatcher (check_origin)
    limiter = request.app[LOGIN_LIMITER]
    name, address = call.body["username"], client_address(request)
    # Reserve the attempt before scrypt runs: parallel guesses beyond the allowance never reach it.
    attempt = limiter.reserve(address, name)
    if not isinstance(attempt, LoginAttempt):
        raise TooManyAttempts("too many failed logins; try again later", attempt)
    identity = await call.central.auth.login(name, call.body["password"])
    if identity is None:
        log.warning("failed login for %r from %s", name[:64], address)
        raise Unauthorized("wrong user name or password")
    limiter.succeeded(attempt)
    csrf = await start_session(request, identity)
    log.info("%s logged in from %s", identity.user, address)
    if request.content_type == "application/x-www-form-urlencoded":
        raise web.HTTPSeeOther(safe_redirect(call.body.get("next")))
    return {"user": identity.user, "role": identity.role, "via": "session", "csrf_token": csrf}


@endpoints.post("/api/v1/logout", summary="Log out; ends the session on the server and drops its cookie", role=VIEWER,
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
