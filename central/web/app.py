"""The aiohttp application factory and runner."""
from __future__ import annotations

import logging
from typing import AsyncIterator

import aiohttp_session
from aiohttp import web

from .. import __version__
from ..auth import LoginLimiter
from ..config import Config
from ..service import Central
from . import api_servers, api_session, api_system
from .dispatch import errors, install
from .keys import CENTRAL, CONFIG, LOGIN_LIMITER
from .security import host_check, session_storage

log = logging.getLogger(__name__)

# Every module that declares endpoints with a central.web.registry.Registry named `endpoints`.
# Add yours here (e.g. api_alerts, api_actions); routes and /api/v1/openapi.json follow.
ENDPOINT_MODULES = (
    api_system,
    api_session,
    api_servers,
)


async def _central_context(app: web.Application) -> AsyncIterator[None]:
    """Open the database, pool and poller before the first request; close them on shutdown."""
    central = await Central.open(app[CONFIG])
    app[CENTRAL] = central
    await central.poller.start()
    try:
        yield
    finally:
        await central.close()


def create_app(config: Config) -> web.Application:
    """Build the application for a loaded config (used by `central serve` and the tests)."""
    # errors outermost (it turns everything into JSON), then the Host check, then sessions.
    app = web.Application(
        client_max_size=config.http.max_body_bytes,
        middlewares=[errors, host_check, aiohttp_session.session_middleware(session_storage(config))],
    )
    app[CONFIG] = config
    app[LOGIN_LIMITER] = LoginLimiter(config.http.login_attempts_per_minute)
    app.cleanup_ctx.append(_central_context)
    install(app, (m.endpoints for m in ENDPOINT_MODULES))
    return app


def run_app(config: Config) -> None:
    """Serve until interrupted."""
    app = create_app(config)
    print(f"central {__version__} listening on http://{config.http.listen}:{config.http.port}/", flush=True)
    web.run_app(app, host=config.http.listen, port=config.http.port, print=None, access_log=None)
