"""Domain records, errors and the vocabulary tables shared by every layer (no I/O here)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

# The vocabulary: every server status, failure reason, key figure, alert metric, built-in
# rule, action kind and role is one record in one of the tables below, and every module reads
# its lists from here: adding one is adding a record here.


@dataclass(frozen=True)
class Status:
    """A server status, as lists, the page and the CLI show it."""

    name: str
    text: str
    colour: str  # the CLI's colour for it


ONLINE, OFFLINE, ERROR, UNKNOWN = "online", "offline", "error", "unknown"
STATUSES: dict[str, Status] = {s.name: s for s in (
    Status(ONLINE, "the last poll succeeded", "green"),
    Status(OFFLINE, "the host has not answered for poll.offline_after polls in a row", "red"),
    Status(ERROR, "the host answers, but the poll cannot succeed until something is fixed", "yellow"),
    Status(UNKNOWN, "not polled yet", "dim"),
)}


@dataclass(frozen=True)
class Reason:
    """Why a poll failed; it becomes the server's status_reason."""

    name: str
    text: str  # what it means for the operator (CLI hints, docs)
    # The status it gives: ERROR at once (SSH works, so the host itself is not offline), or
    # OFFLINE once poll.offline_after polls in a row failed (the status stays until then).
    status: str
    alert_metric: str  # the poll.* alert metric that counts polls failing this way in a row
    blocks_polling: bool = False  # polling stops until an operator re-trusts the host


UNREACHABLE = "unreachable"
AUTH_FAILED = "auth_failed"
HOST_KEY_MISMATCH = "host_key_mismatch"
HOST_KEY_UNKNOWN = "host_key_unknown"
AGENT_DOWN = "agent_down"
AGENT_ERROR = "agent_error"
BAD_PAYLOAD = "bad_payload"
TIMEOUT = "timeout"
AGENT_IMPOSTOR = "agent_impostor"
AGENT_NEEDS_REDEPLOY = "agent_needs_redeploy"
BASTION_UNREACHABLE = "bastion_unreachable"
HOST_CERT_INVALID = "host_cert_invalid"
CENTRAL_ERROR = "central_error"
REASONS: dict[str, Reason] = {r.name: r for r in (
    Reason(UNREACHABLE, "cannot reach the host over SSH", OFFLINE, "poll.unreachable"),
    Reason(AUTH_FAILED, "SSH refused the central's key", ERROR, "poll.auth_failed"),
    Reason(HOST_KEY_MISMATCH, "the host key changed; polling stopped until an operator re-trusts it", ERROR,
           "poll.host_key_mismatch", blocks_polling=True),
    Reason(HOST_KEY_UNKNOWN, "no host key pinned yet", ERROR, "poll.host_key_mismatch", blocks_polling=True),
    Reason(AGENT_DOWN, "SSH works but nothing answers on the agent port", ERROR, "poll.agent_down"),
    Reason(AGENT_ERROR, "the agent answered with an error", ERROR, "poll.agent_error"),
    Reason(BAD_PAYLOAD, "the agent's answer is not a valid agent document", ERROR, "poll.bad_payload"),
    Reason(TIMEOUT, "the poll timed out", OFFLINE, "poll.unreachable"),
    # Not blocking: the central keeps asking for the agent's proof, and polls again as soon as
    # the genuine agent answers (the squatter left); nothing unproven is ever used.
    Reason(AGENT_IMPOSTOR, "what answers on the agent port does not prove it holds the host's secret "
           "(a squatter on the port, or a secret that differs): it is not polled", ERROR,
           "poll.agent_impostor"),
    # Not blocking: a host whose expired certificate is renewed is polled again by itself.
    Reason(HOST_CERT_INVALID, "the host's certificate is refused (expired, not yet valid, not for this name, or "
           "signed by a CA the central does not trust): it is not polled", ERROR, "poll.host_cert_invalid"),
    # Its own alert metric, whose rule (unreachable_via_bastion) is held back while the bastion's
    # own alert fires: a bastion down raises ONE alert, not one per host behind it.
    Reason(BASTION_UNREACHABLE, "the bastion it is reached through cannot be reached (the bastion's own "
           "status and alert say why)", OFFLINE, "poll.bastion_unreachable"),
    Reason(AGENT_NEEDS_REDEPLOY, "the central has no agent secret for this server (an agent deployed "
           "before agents authenticated, or its secret not handed over): redeploy it with central deploy",
           ERROR, "poll.agent_needs_redeploy"),
    # A poll that failed inside the central itself (a bug): the server's loop survives it and
    # polls again at the next interval; the central's log has the traceback, once per change.
    Reason(CENTRAL_ERROR, "the central failed while polling this server (a bug in the central: its log "
           "has the traceback); it polls again at the next interval", ERROR, "poll.central_error"),
)}
REASON_TEXT = {r.name: r.text for r in REASONS.values()}
BLOCKING_REASONS = frozenset(r.name for r in REASONS.values() if r.blocks_polling)


