"""The agent's documents (/api/all, /api/inventory), decoded and normalised to what the protocol allows.

A host is untrusted input. Every field the protocol names (docs/agent-protocol.md, "Limits the
central enforces") has a type and bounds here; a document is stored only in its normalised
form: known fields only, numbers finite and within their field's bounds, text cleaned
(hosttext.clean) and cut, lists and maps cut to their caps. A value that cannot be made to fit
(a string where a number belongs, 1e300 processes, NaN) refuses the whole document with a
BAD_PAYLOAD PollError naming the field, so the host gets its own reason and no other host's
samples are touched.

The schema is data (SCHEMA, INVENTORY below): a field the agent gains is added there and in
the protocol page. Fields the schema does not name are dropped, whatever they hold.
"""
from __future__ import annotations

import json
import math
import re

try:  # a C parser 3x faster than the standard library's on an agent's document (BENCHMARKS.md)
    import orjson
except ImportError:  # pragma: no cover - a dependency; the standard library answers alone then
    orjson = None

from .hosttext import clean
from .model import BAD_PAYLOAD, PollError

# The body of /api/all or /api/inventory: refused unread above this (a real document is
# 5-100 KB; parsing one costs the event loop about 10 us per KB).
MAX_DOCUMENT_BYTES = 512 * 1024
SQLITE_MAX_INT = 2**63 - 1  # the largest integer SQLite stores as an integer
MAX_CPUS = 8192  # Linux NR_CPUS at its largest (x86_64 MAXSMP)
MAX_PID = 2**22  # PID_MAX_LIMIT
MAX_COUNT = 10_000_000  # processes, watched-process counts
MAX_RATE = 1e15  # bytes per second (1 PB/s)
MAX_LOAD = 1e6
MAX_TIME = 1e11  # Unix seconds (year 5138)
MAX_DURATION = 1e10  # uptime, seconds
PERCENT_SLACK = 5.0  # rounding: 100 < x <= 105 is stored as 100
MEMORY_PERCENT_SLACK = 100.0  # a cgroup's usage can overshoot its limit for a moment

NAME_CHARS = 255  # hostnames, process, user, unit, container, device, interface names, messages
CMDLINE_CHARS = 200
SHORT_CHARS = 64  # versions, hashes, sources, states
TOP_LIST = 10  # processes.top_cpu / top_memory
MAX_FILESYSTEMS = 64
MAX_INTERFACES = 128
MAX_DISKS = 64
MAX_ADDRESSES = 32  # per interface
MAX_UNITS = 256  # systemd.failed, systemd.watched, processes.watched
MAX_CONTAINERS = 200  # docker.containers
MAX_CONTAINER_ENTRIES = 100  # containers.containers (the agent sends at most 100 too)
MAX_ERRORS = 32
MAX_SENSORS = 64  # sensors.temperatures, sensors.fans
MAX_SMART_DISKS = 32
MAX_GPUS = 16
GPU_PROCESSES = 8  # gpus[].processes: the agent sends the largest first

_SURROGATES = re.compile("[\ud800-\udfff]")


class _NonFinite:
    """What NaN / Infinity / -Infinity decode to, so the normaliser can name the field."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _Bad(Exception):
    """A value that does not fit its field; the path is collected on the way up."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = []  # innermost first

    def where(self) -> str:
        out = ""
        for part in reversed(self.path):
            out += part if part.startswith("[") or not out else "." + part
        return out or "document"


def _describe(value: object) -> str:
    """A short, inert rendering of a bad value for the error message."""
    if isinstance(value, _NonFinite):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"
    if isinstance(value, str):
        return f"a string ({len(value)} characters)"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return "null" if value is None else type(value).__name__


class Field:
    """One field of the schema; norm() returns the normalised value or raises _Bad."""

    __slots__ = ()
    kind = "a value"

    def norm(self, value: object) -> object:
        raise NotImplementedError

    def _wrong(self, value: object) -> _Bad:
        return _Bad(f"expected {self.kind}, got {_describe(value)}")


class Num(Field):
    """A finite number in [lo, hi]; above clamp (up to hi) it is stored as clamp."""

    __slots__ = ("lo", "hi", "clamp")
    kind = "a number"

    def __init__(self, lo: float, hi: float, clamp: float | None = None):
        self.lo, self.hi, self.clamp = lo, hi, clamp

    def norm(self, value: object) -> object:
        t = type(value)
        if t is float or t is int:
            # compared before float(): float(10**400) would raise OverflowError
            if self.lo <= value <= self.hi:
                value = float(value)
                return self.clamp if self.clamp is not None and value > self.clamp else value
            if t is float and not math.isfinite(value):
                raise _Bad(f"{_describe(value)} is not a finite number")
            raise _Bad(f"{_describe(value)} is out of range ({self.lo:g} to {self.hi:g})")
        if value is None:
            return None
        if t is _NonFinite:
            raise _Bad(f"{value.text} is not a finite number")
        raise self._wrong(value)


