"""The central's log output: one record is one line, whatever a host put in the text it logs.

Log messages quote host text (a mount point in an alert summary, an agent's error, a process
name). A newline there would start what looks like a new log line ("2024-01-01 ... CRITICAL
..."), and an escape sequence would act on the terminal that tails the log. InertFormatter
shows every control, bidi and zero-width character of the message and its arguments as a
visible escape (central.hosttext.escape); a traceback keeps its lines but each one is marked
as the continuation of its record.
"""
from __future__ import annotations

import logging
import sys
from typing import TextIO

from .hosttext import escape

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTINUATION = "  | "


def _continued(text: str) -> str:
    return "\n".join(CONTINUATION + escape(line) for line in text.splitlines())


class InertFormatter(logging.Formatter):
    """A Formatter whose lines cannot be forged or styled by the text being logged."""

    def format(self, record: logging.LogRecord) -> str:
        """The record's line, its message and arguments escaped; a traceback as marked continuation lines."""
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        out = escape(self.formatMessage(record))
        # Not record.exc_text: another handler may have cached its own, unmarked rendering there.
        if record.exc_info:
            out += "\n" + _continued(self.formatException(record.exc_info))
        elif record.exc_text:
            out += "\n" + _continued(record.exc_text)
        if record.stack_info:
            out += "\n" + _continued(self.formatStack(record.stack_info))
        return out


def configure(level: int = logging.WARNING, stream: TextIO | None = None, force: bool = False) -> logging.Handler | None:
    """Log at level and above to stream (stderr) through InertFormatter; returns the handler.

    Like logging.basicConfig, it leaves a root logger that already has someone else's handlers
    alone (under pytest, say) unless force is given.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h.formatter, InertFormatter)]
    if len(ours) < len(root.handlers) and not force:
        return None
    root.setLevel(level)
    for old in ours:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(InertFormatter(FORMAT))
    root.addHandler(handler)
    return handler