@dataclass(frozen=True)
class Metric:
    """A key figure: a column of samples and rollups, a field of the API's samples and history,
    a gauge on /metrics, an alert metric, a label on the page and in the CLI."""

    column: str  # samples / rollups column, key in samples and history series
    # Where the agent document has it: doc[section][key]; when doc[section] is a list, the
    # largest value of key over its entries (the fullest filesystem).
    section: str
    key: str
    unit: str  # percent | load | bytes_per_second | count
    alert: str | None  # the alert metric name (alert rules); None: none
    prom: str  # the /metrics gauge
    help: str  # its /metrics help text
    label: str  # how the page and the CLI name it
    integer: bool = False  # stored as an integer (a count)
    fleet_average: bool = False  # averaged over online servers in the fleet figures


METRICS: dict[str, Metric] = {m.column: m for m in (
    Metric("cpu", "cpu", "percent", "percent", "cpu.percent", "central_server_cpu_percent",
           "CPU busy percent of the server.", "CPU", fleet_average=True),
    Metric("mem", "memory", "percent", "percent", "memory.percent", "central_server_memory_percent",
           "Memory used percent of the server.", "memory", fleet_average=True),
    Metric("swap", "memory", "swap_percent", "percent", "swap.percent", "central_server_swap_percent",
           "Swap used percent of the server.", "swap", fleet_average=True),
    Metric("load1", "load", "load1", "load", "load.1", "central_server_load1",
           "1-minute load average of the server.", "load 1m", fleet_average=True),
    Metric("load5", "load", "load5", "load", "load.5", "central_server_load5",
           "5-minute load average of the server.", "load 5m"),
    Metric("load15", "load", "load15", "load", "load.15", "central_server_load15",
           "15-minute load average of the server.", "load 15m"),
    Metric("disk", "filesystems", "percent", "percent", None, "central_server_disk_percent",
           "Used percent of the server's fullest filesystem.", "disk", fleet_average=True),
    Metric("net_rx", "network", "rx_rate", "bytes_per_second", "network.rx_rate",
           "central_server_network_receive_bytes_per_second", "Bytes per second received, all interfaces.",
           "received"),
    Metric("net_tx", "network", "tx_rate", "bytes_per_second", "network.tx_rate",
           "central_server_network_transmit_bytes_per_second", "Bytes per second sent, all interfaces.", "sent"),
    Metric("disk_read", "disk_io", "read_rate", "bytes_per_second", "disk_io.read_rate",
           "central_server_disk_read_bytes_per_second", "Bytes per second read from disks.", "read"),
    Metric("disk_write", "disk_io", "write_rate", "bytes_per_second", "disk_io.write_rate",
           "central_server_disk_write_bytes_per_second", "Bytes per second written to disks.", "written"),
    Metric("procs", "processes", "count", "count", "process.count", "central_server_processes",
           "Number of processes on the server.", "processes", integer=True),
)}


@dataclass(frozen=True)
class ContainerMetric:
    """A per-container figure: a column of container_samples and container_rollups, a series of
    the API's container history, a per-container alert metric (label: the container's name)."""

    column: str
    key: str  # the field of an agent containers.containers[] entry
    unit: str  # percent | bytes | bytes_per_second | count
    alert: str
    label: str
    integer: bool = False


CONTAINER_METRICS: dict[str, ContainerMetric] = {m.column: m for m in (
    ContainerMetric("cpu", "cpu_percent", "percent", "container.cpu_percent", "CPU (% of one core)"),
    ContainerMetric("mem", "memory_percent", "percent", "container.memory_percent", "memory (% of limit)"),
    ContainerMetric("mem_used", "memory_used", "bytes", "container.memory_used", "memory used", integer=True),
    ContainerMetric("net_rx", "rx_rate", "bytes_per_second", "container.network.rx_rate", "received"),
    ContainerMetric("net_tx", "tx_rate", "bytes_per_second", "container.network.tx_rate", "sent"),
    ContainerMetric("disk_read", "read_rate", "bytes_per_second", "container.disk.read_rate", "read"),
    ContainerMetric("disk_write", "write_rate", "bytes_per_second", "container.disk.write_rate", "written"),
    ContainerMetric("pids", "pids", "count", "container.pids", "processes", integer=True),
)}
# Per server, at most this many containers are stored per poll (running ones first, then by
# name; the agent sends at most 100): 50 x 8 figures a poll bounds container_samples the way
# samples are bounded (raw.retention, then rollups).
MAX_STORED_CONTAINERS = 50
# Container states (the agent's containers[].state) that count as running for container alerts.
CONTAINER_RUNNING_STATES = frozenset(["running"])
CONTAINER_HEALTH = ("healthy", "unhealthy", "starting")


