"""The docs stay true: the agent protocol's JSON examples have the shape of the agent's real
documents, and every CLI command, HTTP endpoint and alert metric is documented (and nothing
documented is gone). A failure says what is missing, where, and where to add it."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import click
import pytest

from central.cli import cli
from central.config import load_config
from central.model import ALERT_METRICS
from central.web.app import ENDPOINT_MODULES, create_app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PROTOCOL = DOCS / "agent-protocol.md"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def read(path: Path) -> str:
    return path.read_text()


def rel(path) -> str:
    return str(Path(path).resolve().relative_to(ROOT))


# --- the agent protocol --------------------------------------------------------------------


def json_example(doc: str, heading: str) -> object:
    """The first ```json block after a heading line."""
    start = doc.index(heading + "\n")
    block = re.search(r"```json\n(.*?)```", doc[start:], re.S)
    assert block, f"{rel(PROTOCOL)}: no ```json block after {heading!r}"
    return json.loads(block.group(1))


# Dicts whose keys are data (names of watched processes, units, failing collectors), not fields.
MAPS = {"processes.watched", "systemd.watched", "errors"}


def kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def shape_diff(example, real, path: str = "") -> list[str]:
    """Where the example's key tree or value types differ from the real document's."""
    name = path or "(top level)"
    if example is None or real is None:
        return []  # a field that cannot be read is null: documented for every field
    if kind(example) != kind(real):
        return [
            f"`{name}`: the docs show a {kind(example)} ({json.dumps(example)[:40]}), "
            f"the agent sends a {kind(real)} ({json.dumps(real)[:40]})"
        ]
    if isinstance(example, list):
        if not example or not real:
            return []
        return [d for item in real[:20] for d in shape_diff(example[0], item, path + "[]")][:5]
    if not isinstance(example, dict):
        return []
    if path in MAPS:
        if not example or not real:
            return []
        first = next(iter(example.values()))
        return [d for key, value in real.items() for d in shape_diff(first, value, f"{path}.{key}")]
    out = []
    for key in sorted(set(real) - set(example)):
        out.append(f"`{path + '.' if path else ''}{key}`: the agent sends it, the docs' example does not show it")
    for key in sorted(set(example) - set(real)):
        out.append(f"`{path + '.' if path else ''}{key}`: the docs' example shows it, the agent does not send it")
    for key in sorted(set(example) & set(real)):
        out += shape_diff(example[key], real[key], f"{path}.{key}" if path else key)
    return out


@pytest.fixture(scope="module")
def collector(agent):
    """The real agent's collectors on this machine, with a policy that watches something (so
    the optional watched sections are there), after one document (so rates have a baseline)."""
    c = agent.Collector(policy={"watched_processes": ["python3", "no-such-process"], "watched_units": ["ssh.service"]})
    c.all()
    return c


@pytest.mark.parametrize(
    "heading, endpoint", [("## GET /api/all (one poll)", "/api/all"), ("## GET /api/inventory", "/api/inventory")]
)
def test_protocol_examples_have_the_shape_of_the_agents_documents(agent, collector, heading, endpoint):
    example = json_example(read(PROTOCOL), heading)
    real = agent.endpoint(collector, endpoint)
    diffs = shape_diff(example, real)
    assert not diffs, (
        f"{rel(PROTOCOL)}, the example under {heading!r} differs from what the agent's "
        f"GET {endpoint} returns (agent/agent.py); fix the example:\n  " + "\n  ".join(diffs)
    )


def test_protocol_shows_the_agents_default_policy(agent):
    example = json_example(read(PROTOCOL), "### Host policy file")
    real = agent.DEFAULT_POLICY
    diffs = [
        f"`{key}`: the docs say {json.dumps(example.get(key))}, the agent has {json.dumps(real.get(key))}"
        for key in sorted(set(example) | set(real))
        if example.get(key) != real.get(key)
    ]
    assert not diffs, (
        f"{rel(PROTOCOL)}, '### Host policy file': the JSON block must be the agent's "
        f"DEFAULT_POLICY (agent/agent.py):\n  " + "\n  ".join(diffs)
    )


def test_protocol_lists_the_health_fields_and_every_agent_endpoint(agent, collector):
    doc = read(PROTOCOL)
    bullet = re.search(r"`GET /api/health` → `(\{.*?\})`", doc, re.S)
    assert bullet, f"{rel(PROTOCOL)}: the 'Other endpoints' list must show GET /api/health's fields"
    documented = set(re.findall(r'[{,]\s*"(\w+)"', bullet.group(1)))  # keys, not the "ok" value
    real = set(agent.endpoint(collector, "/api/health"))
    assert documented == real, (
        f"{rel(PROTOCOL)}, GET /api/health: the agent sends {sorted(real)}; "
        f"missing from the docs: {sorted(real - documented)}, "
        f"not sent: {sorted(documented - real)}"
    )
    for route in (*agent.Agent.GET_ROUTES, *agent.Agent.POST_ROUTES):
        assert re.search(re.escape(route) + r"(?![\w/])", doc), (
            f"{rel(PROTOCOL)} does not mention the agent's endpoint {route} (agent/agent.py Agent."
            f"GET_ROUTES/POST_ROUTES): add it under '## Other endpoints'"
        )


# --- the CLI ---------------------------------------------------------------------------------

