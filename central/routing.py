"""Which channels get an alert, and how alerts are grouped into messages (Alertmanager's semantics).

Routes are tried in order (`[[alerts.routes]]`); the first that matches takes the alert,
unless it says `continue`, and the default route (`[alerts.route]`) takes what none took.
Each route groups its alerts by `group_by` labels. A new group waits `group_wait` before its
first message (so alerts that start together arrive together); after a message the group
is looked at again every `group_interval`: a message goes out when an alert joined or
resolved since the last one, or when `repeat_interval` passed with alerts still firing and
not all acknowledged. One message lists the group's firing and newly resolved alerts.

Pure logic with an injected time: the dispatcher feeds alerts in and sends the messages.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

from .config import AlertsConfig, RouteConfig
from .muting import globs_match

EVERY_LABEL = "..."
# The default route's defaults: each alert on its own, at once, repeated every 4 hours.
DEFAULT_GROUP_BY = (EVERY_LABEL,)
DEFAULT_GROUP_WAIT = 0.0
DEFAULT_GROUP_INTERVAL = 0.0
DEFAULT_REPEAT_INTERVAL = 4 * 3600.0
# (acknowledged, muted) of an open alert now, or None once it is no longer open.
Flags = Callable[[dict, float], "tuple[bool, bool] | None"]


class ChannelPolicy(Protocol):
    """What the router needs to know of a channel."""

    name: str
    repeat_override: float | None

    def accepts(self, event: str, severity: str) -> bool: ...


@dataclass(frozen=True)
class Route:
    """A route with its inherited grouping settings filled in."""

    index: int  # 0 is the default route
    name: str  # "default" or "routes[N]" (as in the config, for messages)
    channels: tuple[str, ...]
    severities: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    continue_: bool = False
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    group_wait: float = DEFAULT_GROUP_WAIT
    group_interval: float = DEFAULT_GROUP_INTERVAL
    repeat_interval: float = DEFAULT_REPEAT_INTERVAL

    def matches(self, alert: dict) -> bool:
        """All given matchers hold (severities exact; tags, servers and rules globs)."""
        if self.severities and alert["severity"] not in self.severities:
            return False
        if self.tags and not any(globs_match(self.tags, t) for t in alert.get("tags") or ()):
            return False
        return globs_match(self.servers, alert.get("server")) and globs_match(self.rules, alert["rule"])

    def group_key(self, alert: dict) -> tuple:
        """The group an alert joins in this route."""
        if EVERY_LABEL in self.group_by:
            return (self.index, ("id", alert["id"]))
        return (self.index, tuple(alert.get(label) for label in self.group_by))

    def group_labels(self, alert: dict) -> dict:
        """The labels every alert of the group shares (for the message's title)."""
        if EVERY_LABEL in self.group_by:
            return {k: alert.get(k) for k in ("rule", "server", "severity", "label")}
        return {label: alert.get(label) for label in self.group_by}


def build_routes(cfg: AlertsConfig, channel_names: Sequence[str]) -> list[Route]:
    """The default route first, then the configured routes, with unset grouping taken from the default."""
    root = cfg.route

    def grouping(r: RouteConfig, base: Route | None) -> dict:
        out = {}
        for k, default in (("group_by", DEFAULT_GROUP_BY), ("group_wait", DEFAULT_GROUP_WAIT),
                           ("group_interval", DEFAULT_GROUP_INTERVAL), ("repeat_interval", DEFAULT_REPEAT_INTERVAL)):
            v = getattr(r, k)
            out[k] = v if v is not None else (getattr(base, k) if base is not None else default)
        return out

    default = Route(0, "default", tuple(root.channels) or tuple(channel_names), **grouping(root, None))
    routes = [default]
    for i, r in enumerate(cfg.routes):
        routes.append(Route(i + 1, f"routes[{i}]", tuple(r.channels), severities=r.severities, tags=r.tags,
                            servers=r.servers, rules=r.rules, continue_=r.continue_, **grouping(r, default)))
    return routes


def select_routes(routes: Sequence[Route], alert: dict) -> list[Route]:
    """The routes that take an alert: matching ones in order until one without continue; else the default."""
    out = []
    for route in routes[1:]:
        if route.matches(alert):
            out.append(route)
            if not route.continue_:
                break
    return out or [routes[0]]


@dataclass
class Message:
    """One notification to one channel: a group's firing alerts and those resolved since the last message."""

    channel: str
    event: str  # firing (an alert joined), resolved (only resolutions), repeat, or test
    group: dict
    firing: list[dict]
    resolved: list[dict]
    new: frozenset = frozenset()
    created_at: float = 0.0
    route: str = "default"
    gathered: int = 1  # messages this one stands for (the storm limit folds later ones into it)

    @property
    def alerts(self) -> list[dict]:
        """Firing then resolved alerts."""
        return self.firing + self.resolved

    def entries(self) -> list[tuple[str, dict]]:
        """(event, alert) per alert, for the delivery log: firing for new ones, repeat for the others, resolved."""
        return ([("firing" if a["id"] in self.new else "repeat", a) for a in self.firing]
                + [("resolved", a) for a in self.resolved])


# At most this many alerts in one gathered message: a webhook body stays under ~1 MB (aiohttp's
# and many receivers' default limit); beyond it the next message starts gathering.
MAX_GATHERED = 1000
_MISSING = object()


class Gathering:
    """Messages of one channel gathered into one by the storm limit, built as they come (each
    added in time of its own alerts, not of those gathered so far). The later news win: an alert
    resolved in any of them is listed as resolved; the group is what all share."""

    def __init__(self, first: Message):
        self.channel, self.created_at, self.route = first.channel, first.created_at, first.route
        self.group = dict(first.group)
        self.firing: dict[int, dict] = {}
        self.resolved: dict[int, dict] = {}
        self.new: set = set()
        self.gathered = 0
        self.add(first)

    @property
    def size(self) -> int:
        """Alerts gathered."""
        return len(self.firing) + len(self.resolved)

    def add(self, later: Message) -> None:
        for a in later.resolved:
            self.firing.pop(a["id"], None)
            self.resolved[a["id"]] = a
        for a in later.firing:
            if a["id"] not in self.resolved:
                self.firing[a["id"]] = a
        self.new |= later.new
        if self.group:
            self.group = {k: v for k, v in self.group.items() if later.group.get(k, _MISSING) == v}
        if later.route != self.route:
            self.route = "several"
        self.gathered += later.gathered

    def message(self) -> Message:
        """The one message to send."""
        new = frozenset(self.new & self.firing.keys())
        event = "firing" if new else "resolved" if self.resolved else "repeat"
        return Message(self.channel, event, self.group, sorted(self.firing.values(), key=_order),
                       sorted(self.resolved.values(), key=_order), new, self.created_at, self.route, self.gathered)


@dataclass
class _Sent:
    firing: set = field(default_factory=set)  # alert ids whose firing this channel was sent
    last: float = 0.0  # when this channel last got a message of the group


@dataclass
class Group:
    """An aggregation group of one route: its alerts and, per channel, what was last sent."""

    route: Route
    key: tuple
    labels: dict
    next_flush: float
    alerts: dict = field(default_factory=dict)  # alert id -> latest snapshot
    sent: dict = field(default_factory=dict)  # channel name -> _Sent
    flushed: bool = False  # past its group_wait


def _order(alert: dict) -> tuple:
    return (alert.get("server") or "", alert["rule"], alert.get("label") or "", alert["id"])


class Router:
    """Holds the aggregation groups of every route and produces the messages that are due."""

    def __init__(self, routes: Sequence[Route], channels: dict, grouped: Callable[[str], bool] = lambda name: True):
        self.routes = list(routes)
        self.channels = channels  # name -> ChannelPolicy
        self.grouped = grouped  # channels that take group messages (Alertmanager gets each alert itself)
        self.groups: dict[tuple, Group] = {}
        self.seed: dict[tuple[int, str], float] = {}  # (alert id, channel) -> last delivery (loaded at start)

    def add(self, alert: dict, now: float) -> None:
        """An alert fired, changed or resolved: put its latest snapshot into its groups."""
        for route in select_routes(self.routes, alert):
            if not any(self.grouped(c) for c in route.channels):
                continue
            key = route.group_key(alert)
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = Group(route, key, route.group_labels(alert), now + route.group_wait)
            if alert["id"] not in group.alerts:
                self._seed(group, alert["id"])
            group.alerts[alert["id"]] = alert
            if group.flushed and route.group_interval <= 0:
                group.next_flush = now  # no interval: look again at once

    def _seed(self, group: Group, alert_id: int) -> None:
        # After a restart an open alert's firing may already have gone out: the delivery log says so.
        for name in group.route.channels:
            ts = self.seed.get((alert_id, name))
            if ts is not None:
                sent = group.sent.setdefault(name, _Sent())
                sent.firing.add(alert_id)
                sent.last = max(sent.last, ts)

    def next_due(self) -> float | None:
        """When the next group is due to be looked at (None: only when an alert comes in)."""
        due = min((g.next_flush for g in self.groups.values()), default=math.inf)
        return None if due == math.inf else due

    def flush(self, now: float, flags: Flags | None = None) -> list[Message]:
        """The messages of every group whose time has come; resolved alerts leave their groups."""
        out: list[Message] = []
        for key, group in list(self.groups.items()):
            if group.next_flush > now:
                continue
            out.extend(self._flush_group(group, now, flags))
            group.flushed = True
            if group.alerts:
                # Without an interval the group is looked at when alerts come in (and on each timer round).
                interval = group.route.group_interval
                group.next_flush = now + interval if interval > 0 else math.inf
            else:
                del self.groups[key]
        return out

    def _flush_group(self, group: Group, now: float, flags: Flags | None) -> list[Message]:
        firing: list[tuple[dict, bool, bool]] = []
        resolved: list[dict] = []
        for alert_id, alert in list(group.alerts.items()):
            if alert["state"] == "resolved":
                resolved.append(alert)
                continue
            f = flags(alert, now) if flags is not None else (alert.get("acked_by") is not None, False)
            if f is None:
                continue  # closed in the engine, its resolution on the way: say nothing of it now

            firing.append((alert, f[0], f[1]))
        firing.sort(key=lambda t: _order(t[0]))
        resolved.sort(key=_order)
        out = []
        for name in group.route.channels:
            channel = self.channels.get(name)
            if channel is None or not self.grouped(name):
                continue
            sent = group.sent.setdefault(name, _Sent())
            show = [(a, acked) for a, acked, muted in firing if not muted and channel.accepts("firing", a["severity"])]
            done = [a for a in resolved if a["id"] in sent.firing and channel.accepts("resolved", a["severity"])]
            new = frozenset(a["id"] for a, _ in show) - sent.firing
            repeat = group.route.repeat_interval if channel.repeat_override is None else channel.repeat_override
            if new or done:
                kind = "firing" if new else "resolved"
            elif repeat > 0 and now - sent.last >= repeat and any(not acked for _, acked in show):
                kind = "repeat"
            else:
                continue
            out.append(Message(name, kind, dict(group.labels), [a for a, _ in show], done, new, now, group.route.name))
            sent.firing = (sent.firing - {a["id"] for a in resolved}) | {a["id"] for a, _ in show}
            sent.last = now
        for a in resolved:
            group.alerts.pop(a["id"], None)
            for sent in group.sent.values():
                sent.firing.discard(a["id"])
        return out

    def prune(self, open_ids: Iterable[int]) -> None:
        """Drop firing alerts that are no longer open and whose resolution never came (e.g. server removed)."""
        keep = set(open_ids)
        for key, group in list(self.groups.items()):
            for i in [i for i, a in group.alerts.items() if a["state"] != "resolved" and i not in keep]:
                del group.alerts[i]
            if not group.alerts:
                del self.groups[key]

    def describe(self) -> list[dict]:
        """The routes as configured (for the API)."""
        return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(r).items()}
                for r in self.routes]
