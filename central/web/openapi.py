"""The OpenAPI 3.1 document, built from the declared endpoints (never written by hand)."""
from __future__ import annotations

from typing import Iterable

from .. import __version__
from ..config import Config
from .registry import NONE, Endpoint, obj, string
from .security import COOKIE_NAME, CSRF_HEADER

ERROR = obj({
    "error": string(description="A short machine-readable code, e.g. invalid, not_found, forbidden."),
    "detail": string(description="What went wrong, in one line."),
    "field": string(description="The request field at fault (validation errors)."),
    "reason": string(description="Why a poll or connection failed (unreachable, auth_failed, ...)."),
}, required=["error", "detail"])

_ERROR_TEXT = {
    400: "Bad request: invalid JSON, unknown field, wrong type or value (detail names the field)",
    401: "Authentication required or the token is invalid",
    403: "The caller's role is too low, or the CSRF token is missing",
    404: "No such server (or other object)",
    409: "Conflict with the current state (e.g. the name exists)",
    413: "Request body over http.max_body_bytes",
    415: "Unsupported content type",
    421: "The Host header does not name this central",
    429: "Too many attempts; see Retry-After",
    502: "The host or agent could not be reached or answered wrongly",
}


def _errors(ep: Endpoint, config: Config) -> set[int]:
    codes = set(ep.errors) | {421}
    if ep.path_params or ep.query or ep.body is not None:
        codes.add(400)
    if ep.body is not None:
        codes |= {413, 415}
    if ep.role_for(config) != NONE:
        codes |= {401, 403}
    if ep.role_for(config) != NONE and ep.method in ("POST", "PUT", "PATCH", "DELETE"):
        codes |= {400, 413}  # a cookie-authenticated form body is read for its CSRF token
    if ep.path_params:
        codes.add(404)
    if ep.path in ("/health", "/readiness"):
        codes.discard(421)
    return codes


def _operation(ep: Endpoint, config: Config) -> dict:
    role = ep.role_for(config)
    op: dict = {
        "operationId": ep.operation_id,
        "summary": ep.summary,
        "description": ep.description + ("" if role == NONE else f"\n\nRequires the {role} role."),
        "tags": [ep.tag] if ep.tag else [],
        "responses": {},
    }
    params = [{"name": n, "in": "path", "required": True, "schema": s} for n, s in ep.path_params.items()]
    params += [{"name": n, "in": "query", "required": False, "schema": s} for n, s in ep.query.items()]
    if params:
        op["parameters"] = params
    if ep.body is not None:
        content = {"application/json": {"schema": ep.body}}
        if ep.form:
            content["application/x-www-form-urlencoded"] = {"schema": ep.body}
        op["requestBody"] = {"required": ep.body_required, "content": content}
    for status, schema in ep.responses.items():
        op["responses"][str(status)] = {
            "description": "OK" if status < 300 else "Redirect",
            "content": {ep.content_type: {"schema": schema}},
        }
    for status in sorted(_errors(ep, config)):
        op["responses"].setdefault(str(status), {
            "description": _ERROR_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        })
    op["security"] = [] if role == NONE else [{"bearer": []}, {"session": []}]
    return op


def build_openapi(endpoints: Iterable[Endpoint], config: Config) -> dict:
    """The OpenAPI 3.1 document for these endpoints under this config."""
    paths: dict = {}
    for ep in endpoints:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep, config)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "central",
            "version": __version__,
            "description": "Fleet monitor over SSH. Roles: viewer reads, operator acts, admin manages "
                           "servers and users. Scripts send `Authorization: Bearer <token>` (central token "
                           f"create); the page uses the session cookie and repeats its CSRF token in {CSRF_HEADER}.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API token from `central token create`."},
                "session": {"type": "apiKey", "in": "cookie", "name": COOKIE_NAME,
                            "description": f"Set by POST /api/v1/login; unsafe methods also need {CSRF_HEADER}."},
            },
        },
    }



