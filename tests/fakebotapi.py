"""A local Telegram Bot API server on loopback: the endpoints python-telegram-bot calls.

getMe, deleteWebhook, getUpdates (long polling on queued updates), sendMessage,
answerCallbackQuery, plus close/logOut; anything else is recorded in `unknown` and answered
404, so a test notices a call it did not expect. Requests with another token get 401 as the
real server answers. Parameters come as JSON or form fields (nested objects JSON-encoded).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time

from aiohttp import web

BOT = {"id": 4242, "is_bot": True, "first_name": "central", "username": "central_test_bot",
       "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}


class FakeBotAPI:
    def __init__(self, token: str):
        self.token = token
        self.updates: list[dict] = []
        self.calls: list[tuple[str, dict]] = []
        self.sent: list[dict] = []  # sendMessage parameters
        self.answers: list[dict] = []  # answerCallbackQuery parameters
        self.unknown: list[str] = []
        self.unauthorized = 0
        self.down_for = 0  # answer this many requests with 502 first (the API not reachable yet)
        self._new = asyncio.Event()
        self._ids = itertools.count(1)
        self._message_ids = itertools.count(100)
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "FakeBotAPI":
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # what a user does

    def _user(self, user_id: int) -> dict:
        return {"id": user_id, "is_bot": False, "first_name": "Ann", "username": f"user{user_id}"}

    def _chat(self, chat_id: int) -> dict:
        return {"id": chat_id, "type": "private", "first_name": "Ann"}

    def say(self, chat_id: int, text: str, user_id: int | None = None) -> None:
        """A user writes text in chat_id (a leading /command is marked as one)."""
        msg = {"message_id": next(self._message_ids), "date": int(time.time()), "chat": self._chat(chat_id),
               "from": self._user(user_id or chat_id), "text": text}
        if text.startswith("/"):
            msg["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        self._queue({"message": msg})

    def press(self, chat_id: int, data: str, user_id: int | None = None) -> str:
        """A user presses an inline button with callback data in chat_id; the query id."""
        qid = f"q{next(self._ids)}"
        message = {"message_id": next(self._message_ids), "date": int(time.time()), "chat": self._chat(chat_id),
                   "from": BOT, "text": "an alert"}
        self._queue({"callback_query": {"id": qid, "from": self._user(user_id or chat_id), "chat_instance": "ci",
                                        "data": data, "message": message}})
        return qid

    def _queue(self, update: dict) -> None:
        self.updates.append({"update_id": next(self._ids), **update})
        self._new.set()

    # the Bot API

    async def _params(self, request: web.Request) -> dict:
        if request.content_type == "application/json":
            return await request.json()
        form = await request.post()
        out = {}
        for k, v in form.items():
            try:
                out[k] = json.loads(v)
            except (TypeError, ValueError):
                out[k] = v
        return out

    async def handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            self.unauthorized += 1
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        if self.down_for > 0:
            self.down_for -= 1
            return web.Response(status=502, text="Bad Gateway")
        method = request.match_info["method"]
        params = await self._params(request)
        self.calls.append((method, params))
        handler = getattr(self, "api_" + method, None)
        if handler is None:
            self.unknown.append(method)
            return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)
        return web.json_response({"ok": True, "result": await handler(params)})

    async def api_getMe(self, p):  # noqa: N802 - the Bot API's method names
        return BOT

    async def api_deleteWebhook(self, p):  # noqa: N802
        return True

    async def api_close(self, p):
        return True

    async def api_logOut(self, p):  # noqa: N802
        return True

    async def api_getUpdates(self, p):  # noqa: N802
        offset = int(p.get("offset") or 0)
        deadline = time.monotonic() + min(float(p.get("timeout") or 0), 2.0)
        while True:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
            if self.updates or time.monotonic() >= deadline:
                return self.updates[:100]
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass

    async def api_sendMessage(self, p):  # noqa: N802
        self.sent.append(p)
        return {"message_id": next(self._message_ids), "date": int(time.time()),
                "chat": self._chat(int(p["chat_id"])), "from": BOT, "text": p.get("text", "")}

    async def api_answerCallbackQuery(self, p):  # noqa: N802
        self.answers.append(p)
        return True
