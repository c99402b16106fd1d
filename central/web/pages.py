"""The HTML pages: login, overview (/), one server (/servers/NAME) and its containers, alerts (/alerts).

Server-rendered jinja2 templates over the same data functions the JSON API returns (views,
service, alerts, actions); the page's JavaScript (static files only: the Content-Security-Policy
forbids inline scripts) refreshes from the API endpoints and sends actions through them.
Pages need a session: without one they redirect to /login?next=PATH.
"""
from __future__ import annotations

import datetime
import math
import re
import time
from pathlib import Path
from urllib.parse import quote

import jinja2
import markupsafe
from aiohttp import web
from markupsafe import Markup

from .. import __version__, alerts, hosttext, views
from ..actions import audit_log
from ..auth import Identity
from ..model import ADMIN, OPERATOR, CentralError, Invalid, NotFound
from .keys import CENTRAL
from .security import identify, safe_redirect, session_csrf

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
# The overview shows every server on one page (client-side filtering needs them all).
OVERVIEW_LIMIT = 1000


CONTAINER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

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


def fmt_time(ts) -> Markup:
    """A Unix time as <time>: 2026-12-01 18:10:02 in UTC, which the page's JavaScript rewrites
    in the browser's time zone (stated once, in the footer) with the same format."""
    if _missing(ts):
        return Markup("–")
    try:
        utc = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    except (ValueError, OverflowError, OSError):  # a year 300000 from a host's clock
        return Markup("–")
    return Markup('<time datetime="{}" data-ts="{}">{}</time>').format(
        utc.strftime("%Y-%m-%dT%H:%M:%SZ"), f"{ts:.3f}", utc.strftime("%Y-%m-%d %H:%M:%S"))


def fmt_ago(ts, now=None) -> str:
    """How long ago, like the page's JavaScript fmtAgo: 12 s ago, 3 min ago, 2 h ago, 4 d ago."""
    if _missing(ts):
        return "never"
    s = max(0, int((time.time() if now is None else now) - ts))
    if s < 60:
        return f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def level(value, warn: float = 75, crit: float = 90) -> str:
    """CSS class for a percentage: ok, warn or crit."""
    if _missing(value):
        return ""
    return "crit" if value >= crit else "warn" if value >= warn else "ok"


def sparkline(values, width: int = 96, height: int = 20) -> Markup:
    """A small inline SVG line of a series (gaps where a value is unknown), scaled to its maximum."""
    points = [None if _missing(v) else float(v) for v in (values or [])]
    known = [v for v in points if v is not None]
    if len(known) < 2:
        return Markup('<svg class="spark" width="{}" height="{}" aria-hidden="true"></svg>').format(width, height)
    top = max(known) or 1.0
    step = width / max(len(points) - 1, 1)
    runs, run = [], []
    for i, v in enumerate(points):
        if v is None:
            if run:
                runs.append(run)
            run = []
            continue
        run.append(f"{i * step:.1f},{height - 1 - (height - 2) * v / top:.1f}")
    if run:
        runs.append(run)
    lines = "".join(f'<polyline points="{" ".join(r)}"/>' for r in runs)
    return Markup(f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
                  f' aria-label="max {top:.4g}">{lines}</svg>')


# finalize=shown: every {{ value }} a template prints is made inert, whichever template it is.
_env = jinja2.Environment(loader=jinja2.PackageLoader("central.web", "templates"),
                          autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.ChainableUndefined,
                          finalize=shown,
                          trim_blocks=True, lstrip_blocks=True)
_env.filters.update(pct=fmt_pct, bytes=fmt_bytes, num=fmt_num, time=fmt_time, ago=fmt_ago, level=level,
                    sparkline=sparkline)


async def _identity(request: web.Request) -> Identity:
    """The logged-in user, or a redirect to the login page that comes back here."""
    identity = await identify(request)
    if identity is None:
        raise web.HTTPFound("/login?next=" + quote(request.path_qs, safe="/"))
    return identity


async def page_banners(request: web.Request, identity: Identity | None) -> list[dict]:
    """Notices every page shows at its top: [{"id", "level" (info, warn, crit), "text"}].

    What concerns the central as a whole rather than one server: its storage health
    (central.writer: poll outcomes that cannot be written wait in memory).
    """
    if identity is None or CENTRAL not in request.app:
        return []
    storage = request.app[CENTRAL].poller.writer.status()
    if storage["ok"]:
        return []
    text = (f"The database cannot be written: {storage['reason']}. {storage['buffered']} poll results wait"
            f" in memory (at most {storage['buffer_capacity']})")
    if storage.get("dropped"):
        text += f", {storage['dropped']} dropped"
    return [{"id": "storage-banner", "level": "crit", "text": text + "; they are written when it recovers."}]