class Int(Field):
    """An integer (not a bool) in [lo, hi]."""

    __slots__ = ("lo", "hi")
    kind = "an integer"

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def norm(self, value: object) -> object:
        t = type(value)
        if t is int:
            if self.lo <= value <= self.hi:
                return value
            raise _Bad(f"{_describe(value)} is out of range ({self.lo} to {self.hi})")
        if value is None:
            return None
        if t is float and not (self.lo <= value <= self.hi):
            if not math.isfinite(value):
                raise _Bad(f"{_describe(value)} is not a finite number")
            raise _Bad(f"{_describe(value)} is out of range ({self.lo} to {self.hi})")
        if t is _NonFinite:
            raise _Bad(f"{value.text} is not a finite number")
        raise self._wrong(value)


class Str(Field):
    """Text, cleaned of control/bidi/invisible characters and cut to limit characters."""

    __slots__ = ("limit",)
    kind = "a string"

    def __init__(self, limit: int = NAME_CHARS):
        self.limit = limit

    def norm(self, value: object) -> object:
        if type(value) is str:
            # isprintable() is False for every character clean() removes (and for lone
            # surrogates), so the common case costs one C scan.
            if len(value) <= self.limit and value.isprintable():
                return value
            return clean(_SURROGATES.sub("\ufffd", value), self.limit)
        if value is None:
            return None
        raise self._wrong(value)


class Bool(Field):
    """true or false."""

    __slots__ = ()
    kind = "true or false"

    def norm(self, value: object) -> object:
        if value is None or type(value) is bool:
            return value
        raise self._wrong(value)


class Obj(Field):
    """An object with known fields; others are dropped."""

    __slots__ = ("fields",)
    kind = "an object"

    def __init__(self, **fields: Field):
        self.fields = tuple((key, field.norm) for key, field in fields.items())

    def norm(self, value: object) -> object:
        if type(value) is not dict:
            if value is None:
                return None
            raise self._wrong(value)
        out = {}
        for key, norm in self.fields:
            if key in value:
                try:
                    out[key] = norm(value[key])
                except _Bad as bad:
                    bad.path.append(key)
                    raise
        return out


class List(Field):
    """A list of one kind of item, cut to its first limit entries."""

    __slots__ = ("item", "limit")
    kind = "a list"

    def __init__(self, item: Field, limit: int):
        self.item, self.limit = item, limit

    def norm(self, value: object) -> object:
        t = type(value)
        if t is not list and t is not tuple:
            if value is None:
                return None
            raise self._wrong(value)
        norm = self.item.norm
        out = []
        for i, entry in enumerate(value[: self.limit]):
            try:
                out.append(norm(entry))
            except _Bad as bad:
                bad.path.append(f"[{i}]")
                raise
        return out


class Map(Field):
    """An object of host-chosen names (cleaned, cut to NAME_CHARS) to one kind of value, first limit entries."""

    __slots__ = ("value", "limit")
    kind = "an object"
    _KEY = Str(NAME_CHARS)

    def __init__(self, value: Field, limit: int):
        self.value, self.limit = value, limit

    def norm(self, value: object) -> object:
        if type(value) is not dict:
            if value is None:
                return None
            raise self._wrong(value)
        out = {}
        for n, (key, entry) in enumerate(value.items()):
            if n >= self.limit:
                break
            name = self._KEY.norm(key)
            try:
                out[name] = self.value.norm(entry)
            except _Bad as bad:
                bad.path.append(json.dumps(name)[:40])
                raise
        return out


PERCENT = Num(0, 100 + PERCENT_SLACK, clamp=100.0)
MEMORY_PERCENT = Num(0, 100 + MEMORY_PERCENT_SLACK, clamp=100.0)
PROCESS_PERCENT = Num(0, 100.0 * MAX_CPUS)  # percent of one core, as top
BYTES = Int(0, SQLITE_MAX_INT)  # sizes and counters since boot
RATE = Num(0, MAX_RATE)
COUNT = Int(0, MAX_COUNT)
NAME = Str(NAME_CHARS)
SHORT = Str(SHORT_CHARS)
TEMPERATURE = Num(-273.15, 1000.0)  # degrees Celsius

PROCESS = Obj(
    pid=Int(1, MAX_PID), start_time=BYTES, user=NAME, name=NAME, cmdline=Str(CMDLINE_CHARS),
    cpu_percent=PROCESS_PERCENT, rss=BYTES, kill=Bool(),
)