@dataclass(frozen=True)
class AlertMetric:
    """An alert metric that is not a key figure's (those are Metric.alert): a fact of the poll
    (central.sample.extract_facts), one value per label, or a count of failed polls."""

    name: str
    unit: str
    fact: str | None = None  # one value per server: the poll's facts[fact]
    label: str | None = None  # one value per label: what the label names (central.alerts computes it)
    reasons: tuple[str, ...] = ()  # poll.*: polls failing in a row with one of these reasons


def _poll_metrics() -> tuple[AlertMetric, ...]:
    groups: dict[str, list[str]] = {}
    for r in REASONS.values():
        groups.setdefault(r.alert_metric, []).append(r.name)
    return tuple(AlertMetric(name, "count", reasons=tuple(rs)) for name, rs in groups.items())


ALERT_METRICS: dict[str, AlertMetric] = {a.name: a for a in (
    *(AlertMetric(m.alert, m.unit) for m in METRICS.values() if m.alert),
    AlertMetric("cpu.iowait", "percent", fact="iowait"),
    AlertMetric("cpu.steal", "percent", fact="steal"),
    AlertMetric("uptime", "seconds", fact="uptime"),
    AlertMetric("systemd.failed", "count", fact="systemd_failed"),
    AlertMetric("agent.collector_errors", "count", fact="collector_errors"),
    AlertMetric("disk.percent", "percent", label="mountpoint"),
    AlertMetric("inode.percent", "percent", label="mountpoint"),
    AlertMetric("network.errors", "per_second", label="interface"),
    AlertMetric("network.drops", "per_second", label="interface"),
    AlertMetric("systemd.unit_active", "boolean", label="unit"),
    AlertMetric("process.watched", "count", label="process name"),
    *(AlertMetric(m.alert, m.unit, label="container") for m in CONTAINER_METRICS.values()),
    AlertMetric("container.running", "boolean", label="container"),  # 1 running, 0 not (exited, stopped)
    AlertMetric("container.healthy", "boolean", label="container"),  # 0 when the healthcheck says unhealthy
    AlertMetric("container.restarts", "count", label="container"),  # restarts since the previous poll
    AlertMetric("sensor.over_critical", "celsius", label="sensor"),  # degrees above the sensor's own critical mark
    AlertMetric("smart.failing", "boolean", label="disk"),  # 1 when SMART's overall assessment is failed
    *_poll_metrics(),
)}
POLL_METRICS = tuple(a.name for a in ALERT_METRICS.values() if a.reasons)


@dataclass(frozen=True)
class BuiltinRule:
    """A rule every central has; [alerts] settings tune it, overrides change it per server."""

    name: str
    metric: str
    op: str
    threshold: float | str  # a number, or the [alerts] setting that gives it
    for_: float | str  # seconds, or the [alerts] setting that gives them
    severity: str
    summary: str
    keep_firing: bool = True  # whether alerts.keep_firing_for applies
    # While it fires the server cannot be observed: its other alerts are not notified
    # (alerts.builtin_inhibit), since their figures are stale.
    inhibits_server: bool = False
    # While it fires on a bastion, the hosts behind it cannot be reached either: their
    # unreachable_via_bastion alerts are held back (one alert for a bastion down, not one per host).
    blocks_tunnels: bool = False


