"""Declare each HTTP endpoint once: route, role, body and response schemas, OpenAPI entry.

How to add endpoints (e.g. in central/web/api_alerts.py)::

    from .registry import OPERATOR, VIEWER, Call, Registry, array, integer, obj, string

    endpoints = Registry(tag="alerts")

    ALERT = obj({"id": integer(), "rule": string(), "state": string(enum=["pending", "firing"])},
                required=["id", "rule", "state"], closed=False)

    @endpoints.get("/api/v1/alerts", summary="List open alerts", role=VIEWER,
                   query={"server": string(maxLength=63)},
                   response=obj({"alerts": array(ALERT)}, required=["alerts"], closed=False))
    async def list_alerts(call: Call) -> dict:
        return {"alerts": await some_core_function(call.central, call.query.get("server"))}

    @endpoints.post("/api/v1/alerts/{id}/ack", summary="Acknowledge an alert", role=OPERATOR,
                    path_params={"id": integer(minimum=1)},
                    body=obj({"comment": string(maxLength=500)}), body_required=False,
                    response=ALERT, errors=(404, 409))
    async def ack(call: Call) -> dict:
        return await ack_alert(call.central, call.path["id"], call.identity.user, call.body.get("comment"))

then add the module to ENDPOINT_MODULES in central/web/app.py. That is all: the route is
registered, the role enforced (401 without credentials, 403 below the role; CSRF for
cookie-authenticated unsafe requests), path/query/body validated (400 naming the field: bad
JSON, unknown field, wrong type, out of range; 413 over http.max_body_bytes), CentralError
raised by the handler becomes {"error", "detail"} with its status, and the endpoint appears in
/api/v1/openapi.json (tests/test_openapi.py fails when routes and the document drift).

A handler gets a Call and returns JSON-ready data (sent with the first declared status), a
Reply(data, status) for another declared status, or an aiohttp Response (e.g. text).
Schemas are plain JSON Schema dicts (OpenAPI 3.1); the helpers below build the subset the
validator understands: object (properties, required, additionalProperties false unless
closed=False), array (items, maxItems), string (enum, minLength, maxLength, pattern), integer,
number (minimum, maximum), boolean, and nullable types via nullable(...).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence, Union

from ..auth import Identity
from ..config import Config
from ..model import ADMIN, OPERATOR, VIEWER, Invalid

NONE = "none"  # no authentication at all (health, readiness, login)
__all__ = ["ADMIN", "OPERATOR", "VIEWER", "NONE", "Call", "Reply", "Endpoint", "Registry", "obj", "array",
           "string", "integer", "number", "boolean", "nullable", "validate", "coerce_param"]

Schema = dict
Role = Union[str, Callable[[Config], str]]


# schema helpers

def obj(properties: Mapping[str, Schema], required: Sequence[str] = (), *, closed: bool = True, **extra) -> Schema:
    """An object schema; closed=True rejects unknown fields."""
    s: Schema = {"type": "object", "properties": dict(properties), **extra}
    if required:
        s["required"] = list(required)
    if closed:
        s["additionalProperties"] = False
    return s


def array(items: Schema, **extra) -> Schema:
    """An array schema."""
    return {"type": "array", "items": items, **extra}


def string(**extra) -> Schema:
    """A string schema (enum, minLength, maxLength, pattern, format, description)."""
    return {"type": "string", **extra}


def integer(**extra) -> Schema:
    """An integer schema (minimum, maximum, default)."""
    return {"type": "integer", **extra}


def number(**extra) -> Schema:
    """A number schema (minimum, maximum)."""
    return {"type": "number", **extra}


def boolean(**extra) -> Schema:
    """A boolean schema."""
    return {"type": "boolean", **extra}


def nullable(schema: Schema) -> Schema:
    """The schema, or null."""
    s = dict(schema)
    t = s.get("type")
    if isinstance(t, str):
        s["type"] = [t, "null"]
    elif isinstance(t, list) and "null" not in t:
        s["type"] = [*t, "null"]
    if "enum" in s:
        s["enum"] = [*s["enum"], None]
    return s


# validation

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_ARTICLE = {"object": "an object", "array": "an array", "string": "a string", "integer": "an integer",
            "number": "a number", "boolean": "true or false", "null": "null"}


def _fail(where: str, problem: str) -> Invalid:
    err = Invalid(f"{where}: {problem}" if where else problem)
    err.field = where  # type: ignore[attr-defined]
    return err


def validate(value: Any, schema: Schema, where: str = "") -> None:
    """Raise Invalid naming the field (e.g. 'tags[2]') when value does not match schema."""
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in types):
            expected = " or ".join(_ARTICLE[t] for t in types)
            raise _fail(where, f"expected {expected}, got {_describe(value)}")
    if "enum" in schema and value not in schema["enum"]:
        raise _fail(where, f"expected one of {', '.join(json.dumps(e) for e in schema['enum'])}, got {_describe(value)}")
    if value is None:
        return
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise _fail(where, f"must have at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise _fail(where, f"must have at most {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise _fail(where, f"does not match {schema['pattern']}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise _fail(where, f"must be at least {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise _fail(where, f"must be at most {schema['maximum']}")
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise _fail(where, f"must have at most {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], f"{where}[{i}]")
    elif isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                raise _fail(_join(where, name), "required field missing")
        if schema.get("additionalProperties") is False:
            unknown = sorted(set(value) - set(props))
            if unknown:
                raise _fail(_join(where, unknown[0]), f"unknown field (known: {', '.join(sorted(props))})")
        for name, sub in props.items():
            if name in value:
                validate(value[name], sub, _join(where, name))


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _describe(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def coerce_param(raw: str, schema: Schema, where: str) -> Any:
    """Turn a query or path string into the schema's type, then validate it."""
    types = schema.get("type")
    t = types if isinstance(types, str) else next((x for x in (types or ["string"]) if x != "null"), "string")
    value: Any = raw
    if t == "integer":
        if not re.fullmatch(r"[+-]?\d{1,18}", raw):
            raise _fail(where, f"expected an integer, got {_describe(raw)}")
        value = int(raw)
    elif t == "number":
        try:
            value = float(raw)
        except ValueError:
            raise _fail(where, f"expected a number, got {_describe(raw)}") from None
        if not math.isfinite(value):
            raise _fail(where, f"expected a finite number, got {_describe(raw)}")
    elif t == "boolean":
        if raw.lower() not in ("true", "false", "1", "0"):
            raise _fail(where, f"expected true or false, got {_describe(raw)}")
        value = raw.lower() in ("true", "1")
    validate(value, {k: v for k, v in schema.items() if k != "type"} if t != "string" else schema, where)
    return value


