"""Opening the database: engine options, SQLite pragmas, and the schema revision check.

Commands on an empty database create the schema (Alembic ``upgrade head``); a database
at an older revision is refused with a message that says to run ``touchpoint db
upgrade``; one written by a newer Touchpoint is refused too.

SQLite runs in WAL mode and every transaction starts with ``BEGIN IMMEDIATE``: writers
queue on the database lock instead of failing half-way, which also makes the claim of
due touch points atomic across processes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import NullPool

from engine.errors import ConfigError, DatabaseNotReady, UserError
from engine.privacy import mask_database_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
log = logging.getLogger("touchpoint.database")


def normalise_url(url: str) -> str:
    """``postgresql://`` → ``postgresql+psycopg://`` (psycopg 3)."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def safe_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    return mask_database_url(url)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache (the default is 2)
    # Copy the WAL into the database (two fsyncs) every ~40 MiB of it rather than every
    # ~4 MiB: the connection that commits past the mark does it, and on the send path that
    # is the dispatcher (about 12 % of its time at the default). Afterwards the WAL file is
    # cut back to this size.
    cursor.execute("PRAGMA wal_autocheckpoint=10000")
    cursor.execute("PRAGMA journal_size_limit=41943040")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # (straight to the driver: it runs once per transaction, once per message sent)
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"setting database.url: {url!r} is not a database URL — use e.g. "
                          "sqlite:///touchpoint.db or postgresql://user@host/db") from None
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, poolclass=NullPool if parsed.database in (None, "", ":memory:")
                               else None)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def known_revisions() -> set[str]:
    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


@dataclass
class Database:
    engine: Engine
    url: str
    _pinned: Connection | None = None

    @property
    def pinned(self) -> bool:
        """Inside :meth:`rolled_back`: every transaction is a savepoint of one."""
        return self._pinned is not None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction, committed on success. Inside :meth:`rolled_back`, a savepoint."""
        if self._pinned is not None:
            with self._pinned.begin_nested():
                yield self._pinned
            return
        with self.engine.begin() as connection:
            yield connection

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """One connection to run many transactions on (see :meth:`begin`)."""
        if self._pinned is not None:
            yield self._pinned
            return
        with self.engine.connect() as connection:
            yield connection

    @contextmanager
    def begin(self, connection: Connection) -> Iterator[Connection]:
        """A transaction on ``connection`` (a savepoint inside :meth:`rolled_back`)."""
        if self._pinned is not None:
            with connection.begin_nested():
                yield connection
            return
        with connection.begin():
            yield connection

    @contextmanager
    def rolled_back(self) -> Iterator[None]:
        """Run everything inside in one transaction that is rolled back at the end.

        Dry runs use it: the engine does all its work, and nothing is kept.
        """
        with self.engine.connect() as connection:
            outer = connection.begin()
            self._pinned = connection
            try:
                yield
            finally:
                self._pinned = None
                outer.rollback()

    @contextmanager
    def checkpointing(self, interval: float = 0.05) -> Iterator[None]:
        """While a SQLite writer commits thousands of times a second (the dispatcher
        draining a backlog), copy its WAL into the database from another thread.

        Without it, the committing connection does all of that itself whenever the WAL
        passes ``wal_autocheckpoint`` pages: it copies them and waits for two fsyncs,
        about a fifth of SQLite's time per message. A passive checkpoint here does the
        copying and syncing alongside (it never blocks a writer), so the writer's own
        checkpoint finds little left; the writer's still completes it, which lets the
        WAL start over from its beginning. Nothing happens on PostgreSQL, on an
        in-memory database, or inside :meth:`rolled_back`.
        """
        path = self.engine.url.database
        if self.dialect != "sqlite" or self.pinned or path in (None, "", ":memory:"):
            yield
            return
        stop = threading.Event()

        def run() -> None:
            connection = sqlite3.connect(path, isolation_level=None)
            try:
                while not stop.wait(interval):
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # the writer's own checkpoints carry on
                log.warning("background WAL checkpoints stopped: %s", exc)
            finally:
                connection.close()

        thread = threading.Thread(target=run, name="wal-checkpoint", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def revision(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def upgrade(self, revision: str = "head") -> None:
        current = self.revision()
        if current is not None and current not in known_revisions():
            raise DatabaseNotReady(
                f"the database is at schema revision {current}, which this Touchpoint does "
                "not know — it was written by a newer version; upgrade Touchpoint")
        with self.engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)

    def downgrade(self, revision: str) -> None:
        with self.engine.begin() as connection:
            command.downgrade(alembic_config(connection), revision)

    def check_schema(self, create_if_empty: bool = True) -> None:
        """Create an empty database's schema; refuse one at another revision."""
        current = self.revision()
        head = head_revision()
        if current == head:
            return
        if current is None:
            with self.engine.connect() as connection:
                tables = inspect(connection).get_table_names()
            if tables and "touch_points" in tables:
                raise DatabaseNotReady(
                    f"{safe_url(self.url)} has Touchpoint tables but no schema revision — "
                    "was it created outside Touchpoint? Restore it or start a new database")
            if not create_if_empty:
                raise DatabaseNotReady(f"{safe_url(self.url)} has no Touchpoint schema — "
                                       "run `touchpoint db upgrade`")
            self.upgrade()
            return
        if current in known_revisions():
            raise DatabaseNotReady(
                f"the database is at schema revision {current}, this Touchpoint needs {head} — "
                "back it up, then run `touchpoint db upgrade`")
        raise DatabaseNotReady(
            f"the database is at schema revision {current}, which this Touchpoint does not know "
            "— it was written by a newer version; upgrade Touchpoint")

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(url: str, *, check: bool = True, create_if_empty: bool = True) -> Database:
    database = Database(make_engine(url), normalise_url(url))
    if check:
        try:
            database.check_schema(create_if_empty=create_if_empty)
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise UserError(f"cannot open database {safe_url(database.url)}: {reason}") from None
    return database
