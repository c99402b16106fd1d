"""/api/v1/notifiers: the notification channels' health, routes and windows; send a test message.

Thin handlers over central.views and the dispatcher (the functions the CLI calls too). Viewers
read; a test message is an admin's (it sends to real people). URLs are masked: a channel whose
URL comes from the environment or a file says only where it comes from.
"""
from __future__ import annotations

from .. import views
from .registry import ADMIN, VIEWER, Call, Registry, array, boolean, integer, nullable, number, obj, string

endpoints = Registry(tag="notifiers")

NUM = nullable(number())
NOTIFIER = obj({
    "name": string(), "type": string(enum=["webhook", "alertmanager", "command", "apprise"]),
    "target": string(description="Where it sends, secrets masked."),
    "state": string(enum=["ok", "failing", "unknown"]), "last_success": NUM, "last_error_at": NUM,
    "last_error": nullable(string()), "failures_in_row": integer(), "delivered": integer(), "failed": integer(),
    "dropped": integer(), "queued": integer(),
    "gathered": integer(description="Messages the storm limit folded into another (alerts.storm_messages)."),
}, required=["name", "type", "target", "state", "last_success", "last_error_at", "last_error", "failures_in_row"])
WINDOW = obj({
    "name": string(), "days": array(string()), "start": string(), "end": string(), "time_zone": string(),
    "servers": array(string()), "tags": array(string()), "rules": array(string()), "active": boolean(),
    "next_start": NUM, "next_end": NUM,
}, required=["name", "active", "next_start", "next_end"], closed=False)


@endpoints.get("/api/v1/notifiers", summary="Notification channels with their health, routes and maintenance windows",
               role=VIEWER,
               response=obj({"notifiers": array(NOTIFIER), "routes": array(obj({}, closed=False)),
                             "maintenance": array(WINDOW)}, required=["notifiers", "routes", "maintenance"]))
async def list_notifiers(call: Call) -> dict:
    """Health: last success, last error and failures in a row per channel (from the delivery log)."""
    return await views.notifications_status(call.central)


@endpoints.post("/api/v1/notifiers/{name}/test", summary="Send a test message through one channel", role=ADMIN,
                path_params={"name": string(minLength=1, maxLength=64)},
                response=obj({"name": string(), "type": string(), "ok": boolean(), "detail": string(),
                              "seconds": number()}, required=["name", "ok", "detail"]), errors=(404,))
async def test_notifier(call: Call) -> dict:
    """One attempt now, recorded in the delivery log; `ok` false with the reason when it failed (still 200)."""
    return await call.central.notifier.send_test(call.path["name"])
