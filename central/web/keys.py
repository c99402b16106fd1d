"""Typed application keys, declared in one place."""
from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..service import Central

CONFIG = web.AppKey("config", Config)
CENTRAL = web.AppKey("central", Central)
