"""What holds an alert's notifications back: silences, weekly maintenance windows, inhibition.

Pure functions of the alert's labels (rule, server, tags, severity, label) and the time; the
alert engine asks them whether a firing alert is muted now. Muted alerts are still evaluated
and recorded; only their notifications wait (and go out if they still fire when muting ends).
"""
from __future__ import annotations

import datetime
import fnmatch
import zoneinfo
from typing import Iterable, Sequence

from .config import WEEKDAYS, InhibitRule, MaintenanceWindow
from .model import BUILTIN_RULES

# Built-in rules that say a server cannot be observed right now (BuiltinRule.inhibits_server):
# while one fires, that server's other alerts say nothing new and are held back.
SERVER_DOWN_RULES = tuple(r.name for r in BUILTIN_RULES.values() if r.inhibits_server)
BUILTIN_INHIBIT = InhibitRule(source_rules=SERVER_DOWN_RULES, equal=("server",))
# Built-in rules that say no tunnel passes through a server (BuiltinRule.blocks_tunnels), and the
# rule of a host whose bastion fails: held back while its bastion ("via") has one of those firing.
TUNNEL_DOWN_RULES = frozenset(r.name for r in BUILTIN_RULES.values() if r.blocks_tunnels)
VIA_BASTION_RULE = next(r.name for r in BUILTIN_RULES.values() if r.metric == "poll.bastion_unreachable")


def bastions_down(firing: Iterable[dict]) -> frozenset:
    """The servers whose firing alerts say no tunnel passes through them."""
    return frozenset(a["server"] for a in firing if a["rule"] in TUNNEL_DOWN_RULES and a.get("server"))


def bastion_inhibited(alert: dict, down: frozenset) -> bool:
    """Whether a host's unreachable_via_bastion alert is held back by its bastion's own alert."""
    return alert["rule"] == VIA_BASTION_RULE and alert.get("via") is not None and alert["via"] in down


def globs_match(patterns: Sequence[str], value: str | None) -> bool:
    """Whether value matches one of the globs (an empty list matches anything)."""
    if not patterns:
        return True
    return value is not None and any(fnmatch.fnmatchcase(value, p) for p in patterns)


def silence_matches(matcher: dict, rule: str, server: str | None, tags: Sequence[str]) -> bool:
    """Whether a silence's matcher (server / rule / tag globs, all given ones must match) covers an alert."""
    if not matcher:
        return False
    if matcher.get("server") and not (server and fnmatch.fnmatchcase(server, matcher["server"])):
        return False
    if matcher.get("rule") and not fnmatch.fnmatchcase(rule, matcher["rule"]):
        return False
    if matcher.get("tag") and not any(fnmatch.fnmatchcase(t, matcher["tag"]) for t in tags):
        return False
    return True


class Window:
    """A weekly maintenance window in a named time zone, evaluated on wall-clock time there."""

    def __init__(self, cfg: MaintenanceWindow):
        self.cfg = cfg
        self.name = cfg.name
        self.zone = zoneinfo.ZoneInfo(cfg.time_zone)
        self.days = {WEEKDAYS.index(d.lower()) for d in cfg.days} or set(range(7))
        self.start = datetime.time(*map(int, cfg.start.split(":")))
        self.end = datetime.time(*map(int, cfg.end.split(":")))

    def covers(self, rule: str, server: str | None, tags: Sequence[str]) -> bool:
        """Whether the window applies to this alert (server or tag selected, and the rule)."""
        if self.cfg.servers and not globs_match(self.cfg.servers, server):
            return False
        if self.cfg.tags and not any(globs_match(self.cfg.tags, t) for t in tags):
            return False
        return globs_match(self.cfg.rules, rule)

    def occurrence(self, day: datetime.date) -> tuple[float, float]:
        """[start, end) as Unix times of the window starting on a local date (end at or before start: next day)."""
        start = datetime.datetime.combine(day, self.start, tzinfo=self.zone)
        end_day = day if self.end > self.start else day + datetime.timedelta(days=1)
        end = datetime.datetime.combine(end_day, self.end, tzinfo=self.zone)
        return start.timestamp(), end.timestamp()

    def _occurrences(self, now: float, days: int) -> Iterable[tuple[float, float]]:
        today = datetime.datetime.fromtimestamp(now, self.zone).date()
        for offset in range(-1, days):
            day = today + datetime.timedelta(days=offset)
            if day.weekday() in self.days:
                yield self.occurrence(day)

    def active(self, now: float) -> bool:
        """Whether now falls inside one of the window's occurrences."""
        return any(s <= now < e for s, e in self._occurrences(now, 1))

    def next(self, now: float) -> tuple[float, float] | None:
        """The current or next occurrence (start, end)."""
        return next(((s, e) for s, e in self._occurrences(now, 8) if e > now), None)

    def describe(self, now: float) -> dict:
        """For the API: name, schedule, selectors, whether active, the current or next occurrence."""
        nxt = self.next(now)
        c = self.cfg
        return {"name": c.name, "days": [WEEKDAYS[d] for d in sorted(self.days)], "start": c.start, "end": c.end,
                "time_zone": c.time_zone, "servers": list(c.servers), "tags": list(c.tags), "rules": list(c.rules),
                "active": self.active(now), "next_start": nxt[0] if nxt else None, "next_end": nxt[1] if nxt else None}


def _labels(alert: dict, names: Sequence[str]) -> tuple:
    return tuple(alert.get(n) for n in names)


class Inhibitor:
    """Alertmanager's inhibit rules over the firing alerts: a source alert mutes targets sharing `equal` labels."""

    def __init__(self, rules: Sequence[InhibitRule]):
        self.rules = list(rules)

    @staticmethod
    def _is_source(rule: InhibitRule, alert: dict) -> bool:
        if not rule.source_rules and not rule.source_severities:
            return False
        return globs_match(rule.source_rules, alert["rule"]) and globs_match(rule.source_severities, alert["severity"])

    def index(self, firing: Iterable[dict]) -> list[set]:
        """Per rule, the `equal` label values of the firing source alerts (built once per round)."""
        out: list[set] = [set() for _ in self.rules]
        for alert in firing:
            for i, rule in enumerate(self.rules):
                if self._is_source(rule, alert):
                    out[i].add(_labels(alert, rule.equal))
        return out

    def inhibited(self, alert: dict, index: list[set]) -> bool:
        """Whether a firing source shares this alert's `equal` labels (an alert never inhibits its own kind)."""
        for rule, sources in zip(self.rules, index):
            if not sources or self._is_source(rule, alert):
                continue
            if not globs_match(rule.target_rules, alert["rule"]):
                continue
            if not globs_match(rule.target_severities, alert["severity"]):
                continue
            if _labels(alert, rule.equal) in sources:
                return True
        return False
