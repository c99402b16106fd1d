"""Notification channels: a generic webhook, Alertmanager, and a local command.

The alert engine calls `Dispatcher.notify(event, alert)`, which only appends to each
channel's bounded queue and returns: a slow or dead channel never holds up the poller.
Each channel has its own worker task that delivers with a timeout, retries with exponential
backoff, and records every attempt in the notifications table. When a queue is full the
oldest entry is dropped and counted (and logged).
"""
from __future__ import annotations

import asyncio
import collections
import datetime
import json
import logging
import os
import signal
import time
from typing import Callable, Sequence

import aiohttp

from .config import SEVERITIES, NotifierConfig
from .storage import Storage

log = logging.getLogger(__name__)

SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
DEFAULT_REPEAT = 4 * 3600.0
ALERTMANAGER_REPEAT = 60.0
# Environment a command notifier inherits from the central; nothing else leaks (tokens, config).
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
_ALERT_ENV_FIELDS = ("id", "rule", "server", "host", "label", "severity", "state", "summary", "value",
                     "started_at", "fired_at", "resolved_at", "acked_by", "url")


class DeliveryError(Exception):
    """A channel did not take a notification (the message says why, in one line)."""


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def webhook_body(event: str, alert: dict, channel: str, now: float) -> dict:
    """The JSON a webhook receives."""
    return {"version": 1, "channel": channel, "event": event, "sent_at": now, "alert": alert}


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


def alert_environment(event: str, alert: dict) -> dict[str, str]:
    """CENTRAL_ALERT_* variables for a command notifier (values verbatim, NUL bytes removed)."""
    env = {"CENTRAL_ALERT_EVENT": event}
    for name in _ALERT_ENV_FIELDS:
        value = alert.get(name)
        env["CENTRAL_ALERT_" + name.upper()] = "" if value is None else str(value)
    env["CENTRAL_ALERT_TAGS"] = ",".join(alert.get("tags") or ())
    env["CENTRAL_ALERT_JSON"] = json.dumps(alert, sort_keys=True, default=str)
    return {k: v.replace("\0", "") for k, v in env.items()}


class Channel:
    """One configured notifier: its filter, queue, worker and repeat bookkeeping."""

    def __init__(self, cfg: NotifierConfig, queue_size: int):
        self.cfg = cfg
        self.name = cfg.name
        default = ALERTMANAGER_REPEAT if cfg.type == "alertmanager" else DEFAULT_REPEAT
        self.repeat_interval = default if cfg.repeat_interval is None else cfg.repeat_interval
        # Alertmanager needs re-sends to keep an alert active, acknowledged or silenced here or not.
        self.keepalive = cfg.type == "alertmanager"
        self.queue: collections.deque = collections.deque()
        self.queue_size = queue_size
        self.wake = asyncio.Event()
        self.last_sent: dict[int, float] = {}
        self.dropped = 0
        self.delivered = 0
        self.failed = 0
        self.task: asyncio.Task | None = None

    def accepts(self, event: str, severity: str) -> bool:
        """Whether this channel wants this event of this severity."""
        if event == "resolved" and not self.cfg.send_resolved:
            return False
        if self.cfg.severities:
            return severity in self.cfg.severities
        return SEVERITY_RANK.get(severity, 0) >= SEVERITY_RANK[self.cfg.min_severity]

    def put(self, event: str, alert: dict) -> None:
        """Queue without waiting; the oldest entry goes when full."""
        if len(self.queue) >= self.queue_size:
            self.queue.popleft()
            self.dropped += 1
            log.warning("notifier %s: queue full (%d), dropped the oldest notification (%d dropped so far)",
                        self.name, self.queue_size, self.dropped)
        self.queue.append((event, alert))
        self.wake.set()


