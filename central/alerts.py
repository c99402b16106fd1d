"""Alert rules and their state per (rule, server, label), silences, and the evaluation hook.

Prometheus semantics, kept in memory: a condition that holds makes an alert *pending*; once
it has held for `for` it is *firing* (notify); when it stops holding, the alert stays firing
for `keep_firing_for` (against flapping) and is then *resolved* (notify again if the firing
was notified). One open alert per (rule, server, label). The state lives in memory, loaded
from the alerts table at start; only state changes are written (one transaction per batch),
plus a periodic flush of the latest values of open alerts.

Evaluation plugs into the poller (`poller.hooks.append(engine.on_batch)`) and costs a few
dictionary lookups per poll; a timer (`tick`) handles what happens without a poll: the end
of keep_firing_for, silences starting and ending, repeats. The time source is injectable.
"""
from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import getpass
import logging
import operator
import re
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from .config import SEVERITIES, AlertRule, AlertsConfig, Config
from .model import (
    ALERT_METRICS, BUILTIN_RULES, CONTAINER_METRICS, CONTAINER_RUNNING_STATES, INVENTORY_RULE, METRICS, POLL_METRICS,
    REASONS, STORAGE_RULE, Conflict, Invalid, NotFound, PollOutcome, Server, StorageUnavailable,
)
from .muting import (BUILTIN_INHIBIT, Inhibitor, Window, bastion_inhibited, bastions_down,  # noqa: F401
                     silence_matches)  # silence_matches re-exported
from .storage import Storage

if TYPE_CHECKING:
    from .service import Central

log = logging.getLogger(__name__)

PENDING, FIRING, RESOLVED = "pending", "firing", "resolved"
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
# Poll failure reason -> the poll.* metric counting it (consecutive polls failing that way).
POLL_GROUPS = {r.name: r.alert_metric for r in REASONS.values()}
_POLL_METRICS = POLL_METRICS
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_ACTIVE_UNIT_STATES = ("active", "reloading")
# container.<figure> alert metric -> its index in a facts["containers"] entry (after state, health, restarts)
_CONTAINER_INDEX = {m.alert: 3 + i for i, m in enumerate(CONTAINER_METRICS.values())}


def builtin_rules(cfg: AlertsConfig) -> list[AlertRule]:
    """The built-in rules (central.model.BUILTIN_RULES) with the thresholds and timings from [alerts] (minus `disabled`)."""
    def setting(value: float | str) -> float:
        return float(getattr(cfg, value) if isinstance(value, str) else value)

    return [AlertRule(b.name, b.metric, b.op, setting(b.threshold), setting(b.for_),
                      cfg.keep_firing_for if b.keep_firing else 0.0, b.severity, summary=b.summary)
            for b in BUILTIN_RULES.values() if b.name not in cfg.disabled]


