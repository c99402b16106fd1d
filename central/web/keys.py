"""Typed application keys, declared in one place."""
from __future__ import annotations

from aiohttp import web

from ..auth import Identity, LoginLimiter
from ..config import Config
from ..gcpolicy import GCPolicy
from ..service import Central
from .answers import Answers
from .registry import Endpoint

CONFIG = web.AppKey("config", Config)
CENTRAL = web.AppKey("central", Central)
# CENTRAL_* settings given on the command line (serve --listen/--port): a SIGHUP reload keeps them.
RELOAD_ENV = web.AppKey("reload_env", dict)
# Every declared endpoint, in registration order (routes and the OpenAPI document come from it).
ENDPOINTS = web.AppKey("endpoints", list[Endpoint])
LOGIN_LIMITER = web.AppKey("login_limiter", LoginLimiter)
ANSWERS = web.AppKey("answers", Answers)
GC_POLICY = web.AppKey("gc_policy", GCPolicy)
# The process ends when the app stops (`central serve`): what the GC policy froze stays frozen.
EXITS_AFTER = web.AppKey("exits_after", bool)
# Per request: who is calling (set once the credentials were checked; None: anonymous).
IDENTITY = web.RequestKey("identity", Identity | None)
