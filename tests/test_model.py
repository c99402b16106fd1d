"""The vocabulary tables of central.model hold together: every name a record points to exists."""
from __future__ import annotations

import dataclasses
import re
import sqlite3

from central import model
from central.bundled import agent_module, schema_text
from central.config import SEVERITIES, AlertsConfig


def test_every_reason_names_a_status_and_an_alert_metric():
    for reason in model.REASONS.values():
        assert reason.status in (model.ERROR, model.OFFLINE), reason
        assert reason.alert_metric in model.POLL_METRICS, reason
        assert reason.name in model.ALERT_METRICS[reason.alert_metric].reasons


def test_builtin_rules_name_known_metrics_and_settings():
    settings = {f.name for f in dataclasses.fields(AlertsConfig)}
    for rule in model.BUILTIN_RULES.values():
        assert rule.metric in model.ALERT_METRICS, rule
        assert rule.severity in SEVERITIES, rule
        for value in (rule.threshold, rule.for_):
            assert isinstance(value, float) or value in settings, rule
    # every poll failure group has a built-in rule that alerts on it
    assert set(model.POLL_METRICS) <= {r.metric for r in model.BUILTIN_RULES.values()}


def test_alert_metric_names_are_unique_across_tables():
    names = [m.alert for m in model.METRICS.values() if m.alert]
    assert len(names) == len(set(names))
    assert set(names) <= set(model.ALERT_METRICS)


def test_schema_status_check_matches_the_statuses():
    check = re.search(r"CHECK \(status IN \(([^)]*)\)\)", schema_text()).group(1)
    assert {s.strip(" '") for s in check.split(",")} == set(model.STATUSES)


def test_schema_has_a_column_per_key_figure():
    con = sqlite3.connect(":memory:")
    con.executescript(schema_text())
    samples = [r[1] for r in con.execute("PRAGMA table_info(samples)")]
    rollups = [r[1] for r in con.execute("PRAGMA table_info(rollups)")]
    # sets: a key figure added later goes at the end of the table, where ALTER TABLE puts it
    assert sorted(samples) == sorted(["server_id", "ts", *model.METRICS, "top"])
    assert sorted(rollups) == sorted(["server_id", "tier", "ts", "n",
                                      *(f"{m}_{agg}" for m in model.METRICS for agg in ("min", "avg", "max"))])


def test_action_kinds_are_the_agents():
    agent = agent_module()
    for kind in model.ACTION_KINDS.values():
        assert callable(getattr(agent, kind.agent_function)), kind


def test_roles_lowest_first_and_only_viewer_may_not_act():
    assert list(model.ROLES) == [model.VIEWER, model.OPERATOR, model.ADMIN]
    assert [r.name for r in model.ROLES.values() if not r.may_act] == [model.VIEWER]