INVENTORY_RULE = "inventory_changed"  # evaluated on inventory changes, not on a metric
# Critical, about the central itself (no server): its database cannot be written; it fires and
# resolves with the poll writer's storage health (central.writer), and is sent without waiting
# for the database it is about.
STORAGE_RULE = "storage_failing"
BUILTIN_RULES: dict[str, BuiltinRule] = {b.name: b for b in (
    BuiltinRule("server_unreachable", "poll.unreachable", ">=", "unreachable_after", 0.0, "critical",
                "cannot reach {server} over SSH ({value} polls in a row): {error}", inhibits_server=True,
                blocks_tunnels=True),
    BuiltinRule("host_key_mismatch", "poll.host_key_mismatch", ">=", 1.0, 0.0, "critical",
                "{server}: the SSH host key is not the pinned one; polling stopped until an operator "
                "re-trusts it (central server trust): {error}", keep_firing=False, inhibits_server=True,
                blocks_tunnels=True),
    BuiltinRule("ssh_auth_failed", "poll.auth_failed", ">=", "agent_failures_after", 0.0, "critical",
                "{server} refuses the central's SSH key ({value} polls in a row): {error}", blocks_tunnels=True),
    BuiltinRule("host_cert_invalid", "poll.host_cert_invalid", ">=", 1.0, 0.0, "critical",
                "{server}: its SSH host certificate is refused, so it is not polled: {error}",
                inhibits_server=True, blocks_tunnels=True),
    # Held back while its bastion's own alert fires (central.muting.bastion_inhibited), so a
    # bastion down is one alert; it waits a minute so that alert, polled at another phase of the
    # interval, fires first. Fires alone when the bastion answers but cannot carry the tunnel.
    BuiltinRule("unreachable_via_bastion", "poll.bastion_unreachable", ">=", "unreachable_after", 60.0, "critical",
                "{server} cannot be reached through its bastion ({value} polls in a row): {error}",
                inhibits_server=True, blocks_tunnels=True),
    BuiltinRule("agent_down", "poll.agent_down", ">=", "agent_failures_after", 0.0, "warning",
                "SSH to {server} works but its agent does not answer ({value} polls in a row): {error}"),
    BuiltinRule("agent_error", "poll.agent_error", ">=", "agent_failures_after", 0.0, "warning",
                "the agent on {server} answers with errors ({value} polls in a row): {error}"),
    BuiltinRule("agent_bad_payload", "poll.bad_payload", ">=", "agent_failures_after", 0.0, "warning",
                "the agent on {server} sends invalid documents ({value} polls in a row): {error}"),
    BuiltinRule("agent_impostor", "poll.agent_impostor", ">=", 1.0, 0.0, "critical",
                "{server}: what answers on the agent's port does not prove it holds the host's secret, "
                "so it is not polled (another process on the port, or a secret that differs): {error}"),
    BuiltinRule("agent_needs_redeploy", "poll.agent_needs_redeploy", ">=", 1.0, 0.0, "warning",
                "{server}: the central has no agent secret for it, so it is not polled; run "
                "`central deploy {server}`: {error}"),
    BuiltinRule("central_error", "poll.central_error", ">=", 1.0, 0.0, "warning",
                "the central itself fails while polling {server} (a bug in the central; its log has "
                "the traceback): {error}"),
    BuiltinRule("disk_almost_full", "disk.percent", ">=", "disk_full_percent", "disk_full_for", "warning",
                "{label} on {server} is {value}% full (threshold {threshold}%)"),
    BuiltinRule("systemd_unit_inactive", "systemd.unit_active", "<", 1.0, "unit_inactive_for", "warning",
                "watched unit {label} on {server} is {state}"),
    BuiltinRule("process_missing", "process.watched", "<", 1.0, "process_missing_for", "warning",
                "no process named {label} runs on {server}"),
    # Container alerts: a container seen running that no longer runs (one never seen running
    # since the central started is not alerted on: a stopped spare is not an incident), one
    # whose healthcheck fails, one that restarted since the previous poll.
    BuiltinRule("container_stopped", "container.running", "<", 1.0, 60.0, "warning",
                "container {label} on {server} is {state}"),
    BuiltinRule("container_unhealthy", "container.healthy", "<", 1.0, 60.0, "warning",
                "container {label} on {server} is unhealthy ({state})"),
    BuiltinRule("temperature_critical", "sensor.over_critical", ">=", 0.0, 0.0, "critical",
                "sensor {label} on {server} is at or above its critical temperature ({value} °C over it)"),
    BuiltinRule("disk_failing", "smart.failing", ">=", 1.0, 0.0, "critical",
                "disk {label} on {server}: SMART says it is failing"),
    BuiltinRule("container_restarting", "container.restarts", ">=", 1.0, 0.0, "warning",
                "container {label} on {server} restarted {value} times since the previous poll ({state})"),
)}
BUILTIN_RULE_NAMES = (*BUILTIN_RULES, INVENTORY_RULE, STORAGE_RULE)


@dataclass(frozen=True)
class ActionKind:
    """A remote action the agent carries out (the agent's policy says which a host allows)."""

    name: str
    arguments: tuple[str, ...]  # what the request may carry
    text: str
    agent_function: str  # the bundled agent's function for it (run in-process for `local`)


