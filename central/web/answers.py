"""Shared answers for the busiest read endpoints (the server list and the fleet figures).

With 16 clients polling the list, each request built the same rows and serialised the same
JSON (up to 1 MB for limit=1000) on the one event loop the poller also runs on: requests
queued behind one another (p50 grew with the clients; BENCHMARKS.md, HTTP API). Here one
answer per query is built and serialised once, and every request that comes while it is
current gets the same bytes:

- current means: nothing stored changed since it was built (storage.change_marker(): a commit
  of this process or of another one, such as the CLI), and it is younger than MAX_AGE (the
  answers hold times relative to now: seen_ago, stale, ts);
- requests that arrive while it is being built wait for that one build (single flight), and
  a build goes on when the client that started it goes away.
"""
from __future__ import annotations

import asyncio
import json
import time
from functools import partial
from typing import Awaitable, Callable, Hashable

from aiohttp import web

MAX_AGE = 1.0  # seconds an unchanged answer is served
MAX_ENTRIES = 64  # distinct queries kept (the oldest is forgotten first)

_dumps = partial(json.dumps, separators=(",", ":"), allow_nan=False)


class Answers:
    """Serialised answers by key, valid while the storage's change marker stays the same."""

    def __init__(self, marker: Callable[[], Awaitable[Hashable]], max_age: float = MAX_AGE,
                 max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic):
        self._marker = marker
        self.max_age = max_age
        self.max_entries = max_entries
        self.clock = clock
        self._done: dict[Hashable, tuple[Hashable, float, bytes]] = {}  # key -> (marker, built at, body)
        self._building: dict[Hashable, tuple[Hashable, asyncio.Task]] = {}
        self.builds = 0  # answers built (the rest were shared)
        self.server_rows = ServerRows()  # the server list's rows as text, kept between builds

    async def body(self, key: Hashable, build: Callable[[], Awaitable[object]],
                   encode: Callable[[object], str] | None = None) -> bytes:
        """The JSON text of build()'s answer for key, built now or shared with other requests."""
        marker = await self._marker()
        done = self._done.get(key)
        if done is not None and done[0] == marker and self.clock() - done[1] < self.max_age:
            return done[2]
        building = self._building.get(key)
        if building is None or building[0] != marker:
            task = asyncio.ensure_future(self._build(key, marker, build, encode))
            building = (marker, task)
            self._building[key] = building
        return await asyncio.shield(building[1])

    async def response(self, key: Hashable, build: Callable[[], Awaitable[object]],
                       encode: Callable[[object], str] | None = None) -> web.Response:
        """body() as the JSON response web.json_response would give (encode: the answer's JSON
        text, if not json.dumps; it must give the same text)."""
        return web.Response(body=await self.body(key, build, encode), content_type="application/json", charset="utf-8")

    async def _build(self, key: Hashable, marker: Hashable, build: Callable[[], Awaitable[object]],
                     encode: Callable[[object], str] | None = None) -> bytes:
        try:
            started = self.clock()
            body = (encode or _dumps)(await build()).encode()
            self.builds += 1
            self._done.pop(key, None)
            self._done[key] = (marker, started, body)
            while len(self._done) > self.max_entries:
                del self._done[next(iter(self._done))]
            return body
        finally:
            if self._building.get(key, (None, None))[1] is asyncio.current_task():
                del self._building[key]


class ServerRows:
    """The JSON text of a server list answer ({"servers": [...], "total", "limit", "offset"}),
    exactly as json.dumps gives it, with each server's row serialised only when it changed.

    A rebuild follows every poll batch, and between two of them most rows are the same: only
    their freshness (the last keys of a row: stale, seen_ago, status_text) moves with the clock.
    So the rest of each row is kept as text, by server id, next to the dict it came from, and
    reused while the row compares equal to it (a C-level comparison, much cheaper than the
    serialisation it saves)."""

    TAIL = ("stale", "seen_ago", "status_text")  # appended last to every row (views.freshness)

    def __init__(self):
        self._rows: dict[int, tuple[dict, str]] = {}

    def encode(self, answer: dict) -> str:
        """json.dumps(answer) of a views.server_list answer, separators (",", ":")."""
        parts = []
        rows = self._rows
        for row in answer["servers"]:
            keys = list(row)
            if keys[-len(self.TAIL):] != list(self.TAIL):  # not the shape this relies on: plain
                parts.append(_dumps(row))
                continue
            head = {k: row[k] for k in keys[:-len(self.TAIL)]}
            kept = rows.get(row["id"])
            if kept is not None and kept[0] == head:
                text = kept[1]
            else:
                text = _dumps(head)[:-1]
                rows[row["id"]] = (head, text)
            parts.append(text + "," + _dumps({k: row[k] for k in self.TAIL})[1:])
        if len(rows) > 2 * len(answer["servers"]) + 1000:  # servers gone, other pages: start afresh
            rows.clear()
        if next(iter(answer)) != "servers":
            return _dumps(answer)
        rest = {k: v for k, v in answer.items() if k != "servers"}
        return '{"servers":[' + ",".join(parts) + "]" + ("," + _dumps(rest)[1:] if rest else "}")
