"""The store's driver-level writes read back as SQLAlchemy's own would, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time

from engine.store.records import (
    append_events,
    bind_time,
    load_events,
    pending_events,
    time_binder,
)
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
