"""Notification channels: a webhook, Alertmanager, a local command, and Apprise (~100 services).

The alert engine calls `Dispatcher.notify(event, alert)` and, on its timer, `remind(...)`;
both only route the alert (central/routing.py), put it in its groups, and append the messages
that are due to each channel's bounded queue: a slow or dead channel never holds up the
poller. Each channel has its own worker task that delivers with a timeout, retries with
exponential backoff, and records every attempt in the notifications table. When a queue is
full the oldest message is dropped and counted.

A channel's health (last success, last error, failures in a row) is kept here and seeded from
the delivery log at start; a failing channel is logged once when it starts failing and once
when it recovers, not once per attempt. Secret URLs (url_env, url_file) are read when needed
and never logged, stored or returned: delivery errors are scrubbed of them.
"""
from __future__ import annotations

import asyncio
import collections
import datetime
import json
import logging
import os
import re
import signal
import time
import urllib.parse
import zoneinfo
from typing import Callable, Mapping, Sequence

import aiohttp

from . import messages, routing
from .config import SEVERITIES, AlertsConfig, ConfigError, NotifierConfig, item_key
from .hosttext import clean
from .model import StorageUnavailable
from .routing import Gathering, Message, Router, build_routes, select_routes
from .storage import Storage

log = logging.getLogger(__name__)

SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
ALERTMANAGER_REPEAT = 60.0
# Apprise logs each attempt, at times with parts of the URL: its records stay out of our log
# (each result carries its own entries, which are scrubbed and kept as the delivery detail).
logging.getLogger("apprise").propagate = False
# Environment a command notifier inherits from the central; nothing else leaks (tokens, config).
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
_ALERT_ENV_FIELDS = ("id", "rule", "server", "host", "label", "severity", "state", "summary", "value",
                     "started_at", "fired_at", "resolved_at", "acked_by", "url")
MASK = "***"


class DeliveryError(Exception):
    """A channel did not take a notification (the message says why, in one line)."""


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# secrets

def notifier_key(index: int, cfg: NotifierConfig) -> str:
    """How config errors name a notifier: notifiers[1] ("ops-mail")."""
    return item_key("notifiers", index, cfg.name)


def channel_urls(cfg: NotifierConfig, key: str = "notifier", env: Mapping[str, str] | None = None) -> list[str]:
    """The channel's URL(s) from url, url_env or url_file; ConfigError naming the key (never the value)."""
    env = os.environ if env is None else env
    if cfg.url_env:
        text = env.get(cfg.url_env, "")
        if not text.strip():
            raise ConfigError(f"{key}.url_env: the environment variable {cfg.url_env} is not set or empty")
    elif cfg.url_file:
        try:
            with open(cfg.url_file, encoding="utf-8") as fh:
                text = fh.read(65536)
        except OSError as exc:
            raise ConfigError(f"{key}.url_file: cannot read {cfg.url_file}: {exc.strerror or exc}") from None
        if not text.strip():
            raise ConfigError(f"{key}.url_file: {cfg.url_file} is empty")
    else:
        text = cfg.url
    # One URL per line (Apprise parses several on one line itself, and commas inside a URL's query).
    urls = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not urls:
        raise ConfigError(f"{key}.{_source_key(cfg)}: holds no URL")
    if cfg.type != "apprise":
        if len(urls) != 1:
            raise ConfigError(f"{key}.{_source_key(cfg)}: expected one URL, found {len(urls)}")
        if not re.match(r"^https?://[^\s/]+", urls[0]):
            raise ConfigError(f"{key}.{_source_key(cfg)}: expected an http:// or https:// URL")
    return urls


def _source_key(cfg: NotifierConfig) -> str:
    return "url_env" if cfg.url_env else "url_file" if cfg.url_file else "url"


