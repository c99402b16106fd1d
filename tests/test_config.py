"""Config loading: defaults, file, environment overrides, and one-line errors naming the key."""
from __future__ import annotations

import pytest

from central.config import ConfigError, load_config, parse_duration


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults():
    cfg = load_config(env={})
    assert (cfg.http.listen, cfg.http.port) == ("127.0.0.1", 9083)
    assert cfg.poll.interval == 10.0 and cfg.poll.offline_after == 3
    assert cfg.retention.raw == 48 * 3600


def test_file_and_env_override(tmp_path):
    p = write(tmp_path, '[poll]\ninterval = "30s"\n[http]\nport = 9999\n')
    cfg = load_config(p, env={"CENTRAL_HTTP_PORT": "9100", "CENTRAL_DATA_DIR": str(tmp_path)})
    assert cfg.poll.interval == 30.0
    assert cfg.http.port == 9100  # environment wins over the file
    assert cfg.database_path == tmp_path / "central.db"


@pytest.mark.parametrize("text, message", [
    ('[poll]\ninterval = "soon"\n', "poll.interval: expected a duration"),
    ('[poll]\ninterval = 0\n', "poll.interval: must be greater than 0"),
    ('[poll]\noffline_after = "x"\n', "poll.offline_after: expected a whole number"),
    ('[poll]\nintervall = 5\n', "poll.intervall: unknown setting"),
    ('[http]\nport = 70000\n', "http.port: must be between 1 and 65535"),
    ('[ssh]\nciphers = "aes128-ctr"\nconnect_timeout = true\n', "ssh.connect_timeout: expected a duration"),
    ('nonsense = [\n', "not valid TOML"),
    ('[retention]\nraw = "30d"\nminute = "7d"\n', "retention: expected raw <= minute <= hour"),
])
def test_bad_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env={})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_env_value_names_the_key():
    with pytest.raises(ConfigError, match="poll.timeout: expected a duration"):
        load_config(env={"CENTRAL_POLL_TIMEOUT": "later"})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", env={})


@pytest.mark.parametrize("value, seconds", [(10, 10), ("90s", 90), ("5m", 300), ("48h", 172800), ("2w", 1209600), ("250ms", 0.25)])
def test_durations(value, seconds):
    assert parse_duration(value, "k") == seconds


def test_config_errors_name_the_file_count_items_from_one_and_name_the_rule(tmp_path):
    path = tmp_path / "central.toml"
    path.write_text('[[alerts.rules]]\nname = "cpu_high"\nmetric = "cpu.percent"\n'
                    '[[alerts.rules]]\nname = "disk full"\nmetric = "disk.percent"\nthreshold = "lots"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(err.value) == f'{path}: alerts.rules[2] ("disk full").threshold: expected a number, got \'lots\''
    path.write_text('[[alerts.rules]]\nname = "cpu_high"\nmetric = "cpu.percent"\n'
                    '[[alerts.rules]]\nname = "disk_high"\nmetric = "disk"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(err.value).startswith(f'{path}: alerts.rules[2] ("disk_high").metric: unknown metric \'disk\'')
    # without a name the item is still counted from one; a duration key still parses as one
    path.write_text('[[alerts.inhibit]]\nequal = ["server"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(err.value).startswith(f"{path}: alerts.inhibit[1].source_rules: required")
    path.write_text('[[alerts.rules]]\nname = "x"\nmetric = "cpu.percent"\nfor = "5m"\n')
    assert load_config(path, env={}).alerts.rules[0].for_ == 300.0
    # no file: the key alone
    with pytest.raises(ConfigError) as err:
        load_config(None, env={"CENTRAL_HTTP_PORT": "0", "CENTRAL_DATA_DIR": str(tmp_path)})
    assert str(err.value) == "http.port: must be between 1 and 65535, got 0"


async def test_a_reload_hands_the_new_rules_notifiers_and_retention_to_the_running_parts(central, tmp_path):
    """Central.reload (what SIGHUP runs, tests/test_serve_process.py drives it through the signal):
    the alert engine evaluates the new rules and notifies through the new dispatcher, the poller
    prunes with the new retention; a file that does not load changes nothing."""
    path = tmp_path / "central.toml"
    env = {"CENTRAL_DATA_DIR": str(central.config.data_path)}
    path.write_text('[retention]\nraw = "1h"\n[[alerts.rules]]\nname = "load_high"\nmetric = "load.1"\n'
                    'op = ">"\nthreshold = 4\n[[notifiers]]\nname = "ops"\ntype = "webhook"\n'
                    'url = "http://127.0.0.1:9/hook"\n')
    old_dispatcher = central.notifier
    changes = await central.reload(str(path), env=env)
    assert "alert rule load_high added" in changes and "notifier ops added" in changes
    assert "retention.raw: 172800s -> 3600s" in changes
    assert "load_high" in [r.name for r in central.alerts.rules]
    assert central.notifier is not old_dispatcher and central.alerts.notifier is central.notifier
    assert [c.name for c in central.notifier.channels] == ["ops"]
    assert central.poller.config.retention.raw == 3600.0 and central.config.retention.raw == 3600.0
    assert central.config.poll == central.poller.config.poll  # what needs a restart stays
    path.write_text('[[alerts.rules]]\nname = "load_high"\nmetric = "load.1"\nop = "=>"\n')
    with pytest.raises(ConfigError, match=r'alerts.rules\[1\] \("load_high"\).op'):
        await central.reload(str(path), env=env)
    assert "load_high" in [r.name for r in central.alerts.rules] and central.config.retention.raw == 3600.0


def test_the_storm_limit_is_read_checked_and_can_be_turned_off(tmp_path):
    cfg = load_config(write(tmp_path, '[alerts]\nstorm_messages = 3\nstorm_window = "5m"\n'), env={})
    assert (cfg.alerts.storm_messages, cfg.alerts.storm_window) == (3, 300.0)
    assert load_config(write(tmp_path, "[alerts]\nstorm_messages = 0\n"), env={}).alerts.storm_messages == 0
    with pytest.raises(ConfigError, match=r"alerts.storm_messages: expected 0 \(no limit\) or more, got -1"):
        load_config(write(tmp_path, "[alerts]\nstorm_messages = -1\n"), env={})
    with pytest.raises(ConfigError, match="alerts.storm_window: must be greater than 0"):
        load_config(write(tmp_path, '[alerts]\nstorm_window = "0s"\n'), env={})