def _globs_match(patterns: Sequence[str], value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def server_matches(server_patterns: Sequence[str], tag_patterns: Sequence[str], name: str,
                   tags: Sequence[str]) -> bool:
    """Whether a server is selected: name matches a server glob and a tag matches a tag glob (empty: any)."""
    if server_patterns and not _globs_match(server_patterns, name):
        return False
    if tag_patterns and not any(_globs_match(tag_patterns, t) for t in tags):
        return False
    return True


def _apply(rule: AlertRule, over) -> AlertRule | None:
    if not over.enabled:
        return None
    changes = {k: getattr(over, k) for k in ("threshold", "for_", "keep_firing_for") if getattr(over, k) is not None}
    if over.severity:
        changes["severity"] = over.severity
    return dataclasses.replace(rule, **changes) if changes else rule


@dataclass
class ServerRules:
    """The rules in force on one server: overrides by server/tag applied, label overrides kept apart."""

    rules: list[AlertRule]
    label_overrides: dict[str, list] = field(default_factory=dict)  # rule name -> overrides with labels

    def for_label(self, rule: AlertRule, label: str) -> AlertRule | None:
        """The rule as it applies to one label (None: disabled there or not selected)."""
        if rule.labels and not _globs_match(rule.labels, label):
            return None
        for over in self.label_overrides.get(rule.name, ()):
            if _globs_match(over.labels, label):
                rule = _apply(rule, over)
                if rule is None:
                    return None
        return rule


def rules_for_server(rules: Sequence[AlertRule], overrides: Sequence, name: str, tags: Sequence[str]) -> ServerRules:
    """Select the rules for a server and apply its overrides (later overrides win)."""
    out = ServerRules([])
    for rule in rules:
        if not rule.enabled or not server_matches(rule.servers, rule.tags, name, tags):
            continue
        current: AlertRule | None = rule
        for over in overrides:
            if not fnmatch.fnmatchcase(rule.name, over.rule):
                continue
            if not server_matches(over.servers, over.tags, name, tags):
                continue
            if over.labels:
                out.label_overrides.setdefault(rule.name, []).append(over)
                continue
            current = _apply(current, over)
            if current is None:
                break
        if current is not None:
            out.rules.append(current)
    return out


def render_summary(template: str, values: dict) -> str:
    """Fill {server} {label} {value} {threshold} ... into a rule's text; unknown names stay as they are."""
    def sub(m: re.Match) -> str:
        v = values.get(m.group(1))
        if v is None:
            return m.group(0) if m.group(1) not in values else "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return _PLACEHOLDER.sub(sub, template)[:1000]


def default_summary(rule: AlertRule, label: str) -> str:
    """Generated text for a rule without its own summary."""
    where = " {label}" if label else ""
    return f"{rule.metric}{where} on {{server}} is {{value}} ({rule.op} {{threshold}})"


@dataclass
class AlertState:
    """An open alert in memory (pending or firing) and what is needed to move it on."""

    rule: str
    server_id: int
    label: str
    state: str
    severity: str
    summary: str
    started_at: float
    last_evaluated: float
    value: float | None = None
    id: int | None = None
    fired_at: float | None = None
    cleared_at: float | None = None
    resolved_at: float | None = None
    last_notified: float | None = None  # set once the firing notification went out
    keep_firing_for: float = 0.0
    expires_at: float | None = None  # inventory changes resolve by themselves
    acked_by: str | None = None
    details: dict = field(default_factory=dict)
    removed: bool = False  # pending that never fired: the row is deleted

    @property
    def key(self) -> tuple[str, int, str]:
        """(rule, server id, label): at most one open alert per key."""
        return (self.rule, self.server_id, self.label)

    def row(self) -> dict:
        """The alerts table columns."""
        return {
            "id": self.id, "rule": self.rule, "server_id": self.server_id, "label": self.label,
            "severity": self.severity, "state": self.state, "summary": self.summary, "value": self.value,
            "started_at": self.started_at, "fired_at": self.fired_at, "last_evaluated": self.last_evaluated,
            "cleared_at": self.cleared_at, "resolved_at": self.resolved_at, "last_notified": self.last_notified,
            "details": {**self.details, "keep_firing_for": self.keep_firing_for, "expires_at": self.expires_at},
        }

    @classmethod
    def from_row(cls, row: dict) -> "AlertState":
        """Rebuild from an alerts table row."""
        details = dict(row.get("details") or {})
        return cls(
            rule=row["rule"], server_id=row["server_id"], label=row["label"], state=row["state"],
            severity=row["severity"], summary=row["summary"], started_at=row["started_at"],
            last_evaluated=row["last_evaluated"], value=row["value"], id=row["id"], fired_at=row["fired_at"],
            cleared_at=row["cleared_at"], last_notified=row["last_notified"],
            keep_firing_for=details.pop("keep_firing_for", 0.0) or 0.0, expires_at=details.pop("expires_at", None),
            acked_by=row.get("acked_by"), details=details,
        )

    def observe(self, value: float | None) -> None:
        """Remember a value seen while open: first, min, max and last."""
        if value is None:
            return
        self.value = value
        d = self.details
        d.setdefault("first", value)
        d["min"] = value if d.get("min") is None else min(d["min"], value)
        d["max"] = value if d.get("max") is None else max(d["max"], value)


class AlertEngine:
    """Evaluates rules on each stored poll batch and hands state changes to the notifier."""

    def __init__(self, config: Config, storage: Storage, notifier=None, clock: Callable[[], float] = time.time):
        self.config = config
        self.cfg = config.alerts
        self.storage = storage
        self.notifier = notifier  # object with notify(event, alert) and remind(alerts, now); None: no notifications
        self.clock = clock
        self.rules = builtin_rules(self.cfg) + list(self.cfg.rules)
        self.states: dict[tuple[str, int, str], AlertState] = {}
        # Several centrals (central.cluster): whether this central owns (polls) a server, whose
        # alerts it then evaluates and notifies alone; None: it owns every server.
        self.owns: Callable[[int], bool] | None = None
        self.by_server: dict[int, dict[tuple[str, int, str], AlertState]] = {}
        self.servers: dict[int, Server] = {}
        self.silences: list[dict] = []
        self.windows = [Window(w) for w in self.cfg.maintenance]
        self.inhibitor = Inhibitor(((BUILTIN_INHIBIT,) if self.cfg.builtin_inhibit else ()) + tuple(self.cfg.inhibit))
        # Bumped whenever an alert starts or stops firing: the inhibition index is rebuilt then.
        self._version = 0
        self._inhibit_index: tuple[int, list, frozenset] | None = None
        self.evaluations = 0
        self._rules_cache: dict[tuple[str, tuple[str, ...]], ServerRules] = {}
        self._streaks: dict[int, dict[str, int]] = {}
        self._net_prev: dict[int, tuple[float, dict]] = {}
        # per server: containers seen running (container_stopped alerts only on those) and each
        # container's previous restart count (container.restarts is the increase)
        self._containers_running: dict[int, set] = {}
        self._restarts_prev: dict[int, dict] = {}
        self._errors: dict[int, str] = {}
        # Changed states by identity: an alert may resolve and a new one open for its key in one round.
        self._dirty: dict[int, AlertState] = {}
        self._events: list[tuple[str, AlertState]] = []
        self._lock = asyncio.Lock()
        self._inventory_after = 0
        self._started = False
        self._task: asyncio.Task | None = None
        self._last_flush = 0.0
        if notifier is not None and hasattr(notifier, "attach"):
            notifier.attach(self.alert_flags)

    def reconfigure(self, config: Config, notifier=None) -> None:
        """Take the rules, windows, inhibit rules (and a new notifier) of a reloaded config.
        Open alerts are kept: one of a rule that is gone resolves at the next evaluation of
        its server as any alert whose condition no longer holds."""
        self.config = config
        self.cfg = config.alerts
        self.rules = builtin_rules(self.cfg) + list(self.cfg.rules)
        self.windows = [Window(w) for w in self.cfg.maintenance]
        self.inhibitor = Inhibitor(((BUILTIN_INHIBIT,) if self.cfg.builtin_inhibit else ()) + tuple(self.cfg.inhibit))
        self._rules_cache.clear()
        self._inhibit_index = None
        self._version += 1
        if notifier is not None:
            self.notifier = notifier
            if hasattr(notifier, "attach"):
                notifier.attach(self.alert_flags)

    # lifecycle

    async def start(self, run_timer: bool = True) -> None:
        """Load open alerts, silences and servers from the database; start the timer."""
        if self._started:
            return
        self._started = True
        for row in await self.storage.open_alerts():
            st = AlertState.from_row(row)
            if self._owned(st.server_id):
                self._put(st)
        for server in await self.storage.list_servers():
            self.servers[server.id] = server
            group = POLL_GROUPS.get(server.status_reason or "")
            if group and server.consecutive_failures:
                self._streaks[server.id] = {group: server.consecutive_failures}
        self._inventory_after = await self.storage.last_inventory_change_id()
        await self._refresh_from_db(self.clock())
        self._last_flush = self.clock()
        if self.notifier is not None and hasattr(self.notifier, "start"):
            await self.notifier.start(run_timer=run_timer)
        if run_timer and self.cfg.enabled:
            self._task = asyncio.create_task(self._timer(), name="alerts-timer")

    async def stop(self) -> None:
        """Stop the timer and write the latest values of open alerts."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._started:
            async with self._lock:
                self._dirty.update({id(s): s for s in self.states.values() if s.id is not None})
                await self._flush()

    async def _timer(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.tick_interval)
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - the timer must survive a bad round
                log.exception("alert timer round failed")

    # several centrals

    def _owned(self, server_id: int | None) -> bool:
        return self.owns is None or server_id is None or self.owns(server_id)

    async def adopt(self, gained: set[int], lost: set[int]) -> None:
        """Ownership moved (central.cluster.Membership listener): write and forget the open alerts
        of servers another central polls now; take over the open alerts of servers gained, as
        their last owner stored them (fired and notified ones stay notified: no second firing
        message; the one resolved message comes from whoever owns the server then)."""
        if not self._started:
            return  # start() loads the owned ones
        async with self._lock:
            if lost:
                try:
                    await self._flush()
                except Exception as exc:  # noqa: BLE001 - the new owner reads what was stored before
                    log.warning("cluster: alert states of servers handed over not written: %s", exc)
                for st in [st for st in self.states.values() if st.server_id in lost]:
                    self._drop(st)
            if gained:
                adopted = set()
                for row in await self.storage.open_alerts():
                    st = AlertState.from_row(row)
                    if st.server_id in gained and st.key not in self.states:
                        self._put(st)
                        adopted.add(st.id)
                if adopted and self.notifier is not None and hasattr(self.notifier, "adopt"):
                    await self.notifier.adopt(adopted)

    # state bookkeeping

    def _put(self, st: AlertState) -> None:
        self._version += 1
        self.states[st.key] = st
        self.by_server.setdefault(st.server_id, {})[st.key] = st

    def _drop(self, st: AlertState) -> None:
        self._version += 1
        self.states.pop(st.key, None)
        per = self.by_server.get(st.server_id)
        if per is not None:
            per.pop(st.key, None)
            if not per:
                del self.by_server[st.server_id]

    def _server_rules(self, server: Server) -> ServerRules:
        key = (server.name, server.tags)
        rules = self._rules_cache.get(key)
        if rules is None:
            if len(self._rules_cache) > 100_000:
                self._rules_cache.clear()
            rules = rules_for_server(self.rules, self.cfg.overrides, server.name, server.tags)
            self._rules_cache[key] = rules
        return rules

    # evaluation

    async def on_batch(self, outcomes: Sequence[PollOutcome], servers_by_id: dict) -> None:
        """Poller hook: evaluate every outcome of a stored batch, write state changes, notify."""
        if not self.cfg.enabled:
            return
        if not self._started:
            await self.start()
            for o in outcomes:
                # The stored failure counts already include this batch, which is evaluated next.
                streaks = self._streaks.get(o.server_id, {})
                for metric in streaks:
                    streaks[metric] = max(0, streaks[metric] - 1)
        async with self._lock:
            now = self.clock()
            inventory = False
            for outcome in outcomes:
                server = servers_by_id.get(outcome.server_id) or self.servers.get(outcome.server_id)
                if server is None:
                    continue
                self.servers[server.id] = server
                self._evaluate(outcome, server, now)
                inventory = inventory or "inventory" in outcome.extra
            if inventory and INVENTORY_RULE not in self.cfg.disabled:
                await self._inventory_changes(now)
            await self._flush()

    def _evaluate(self, outcome: PollOutcome, server: Server, now: float) -> None:
        """Move every rule's state for one server on by one poll outcome."""
        self.evaluations += 1
        streaks = self._streaks.setdefault(server.id, {})
        group = None if outcome.ok else POLL_GROUPS.get(outcome.reason or "")
        for metric in _POLL_METRICS:
            streaks[metric] = streaks.get(metric, 0) + 1 if metric == group else 0
        if not outcome.ok:
            self._errors[server.id] = (outcome.error or outcome.reason or "")[:300]
        facts = outcome.extra.get("facts") if outcome.ok else None
        if outcome.ok and facts is None and outcome.doc_text:
            facts = _facts_from_text(outcome.doc_text)
        rules = self._server_rules(server)
        seen: set = set()
        cache: dict = {}
        for rule in rules.rules:
            if rule.metric in _POLL_METRICS:
                values = [("", float(streaks[rule.metric]), None)]
            elif not outcome.ok:
                # No document: keep what is known (a disk alert stays as it was while the host is away).
                seen.update(k for k in self.by_server.get(server.id, {}) if k[0] == rule.name)
                continue
            else:
                values = self._metric_values(rule.metric, server.id, outcome, facts or {}, cache)
            for label, value, text in values:
                eff = rules.for_label(rule, label)
                if eff is None:
                    continue
                key = (rule.name, server.id, label)
                seen.add(key)
                if value is None:
                    continue
                holds = OPS[eff.op](value, eff.threshold)
                self._step(key, eff, holds, value, now, server, text)
        for key, st in list(self.by_server.get(server.id, {}).items()):
            if key not in seen and st.rule != INVENTORY_RULE:
                # The series is gone (unmounted, unit no longer watched, rule changed): it no longer holds.
                self._clear(st, now, keep=0.0)

    def _metric_values(self, metric: str, server_id: int, outcome: PollOutcome, facts: dict,
                       cache: dict) -> list[tuple[str, float | None, str | None]]:
        """[(label, value, text)] of a metric in one poll."""
        simple = cache.get("simple")
        if simple is None:
            simple = cache["simple"] = _simple_values(outcome.sample or {}, facts)
        if metric in simple:
            v = simple[metric]
            return [("", None if v is None else float(v), None)]
        return self._labelled_values(metric, server_id, outcome, facts, cache)

    def _labelled_values(self, metric: str, server_id: int, outcome: PollOutcome, facts: dict,
                         cache: dict) -> list[tuple[str, float | None, str | None]]:
        """Metrics with one value per mount, interface, unit or process name."""
        if metric == "disk.percent":
            return [(fs[0], fs[1], None) for fs in facts.get("filesystems", ())]
        if metric == "inode.percent":
            return [(fs[0], fs[2], None) for fs in facts.get("filesystems", ())]
        if metric == "systemd.unit_active":
            return [(unit, 1.0 if state in _ACTIVE_UNIT_STATES else 0.0, state or "unknown")
                    for unit, state in facts.get("units", {}).items()]
        if metric == "process.watched":
            return [(name, count, None) for name, count in facts.get("watched_processes", {}).items()]
        if metric == "sensor.over_critical":
            return [(label, round(c - crit, 1), None) for label, c, crit in facts.get("sensors", ())
                    if c is not None and crit is not None]
        if metric == "smart.failing":
            return [(dev, 1.0 if passed is False else 0.0, None) for dev, passed in facts.get("smart", {}).items()
                    if passed is not None]
        if metric.startswith("container."):
            return self._container_values(metric, server_id, facts, cache)
        if metric in ("network.errors", "network.drops"):
            if "net" not in cache:
                cache["net"] = self._network_rates(server_id, outcome.ts, facts)
            i = 0 if metric == "network.errors" else 1
            return [(name, rates[i], None) for name, rates in cache["net"].items()]
        return []

    def _container_values(self, metric: str, server_id: int, facts: dict,
                          cache: dict) -> list[tuple[str, float | None, str | None]]:
        """Per-container metrics, labelled with the container's name (the rule's labels select names)."""
        containers = facts.get("containers") or {}
        if "container_restarts" not in cache:
            # once per poll, whichever rule asks first: the state both restart and stop rules read
            prev = self._restarts_prev.get(server_id, {})
            now = {name: c[2] for name, c in containers.items()}
            self._restarts_prev[server_id] = now
            running = self._containers_running.setdefault(server_id, set())
            running.intersection_update(containers)  # a removed container is no longer tracked
            running.update(name for name, c in containers.items() if c[0] in CONTAINER_RUNNING_STATES)
            restarts = {}
            for name, c in containers.items():
                before = prev.get(name)
                more = max(0.0, now[name] - before) if now[name] is not None and before is not None else 0.0
                # a container caught in its restart loop counts even when the count is unknown (LXC)
                restarts[name] = max(more, 1.0) if c[0] == "restarting" else more
            cache["container_restarts"] = restarts
        if metric == "container.running":
            running = self._containers_running.get(server_id, set())
            return [(name, 1.0 if c[0] in CONTAINER_RUNNING_STATES else 0.0, c[0] or "unknown")
                    for name, c in containers.items() if name in running]
        if metric == "container.healthy":
            return [(name, 0.0 if c[1] == "unhealthy" else 1.0, c[1]) for name, c in containers.items()
                    if c[1] is not None]
        if metric == "container.restarts":
            return [(name, value, containers[name][0]) for name, value in cache["container_restarts"].items()]
        index = _CONTAINER_INDEX.get(metric)
        if index is None:
            return []
        return [(name, c[index], c[0]) for name, c in containers.items() if c[0] in CONTAINER_RUNNING_STATES]

    def _network_rates(self, server_id: int, ts: float, facts: dict) -> dict[str, tuple]:
        """{interface: (errors/s, drops/s)} since this server's previous poll (None on the first, or after a reset)."""
        now = {}
        for name, rx_e, tx_e, rx_d, tx_d in facts.get("interfaces", ()):
            errors = None if rx_e is None or tx_e is None else rx_e + tx_e
            drops = None if rx_d is None or tx_d is None else rx_d + tx_d
            now[name] = (errors, drops)
        prev = self._net_prev.get(server_id)
        self._net_prev[server_id] = (ts, now)
        out = {}
        for name, counters in now.items():
            rates: list = [None, None]
            if prev is not None and ts > prev[0] and name in prev[1]:
                for i in (0, 1):
                    a, b = prev[1][name][i], counters[i]
                    if a is not None and b is not None and b >= a:
                        rates[i] = (b - a) / (ts - prev[0])
            out[name] = tuple(rates)
        return out

    def _step(self, key: tuple, rule: AlertRule, holds: bool, value: float, now: float, server: Server,
              text: str | None) -> None:
        """One evaluation of one (rule, server, label)."""
        st = self.states.get(key)
        if not holds:
            if st is not None:
                st.last_evaluated = now
                st.observe(value)
                self._clear(st, now, keep=rule.keep_firing_for)
            return
        summary = render_summary(rule.summary or default_summary(rule, key[2]), {
            "server": server.name, "label": key[2], "value": value, "threshold": rule.threshold,
            "metric": rule.metric, "state": text, "error": self._errors.get(server.id, ""),
        })
        if st is None:
            st = AlertState(rule=rule.name, server_id=server.id, label=key[2], state=PENDING,
                            severity=rule.severity, summary=summary, started_at=now, last_evaluated=now,
                            details={"metric": rule.metric, "op": rule.op, "threshold": rule.threshold})
            self._put(st)
            self._dirty[id(st)] = st
        st.last_evaluated = now
        st.observe(value)
        st.keep_firing_for = rule.keep_firing_for
        if text is not None:
            st.details["state"] = text
        if st.summary != summary or st.severity != rule.severity:
            st.summary, st.severity = summary, rule.severity
        if st.state == PENDING and now - st.started_at >= rule.for_:
            st.state, st.fired_at = FIRING, now
            self._version += 1
            self._dirty[id(st)] = st
            self._events.append(("firing", st))
        elif st.state == FIRING and st.cleared_at is not None:
            st.cleared_at = None  # holds again within keep_firing_for: stays firing, nothing sent

    def _clear(self, st: AlertState, now: float, keep: float) -> None:
        """The condition no longer holds: drop a pending alert, resolve a firing one after keep_firing_for."""
        if st.state == PENDING:
            st.removed = True
            self._drop(st)
            self._dirty[id(st)] = st
            return
        if st.cleared_at is None:
            st.cleared_at = now
        if now - st.cleared_at >= keep:
            self._resolve(st, now)

    def _resolve(self, st: AlertState, now: float) -> None:
        st.state, st.resolved_at = RESOLVED, now
        self._drop(st)
        self._dirty[id(st)] = st
        if st.last_notified is not None:
            self._events.append(("resolved", st))

    async def _inventory_changes(self, now: float) -> None:
        """Open an info alert per inventory change the poller recorded since the last look."""
        for change in await self.storage.inventory_changes_since(self._inventory_after):
            self._inventory_after = change["id"]
            server = self.servers.get(change["server_id"])
            if server is None or not self._owned(server.id):
                continue
            rule = AlertRule(INVENTORY_RULE, "inventory", "!=", 0.0, 0.0, 0.0, "info")
            for over in self.cfg.overrides:
                if fnmatch.fnmatchcase(INVENTORY_RULE, over.rule) and server_matches(over.servers, over.tags,
                                                                                   server.name, server.tags):
                    rule = _apply(rule, over)
                    if rule is None:
                        break
            if rule is None:
                continue
            key = (INVENTORY_RULE, server.id, change["change_type"])
            summary = f"{server.name}: inventory changed ({change['change_type'].replace('_', ' ')}): {change['change_summary']}"[:1000]
            st = self.states.get(key)
            if st is None:
                st = AlertState(rule=INVENTORY_RULE, server_id=server.id, label=key[2], state=FIRING,
                                severity=rule.severity, summary=summary, started_at=now, last_evaluated=now,
                                fired_at=now, details={"changes": []})
                self._put(st)
                self._events.append(("firing", st))
            st.summary, st.last_evaluated = summary, now
            st.expires_at = now + self.cfg.inventory_alert_for
            st.details.setdefault("changes", []).append(change["id"])
            del st.details["changes"][:-20]
            self._dirty[id(st)] = st

    async def storage_health(self, health) -> None:
        """Writer listener (central.writer.StorageHealth): the critical storage_failing alert fires
        while the database cannot be written and resolves when it can."""
        if not self.cfg.enabled or STORAGE_RULE in self.cfg.disabled:
            return
        if not self._started:
            await self.start()
        async with self._lock:
            now = self.clock()
            key = (STORAGE_RULE, None, "")
            st = self.states.get(key)
            if not health.ok:
                summary = (f"the central cannot write its database: {health.reason}; poll outcomes wait in "
                           f"memory until it can")[:1000]
                if st is None:
                    st = AlertState(rule=STORAGE_RULE, server_id=None, label="", state=FIRING, severity="critical",
                                    summary=summary, started_at=now, last_evaluated=now, fired_at=now,
                                    details={"since": health.since})
                    self._put(st)
                    self._events.append(("firing", st))
                st.summary, st.last_evaluated = summary, now
                self._dirty[id(st)] = st
            elif st is not None:
                st.last_evaluated = now
                self._resolve(st, now)
            await self._flush()

    # timers

    async def tick(self) -> None:
        """Timed transitions: keep_firing_for ends, inventory alerts expire, silences change, repeats."""
        if not self._started:
            await self.start(run_timer=False)
        async with self._lock:
            now = self.clock()
            await self._refresh_from_db(now)
            for st in list(self.states.values()):
                if st.state != FIRING:
                    continue
                if st.expires_at is not None and now >= st.expires_at:
                    self._resolve(st, now)
                elif st.cleared_at is not None and now - st.cleared_at >= st.keep_firing_for:
                    self._resolve(st, now)
                elif st.last_notified is None and not self.muted(st, now):
                    self._events.append(("firing", st))  # a silence ended while it fired
            if now - self._last_flush >= max(60.0, self.cfg.tick_interval):
                # The latest values and evaluation times of open alerts, once a minute rather than per poll.
                self._dirty.update({id(s): s for s in self.states.values() if s.id is not None})
            await self._flush()
            if self.notifier is not None:
                reminders = [(self.snapshot(st), st.acked_by is not None, self.muted(st, now))
                             for st in self.states.values() if st.state == FIRING and st.last_notified is not None]
                self.notifier.remind(reminders, now)

    async def _refresh_from_db(self, now: float) -> None:
        """Silences and acknowledgements may come from another process (the CLI)."""
        self.silences = await self.storage.list_silences(active_at=now, limit=10_000)
        acked = await self.storage.acked_open_alerts()
        for st in self.states.values():
            st.acked_by = acked.get(st.id)

    def labels(self, st: AlertState) -> dict:
        """What routes, inhibit rules and windows match on: rule, server, severity, label, tags."""
        server = self.servers.get(st.server_id)
        bastion = self.servers.get(server.via) if server is not None and server.via is not None else None
        return {"rule": st.rule, "server": server.name if server else None, "severity": st.severity,
                "label": st.label, "tags": server.tags if server else (), "via": bastion.name if bastion else None}

    def inhibited(self, st: AlertState) -> bool:
        """Whether a firing source alert (e.g. the server is unreachable, or its bastion) mutes this one."""
        if not self.inhibitor.rules:
            return False
        if self._inhibit_index is None or self._inhibit_index[0] != self._version:
            firing = [self.labels(s) for s in self.states.values() if s.state == FIRING]
            self._inhibit_index = (self._version, self.inhibitor.index(firing), bastions_down(firing))
        labels = self.labels(st)
        if self.cfg.builtin_inhibit and bastion_inhibited(labels, self._inhibit_index[2]):
            return True
        return self.inhibitor.inhibited(labels, self._inhibit_index[1])

    def muted(self, st: AlertState, now: float) -> bool:
        """Whether a silence, a maintenance window or an inhibit rule holds this alert's notifications back."""
        if self.silences or self.windows:
            server = self.servers.get(st.server_id)
            name, tags = (server.name, server.tags) if server else (None, ())
            if any(s["starts_at"] <= now < s["ends_at"] and silence_matches(s["matcher"], st.rule, name, tags)
                   for s in self.silences):
                return True
            if any(w.covers(st.rule, name, tags) and w.active(now) for w in self.windows):
                return True
        return self.inhibited(st)

    def alert_flags(self, alert: dict, now: float) -> tuple[bool, bool] | None:
        """(acknowledged, muted) of an open alert the notifier holds; None when it is no longer open."""
        st = self.states.get((alert["rule"], alert["server_id"], alert["label"]))
        if st is None or st.id != alert["id"]:
            return None
        return st.acked_by is not None, self.muted(st, now)

    # writing and notifying

    async def _flush(self) -> None:
        """Write this round's state changes in one transaction, then notify."""
        now = self.clock()
        events, self._events = self._events, []
        send = []
        for event, st in events:
            if event == "firing":
                if st.state != FIRING or st.last_notified is not None or self.muted(st, now):
                    continue  # muted: recorded, and sent when the silence ends if it still fires
                st.last_notified = now
                self._dirty[id(st)] = st
            send.append((event, st))
        if self._dirty:
            dirty = list(self._dirty.values())
            self._dirty = {}
            inserts = [st for st in dirty if st.id is None and not st.removed]
            updates = [st.row() for st in dirty if st.id is not None and not st.removed]
            deletes = [st.id for st in dirty if st.removed and st.id is not None]
            try:
                ids = await self.storage.save_alerts([st.row() for st in inserts], updates, deletes)
            except Exception as exc:  # noqa: BLE001 - retried with the next flush
                if isinstance(exc, StorageUnavailable):
                    log.debug("writing %d alert changes failed: %s", len(dirty), exc)  # the writer logs the outage
                else:
                    log.exception("writing %d alert changes failed", len(dirty))
                self._dirty.update({id(st): st for st in dirty})
                # The storage alert is about the database that just failed: sent now, not after it recovers.
                urgent = [(event, st) for event, st in send if st.rule == STORAGE_RULE]
                self._events = [e for e in events if e[1].rule != STORAGE_RULE] + self._events
                for _, st in send:
                    if st.state == FIRING and st.rule != STORAGE_RULE:
                        st.last_notified = None
                self._send(urgent)
                return
            for st, new_id in zip(inserts, ids):
                st.id = new_id
            self._last_flush = now
        self._send(send)

    def _send(self, send: list) -> None:
        for event, st in send:
            if self.notifier is not None:
                self.notifier.notify(event, self.snapshot(st))
            log.info("alert %s %s on %s%s: %s", st.rule, event, self._name(st.server_id),
                     f" [{st.label}]" if st.label else "", st.summary)
        if send and self.notifier is not None and hasattr(self.notifier, "pump"):
            self.notifier.pump()  # once per round: alerts that changed together are grouped together

    def _name(self, server_id: int | None) -> str:
        if server_id is None:
            return "the central"
        server = self.servers.get(server_id)
        return server.name if server else str(server_id)

    def snapshot(self, st: AlertState) -> dict:
        """The alert as notifiers and API callers see it."""
        server = self.servers.get(st.server_id)
        base = external_base(self.config)
        return {
            "id": st.id, "rule": st.rule, "server": server.name if server else None,
            "server_id": st.server_id, "host": server.host if server else None,
            "tags": list(server.tags) if server else [], "label": st.label, "severity": st.severity,
            "state": st.state, "summary": st.summary, "value": st.value, "started_at": st.started_at,
            "fired_at": st.fired_at, "resolved_at": st.resolved_at, "acked_by": st.acked_by,
            "metric": st.details.get("metric"), "op": st.details.get("op"), "threshold": st.details.get("threshold"),
            "url": alert_url(base, st.id),
        }


def external_base(config: Config) -> str:
    """Where people reach the page: alerts.external_url, else this machine's name (or the listen address) and port."""
    if config.alerts.external_url:
        return config.alerts.external_url.rstrip("/")
    host = config.http.listen
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.http.port}"


