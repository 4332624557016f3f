"""The audit log: every action a person or an integration takes, who, when, from where.

Staff commands (export or erase a patient's data, settle a message), API requests (which
key, which record) and, later, console actions each append one row to ``audit_log`` in
the same transaction as the change itself: a change that rolls back leaves no audit row,
and an audited change cannot commit without its row.

``actor`` says who: ``cli:<os user>`` for a command, ``api-key:<name>`` for a request,
``staff:<email>`` for a console user. ``address`` says from where (a client IP, ``cli``).
``detail`` holds ids and counts, never a full phone number or email (mask them with
:mod:`engine.privacy` first).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from engine.store.schema import audit_log


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    address: str
    detail: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at.isoformat(), "actor": self.actor,
                "action": self.action, "target": self.target, "address": self.address,
                "detail": dict(self.detail)}


def record(conn: Connection, *, actor: str, action: str, now: datetime, target: str = "",
           address: str = "", detail: Mapping[str, Any] | None = None) -> None:
    """Append one entry (in the caller's transaction)."""
    conn.execute(insert(audit_log).values(
        at=now, actor=actor[:200], action=action[:64], target=target[:200],
        address=address[:64], detail=dict(detail or {})))


def os_user() -> str:
    """Who runs this command: ``TOUCHPOINT_USER``, else the operating system's user."""
    user = os.environ.get("TOUCHPOINT_USER")
    if user:
        return user
    try:
        return os.getlogin()
    except OSError:
        pass
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "staff"


def cli_actor() -> str:
    """``cli:<who ran the command>``."""
    return f"cli:{os_user()}"


def entries(conn: Connection, *, since: datetime | None = None, limit: int | None = None,
            newest_first: bool = False) -> Iterator[AuditEntry]:
    """Entries oldest first, or newest first (from ``since`` on, when given)."""
    query = select(audit_log).order_by(audit_log.c.at.desc(), audit_log.c.id.desc()) \
        if newest_first else select(audit_log).order_by(audit_log.c.at, audit_log.c.id)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    if limit is not None:
        query = query.limit(limit)
    for row in conn.execute(query):
        yield AuditEntry(row.id, row.at, row.actor, row.action, row.target, row.address,
                         row.detail or {})