CLI_DOC = DOCS / "cli.md"


def commands(group: click.Group, path=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_cli_command_is_in_docs_cli_md():
    doc = read(CLI_DOC)
    missing = []
    for path, command in commands(cli):
        line = "central " + " ".join(path)
        if not re.search(r"`" + re.escape(line) + r"[ `]", doc):
            source = rel(inspect.getsourcefile(inspect.unwrap(command.callback)))
            missing.append(f"`{line}` ({source}: {command.get_short_help_str(80)})")
    assert not missing, (
        f"{rel(CLI_DOC)} does not list these commands; add a line "
        f'"- `central ...`: what it does" under the group\'s heading:\n  ' + "\n  ".join(missing)
    )


def test_every_central_command_the_docs_name_exists():
    known = {" ".join(path) for path, _ in commands(cli)} | set(cli.commands)
    stale = []
    for path in sorted(DOCS.glob("*.md")):
        for number, text in enumerate(read(path).splitlines(), 1):
            for words in re.findall(r"`central ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)", text):
                first = words.split()[0]
                group = cli.commands.get(first)
                name = words if isinstance(group, click.Group) else first
                if name not in known:
                    stale.append(f"{rel(path)}:{number}: `central {words}`")
    assert not stale, "the docs name commands that do not exist (central/cli.py):\n  " + "\n  ".join(stale)


# --- HTTP endpoints ------------------------------------------------------------------------

API_DOC = DOCS / "api.md"


@pytest.fixture(scope="module")
def routes(tmp_path_factory):
    """(METHOD, path) -> where it is declared, for every route the app serves (not HEAD or static)."""
    data = tmp_path_factory.mktemp("docs-app")
    app = create_app(load_config(env={"CENTRAL_DATA_DIR": str(data)}))
    declared = {}
    for module in ENDPOINT_MODULES:
        for e in module.endpoints.endpoints:
            declared[(e.method, e.path)] = (rel(module.__file__), e)
    out = {}
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None or route.resource.canonical.startswith("/static"):
            continue
        key = (route.method, route.resource.canonical)
        out[key] = declared.get(key, (rel(inspect.getsourcefile(route.handler)), None))
    return out


def documented_endpoints(doc: str) -> dict:
    """(METHOD, path) -> the table row that documents it."""
    rows = {}
    for line in doc.splitlines():
        m = re.match(r"\|\s*`(" + "|".join(METHODS) + r") (/\S*)`\s*\|", line)
        if m:
            rows[(m.group(1), m.group(2))] = line
    return rows


def test_every_endpoint_the_app_serves_is_in_docs_api_md(routes):
    rows = documented_endpoints(read(API_DOC))
    missing = [
        f"`{m} {p}` (declared in {where}{': ' + e.summary if e else ''})"
        for (m, p), (where, e) in sorted(routes.items())
        if (m, p) not in rows
    ]
    stale = [f"`{m} {p}`" for (m, p) in sorted(rows) if (m, p) not in routes]
    problems = []
    if missing:
        problems.append(
            f"{rel(API_DOC)} does not document these endpoints; add a row "
            f'"| `METHOD /path` | role | what |" to the table of its module:\n  ' + "\n  ".join(missing)
        )
    if stale:
        problems.append(
            f"{rel(API_DOC)} documents endpoints the app does not serve (remove the rows):\n  " + "\n  ".join(stale)
        )
    assert not problems, "\n".join(problems)


def test_docs_api_md_gives_each_endpoints_role(routes):
    rows = documented_endpoints(read(API_DOC))
    wrong = []
    for key, (where, e) in sorted(routes.items()):
        if e is None or not isinstance(e.role, str) or key not in rows:
            continue
        role_cell = rows[key].split("|")[2].strip()
        if not role_cell.startswith(e.role):
            wrong.append(f"`{key[0]} {key[1]}`: the docs say {role_cell!r}, {where} declares role={e.role!r}")
    assert not wrong, f"{rel(API_DOC)}: wrong roles:\n  " + "\n  ".join(wrong)


# --- alert metrics -------------------------------------------------------------------------

ALERTS_DOC = DOCS / "alerts.md"


def test_every_alert_metric_is_in_the_table_of_docs_alerts_md():
    doc = read(ALERTS_DOC)
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\|\s*`([a-z_]+(?:\.[a-z_0-9]+)*)`\s*\|.*$", doc, re.M)}
    missing = [
        f"`{name}` (unit {metric.unit}{', label ' + metric.label if metric.label else ''})"
        for name, metric in ALERT_METRICS.items()
        if name not in rows
    ]
    assert not missing, (
        f"{rel(ALERTS_DOC)}: the table under '## Metrics a rule can watch' does not list "
        f"these ALERT_METRICS of central/model.py; add a row each:\n  " + "\n  ".join(missing)
    )
    stale = sorted(set(rows) - set(ALERT_METRICS))
    assert not stale, f"{rel(ALERTS_DOC)} lists metrics that central/model.py no longer has: {stale}"
    for name, metric in ALERT_METRICS.items():
        for reason in metric.reasons:
            assert f"`{reason}`" in rows[name], (
                f"{rel(ALERTS_DOC)}: the row of `{name}` must name the "
                f"failure reason `{reason}` it counts (central/model.py)"
            )