async def _render(request: web.Request, template: str, identity: Identity | None, status: int = 200, **context) -> web.Response:
    csrf = await session_csrf(request) if identity is not None else None
    html = _env.get_template(template).render(
        identity=identity, csrf_token=csrf or "", version=__version__, now=time.time(),
        banners=await page_banners(request, identity),
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
            "tags": sorted({t for s in listing["servers"] for t in s["tags"]}), "statuses": views.STATUSES,
            # several centrals on one database: who polls how much (GET /api/v1/status, cluster)
            "cluster": central.membership.status() if central.membership is not None else None}


@_page("server.html")
async def server_page(request: web.Request, identity: Identity) -> dict:
    """One server: GET /api/v1/servers/NAME, .../processes, .../services?live=false (the page asks
    the host itself once loaded), /api/v1/alerts?server=, /api/v1/audit?server=."""
    central = request.app[CENTRAL]
    name = request.match_info["name"]
    detail = await views.server_detail(central, name)
    return {
        "detail": detail,
        "processes": await views.server_processes(central, name),
        "services": await views.server_services(central, name, live=False),
        "containers": await views.server_containers(central, name),
        "doc": (detail["latest"] or {}).get("document") or {},
        "alerts": await alerts.list_alerts(central, server=name, limit=50),
        "audit": await audit_log(central, name, 50),
    }


@_page("container.html")
async def container_page(request: web.Request, identity: Identity) -> dict:
    """One container: GET /api/v1/servers/NAME/containers/CONTAINER (the charts ask it again per range)."""
    central = request.app[CENTRAL]
    name, container = request.match_info["name"], request.match_info["container"]
    if not CONTAINER_NAME_RE.fullmatch(container):
        raise Invalid("container: expected a container name (letters, digits, _ . -)")
    return {"c": await views.container_detail(central, name, container, range_="1h", max_points=300),
            "server": (await views.server_detail(central, name))["server"]}


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


@_page("alert.html")
async def alert_page(request: web.Request, identity: Identity) -> dict:
    """One alert (GET /api/v1/alerts/ID): what notifications link to."""
    try:
        alert_id = int(request.match_info["id"])
    except ValueError:
        raise NotFound(f"no alert with id {request.match_info['id']!r}") from None
    return {"active": "alerts", **await views.alert_detail(request.app[CENTRAL], alert_id)}


@_page("actions.html")
async def actions_page(request: web.Request, identity: Identity) -> dict:
    """Every server's actions, newest first (GET /api/v1/audit)."""
    return {"active": "actions", "audit": await audit_log(request.app[CENTRAL], None, 200)}


_FAVICON = (STATIC_DIR / "favicon.svg").read_bytes()


async def favicon(request: web.Request) -> web.Response:
    """/favicon.ico, the pages' icon (an SVG), served from memory: a static file's response
    leaves its open file to the garbage collector when the browser goes away mid-request."""
    return web.Response(body=_FAVICON, content_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


# The HTML routes and the terminal's WebSocket (left out of the OpenAPI document, which
# describes the JSON API).
PAGE_ROUTE_NAMES = ("login_page", "overview_page", "server_page", "container_page", "alerts_page", "alert_page", "actions_page",
                    "favicon", "static",
                    "terminal_page", "terminal_sessions_page", "terminal_replay_page", "terminal_websocket")


def install_pages(app: web.Application) -> None:
    """Add the page routes and /static."""
    app.router.add_get("/login", login_page, name="login_page")
    app.router.add_get("/", overview_page, name="overview_page")
    app.router.add_get("/servers/{name}", server_page, name="server_page")
    app.router.add_get("/servers/{name}/containers/{container}", container_page, name="container_page")
    app.router.add_get("/alerts", alerts_page, name="alerts_page")
    app.router.add_get("/alerts/{id}", alert_page, name="alert_page")
    app.router.add_get("/actions", actions_page, name="actions_page")
    app.router.add_get("/favicon.ico", favicon, name="favicon")
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=False)