def alert_url(base: str, alert_id: int | None) -> str:
    """The alert's page under the external URL: <base>/alerts/<id>."""
    return f"{base.rstrip('/')}/alerts/{alert_id}"


def _compile_simple_values():
    """_simple_values(sample, facts), written out from the tables as one dict display: the
    one-value-per-server alert metrics of a poll (key figures, central.model.METRICS, and the
    poll's facts, central.model.ALERT_METRICS). It runs on every poll; a comprehension over
    the tables costs twice as much (bench/bench_poll_path.py)."""
    items = [f"{m.alert!r}: s.get({m.column!r})" for m in METRICS.values() if m.alert]
    items += [f"{a.name!r}: facts.get({a.fact!r})" for a in ALERT_METRICS.values() if a.fact]
    namespace: dict = {}
    exec("def _simple_values(s, facts):\n    return {" + ", ".join(items) + "}", namespace)  # noqa: S102 - our own table
    return namespace["_simple_values"]


_simple_values = _compile_simple_values()


def _facts_from_text(text: str) -> dict:
    """Facts of an outcome that came without them (built outside the poller)."""
    import json

    from .sample import extract_facts

    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return extract_facts(doc) if isinstance(doc, dict) else {}


# The operations the CLI and the HTTP API call, each taking the opened Central first (no HTTP or
# terminal knowledge here).

