"""central.hosttext: host text made inert for storage, terminals and logs."""
from central import hosttext


def test_clean_removes_escapes_controls_bidi_and_zero_width():
    raw = "web\x1b]0;pwned\x07\x1b[2J1\x00\n\u202eevil\u200b"
    assert hosttext.clean(raw) == "web]0;pwned[2J1evil"
    assert hosttext.is_clean(hosttext.clean(raw))


def test_clean_cuts_with_an_ellipsis():
    assert hosttext.clean("a" * 300, 200) == "a" * 199 + "\u2026"
    assert hosttext.clean("short", 200) == "short"


def test_escape_shows_every_unsafe_character_visibly():
    assert hosttext.escape("a\nb\x1b[31m\u202e") == "a\\x0ab\\x1b[31m\\u202e"
    assert hosttext.escape(42) == "42"
    assert hosttext.escape("x" * 10, 5) == "xxxx\u2026"


def test_plain_text_and_tabs_in_names():
    assert hosttext.clean("nginx: worker process") == "nginx: worker process"
    assert hosttext.clean("a\tb") == "ab"