def secret_parts(urls: Sequence[str]) -> list[str]:
    """The pieces of URLs that may be secret (whole URL, user info, path segments, query values), longest first."""
    parts = set()
    for url in urls:
        parts.add(url)
        try:
            u = urllib.parse.urlsplit(url)
        except ValueError:
            continue
        if u.netloc and "@" in u.netloc:
            userinfo = u.netloc.rsplit("@", 1)[0]
            parts.update([userinfo, *userinfo.split(":")])
        # Path words like "hooks" or "api" stay readable; token-like segments do not.
        parts.update(seg for seg in u.path.split("/") if len(seg) >= 8 or any(ch.isdigit() for ch in seg))
        parts.update(v for _, v in urllib.parse.parse_qsl(u.query))
        parts.update(urllib.parse.unquote(p) for p in list(parts))
    return sorted((p for p in parts if len(p) >= 4), key=len, reverse=True)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """text with every secret piece replaced by ***."""
    for part in secrets:
        text = text.replace(part, MASK)
    return text


def mask_url(url: str) -> str:
    """What may be shown of a URL: its scheme and host (apprise: its scheme), never credentials or tokens."""
    try:
        u = urllib.parse.urlsplit(url)
    except ValueError:
        return MASK
    if u.scheme in ("http", "https"):
        host = u.hostname or ""
        port = f":{u.port}" if u.port else ""
        return f"{u.scheme}://{host}{port}/{MASK}" if u.path.strip("/") or u.query else f"{u.scheme}://{host}{port}"
    return f"{u.scheme}://{MASK}" if u.scheme else MASK


# payloads

def webhook_body(message: Message, now: float, title: str, text: str) -> dict:
    """The JSON a webhook receives: the group's alerts, each with its event, and the rendered text."""
    return {"version": 2, "channel": message.channel, "event": message.event, "sent_at": now,
            "group": message.group, "route": message.route, "title": title, "text": text,
            "alerts": [dict(a, event=ev) for ev, a in message.entries()]}


def alertmanager_payload(event: str, alert: dict, now: float, repeat_interval: float) -> list[dict]:
    """The body of POST /api/v2/alerts for one alert (resolved: endsAt in the past)."""
    labels = {"alertname": alert["rule"], "severity": alert["severity"]}
    if alert.get("server"):
        labels["server"] = alert["server"]
    if alert.get("label"):
        labels["label"] = alert["label"]
    annotations = {"summary": alert.get("summary") or ""}
    if alert.get("value") is not None:
        annotations["value"] = f"{alert['value']:g}"
    starts = alert.get("fired_at") or alert.get("started_at") or now
    entry = {"labels": labels, "annotations": annotations, "startsAt": _iso(starts)}
    if alert.get("url"):
        entry["generatorURL"] = alert["url"]
    if event == "resolved":
        entry["endsAt"] = _iso(max(starts, min(alert.get("resolved_at") or now, now)))
    elif repeat_interval > 0:
        # Like Prometheus: valid for a few re-sends, so a dead central's alerts end by themselves.
        entry["endsAt"] = _iso(now + max(4 * repeat_interval, 300.0))
    return [entry]


def alertmanager_test_payload(channel: str, now: float) -> list[dict]:
    """A short-lived info alert `central_test` that Alertmanager routes like any other."""
    return [{"labels": {"alertname": "central_test", "severity": "info", "channel": channel},
             "annotations": {"summary": "a test notification from central"},
             "startsAt": _iso(now), "endsAt": _iso(now + 300.0)}]


def alert_environment(event: str, alert: dict) -> dict[str, str]:
    """CENTRAL_ALERT_* variables for a command notifier (values verbatim, NUL bytes removed)."""
    env = {"CENTRAL_ALERT_EVENT": event}
    for name in _ALERT_ENV_FIELDS:
        value = alert.get(name)
        env["CENTRAL_ALERT_" + name.upper()] = "" if value is None else str(value)
    env["CENTRAL_ALERT_TAGS"] = ",".join(alert.get("tags") or ())
    env["CENTRAL_ALERT_JSON"] = json.dumps(alert, sort_keys=True, default=str)
    return {k: v.replace("\0", "") for k, v in env.items()}


