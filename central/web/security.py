"""Who is calling and whether the request is safe: bearer tokens, session cookies, CSRF, Host.

- Scripts send ``Authorization: Bearer <token>`` (central token create).
- The page logs in (POST /api/v1/login) and then carries an encrypted session cookie
  (aiohttp-session's EncryptedCookieStorage, Fernet; HttpOnly, SameSite=Strict, Secure when
  http.cookie_secure) holding a random session id. The session itself lives in the database
  (table sessions, by the id's hash): logout, a password change or removing the user delete
  it, so a saved copy of the cookie is worth nothing afterwards. Cookie-authenticated POST/PATCH/PUT/DELETE must repeat the session's CSRF
  token in an ``X-CSRF-Token`` header or a ``csrf_token`` form field; bearer requests are exempt
  (a browser never adds that header on its own).
- The Host header must name this central (DNS rebinding): any IP literal, localhost, the listen
  address or an entry of http.allowed_hosts. An IP literal cannot be rebound, so it is safe.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp_session
from aiohttp import web
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from .. import files
from ..auth import Identity
from ..config import Config
from ..model import CentralError
from .keys import CENTRAL, CONFIG, IDENTITY

log = logging.getLogger(__name__)

COOKIE_NAME = "central_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Paths probes must reach whatever Host they use (load balancers, kubelets).
HOST_EXEMPT = frozenset({"/health", "/readiness"})


class Unauthorized(CentralError):
    """No (valid) credentials."""

    status, code = 401, "unauthorized"


class TooManyAttempts(CentralError):
    """Login attempts over the limit."""

    status, code = 429, "too_many_attempts"

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class CSRFFailed(CentralError):
    """A cookie-authenticated unsafe request without the session's CSRF token."""

    status, code = 403, "csrf_failed"


class MisdirectedHost(CentralError):
    """A Host header this central does not answer to."""

    status, code = 421, "misdirected_request"


def load_session_secret(path: Path) -> bytes:
    """The 32-byte cookie key, created 0600 on first start."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not path.parent.is_dir():
            files.private_dir(path.parent)
        data = secrets.token_bytes(32)
        try:
            files.create_private(path, data)
        except FileExistsError:  # another process won the race: use its key
            return load_session_secret(path)
        log.info("created the session secret %s", path)
        return data
    if len(data) != 32:
        raise RuntimeError(f"{path}: expected a 32-byte session secret, found {len(data)} bytes; delete it to make a new one")
    files.private_file(path)
    return data


def session_storage(config: Config) -> EncryptedCookieStorage:
    """The encrypted-cookie session store for this config."""
    return EncryptedCookieStorage(
        load_session_secret(config.session_secret_path),
        cookie_name=COOKIE_NAME,
        max_age=int(config.http.session_max_age),
        httponly=True,
        samesite="Strict",
        secure=config.http.cookie_secure,
    )


def allowed_host(host_header: str | None, config: Config) -> bool:
    """Whether the Host header names this central (see the module docstring)."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    host = host.rstrip(".")
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    names = {"localhost", config.http.listen.lower(), *(h.lower().rstrip(".") for h in config.http.allowed_hosts)}
    if host in names:
        return True
    # "*.example.com" allows every subdomain of example.com.
    return any(n.startswith("*.") and host.endswith(n[1:]) for n in names)


@web.middleware
async def host_check(request: web.Request, handler):
    """Refuse requests whose Host header does not name this central (421)."""
    if request.path not in HOST_EXEMPT and not allowed_host(request.headers.get("Host"), request.app[CONFIG]):
        raise MisdirectedHost(f"this central does not answer to Host {request.headers.get('Host', '')!r}; "
                              "add the name to http.allowed_hosts")
    return await handler(request)


