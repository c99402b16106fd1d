"""The aiohttp application factory and runner."""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import aiohttp_session
from aiohttp import web

from .. import __version__
from ..auth import LoginLimiter
from ..config import Config
from ..gcpolicy import GCPolicy
from ..service import Central
from . import api_actions, api_alerts, api_notifiers, api_servers, api_session, api_system, api_terminal
from .dispatch import errors, install
from .answers import Answers
from .keys import ANSWERS, CENTRAL, CONFIG, GC_POLICY, LOGIN_LIMITER
from .pages import install_pages
from .terminal_pages import install_terminal_pages
from .security import host_check, session_storage

log = logging.getLogger(__name__)

# Every module that declares endpoints with a central.web.registry.Registry named `endpoints`.
# A new one is added here; routes and /api/v1/openapi.json follow.
ENDPOINT_MODULES = (
    api_system,
    api_session,
    api_servers,
    api_alerts,
    api_actions,
    api_notifiers,
    api_terminal,
)


async def _central_context(app: web.Application) -> AsyncIterator[None]:
    """Open the database, pool and poller before the first request; close them on shutdown."""
    central = await Central.open(app[CONFIG], serving=True)
    app[CENTRAL] = central
    await central.poller.start()
    await central.terminal.start()
    bot = bot_task = None
    try:
        if app[CONFIG].telegram.enabled:
            from ..telegrambot import TelegramBot

            bot = TelegramBot.from_config(central)
            bot_task = asyncio.create_task(bot.run(), name="telegram-bot")
        yield
    finally:
        if bot_task is not None:
            bot_task.cancel()
            await asyncio.gather(bot_task, return_exceptions=True)
            await bot.stop()
        await central.close()


async def _gc_context(app: web.Application) -> AsyncIterator[None]:
    """Keep the cyclic GC from stalling the event loop (central/gcpolicy.py): take it over once
    the central is open (server list loaded), settle it after each server-list load."""
    policy = app[GC_POLICY]
    policy.start()
    app[CENTRAL].poller.reload_hooks.append(policy.settle)
    try:
        yield
    finally:
        policy.stop()


def create_app(config: Config) -> web.Application:
    """Build the application for a loaded config (used by `central serve` and the tests)."""
    # errors outermost (it turns everything into JSON), then the Host check, then sessions.
    app = web.Application(
        client_max_size=config.http.max_body_bytes,
        middlewares=[errors, host_check, aiohttp_session.session_middleware(session_storage(config))],
    )
    app[CONFIG] = config
    app[LOGIN_LIMITER] = LoginLimiter(config.http.login_attempts, config.http.login_attempts_per_user,
                                      config.http.login_backoff_max)
    app[GC_POLICY] = GCPolicy()
    app[ANSWERS] = Answers(lambda: app[CENTRAL].storage.change_marker())
    app.cleanup_ctx.append(_central_context)
    app.cleanup_ctx.append(_gc_context)
    install(app, (m.endpoints for m in ENDPOINT_MODULES))
    install_pages(app)
    install_terminal_pages(app)
    api_terminal.install_websocket(app)
    return app


def run_app(config: Config) -> None:
    """Serve until interrupted."""
    app = create_app(config)
    print(f"central {__version__} listening on http://{config.http.listen}:{config.http.port}/", flush=True)
    web.run_app(app, host=config.http.listen, port=config.http.port, print=None, access_log=None)
