"""The store's own SQL: driver-level writes read back as SQLAlchemy's would (SQLite and
PostgreSQL), SQLite times keep SQLAlchemy's format, and lookups search their keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert, select
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import StatementError

from engine import clock
from engine.store.records import (
    add_opt_out,
    append_events,
    load_events,
    opted_out,
    pending_events,
    remove_opt_outs,
    time_binder,
)
from engine.store.schema import UTCDateTime, bind_time, opt_outs
from tests.support import Clinic, patient


@pytest.fixture
def clinic(database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    practice = Clinic(database_url, tmp_path)
    yield practice
    practice.close()


def _event(patient_id: int, at: datetime, dedupe_key: str | None) -> dict[str, object]:
    return {"kind": "test.event", "patient_id": patient_id, "appointment_id": None,
            "occurred_at": at, "data": {"score": 9, "word": "señal", "nested": [1, None]},
            "source": "tests", "dedupe_key": dedupe_key, "processed_at": None}


def test_appended_events_read_back_as_written_and_a_repeated_key_is_skipped(
        clinic: Clinic) -> None:
    with freeze_time("2026-11-02T14:00:00Z"):
        clinic.patients(patient("P1"), baseline=True)
    with clinic.db.transaction() as conn:
        patient_id = conn.exec_driver_sql("SELECT id FROM patients").scalar_one()
        chicago = timezone(timedelta(hours=-6))
        at = datetime(2026, 11, 2, 8, 0, 0, 250_000, tzinfo=chicago)  # stored as UTC
        added = append_events(conn, [_event(patient_id, at, "k1"), _event(patient_id, at, None),
                                     _event(patient_id, at, None)])
        again = append_events(conn, [_event(patient_id, at, "k1")])
        assert (added, again) == (3, 0)
        events = pending_events(conn, 10)
        assert [e.id for e in load_events(conn, [e.id for e in events])] == \
            [e.id for e in events]
    assert len(events) == 3
    for event in events:
        assert event.occurred_at == at and event.occurred_at.tzinfo == UTC
        assert event.data == {"score": 9, "word": "señal", "nested": [1, None]}
        assert (event.kind, event.patient_id, event.appointment_id, event.source) == \
            ("test.event", patient_id, None, "tests")


def test_a_naive_time_is_refused_not_guessed() -> None:
    with pytest.raises(ValueError, match="naive"):
        bind_time("sqlite", datetime(2026, 11, 2, 8, 0))
    with pytest.raises(ValueError, match="naive"):
        bind_time("postgresql", datetime(2026, 11, 2, 8, 0))
    assert bind_time("sqlite", datetime(2026, 11, 2, 8, 0, tzinfo=UTC)) == \
        "2026-11-02 08:00:00.000000"


def test_a_batch_binds_an_instant_once_and_alike_in_any_zone() -> None:
    bind = time_binder("sqlite")
    instant = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)
    chicago = instant.astimezone(ZoneInfo("America/Chicago"))
    assert bind(chicago) == bind(instant) == "2026-11-02 14:00:00.000000"
    assert bind(None) is None
    with pytest.raises(ValueError, match="naive"):
        bind(datetime(2026, 11, 2, 8, 0))


def test_on_sqlite_a_time_is_stored_as_sqlalchemy_would_store_it_and_read_back_aware(
        tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'times.db'}")
    table = Table("times", MetaData(), Column("id", Integer, primary_key=True),
                  Column("at", UTCDateTime()))
    table.create(engine)
    chicago = ZoneInfo("America/Chicago")
    written = [datetime(2026, 11, 1, 1, 30, tzinfo=chicago),  # the repeated hour: CDT
               datetime(2026, 11, 1, 1, 30, tzinfo=chicago, fold=1),  # and CST
               datetime(2026, 3, 8, 8, 0, 0, 123_456, tzinfo=UTC), None]
    sqlalchemy_text = sqlite.DATETIME().bind_processor(sqlite.dialect())
    with engine.begin() as conn:
        conn.execute(insert(table), [{"at": at} for at in written])
        stored = conn.exec_driver_sql("SELECT at FROM times ORDER BY id").scalars().all()
        read = conn.execute(select(table.c.at).order_by(table.c.id)).scalars().all()
        with pytest.raises(StatementError, match="naive"):
            conn.execute(insert(table), {"at": datetime(2026, 11, 2, 8, 0)})
        literal = str(select(table.c.at).where(table.c.at == written[2]).compile(
            conn, compile_kwargs={"literal_binds": True}))
    assert stored == [sqlalchemy_text(at.astimezone(UTC).replace(tzinfo=None)) if at else None
                      for at in written]
    assert stored[:2] == ["2026-11-01 06:30:00.000000", "2026-11-01 07:30:00.000000"]
    # (PEP 495: a time in the repeated hour never equals one in another zone; compare in UTC)
    assert read == [at.astimezone(UTC) if at else None for at in written]
    assert all(at.tzinfo is UTC for at in read if at)
    assert "'2026-03-08 08:00:00.123456'" in literal
    engine.dispose()


def test_an_opt_out_lookup_searches_the_key_instead_of_scanning_it(tmp_path: Path) -> None:
    clinic = Clinic(f"sqlite:///{tmp_path / 'optouts.db'}", tmp_path)
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))
    with clinic.db.transaction() as conn:
        now = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)
        add_opt_out(conn, "sms", "+13125550100", "all", "tests", "STOP", now)
        add_opt_out(conn, "email", "pat@example.com", "marketing", "tests", "unsubscribed", now)
        sqlalchemy_event.listen(conn, "before_cursor_execute", capture)
        found = opted_out(conn, ["+13125550100", "pat@example.com", "+13125550199"])
        sqlalchemy_event.remove(conn, "before_cursor_execute", capture)
        (statement, parameters), = statements
        plan = " ".join(row[3] for row in conn.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {statement}", parameters))
    clinic.close()
    assert found == {("sms", "+13125550100"): {"all"},
                     ("email", "pat@example.com"): {"marketing"}}
    assert "SEARCH opt_outs USING COVERING INDEX" in plan, plan


def test_email_opt_outs_match_an_address_in_any_case(clinic: Clinic) -> None:
    now = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)
    with clinic.db.transaction() as conn:
        assert add_opt_out(conn, "email", "Pat@Example.COM", "all", "tests", "unsubscribed", now)
        # the same inbox spelled another way is already opted out
        assert not add_opt_out(conn, "email", "pat@example.com", "all", "tests", "again", now)
        add_opt_out(conn, "sms", "+13125550100", "all", "tests", "STOP", now)
        stored = sorted(conn.execute(select(opt_outs.c.channel, opt_outs.c.address)))
        found = opted_out(conn, ["pat@example.com", "PAT@example.com", "+13125550100",
                                 "other@example.com"])
        removed = remove_opt_outs(conn, "email", "pAt@eXample.com")
        after = opted_out(conn, ["Pat@Example.COM"])
    assert stored == [("email", "pat@example.com"), ("sms", "+13125550100")]
    assert found == {("email", "pat@example.com"): {"all"},
                     ("email", "PAT@example.com"): {"all"},
                     ("sms", "+13125550100"): {"all"}}
    assert (removed, after) == (1, {})


def test_a_patient_whose_email_differs_in_case_from_the_opt_out_is_skipped(
        clinic: Clinic) -> None:
    clock.set_now(datetime(2026, 11, 2, 15, 0, tzinfo=UTC))  # Mon 09:00 in Chicago
    with clinic.db.transaction() as conn:
        add_opt_out(conn, "email", "p1@example.com", "all", "tests", "unsubscribed",
                    datetime(2026, 11, 1, tzinfo=UTC))
    clinic.patients(patient("P1", email="P1@Example.com", sms_consent="no"),
                    patient("P2", email="P2@Example.com", sms_consent="no",
                            phone="(312) 555-0102"))
    clinic.tick()
    welcome = clinic.one("welcome", "welcome", patient="P1")
    assert welcome.status == "skipped"
    assert "email: the address opted out (all)" in (welcome.detail or "")
    assert [m.to for m in clinic.email.sent] == ["P2@example.com"]  # (the domain is lowered)
