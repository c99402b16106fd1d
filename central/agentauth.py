"""The central's half of the agent's authentication (docs/agent-protocol.md, "Authentication").

Pure logic, no I/O: an AgentSession holds one channel's state (the central's nonce, the
agent's nonce from the challenge, the sequence number), signs each request and checks the
agent's proof on each answer before the caller uses a byte of it. The secret never leaves
this object: it is not logged, not formatted into messages, not kept in exceptions.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets

from .hosttext import escape
from .model import AGENT_IMPOSTOR, Invalid, PollError

PROTOCOL = "central-agent/1"
SECRET_RE = re.compile(r"^[0-9a-f]{64}$")
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_CHALLENGE_PROOF_RE = re.compile(r"^mac=([0-9a-f]{64})$")
_PROOF_RE = re.compile(r"^seq=([1-9][0-9]{0,17}) mac=([0-9a-f]{64})$")


def new_secret() -> str:
    """A fresh agent secret: 32 random bytes as 64 lowercase hex digits."""
    return secrets.token_hex(32)


def check_secret(text: object) -> str:
    """A secret as the agent's secret file holds it (surrounding whitespace ignored)."""
    value = text.strip() if isinstance(text, str) else None
    if not value or not SECRET_RE.match(value):
        # never echo the value: it may be a real secret with a typo
        raise Invalid("an agent secret is 64 lowercase hex digits (the content of /etc/central-agent/secret)")
    return value


def _claim(status: int, body: bytes) -> str:
    """What an unproven answer said, for the operator (escaped, short)."""
    detail = ""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict):
            detail = str(doc.get("detail") or doc.get("error") or "")
    except (ValueError, RecursionError):
        detail = body[:120].decode("utf-8", "replace")
    return f"it answered {status}" + (f": {escape(detail[:200])}" if detail else "")


class AgentSession:
    """One channel's authentication: challenge, request MACs, answer proofs."""

    __slots__ = ("_key", "cnonce", "nonce", "seq")

    def __init__(self, secret: str):
        self._key = bytes.fromhex(check_secret(secret))
        self.cnonce = secrets.token_hex(16)
        self.nonce: str | None = None
        self.seq = 0

    def __repr__(self) -> str:  # never show the key
        return f"<AgentSession seq={self.seq}>"

    def _mac(self, *fields: str) -> str:
        return hmac.digest(self._key, "\n".join(fields).encode("ascii"), "sha256").hex()

    def challenge_request(self, host_header: str) -> bytes:
        """The GET /api/challenge request that opens a channel."""
        return (f"GET /api/challenge HTTP/1.1\r\nHost: {host_header}\r\nAccept: application/json\r\n"
                f"X-Central-Nonce: {self.cnonce}\r\nContent-Length: 0\r\n\r\n").encode()

    def accept_challenge(self, status: int, headers: dict, body: bytes) -> None:
        """Check the agent's challenge answer; raise AGENT_IMPOSTOR unless it proves the secret."""
        proof = _CHALLENGE_PROOF_RE.match(headers.get("x-agent-auth", ""))
        nonce = None
        if status == 200 and proof:
            try:
                doc = json.loads(body)
                nonce = doc.get("nonce") if isinstance(doc, dict) else None
            except (ValueError, RecursionError):
                nonce = None
        if not isinstance(nonce, str) or not _NONCE_RE.match(nonce):
            raise PollError(AGENT_IMPOSTOR, "what answers on the agent port gave no proof of the host's secret "
                                            f"({_claim(status, body)}); nothing was sent to it")
        if not hmac.compare_digest(proof.group(1), self._mac(PROTOCOL + " challenge", nonce, self.cnonce)):
            raise PollError(AGENT_IMPOSTOR, "what answers on the agent port does not hold the host's secret "
                                            "(its challenge proof is wrong); nothing was sent to it")
        self.nonce = nonce
        self.seq = 0

    def sign(self, method: str, target: str, body: bytes) -> str:
        """The X-Central-Auth value for the next request."""
        self.seq += 1
        return f"seq={self.seq} mac=" + self._mac(PROTOCOL + " request", self.nonce, self.cnonce, str(self.seq),
                                                   method, target, hashlib.sha256(body).hexdigest())

    def verify(self, method: str, target: str, status: int, headers: dict, body: bytes) -> None:
        """Check the agent's proof on the answer to the last signed request; raise AGENT_IMPOSTOR."""
        proof = _PROOF_RE.match(headers.get("x-agent-auth", ""))
        if proof is None:
            raise PollError(AGENT_IMPOSTOR, f"the answer to {method} {target} carries no proof of the host's "
                                            f"secret ({_claim(status, body)}); it was not used")
        want = self._mac(PROTOCOL + " response", self.nonce, self.cnonce, str(self.seq), method, target,
                         str(status), hashlib.sha256(body).hexdigest())
        if int(proof.group(1)) != self.seq or not hmac.compare_digest(proof.group(2), want):
            raise PollError(AGENT_IMPOSTOR, f"the answer to {method} {target} has a wrong proof of the host's "
                                            "secret; it was not used")
