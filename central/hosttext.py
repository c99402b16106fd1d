"""Making text that came from a host (or a user) inert before it is stored, shown or logged.

A host is untrusted: its hostname, process names, command lines, mount points and unit names
may carry terminal escapes (CSI, OSC), NUL, newlines that forge log lines, bidi overrides or
zero-width characters that make one name look like another. Store `clean()`ed text; show and
log `escape()`d text, so nothing a host sends can restyle a terminal or fake a line.
"""
from __future__ import annotations

import re

# C0 controls (tab and newline included), DEL, C1 controls; bidi embeddings, overrides and
# isolates; zero-width and invisible formatting characters; line/paragraph separators; BOM.
_UNSAFE = (
    "\x00-\x1f\x7f-\x9f"
    "\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
)
UNSAFE_RE = re.compile(f"[{_UNSAFE}]")
ELLIPSIS = "\u2026"


def clean(text: str, limit: int | None = None) -> str:
    """text without unsafe characters (removed), cut to limit characters with an ellipsis."""
    text = UNSAFE_RE.sub("", text)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + ELLIPSIS
    return text


def _escaped(match: re.Match) -> str:
    ch = match.group()
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: object, limit: int | None = None) -> str:
    """str(text) with every unsafe character shown as a visible \\xNN / \\uNNNN escape."""
    text = str(text)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + ELLIPSIS
    return UNSAFE_RE.sub(_escaped, text)


def is_clean(text: str) -> bool:
    """True when text has no unsafe character."""
    return UNSAFE_RE.search(text) is None
