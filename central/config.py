"""Configuration: one TOML file loaded into frozen dataclasses, CENTRAL_* overrides on top.

Every key and its default is documented in config.example.toml. A bad file or value raises
ConfigError with one line naming the key and what is wrong; nothing starts half-configured.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from . import model


class ConfigError(Exception):
    """A configuration problem, described in one line that names the key."""


def default_data_dir() -> Path:
    """Where the database and the central's key live unless configured."""
    env = os.environ.get("CENTRAL_DATA_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/central")
    return Path.home() / ".local" / "share" / "central"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: object, key: str) -> float:
    """Turn 10, 2.5, "90s", "5m", "48h", "14d" or "2w" into seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like 10s, 5m or 48h, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigError(f"{key}: expected a duration like 10s, 5m or 48h, got {value!r}")
    if seconds < 0:
        raise ConfigError(f"{key}: must not be negative, got {value!r}")
    return seconds


@dataclass(frozen=True)
class HTTPConfig:
    listen: str = "127.0.0.1"
    port: int = 9083
    # Host header values accepted besides the listen address and localhost (DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    # False lets Prometheus scrape /metrics without a token.
    metrics_auth: bool = True
    max_body_bytes: int = 1_048_576
    session_max_age: float = 12 * 3600.0
    # Mark the session cookie Secure (only sent over https): set when a TLS proxy fronts central.
    cookie_secure: bool = False
    # File holding the cookie-signing secret; created on first start when empty.
    session_secret_file: str = ""
    # Failed logins of one user from one address before each further one doubles the wait;
    # the same user from all addresses together gets login_attempts_per_user.
    login_attempts: int = 5
    login_attempts_per_user: int = 50
    login_backoff_max: float = 900.0


@dataclass(frozen=True)
class DatabaseConfig:
    path: str = ""  # empty: <data_dir>/central.db
    # How long the serving process's write waits for a lock another process holds before the
    # batch goes to the outage buffer (reads share the connection and wait behind it).
    lock_timeout: float = 1.0
    # Poll outcomes kept in memory while the database cannot be written (oldest dropped first);
    # about 4 KB each (bench/bench_hostile.py), so 10,000 is about 40 MB.
    outage_buffer: int = 10000


@dataclass(frozen=True)
class StorageConfig:
    """`[storage]`: which backend. Empty url: SQLite at database.path (the embedded default);
    "postgresql://..." (or postgres://): that PostgreSQL database (central.storage.postgres)."""

    url: str = ""


@dataclass(frozen=True)
class RemoteWriteConfig:
    """`[remote_write]`: also send every sample to a Prometheus remote-write receiver (central.remotewrite)."""

    url: str = ""  # empty: off; e.g. http://127.0.0.1:9090/api/v1/write
    timeout: float = 10.0
    batch_size: int = 2000  # samples per request
    max_samples: int = 100_000  # kept in memory while the receiver is away (oldest dropped first)
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    bearer_token_file: str = ""  # a file holding the token sent as Authorization: Bearer


@dataclass(frozen=True)
class ClusterConfig:
    """`[cluster]`: several centrals on one PostgreSQL database share the fleet (central.cluster)."""

    enabled: bool = False
    # A member that stops heartbeating loses its servers within this long.
    ttl: float = 15.0
    member: str = ""  # this central's name in the cluster; empty: hostname:http port:pid


@dataclass(frozen=True)
class PollConfig:
    interval: float = 10.0
    timeout: float = 5.0
    offline_after: int = 3
    max_response_bytes: int = 4 * 1024 * 1024
    # Monitor the central's own host as server "local", collected in-process.
    local: bool = True
    local_name: str = "local"
    # How often the poller re-reads the server list (servers added by the CLI show up).
    reload_interval: float = 5.0
    # Processes that poll the SSH servers beside the serving one (central.pollworker), each a
    # share of the fleet; 0: the serving process polls them itself.
    workers: int = 0


@dataclass(frozen=True)
class SSHConfig:
    key_path: str = ""  # empty: <data_dir>/id_ed25519
    connect_timeout: float = 10.0
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    max_concurrent_connects: int = 50
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    ciphers: tuple[str, ...] = (
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
        "aes128-ctr",
        "aes256-ctr",
    )
    # Host certificate authorities trusted instead of pinning each host key: a known_hosts-style
    # file whose @cert-authority lines count, and/or lines "PATTERNS KEYTYPE BASE64" here.
    host_ca_file: str = ""
    host_cas: tuple[str, ...] = ()
    # The central's user certificate, signed by a user CA the hosts trust. Empty: key_path +
    # "-cert.pub" when that file exists (as ssh does), else none.
    certificate_path: str = ""


@dataclass(frozen=True)
class RetentionConfig:
    raw: float = 48 * 3600.0
    minute: float = 14 * 86400.0
    hour: float = 400 * 86400.0
    # How often rollup and pruning run.
    maintenance_interval: float = 300.0
    # How long inventory history and the action audit log are kept.
    events: float = 365 * 86400.0
    # How long terminal recordings (and their session rows) are kept.
    recordings: float = 90 * 86400.0


SEVERITIES = ("info", "warning", "critical")
# Metrics an alert rule can watch (docs/alerts.md says where each comes from).
ALERT_METRICS = tuple(model.ALERT_METRICS)
# Rules every central has; [alerts] keys tune them, overrides change them per server.
BUILTIN_RULES = model.BUILTIN_RULE_NAMES
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
COMPARISONS = (">", ">=", "<", "<=", "==", "!=")
NOTIFIER_TYPES = ("webhook", "alertmanager", "command", "apprise")
# What group_by, inhibit `equal` and message grouping can name ("..." in group_by: every one,
# so each alert is its own group).
ALERT_LABELS = ("rule", "server", "severity", "label")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class AlertRule:
    """One `[[alerts.rules]]` entry: metric, comparison, threshold, timing and selector."""

    name: str = ""
    metric: str = ""
    op: str = ">"
    threshold: float = 0.0
    for_: float = 0.0  # TOML key `for`: how long the condition must hold before firing
    keep_firing_for: float = 0.0  # how long it stays firing after the condition clears
    severity: str = "warning"
    servers: tuple[str, ...] = ()  # server name globs; empty: every server
    tags: tuple[str, ...] = ()  # server tag globs; empty: any tags
    labels: tuple[str, ...] = ()  # label globs (mountpoint, interface, unit); empty: all
    summary: str = ""  # text with {server} {label} {value} {threshold}; empty: generated
    enabled: bool = True


@dataclass(frozen=True)
class AlertOverride:
    """One `[[alerts.overrides]]` entry: change or disable a rule for matching servers."""

    rule: str = ""  # rule name or glob
    servers: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    threshold: float | None = None
    for_: float | None = None
    keep_firing_for: float | None = None
    severity: str = ""  # empty: unchanged
    enabled: bool = True  # false disables the rule for the matching servers


@dataclass(frozen=True)
class RouteConfig:
    """`[alerts.route]` (the default route) or one `[[alerts.routes]]` entry: who gets what, grouped how."""

    channels: tuple[str, ...] = ()  # notifier names; empty in the default route: every notifier
    # Matchers (globs; all given must match; empty: any). Not allowed on the default route.
    severities: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    continue_: bool = False  # TOML key `continue`: also try the routes after this one
    # Alertmanager's grouping; unset on a route: the default route's value.
    group_by: tuple[str, ...] | None = None
    group_wait: float | None = None
    group_interval: float | None = None
    repeat_interval: float | None = None


@dataclass(frozen=True)
class InhibitRule:
    """One `[[alerts.inhibit]]` entry: while a source alert fires, matching target alerts are not sent."""

    source_rules: tuple[str, ...] = ()  # rule globs of the muting alerts
    source_severities: tuple[str, ...] = ()
    target_rules: tuple[str, ...] = ()  # rule globs of the muted alerts; empty: every rule
    target_severities: tuple[str, ...] = ()
    equal: tuple[str, ...] = ("server",)  # labels source and target must share (empty: anywhere)


@dataclass(frozen=True)
class MaintenanceWindow:
    """One `[[alerts.maintenance]]` entry: a weekly window (local time of a zone) muting matching alerts."""

    name: str = ""
    days: tuple[str, ...] = ()  # mon..sun the window starts on; empty: every day
    start: str = ""  # "HH:MM" local time
    end: str = ""  # "HH:MM"; at or before start: the next day
    time_zone: str = "UTC"  # an IANA zone name (zoneinfo), e.g. "Europe/Berlin"
    servers: tuple[str, ...] = ()  # server name globs
    tags: tuple[str, ...] = ()  # server tag globs
    rules: tuple[str, ...] = ()  # rule globs; empty: every rule


@dataclass(frozen=True)
class AlertsConfig:
    enabled: bool = True
    # Built-in rules (see docs/alerts.md); names in `disabled` are switched off everywhere.
    disabled: tuple[str, ...] = ()
    unreachable_after: int = 3  # consecutive failed polls (unreachable or timeout)
    # Consecutive polls failing with agent_down / agent_error / bad_payload / auth_failed.
    agent_failures_after: int = 2
    disk_full_percent: float = 90.0
    disk_full_for: float = 300.0
    unit_inactive_for: float = 60.0
    process_missing_for: float = 60.0
    # How long an inventory-change alert (info) stays open before it resolves by itself.
    inventory_alert_for: float = 3600.0
    # Against flapping: how long built-in alerts stay firing after their condition clears.
    keep_firing_for: float = 0.0
    # Base of links in notifications; empty: http://<http.listen>:<http.port>.
    external_url: str = ""
    # Pending notifications held per channel; beyond it the oldest is dropped (and counted).
    queue_size: int = 1000
    # Against an alert storm (a network loss takes hundreds of hosts down at once): each channel
    # sends at most storm_messages messages per storm_window; what comes beyond them waits and
    # goes out as one message that gathers them all. 0: no limit. Alertmanager channels group
    # by themselves and are never held.
    storm_messages: int = 10
    storm_window: float = 60.0
    # How often timers run: keep_firing_for expiry, repeats, silence changes.
    tick_interval: float = 10.0
    # Time zone of the times in notification texts (an IANA name).
    time_zone: str = "UTC"
    rules: tuple[AlertRule, ...] = ()
    overrides: tuple[AlertOverride, ...] = ()
    # Routing and grouping: the default route, then routes tried in order (first match wins).
    route: RouteConfig = field(default_factory=RouteConfig)
    routes: tuple[RouteConfig, ...] = ()
    # An unreachable server, or one whose host key changed, mutes its other alerts.
    builtin_inhibit: bool = True
    inhibit: tuple[InhibitRule, ...] = ()
    maintenance: tuple[MaintenanceWindow, ...] = ()


@dataclass(frozen=True)
class NotifierConfig:
    """One `[[notifiers]]` entry: a channel that alerts are sent to."""

    name: str = ""
    type: str = ""  # webhook | alertmanager | command | apprise
    url: str = ""  # webhook URL, the Alertmanager base URL (http://am:9093), or Apprise URL(s)
    # Where a secret URL comes from instead (never printed, logged or returned by the API):
    url_env: str = ""  # the name of an environment variable holding it
    url_file: str = ""  # a file holding it (apprise: one URL per line)
    argv: tuple[str, ...] = ()  # command: program and arguments, run without a shell
    timeout: float = 10.0
    retries: int = 3  # extra attempts after a failed one, with exponential backoff
    backoff: float = 1.0  # first retry delay; doubles each time
    backoff_max: float = 60.0
    min_severity: str = "info"
    severities: tuple[str, ...] = ()  # empty: every severity from min_severity up
    # Re-send while firing; 0 disables. Unset: 4h, or 1m for alertmanager (it expects re-sends).
    repeat_interval: float | None = None
    # Webhook: file whose content is sent as `Authorization: Bearer <token>`.
    token_file: str = ""
    send_resolved: bool = True


@dataclass(frozen=True)
class ActionsConfig:
    # How long the central waits for an action's answer (the agent gives systemctl 90 s).
    timeout: float = 120.0
    # Audit rows keep at most this many bytes of an action's output.
    output_max_bytes: int = 4096
    # Actions on the `local` server (the central's own host) run in-process under this
    # policy file, read like the agent reads its own (absent: the agent's default policy).
    local: bool = True
    local_policy: str = "/etc/central-agent.json"
    # A central running as root would act on its own host as root: refused unless this is true.
    local_as_root: bool = False


@dataclass(frozen=True)
class TerminalConfig:
    """`[terminal]`: the web terminal (docs/terminal.md)."""

    # The terminal's own key pair, never the polling key (docs/terminal.md).
    key_path: str = ""  # empty: <data_dir>/terminal_ed25519
    recordings_dir: str = ""  # empty: <data_dir>/recordings
    # A page login at most this old counts as re-authentication; older ones re-enter the password.
    fresh_auth: float = 300.0
    # A session without input for this long ends; no session lasts longer than max_duration.
    idle_timeout: float = 900.0
    max_duration: float = 3600.0
    max_sessions_per_user: int = 3
    # A recording may grow to this size; the session ends there (nothing goes unrecorded).
    max_recording_bytes: int = 64 * 1024 * 1024
    term: str = "xterm-256color"


@dataclass(frozen=True)
class TelegramConfig:
    """`[telegram]`: the optional bot (pip install 'central[telegram]') that answers allowed chats."""

    enabled: bool = False
    # The bot token (from @BotFather) comes from the environment or a file, never the config.
    token_env: str = ""
    token_file: str = ""
    allowed_chats: tuple[int, ...] = ()  # chat ids the bot answers; everyone else is ignored
    user: str = ""  # the central user whose role the bot's buttons act with (operator to ack/silence)
    api_url: str = "https://api.telegram.org"  # the Bot API server (a self-hosted one works too)
    poll_timeout: float = 30.0  # long polling: how long one getUpdates waits
    silence_for: float = 3600.0  # how long the Silence button mutes an alert


@dataclass(frozen=True)
class Config:
    data_dir: str = ""
    http: HTTPConfig = field(default_factory=HTTPConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    remote_write: RemoteWriteConfig = field(default_factory=RemoteWriteConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    poll: PollConfig = field(default_factory=PollConfig)
    ssh: SSHConfig = field(default_factory=SSHConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    terminal: TerminalConfig = field(default_factory=TerminalConfig)
    notifiers: tuple[NotifierConfig, ...] = ()
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    source: str = ""  # the file this came from, for messages

    @property
    def data_path(self) -> Path:
        """The data directory as a Path."""
        return Path(self.data_dir) if self.data_dir else default_data_dir()

    @property
    def database_path(self) -> Path:
        """The SQLite database file."""
        return Path(self.database.path) if self.database.path else self.data_path / "central.db"

    @property
    def database_target(self) -> str | Path:
        """What Storage.open opens: storage.url when set (PostgreSQL), else the SQLite file."""
        return self.storage.url or self.database_path

    @property
    def database_location(self) -> str:
        """Where the database is, for messages (a URL without its password, or the file)."""
        if self.storage.url:
            from .storage.postgres import safe_url

            return safe_url(self.storage.url)
        return str(self.database_path)

    @property
    def key_path(self) -> Path:
        """The central's private SSH key."""
        return Path(self.ssh.key_path) if self.ssh.key_path else self.data_path / "id_ed25519"

    @property
    def terminal_key_path(self) -> Path:
        """The terminal's private SSH key (kept apart from the polling key)."""
        return Path(self.terminal.key_path) if self.terminal.key_path else self.data_path / "terminal_ed25519"

    @property
    def recordings_path(self) -> Path:
        """The directory of terminal recordings (asciicast v2 files)."""
        return Path(self.terminal.recordings_dir) if self.terminal.recordings_dir else self.data_path / "recordings"

    @property
    def session_secret_path(self) -> Path:
        """The file with the secret that signs session cookies."""
        if self.http.session_secret_file:
            return Path(self.http.session_secret_file)
        return self.data_path / "session.key"


MAX_POLL_WORKERS = 64

# Keys whose values are durations (accept "5m" as well as seconds).
_DURATIONS = {
    "alerts.storm_window",
    "http.session_max_age",
    "database.lock_timeout",
    "http.login_backoff_max",
    "remote_write.timeout",
    "remote_write.backoff_initial",
    "remote_write.backoff_max",
    "cluster.ttl",
    "poll.interval",
    "poll.timeout",
    "poll.reload_interval",
    "ssh.connect_timeout",
    "ssh.keepalive_interval",
    "ssh.backoff_initial",
    "ssh.backoff_max",
    "retention.raw",
    "retention.minute",
    "retention.hour",
    "retention.maintenance_interval",
    "retention.events",
    "retention.recordings",
    "terminal.fresh_auth",
    "terminal.idle_timeout",
    "terminal.max_duration",
    "actions.timeout",
    "alerts.disk_full_for",
    "alerts.unit_inactive_for",
    "alerts.process_missing_for",
    "alerts.inventory_alert_for",
    "alerts.keep_firing_for",
    "alerts.tick_interval",
    "alerts.rules.for",
    "alerts.rules.keep_firing_for",
    "alerts.overrides.for",
    "alerts.overrides.keep_firing_for",
    "notifiers.timeout",
    "notifiers.backoff",
    "notifiers.backoff_max",
    "notifiers.repeat_interval",
    "telegram.poll_timeout",
    "telegram.silence_for",
    "alerts.route.group_wait",
    "alerts.route.group_interval",
    "alerts.route.repeat_interval",
    "alerts.routes.group_wait",
    "alerts.routes.group_interval",
    "alerts.routes.repeat_interval",
}
_POSITIVE = {
    "alerts.storm_window",
    "http.max_body_bytes",
    "database.lock_timeout",
    "database.outage_buffer",
    "remote_write.timeout",
    "remote_write.batch_size",
    "remote_write.max_samples",
    "remote_write.backoff_initial",
    "remote_write.backoff_max",
    "cluster.ttl",
    "http.login_attempts",
    "http.login_attempts_per_user",
    "http.login_backoff_max",
    "poll.interval",
    "poll.timeout",
    "poll.offline_after",
    "poll.max_response_bytes",
    "poll.reload_interval",
    "ssh.connect_timeout",
    "ssh.max_concurrent_connects",
    "ssh.backoff_initial",
    "ssh.backoff_max",
    "retention.raw",
    "retention.minute",
    "retention.hour",
    "retention.maintenance_interval",
    "actions.timeout",
    "actions.output_max_bytes",
    "retention.recordings",
    "terminal.idle_timeout",
    "terminal.max_duration",
    "terminal.max_sessions_per_user",
    "terminal.max_recording_bytes",
    "alerts.unreachable_after",
    "alerts.agent_failures_after",
    "alerts.queue_size",
    "alerts.tick_interval",
    "notifiers.timeout",
}


def item_key(key: str, index: int, name: object = None) -> str:
    """How an error names one item of a list of tables: counted from one as a reader counts,
    with its name when it has one: alerts.rules[2] ("disk full")."""
    label = f" ({json.dumps(name[:64])})" if isinstance(name, str) and name else ""
    return f"{key}[{index + 1}]{label}"


def _generic(key: str) -> str:
    """The key without list items: alerts.rules[2] ("x").for -> alerts.rules.for."""
    return re.sub(r'\[\d+\](?: \("(?:[^"\\]|\\.)*"\))?', "", key)


def _coerce(key: str, tp: object, value: object) -> object:
    """Check and convert one value to the dataclass field's type."""
    args = typing.get_args(tp)
    if type(None) in args:  # Optional[X]: the key may be absent, never null in TOML
        tp = next(a for a in args if a is not type(None))
    if _generic(key) in _DURATIONS:
        return parse_duration(value, key)
    if typing.get_origin(tp) is tuple and args and dataclasses.is_dataclass(args[0]):
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected an array of tables, got {value!r}")
        return tuple(_build(args[0], item, item_key(key, i, item.get("name") if isinstance(item, dict) else None) + ".")
                     for i, item in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if typing.get_origin(tp) is tuple and args and args[0] is int:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        try:
            out = tuple(int(v) if isinstance(v, str) and re.fullmatch(r"-?\d+", v) else v for v in value)
        except TypeError:
            out = ()
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
            raise ConfigError(f"{key}: expected a list of whole numbers, got {value!r}")
        return out
    if typing.get_origin(tp) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(f"{key}: unsupported setting")  # pragma: no cover


def _build(cls: type, data: dict, prefix: str) -> object:
    """Build a frozen dataclass from a dict, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    # A field named like a Python keyword plus "_" (for_) is the TOML key without it (for).
    keys = {f.name.rstrip("_"): f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown setting (known: {', '.join(sorted(keys))})")
    kwargs = {}
    for name, f in keys.items():
        if name not in data:
            continue
        key = prefix + name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[name], key + ".")
        else:
            value = _coerce(key, tp, data[name])
            if _generic(key) in _POSITIVE and value <= 0:
                raise ConfigError(f"{key}: must be greater than 0, got {data[name]!r}")
            kwargs[f.name] = value
    return cls(**kwargs)


def _env_overrides(env: typing.Mapping[str, str]) -> dict:
    """Map CENTRAL_SECTION_KEY=value (and CENTRAL_DATA_DIR) onto the config tree."""
    hints = typing.get_type_hints(Config)
    sections = {name for name, tp in hints.items() if dataclasses.is_dataclass(tp)}
    out: dict = {}
    for name, value in env.items():
        if not name.startswith("CENTRAL_"):
            continue
        rest = name[len("CENTRAL_"):].lower()
        if rest == "data_dir":
            out["data_dir"] = value
            continue
        # the longest section the name starts with (remote_write before a section "remote")
        section = next((sec for sec in sorted(sections, key=len, reverse=True) if rest.startswith(sec + "_")), "")
        key = rest[len(section) + 1:]
        if section in sections and key:
            out.setdefault(section, {})[key] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def default_config_path(env: typing.Mapping[str, str] | None = None) -> Path | None:
    """The config file used when none is named: $CENTRAL_CONFIG, or <data_dir>/config.toml if present."""
    env = os.environ if env is None else env
    if env.get("CENTRAL_CONFIG"):
        return Path(env["CENTRAL_CONFIG"])
    data_dir = Path(env["CENTRAL_DATA_DIR"]) if env.get("CENTRAL_DATA_DIR") else default_data_dir()
    candidate = data_dir / "config.toml"
    return candidate if candidate.exists() else None


def load_config(path: str | os.PathLike | None = None, env: typing.Mapping[str, str] | None = None) -> Config:
    """Load the config file (if any), apply CENTRAL_* overrides and validate everything."""
    env = os.environ if env is None else env
    data: dict = {}
    source = ""
    if path is None:
        path = default_config_path(env)
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            with open(p, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    data = _merge(data, _env_overrides(env))
    try:
        cfg = _check(_build(Config, data, ""))
    except ConfigError as exc:
        # name the file (a value may also come from a CENTRAL_* variable: the key says which)
        raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None
    return dataclasses.replace(cfg, source=source)


def _check(cfg: Config) -> Config:
    """The checks across settings, after each value has its type."""
    if cfg.poll.timeout >= cfg.poll.interval * 10:
        raise ConfigError(f"poll.timeout: {cfg.poll.timeout:g}s is far longer than poll.interval {cfg.poll.interval:g}s")
    if not (0 <= cfg.poll.workers <= MAX_POLL_WORKERS):
        raise ConfigError(f"poll.workers: must be between 0 and {MAX_POLL_WORKERS}, got {cfg.poll.workers}")
    if not (0 < cfg.http.port < 65536):
        raise ConfigError(f"http.port: must be between 1 and 65535, got {cfg.http.port}")
    if not (cfg.retention.raw <= cfg.retention.minute <= cfg.retention.hour):
        raise ConfigError("retention: expected raw <= minute <= hour")
    if cfg.storage.url and not re.match(r"^postgres(ql)?://\S*$", cfg.storage.url):
        raise ConfigError("storage.url: expected empty (SQLite at database.path) or a postgresql:// URL")
    if cfg.remote_write.url and not re.match(r"^https?://[^\s/]+(/\S*)?$", cfg.remote_write.url):
        raise ConfigError(f"remote_write.url: expected an http:// or https:// URL, got {cfg.remote_write.url!r}")
    if cfg.cluster.enabled and not cfg.storage.url:
        raise ConfigError("cluster.enabled: several centrals share one PostgreSQL database; set storage.url")
    if cfg.cluster.enabled and cfg.cluster.ttl < 2 * cfg.poll.reload_interval:
        raise ConfigError(f"cluster.ttl: {cfg.cluster.ttl:g}s must be at least twice poll.reload_interval "
                          f"({cfg.poll.reload_interval:g}s): leases are renewed at each reload")
    _check_alerts(cfg.alerts)
    _check_terminal(cfg)
    _check_notifiers(cfg.notifiers)
    _check_routing(cfg.alerts, cfg.notifiers)
    _check_telegram(cfg.telegram)
    return cfg


def _check_terminal(cfg: Config) -> None:
    """The terminal key is never the polling key; the terminal type is a plain name."""
    if cfg.terminal_key_path.resolve() == cfg.key_path.resolve():
        raise ConfigError(f"terminal.key_path: {cfg.terminal_key_path} is the polling key (ssh.key_path); "
                          "the terminal needs a key pair of its own")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", cfg.terminal.term):
        raise ConfigError(f"terminal.term: expected a terminal type like xterm-256color, got {cfg.terminal.term!r}")


def _check_severity(key: str, value: str, allow_empty: bool = False) -> None:
    if (value or not allow_empty) and value not in SEVERITIES:
        raise ConfigError(f"{key}: expected one of {', '.join(SEVERITIES)}, got {value!r}")


def _check_alerts(alerts: AlertsConfig) -> None:
    """Rule names unique and known metrics, comparisons and severities."""
    for name in alerts.disabled:
        if name not in BUILTIN_RULES:
            raise ConfigError(f"alerts.disabled: {name!r} is not a built-in rule ({', '.join(BUILTIN_RULES)})")
    if not 0 < alerts.disk_full_percent <= 100:
        raise ConfigError(f"alerts.disk_full_percent: expected 0 < percent <= 100, got {alerts.disk_full_percent:g}")
    if alerts.external_url and not re.match(r"^https?://[^\s/]+(/\S*)?$", alerts.external_url):
        raise ConfigError(f"alerts.external_url: expected the page's public http:// or https:// URL, got {alerts.external_url!r}")
    seen = set(BUILTIN_RULES)
    for i, rule in enumerate(alerts.rules):
        key = item_key("alerts.rules", i, rule.name)
        if not _RULE_NAME.match(rule.name):
            raise ConfigError(f"{key}.name: expected letters, digits, '_', '.', ':' or '-' (up to 64), got {rule.name!r}")
        if rule.name in seen:
            what = "a built-in rule" if rule.name in BUILTIN_RULES else "another rule"
            raise ConfigError(f"{key}.name: {rule.name!r} is already the name of {what}")
        seen.add(rule.name)
        if rule.metric not in ALERT_METRICS:
            raise ConfigError(f"{key}.metric: unknown metric {rule.metric!r} (known: {', '.join(ALERT_METRICS)})")
        if rule.op not in COMPARISONS:
            raise ConfigError(f"{key}.op: expected one of {' '.join(COMPARISONS)}, got {rule.op!r}")
        _check_severity(f"{key}.severity", rule.severity)
    for i, over in enumerate(alerts.overrides):
        key = item_key("alerts.overrides", i, over.rule)
        if not over.rule:
            raise ConfigError(f"{key}.rule: required (a rule name or glob)")
        if not (over.servers or over.tags or over.labels):
            raise ConfigError(f"{key}: give servers, tags or labels to say where the override applies")
        _check_severity(f"{key}.severity", over.severity, allow_empty=True)


def _check_notifiers(notifiers: tuple[NotifierConfig, ...]) -> None:
    """Each channel has a unique name, a known type and what that type needs."""
    names = set()
    for i, n in enumerate(notifiers):
        key = item_key("notifiers", i, n.name)
        if not _RULE_NAME.match(n.name):
            raise ConfigError(f"{key}.name: expected letters, digits, '_', '.', ':' or '-' (up to 64), got {n.name!r}")
        if n.name in names:
            raise ConfigError(f"{key}.name: {n.name!r} is used by another notifier")
        names.add(n.name)
        if n.type not in NOTIFIER_TYPES:
            raise ConfigError(f"{key}.type: expected one of {', '.join(NOTIFIER_TYPES)}, got {n.type!r}")
        sources = [k for k in ("url", "url_env", "url_file") if getattr(n, k)]
        if n.type == "command":
            if not n.argv or not n.argv[0]:
                raise ConfigError(f"{key}.argv: expected the program and its arguments, e.g. [\"/usr/local/bin/page\", \"--team\", \"ops\"]")
            if sources:
                raise ConfigError(f"{key}.{sources[0]}: not used by type = \"command\" (use argv)")
        else:
            if n.argv:
                raise ConfigError(f"{key}.argv: only for type = \"command\"")
            if len(sources) != 1:
                what = "give one of url, url_env or url_file" if not sources else f"give only one of {', '.join(sources)}"
                raise ConfigError(f"{key}.url: {what}")
            if n.url_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n.url_env):
                raise ConfigError(f"{key}.url_env: expected the name of an environment variable, got {n.url_env!r}")
            if n.url and n.type != "apprise" and not re.match(r"^https?://[^\s/]+", n.url):
                # Not echoed: a URL may carry a token.
                raise ConfigError(f"{key}.url: expected an http:// or https:// URL")
        if n.token_file and n.type not in ("webhook", "alertmanager"):
            raise ConfigError(f"{key}.token_file: only for type = \"webhook\" or \"alertmanager\"")
        if n.retries < 0:
            raise ConfigError(f"{key}.retries: must not be negative, got {n.retries}")
        _check_severity(f"{key}.min_severity", n.min_severity)
        for sev in n.severities:
            _check_severity(f"{key}.severities", sev)


def _check_globs(key: str, values: tuple[str, ...]) -> None:
    for v in values:
        if not v or len(v) > 100:
            raise ConfigError(f"{key}: expected globs of 1 to 100 characters, got {v!r}")


def _check_routing(alerts: AlertsConfig, notifiers: tuple[NotifierConfig, ...]) -> None:
    """Routes name existing notifiers; grouping labels, inhibit rules and maintenance windows are valid."""
    names = {n.name for n in notifiers}
    if alerts.storm_messages < 0:
        raise ConfigError(f"alerts.storm_messages: expected 0 (no limit) or more, got {alerts.storm_messages}")
    root = alerts.route
    for k in ("severities", "tags", "servers", "rules"):
        if getattr(root, k):
            raise ConfigError(f"alerts.route.{k}: the default route takes every alert; put matchers on [[alerts.routes]]")
    if root.continue_:
        raise ConfigError("alerts.route.continue: only for [[alerts.routes]]")
    for i, route in enumerate((root,) + alerts.routes):
        key = "alerts.route" if i == 0 else item_key("alerts.routes", i - 1)
        if i and not route.channels:
            raise ConfigError(f"{key}.channels: required (the notifier names this route sends to)")
        for ch in route.channels:
            if ch not in names:
                known = ", ".join(sorted(names)) or "none configured"
                raise ConfigError(f"{key}.channels: no notifier named {ch!r} (notifiers: {known})")
        for sev in route.severities:
            _check_severity(f"{key}.severities", sev)
        for k in ("tags", "servers", "rules"):
            _check_globs(f"{key}.{k}", getattr(route, k))
        for label in route.group_by or ():
            if label != "..." and label not in ALERT_LABELS:
                raise ConfigError(f"{key}.group_by: expected labels from {', '.join(ALERT_LABELS)} or \"...\", got {label!r}")
    for i, rule in enumerate(alerts.inhibit):
        key = item_key("alerts.inhibit", i)
        if not (rule.source_rules or rule.source_severities):
            raise ConfigError(f"{key}.source_rules: required (which firing alerts mute others), or source_severities")
        for k in ("source_rules", "target_rules"):
            _check_globs(f"{key}.{k}", getattr(rule, k))
        for k in ("source_severities", "target_severities"):
            for sev in getattr(rule, k):
                _check_severity(f"{key}.{k}", sev)
        for label in rule.equal:
            if label not in ALERT_LABELS:
                raise ConfigError(f"{key}.equal: expected labels from {', '.join(ALERT_LABELS)}, got {label!r}")
    seen = set()
    for i, w in enumerate(alerts.maintenance):
        key = item_key("alerts.maintenance", i, w.name)
        if not _RULE_NAME.match(w.name):
            raise ConfigError(f"{key}.name: expected letters, digits, '_', '.', ':' or '-' (up to 64), got {w.name!r}")
        if w.name in seen:
            raise ConfigError(f"{key}.name: {w.name!r} is used by another window")
        seen.add(w.name)
        for d in w.days:
            if d.lower() not in WEEKDAYS:
                raise ConfigError(f"{key}.days: expected {', '.join(WEEKDAYS)}, got {d!r}")
        for k in ("start", "end"):
            if not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", getattr(w, k)):
                raise ConfigError(f"{key}.{k}: expected a local time like \"02:00\", got {getattr(w, k)!r}")
        check_time_zone(f"{key}.time_zone", w.time_zone)
        if not (w.servers or w.tags):
            raise ConfigError(f"{key}: give servers or tags (\"*\" for every server) to say what it mutes")
        for k in ("servers", "tags", "rules"):
            _check_globs(f"{key}.{k}", getattr(w, k))
    check_time_zone("alerts.time_zone", alerts.time_zone)


def check_time_zone(key: str, name: str) -> None:
    """An IANA time zone name zoneinfo knows."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{key}: unknown time zone {name!r} (an IANA name like \"Europe/Berlin\" or \"UTC\")") from None


def _check_telegram(t: TelegramConfig) -> None:
    """An enabled bot has one token source, chats to answer, a central user and a Bot API URL."""
    if not t.enabled:
        return
    sources = [k for k in ("token_env", "token_file") if getattr(t, k)]
    if len(sources) != 1:
        raise ConfigError("telegram.token_env: give one of token_env or token_file (the bot token is a secret)")
    if t.token_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", t.token_env):
        raise ConfigError(f"telegram.token_env: expected the name of an environment variable, got {t.token_env!r}")
    if not t.allowed_chats:
        raise ConfigError("telegram.allowed_chats: required (the chat ids the bot answers; it ignores every other)")
    if not t.user:
        raise ConfigError("telegram.user: required (the central user whose role the bot acts with)")
    if not re.match(r"^https?://[^\s/]+", t.api_url):
        raise ConfigError(f"telegram.api_url: expected an http:// or https:// URL, got {t.api_url!r}")
