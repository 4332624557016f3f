"""Console sessions: created at sign-in, checked on every request, ended on sign-out.

The cookie holds a random 256-bit token; the database keeps only its SHA-256 (a stolen
database does not sign anyone in). A session is valid while it has not been ended, its
account is active, its last request is more recent than ``idle`` and its start more
recent than ``longest``. ``last_seen_at`` is written at most once a minute, not on every
request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, insert, select, update

from engine.staff import StaffUser
from engine.store.schema import staff_sessions, staff_users

TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Session:
    id: int
    user: StaffUser
    csrf_token: str
    created_at: datetime
    last_seen_at: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start(conn: Connection, user: StaffUser, *, now: datetime, address: str) -> str:
    """A new session for ``user``; returns the token for the cookie (shown once)."""
    token = secrets.token_urlsafe(32)
    conn.execute(insert(staff_sessions).values(
        token_hash=_digest(token), user_id=user.id, csrf_token=secrets.token_urlsafe(32),
        created_at=now, last_seen_at=now, address=address[:64], ended_at=None))
    return token


def find(conn: Connection, token: str | None, *, now: datetime, idle: timedelta,
         longest: timedelta) -> Session | None:
    """The live session ``token`` names, its last request noted; None if there is none."""
    if not token or len(token) > 200:
        return None
    row = conn.execute(
        select(staff_sessions, staff_users.c.email, staff_users.c.role,
               staff_users.c.created_at.label("user_created_at"),
               staff_users.c.password_changed_at, staff_users.c.disabled_at,
               staff_users.c.phone)
        .join(staff_users, staff_users.c.id == staff_sessions.c.user_id)
        .where(staff_sessions.c.token_hash == _digest(token))).first()
    if row is None or row.ended_at is not None or row.disabled_at is not None:
        return None
    if now - row.last_seen_at > idle or now - row.created_at > longest \
            or row.password_changed_at > row.created_at:
        conn.execute(update(staff_sessions).where(staff_sessions.c.id == row.id)
                     .values(ended_at=now))
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        conn.execute(update(staff_sessions).where(staff_sessions.c.id == row.id)
                     .values(last_seen_at=now))
    user = StaffUser(row.user_id, row.email, row.role, row.user_created_at,
                     row.password_changed_at, row.disabled_at, row.phone)
    return Session(row.id, user, row.csrf_token, row.created_at, row.last_seen_at)


def end(conn: Connection, session_id: int, now: datetime) -> None:
    conn.execute(update(staff_sessions).where(staff_sessions.c.id == session_id,
                                              staff_sessions.c.ended_at.is_(None))
                 .values(ended_at=now))
