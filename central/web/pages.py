"""The HTML pages: login, overview (/), one server (/servers/NAME), alerts (/alerts).

Server-rendered jinja2 templates over the same data functions the JSON API returns (views,
service, alerts, actions); the page's JavaScript (static files only: the Content-Security-Policy
forbids inline scripts) refreshes from the API endpoints and sends actions through them.
Pages need a session: without one they redirect to /login?next=PATH.
"""
from __future__ import annotations

import datetime
import math
import time
from pathlib import Path
from urllib.parse import quote

import jinja2
import markupsafe
from aiohttp import web

from .. import __version__, alerts, hosttext, views
from ..actions import audit_log
from ..auth import Identity
from ..model import ADMIN, OPERATOR, CentralError
from .keys import CENTRAL
from .security import identify, safe_redirect, session_csrf

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
# The overview shows every server on one page (client-side filtering needs them all).
OVERVIEW_LIMIT = 1000


# The most characters of one host-supplied value a page shows (a 200 KB command line is cut).
SHOWN_LIMIT = 1000


def _missing(value) -> bool:
    # Agent fields may be null, absent (an old agent, a failed collector) or not a number at all
    # ("NaN%", a list): all of them are shown as a dash, never an error page.
    return isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)


def shown(value):
    """What a page shows for a value: host text with control, bidi and zero-width characters as
    visible escapes (line breaks kept) and cut to SHOWN_LIMIT; markup and non-text unchanged."""
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        if len(value) > SHOWN_LIMIT:
            value = value[: SHOWN_LIMIT - 1] + hosttext.ELLIPSIS
        if not hosttext.is_clean(value):
            value = "\n".join(hosttext.escape(line) for line in value.split("\n"))
    return value


def fmt_pct(value) -> str:
    """12.3% (a dash when unknown)."""
    return "–" if _missing(value) else f"{value:.1f}%"


def fmt_bytes(value) -> str:
    """Bytes in binary units, like the page's JavaScript fmtBytes."""
    if _missing(value):
        return "–"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""  # unreachable


def fmt_num(value, digits: int = 2) -> str:
    """A number with fixed digits (a dash when unknown)."""
    return "–" if _missing(value) else f"{value:.{digits}f}"


def fmt_time(ts) -> str:
    """Local date and time of a Unix time."""
    if _missing(ts):
        return "–"
    try:
        return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):  # a year 300000 from a host's clock
        return "–"


def fmt_ago(ts, now=None) -> str:
    """How long ago, like the page's JavaScript fmtAgo."""
    if _missing(ts):
        return "never"
    s = max(0, int((time.time() if now is None else now) - ts))
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 86400:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def level(value, warn: float = 75, crit: float = 90) -> str:
    """CSS class for a percentage: ok, warn or crit."""
    if _missing(value):
        return ""
    return "crit" if value >= crit else "warn" if value >= warn else "ok"


# finalize=shown: every {{ value }} a template prints is made inert, whichever template it is.
_env = jinja2.Environment(loader=jinja2.PackageLoader("central.web", "templates"),
                          autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.ChainableUndefined,
                          finalize=shown,
                          trim_blocks=True, lstrip_blocks=True)
_env.filters.update(pct=fmt_pct, bytes=fmt_bytes, num=fmt_num, time=fmt_time, ago=fmt_ago, level=level)


async def _identity(request: web.Request) -> Identity:
    """The logged-in user, or a redirect to the login page that comes back here."""
    identity = await identify(request)
    if identity is None:
        raise web.HTTPFound("/login?next=" + quote(request.path_qs, safe="/"))
    return identity


async def _render(request: web.Request, template: str, identity: Identity | None, status: int = 200, **context) -> web.Response:
    csrf = await session_csrf(request) if identity is not None else None
    # The storage banner on every page (central.writer: poll outcomes that cannot be written)
    storage = request.app[CENTRAL].poller.writer.status() if identity is not None and CENTRAL in request.app else None
    html = _env.get_template(template).render(
        identity=identity, csrf_token=csrf or "", version=__version__, now=time.time(), storage=storage,
        can_act=identity is not None and identity.allows(OPERATOR),
        can_admin=identity is not None and identity.allows(ADMIN), **context)
    return web.Response(text=html, status=status, content_type="text/html",
                        headers={"Cache-Control": "no-store"})


def _page(template: str):
    """Wrap a page handler: authenticate, and show a CentralError (e.g. unknown server) as an HTML page."""
    def decorate(fn):
        async def handler(request: web.Request) -> web.Response:
            identity = await _identity(request)
            try:
                context = await fn(request, identity)
            except CentralError as exc:
                return await _render(request, "error.html", identity, status=exc.status, error=exc)
            return await _render(request, template, identity, **context)
        handler.__name__ = fn.__name__
        return handler
    return decorate


async def login_page(request: web.Request) -> web.Response:
    """The login form (posts to /api/v1/login); a logged-in user goes straight on."""
    nxt = safe_redirect(request.query.get("next"))
    if await identify(request) is not None:
        raise web.HTTPFound(nxt)
    return await _render(request, "login.html", None, next=nxt)


@_page("overview.html")
async def overview_page(request: web.Request, identity: Identity) -> dict:
    """Fleet stats and every server (GET /api/v1/servers and /api/v1/fleet)."""
    central = request.app[CENTRAL]
    listing = await views.server_list(central, limit=OVERVIEW_LIMIT)
    return {"active": "overview", "listing": listing, "fleet": await views.fleet_stats(central),
            "tags": sorted({t for s in listing["servers"] for t in s["tags"]}), "statuses": views.STATUSES}


@_page("server.html")
async def server_page(request: web.Request, identity: Identity) -> dict:
    """One server: GET /api/v1/servers/NAME, .../processes, /api/v1/alerts?server=, /api/v1/audit?server=."""
    central = request.app[CENTRAL]
    name = request.match_info["name"]
    detail = await views.server_detail(central, name)
    doc = (detail["latest"] or {}).get("document") or {}
    return {
        "detail": detail,
        "doc": doc,
        "processes": await views.server_processes(central, name),
        "alerts": await alerts.list_alerts(central, server=name, limit=50),
        "audit": await audit_log(central, name, 50),
    }


@_page("alerts.html")
async def alerts_page(request: web.Request, identity: Identity) -> dict:
    """Open and recent alerts, active silences, channels' health (GET /api/v1/alerts, /api/v1/silences, /api/v1/notifiers)."""
    central = request.app[CENTRAL]
    every = await alerts.list_alerts(central, limit=200)
    return {
        "active": "alerts",
        "open": [a for a in every if a["state"] != alerts.RESOLVED],
        "recent": [a for a in every if a["state"] == alerts.RESOLVED],
        "silences": await alerts.list_silences(central, active_only=True),
        "notifications": await views.notifications_status(central),
    }


# The HTML routes and the terminal's WebSocket (left out of the OpenAPI document, which
# describes the JSON API).
PAGE_ROUTE_NAMES = ("login_page", "overview_page", "server_page", "alerts_page", "static",
                    "terminal_page", "terminal_sessions_page", "terminal_replay_page", "terminal_websocket")


def install_pages(app: web.Application) -> None:
    """Add the page routes and /static."""
    app.router.add_get("/login", login_page, name="login_page")
    app.router.add_get("/", overview_page, name="overview_page")
    app.router.add_get("/servers/{name}", server_page, name="server_page")
    app.router.add_get("/alerts", alerts_page, name="alerts_page")
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=False)
