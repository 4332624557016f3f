"""Staff accounts for the practice console: who may sign in, and what each role may do.

Passwords are hashed with argon2id (argon2-cffi's :class:`~argon2.PasswordHasher`, the
RFC 9106 profile); a hash made with older parameters is replaced on the next good
sign-in. Nothing here ever stores, logs or returns a password.

Roles, most trusted first — each may do everything the ones below it may::

    owner        users, settings, the audit log
    manager      journeys and templates: edit, publish, revert
    front-desk   inbox, cases, patients, the log; a full number or email only by "reveal"
    viewer       read-only, numbers and emails masked

An unknown address and a wrong password are indistinguishable to the caller, in the
answer and in the time it takes (a dummy hash is verified for unknown addresses).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, insert, select, update

from engine.errors import UserError
from engine.importer import normalise_email, normalise_phone
from engine.store.schema import staff_users

ROLES = ("owner", "manager", "front-desk", "viewer")
#: The least trusted role that may do each thing. Every page is readable by every role
#: ("read"), with numbers and emails masked; what changes something needs more.
PERMISSIONS: dict[str, str] = {
    "users": "owner", "settings": "owner", "audit": "owner",
    "journeys.edit": "manager", "templates.edit": "manager", "publish": "manager",
    "reveal": "front-desk", "reply": "front-desk", "inbox.done": "front-desk",
    "cases.change": "front-desk", "settle": "front-desk", "opt-out": "front-desk",
    "waitlist.change": "front-desk",
    "read": "viewer",
}
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # (argon2 hashes any length; a cap keeps a request from costing much)


@dataclass(frozen=True)
class StaffUser:
    id: int
    email: str
    role: str
    created_at: datetime
    password_changed_at: datetime
    disabled_at: datetime | None
    phone: str | None = None

    @property
    def active(self) -> bool:
        return self.disabled_at is None

    def may(self, permission: str) -> bool:
        return may(self.role, permission)

    def as_dict(self) -> dict[str, Any]:
        return {"email": self.email, "role": self.role, "phone": self.phone,
                "created_at": self.created_at.isoformat(),
                "password_changed_at": self.password_changed_at.isoformat(),
                "disabled_at": self.disabled_at.isoformat() if self.disabled_at else None}


def may(role: str, permission: str) -> bool:
    """Whether ``role`` may do ``permission`` (a key of :data:`PERMISSIONS`)."""
    needed = PERMISSIONS[permission]
    return role in ROLES and ROLES.index(role) <= ROLES.index(needed)


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@cache
def _dummy_hash() -> str:
    return _hasher().hash("not a password anyone has")


def _email(raw: str) -> str:
    try:
        email = normalise_email(raw.strip())
    except ValueError:
        email = None
    if not email:
        raise UserError(f"{raw!r} is not an email address — staff sign in with their email")
    return email.lower()


def check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    return role


def check_password(password: str, email: str) -> None:
    """Refuse a password too short, too long, or the account's own email."""
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must have at least {MIN_PASSWORD} characters — a "
                        "passphrase of a few words is easy to remember")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"the password must have at most {MAX_PASSWORD} characters")
    if password.strip().lower() == email.lower():
        raise UserError("the password cannot be the email address")


def _from_row(row: Any) -> StaffUser:
    return StaffUser(row.id, row.email, row.role, row.created_at, row.password_changed_at,
                     row.disabled_at, row.phone)


def get_user(conn: Connection, email: str) -> StaffUser | None:
    row = conn.execute(select(staff_users).where(
        staff_users.c.email == email.strip().lower())).first()
    return _from_row(row) if row is not None else None


def list_users(conn: Connection) -> list[StaffUser]:
    return [_from_row(row) for row in
            conn.execute(select(staff_users).order_by(staff_users.c.email))]


def add_user(conn: Connection, email: str, role: str, password: str,
             now: datetime, phone: str | None = None, region: str = "US") -> StaffUser:
    email = _email(email)
    check_role(role)
    check_password(password, email)
    number = _phone(phone, region) if phone else None
    if get_user(conn, email) is not None:
        raise UserError(f"there is already a staff account for {email} — `touchpoint users "
                        "set-password` changes its password")
    conn.execute(insert(staff_users).values(
        email=email, role=role, password_hash=_hasher().hash(password), created_at=now,
        password_changed_at=now, disabled_at=None, phone=number))
    user = get_user(conn, email)
    assert user is not None
    return user


def _existing(conn: Connection, email: str) -> StaffUser:
    user = get_user(conn, email)
    if user is None:
        raise UserError(f"there is no staff account for {email.strip().lower()} — "
                        "`touchpoint users list` shows them")
    return user


def set_password(conn: Connection, email: str, password: str, now: datetime) -> StaffUser:
    user = _existing(conn, email)
    check_password(password, user.email)
    conn.execute(update(staff_users).where(staff_users.c.id == user.id).values(
        password_hash=_hasher().hash(password), password_changed_at=now))
    return user


def set_phone(conn: Connection, email: str, phone: str, region: str = "US") -> StaffUser:
    """The number test texts to oneself go to ("" removes it)."""
    user = _existing(conn, email)
    number = _phone(phone, region) if phone.strip() else None
    conn.execute(update(staff_users).where(staff_users.c.id == user.id).values(phone=number))
    found = get_user(conn, user.email)
    assert found is not None
    return found


def _phone(raw: str, region: str) -> str:
    try:
        number = normalise_phone(raw.strip(), region)
    except ValueError:
        number = None
    if not number:
        raise UserError(f"{raw!r} is not a phone number — write it with its area code")
    return number


def disable_user(conn: Connection, email: str, now: datetime) -> bool:
    """Disable the account (it can no longer sign in); False if it already was."""
    user = _existing(conn, email)
    if not user.active:
        return False
    if user.role == "owner" and sum(1 for u in list_users(conn)
                                    if u.role == "owner" and u.active) == 1:
        raise UserError(f"{user.email} is the only active owner — add another owner first, "
                        "or the practice could no longer manage its staff")
    conn.execute(update(staff_users).where(staff_users.c.id == user.id)
                 .values(disabled_at=now))
    return True


def authenticate(conn: Connection, email: str, password: str) -> StaffUser | None:
    """The active account with this email and password, or None (whatever was wrong)."""
    if len(password) > MAX_PASSWORD:
        return None
    row = conn.execute(select(staff_users).where(
        staff_users.c.email == email.strip().lower())).first()
    stored = row.password_hash if row is not None else _dummy_hash()
    try:
        _hasher().verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or row.disabled_at is not None:
        return None
    if _hasher().check_needs_rehash(stored):
        conn.execute(update(staff_users).where(staff_users.c.id == row.id)
                     .values(password_hash=_hasher().hash(password)))
    return _from_row(row)
