"""API keys: generation, argon2 hashing, roles, verification and revocation.

A key looks like ``dmk_<id>_<secret>``: ``id`` (12 hex characters) is public and names the database row, and the
whole key is verified against its argon2id hash (:mod:`argon2`, the library's default parameters). The plain key
is shown once, when created, and never stored or logged.

Roles: ``clinician`` (predict, read own results), ``trainer`` (upload labeled scans, start jobs) and ``admin``
(keys, models, audit). Successful verifications are cached in memory for ``cache_seconds`` (keyed by the SHA-256
of the presented key), because argon2 is deliberately slow; revoking through :class:`KeyVerifier` clears the
cache at once, a revocation by another process takes effect within ``cache_seconds``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dentalmim.db.models import ApiKey, utcnow
from dentalmim.errors import ConfigError, DentalMimError

Role = Literal["clinician", "trainer", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
KEY_PREFIX = "dmk"
_KEY_RE = re.compile(rf"^{KEY_PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{20,128}})$")
_HASHER = PasswordHasher()


class KeyNotFoundError(DentalMimError):
    """No API key with that id."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: key id (pseudonymous, safe to log and audit) and role."""

    key_id: str
    role: str


@dataclass(frozen=True)
class KeyInfo:
    """A key's public facts (never its secret or hash)."""

    key_id: str
    name: str
    role: str
    created_at: str
    revoked_at: str | None


def check_role(role: str) -> str:
    """Returns ``role`` or raises :class:`ConfigError` naming the valid roles."""
    if role not in ROLES:
        raise ConfigError(f"role should be one of {ROLES}, got {role!r}.")
    return role


def new_key() -> tuple[str, str]:
    """A fresh ``(key_id, plain key)``."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def parse_key_id(key: str) -> str | None:
    """The id part of a well-formed key, else None."""
    match = _KEY_RE.match(key or "")
    return match.group(1) if match else None


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.name, row.role, row.created_at.isoformat(timespec="seconds"),
                   row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else None)


def create_key(session: Session, role: str, name: str = "") -> tuple[KeyInfo, str]:
    """Stores a new key (hashed) and returns ``(info, plain key)``; the caller commits."""
    check_role(role)
    if len(name) > 100:
        raise ConfigError(f"name should have at most 100 characters, got {len(name)}.")
    key_id, plain = new_key()
    row = ApiKey(id=key_id, name=name, role=role, secret_hash=_HASHER.hash(plain), created_at=utcnow())
    session.add(row)
    session.flush()
    return _info(row), plain


def list_keys(session: Session) -> list[KeyInfo]:
    """Every key, oldest first."""
    return [_info(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))]


def revoke_key(session: Session, key_id: str) -> KeyInfo:
    """Marks a key revoked (idempotent); the caller commits."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise KeyNotFoundError(f"no API key with id {key_id!r}.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return _info(row)


def verify_key(session: Session, key: str) -> Principal | None:
    """The principal of a valid, unrevoked key, else None (argon2 verification, no cache)."""
    key_id = parse_key_id(key)
    if key_id is None:
        return None
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    try:
        _HASHER.verify(row.secret_hash, key)
    except (VerificationError, InvalidHashError):
        return None
    return Principal(row.id, row.role)


class KeyVerifier:
    """:func:`verify_key` with a short in-memory cache of successful verifications (see the module docstring).

    Args:
        sessions: session factory of the keys database.
        cache_seconds: how long a verified key is trusted without checking the database again (0 = never).
    """

    def __init__(self, sessions: sessionmaker[Session], cache_seconds: float = 30.0) -> None:
        self._sessions = sessions
        self._ttl = float(cache_seconds)
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def verify(self, key: str | None) -> Principal | None:
        """The principal of ``key``, or None when it is missing, malformed, unknown, revoked or wrong."""
        if not key or parse_key_id(key) is None:
            return None
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        with self._sessions() as session:
            principal = verify_key(session, key)
        if principal is not None and self._ttl > 0:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = (principal, now + self._ttl)
        return principal

    def forget(self, key_id: str) -> None:
        """Drops cached verifications of one key (after revoking it)."""
        with self._lock:
            self._cache = {d: v for d, v in self._cache.items() if v[0].key_id != key_id}
