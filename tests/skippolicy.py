"""The suite's skip policy (a pytest plugin, loaded by tests/conftest.py).

- Outside CI a skip stays a skip, and every skip reason is summarised loudly at the end of the
  run (what was NOT tested, and why), whoever raised it: a test, a fixture (the host farm's,
  LXC's, the browser's), a skipif mark or a module-level importorskip.
- Under ``CI=true`` every skip fails the run, naming what was missing: CI installs everything
  the suite needs (scripts/test.sh), so a skip there means the suite did not prove what it
  claims. The one exception is a skip raised with ``allowed_in_ci()`` (only the LXC base
  build when the package mirror is unreachable uses it); it stays a skip and says so.
- Tests that use the real-host or LXC fixtures get the ``hosts`` / ``lxc`` marker
  automatically, so ``-m "not hosts and not lxc ..."`` selects exactly the tests that need
  neither, whoever wrote them (scripts/test.sh --no-root).
- The ``unit`` marker is the fast set a contributor runs without root (scripts/test.sh
  --unit, well under a minute): the modules in UNIT_MODULES below, and any test marked
  ``pytest.mark.unit``. They test logic in-process: the SSH side against the in-process SSH
  host (tests/sshharness.py), the agent's collectors on captured /proc trees, documents,
  rules, storage on a temporary SQLite file, the docs.
"""

from __future__ import annotations

import collections
import os

import pytest

# A fixture a test uses (directly or through other fixtures) -> the marker it implies.
FIXTURE_MARKERS = {
    "host_farm": "hosts",
    "lxc_farm": "lxc",
}

# The test modules of the fast set (see above); a new module of in-process logic tests belongs
# here (or marks itself with pytest.mark.unit).
UNIT_MODULES = frozenset({
    "test_sshpool", "test_agentclient", "test_poller", "test_loopfarm", "test_transport",
    "test_sample", "test_model", "test_config", "test_hosttext", "test_alerts", "test_actions",
    "test_agent_collectors", "test_storage_contract", "test_storage_sqlite",
    "test_skippolicy", "test_docs", "test_lint", "test_readme",
})

CI_FAILURE = "SKIPPED UNDER CI=true, WHICH FAILS THE RUN: "


class AllowedSkip(pytest.skip.Exception):
    """A skip that CI accepts (documented cases only: the package mirror is unreachable)."""


def allowed_in_ci(reason: str):
    """Skip with a reason CI accepts; only for the documented "package mirror unreachable" case."""
    raise AllowedSkip(reason)


def in_ci() -> bool:
    """True when the run is CI's (CI=true, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    return text.removeprefix("Skipped: ")


class SkipPolicy:
    """Collects every skip; under CI turns them into failures (except allowed ones)."""

    def __init__(self, config):
        self.config = config
        self.skips: list[tuple[str, str, bool]] = []  # (nodeid, reason, allowed)
        self.collection_skips: list[tuple[str, str]] = []  # failing the run under CI

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items):
        for item in items:
            for fixture, marker in FIXTURE_MARKERS.items():
                if fixture in getattr(item, "fixturenames", ()) and not item.get_closest_marker(marker):
                    item.add_marker(marker)
            module = getattr(item, "module", None)
            if module is not None and module.__name__.rpartition(".")[2] in UNIT_MODULES:
                item.add_marker("unit")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        # Runs where the test runs (an xdist worker too): the report carries the verdict as
        # plain attributes, which xdist serialises to the controller.
        report = yield
        if not report.skipped or hasattr(report, "wasxfail"):
            return report
        allowed = call.excinfo is not None and call.excinfo.errisinstance(AllowedSkip)
        report.skip_reason = call.excinfo.value.msg if allowed else _reason(report)
        report.skip_allowed_in_ci = allowed
        if in_ci() and not allowed:
            report.outcome = "failed"
            report.longrepr = CI_FAILURE + report.skip_reason
        return report

    def pytest_runtest_logreport(self, report):
        # Runs where the results are shown (the controller under xdist).
        reason = getattr(report, "skip_reason", None)
        if reason is not None:
            self.skips.append((report.nodeid, reason, report.skip_allowed_in_ci))

    def pytest_collectreport(self, report):
        if report.skipped:
            reason = _reason(report)
            self.skips.append((report.nodeid, reason, False))
            if in_ci():
                # Turning it into a collection error would stop the whole run before any test
                # ran; the session's exit status fails the run instead (pytest_sessionfinish).
                self.collection_skips.append((report.nodeid, reason))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if self.collection_skips and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if not self.skips:
            return
        tr = terminalreporter
        by_reason = collections.defaultdict(list)
        for nodeid, reason, allowed in self.skips:
            by_reason[(reason, allowed)].append(nodeid)
        ci = in_ci()
        refused = sum(len(ids) for (_, allowed), ids in by_reason.items() if not allowed)
        if ci and refused:
            tr.write_sep(
                "!", f"CI=true: {refused} skipped test(s) FAIL the run; install what is missing", red=True, bold=True
            )
        else:
            tr.write_sep("!", f"{len(self.skips)} test(s) SKIPPED: these were NOT tested", red=True, bold=True)
        for (reason, allowed), ids in sorted(by_reason.items()):
            if allowed:
                label = "SKIPPED (allowed in CI)"
            elif ci:
                label = "FAILED (skip under CI)"
            else:
                label = "SKIPPED"
            tr.write_line(f"{label} x{len(ids)}: {reason}", red=not allowed, yellow=allowed, bold=True)
            for nodeid in ids[:3]:
                tr.write_line(f"    {nodeid}")
            if len(ids) > 3:
                tr.write_line(f"    ... and {len(ids) - 3} more")


def pytest_configure(config):
    config.pluginmanager.register(SkipPolicy(config), "central-skip-policy")