# endpoints

@dataclass
class Call:
    """What a handler gets: the request, the Central, who calls, validated path/query/body."""

    request: Any  # aiohttp.web.Request (kept untyped so this module stays light)
    central: Any  # central.service.Central
    identity: Identity | None
    path: dict
    query: dict
    body: dict


@dataclass
class Reply:
    """A handler result with a status other than the endpoint's first declared one."""

    data: Any
    status: int


Handler = Callable[[Call], Awaitable[Any]]


@dataclass
class Endpoint:
    """One declared endpoint."""

    method: str
    path: str
    handler: Handler
    summary: str
    role: Role
    responses: dict[int, Schema]
    description: str = ""
    tag: str = ""
    body: Schema | None = None
    body_required: bool = True
    form: bool = False  # also accept application/x-www-form-urlencoded (fields are strings)
    query: dict[str, Schema] = field(default_factory=dict)
    path_params: dict[str, Schema] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    content_type: str = "application/json"

    @property
    def operation_id(self) -> str:
        """The handler's name (unique across the app)."""
        return self.handler.__name__

    def role_for(self, config: Config) -> str:
        """The role needed under this config."""
        return self.role(config) if callable(self.role) else self.role

    @property
    def status(self) -> int:
        """The status of a plain (non-Reply) result."""
        return next(iter(self.responses))


class Registry:
    """A module's endpoints; app.py installs every module's registry into the app."""

    def __init__(self, tag: str = ""):
        self.tag = tag
        self.endpoints: list[Endpoint] = []

    def endpoint(self, method: str, path: str, *, summary: str, role: Role, response: Schema | None = None,
                 responses: Mapping[int, Schema] | None = None, status: int = 200, description: str = "",
                 body: Schema | None = None, body_required: bool = True, form: bool = False,
                 query: Mapping[str, Schema] | None = None, path_params: Mapping[str, Schema] | None = None,
                 errors: Sequence[int] = (), content_type: str = "application/json") -> Callable[[Handler], Handler]:
        """Decorator declaring a handler for method and path (see the module docstring)."""
        if responses is None:
            responses = {status: response if response is not None else {}}
        names = re.findall(r"{(\w+)}", path)
        given = dict(path_params or {})
        if set(given) - set(names):
            raise ValueError(f"{path}: schemas for parameters not in the path: {sorted(set(given) - set(names))}")

        def register(handler: Handler) -> Handler:
            self.endpoints.append(Endpoint(
                method=method.upper(), path=path, handler=handler, summary=summary, role=role,
                responses=dict(responses), description=description or (handler.__doc__ or "").strip(),
                tag=self.tag, body=body, body_required=body_required, form=form, query=dict(query or {}),
                path_params={n: given.get(n, string(maxLength=200)) for n in names},
                errors=tuple(errors), content_type=content_type))
            return handler

        return register

    def get(self, path: str, **kw) -> Callable[[Handler], Handler]:
        """Declare a GET endpoint."""
        return self.endpoint("GET", path, **kw)

    def post(self, path: str, **kw) -> Callable[[Handler], Handler]:
        """Declare a POST endpoint."""
        return self.endpoint("POST", path, **kw)

    def patch(self, path: str, **kw) -> Callable[[Handler], Handler]:
        """Declare a PATCH endpoint."""
        return self.endpoint("PATCH", path, **kw)

    def put(self, path: str, **kw) -> Callable[[Handler], Handler]:
        """Declare a PUT endpoint."""
        return self.endpoint("PUT", path, **kw)

    def delete(self, path: str, **kw) -> Callable[[Handler], Handler]:
        """Declare a DELETE endpoint."""
        return self.endpoint("DELETE", path, **kw)
