"""Singleton work across several workers: a PostgreSQL advisory lock per job.

SQLite needs none: every write transaction holds the database lock (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import zlib

from sqlalchemy import Connection, text


def lock_key(name: str) -> int:
    return zlib.crc32(f"touchpoint:{name}".encode())


def try_singleton(conn: Connection, name: str) -> bool:
    """Take the transaction-scoped lock ``name``; False if another worker holds it."""
    if conn.dialect.name != "postgresql":
        return True
    return bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:key)"),
                             {"key": lock_key(name)}).scalar())


def serialise(conn: Connection, name: str) -> None:
    """Wait for, then hold until the transaction ends, the lock ``name`` (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})
