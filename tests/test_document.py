"""The document normaliser: whatever a host sends, the central stores only what fits the protocol."""
from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central import document as d
from central.bundled import agent_module
from central.hosttext import is_clean
from central.model import PollError
from central.sample import extract_sample, parse_document
from tests.sshharness import cleaned

BASE = {"timestamp": 1.0, "hostname": "h"}


def bad(doc, normaliser=d.normalise) -> str:
    with pytest.raises(PollError) as err:
        normaliser(doc)
    assert err.value.reason == "bad_payload"
    return err.value.message


def bad_body(body: bytes) -> str:
    with pytest.raises(PollError) as err:
        parse_document(body)
    assert err.value.reason == "bad_payload"
    return err.value.message


@pytest.fixture(scope="module")
def real():
    """A real /api/all and /api/inventory of this machine, from the bundled agent."""
    collector = agent_module().Collector()
    collector.all()
    time.sleep(0.2)
    return json.loads(json.dumps(collector.all())), json.loads(json.dumps(collector.inventory()))


def test_real_documents_pass_unchanged(real):
    doc, inv = real
    assert d.normalise(doc) == cleaned(doc)
    assert d.normalise_inventory(inv) == cleaned(inv)


def test_real_health_answers_pass_unchanged():
    # both of the agent's /api/health answers: the authenticated one (what `central server
    # test` reads) and the anonymous one (protocol, whether the secret is ready)
    agent = agent_module()
    gate = agent.Gate(secret_path="/nonexistent/secret")
    gate.key = agent.HmacKey(bytes(32))
    for health in (agent.Collector().health(), gate.public_health(), agent.Gate(secret_path="/nonexistent/secret").public_health()):
        health = json.loads(json.dumps(health))
        assert d.normalise_health(health) == health


def test_real_body_is_stored_as_sent(real):
    body = json.dumps(cleaned(real[0]), separators=(",", ":")).encode()
    doc, text = parse_document(body)
    assert text == body.decode()


# The documents of issue 13, one by one.

@pytest.mark.parametrize("body, message", [
    (b'{"timestamp":1,"hostname":"x","processes":{"count":1e300}}', "processes.count: 1e+300 is out of range (0 to 10000000)"),
    (b'{"timestamp":1,"hostname":"x","processes":{"count":10000000000000000000}}',
     "processes.count: 10000000000000000000 is out of range (0 to 10000000)"),
    (b'{"timestamp":1,"hostname":"x","cpu":{"percent":NaN}}', "cpu.percent: NaN is not a finite number"),
    (b'{"timestamp":1,"hostname":"x","load":{"load1":Infinity}}', "load.load1: Infinity is not a finite number"),
    (b'{"timestamp":1,"hostname":"x","load":{"load1":-Infinity}}', "load.load1: -Infinity is not a finite number"),
    (b'{"timestamp":1,"hostname":"x","load":{"load5":1e999}}', "load.load5: inf is not a finite number"),
    (b'{"timestamp":1,"hostname":"x","network":{"rx_rate":1e308}}', "network.rx_rate: 1e+308 is out of range"),
    (b'{"timestamp":1,"hostname":"x","network":{"tx_rate":-1e300}}', "network.tx_rate: -1e+300 is out of range"),
    (b'{"timestamp":1,"hostname":"x","memory":{"used":-5}}', "memory.used: -5 is out of range"),
    (b'{"timestamp":1,"hostname":"x","filesystems":[{"total":1}, {"total":1e308}]}',
     "filesystems[1].total: 1e+308 is out of range"),
    (b'{"timestamp":1,"hostname":"x","processes":{"top_cpu":[{"pid":"7"}]}}',
     "processes.top_cpu[0].pid: expected an integer, got a string (1 characters)"),
    (b'{"timestamp":1,"hostname":"x","processes":{"count":2.5}}', "processes.count: expected an integer, got 2.5"),
    (b'{"timestamp":1,"hostname":"x","systemd":{"available":1}}', "systemd.available: expected true or false, got 1"),
    (b'{"timestamp":1,"hostname":"x","systemd":{"watched":{"a\\u0000b.service":7}}}',
     'systemd.watched."ab.service": expected a string, got 7'),
    (b'{"timestamp":1,"hostname":"x","cpu":{"percent":true}}', "cpu.percent: expected a number, got true"),
    (b'{"timestamp":1,"hostname":"x","cpu":{"percent":105.5}}', "cpu.percent: 105.5 is out of range (0 to 105)"),
    (b'{"timestamp":1e300,"hostname":"x"}', "timestamp: 1e+300 is out of range"),
])
def test_hostile_values_are_refused_naming_the_field(body, message):
    assert message in bad_body(body)


