"""The central's log: one record is one line, and host text in it is shown, never acted on."""
from __future__ import annotations

import io
import logging
import re
import subprocess
import sys

import pytest

from central import logs
from central.hosttext import escape
from tests.test_alerts import Clock, doc, make_engine, ok, poll, storage  # noqa: F401  (storage: fixture)

FORGED = "/srv/x\n2030-01-01 00:00:00,000 CRITICAL central.auth: admin password reset\x1b]0;t\x07\u202e"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


@pytest.fixture
def log_output():
    """Everything the central logs during the test, through the handler `central` installs."""
    buf = io.StringIO()
    handler = logs.configure(logging.INFO, stream=buf, force=True)
    yield buf
    logging.getLogger().removeHandler(handler)


def assert_one_line_per_record(text: str) -> None:
    for line in text.splitlines():
        assert LINE.match(line) or line.startswith(logs.CONTINUATION), repr(line)
    for ch in ("\x1b", "\x07", "\u202e", "\r"):
        assert ch not in text


def test_message_and_arguments_are_escaped(log_output):
    logging.getLogger("central.test").warning("mount %s is %s full", FORGED, "97%\r\n")
    text = log_output.getvalue()
    assert text.count("\n") == 1
    assert_one_line_per_record(text)
    assert f"mount {escape(FORGED)} is 97%\\x0d\\x0a full" in text


def test_a_traceback_stays_with_its_record(log_output):
    try:
        raise ValueError("bad mount " + FORGED)
    except ValueError:
        logging.getLogger("central.test").exception("storing failed for %s", FORGED)
    text = log_output.getvalue()
    assert_one_line_per_record(text)
    lines = text.splitlines()
    assert LINE.match(lines[0]) and all(line.startswith(logs.CONTINUATION) for line in lines[1:])
    # the exception's message keeps its newline, but its second line is marked as a continuation
    assert lines[-2:] == [logs.CONTINUATION + "ValueError: bad mount /srv/x",
                          logs.CONTINUATION + escape(FORGED.split("\n", 1)[1])]


async def test_an_alert_on_a_mount_with_a_newline_logs_one_line(storage, log_output):  # noqa: F811
    """The issue's case: a disk alert for a mount point with a newline in it, logged by the alert engine."""
    clock = Clock()
    engine, rec, by_id = await make_engine(storage, clock, disk_full_for=0.0)
    await poll(engine, by_id, clock, ok, disks=((FORGED, 99.0, 1.0),))
    assert rec.count("firing", "disk_almost_full") == 1
    text = log_output.getvalue()
    assert "disk" in text and escape(FORGED) in text, text
    assert_one_line_per_record(text)
    assert not any(line.startswith("2030-01-01") for line in text.splitlines())


def test_the_central_command_logs_through_the_inert_formatter():
    """`central -v ...` in its own process: the root handler is the inert one."""
    code = ("import logging, sys; from central.cli import cli; "
            "cli.add_command(__import__('click').command()(lambda: logging.getLogger('central.x').warning("
            "'m %s', sys.argv[1])), 'say'); cli(['say'], prog_name='central')")
    res = subprocess.run([sys.executable, "-c", code, FORGED], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("\n") == 1 and escape(FORGED) in res.stderr
