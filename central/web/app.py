"""The aiohttp application factory and runner."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import AsyncIterator

import aiohttp_session
from aiohttp import web

from .. import __version__
from ..auth import LoginLimiter
from ..config import Config, ConfigError
from ..gcpolicy import GCPolicy
from ..service import Central
from . import api_actions, api_alerts, api_notifiers, api_servers, api_session, api_system, api_terminal
from .dispatch import errors, install
from .answers import Answers
from .keys import ANSWERS, CENTRAL, CONFIG, EXITS_AFTER, GC_POLICY, LOGIN_LIMITER, RELOAD_ENV
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
    if central.remote_write is not None:
        await central.remote_write.start()
    await central.terminal.start()
    bot = bot_task = None
    reloads: set[asyncio.Task] = set()
    loop = asyncio.get_running_loop()

    def on_sighup() -> None:
        task = loop.create_task(reload_config(central, app.get(RELOAD_ENV, {})), name="config-reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        if app[CONFIG].telegram.enabled:
            from ..telegrambot import TelegramBot

            bot = TelegramBot.from_config(central)
            bot_task = asyncio.create_task(bot.run(), name="telegram-bot")
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in list(reloads):
            task.cancel()
        await asyncio.gather(*reloads, return_exceptions=True)
        if bot_task is not None:
            bot_task.cancel()
            await asyncio.gather(bot_task, return_exceptions=True)
            await bot.stop()
        try:
            await central.close()
        finally:
            # after the close (see _gc_context); `central serve` ends next: its objects stay frozen
            app[GC_POLICY].stop(unfreeze=not app.get(EXITS_AFTER, False))


_reload_lock = asyncio.Lock()


async def reload_config(central: Central, overrides: dict | None = None) -> None:
    """SIGHUP: re-read the config file; log each change, or why the file was refused (the
    running config stays as it was)."""
    async with _reload_lock:  # two quick SIGHUPs: one after the other
        try:
            changes = await central.reload(env={**os.environ, **(overrides or {})})
        except ConfigError as exc:
            log.error("config reload refused, the running config is kept: %s", exc)
            return
        except Exception:  # noqa: BLE001 - a reload must never end the central
            log.exception("config reload failed, the running config is kept")
            return
        where = central.reloaded_from or "the environment (no config file)"
        if not changes:
            log.warning("config reloaded from %s: nothing changed", where)
        for line in changes:
            log.warning("config reloaded from %s: %s", where, line)


async def _gc_context(app: web.Application) -> AsyncIterator[None]:
    """Keep the cyclic GC from stalling the event loop (central/gcpolicy.py): take it over once
    the central is open (server list loaded), settle it after each server-list load, collect the
    young generations every gcpolicy.YOUNG_EVERY seconds."""
    policy = app[GC_POLICY]
    policy.start()
    app[CENTRAL].poller.reload_hooks.append(policy.settle)
    young = asyncio.create_task(policy.run(), name="gc-young")  # the young generations in small steps
    yield
    young.cancel()
    try:
        await young
    except asyncio.CancelledError:
        pass
    # The collector is given back (policy.stop) by _central_context once the central is closed:
    # unfrozen now, with the default thresholds, it walked every object at the next allocation,
    # 2.2 s at 10,000 servers before the stop had written anything.


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


def run_app(config: Config, reload_env: dict | None = None) -> None:
    """Serve until interrupted (reload_env: CENTRAL_* settings a SIGHUP reload applies over the file)."""
    app = create_app(config)
    app[RELOAD_ENV] = dict(reload_env or {})
    app[EXITS_AFTER] = True  # the process ends when the app stops
    print(f"central {__version__} listening on http://{config.http.listen}:{config.http.port}/", flush=True)
    web.run_app(app, host=config.http.listen, port=config.http.port, print=None, access_log=None)