def message_environment(message: Message, title: str, text: str) -> dict[str, str]:
    """CENTRAL_MESSAGE_* for the whole message, CENTRAL_ALERT_* of its first alert (all in CENTRAL_ALERTS_JSON)."""
    entries = message.entries()
    env = alert_environment(*entries[0]) if entries else {"CENTRAL_ALERT_EVENT": message.event}
    env.update({"CENTRAL_MESSAGE_EVENT": message.event, "CENTRAL_MESSAGE_TITLE": title, "CENTRAL_MESSAGE_TEXT": text,
                "CENTRAL_ALERT_COUNT": str(len(entries)),
                "CENTRAL_ALERTS_JSON": json.dumps([dict(a, event=ev) for ev, a in entries], sort_keys=True, default=str)})
    return {k: v.replace("\0", "") for k, v in env.items()}


class Channel:
    """One configured notifier: its filter, queue, worker, repeat bookkeeping and health."""

    def __init__(self, cfg: NotifierConfig, queue_size: int, index: int = 0, *, storm_messages: int = 0,
                 storm_window: float = 60.0, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.name = cfg.name
        self.key = notifier_key(index, cfg)
        # Alertmanager groups by itself: it gets each alert on its own, re-sent to stay active.
        self.keepalive = cfg.type == "alertmanager"
        self.repeat_override = cfg.repeat_interval
        self.repeat_interval = ALERTMANAGER_REPEAT if cfg.repeat_interval is None else cfg.repeat_interval
        self.queue: collections.deque = collections.deque()
        self.queue_size = queue_size
        self.wake = asyncio.Event()
        self.last_sent: dict[int, float] = {}
        self.dropped = 0
        self.delivered = 0
        self.failed = 0
        self.task: asyncio.Task | None = None
        # health
        self.last_success: float | None = None
        self.last_error_at: float | None = None
        self.last_error: str | None = None
        self.failures_in_row = 0
        self.failing_since: float | None = None
        self.dropped_while_failing = 0
        # the storm limit: at most storm_messages messages taken for sending per storm_window
        # (Alertmanager groups by itself: never held)
        self.storm_messages = 0 if self.keepalive else storm_messages
        self.storm_window = storm_window
        self.clock = clock
        self.taken: collections.deque[float] = collections.deque()  # when the window's messages were taken
        self.gathered = 0  # messages folded into another by the storm limit
        self._storm_logged = False

    def accepts(self, event: str, severity: str) -> bool:
        """Whether this channel wants this event of this severity."""
        if event == "resolved" and not self.cfg.send_resolved:
            return False
        if self.cfg.severities:
            return severity in self.cfg.severities
        return SEVERITY_RANK.get(severity, 0) >= SEVERITY_RANK[self.cfg.min_severity]

    def _window(self, now: float) -> int:
        """Messages taken for sending in the storm window up to now."""
        while self.taken and now - self.taken[0] >= self.storm_window:
            self.taken.popleft()
        return len(self.taken)

    def hold_for(self, now: float) -> float:
        """Seconds until the storm limit lets the next message go (0: now)."""
        if self.storm_messages <= 0 or self._window(now) < self.storm_messages:
            if self._storm_logged and not self.queue:
                self._storm_logged = False
            return 0.0
        return self.taken[0] + self.storm_window - now

    def take(self) -> Message:
        """The next message to send (counted in the storm window)."""
        self.taken.append(self.clock())
        message = self.queue.popleft()
        return message.message() if isinstance(message, Gathering) else message

    def put(self, message: Message) -> None:
        """Queue without waiting; over the storm limit a message joins the last one queued; the
        oldest message goes when full (logged once per failing stretch)."""
        last = self.queue[-1] if self.queue else None
        if self.storm_messages > 0 and last is not None and message.event != "test" \
                and not (isinstance(last, Message) and last.event == "test") \
                and self._window(self.clock()) + len(self.queue) >= self.storm_messages:
            if not isinstance(last, Gathering):
                last = self.queue[-1] = Gathering(last)
            if last.size < routing.MAX_GATHERED:
                last.add(message)
                self.gathered += 1
                if not self._storm_logged:
                    self._storm_logged = True
                    log.warning("notifier %s: more than %d messages within %s: the next ones go out gathered, up to "
                                "%d alerts a message (alerts.storm_messages, alerts.storm_window)", self.name,
                                self.storm_messages, messages.fmt_duration(self.storm_window), routing.MAX_GATHERED)
                return
            # full: this one waits on its own and the next ones gather into it
        if len(self.queue) >= self.queue_size:
            self.queue.popleft()
            self.dropped += 1
            self.dropped_while_failing += 1
            if self.dropped_while_failing == 1:
                log.warning("notifier %s: queue full (%d), dropping the oldest messages (counted until it recovers)",
                            self.name, self.queue_size)
        self.queue.append(message)
        self.wake.set()

    @property
    def state(self) -> str:
        """ok, failing, or unknown (nothing tried yet)."""
        if self.failures_in_row:
            return "failing"
        return "ok" if self.last_success is not None else "unknown"

    def target(self) -> str:
        """Where it sends, with secrets masked (env/file sources say only where the URL comes from)."""
        if self.cfg.type == "command":
            return os.path.basename(self.cfg.argv[0]) if self.cfg.argv else ""
        if self.cfg.url_env:
            return f"URL from ${self.cfg.url_env}"
        if self.cfg.url_file:
            return f"URL from {self.cfg.url_file}"
        return ", ".join(mask_url(u) for u in re.split(r"[\s,]+", self.cfg.url.strip()) if u)

    def health(self) -> dict:
        """For /api/v1/status and the page."""
        return {"name": self.name, "type": self.cfg.type, "target": self.target(), "state": self.state,
                "last_success": self.last_success, "last_error_at": self.last_error_at,
                "last_error": self.last_error, "failures_in_row": self.failures_in_row,
                "delivered": self.delivered, "failed": self.failed, "dropped": self.dropped,
                "queued": len(self.queue), "gathered": self.gathered}

    def record(self, ok: bool, detail: str, now: float) -> None:
        """Update health after an attempt; log the first failure of a stretch and the recovery, nothing between."""
        if ok:
            if self.failures_in_row:
                dropped = f", {self.dropped_while_failing} messages dropped meanwhile" if self.dropped_while_failing else ""
                since = messages.fmt_duration(now - self.failing_since) if self.failing_since else "a while"
                log.warning("notifier %s: recovered after %d failed attempts over %s%s", self.name,
                            self.failures_in_row, since, dropped)
            self.last_success = now
            self.failures_in_row = 0
            self.failing_since = None
            self.dropped_while_failing = 0
            return
        if not self.failures_in_row:
            self.failing_since = now
            log.warning("notifier %s: failing: %s (retrying; logged again when it recovers)", self.name, detail)
        self.failures_in_row += 1
        self.last_error_at, self.last_error = now, detail


class Dispatcher:
    """Routes and groups alerts, fans the messages out to the channels; owns the HTTP session and workers."""

    def __init__(self, storage: Storage, notifiers: Sequence[NotifierConfig], *, alerts: AlertsConfig | None = None,
                 queue_size: int = 1000, clock: Callable[[], float] = time.time):
        self.storage = storage
        self.clock = clock
        self.alerts_cfg = alerts or AlertsConfig()
        self.zone = zoneinfo.ZoneInfo(self.alerts_cfg.time_zone)
        self.channels = [Channel(cfg, queue_size, i, storm_messages=self.alerts_cfg.storm_messages,
                                 storm_window=self.alerts_cfg.storm_window, clock=clock)
                         for i, cfg in enumerate(notifiers)]
        self.by_name = {c.name: c for c in self.channels}
        self.routes = build_routes(self.alerts_cfg, [c.name for c in self.channels])
        self.router = Router(self.routes, self.by_name, grouped=lambda n: n in self.by_name and not self.by_name[n].keepalive)
        self.flags: Callable[[dict, float], tuple[bool, bool] | None] | None = None
        self.session: aiohttp.ClientSession | None = None
        self._own_session = False
        self._timer: asyncio.Task | None = None
        self._timer_wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0
        self._started = False
        self._stopping = False

    @property
    def started(self) -> bool:
        """Whether the workers run (in the serving process, after the first poll batch)."""
        return self._started

    @property
    def dropped(self) -> int:
        """Messages dropped because a channel's queue overflowed."""
        return sum(c.dropped for c in self.channels)

    def attach(self, flags: Callable[[dict, float], tuple[bool, bool] | None]) -> None:
        """The alert engine's view of an open alert now: (acknowledged, muted), or None when it is gone."""
        self.flags = flags

    def get(self, name: str) -> Channel:
        """A channel by name; NotFound otherwise."""
        from .model import NotFound

        channel = self.by_name.get(name)
        if channel is None:
            known = ", ".join(self.by_name) or "none configured"
            raise NotFound(f"no notifier named {name!r} (notifiers: {known})")
        return channel

    def health(self) -> list[dict]:
        """Each channel's health, in config order."""
        return [c.health() for c in self.channels]

    async def start(self, run_timer: bool = True) -> None:
        """Load the delivery log (last sends, health), open the HTTP session, start the workers and the group timer."""
        if not self.channels or self._started:
            return
        self._started = True
        self._stopping = False
        for (alert_id, channel), ts in (await self.storage.last_sent()).items():
            if channel in self.by_name:
                self.by_name[channel].last_sent[alert_id] = ts
                self.router.seed[(alert_id, channel)] = ts
        await self.load_health()
        for c in self.channels:
            if c.failures_in_row:
                log.warning("notifier %s: failing since %s (%d failed attempts): %s", c.name,
                            messages.fmt_when(c.failing_since, self.zone), c.failures_in_row, c.last_error)
        if any(c.cfg.type == "apprise" for c in self.channels):
            # Apprise imports its ~100 plugins on first use: do it off the event loop, once.
            await asyncio.to_thread(_load_apprise)
        if self.session is None:
            self.session, self._own_session = aiohttp.ClientSession(), True
        for c in self.channels:
            c.task = asyncio.create_task(self._worker(c), name=f"notifier-{c.name}")
        if run_timer:
            self._timer = asyncio.create_task(self._group_timer(), name="notifier-groups")

    async def load_health(self) -> None:
        """Health as the delivery log tells it (across restarts and CLI tests)."""
        for name, h in (await self.storage.channel_health()).items():
            c = self.by_name.get(name)
            if c is not None:
                c.last_success, c.failures_in_row = h["last_success"], h["failures_in_row"]
                c.last_error_at, c.last_error = h["last_error_at"], h["last_error"]
                if c.failures_in_row:
                    c.failing_since = h["last_error_at"]

    async def stop(self, drain: float = 2.0) -> None:
        """Give queued messages a moment to go out, then stop the workers."""
        if not self._started:
            if self.session is not None and self._own_session:
                await self.session.close()
                self.session = None
            return
        self._stopping = True  # messages the storm limit holds go out now
        for c in self.channels:
            c.wake.set()
        try:
            await asyncio.wait_for(self.wait_idle(), drain)
        except asyncio.TimeoutError:
            log.warning("notifiers: stopping with %d messages undelivered", sum(len(c.queue) for c in self.channels))
        tasks = [c.task for c in self.channels if c.task is not None] + ([self._timer] if self._timer else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._timer = None
        if self.session is not None and self._own_session:
            await self.session.close()
        self.session = None
        self._started = False

    async def wait_idle(self) -> None:
        """Until every queue is empty and no delivery is in progress."""
        while self._busy or any(c.queue for c in self.channels):
            self._idle.clear()
            await self._idle.wait()

    # from the alert engine

    def _direct(self, alert: dict) -> list[Channel]:
        """The Alertmanager channels an alert is routed to."""
        out: list[Channel] = []
        for route in select_routes(self.routes, alert):
            for name in route.channels:
                c = self.by_name.get(name)
                if c is not None and c.keepalive and c not in out:
                    out.append(c)
        return out

    def notify(self, event: str, alert: dict) -> None:
        """An alert fired or resolved: route it and put it in its groups (pump() then queues what is due)."""
        if not self.channels:
            return
        now = self.clock()
        alert = dict(alert, state="resolved" if event == "resolved" else "firing")
        for c in self._direct(alert):
            if not c.accepts(event, alert["severity"]):
                continue
            if event == "resolved":
                c.last_sent.pop(alert["id"], None)
                c.put(Message(c.name, event, {}, [], [alert], frozenset(), now))
            else:
                c.last_sent[alert["id"]] = now
                c.put(Message(c.name, event, {}, [alert], [], frozenset([alert["id"]]), now))
        self.router.add(alert, now)

    async def adopt(self, alert_ids: set[int]) -> None:
        """Alerts another central notified (central.cluster takeover): their last sends from the
        shared delivery log, so neither a firing message nor a repeat goes out twice."""
        if not self.channels or not alert_ids:
            return
        for (alert_id, channel), ts in (await self.storage.last_sent()).items():
            if alert_id in alert_ids and channel in self.by_name:
                self.by_name[channel].last_sent[alert_id] = ts
                self.router.seed[(alert_id, channel)] = ts

    def remind(self, alerts: Sequence[tuple[dict, bool, bool]], now: float) -> None:
        """The timer's round over the firing alerts already notified: [(alert, acknowledged, muted)]."""
        if not self.channels:
            return
        for alert, acked, muted in alerts:
            for c in self._direct(alert):
                # Alertmanager needs re-sends to keep an alert active, acknowledged or silenced here or not.
                if c.repeat_interval <= 0 or not c.accepts("repeat", alert["severity"]):
                    continue
                if now - c.last_sent.get(alert["id"], 0.0) >= c.repeat_interval:
                    c.last_sent[alert["id"]] = now
                    c.put(Message(c.name, "repeat", {}, [alert], [], frozenset(), now))
            self.router.add(dict(alert, state="firing"), now)
        self.router.prune(a["id"] for a, _, _ in alerts)
        self.pump(now)

    def pump(self, now: float | None = None) -> None:
        """Queue the messages of the groups that are due (the engine calls it after each round's notify calls)."""
        now = self.clock() if now is None else now
        for m in self.router.flush(now, self.flags):
            self.by_name[m.channel].put(m)
        self._timer_wake.set()

    async def _group_timer(self) -> None:
        # group_wait and group_interval in real time, between the engine's ticks.
        while True:
            due = self.router.next_due()
            delay = 60.0 if due is None else min(60.0, max(0.05, due - self.clock()))
            self._timer_wake.clear()
            try:
                await asyncio.wait_for(self._timer_wake.wait(), delay)
                continue  # something changed: look at the next due time again
            except asyncio.TimeoutError:
                pass
            try:
                self.pump()
            except Exception:  # noqa: BLE001 - the timer must survive a bad round
                log.exception("notifier group timer round failed")

    # delivery

    async def _worker(self, c: Channel) -> None:
        while True:
            while not c.queue:
                if not self._busy and not any(ch.queue for ch in self.channels):
                    self._idle.set()
                c.wake.clear()
                await c.wake.wait()
            hold = 0.0 if self._stopping else c.hold_for(self.clock())
            if hold > 0:
                # the storm limit: what arrives meanwhile joins the last message queued
                c.wake.clear()
                try:
                    await asyncio.wait_for(c.wake.wait(), hold)  # a stop wakes it early
                except asyncio.TimeoutError:
                    pass
                continue
            message = c.take()
            self._busy += 1
            try:
                await self._deliver(c, message)
            except Exception:  # noqa: BLE001 - one bad delivery must not end the channel
                log.exception("notifier %s: delivery failed unexpectedly", c.name)
            finally:
                self._busy -= 1
                if not self._busy and not any(ch.queue for ch in self.channels):
                    self._idle.set()

    async def attempt(self, c: Channel, message: Message, attempt: int = 1) -> tuple[bool, str]:
        """One delivery attempt, recorded in the delivery log and the channel's health: (ok, detail)."""
        try:
            detail, ok = await self.send(c, message), True
        except DeliveryError as exc:
            detail, ok = str(exc), False
        except ConfigError as exc:
            detail, ok = str(exc), False
        now = self.clock()
        c.record(ok, detail, now)
        if not ok:
            log.debug("notifier %s: %s message, attempt %d failed: %s", c.name, message.event, attempt, detail)
        rows = [(a.get("id"), c.name, ev, now, attempt, ok, detail) for ev, a in message.entries()]
        if not rows:
            rows = [(None, c.name, message.event, now, attempt, ok, detail)]
        try:
            await self.storage.log_notifications(rows)
        except StorageUnavailable as exc:  # the poll writer logs the outage itself, once
            log.warning("notifier %s: cannot record the delivery: %s", c.name, exc.message)
        except Exception:  # noqa: BLE001 - a full disk must not stop notifications
            log.exception("notifier %s: cannot record the delivery", c.name)
        return ok, detail

    async def _deliver(self, c: Channel, message: Message) -> bool:
        """Send with retries and backoff."""
        attempts = c.cfg.retries + 1
        for attempt in range(1, attempts + 1):
            ok, _ = await self.attempt(c, message, attempt)
            if ok:
                c.delivered += 1
                return True
            if attempt < attempts:
                await asyncio.sleep(min(c.cfg.backoff * 2 ** (attempt - 1), c.cfg.backoff_max))
        c.failed += 1
        return False

    async def send_test(self, name: str) -> dict:
        """Send a test message to one channel now (one attempt); what happened."""
        c = self.get(name)
        started = time.monotonic()
        message = Message(c.name, "test", {}, [], [], frozenset(), self.clock())
        ok, detail = await self.attempt(c, message)
        return {"name": c.name, "type": c.cfg.type, "ok": ok, "detail": detail,
                "seconds": round(time.monotonic() - started, 3)}

    async def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            # A CLI process sends a test without starting the workers.
            self.session, self._own_session = aiohttp.ClientSession(), True
        return self.session

    async def send(self, c: Channel, message: Message) -> str:
        """One delivery attempt; a short description of the answer, or DeliveryError (scrubbed of secrets)."""
        now = self.clock()
        title = messages.title(message)
        text = messages.body(message, self.zone, now)
        if c.cfg.type == "command":
            return await run_command(c.cfg.argv, message_environment(message, title, text), c.cfg.timeout)
        urls = channel_urls(c.cfg, c.key)
        secrets = secret_parts(urls)
        try:
            if c.cfg.type == "apprise":
                return await apprise_send(urls, message, title, text, c.cfg.timeout)
            headers = {"User-Agent": "central-alerts"}
            if c.cfg.token_file:
                try:
                    with open(c.cfg.token_file, encoding="utf-8") as fh:
                        token = fh.read().strip()
                except OSError as exc:
                    raise DeliveryError(f"cannot read token_file {c.cfg.token_file}: {exc.strerror}") from None
                headers["Authorization"] = "Bearer " + token
                secrets = secrets + [token] if len(token) >= 4 else secrets
            session = await self._session()
            if c.cfg.type == "alertmanager":
                url = urls[0].rstrip("/") + "/api/v2/alerts"
                if message.event == "test":
                    body: object = alertmanager_test_payload(c.name, time.time())
                else:
                    body = [e for ev, a in message.entries()
                            for e in alertmanager_payload(ev, a, time.time(), c.repeat_interval)]
            else:
                url = urls[0]
                body = webhook_body(message, now, title, text)
            return await post_json(session, url, body, headers, c.cfg.timeout)
        except DeliveryError as exc:
            raise DeliveryError(scrub(str(exc), secrets)) from None


def _load_apprise() -> None:
    import apprise

    apprise.Apprise().add("json://localhost")


_APPRISE_TYPES = {"critical": "failure", "warning": "warning", "info": "info"}


async def apprise_send(urls: Sequence[str], message: Message, title: str, text: str, timeout: float) -> str:
    """Deliver through Apprise to every URL; 'apprise: N delivered', or DeliveryError with Apprise's reason."""
    import apprise

    ap = apprise.Apprise()
    for i, url in enumerate(urls):
        if not ap.add(url):
            scheme = url.split("://", 1)[0] if "://" in url else "?"
            raise DeliveryError(f"apprise does not understand URL line {i + 1} (scheme {clean(scheme, 20)!r})")
    if message.event == "resolved" or (not message.firing and message.resolved):
        kind = "success"
    elif message.event == "test":
        kind = "info"
    else:
        worst = max((SEVERITY_RANK.get(a["severity"], 0) for a in message.firing), default=0)
        kind = _APPRISE_TYPES[SEVERITIES[worst]]
    try:
        result = await asyncio.wait_for(ap.async_notify(body=text, title=title, notify_type=kind,
                                                        body_format="text"), timeout)
    except asyncio.TimeoutError:
        raise DeliveryError(f"no answer within {timeout:g}s") from None
    if result:
        return f"apprise: {len(ap)} delivered"
    reasons = []
    for entry in getattr(result, "logs", lambda: ())():
        if entry.level in ("WARNING", "ERROR", "CRITICAL") and entry.message not in reasons:
            reasons.append(entry.message)
    detail = "; ".join(reasons)[-300:] or "the service did not accept the notification"
    raise DeliveryError(f"apprise: {' '.join(detail.split())}")


async def post_json(session: aiohttp.ClientSession, url: str, body: object, headers: dict, timeout: float) -> str:
    """POST JSON; 'HTTP <status>' on 2xx, DeliveryError otherwise."""
    try:
        async with session.post(url, json=body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            text = (await resp.content.read(500)).decode("utf-8", "replace")
            if not 200 <= resp.status < 300:
                raise DeliveryError(f"HTTP {resp.status}: {' '.join(text.split())[:200]}")
            return f"HTTP {resp.status}"
    except asyncio.TimeoutError:
        raise DeliveryError(f"no answer within {timeout:g}s") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}"[:300]) from None


async def run_command(argv: Sequence[str], alert_env: dict[str, str], timeout: float) -> str:
    """Run the notifier command (no shell) with the message in CENTRAL_* variables."""
    env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
    env.update(alert_env)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
    except OSError as exc:
        raise DeliveryError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        # Its own session: end the whole group it may have started, by the pid we know.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        raise DeliveryError(f"{argv[0]} did not finish within {timeout:g}s (killed)") from None
    text = " ".join(out.decode("utf-8", "replace").split())[-300:]
    if proc.returncode != 0:
        raise DeliveryError(f"{argv[0]} exited with {proc.returncode}: {text}")
    return f"exit 0{': ' + text if text else ''}"


def check_channels(notifiers: Sequence[NotifierConfig], env: Mapping[str, str] | None = None) -> None:
    """Before serving: every channel's URL can be read (and Apprise understands it); ConfigError naming the key."""
    for i, cfg in enumerate(notifiers):
        if cfg.type == "command":
            continue
        key = notifier_key(i, cfg)
        urls = channel_urls(cfg, key, env)
        if cfg.type == "apprise":
            import apprise

            for n, url in enumerate(urls):
                if not apprise.Apprise().add(url):
                    scheme = url.split("://", 1)[0] if "://" in url else "?"
                    raise ConfigError(f"{key}.{_source_key(cfg)}: URL line {n + 1} is not one Apprise understands "
                                      f"(scheme {clean(scheme, 20)!r}; see Apprise's list of services)")