def test_message_never_quotes_host_text():
    message = bad(dict(BASE, cpu={"percent": "\x1b]0;owned\x07" + "x" * 10**6}))
    assert message == "cpu.percent: expected a number, got a string (1000010 characters)"


def test_string_os_in_inventory_is_refused():
    assert bad({"os": "Debian"}, d.normalise_inventory) == "inventory.os: expected an object, got a string (6 characters)"
    assert bad({"interfaces": [{"name": "eth0", "mtu": -1}]}, d.normalise_inventory).startswith("inventory.interfaces[0].mtu: -1")


def test_top_lists_and_strings_are_cut():
    proc = {"pid": 7, "start_time": 1, "name": "n" * 1000, "cmdline": "c" * 5000, "user": "\x00root\x1b[31m",
            "cpu_percent": 250.0, "rss": 1}
    doc = d.normalise(dict(BASE, processes={"count": 3, "top_cpu": [proc] * 20_000, "top_memory": [proc] * 11}))
    top = doc["processes"]["top_cpu"]
    assert len(top) == 10 and len(doc["processes"]["top_memory"]) == 10
    assert len(top[0]["name"]) == 255 and top[0]["name"].endswith("\u2026")
    assert len(top[0]["cmdline"]) == 200
    assert top[0]["user"] == "root[31m"
    assert top[0]["cpu_percent"] == 250.0  # percent of one core, as top: not clamped


def test_huge_hostname_is_cut_and_huge_body_refused():
    doc, text = parse_document(json.dumps(dict(BASE, hostname="h" * 300_000)).encode())
    assert len(doc["hostname"]) == 255 and len(text) < 400
    body = json.dumps(dict(BASE, hostname="h" * 10**6)).encode()
    assert bad_body(body) == f"document: {len(body)} bytes, over the 524288-byte cap"


def test_200000_top_processes_are_refused_by_size():
    procs = [{"pid": i + 1, "name": "p", "cpu_percent": 0.0, "rss": 0} for i in range(200_000)]
    assert bad_body(json.dumps(dict(BASE, processes={"top_cpu": procs})).encode()).startswith("document: ")


def test_control_characters_are_removed_everywhere():
    doc = d.normalise(dict(BASE, hostname="web\x00-1\r\n\u202e", errors={"dock\x1ber": "boom\x07\n"},
                           filesystems=[{"mountpoint": "/srv\x00\u200b", "percent": 1.0}],
                           systemd={"failed": ["a\x9b.service"], "watched": {"x\u2066.service": "act\x00ive"}}))
    assert doc["hostname"] == "web-1"
    assert doc["errors"] == {"docker": "boom"}
    assert doc["filesystems"][0]["mountpoint"] == "/srv"
    assert doc["systemd"] == {"failed": ["a.service"], "watched": {"x.service": "active"}}


def test_lone_surrogates_become_replacement_characters():
    doc, text = parse_document(b'{"timestamp":1,"hostname":"a\\ud800b"}')
    assert doc["hostname"] == "a\ufffdb"
    text.encode("utf-8")  # storable


def test_percent_slack_is_clamped_and_memory_overshoot_allowed():
    doc = d.normalise(dict(BASE, cpu={"percent": 100.4}, memory={"percent": 180.0}, filesystems=[{"percent": 0}]))
    assert doc["cpu"]["percent"] == 100.0 and doc["memory"]["percent"] == 100.0
    assert doc["filesystems"][0]["percent"] == 0.0
    assert "memory.percent: 200.5 is out of range (0 to 200)" in bad(dict(BASE, memory={"percent": 200.5}))


def test_unknown_fields_are_dropped_and_nulls_kept():
    doc = d.normalise(dict(BASE, extension={"x": [float("nan")] * 3}, cpu={"percent": None, "future": 1}, docker=None))
    assert doc == dict(BASE, cpu={"percent": None}, docker=None)


def test_lists_and_maps_are_capped():
    doc = d.normalise(dict(BASE, network={"interfaces": [{"name": f"e{i}"} for i in range(500)]},
                           filesystems=[{"mountpoint": f"/m{i}"} for i in range(500)],
                           errors={f"c{i}": "x" for i in range(100)},
                           processes={"watched": {f"p{i}": 1 for i in range(1000)}}))
    assert len(doc["network"]["interfaces"]) == d.MAX_INTERFACES
    assert len(doc["filesystems"]) == d.MAX_FILESYSTEMS
    assert len(doc["errors"]) == d.MAX_ERRORS
    assert len(doc["processes"]["watched"]) == d.MAX_UNITS


def test_integers_beyond_sqlite_and_float_range():
    assert "out of range" in bad(dict(BASE, memory={"total": 2**63}))
    assert "out of range" in bad(dict(BASE, load={"load1": 10**400}))  # no OverflowError from float()
    assert d.normalise(dict(BASE, memory={"total": 2**63 - 1}))["memory"]["total"] == 2**63 - 1


