"""Users, roles, passwords and API tokens (no HTTP here: the web layer and the CLI call this).

Roles, lowest first: viewer (read-only), operator (may act: remote actions, acknowledging
alerts, testing servers), admin (manages servers, users and tokens). A role includes the
ones below it.

Passwords are hashed with the standard library's scrypt; the hash string carries its own
parameters and salt (``scrypt$N$r$p$salt$hash``, base64) so they can be raised later without
breaking stored hashes. API tokens are random, shown once, and stored as their SHA-256 only.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache

from .model import ADMIN, ROLES, Conflict, Invalid
from .storage import Storage

_RANK = {role: i for i, role in enumerate(ROLES)}

# 2**15 x 8 x 1 needs 32 MiB and about 0.1 s per hash here: slow for a guesser, fine for a login.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_SCRYPT_MAXMEM = 128 * 1024 * 1024
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
TOKEN_PREFIX = "central_"
USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:@/-]{0,63}$")


@dataclass(frozen=True)
class Identity:
    """Who is calling: the user, their role, and how they authenticated (token or session)."""

    user_id: int
    user: str
    role: str
    via: str
    token_id: int | None = None
    logged_in_at: float | None = None  # sessions: when that login happened (the terminal's fresh authentication)

    def allows(self, role: str) -> bool:
        """Whether this identity's role is at least role."""
        return role_allows(self.role, role)


def role_allows(have: str, need: str) -> bool:
    """Whether role have includes role need."""
    return _RANK.get(have, -1) >= _RANK[need]


def check_username(name: object) -> str:
    """A user name: letters, digits, '.', '_', '@', '-'; up to 64 characters."""
    if not isinstance(name, str) or not USER_RE.match(name):
        raise Invalid(f"invalid user name {name!r}: use letters, digits, '.', '_', '@' or '-' (up to 64)")
    return name


