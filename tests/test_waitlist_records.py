"""Waitlist records (engine/waitlist.py), on SQLite and PostgreSQL: preferences read the
same from a CSV cell, a JSON body or a form, naming every bad field; matching in the
practice's timezone; entries put idempotently; slots opened, confirmed and closed.

Practice timezone: America/Chicago. Monday 2026-11-02 15:00 UTC is 09:00 CST.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from engine import clock, waitlist
from engine.store.schema import patients, slot_offers, slots, waitlist_entries
from engine.timing import zone
from engine.waitlist import NewSlot, PreferenceError, Preferences, parse_preferences
from tests.support import Clinic, patient

MONDAY = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)  # 09:00 CST
CHICAGO = zone("America/Chicago")


def test_preferences_read_csv_cells_and_json_alike() -> None:
    from_csv = parse_preferences({"days": "Mon-Wed, fri", "time_from": "8:00 am",
                                  "time_until": "13:00", "therapist": " Dr. Lee ",
                                  "earliest": "11/02/2026", "latest": "2026-11-30"})
    from_json = parse_preferences({"days": ["mon", "tue", "wed", "friday"],
                                   "time_from": "08:00", "time_until": "1:00 pm",
                                   "therapist": "Dr. Lee", "earliest": "2026-11-02",
                                   "latest": "2026-11-30"})
    assert from_csv == from_json == Preferences(
        ("mon", "tue", "wed", "fri"), time(8, 0), time(13, 0), "Dr. Lee", "", "",
        date(2026, 11, 2), date(2026, 11, 30))
    assert parse_preferences({}) == Preferences()
    assert parse_preferences({"days": "sat-mon"}).days == ("mon", "sat", "sun")


def test_every_bad_field_is_named_not_only_the_first() -> None:
    with pytest.raises(PreferenceError) as caught:
        parse_preferences({"days": "mon,funday", "time_from": "25:00", "earliest": "soon",
                           "therapist": "x" * 101, "location": 7})
    assert set(caught.value.errors) == {"days", "time_from", "earliest", "therapist",
                                        "location"}
    assert "funday" in caught.value.errors["days"]
    with pytest.raises(PreferenceError) as backwards:
        parse_preferences({"time_from": "12:00", "time_until": "08:00",
                           "earliest": "2026-12-01", "latest": "2026-11-01"})
    assert set(backwards.value.errors) == {"time_until", "latest"}


def test_matching_reads_days_and_times_in_the_practices_timezone() -> None:
    mornings = parse_preferences({"days": "mon", "time_from": "08:00", "time_until": "12:00",
                                  "therapist": "dr. lee"})
    nine = MONDAY  # Monday 09:00 CST
    assert mornings.matches(nine, CHICAGO, therapist="Dr. Lee")
    assert not mornings.matches(nine, CHICAGO, therapist="Dr. Ortiz")
    assert not mornings.matches(nine + timedelta(hours=3), CHICAGO, therapist="Dr. Lee")
    # Monday 02:00 UTC is still Sunday evening in Chicago
    assert not mornings.matches(datetime(2026, 11, 2, 2, 0, tzinfo=UTC), CHICAGO)
    window = parse_preferences({"earliest": "2026-11-03", "latest": "2026-11-04"})
    assert not window.matches(nine, CHICAGO)
    assert window.matches(nine + timedelta(days=2), CHICAGO)
    assert not window.matches(nine + timedelta(days=3), CHICAGO)
    assert Preferences().matches(nine, CHICAGO, location="Eastside", visit_type="Eval")


@pytest.fixture
def clinic(database_url: str, tmp_path: Path) -> Iterator[Clinic]:
    practice = Clinic(database_url, tmp_path)
    with freeze_time(MONDAY):
        practice.patients(patient("P1"), patient("P2"))
    yield practice
    practice.close()


def _patient_id(clinic: Clinic, external_id: str) -> int:
    with clinic.db.connection() as conn:
        return int(conn.execute(select(patients.c.id)
                                .where(patients.c.external_id == external_id)).scalar_one())


@freeze_time(MONDAY)
def test_putting_an_entry_twice_changes_nothing_and_withdrawn_comes_back(clinic: Clinic,
                                                                         ) -> None:
    p1 = _patient_id(clinic, "P1")
    prefs = parse_preferences({"days": "tue,thu"})
    with clinic.db.transaction() as conn:
        assert waitlist.put_entry(conn, p1, prefs, source="t", now=clock.now()) == "created"
        assert waitlist.put_entry(conn, p1, prefs, source="t", now=clock.now()) == "unchanged"
        assert waitlist.put_entry(conn, p1, Preferences(), source="t",
                                  now=clock.now()) == "updated"
        assert waitlist.withdraw_entry(conn, p1, now=clock.now())
        assert not waitlist.withdraw_entry(conn, p1, now=clock.now())
        assert waitlist.put_entry(conn, p1, Preferences(), source="t",
                                  now=clock.now()) == "updated"
        rows = conn.execute(select(waitlist_entries)).all()
    assert [(r.status, r.days) for r in rows] == [("waiting", [])]


@freeze_time(MONDAY)
def test_a_slot_is_opened_once_confirmed_once_and_closed_only_while_open(clinic: Clinic,
                                                                         ) -> None:
    now = clock.now()
    p1 = _patient_id(clinic, "P1")
    tomorrow = NewSlot(now + timedelta(days=1), 45, therapist="Dr. Lee")
    with clinic.db.transaction() as conn:
        assert waitlist.open_slot(conn, NewSlot(now - timedelta(minutes=1), 45),
                                  source="api", now=now) is None  # already started
        first = waitlist.open_slot(conn, tomorrow, source="api", now=now)
        second = waitlist.open_slot(conn, tomorrow, source="console", now=now)
        assert first is not None and second is not None
        assert waitlist.confirm_slot(conn, first, now=now) == "refused"  # nobody claimed it
        conn.execute(slots.update().where(slots.c.id == first).values(status="claimed"))
        assert waitlist.confirm_slot(conn, first, now=now) == "changed"
        assert waitlist.confirm_slot(conn, first, now=now) == "unchanged"
        assert waitlist.close_slot(conn, first, now=now) == "refused"  # booked stays booked
        conn.execute(slot_offers.insert().values(
            slot_id=second, patient_id=p1, wave=1, status="offered",
            offered_at=now, expires_at=now + timedelta(hours=2)))
        assert waitlist.close_slot(conn, second, now=now) == "changed"
        assert waitlist.close_slot(conn, second, now=now) == "unchanged"
        offers = conn.execute(select(slot_offers.c.status)).scalars().all()
        shown = waitlist.slot_as_json(conn.execute(select(slots).where(
            slots.c.id == first)).one(), CHICAGO)
    assert offers == ["withdrawn"]
    assert shown["status"] == "booked"
    assert shown["start_at"] == "2026-11-03T09:00:00-06:00"
    with pytest.raises(ValueError, match="unknown slot source"), \
            clinic.db.transaction() as conn:
        waitlist.open_slot(conn, tomorrow, source="fax", now=now)


def test_an_offer_ends_at_its_expiry_or_when_the_slot_starts() -> None:
    start = MONDAY + timedelta(hours=3)
    assert waitlist.ends_offers(start, MONDAY, timedelta(hours=2)) == MONDAY + timedelta(hours=2)
    assert waitlist.ends_offers(start, MONDAY + timedelta(hours=2),
                                timedelta(hours=2)) == start