async def identify(request: web.Request) -> Identity | None:
    """The caller's identity from a bearer token or the session cookie; Unauthorized for a bad token."""
    if IDENTITY in request:
        return request[IDENTITY]
    auth = request.app[CENTRAL].auth
    identity = None
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("unsupported Authorization header: use 'Bearer <token>'")
        identity = await auth.token_identity(token.strip())
        if identity is None:
            raise Unauthorized("invalid or revoked API token")
        await auth.flush_last_used()
    elif COOKIE_NAME in request.cookies:
        session = await aiohttp_session.get_session(request)
        identity = await auth.session_identity(session.get("sid"))
        if identity is None and not session.new:
            session.invalidate()
    request[IDENTITY] = identity
    return identity


async def check_csrf(request: web.Request, identity: Identity, form_token: str | None) -> None:
    """Cookie-authenticated unsafe requests must carry the session's CSRF token."""
    if identity.via != "session" or request.method not in UNSAFE:
        return
    session = await aiohttp_session.get_session(request)
    expected = session.get("csrf")
    given = request.headers.get(CSRF_HEADER) or form_token
    if not isinstance(expected, str) or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CSRFFailed(f"missing or wrong CSRF token: send the session's csrf_token in the {CSRF_HEADER} header")


def check_origin(request: web.Request) -> None:
    """Refuse a browser's cross-site state change (login CSRF included).

    A foreign Origin is cross-site, and so is ``Origin: null`` (what a sandboxed iframe, a
    data: URL or a redirect chain sends); so is a ``Sec-Fetch-Site`` other than same-origin or
    none (a user typing the URL). Scripts send neither header and are not affected.
    """
    origin = request.headers.get("Origin")
    if origin is not None:
        scheme, sep, host = origin.strip().partition("://")
        if origin.strip().lower() == "null" or not sep or host.lower() != (request.headers.get("Host") or "").lower():
            raise CSRFFailed(f"cross-site request from Origin {origin[:200]!r} refused")
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.lower() not in ("same-origin", "none"):
        raise CSRFFailed(f"cross-site request (Sec-Fetch-Site: {site[:50]}) refused")


# Any C0 control, DEL or backslash: browsers drop tabs and newlines from a URL and read a
# backslash as "/", so "/<TAB>/evil.example" and "/<BACKSLASH>evil.example" lead to //evil.example.
_REDIRECT_BAD = re.compile(r"[\x00-\x1f\x7f\\]")
MAX_REDIRECT = 500  # what the login form's next field may carry (its body schema says the same)


def safe_redirect(target: object, default: str = "/") -> str:
    """target when it is a path on this site, else default (the one open-redirect rule).

    The same rule is central.safeNext() in static/common.js: a single leading "/", no control
    character or backslash anywhere, and no scheme or network location once parsed.
    """
    if not isinstance(target, str) or not target.startswith("/") or target.startswith("//"):
        return default
    if _REDIRECT_BAD.search(target) or len(target) > MAX_REDIRECT:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


def client_address(request: web.Request) -> str:
    """The peer address, for rate limits (a reverse proxy in front shares one address)."""
    return request.remote or "unknown"


async def start_session(request: web.Request, identity: Identity) -> str:
    """Log identity (from Auth.login) in with a fresh server-side session; returns its CSRF token."""
    config = request.app[CONFIG]
    session_id = await request.app[CENTRAL].auth.start_session(
        identity, config.http.session_max_age, client_address(request))
    session = await aiohttp_session.new_session(request)
    csrf = secrets.token_urlsafe(32)
    session["sid"] = session_id
    session["csrf"] = csrf
    session["created"] = time.time()
    request[IDENTITY] = identity
    return csrf


async def end_session(request: web.Request) -> None:
    """End the caller's session on the server (a saved copy of the cookie stops working) and drop the cookie."""
    session = await aiohttp_session.get_session(request)
    await request.app[CENTRAL].auth.end_session(session.get("sid"))
    session.invalidate()


async def session_csrf(request: web.Request) -> str | None:
    """The CSRF token of the caller's session (None for bearer callers)."""
    if COOKIE_NAME not in request.cookies:
        return None
    session = await aiohttp_session.get_session(request)
    token = session.get("csrf")
    return token if isinstance(token, str) else None