def check_role(role: object) -> str:
    """One of viewer, operator, admin."""
    if role not in ROLES:
        raise Invalid(f"invalid role {role!r}: expected one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


def check_password(password: object) -> str:
    """A new password: at least MIN_PASSWORD characters."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise Invalid(f"password too short: use at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise Invalid(f"password too long: at most {MAX_PASSWORD} characters")
    return password


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A salted scrypt hash string that records its own parameters."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether password matches the stored hash (constant-time compare; False for a malformed hash)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        if len(expected) < 32:  # a cut-down digest would make any matching prefix pass
            return False
        actual = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                maxmem=_SCRYPT_MAXMEM, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def token_hash(token: str) -> str:
    """What is stored for a token: its SHA-256 in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random API token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_password() -> str:
    """A random password for a new account (printed once)."""
    return secrets.token_urlsafe(15)


# A hash to verify against when the user does not exist, so that a missing user takes as
# long as a wrong password (no user-name probing by timing).
@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password("not a password")


class Auth:
    """User and token management over the database."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._last_used: dict[int, float] = {}  # token id -> last use not yet written
        self._written: dict[int, float] = {}

    # users

    async def add_user(self, name: str, role: str, password: str) -> dict:
        """Create a user with a hashed password."""
        check_username(name)
        check_role(role)
        check_password(password)
        user = await self.storage.add_user(name, role, hash_password(password))
        return _public(user)

    async def set_password(self, name: str, password: str) -> None:
        """Replace a user's password (their page sessions end)."""
        check_password(password)
        await self.storage.set_user_password(name, hash_password(password))

    async def set_role(self, name: str, role: str) -> None:
        """Change a user's role; the last admin cannot be demoted."""
        check_role(role)
        user = await self.storage.get_user(name)
        if user["role"] == ADMIN and role != ADMIN and await self.storage.count_users(ADMIN) <= 1:
            raise Conflict(f"{name} is the last admin; make another user admin first")
        await self.storage.set_user_role(name, role)

    async def remove_user(self, name: str) -> None:
        """Delete a user, their tokens and sessions; the last admin cannot be removed."""
        user = await self.storage.get_user(name)
        if user["role"] == ADMIN and await self.storage.count_users(ADMIN) <= 1:
            raise Conflict(f"{name} is the last admin; add another admin first")
        await self.storage.remove_user(name)

    async def list_users(self) -> list[dict]:
        """Every user with role and creation time."""
        return await self.storage.list_users()

    async def ensure_first_admin(self, name: str = "admin") -> str | None:
        """Create the admin user with a random password when there is no user; returns it (else None)."""
        if await self.storage.count_users() > 0:
            return None
        password = new_password()
        await self.storage.add_user(name, ADMIN, hash_password(password))
        return password

    async def login(self, name: str, password: str) -> Identity | None:
        """The identity for a correct user name and password, else None (same cost either way)."""
        user = await self.storage.find_user(name) if isinstance(name, str) and USER_RE.match(name) else None
        stored = user["password_hash"] if user else _dummy_hash()
        # scrypt takes ~0.1 s of CPU: off the event loop so polls and other requests go on.
        ok = await asyncio.to_thread(verify_password, password, stored)
        if not ok or user is None:
            return None
        return Identity(user["id"], user["name"], user["role"], "session")

    # page sessions (server-side: the cookie carries only a random id)

    async def start_session(self, identity: Identity, max_age: float, address: str = "") -> str:
        """A new session for a logged-in identity; returns its id (the cookie's secret, not stored)."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        await self.storage.add_session(identity.user_id, token_hash(session_id), now, now + max_age, address[:100])
        return session_id

    async def session_identity(self, session_id: object) -> Identity | None:
        """Who a session id stands for, while the session exists (not logged out, expired or revoked)."""
        if not isinstance(session_id, str) or not 20 <= len(session_id) <= 100:
            return None
        row = await self.storage.session_user(token_hash(session_id), time.time())
        if row is None:
            return None
        return Identity(row["user_id"], row["user"], row["role"], "session", logged_in_at=row["created_at"])

    async def end_session(self, session_id: object) -> None:
        """Log a session out: its cookie stops working at once, wherever it was saved."""
        if isinstance(session_id, str):
            await self.storage.remove_session(token_hash(session_id))

    async def end_user_sessions(self, name: str) -> int:
        """Log a user out everywhere; returns how many sessions ended."""
        return await self.storage.remove_user_sessions(name)

    # tokens

    async def create_token(self, user: str, name: str) -> tuple[str, dict]:
        """A new API token for user: (the token, shown once; its stored record)."""
        if not isinstance(name, str) or not TOKEN_NAME_RE.match(name):
            raise Invalid(f"invalid token name {name!r}: letters, digits, spaces and ._:@/- up to 64 characters")
        owner = await self.storage.get_user(user)
        token = new_token()
        record = await self.storage.add_token(owner["id"], name, token_hash(token))
        record["user"] = owner["name"]
        return token, record

    async def list_tokens(self, user: str | None = None) -> list[dict]:
        """API tokens (id, name, user, created, last used, revoked), newest first."""
        if user is not None:
            await self.storage.get_user(user)
        return await self.storage.list_tokens(user)

    async def revoke_token(self, token_id: int) -> dict:
        """Revoke a token by id; it stops working at once."""
        return await self.storage.revoke_token(token_id)

    async def token_identity(self, token: str) -> Identity | None:
        """The identity behind a bearer token, or None for an unknown or revoked one."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        row = await self.storage.token_user(token_hash(token))
        if row is None:
            return None
        self._last_used[row["token_id"]] = time.time()
        return Identity(row["user_id"], row["user"], row["role"], "token", row["token_id"])

    async def flush_last_used(self, min_interval: float = 60.0) -> None:
        """Write tokens' last use, at most once per min_interval per token (not one write per request)."""
        now = time.time()
        due = {tid: ts for tid, ts in self._last_used.items() if now - self._written.get(tid, 0.0) >= min_interval}
        if not due:
            return
        await self.storage.touch_tokens(due)
        for tid, ts in due.items():
            self._written[tid] = now
            if self._last_used.get(tid) == ts:
                del self._last_used[tid]


def _public(user: dict) -> dict:
    return {k: v for k, v in user.items() if k != "password_hash"}


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0


@dataclass(frozen=True)
class LoginAttempt:
    """A reserved login attempt: counted as failed until LoginLimiter.succeeded() says otherwise."""

    user: str
    address: str


class LoginLimiter:
    """Backoff after failed logins, per (user name, client address) and, higher, per user name.

    An attempt is reserved (counted as a failure) *before* the password is checked, so a burst
    of parallel guesses cannot all reach scrypt; a correct password gives the reservation back.
    The first `free` failures of a user from one address cost nothing; each further one doubles
    the wait before that address may try that user again (1 s, 2 s, 4 s ... up to backoff_max).
    Failures for a user summed over all addresses have their own, higher allowance
    (`per_user`, same doubling), so many addresses cannot guess freely either; an address the
    user logged in from recently is not held back by the others' failures, so nobody can lock
    the admin out from somewhere else. Counts are forgotten after `forget` quiet seconds.
    """

    KNOWN_FOR = 30 * 86400.0  # how long a successful (user, address) stays exempt from the user's ceiling

    def __init__(self, free: int = 5, per_user: int = 50, backoff_max: float = 900.0,
                 forget: float | None = None, max_keys: int = 10000):
        self.free = free
        self.per_user = per_user
        self.backoff_max = backoff_max
        self.forget = forget if forget is not None else max(3600.0, 4 * backoff_max)
        self.max_keys = max_keys
        self._failures: dict[tuple[str, ...], _Failures] = {}
        self._known: dict[tuple[str, str], float] = {}  # (user, address) -> last successful login

    def _wait(self, key: tuple[str, ...], allowance: int, now: float) -> float:
        f = self._failures.get(key)
        if f is None:
            return 0.0
        if now - f.last >= self.forget:
            del self._failures[key]
            return 0.0
        over = f.count - allowance
        if over < 0:
            return 0.0
        return max(0.0, min(self.backoff_max, 2.0 ** over) - (now - f.last))

    def retry_after(self, address: str, user: str, now: float | None = None) -> float:
        """Seconds until user may be tried again from address (0: now)."""
        now = time.time() if now is None else now
        wait = self._wait(("pair", user, address), self.free, now)
        known = self._known.get((user, address))
        if known is None or now - known > self.KNOWN_FOR:
            wait = max(wait, self._wait(("user", user), self.per_user, now))
        return wait

    def reserve(self, address: str, user: str, now: float | None = None) -> LoginAttempt | float:
        """Reserve an attempt (counted as failed from now on), or the seconds to wait first."""
        now = time.time() if now is None else now
        wait = self.retry_after(address, user, now)
        if wait > 0:
            return wait
        self._trim()
        for key in (("pair", user, address), ("user", user)):
            f = self._failures.setdefault(key, _Failures())
            f.count += 1
            f.last = now
        return LoginAttempt(user, address)

    def succeeded(self, attempt: LoginAttempt, now: float | None = None) -> None:
        """The password was right: the pair starts afresh and the user's count gets this one back."""
        now = time.time() if now is None else now
        self._failures.pop(("pair", attempt.user, attempt.address), None)
        f = self._failures.get(("user", attempt.user))
        if f is not None:
            f.count -= 1
            if f.count <= 0:
                del self._failures[("user", attempt.user)]
        if len(self._known) >= self.max_keys:
            for key in sorted(self._known, key=self._known.__getitem__)[: self.max_keys // 10]:
                del self._known[key]
        self._known[(attempt.user, attempt.address)] = now

    def _trim(self) -> None:
        # A spray of addresses or names must not grow memory without bound: drop the stalest.
        if len(self._failures) >= self.max_keys:
            for key in sorted(self._failures, key=lambda k: self._failures[k].last)[: self.max_keys // 10]:
                del self._failures[key]