class Dispatcher:
    """Fans alert events out to the configured channels; owns the HTTP session and the workers."""

    def __init__(self, storage: Storage, notifiers: Sequence[NotifierConfig], *, queue_size: int = 1000,
                 clock: Callable[[], float] = time.time):
        self.storage = storage
        self.clock = clock
        self.channels = [Channel(cfg, queue_size) for cfg in notifiers]
        self.session: aiohttp.ClientSession | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0

    @property
    def dropped(self) -> int:
        """Notifications dropped because a channel's queue overflowed."""
        return sum(c.dropped for c in self.channels)

    async def start(self) -> None:
        """Load when each open alert was last sent, open the HTTP session and start the workers."""
        if not self.channels or self.session is not None:
            return
        by_name = {c.name: c for c in self.channels}
        for (alert_id, channel), ts in (await self.storage.last_sent()).items():
            if channel in by_name:
                by_name[channel].last_sent[alert_id] = ts
        self.session = aiohttp.ClientSession()
        for c in self.channels:
            c.task = asyncio.create_task(self._worker(c), name=f"notifier-{c.name}")

    async def stop(self, drain: float = 2.0) -> None:
        """Give queued notifications a moment to go out, then stop the workers."""
        if self.session is None:
            return
        try:
            await asyncio.wait_for(self.wait_idle(), drain)
        except asyncio.TimeoutError:
            log.warning("notifiers: stopping with %d notifications undelivered", sum(len(c.queue) for c in self.channels))
        tasks = [c.task for c in self.channels if c.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.session.close()
        self.session = None

    async def wait_idle(self) -> None:
        """Until every queue is empty and no delivery is in progress."""
        while self._busy or any(c.queue for c in self.channels):
            self._idle.clear()
            await self._idle.wait()

    def notify(self, event: str, alert: dict) -> None:
        """Queue a firing/resolved/repeat notification to every channel that wants it; never blocks."""
        now = self.clock()
        for c in self.channels:
            if not c.accepts(event, alert["severity"]):
                continue
            if event == "resolved":
                c.last_sent.pop(alert["id"], None)
            else:
                c.last_sent[alert["id"]] = now
            c.put(event, alert)

    def remind(self, alerts: Sequence[tuple[dict, bool, bool]], now: float) -> None:
        """Re-send firing alerts whose repeat interval passed: [(alert, acknowledged, muted)]."""
        for c in self.channels:
            if c.repeat_interval <= 0:
                continue
            for alert, acked, muted in alerts:
                if (acked or muted) and not c.keepalive:
                    continue
                if not c.accepts("repeat", alert["severity"]):
                    continue
                if now - c.last_sent.get(alert["id"], 0.0) >= c.repeat_interval:
                    c.last_sent[alert["id"]] = now
                    c.put("repeat", alert)

    async def _worker(self, c: Channel) -> None:
        while True:
            while not c.queue:
                self._idle.set()
                c.wake.clear()
                await c.wake.wait()
            event, alert = c.queue.popleft()
            self._busy += 1
            try:
                await self._deliver(c, event, alert)
            except Exception:  # noqa: BLE001 - one bad delivery must not end the channel
                log.exception("notifier %s: delivery failed unexpectedly", c.name)
            finally:
                self._busy -= 1

    async def _deliver(self, c: Channel, event: str, alert: dict) -> bool:
        """Send with retries and backoff; every attempt goes to the delivery log."""
        attempts = c.cfg.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                detail = await self.send(c, event, alert)
                ok = True
            except DeliveryError as exc:
                detail, ok = str(exc), False
            try:
                await self.storage.log_notification(alert.get("id"), c.name, event, self.clock(), attempt, ok, detail)
            except Exception:  # noqa: BLE001 - a full disk must not stop notifications
                log.exception("notifier %s: cannot record the delivery", c.name)
            if ok:
                c.delivered += 1
                return True
            log.warning("notifier %s: %s of alert %s, attempt %d/%d failed: %s", c.name, event, alert.get("id"),
                        attempt, attempts, detail)
            if attempt < attempts:
                await asyncio.sleep(min(c.cfg.backoff * 2 ** (attempt - 1), c.cfg.backoff_max))
        c.failed += 1
        return False

    async def send(self, c: Channel, event: str, alert: dict) -> str:
        """One delivery attempt; a short description of the answer, or DeliveryError."""
        if c.cfg.type == "command":
            return await run_command(c.cfg.argv, event, alert, c.cfg.timeout)
        if c.cfg.type == "alertmanager":
            url = c.cfg.url.rstrip("/") + "/api/v2/alerts"
            body = alertmanager_payload(event, alert, time.time(), c.repeat_interval)
        else:
            url = c.cfg.url
            body = webhook_body(event, alert, c.name, self.clock())
        headers = {"User-Agent": "central-alerts"}
        if c.cfg.token_file:
            try:
                with open(c.cfg.token_file, encoding="utf-8") as fh:
                    headers["Authorization"] = "Bearer " + fh.read().strip()
            except OSError as exc:
                raise DeliveryError(f"cannot read token_file {c.cfg.token_file}: {exc.strerror}") from None
        return await post_json(self.session, url, body, headers, c.cfg.timeout)


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


async def run_command(argv: Sequence[str], event: str, alert: dict, timeout: float) -> str:
    """Run the notifier command (no shell) with the alert in CENTRAL_ALERT_* variables."""
    env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
    env.update(alert_environment(event, alert))
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