# One entry of the containers section: Docker/Podman (names, health, restarts from the Engine
# API) and LXC containers, figures from each one's cgroup (docs/agent-protocol.md).
CONTAINER = Obj(
    name=NAME, id=SHORT, engine=SHORT, image=NAME, state=SHORT, status=NAME, health=SHORT,
    restarts=COUNT, uptime=Num(0, MAX_DURATION), cpu_percent=PROCESS_PERCENT, cpu_limit=Num(0, MAX_CPUS),
    memory_used=BYTES, memory_limit=BYTES, memory_percent=MEMORY_PERCENT, pids=COUNT,
    read_rate=RATE, write_rate=RATE, rx_rate=RATE, tx_rate=RATE,
)

SCHEMA = Obj(
    agent=Obj(version=SHORT, sha256=SHORT, python=SHORT),
    timestamp=Num(0, MAX_TIME),
    hostname=NAME,
    uptime=Num(0, MAX_DURATION),
    cpu=Obj(percent=PERCENT, user=PERCENT, system=PERCENT, iowait=PERCENT, steal=PERCENT,
            count=Int(0, MAX_CPUS), per_core=List(PERCENT, MAX_CPUS), limit=Num(0, MAX_CPUS), source=SHORT),
    load=Obj(load1=Num(0, MAX_LOAD), load5=Num(0, MAX_LOAD), load15=Num(0, MAX_LOAD)),
    memory=Obj(total=BYTES, available=BYTES, used=BYTES, percent=MEMORY_PERCENT,
               swap_total=BYTES, swap_used=BYTES, swap_percent=MEMORY_PERCENT, source=SHORT),
    filesystems=List(Obj(device=NAME, mountpoint=NAME, fstype=SHORT, total=BYTES, used=BYTES, free=BYTES,
                         percent=PERCENT, inodes_total=BYTES, inodes_used=BYTES, inodes_percent=PERCENT),
                     MAX_FILESYSTEMS),
    disk_io=Obj(read_rate=RATE, write_rate=RATE,
                devices=List(Obj(name=NAME, read_rate=RATE, write_rate=RATE, read_bytes=BYTES, write_bytes=BYTES),
                             MAX_DISKS)),
    network=Obj(rx_rate=RATE, tx_rate=RATE,
                interfaces=List(Obj(name=NAME, rx_bytes=BYTES, tx_bytes=BYTES, rx_rate=RATE, tx_rate=RATE,
                                    rx_errors=BYTES, tx_errors=BYTES, rx_drops=BYTES, tx_drops=BYTES),
                                MAX_INTERFACES)),
    processes=Obj(count=COUNT, top_cpu=List(PROCESS, TOP_LIST), top_memory=List(PROCESS, TOP_LIST),
                  watched=Map(COUNT, MAX_UNITS)),
    systemd=Obj(available=Bool(), failed=List(NAME, MAX_UNITS), watched=Map(SHORT, MAX_UNITS)),
    docker=Obj(available=Bool(),
               containers=List(Obj(name=NAME, id=SHORT, image=NAME, state=SHORT, status=NAME), MAX_CONTAINERS)),
    containers=Obj(available=Bool(), reason=NAME, cgroup=Int(1, 2), count=COUNT,
                   containers=List(CONTAINER, MAX_CONTAINER_ENTRIES)),
    sensors=Obj(available=Bool(), reason=NAME,
                temperatures=List(Obj(name=SHORT, label=SHORT, celsius=TEMPERATURE, high=TEMPERATURE,
                                      critical=TEMPERATURE), MAX_SENSORS),
                fans=List(Obj(name=SHORT, label=SHORT, rpm=Int(0, 1_000_000)), MAX_SENSORS)),
    smart=Obj(available=Bool(), reason=NAME, sampled_at=Num(0, MAX_TIME),
              disks=List(Obj(device=NAME, model=NAME, serial=SHORT, passed=Bool(), temperature=Int(0, 1000),
                             reallocated=BYTES, pending=BYTES, percentage_used=Int(0, 1000), media_errors=BYTES,
                             power_on_hours=BYTES, error=NAME), MAX_SMART_DISKS)),
    gpus=Obj(available=Bool(), reason=NAME, sampled_at=Num(0, MAX_TIME),
             gpus=List(Obj(vendor=SHORT, index=Int(0, 1024), name=NAME, id=SHORT, utilization=PERCENT,
                           memory_used=BYTES, memory_total=BYTES, temperature=TEMPERATURE, power=Num(0, 1e5),
                           power_limit=Num(0, 1e5),
                           processes=List(Obj(pid=Int(1, MAX_PID), name=Str(CMDLINE_CHARS), memory_used=BYTES),
                                          GPU_PROCESSES)), MAX_GPUS)),
    inventory_hash=Str(128),
    errors=Map(NAME, MAX_ERRORS),
)

