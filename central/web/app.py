"""The aiohttp application factory and runner."""
from __future__ import annotations

import logging
import time
from typing import AsyncIterator

from aiohttp import web

from .. import __version__
from ..config import Config
from ..service import Central
from .keys import CENTRAL, CONFIG

log = logging.getLogger(__name__)


async def _central_context(app: web.Application) -> AsyncIterator[None]:
    """Open the database, pool and poller before the first request; close them on shutdown."""
    central = await Central.open(app[CONFIG])
    app[CENTRAL] = central
    await central.poller.start()
    try:
        yield
    finally:
        await central.close()


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok", "version": __version__})


async def readiness(request: web.Request) -> web.Response:
    """Readiness: the database and poller are up."""
    central = request.app.get(CENTRAL)
    if central is None:
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response({"status": "ready", "uptime": time.time() - central.started_at})


def create_app(config: Config) -> web.Application:
    """Build the application for a loaded config (used by `central serve` and the tests)."""
    app = web.Application(client_max_size=config.http.max_body_bytes)
    app[CONFIG] = config
    app.cleanup_ctx.append(_central_context)
    app.router.add_get("/health", health)
    app.router.add_get("/readiness", readiness)
    return app


def run_app(config: Config) -> None:
    """Serve until interrupted."""
    app = create_app(config)
    print(f"central {__version__} listening on http://{config.http.listen}:{config.http.port}/", flush=True)
    web.run_app(app, host=config.http.listen, port=config.http.port, print=None, access_log=None)
