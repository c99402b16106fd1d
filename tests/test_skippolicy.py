"""The skip policy (tests/skippolicy.py): under CI=true a skip fails the run; outside, it is
summarised loudly. Each test runs a tiny suite with pytester, with the policy plugin loaded."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SUITE = """
import pytest
from tests.skippolicy import allowed_in_ci

@pytest.fixture(scope="session")
def farm():
    pytest.skip("REAL-HOST TESTS NOT RUN: test hosts need root")

def test_passes():
    assert True

def test_needs_a_tool():
    pytest.skip("shellcheck NOT FOUND: install the Debian package shellcheck")

@pytest.mark.skipif(True, reason="promtool missing")
def test_marked():
    pass

def test_host_one(farm):
    pass

def test_host_two(farm):
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False
"""

MIRROR = """
from tests.skippolicy import allowed_in_ci

def test_lxc():
    allowed_in_ci("LXC TESTS NOT RUN, PACKAGE MIRROR UNREACHABLE (allowed in CI): no route")

def test_passes():
    pass
"""


@pytest.fixture
def pytester(pytester):
    """pytester with an ini that keeps pytest-asyncio quiet (warnings are errors here) and
    leaves out the plugin this suite does not use, as pyproject.toml does."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\naddopts = -p no:schemathesis\n")
    return pytester


def run(pytester, monkeypatch, ci, *files, **named):
    if ci:
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)
    for text in files:
        pytester.makepyfile(text)
    if named:
        pytester.makepyfile(**named)
    return pytester.runpytest_inprocess("-p", "tests.skippolicy", "-p", "no:cacheprovider")


def test_under_ci_every_skip_fails_naming_what_was_missing(pytester, monkeypatch):
    result = run(pytester, monkeypatch, True, SUITE)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    # a skip in the test body fails it; one in setup (a skipif mark, a fixture) errors it
    result.assert_outcomes(passed=1, failed=1, errors=3, xfailed=1)
    # every refused skip names what was missing, in the failure and in the loud summary
    for missing in ("shellcheck NOT FOUND", "promtool missing", "REAL-HOST TESTS NOT RUN: test hosts need root"):
        assert "SKIPPED UNDER CI=true, WHICH FAILS THE RUN: " + missing in out, out
    assert "CI=true: 4 skipped test(s) FAIL the run" in out
    assert "FAILED (skip under CI) x2: REAL-HOST TESTS NOT RUN: test hosts need root" in out
    # pytest's own count line stays the last line
    assert result.outlines[-1].startswith("=") and "1 passed" in result.outlines[-1], result.outlines[-1]


def test_outside_ci_a_skip_stays_a_skip_and_is_summarised_loudly(pytester, monkeypatch):
    result = run(pytester, monkeypatch, False, SUITE)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    out = result.stdout.str()
    assert "4 test(s) SKIPPED: these were NOT tested" in out
    # the host farm's fixture skip is in the summary too, with how many tests it cost
    assert "SKIPPED x2: REAL-HOST TESTS NOT RUN: test hosts need root" in out
    assert "SKIPPED x1: shellcheck NOT FOUND: install the Debian package shellcheck" in out
    assert "SKIPPED x1: promtool missing" in out
    assert "4 skipped" in result.outlines[-1]


def test_the_mirror_skip_is_allowed_in_ci_and_says_so(pytester, monkeypatch):
    result = run(pytester, monkeypatch, True, MIRROR)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)
    assert "SKIPPED (allowed in CI) x1: LXC TESTS NOT RUN, PACKAGE MIRROR UNREACHABLE" in result.stdout.str()


def test_a_module_level_skip_fails_the_ci_run_without_stopping_the_others(pytester, monkeypatch):
    files = {
        "test_browser": 'import pytest\npytest.importorskip("no_such_module_xyz")\n\ndef test_page():\n    pass\n',
        "test_other": "def test_ok():\n    pass\n",
    }
    result = run(pytester, monkeypatch, True, **files)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, skipped=1)
    assert "no_such_module_xyz" in result.stdout.str()
    monkeypatch.delenv("CI")
    assert pytester.runpytest_inprocess("-p", "tests.skippolicy", "-p", "no:cacheprovider").ret == pytest.ExitCode.OK


def test_tests_using_the_host_and_lxc_fixtures_are_marked_for_deselection(pytester, monkeypatch):
    suite = """
import pytest

@pytest.fixture
def host_farm():
    return 1

@pytest.fixture
def test_host(host_farm):
    return host_farm

@pytest.fixture
def lxc_farm():
    return 1

def test_uses_a_host(test_host):
    pass

def test_uses_lxc(lxc_farm):
    pass

def test_pure():
    pass
"""
    pytester.makepyfile(suite)
    monkeypatch.delenv("CI", raising=False)
    result = pytester.runpytest_inprocess(
        "-p", "tests.skippolicy", "-p", "no:cacheprovider", "-m", "not hosts and not lxc", "-v"
    )
    result.assert_outcomes(passed=1, deselected=2)
    assert "test_pure PASSED" in result.stdout.str()


@pytest.mark.parametrize(
    "rc, last",
    [
        (0, "=== 3 passed in 1.00s ==="),
        (5, ".ci/run: FAILED: pytest collected no tests (exit code 5)"),
        (1, "=== 1 failed, 2 passed in 1.00s ==="),
    ],
)
def test_ci_run_fails_when_no_tests_ran_and_ends_with_the_counts(tmp_path, rc, last):
    (tmp_path / ".ci").mkdir()
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "scripts").mkdir()
    # a stand-in for scripts/test.sh: prints what pytest would and exits with its code
    (tmp_path / "scripts" / "test.sh").write_text(
        f'[ "$CI" = true ] || exit 99\necho "{last if rc != 5 else "no tests ran in 0.01s"}"\nexit {rc}\n'
    )
    res = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "run")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == (1 if rc == 5 else rc), res.stdout + res.stderr
    assert res.stdout.splitlines()[-1] == last


@pytest.mark.slow  # two pytest processes each
@pytest.mark.parametrize("ci", [True, False])
def test_the_policy_holds_under_xdist(pytester, monkeypatch, ci):
    # scripts/test.sh --unit runs with pytest-xdist: the verdicts travel from the worker
    if ci:
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess("-p", "tests.skippolicy", "-p", "no:cacheprovider", "-n", "1")
    out = result.stdout.str()
    if ci:
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.assert_outcomes(passed=1, failed=1, errors=3, xfailed=1)
        assert "FAILED (skip under CI) x2: REAL-HOST TESTS NOT RUN: test hosts need root" in out
    else:
        assert result.ret == pytest.ExitCode.OK
        result.assert_outcomes(passed=1, skipped=4, xfailed=1)
        assert "SKIPPED x2: REAL-HOST TESTS NOT RUN: test hosts need root" in out
