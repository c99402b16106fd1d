"""The per-server logger: every line says which server it concerns."""
from __future__ import annotations

import logging


class ServerLog(logging.LoggerAdapter):
    """Prefixes every line with the server it concerns."""

    def process(self, msg, kwargs):
        return f"[{self.extra['server']}] {msg}", kwargs


def server_log(logger: logging.Logger, name: str) -> ServerLog:
    """A logger adapter for one server."""
    return ServerLog(logger, {"server": name})
