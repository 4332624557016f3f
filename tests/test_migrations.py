"""Alembic migrations on SQLite and PostgreSQL: up from empty, down one step, up again."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from engine.errors import DatabaseNotReady
from engine.store.database import Database, head_revision, known_revisions, open_database
from engine.store.schema import Base
from tests.conftest import PG_ADMIN_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"touchpoint_migrations_{tmp_path.name[-12:].replace('-', '_')}".lower()
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        found = set(inspect(conn).get_table_names())
    engine.dispose()
    return found - {"alembic_version"}


def test_upgrade_from_empty_downgrade_one_step_and_upgrade_again(empty_url: str) -> None:
    database = open_database(empty_url, check=False)
    assert database.revision() is None
    database.upgrade()
    assert database.revision() == head_revision()
    assert tables(empty_url) == set(Base.metadata.tables)

    ordered = sorted(known_revisions())  # 0001, 0002, … (ids sort in order)
    previous = ordered[-2]
    database.downgrade("-1")
    assert database.revision() == previous
    with pytest.raises(DatabaseNotReady, match=r"run `touchpoint db upgrade`"):
        database.check_schema()
    # a data-only step (0011 lower-cases email opt-outs) changes no table: further down,
    # the last step that changed the schema is undone
    while database.revision() is not None and differences(database) == []:
        database.downgrade("-1")
    assert differences(database) != []

    database.upgrade()
    assert database.revision() == head_revision()
    assert tables(empty_url) == set(Base.metadata.tables)
    database.check_schema()  # accepted
    database.dispose()


def test_every_step_downgrades_to_empty_and_back(empty_url: str) -> None:
    database = open_database(empty_url, check=False)
    database.upgrade()
    database.downgrade("base")
    assert database.revision() is None
    assert tables(empty_url) == set()
    database.upgrade()
    assert tables(empty_url) == set(Base.metadata.tables)
    database.dispose()


def differences(database: Database) -> list[object]:
    """What autogenerate would change to make the database match the models."""
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        return list(compare_metadata(context, Base.metadata))


def test_the_models_and_the_migrations_agree(empty_url: str) -> None:
    """Autogenerate against a migrated database finds nothing to do."""
    database = open_database(empty_url)
    found = differences(database)
    database.dispose()
    assert found == []


def test_0011_lower_cases_stored_email_opt_outs_and_keeps_one_of_each(empty_url: str) -> None:
    database = open_database(empty_url, check=False)
    database.upgrade("0008")
    rows = [("email", "Pat@Example.COM", "all", "2026-11-01 10:00:00"),
            ("email", "pat@example.com", "all", "2026-11-02 10:00:00"),  # the same, later
            ("email", "PAT@EXAMPLE.COM", "marketing", "2026-11-03 10:00:00"),
            ("email", "sam@example.com", "all", "2026-11-03 10:00:00"),
            ("sms", "+13125550100", "all", "2026-11-03 10:00:00")]
    with database.engine.begin() as conn:
        for channel, address, purpose, at in rows:
            conn.execute(text("INSERT INTO opt_outs (channel, address, purpose, source, detail, "
                              "created_at) VALUES (:c, :a, :p, 'tests', :d, :t)"),
                         {"c": channel, "a": address, "p": purpose, "d": address, "t": at})
    database.upgrade()
    with database.engine.connect() as conn:
        found = sorted(tuple(r) for r in conn.execute(text(
            "SELECT channel, address, purpose, detail FROM opt_outs")))
    database.dispose()
    assert found == [("email", "pat@example.com", "all", "Pat@Example.COM"),  # the oldest
                     ("email", "pat@example.com", "marketing", "PAT@EXAMPLE.COM"),
                     ("email", "sam@example.com", "all", "sam@example.com"),
                     ("sms", "+13125550100", "all", "+13125550100")]
