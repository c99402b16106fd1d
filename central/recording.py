"""Terminal recordings in asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/).

A recording is one file: a JSON header line ({"version": 2, "width", "height", "timestamp",
"env", "title"}) and then one JSON array per event, ``[seconds since start, code, data]``, with
code "o" (output from the host), "i" (input sent to the host) or "r" (resize, "COLSxROWS").
Files are written with ``ensure_ascii`` so they are plain ASCII: dumping one to a terminal
(``central terminal replay --raw``) shows JSON, never an escape sequence. Host output that is
not valid UTF-8 is recorded with U+FFFD in place of the bad bytes (asciicast stores text).
"""
from __future__ import annotations

import codecs
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

VERSION = 2
EVENT_CODES = ("o", "i", "r")


class RecordingFull(Exception):
    """The recording reached its size limit (the session must end: nothing goes unrecorded)."""


class BadRecording(ValueError):
    """A file that is not an asciicast v2 recording."""


class CastWriter:
    """Appends events to a new asciicast v2 file (created 0600, never overwriting)."""

    def __init__(self, path: Path, *, width: int, height: int, env: dict, title: str,
                 limit: int, timestamp: float | None = None):
        self.path = path
        self.limit = limit
        self.started = time.monotonic()
        self.timestamp = time.time() if timestamp is None else timestamp
        # Incremental decoders: a UTF-8 character split across two reads stays whole.
        self._decoders = {"o": codecs.getincrementaldecoder("utf-8")("replace"),
                          "i": codecs.getincrementaldecoder("utf-8")("replace")}
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._fh = os.fdopen(fd, "w", encoding="ascii", newline="\n")
        self.bytes = 0
        header = {"version": VERSION, "width": width, "height": height, "timestamp": int(self.timestamp),
                  "env": env, "title": title}
        self._line(json.dumps(header, separators=(", ", ": ")))

    def _line(self, line: str) -> None:
        data = line + "\n"
        if self.bytes + len(data) > self.limit:
            raise RecordingFull(f"the recording reached its limit of {self.limit} bytes")
        self._fh.write(data)
        # Flushed per event: a central that dies mid-session leaves a recording up to its last event.
        self._fh.flush()
        self.bytes += len(data)

    def elapsed(self) -> float:
        """Seconds since the recording started."""
        return time.monotonic() - self.started

    def _event(self, code: str, text: str) -> None:
        if text:
            self._line(json.dumps([round(self.elapsed(), 6), code, text]))

    def output(self, data: bytes) -> None:
        """Record bytes the host sent."""
        self._event("o", self._decoders["o"].decode(data))

    def input(self, data: bytes) -> None:
        """Record bytes sent to the host (keystrokes and pastes)."""
        self._event("i", self._decoders["i"].decode(data))

    def resize(self, cols: int, rows: int) -> None:
        """Record a terminal size change."""
        self._event("r", f"{cols}x{rows}")

    def close(self) -> None:
        """Flush what is left and close the file (idempotent)."""
        if not self._fh.closed:
            try:
                for code, decoder in self._decoders.items():
                    self._event(code, decoder.decode(b"", final=True))
            except RecordingFull:
                pass
            self._fh.close()


@dataclass(frozen=True)
class Recording:
    """A parsed recording: its header and events [(seconds, code, data)]."""

    header: dict
    events: list[tuple[float, str, str]]

    @property
    def width(self) -> int:
        """Columns at the start."""
        return self.header["width"]

    @property
    def height(self) -> int:
        """Rows at the start."""
        return self.header["height"]

    def output(self) -> str:
        """Everything the host sent, in order."""
        return "".join(data for _, code, data in self.events if code == "o")

    def input(self) -> str:
        """Everything sent to the host, in order."""
        return "".join(data for _, code, data in self.events if code == "i")

    @property
    def duration(self) -> float:
        """Seconds from the start to the last event."""
        return self.events[-1][0] if self.events else 0.0


def parse(text: str) -> Recording:
    """Parse asciicast v2 text; BadRecording names the first bad line."""
    lines = text.splitlines()
    if not lines:
        raise BadRecording("empty recording")
    try:
        header = json.loads(lines[0])
    except ValueError:
        raise BadRecording("line 1: the header is not JSON") from None
    if not isinstance(header, dict) or header.get("version") != VERSION:
        raise BadRecording("line 1: not an asciicast v2 header")
    for key in ("width", "height"):
        if not isinstance(header.get(key), int) or header[key] <= 0:
            raise BadRecording(f"line 1: header {key} must be a positive integer")
    events = []
    last = 0.0
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            raise BadRecording(f"line {n}: not JSON") from None
        if (not isinstance(event, list) or len(event) != 3 or not isinstance(event[0], (int, float))
                or event[1] not in EVENT_CODES or not isinstance(event[2], str)):
            raise BadRecording(f"line {n}: expected [seconds, \"o\"|\"i\"|\"r\", text]")
        if event[0] < last:
            raise BadRecording(f"line {n}: time goes backwards")
        last = float(event[0])
        events.append((last, event[1], event[2]))
    return Recording(header, events)


def read(path: Path) -> Recording:
    """Read and parse a recording file."""
    return parse(Path(path).read_text(encoding="utf-8", errors="replace"))


def playback(recording: Recording, speed: float = 1.0, idle_limit: float | None = 2.0):
    """(delay before it, text) for each output event: what a player writes, and when.

    Pauses longer than idle_limit (host silence, a user thinking) are cut to it.
    """
    previous = 0.0
    for ts, code, data in recording.events:
        if code != "o":
            continue
        gap = ts - previous
        previous = ts
        if idle_limit is not None:
            gap = min(gap, idle_limit)
        yield gap / speed, data
