"""API keys: made once, stored as a hash, found by their prefix, compared in constant time.

A key reads ``tp_<prefix>_<secret>``: ``prefix`` (12 hex digits) is stored as it is and
finds the key's row; ``secret`` is 32 random bytes from :mod:`secrets`. Only the SHA-256
of the whole key is stored, never the key: it is printed once, when it is made.

Why a plain SHA-256 and not a password hash (bcrypt, scrypt, Argon2): those are slow on
purpose, to make guessing a *low-entropy* password from a stolen hash expensive. A key
with 256 random bits cannot be guessed, however fast each guess is, so a slow hash would
only slow every request down. The stored hash is compared with :func:`hmac.compare_digest`,
which takes the same time wherever two values differ.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from engine.errors import NotFound, UserError
from engine.store.schema import api_keys

#: What a key may do: ``write:records`` (PUT and DELETE records), ``read:log`` (GET
#: touch points and their why), ``read:patient-tokens`` (GET whose a booking or intake
#: link's token is: for the practice's booking page).
SCOPES = ("write:records", "read:log", "read:patient-tokens")
PREFIX = "tp"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    scopes: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {"name": self.name, "scopes": sorted(self.scopes),
                "created_at": iso(self.created_at), "last_used_at": iso(self.last_used_at),
                "revoked_at": iso(self.revoked_at)}


def _key_from_row(row: Any) -> ApiKey:
    return ApiKey(row.id, row.name, frozenset(s for s in row.scopes.split(",") if s),
                  row.created_at, row.revoked_at, row.last_used_at)


def digest(key: str) -> str:
    """The SHA-256 of a key, as stored (hex)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_scopes(raw: str) -> frozenset[str]:
    """``"write:records,read:log"`` → the scopes; an unknown one is a UserError."""
    scopes = frozenset(s.strip() for s in raw.split(",") if s.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise UserError(f"unknown scope {', '.join(unknown)} — use {', '.join(SCOPES)} "
                        "(comma-separated)" if unknown else
                        f"give at least one scope: {', '.join(SCOPES)}")
    return scopes


def create(conn: Connection, name: str, scopes: frozenset[str], now: datetime) -> str:
    """Make a key named ``name``; the key itself (it is not kept: show it once)."""
    if not _NAME.fullmatch(name):
        raise UserError(f"{name!r} is not a key name — use up to 64 letters, digits, dots, "
                        "dashes or underscores, e.g. emr-sync")
    if conn.execute(select(api_keys.c.id).where(api_keys.c.name == name)).first():
        raise UserError(f"a key named {name} exists already — revoke it and choose another "
                        "name, or `touchpoint api-keys list`")
    prefix = secrets.token_hex(6)
    key = f"{PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    conn.execute(insert(api_keys).values(
        name=name, prefix=prefix, key_hash=digest(key), scopes=",".join(sorted(scopes)),
        created_at=now, revoked_at=None, last_used_at=None))
    return key


def all_keys(conn: Connection) -> list[ApiKey]:
    return [_key_from_row(row) for row in
            conn.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id))]


def revoke(conn: Connection, name: str, now: datetime) -> ApiKey:
    """Revoke the key named ``name`` (at once: its next request gets 401)."""
    row = conn.execute(select(api_keys).where(api_keys.c.name == name)).first()
    if row is None:
        raise NotFound(f"no API key named {name} — `touchpoint api-keys list` shows them")
    key = _key_from_row(row)
    if key.revoked_at is not None:
        raise UserError(f"the key {name} was revoked already, at {key.revoked_at:%Y-%m-%d %H:%M}Z")
    conn.execute(update(api_keys).where(api_keys.c.id == key.id).values(revoked_at=now))
    return key


def find(conn: Connection, key: str) -> ApiKey | None:
    """The key ``key`` is (revoked or not), or None when it is no key of ours."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    row = conn.execute(select(api_keys).where(api_keys.c.prefix == parts[1])).first()
    if row is None or not hmac.compare_digest(row.key_hash, digest(key)):
        return None
    return _key_from_row(row)


def mark_used(conn: Connection, key_id: int, now: datetime) -> None:
    conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=now))