def test_extracted_sample_of_normalised_document_is_finite():
    doc, _ = parse_document(json.dumps(dict(BASE, processes={"count": 10_000_000}, load={"load1": 1e6})).encode())
    sample = extract_sample(doc)
    assert sample["procs"] == 10_000_000 and sample["load1"] == 1e6


# Properties: no document makes normalise() raise anything but BAD_PAYLOAD, nor produce a
# value outside its field's bounds.

_wild_scalar = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70), st.just(10**19), st.just(2**63),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e300, 1e308, -1e300, -0.0, 100.0, 105.0]),
    st.text(max_size=20), st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x206f), max_size=300),
    st.builds(d._NonFinite, st.sampled_from(["NaN", "Infinity", "-Infinity"])),
)
_wild = st.recursive(_wild_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def _leaf(field: d.Field, wild: bool):
    if isinstance(field, d.Num):
        edges = [field.lo, field.hi] + ([field.clamp + 0.5] if field.clamp is not None else [])
        if wild:
            edges += [math.nextafter(field.hi, math.inf), math.nextafter(field.lo, -math.inf)]
        return st.floats(min_value=field.lo, max_value=field.hi) | st.sampled_from(edges)
    if isinstance(field, d.Int):
        edges = [field.lo, field.hi] + ([field.lo - 1, field.hi + 1] if wild else [])
        return st.integers(min_value=field.lo, max_value=field.hi) | st.sampled_from(edges)
    if isinstance(field, d.Str):
        return st.text(max_size=field.limit + 5) | st.text(
            alphabet=st.characters(min_codepoint=0, max_codepoint=0x206f), max_size=field.limit + 5)
    return st.booleans()


def shaped(field: d.Field, wild: bool = True):
    """Documents of the schema's shape: with wild values now and then, or all within bounds."""
    if isinstance(field, d.Obj):
        inner = st.fixed_dictionaries({}, optional={key: shaped(_field_of(norm), wild) for key, norm in field.fields})
    elif isinstance(field, d.List):
        inner = st.lists(shaped(field.item, wild), max_size=min(field.limit + 2, 14))
    elif isinstance(field, d.Map):
        inner = st.dictionaries(st.text(max_size=300), shaped(field.value, wild), max_size=6)
    else:
        inner = _leaf(field, wild)
    if wild:
        return st.one_of(inner, inner, inner, inner, inner, inner, st.none(), _wild_scalar)
    return st.one_of(inner, inner, inner, inner, st.none())


def _field_of(norm) -> d.Field:
    return norm.__self__


def check_output(field: d.Field, value: object) -> None:
    """value is what field.norm may return: types, bounds, caps, clean text."""
    if value is None:
        return
    if isinstance(field, d.Obj):
        assert type(value) is dict
        known = {key: _field_of(norm) for key, norm in field.fields}
        assert set(value) <= set(known)
        for key, v in value.items():
            check_output(known[key], v)
    elif isinstance(field, d.List):
        assert type(value) is list and len(value) <= field.limit
        for v in value:
            check_output(field.item, v)
    elif isinstance(field, d.Map):
        assert type(value) is dict and len(value) <= field.limit
        for k, v in value.items():
            check_output(d.Map._KEY, k)
            check_output(field.value, v)
    elif isinstance(field, d.Num):
        assert type(value) is float and math.isfinite(value)
        assert field.lo <= value <= (field.clamp if field.clamp is not None else field.hi)
    elif isinstance(field, d.Int):
        assert type(value) is int and field.lo <= value <= field.hi <= d.SQLITE_MAX_INT
    elif isinstance(field, d.Str):
        assert type(value) is str and len(value) <= field.limit and is_clean(value)
        value.encode("utf-8")
    else:
        assert type(value) is bool


def _normalise_or_refuse(normaliser, schema, doc):
    try:
        out = normaliser(doc)
    except PollError as err:
        assert err.reason == "bad_payload" and is_clean(err.message) and len(err.message) < 400
        return
    check_output(schema, out)
    assert normaliser(out) == out  # idempotent: a stored document normalises to itself
    json.dumps(out, allow_nan=False).encode("utf-8")


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _with_base(doc):
    return dict(doc, **BASE) if isinstance(doc, dict) else doc


@PROPERTY
@given(st.one_of(_wild, shaped(d.SCHEMA).map(_with_base)))
def test_no_document_breaks_normalise(doc):
    _normalise_or_refuse(d.normalise, d.SCHEMA, doc)


@PROPERTY
@given(st.one_of(_wild, shaped(d.INVENTORY)))
def test_no_inventory_breaks_normalise_inventory(doc):
    _normalise_or_refuse(d.normalise_inventory, d.INVENTORY, doc)


@PROPERTY
@given(shaped(d.SCHEMA, wild=False).filter(lambda x: isinstance(x, dict)).map(_with_base),
       shaped(d.INVENTORY, wild=False).filter(lambda x: isinstance(x, dict)))
def test_documents_within_bounds_are_accepted_and_stay_within_bounds(doc, inv):
    out = d.normalise(doc)
    check_output(d.SCHEMA, out)
    assert d.normalise(out) == out
    out = d.normalise_inventory(inv)
    check_output(d.INVENTORY, out)
    assert d.normalise_inventory(out) == out


@PROPERTY
@given(st.binary(max_size=200) | st.one_of(shaped(d.SCHEMA), shaped(d.SCHEMA, wild=False)).map(
    lambda x: json.dumps(_with_base(x), default=repr).encode()))
def test_no_body_breaks_parse_document(body):
    try:
        doc, text = parse_document(body)
    except PollError as err:
        assert err.reason == "bad_payload"
        return
    check_output(d.SCHEMA, doc)
    assert d.normalise(json.loads(text)) == doc
    sample = extract_sample(doc)
    assert all(v is None or math.isfinite(v) for k, v in sample.items() if k not in ("top", "containers"))
    assert all(v is None or math.isfinite(v) for row in sample["containers"] for v in row[1:])


# -- the fast JSON parser (orjson) and the standard library give the same answers


def _decoded(body: bytes, fast: bool, monkeypatch) -> tuple[str, str]:
    """("ok", repr of the value) or ("refused", the message), by one parser."""
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(d, "orjson", None)
        try:
            return "ok", repr(d.decode(body))
        except PollError as err:
            return "refused", err.message


def _same_answer(body: bytes, monkeypatch) -> None:
    assert _decoded(body, True, monkeypatch) == _decoded(body, False, monkeypatch)


HOSTILE_JSON = [
    b'\xef\xbb\xbf{"a":1}', b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b'{"a":1e400}', b'[1e999999999999]',
    b'[1.7976931348623159e308]', b'[1.7976931348623158e308]', b'[5e-324]', b'[0.1e-999999]', b'{"a":1e-400}',
    b'{"a":123456789012345678901234567890}', b'{"a":18446744073709551616}', b'{"a":18446744073709551615}',
    b'{"a":-9223372036854775809}', b'{"a":-9223372036854775808}', b'[' + b'9' * 5000 + b']',
    b'{"a":"\\ud800"}', b'{"a":"\\uDFFF\\uD800"}', b'{"a":"\\ud83d\\ude00"}', b'{"a":"\xff"}', b'{"a":"\xed\xa0\x80"}',
    b'{"a":"\x01"}', b'{"a":"\\u0000"}', b'', b' ', b'{"a":1,"a":2}', b'-0', b'-0.0', b'[1,]', b'{"a":1,}', b'01',
    b'[.5]', b'[1.]', b'[+1]', b'{"a":true} x', b'\x00', b'{"\xc3\xa9":1}',
    b'[' * 599 + b']' * 599, b'[' * 1000 + b']' * 1000, b'[' * 1024 + b']' * 1024, b'[' * 1025 + b']' * 1025,
    b'{"a":' * 900 + b'1' + b'}' * 900,
]


@pytest.mark.parametrize("body", HOSTILE_JSON, ids=range(len(HOSTILE_JSON)))
def test_both_json_parsers_give_the_same_answer_to_hostile_bodies(body, monkeypatch):
    assert d.orjson is not None  # a dependency: the fast path is the one polls take
    _same_answer(body, monkeypatch)


def test_both_json_parsers_give_the_same_answer_to_a_real_document(real, monkeypatch):
    body = json.dumps(real[0]).encode()
    _same_answer(body, monkeypatch)
    assert d._fast_safe(body)  # a real document takes the fast path


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40)


@PROPERTY
@given(_json_values, st.booleans())
def test_both_json_parsers_give_the_same_answer_to_any_json(value, ascii_only):
    # NaN, Infinity, lone surrogates and integers of any size included
    from _pytest.monkeypatch import MonkeyPatch

    with MonkeyPatch.context() as mp:
        _same_answer(json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"), mp)


@PROPERTY
@given(st.binary(max_size=300) | _json_values.map(lambda v: json.dumps(v).encode()).flatmap(
    lambda b: st.tuples(st.just(b), st.integers(0, max(0, len(b) - 1)), st.binary(min_size=1, max_size=3)).map(
        lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + 1:])))
def test_both_json_parsers_give_the_same_answer_to_broken_json(body):
    from _pytest.monkeypatch import MonkeyPatch

    with MonkeyPatch.context() as mp:
        _same_answer(body, mp)
