"""A batch of poll outcomes as the few row updates both backends make of it.

A batch can hold several outcomes of one server (a writer catching up, a buffer kept through
an outage). Stored one by one, in time order, they leave the server's row as its last outcome
says: a success resets the failure count, each failure after it adds one. The backends make
that one update per server: the newest success, then the failures after it, counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from ..model import ERROR, REASONS, PollOutcome

# Reasons that make a server 'error' at once (the others: 'offline' after offline_after).
ERROR_AT_ONCE = frozenset(r.name for r in REASONS.values() if r.status == ERROR)


@dataclass(frozen=True)
class Failures:
    """A server's failed polls after its newest success in the batch (or all, with none)."""

    server_id: int
    count: int
    last: PollOutcome  # the newest: its time, duration, error and reason go to the server's row
    error_before: bool  # an earlier one of them made the status 'error' at once

    @property
    def error_now(self) -> bool:
        """The newest failure makes the status 'error' at once."""
        return self.last.reason in ERROR_AT_ONCE


def fold(outcomes: Iterable[PollOutcome]) -> tuple[list[PollOutcome], list[Failures]]:
    """(the newest success of each server, the failures after it of each server), both in server
    id order (PostgreSQL: two batches lock the rows they share in one order, no deadlock).

    Applied in that order, the successes then the failures, they leave every server's row as
    storing the outcomes one by one in time order would:
    - consecutive_failures: 0 after a success, then plus the count;
    - status: 'error' if the newest failure says so; else 'offline' once the count reaches
      offline_after; else 'error' if an earlier failure since the success said so; else as it was.
    """
    ordered = sorted(outcomes, key=lambda o: o.ts)  # stable: equal times keep the batch's order
    newest_ok: dict[int, PollOutcome] = {}
    after: dict[int, list[PollOutcome]] = {}
    for o in ordered:
        if o.ok:
            newest_ok[o.server_id] = o
            after.pop(o.server_id, None)
        else:
            after.setdefault(o.server_id, []).append(o)
    failures = [Failures(sid, len(fs), fs[-1], any(f.reason in ERROR_AT_ONCE for f in fs[:-1]))
                for sid, fs in sorted(after.items())]
    return [newest_ok[sid] for sid in sorted(newest_ok)], failures


def failure_row(f: Failures, offline_after: int) -> tuple:
    """The values of one server's failure update, in the order of failure_set's parameters:
    count, last_poll, poll_duration, last_error, status_reason, error now, offline_after,
    error before, server id."""
    o = f.last
    return (f.count, o.ts, o.duration, o.error, o.reason, f.error_now, offline_after, f.error_before, f.server_id)


def failure_set(p: Sequence[str]) -> str:
    """The SET clause of the failure update, with p[0..7] the backend's names of failure_row's
    first eight values (placeholders or columns of a VALUES list)."""
    return (f"consecutive_failures = consecutive_failures + {p[0]}, last_poll = {p[1]}, poll_duration = {p[2]},"
            f" last_error = {p[3]}, status_reason = {p[4]}, status = CASE"
            f" WHEN {p[5]} THEN 'error'"
            f" WHEN consecutive_failures + {p[0]} >= {p[6]} THEN 'offline'"
            f" WHEN {p[7]} THEN 'error'"
            f" ELSE status END")


def success_row(o: PollOutcome) -> tuple:
    """The values of one server's success update, in the order of success_set's parameters:
    time, duration, agent version, agent sha256, hostname, server id."""
    return (o.ts, o.duration, o.agent_version, o.agent_sha256, o.hostname, o.server_id)


def success_set(p: Sequence[str]) -> str:
    """The SET clause of the success update, with p[0..4] the backend's names of success_row's
    first five values."""
    return ("status = 'online', status_reason = NULL, last_error = NULL, consecutive_failures = 0,"
            f" last_seen = {p[0]}, last_poll = {p[0]}, poll_duration = {p[1]},"
            f" agent_version = coalesce({p[2]}, agent_version), agent_sha256 = coalesce({p[3]}, agent_sha256),"
            f" hostname = coalesce({p[4]}, hostname)")
