"""Configuration: one TOML file loaded into frozen dataclasses, CENTRAL_* overrides on top.

Every key and its default is documented in config.example.toml. A bad file or value raises
ConfigError with one line naming the key and what is wrong; nothing starts half-configured.
"""
from __future__ import annotations

import dataclasses
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
    login_attempts_per_minute: int = 10


@dataclass(frozen=True)
class DatabaseConfig:
    path: str = ""  # empty: <data_dir>/central.db


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


@dataclass(frozen=True)
class RetentionConfig:
    raw: float = 48 * 3600.0
    minute: float = 14 * 86400.0
    hour: float = 400 * 86400.0
    # How often rollup and pruning run.
    maintenance_interval: float = 300.0
    # How long inventory history and the action audit log are kept.
    events: float = 365 * 86400.0


SEVERITIES = ("info", "warning", "critical")
# Metrics an alert rule can watch (docs/alerts.md says where each comes from).
ALERT_METRICS = tuple(model.ALERT_METRICS)
# Rules every central has; [alerts] keys tune them, overrides change them per server.
BUILTIN_RULES = model.BUILTIN_RULE_NAMES
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
COMPARISONS = (">", ">=", "<", "<=", "==", "!=")
NOTIFIER_TYPES = ("webhook", "alertmanager", "command")


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
    # How often timers run: keep_firing_for expiry, repeats, silence changes.
    tick_interval: float = 10.0
    rules: tuple[AlertRule, ...] = ()
    overrides: tuple[AlertOverride, ...] = ()


@dataclass(frozen=True)
class NotifierConfig:
    """One `[[notifiers]]` entry: a channel that alerts are sent to."""

    name: str = ""
    type: str = ""  # webhook | alertmanager | command
    url: str = ""  # webhook URL, or the Alertmanager base URL (http://am:9093)
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


@dataclass(frozen=True)
class Config:
    data_dir: str = ""
    http: HTTPConfig = field(default_factory=HTTPConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    poll: PollConfig = field(default_factory=PollConfig)
    ssh: SSHConfig = field(default_factory=SSHConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    notifiers: tuple[NotifierConfig, ...] = ()
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
    def key_path(self) -> Path:
        """The central's private SSH key."""
        return Path(self.ssh.key_path) if self.ssh.key_path else self.data_path / "id_ed25519"

    @property
    def session_secret_path(self) -> Path:
        """The file with the secret that signs session cookies."""
        if self.http.session_secret_file:
            return Path(self.http.session_secret_file)
        return self.data_path / "session.key"


# Keys whose values are durations (accept "5m" as well as seconds).
_DURATIONS = {
    "http.session_max_age",
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
}
_POSITIVE = {
    "http.max_body_bytes",
    "http.login_attempts_per_minute",
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
    "alerts.unreachable_after",
    "alerts.agent_failures_after",
    "alerts.queue_size",
    "alerts.tick_interval",
    "notifiers.timeout",
}


def _generic(key: str) -> str:
    """The key without list indexes: alerts.rules[2].for -> alerts.rules.for."""
    return re.sub(r"\[\d+\]", "", key)


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
        return tuple(_build(args[0], item, f"{key}[{i}].") for i, item in enumerate(value))
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
        section, _, key = rest.partition("_")
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
    candidate = default_data_dir() / "config.toml"
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
    cfg = _build(Config, data, "")
    if cfg.poll.timeout >= cfg.poll.interval * 10:
        raise ConfigError(f"poll.timeout: {cfg.poll.timeout:g}s is far longer than poll.interval {cfg.poll.interval:g}s")
    if not (0 < cfg.http.port < 65536):
        raise ConfigError(f"http.port: must be between 1 and 65535, got {cfg.http.port}")
    if not (cfg.retention.raw <= cfg.retention.minute <= cfg.retention.hour):
        raise ConfigError("retention: expected raw <= minute <= hour")
    _check_alerts(cfg.alerts)
    _check_notifiers(cfg.notifiers)
    return dataclasses.replace(cfg, source=source)


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
    seen = set(BUILTIN_RULES)
    for i, rule in enumerate(alerts.rules):
        key = f"alerts.rules[{i}]"
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
        key = f"alerts.overrides[{i}]"
        if not over.rule:
            raise ConfigError(f"{key}.rule: required (a rule name or glob)")
        if not (over.servers or over.tags or over.labels):
            raise ConfigError(f"{key}: give servers, tags or labels to say where the override applies")
        _check_severity(f"{key}.severity", over.severity, allow_empty=True)


def _check_notifiers(notifiers: tuple[NotifierConfig, ...]) -> None:
    """Each channel has a unique name, a known type and what that type needs."""
    names = set()
    for i, n in enumerate(notifiers):
        key = f"notifiers[{i}]"
        if not _RULE_NAME.match(n.name):
            raise ConfigError(f"{key}.name: expected letters, digits, '_', '.', ':' or '-' (up to 64), got {n.name!r}")
        if n.name in names:
            raise ConfigError(f"{key}.name: {n.name!r} is used by another notifier")
        names.add(n.name)
        if n.type not in NOTIFIER_TYPES:
            raise ConfigError(f"{key}.type: expected one of {', '.join(NOTIFIER_TYPES)}, got {n.type!r}")
        if n.type in ("webhook", "alertmanager"):
            if not re.match(r"^https?://[^\s/]+", n.url):
                raise ConfigError(f"{key}.url: expected an http:// or https:// URL, got {n.url!r}")
            if n.argv:
                raise ConfigError(f"{key}.argv: only for type = \"command\"")
        else:
            if not n.argv or not n.argv[0]:
                raise ConfigError(f"{key}.argv: expected the program and its arguments, e.g. [\"/usr/local/bin/page\", \"--team\", \"ops\"]")
            if n.url:
                raise ConfigError(f"{key}.url: not used by type = \"command\" (use argv)")
        if n.retries < 0:
            raise ConfigError(f"{key}.retries: must not be negative, got {n.retries}")
        _check_severity(f"{key}.min_severity", n.min_severity)
        for sev in n.severities:
            _check_severity(f"{key}.severities", sev)
