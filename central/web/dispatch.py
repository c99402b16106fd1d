"""Turning declared endpoints into aiohttp routes, and every error into JSON.

Each route's wrapper: authenticate and check the role, check CSRF, read the body within
http.max_body_bytes, parse and validate path, query and body, call the handler, serialise.
"""
from __future__ import annotations

import asyncio
import json
import logging
from functools import partial
from typing import Iterable

from aiohttp import web
from multidict import MultiDict

from ..auth import role_allows
from ..model import CentralError, Forbidden, Invalid, PollError
from .keys import CENTRAL, CONFIG, ENDPOINTS
from .registry import NONE, Call, Endpoint, Registry, Reply, coerce_param, validate
from .security import CSRF_FIELD, UNSAFE, TooManyAttempts, Unauthorized, check_csrf, check_origin, identify

log = logging.getLogger(__name__)

_dumps = partial(json.dumps, separators=(",", ":"), allow_nan=False)
FORM_TYPE = "application/x-www-form-urlencoded"
# Every response, pages and static files included: scripts, styles and connections only from
# this origin (no inline script or style), never framed, no Referer leaving the page.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def error_response(status: int, code: str, detail: str, *, headers: dict | None = None, **extra) -> web.Response:
    """The JSON error body every failure uses: {"error": code, "detail": message, ...}."""
    body = {"error": code, "detail": detail, **{k: v for k, v in extra.items() if v is not None}}
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _http_code(exc: web.HTTPException) -> str:
    return (exc.reason or "error").lower().replace(" ", "_").replace("-", "_")


@web.middleware
async def errors(request: web.Request, handler) -> web.StreamResponse:
    """CentralError -> its status with JSON; HTTP errors -> JSON; anything else -> 500 (logged)."""
    try:
        response = await handler(request)
    except CentralError as exc:
        headers = {}
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="central"'
        if isinstance(exc, TooManyAttempts):
            headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
        detail = exc.message if not exc.detail else f"{exc.message} ({exc.detail})"
        response = error_response(exc.status, exc.code, detail, headers=headers,
                                  field=getattr(exc, "field", None),
                                  reason=exc.reason if isinstance(exc, PollError) else None)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects: aiohttp sends the exception itself
            for k, v in _SECURITY_HEADERS.items():
                exc.headers.setdefault(k, v)
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After", "Location")}
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            detail = f"request body too large (limit {request.app[CONFIG].http.max_body_bytes} bytes)"
        response = error_response(exc.status, _http_code(exc), detail, headers=headers)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception:  # noqa: BLE001 - never leak a traceback to the client; log it here
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = error_response(500, "internal_error", "internal error; the central's log has the details")
    for k, v in _SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _read_body(request: web.Request, ep: Endpoint) -> tuple[object, str | None]:
    """The parsed body (None when absent or not wanted) and a form's csrf_token field."""
    limit = request.app[CONFIG].http.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    raw = await request.read()  # aiohttp enforces client_max_size on chunked bodies too
    if not raw.strip():
        return None, None
    if request.content_type == FORM_TYPE:
        form = await request.post()  # parses the body read above
        data: dict = {}
        for key in form:
            values = form.getall(key)
            if len(values) != 1 or not isinstance(values[0], str):
                raise _field(key, "expected one text value")
            data[key] = values[0]
        token = data.pop(CSRF_FIELD, None)
        if data and ep.body is not None and not ep.form:
            raise web.HTTPUnsupportedMediaType(text="send a JSON body (Content-Type: application/json)")
        return data or None, token
    if ep.body is None:
        return None, None
    try:
        return json.loads(raw), None
    except UnicodeDecodeError:
        raise Invalid("request body is not UTF-8") from None
    except ValueError as exc:
        raise Invalid(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise Invalid("request body nests too deeply") from None


def _field(name: str, problem: str) -> Invalid:
    err = Invalid(f"{name}: {problem}")
    err.field = name  # type: ignore[attr-defined]
    return err


def _params(source: MultiDict | dict, schemas: dict, where: str) -> dict:
    out = {}
    for name, schema in schemas.items():
        if name in source:
            out[name] = coerce_param(source[name], schema, f"{where}{name}" if where else name)
        elif "default" in schema:
            out[name] = schema["default"]
    return out


def _wrap(ep: Endpoint):
    async def route(request: web.Request) -> web.StreamResponse:
        app = request.app
        role = ep.role_for(app[CONFIG])
        identity = None
        if request.method in UNSAFE:
            check_origin(request)  # before anything else: a cross-site page changes nothing
        if role != NONE:
            identity = await identify(request)
            if identity is None:
                raise Unauthorized("authentication required: send 'Authorization: Bearer <token>' or log in")
            if not role_allows(identity.role, role):
                raise Forbidden(f"{ep.method} {ep.path} needs the {role} role; {identity.user} is {identity.role}")
        path = _params(request.match_info, ep.path_params, "")
        query = _params(request.query, ep.query, "")
        body: object = {}
        form_token = None
        if ep.body is not None or (identity is not None and request.method in UNSAFE):
            parsed, form_token = await _read_body(request, ep)
            if ep.body is not None:
                if parsed is None:
                    if ep.body_required:
                        raise Invalid("request body required: a JSON object")
                    parsed = {}
                validate(parsed, ep.body)
                body = parsed
        if identity is not None:
            await check_csrf(request, identity, form_token)
        result = await ep.handler(Call(request, app[CENTRAL], identity, path, query, body))  # type: ignore[arg-type]
        if isinstance(result, web.StreamResponse):
            return result
        status = ep.status
        if isinstance(result, Reply):
            result, status = result.data, result.status
        return web.json_response(result, status=status, dumps=_dumps)

    route.__name__ = ep.operation_id
    return route


def install(app: web.Application, registries: Iterable[Registry]) -> None:
    """Add every endpoint of every registry to the app's router (and to app[ENDPOINTS])."""
    endpoints = app.setdefault(ENDPOINTS, [])  # type: ignore[arg-type]
    seen = {(e.method, e.path) for e in endpoints}
    ops = {e.operation_id for e in endpoints}
    for registry in registries:
        for ep in registry.endpoints:
            if (ep.method, ep.path) in seen:
                raise ValueError(f"{ep.method} {ep.path} is declared twice")
            if ep.operation_id in ops:
                raise ValueError(f"two endpoints are called {ep.operation_id}; rename one handler")
            seen.add((ep.method, ep.path))
            ops.add(ep.operation_id)
            endpoints.append(ep)
            app.router.add_route(ep.method, ep.path, _wrap(ep), name=ep.operation_id)