ACTION_KINDS: dict[str, ActionKind] = {k.name: k for k in (
    ActionKind("kill", ("pid", "signal", "start_time"), "send a signal to a process", "action_kill"),
    ActionKind("service", ("unit", "verb"), "start, stop or restart a systemd service", "action_service"),
    ActionKind("docker", ("container", "verb"), "start, stop or restart a docker container", "action_docker"),
)}


@dataclass(frozen=True)
class Role:
    """A user's role; each includes the ones listed before it."""

    name: str
    text: str
    may_act: bool  # may run remote actions


VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
ROLES: dict[str, Role] = {r.name: r for r in (
    Role(VIEWER, "read-only", False),
    Role(OPERATOR, "may act: remote actions, acknowledging alerts, testing servers", True),
    Role(ADMIN, "manages servers, users and tokens", True),
)}


@dataclass(frozen=True)
class Right:
    """A permission an admin grants a user on top of their role (admins need it granted too)."""

    name: str
    text: str


TERMINAL = "terminal"
RIGHTS: dict[str, Right] = {r.name: r for r in (
    Right(TERMINAL, "may open a web terminal (a shell) on servers where the terminal is enabled"),
)}


class CentralError(Exception):
    """A domain error with a short code, shown to users as one line (CLI) or a JSON 4xx (API)."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail


class Invalid(CentralError):
    """Input that breaks a rule (bad name, bad port, unknown field)."""

    status, code = 400, "invalid"


class Forbidden(CentralError):
    """The caller may not do this."""

    status, code = 403, "forbidden"


class NotFound(CentralError):
    """No such server (or user, alert, token...)."""

    status, code = 404, "not_found"


class Conflict(CentralError):
    """The thing exists already, or its state forbids the request."""

    status, code = 409, "conflict"


class Unavailable(CentralError):
    """A host or agent could not be reached to carry out the request."""

    status, code = 502, "unavailable"


class StorageUnavailable(CentralError):
    """The database cannot be written now (locked by another process, read-only, disk full)."""

    status, code = 503, "storage_unavailable"


class PollError(CentralError):
    """A failed poll (or connection), classified by reason."""

    status, code = 502, "poll_failed"

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class Server:
    """A monitored server as stored in the servers table."""

    id: int
    name: str
    host: str
    kind: str = "ssh"
    port: int = 22
    user: str = "root"
    key_path: str | None = None
    agent_port: int = 8083
    tags: tuple[str, ...] = ()
    interval_s: float | None = None
    host_key: str | None = None
    host_key_fingerprint: str | None = None
    status: str = UNKNOWN
    status_reason: str | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    last_seen: float | None = None
    last_poll: float | None = None
    poll_duration: float | None = None
    agent_version: str | None = None
    agent_sha256: str | None = None
    hostname: str | None = None
    inventory_hash: str | None = None
    created_at: float = 0.0
    via: int | None = None  # the id of the bastion server it is reached through (None: directly)

    @classmethod
    def from_row(cls, row) -> "Server":
        """Build from a row (a mapping of column to value) of the servers table."""
        d = dict(row)
        d["tags"] = tuple(json.loads(d.get("tags") or "[]"))
        if d.keys() == _SERVER_FIELD_SET:
            # A full row: fill the frozen instance directly. The generated __init__ costs ~40 us a
            # row (25 object.__setattr__ calls), 40 ms per reload of a 1,000-server fleet.
            server = object.__new__(cls)
            server.__dict__.update(d)
            return server
        return cls(**{k: v for k, v in d.items() if k in _SERVER_FIELD_SET})

    @property
    def connection_key(self) -> tuple:
        """What identifies the SSH connection; a change means reconnect."""
        return (self.host, self.port, self.user, self.key_path, self.host_key, self.via)

    def to_dict(self) -> dict:
        """A JSON-ready dict of the stored fields."""
        d = {k: getattr(self, k) for k in _SERVER_FIELDS}
        d["tags"] = list(self.tags)
        return d


_SERVER_FIELDS = tuple(Server.__dataclass_fields__)
_SERVER_FIELD_SET = frozenset(_SERVER_FIELDS)


@dataclass
class PollOutcome:
    """The result of one poll, queued for the single writer."""

    server_id: int
    ts: float
    duration: float
    ok: bool
    reason: str | None = None
    error: str | None = None
    doc_text: str | None = None  # the agent document as received (compact JSON)
    sample: dict | None = None  # key figures, see central.sample.extract_sample
    agent_version: str | None = None
    agent_sha256: str | None = None
    hostname: str | None = None
    inventory_hash: str | None = None
    extra: dict = field(default_factory=dict)