def cli_user() -> str:
    """The acknowledging user for the CLI: cli:<local OS user>."""
    return "cli:" + getpass.getuser()


async def list_alerts(central: Central, firing_only: bool = False, server: str | None = None,
                      limit: int = 100, open_only: bool = False) -> list[dict]:
    """Alerts newest first (firing, then pending, then resolved), optionally of one server by name."""
    storage = central.storage
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise Invalid(f"invalid limit {limit!r}: expected 1 to 10000")
    server_id = None
    if server is not None:
        server_id = (await storage.get_server(server)).id
    return await storage.list_alerts(firing_only=firing_only, open_only=open_only, server_id=server_id, limit=limit)


async def get_alert(central: Central, alert_id: int) -> dict:
    """One alert with its delivery log."""
    storage = central.storage
    alert = await storage.get_alert(_check_id(alert_id, "alert"))
    alert["notifications"] = await storage.notifications(alert["id"], limit=50)
    return alert


async def ack(central: Central, alert_id: int, user: str, now: float | None = None) -> dict:
    """Acknowledge an open alert (stops its repeats; its resolution is still sent); the alert."""
    storage = central.storage
    alert = await storage.get_alert(_check_id(alert_id, "alert"))
    if not isinstance(user, str) or not user.strip():
        raise Invalid("the acknowledging user must be named")
    if alert["state"] == RESOLVED:
        raise Conflict(f"alert {alert_id} is already resolved")
    await storage.ack_alert(alert["id"], user.strip()[:100], time.time() if now is None else now)
    return await storage.get_alert(alert["id"])