INVENTORY = Obj(
    hostname=NAME,
    os=Obj(id=SHORT, name=NAME, version_id=SHORT, pretty_name=NAME),
    kernel=NAME,
    arch=SHORT,
    virtualization=SHORT,
    cpu=Obj(model=NAME, count=Int(0, MAX_CPUS), limit=Num(0, MAX_CPUS)),
    memory_total=BYTES,
    block_devices=List(Obj(name=NAME, size=BYTES, model=NAME, rotational=Bool(), removable=Bool()), MAX_DISKS),
    filesystems=List(Obj(device=NAME, mountpoint=NAME, fstype=SHORT, total=BYTES), MAX_FILESYSTEMS),
    interfaces=List(Obj(name=NAME, mac=SHORT, mtu=Int(0, 2**32 - 1), addresses=List(SHORT, MAX_ADDRESSES)),
                    MAX_INTERFACES),
)

# GET /api/health: the authenticated answer (uptime, pid, policy) and the anonymous one
# (protocol, and auth: "ready" or why the agent has no usable secret; docs/agent-protocol.md).
HEALTH = Obj(status=SHORT, version=SHORT, sha256=SHORT, uptime=Num(0, MAX_DURATION), python=SHORT,
             pid=Int(1, MAX_PID), policy=NAME, protocol=SHORT, auth=NAME)


# orjson's value equals the standard library's for every document it accepts but two kinds,
# which go to the standard library: integers of 19 digits or more (orjson makes those over 64
# bits floats) and nesting the standard library refuses and orjson does not (up to 1,024 deep;
# fewer than MAX_FAST_BRACKETS brackets cannot nest that deep). tests/test_document.py checks
# that both paths agree, on hypothesis' documents and on the hostile ones.
MAX_FAST_BRACKETS = 600
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def _fast_safe(body: bytes) -> bool:
    # translate + find: a few microseconds where a regex for 19 digits took 100
    return body.count(b"[") + body.count(b"{") < MAX_FAST_BRACKETS and \
        _LONG_NUMBER not in body.translate(_DIGITS_AS_ZERO)


def decode(body: bytes, root: str = "document") -> object:
    """The JSON value of body; NaN/Infinity decode to markers normalise() refuses. Raises BAD_PAYLOAD."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise PollError(BAD_PAYLOAD, f"{root}: {len(body)} bytes, over the {MAX_DOCUMENT_BYTES}-byte cap")
    if orjson is not None and _fast_safe(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # what orjson refuses (NaN, 1e400, lone surrogates, bad UTF-8, ...): the answer below
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PollError(BAD_PAYLOAD, f"{root}: not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_NonFinite)
    except (ValueError, RecursionError) as exc:
        # ValueError covers integers of more than 4,300 digits too
        raise PollError(BAD_PAYLOAD, f"{root}: not JSON: {clean(str(exc), 120)}") from None


def _normalise(schema: Obj, doc: object, required: tuple[str, ...], root: str) -> dict:
    if type(doc) is not dict:
        raise PollError(BAD_PAYLOAD, f"{root or 'document'}: expected an object, got {_describe(doc)}")
    prefix = root + "." if root else ""
    for key in required:
        if doc.get(key) is None:
            raise PollError(BAD_PAYLOAD, f"{prefix}{key}: missing")
    try:
        return schema.norm(doc)
    except _Bad as bad:
        raise PollError(BAD_PAYLOAD, f"{prefix}{bad.where()}: {bad.problem}") from None


def normalise(doc: object) -> dict:
    """The /api/all document reduced to what the protocol allows. Raises BAD_PAYLOAD naming the field."""
    return _normalise(SCHEMA, doc, ("timestamp", "hostname"), "")


def normalise_inventory(doc: object) -> dict:
    """The /api/inventory document reduced to what the protocol allows. Raises BAD_PAYLOAD naming
    the field (as inventory.FIELD)."""
    return _normalise(INVENTORY, doc, (), "inventory")


def normalise_health(doc: object) -> dict:
    """The /api/health answer reduced to what the protocol allows. Raises BAD_PAYLOAD naming the field."""
    return _normalise(HEALTH, doc, (), "health")


def dumps(doc: dict) -> str:
    """The compact JSON text a normalised document is stored as (at most MAX_DOCUMENT_BYTES)."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # Cut strings can grow by an ellipsis: check the text too, not only the body it came from.
    if len(text) > MAX_DOCUMENT_BYTES // 4 and len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise PollError(BAD_PAYLOAD, f"document: {len(text.encode())} bytes after normalising, "
                                     f"over the {MAX_DOCUMENT_BYTES}-byte cap")
    return text
