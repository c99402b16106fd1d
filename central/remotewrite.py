"""Remote write: every stored sample also sent with the Prometheus remote-write protocol (1.0:
a snappy-compressed protobuf WriteRequest, POSTed) to a long-term store, e.g. VictoriaMetrics,
Mimir, Thanos Receive, or Prometheus with --web.enable-remote-write-receiver.

The series are those of /metrics: each key figure under its metric name (central.model
METRICS `prom`) with the label `server`, plus `tags`: the server's tags sorted and joined as
",a,b," (match one with tags=~".*,prod,.*"; no label when it has none).

Samples queue in memory, bounded by remote_write.max_samples (when full the oldest are
dropped, and counted); one sender posts them in batches of remote_write.batch_size. A batch
the receiver refuses for good (4xx other than 429) is counted failed and not sent again; any
other failure (no connection, timeout, 5xx, 429) is retried with doubling backoff, the batch
kept, while newer samples wait behind it. /metrics counts samples sent, failed and dropped.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import struct
import time
from dataclasses import dataclass
from typing import Sequence

import aiohttp
import cramjam

from . import __version__, hosttext
from .model import METRICS, PollOutcome

log = logging.getLogger(__name__)

_PROM_NAMES = {m.column: m.prom for m in METRICS.values()}


@dataclass(frozen=True)
class RemoteWriteSettings:
    url: str
    timeout: float = 10.0
    batch_size: int = 2000
    max_samples: int = 100_000
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    bearer_token: str | None = None


# protobuf by hand (prompb: WriteRequest{1: TimeSeries}, TimeSeries{1: Label, 2: Sample},
# Label{1: name, 2: value}, Sample{1: double value, 2: int64 timestamp ms})

def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 in two's complement, as protobuf sends negative numbers
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _label(name: str, value: str) -> bytes:
    return _field(1, _field(1, name.encode()) + _field(2, value.encode()))


def _sample(value: float, ts_ms: int) -> bytes:
    return _field(2, b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(ts_ms))


def encode_write_request(series: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]) -> bytes:
    """The protobuf WriteRequest of {labels (sorted by name, __name__ first): [(ts ms, value)]}."""
    out = bytearray()
    for labels, samples in series.items():
        body = b"".join(_label(n, v) for n, v in labels)
        body += b"".join(_sample(v, t) for t, v in sorted(samples))
        out += _field(1, body)
    return bytes(out)


def tags_label(tags: Sequence[str]) -> str:
    return "," + ",".join(sorted(tags)) + "," if tags else ""


class RemoteWriter:
    """The queue and its sender (start() / stop()); on_batch is a poller hook."""

    def __init__(self, settings: RemoteWriteSettings, clock=time.time):
        self.settings = settings
        self.clock = clock
        self.queue: collections.deque = collections.deque()
        self.sent = 0  # samples the receiver accepted
        self.failed = 0  # samples of batches the receiver refused for good
        self.dropped = 0  # samples dropped, oldest first, because the queue was full
        self.failed_requests = 0  # attempts that failed (their batch retried)
        self.last_error: str | None = None
        self._inflight = 0  # samples of the batch being sent (or waiting to be retried)
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None

    # filling

    def add(self, outcomes: Sequence[PollOutcome], servers: dict) -> None:
        """Queue the samples of the successful outcomes (servers: id -> Server, for name and tags)."""
        added = 0
        for o in outcomes:
            server = servers.get(o.server_id)
            if not o.ok or o.sample is None or server is None:
                continue
            base = (("server", server.name),) + ((("tags", tags_label(server.tags)),) if server.tags else ())
            ts_ms = int(o.ts * 1000)
            for column, name in _PROM_NAMES.items():
                value = o.sample.get(column)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.queue.append(((("__name__", name), *base), ts_ms, float(value)))
                    added += 1
        over = len(self.queue) - self.settings.max_samples
        if over > 0:
            for _ in range(over):
                self.queue.popleft()
            self.dropped += over
        if added:
            self._wake.set()

    async def on_batch(self, batch: Sequence[PollOutcome], by_id: dict) -> None:
        """Poller hook: queue the stored batch's samples (never blocks)."""
        self.add(batch, by_id)

    # sending

    async def start(self) -> None:
        headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                   "X-Prometheus-Remote-Write-Version": "0.1.0", "User-Agent": f"central/{__version__}"}
        if self.settings.bearer_token:
            headers["Authorization"] = f"Bearer {self.settings.bearer_token}"
        self._session = aiohttp.ClientSession(headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        self._task = asyncio.create_task(self._run(), name="remote-write")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def status(self) -> dict:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped, "queued": len(self.queue),
                "failed_requests": self.failed_requests, "capacity": self.settings.max_samples}

    async def wait_sent(self, n: int, timeout: float = 30.0) -> None:
        """Wait until at least n samples were accepted (tests, benchmarks)."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.sent >= n), timeout)

    async def wait_drained(self, timeout: float = 30.0) -> None:
        """Wait until every queued sample was sent or given up (tests, benchmarks)."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: not self.queue and not self._inflight), timeout)

    async def wait_attempts(self, n: int, timeout: float = 30.0) -> None:
        """Wait until at least n requests failed (tests)."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.failed_requests >= n), timeout)

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _run(self) -> None:
        batch: list = []
        backoff = self.settings.backoff_initial
        while True:
            if not batch:
                if not self.queue:
                    self._wake.clear()
                    await self._wake.wait()
                while self.queue and len(batch) < self.settings.batch_size:
                    batch.append(self.queue.popleft())
                self._inflight = len(batch)
            result = await self._send(batch)
            if result == "retry":
                self.failed_requests += 1
                await self._notify()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.backoff_max)
                continue
            if result == "ok":
                self.sent += len(batch)
            else:
                self.failed += len(batch)
            batch = []
            self._inflight = 0
            backoff = self.settings.backoff_initial
            await self._notify()

    async def _send(self, batch: list) -> str:
        """POST one batch: "ok", "retry", or "refused" (a 4xx the receiver will never accept)."""
        series: dict = collections.defaultdict(list)
        for labels, ts_ms, value in batch:
            series[labels].append((ts_ms, value))
        body = bytes(cramjam.snappy.compress_raw(encode_write_request(series)))
        assert self._session is not None
        try:
            async with self._session.post(self.settings.url, data=body) as resp:
                text = (await resp.text(errors="replace"))[:200]
                if 200 <= resp.status < 300:
                    if self.last_error:
                        log.info("remote write to %s works again", self.settings.url)
                    self.last_error = None
                    return "ok"
                self.last_error = f"HTTP {resp.status}: {hosttext.escape(text.strip())}"
                if 400 <= resp.status < 500 and resp.status != 429:
                    log.warning("remote write: %d samples refused for good: %s", len(batch), self.last_error)
                    return "refused"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
        log.warning("remote write failed (%s); retrying", self.last_error)
        return "retry"