async def create_silence(central: Central, *, server: str | None = None, rule: str | None = None,
                         tag: str | None = None, duration: float, comment: str, user: str,
                         maintenance: bool = False, now: float | None = None) -> dict:
    """Mute notifications of matching alerts for duration seconds (alerts are still recorded); the silence.

    maintenance=True is a maintenance window: it needs an existing server and mutes all its alerts.
    server, rule and tag are globs; all given ones must match.
    """
    storage = central.storage
    now = time.time() if now is None else now
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 < duration <= 366 * 86400:
        raise Invalid(f"invalid duration {duration!r}: expected more than 0 and at most 366 days")
    if not isinstance(comment, str) or not comment.strip():
        raise Invalid("a comment is required: say why notifications are muted")
    matcher = {}
    for key, value in (("server", server), ("rule", rule), ("tag", tag)):
        if value is None:
            continue
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9._:/*?\[\]-]{1,100}", value):
            raise Invalid(f"invalid {key} {value!r}: letters, digits, . _ : / - and globs * ? [ ]")
        matcher[key] = value
    if not matcher:
        raise Invalid("a silence needs a server, a rule or a tag")
    if maintenance:
        if set(matcher) != {"server"}:
            raise Invalid("a maintenance window is for one server (give only the server)")
        await storage.get_server(matcher["server"])
    silence_id = await storage.add_silence(matcher, now, now + float(duration), comment.strip()[:500],
                                           user[:100], "maintenance" if maintenance else "silence")
    return await storage.get_silence(silence_id)


async def delete_silence(central: Central, silence_id: int, now: float | None = None) -> dict:
    """End a silence now (kept in the history); the silence."""
    storage = central.storage
    silence = await storage.get_silence(_check_id(silence_id, "silence"))
    now = time.time() if now is None else now
    if silence["ends_at"] <= now:
        raise Conflict(f"silence {silence_id} has already ended")
    await storage.end_silence(silence["id"], now)
    return await storage.get_silence(silence["id"])


async def list_silences(central: Central, active_only: bool = True, limit: int = 100,
                        now: float | None = None) -> list[dict]:
    """Silences and maintenance windows newest first; active_only: those not ended yet."""
    storage = central.storage
    now = time.time() if now is None else now
    rows = await storage.list_silences(active_at=now if active_only else None, limit=limit)
    for r in rows:
        r["active"] = r["starts_at"] <= now < r["ends_at"]
    return rows


def _check_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NotFound(f"no {what} with id {value!r}")
    return value
