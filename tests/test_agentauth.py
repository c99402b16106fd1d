"""The central's half of the agent authentication (central.agentauth): the documented test
vector, and every way an answer can fail to prove the secret."""
from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from central.agentauth import PROTOCOL, AgentSession, check_secret, new_secret
from central.model import AGENT_IMPOSTOR, Invalid, PollError

DOC = Path(__file__).resolve().parent.parent / "docs" / "agent-protocol.md"


def vector() -> dict:
    return json.loads(DOC.read_text().split("<!-- test-vector -->")[1].split("```json")[1].split("```")[0])


def mac(secret: str, *fields: str) -> str:
    return hmac.new(bytes.fromhex(secret), "\n".join(fields).encode(), hashlib.sha256).hexdigest()


def session_at(v: dict) -> AgentSession:
    """A session with the vector's central nonce, after the vector's challenge."""
    s = AgentSession(v["secret"])
    s.cnonce = v["central_nonce"]
    s.accept_challenge(200, {"x-agent-auth": "mac=" + v["challenge_mac"]},
                       json.dumps({"nonce": v["agent_nonce"]}).encode())
    return s


def test_the_documented_exchange():
    v = vector()
    s = session_at(v)
    assert s.sign("GET", "/api/health", b"") == "seq=1 mac=" + v["request_mac"]
    s.verify("GET", "/api/health", 200, {"x-agent-auth": "seq=1 mac=" + v["response_mac"]},
             v["response_body"].encode())


@pytest.mark.parametrize("status, headers, body, why", [
    (200, {}, b'{"nonce": "' + b"a" * 32 + b'"}', "gave no proof"),
    (404, {}, b'{"error": "not_found", "detail": "no such endpoint /api/challenge"}', "answered 404: no such endpoint"),
    (503, {}, b'{"error": "no_secret", "detail": "no secret file"}', "answered 503: no secret file"),
    (200, {"x-agent-auth": "mac=" + "0" * 64}, b'{"nonce": "' + b"a" * 32 + b'"}', "proof is wrong"),
    (200, {"x-agent-auth": "mac=" + "0" * 64}, b'{"nonce": "short"}', "gave no proof"),
    (200, {"x-agent-auth": "mac=" + "0" * 64}, b"<html>", "gave no proof"),
])
def test_a_challenge_answer_without_a_valid_proof_is_an_impostor(status, headers, body, why):
    s = AgentSession(new_secret())
    with pytest.raises(PollError) as err:
        s.accept_challenge(status, headers, body)
    assert err.value.reason == AGENT_IMPOSTOR and why in err.value.message
    assert s.nonce is None


def test_an_escape_in_an_impostors_answer_is_shown_inert():
    s = AgentSession(new_secret())
    with pytest.raises(PollError) as err:
        s.accept_challenge(401, {}, json.dumps({"detail": "x\x1b]0;pwned\x07\n"}).encode())
    assert "\x1b" not in err.value.message and "\\x1b" in err.value.message and "\n" not in err.value.message


def test_every_answer_must_carry_the_proof_for_its_own_request():
    v = vector()
    body = v["response_body"].encode()
    good = {"x-agent-auth": "seq=1 mac=" + v["response_mac"]}
    cases = [
        ({}, body, 200, "carries no proof"),
        ({"x-agent-auth": "seq=2 mac=" + v["response_mac"]}, body, 200, "wrong proof"),  # another seq
        (good, body + b" ", 200, "wrong proof"),  # a changed body
        (good, body, 500, "wrong proof"),  # a changed status
    ]
    for headers, data, status, why in cases:
        s = session_at(v)
        s.sign("GET", "/api/health", b"")
        with pytest.raises(PollError) as err:
            s.verify("GET", "/api/health", status, headers, data)
        assert err.value.reason == AGENT_IMPOSTOR and why in err.value.message, (headers, status)
    s = session_at(v)
    s.sign("GET", "/api/all", b"")  # the same proof for another request does not pass either
    with pytest.raises(PollError):
        s.verify("GET", "/api/all", 200, good, body)


def test_an_old_answer_does_not_pass_on_a_new_channel():
    secret = new_secret()
    first = AgentSession(secret)
    first.nonce, agent_nonce = "1" * 32, "1" * 32
    first.sign("GET", "/api/all", b"")
    old = {"x-agent-auth": "seq=1 mac=" + mac(secret, PROTOCOL + " response", agent_nonce, first.cnonce, "1",
                                              "GET", "/api/all", "200", hashlib.sha256(b"{}").hexdigest())}
    first.verify("GET", "/api/all", 200, old, b"{}")
    second = AgentSession(secret)
    assert second.cnonce != first.cnonce  # a fresh central nonce per channel
    second.nonce = agent_nonce  # even if a squatter replays the agent's old nonce...
    second.sign("GET", "/api/all", b"")
    with pytest.raises(PollError):  # ...the answer is bound to the old central nonce
        second.verify("GET", "/api/all", 200, old, b"{}")


def test_sequence_numbers_grow_and_the_secret_never_shows():
    secret = new_secret()
    s = AgentSession(secret)
    s.nonce = "2" * 32
    assert [s.sign("GET", "/api/all", b"").split()[0] for _ in range(3)] == ["seq=1", "seq=2", "seq=3"]
    assert secret not in repr(s) and secret not in str(vars(s) if hasattr(s, "__dict__") else "")


@pytest.mark.parametrize("text", ["", "abc", "A" * 64, "g" * 64, "a" * 63, "a" * 65, None, 42])
def test_a_bad_secret_is_refused_without_echoing_it(text):
    with pytest.raises(Invalid) as err:
        check_secret(text)
    assert "64 lowercase hex digits" in err.value.message
    if isinstance(text, str) and text:
        assert text not in err.value.message


def test_whitespace_around_a_secret_is_ignored():
    assert check_secret("  " + "c" * 64 + "\n") == "c" * 64
