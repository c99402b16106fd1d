"""Several centrals, one fleet: membership by heartbeat, ownership by leases.

Any number of centrals pointed at one database (PostgreSQL: storage.url) with cluster.enabled
form one deployment. At every reload of the server list each central

1. records its heartbeat and reads the live members (a heartbeat within cluster.ttl, on the
   database's clock);
2. computes, by rendezvous (highest-random-weight) hashing of (member, server id), which
   servers are its share: every member computes the same split, and adding or losing a
   member moves only that member's share;
3. takes or renews the lease (cluster.ttl long) of each server of its share, unless another
   member still holds it unexpired, and releases those that are no longer its share;
4. polls exactly the servers whose lease it holds.

A central that dies stops renewing: its leases expire within the TTL and the others, which
no longer see it among the live members, take its servers over at their next reload. A
central that comes back gets its share again as the others release it. A clean stop leaves
the cluster at once (its leases deleted). A central that cannot reach the database for longer
than the TTL stops polling: its leases may already be someone else's.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from typing import Callable, Iterable, Sequence

from .model import Server
from .storage import Storage

log = logging.getLogger(__name__)


def weight(member: str, server_id: int) -> int:
    """The rendezvous weight of a (member, server) pair: the same on every central."""
    return int.from_bytes(hashlib.sha256(f"{member}\0{server_id}".encode()).digest()[:8], "big")


def owner(members: Sequence[str], server_id: int) -> str | None:
    """The member a server belongs to among the live ones (None: no member)."""
    return max(members, key=lambda m: (weight(m, server_id), m), default=None)


def share(members: Sequence[str], me: str, server_ids: Iterable[int]) -> set[int]:
    """The servers that are me's share among the live members."""
    return {sid for sid in server_ids if owner(members, sid) == me}


def default_member_name(port: int) -> str:
    """hostname:port:pid, unique per running central."""
    return f"{socket.gethostname()}:{port}:{os.getpid()}"


class Membership:
    """This central's place in the cluster: its heartbeat, share and leases (Poller.ownership)."""

    def __init__(self, storage: Storage, member: str, *, ttl: float, address: str = "", clock=time.monotonic,
                 lag: Callable[[], float] | None = None):
        self.storage = storage
        self.lag = lag  # this central's poller lag, sent with each heartbeat
        self.member = member
        self.ttl = ttl
        self.address = address
        self.clock = clock
        self.members: list[dict] = []  # the live members at the last heartbeat
        self.owned: set[int] = set()
        # called with (gained, lost) server ids when this central's share changes (the alert engine)
        self.listeners: list = []
        self._last_ok: float | None = None

    async def ownership(self, servers: dict[int, Server]) -> set[int]:
        """The ids of the servers this central polls now (heartbeat, share, leases)."""
        try:
            lag = self.lag() if self.lag is not None else None
            self.members = await self.storage.heartbeat(self.member, self.address, self.ttl, lag=lag)
            live = [m["member"] for m in self.members]
            if self.member not in live:  # our own write is not visible: never claim blind
                live.append(self.member)
            mine = share(live, self.member, servers)
            held = await self.storage.claim_servers(self.member, sorted(mine), self.ttl)
            gone = self.owned - mine
            if gone:
                await self.storage.release_servers(self.member, sorted(gone))
        except Exception as exc:  # noqa: BLE001 - the database's trouble: keep polling until the TTL says otherwise
            if self._last_ok is None or self.clock() - self._last_ok > self.ttl:
                if self.owned:
                    log.warning("cluster: no heartbeat for longer than the TTL (%s); polling nothing until the "
                                "database answers", exc)
                await self._moved(set(), set(self.owned))
                self.owned = set()
            return set(self.owned)
        self._last_ok = self.clock()
        if held != self.owned:
            log.info("cluster: %s polls %d of %d servers (%d live members)", self.member, len(held), len(servers),
                     len(live))
        gained, lost = held - self.owned, self.owned - held
        self.owned = held
        await self._moved(gained, lost)
        return set(held)

    async def _moved(self, gained: set[int], lost: set[int]) -> None:
        if not (gained or lost):
            return
        for listener in self.listeners:
            try:
                await listener(gained, lost)
            except Exception:  # noqa: BLE001 - a broken listener must not stop polling
                log.exception("cluster: ownership listener %r failed", listener)

    async def leave(self) -> None:
        """Hand every server over at once (a clean stop)."""
        try:
            await self.storage.leave(self.member)
        except Exception as exc:  # noqa: BLE001 - the leases expire by themselves within the TTL
            log.warning("cluster: leaving failed (%s); the leases expire within %gs", exc, self.ttl)
        self.owned = set()

    def status(self) -> dict:
        return {"member": self.member, "ttl": self.ttl, "servers": len(self.owned),
                "members": [{k: m.get(k) for k in ("member", "address", "started_at", "heartbeat_at", "servers", "lag")}
                            | {"age": m["now"] - m["heartbeat_at"]} for m in self.members]}
