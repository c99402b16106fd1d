"""/api/v1/alerts and /api/v1/silences: list and acknowledge alerts, silence and unsilence.

Thin handlers over central.alerts (the functions the CLI calls too). Viewers read; operators
and admins acknowledge and silence (acting on alerts changes who gets notified).
"""
from __future__ import annotations

from .. import alerts, views
from ..config import ConfigError, parse_duration
from ..model import Invalid
from .registry import OPERATOR, VIEWER, Call, Registry, array, boolean, integer, nullable, number, obj, string

endpoints = Registry(tag="alerts")

NUM = nullable(number())
ALERT = obj({
    "id": integer(), "rule": string(), "server": nullable(string()), "server_id": nullable(integer()),
    "label": string(), "severity": string(), "state": string(enum=["pending", "firing", "resolved"]),
    "summary": string(), "value": NUM, "started_at": number(), "fired_at": NUM, "resolved_at": NUM,
    "acked_by": nullable(string()), "acked_at": NUM,
}, required=["id", "rule", "server", "state", "severity", "summary", "started_at"], closed=False)
SILENCE = obj({
    "id": integer(), "matcher": obj({"server": string(), "rule": string(), "tag": string()}, closed=False),
    "starts_at": number(), "ends_at": number(), "comment": string(), "created_by": string(),
    "kind": string(enum=["silence", "maintenance"]), "active": boolean(),
}, required=["id", "matcher", "starts_at", "ends_at", "comment", "created_by", "kind"], closed=False)
GLOB = string(minLength=1, maxLength=100, description="A glob (* ? [..]) over names.")


@endpoints.get("/api/v1/alerts", summary="List alerts (firing and pending first, then recent resolved)", role=VIEWER,
               query={"state": string(enum=["open", "firing", "all"], default="all",
                                      description="open: pending and firing; firing: firing only; all: with resolved."),
                      "server": string(maxLength=63), "limit": integer(minimum=1, maximum=10000, default=100)},
               response=obj({"alerts": array(ALERT)}, required=["alerts"]), errors=(404,))
async def list_alerts(call: Call) -> dict:
    """Newest first, firing before pending before resolved; optionally one server's."""
    q = call.query
    return {"alerts": await alerts.list_alerts(call.central, firing_only=q["state"] == "firing",
                                               open_only=q["state"] == "open", server=q.get("server"),
                                               limit=q["limit"])}


@endpoints.get("/api/v1/alerts/{id}", summary="One alert, its notifications and its server's status", role=VIEWER,
               path_params={"id": integer(minimum=1)},
               response=obj({"alert": {**ALERT, "properties": {**ALERT["properties"], "notifications": array(obj({}, closed=False))}},
                             "server": nullable(obj({"name": string(), "status": string(), "stale": boolean()},
                                                    closed=False))},
                            required=["alert", "server"]), errors=(404,))
async def show_alert(call: Call) -> dict:
    """What the page /alerts/ID shows (notifications link there)."""
    return await views.alert_detail(call.central, call.path["id"])


@endpoints.post("/api/v1/alerts/{id}/ack", summary="Acknowledge an open alert", role=OPERATOR,
                path_params={"id": integer(minimum=1)}, response=ALERT, errors=(404, 409))
async def ack_alert(call: Call) -> dict:
    """Stops the alert's repeat notifications (its resolution is still sent); 409 when resolved."""
    return await alerts.ack(call.central, call.path["id"], call.identity.user)


@endpoints.get("/api/v1/silences", summary="List silences and maintenance windows", role=VIEWER,
               query={"active": boolean(default=True, description="Only those not ended yet."),
                      "limit": integer(minimum=1, maximum=1000, default=100)},
               response=obj({"silences": array(SILENCE)}, required=["silences"]))
async def list_silences(call: Call) -> dict:
    """Newest first; `active` says whether one mutes notifications now."""
    return {"silences": await alerts.list_silences(call.central, active_only=call.query["active"],
                                                   limit=call.query["limit"])}


@endpoints.post("/api/v1/silences", summary="Silence matching alerts' notifications for a while", role=OPERATOR,
                body=obj({"server": GLOB, "rule": GLOB, "tag": GLOB,
                          "duration": string(minLength=1, maxLength=20, description="Like 30m, 2h, 1d."),
                          "comment": string(minLength=1, maxLength=500), "maintenance": boolean()},
                         required=["duration", "comment"]),
                status=201, response=SILENCE, errors=(404,))
async def create_silence(call: Call) -> dict:
    """All given matchers (server, rule, tag globs) must match; alerts are still recorded.
    maintenance=true makes a maintenance window for one existing server."""
    b = call.body
    try:
        duration = parse_duration(b["duration"], "duration")
    except ConfigError as exc:
        raise Invalid(str(exc)) from None
    return await alerts.create_silence(call.central, server=b.get("server"), rule=b.get("rule"),
                                       tag=b.get("tag"), duration=duration, comment=b["comment"],
                                       user=call.identity.user, maintenance=b.get("maintenance", False))


@endpoints.delete("/api/v1/silences/{id}", summary="End a silence now", role=OPERATOR,
                  path_params={"id": integer(minimum=1)}, response=SILENCE, errors=(404, 409))
async def delete_silence(call: Call) -> dict:
    """The silence stays in the history with its end set to now; 409 when it already ended."""
    return await alerts.delete_silence(call.central, call.path["id"])
