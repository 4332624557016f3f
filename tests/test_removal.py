"""Records that left the practice's records (engine/removal.py): their pending touch points
are cancelled ``patient_removed``, nothing new is planned for them, a batch that already
holds one of their messages does not send it, and a record that comes back is reactivated.
On SQLite and PostgreSQL.

Practice timezone America/Chicago (CST, UTC-6); the visit is Thu 2026-11-05 10:00 CST, its
three-days-before reminder due Tue 2026-11-03 16:00 UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from engine import clock
from engine.channels.base import OutboundMessage
from engine.errors import ChannelError
from engine.outcomes import EXPLANATIONS, Reason, Status
from engine.removal import remove_appointment, remove_contact, remove_patient
from engine.store.database import Database, open_database
from engine.store.records import patient_by_external_id
from engine.store.schema import appointments, contacts, patients
from tests.support import Clinic, appointment, contact, patient

VISIT = "2026-11-05T10:00:00-06:00"
PLANNING = "2026-11-02T14:00:00Z"
REMINDERS_DUE = "2026-11-02T16:00:00Z"


@pytest.fixture
def clinic(database_url: str, tmp_path: Path) -> Iterator[Clinic]:
    practice = Clinic(database_url, tmp_path)
    yield practice
    practice.close()


def db_id(clinic: Clinic, table: str, external_id: str) -> int:
    chosen = {"patients": patients, "appointments": appointments, "contacts": contacts}[table]
    with clinic.db.transaction() as conn:
        found = conn.execute(select(chosen.c.id)
                             .where(chosen.c.external_id == external_id)).scalar()
    assert found is not None
    return int(found)


def removed_at(clinic: Clinic, table: str, external_id: str) -> object:
    chosen = {"patients": patients, "appointments": appointments, "contacts": contacts}[table]
    with clinic.db.transaction() as conn:
        return conn.execute(select(chosen.c.removed_at)
                            .where(chosen.c.external_id == external_id)).scalar()


def booked(clinic: Clinic) -> None:
    """P1 (a minor: messages go to parents C1 and C2) and P2, new, each with a visit;
    planned, nothing sent yet."""
    with freeze_time(PLANNING):
        clinic.patients(patient("P1", date_of_birth="2015-03-01"),
                        patient("P2", phone="(312) 555-0101"))
        clinic.contacts(contact("C1", "P1"), contact("C2", "P1", phone="(312) 555-0178"))
        clinic.appointments(appointment("A1", "P1", VISIT), appointment("A2", "P2", VISIT))
        clinic.runner.plan_pending()


def test_the_reason_is_explained() -> None:
    assert Reason.PATIENT_REMOVED == "patient_removed"
    assert "left the practice's records" in EXPLANATIONS[Reason.PATIENT_REMOVED]


def test_removing_a_patient_cancels_every_pending_touch_point_of_theirs_once(
        clinic: Clinic) -> None:
    booked(clinic)
    mine = [tp for tp in clinic.touch_points(patient="P1") if tp.status == Status.PLANNED]
    assert any(tp.recipient.startswith("contact:") for tp in mine)
    assert {tp.journey for tp in mine} >= {"welcome", "pre-visit"}
    others = clinic.touch_points(patient="P2")
    p1 = db_id(clinic, "patients", "P1")
    with freeze_time("2026-11-02T14:01:00Z"), clinic.db.transaction() as conn:
        count = remove_patient(conn, p1, now=clock.now(),
                               source="api")
    assert count == len(mine)
    after = clinic.touch_points(patient="P1")
    assert {(tp.status, tp.reason) for tp in after} == {(Status.CANCELLED,
                                                         Reason.PATIENT_REMOVED)}
    assert all(tp.detail == "patient P1 left the practice's records (api)" for tp in after)
    last = clinic.history(after[0])[-1]
    assert (last.status, last.previous_status, last.reason, last.source) == (
        Status.CANCELLED, Status.PLANNED, Reason.PATIENT_REMOVED, "removal")
    assert removed_at(clinic, "patients", "P1") is not None
    assert removed_at(clinic, "appointments", "A1") is not None  # removed with the patient
    assert clinic.touch_points(patient="P2") == others  # nobody else's

    with freeze_time("2026-11-02T14:02:00Z"), clinic.db.transaction() as conn:
        again = remove_patient(conn, p1, now=clock.now(),
                               source="api")
    assert again == 0
    assert clinic.touch_points(patient="P1") == after  # the second time changed nothing
    with clinic.db.transaction() as conn, pytest.raises(LookupError):
        remove_patient(conn, 999_999, now=clock.now(), source="api")


def test_a_removed_patient_gets_nothing_new_and_nothing_goes(clinic: Clinic) -> None:
    booked(clinic)
    p1 = db_id(clinic, "patients", "P1")
    with freeze_time("2026-11-02T14:01:00Z"):
        with clinic.db.transaction() as conn:
            remove_patient(conn, p1, now=clock.now(),
                           source="patients.csv --full")
        # the source still sends a booking for them (an appointments file, an HL7 feed)
        clinic.appointments(appointment("A9", "P1", "2026-11-10T10:00:00-06:00"))
        report = clinic.tick()
    assert report.events == 1 and report.set_aside == 0
    assert [tp for tp in clinic.touch_points(patient="P1") if tp.status != Status.CANCELLED] \
        == []
    with freeze_time(REMINDERS_DUE):
        clinic.tick()
    assert [tp for tp in clinic.touch_points(patient="P1") if tp.status != Status.CANCELLED] \
        == []
    assert [m for m in clinic.sms.sent + clinic.email.sent
            if m.to in ("+13125550177", "c1@example.com", "+13125550178", "c2@example.com")
            ] == []
    assert clinic.one("pre-visit", "three-days-before", patient="P2").status == Status.SENT


def test_removing_an_appointment_cancels_only_what_is_anchored_on_it(clinic: Clinic) -> None:
    booked(clinic)
    anchored = [tp for tp in clinic.touch_points(patient="P1", appointment_id=db_id(
        clinic, "appointments", "A1"))]
    assert anchored and all(tp.status == Status.PLANNED for tp in anchored)
    a1 = db_id(clinic, "appointments", "A1")
    with freeze_time("2026-11-02T14:01:00Z"), clinic.db.transaction() as conn:
        count = remove_appointment(conn, a1,
                                   now=clock.now(), source="hl7 S17")
    assert count == len(anchored)
    for tp in clinic.touch_points(patient="P1"):
        if tp.appointment_id is not None:
            assert (tp.status, tp.reason, tp.detail) == (
                Status.CANCELLED, Reason.PATIENT_REMOVED,
                "appointment A1 left the practice's records (hl7 S17)")
        else:  # the welcome is about the patient, who is still on file
            assert tp.status == Status.PLANNED, tp
    assert removed_at(clinic, "patients", "P1") is None
    with freeze_time("2026-11-02T14:02:00Z"), clinic.db.transaction() as conn:
        assert remove_appointment(conn, a1,
                                  now=clock.now(), source="hl7 S17") == 0


def test_removing_a_contact_stops_their_messages_not_the_others(clinic: Clinic) -> None:
    booked(clinic)
    c1, c2 = db_id(clinic, "contacts", "C1"), db_id(clinic, "contacts", "C2")
    theirs = [tp for tp in clinic.touch_points(patient="P1") if tp.recipient == f"contact:{c1}"]
    assert theirs
    with freeze_time("2026-11-02T14:01:00Z"), clinic.db.transaction() as conn:
        assert remove_contact(conn, c1, now=clock.now(), source="contacts.csv --full") \
            == len(theirs)
    for tp in clinic.touch_points(patient="P1"):
        expected = Status.CANCELLED if tp.recipient == f"contact:{c1}" else Status.PLANNED
        assert tp.status == expected, tp
    with freeze_time(REMINDERS_DUE):
        clinic.tick()
    assert clinic.one("pre-visit", "three-days-before", patient="P1",
                      recipient=f"contact:{c2}").status == Status.SENT
    assert clinic.one("pre-visit", "three-days-before", patient="P1",
                      recipient=f"contact:{c1}").reason == Reason.PATIENT_REMOVED


@pytest.fixture
def elsewhere(database_url: str) -> Iterator[Database]:
    other = open_database(database_url)
    yield other
    other.dispose()


def test_a_message_already_claimed_by_a_running_batch_does_not_go(
        clinic: Clinic, elsewhere: Database) -> None:
    """The batch holds P1's and P2's reminders; P2 is removed (from another connection)
    while the provider takes P1's: P2's message, claimed and checked, is not sent."""
    with freeze_time(PLANNING):
        clinic.patients(*(patient(f"P{i}", phone=f"+131255501{i:02d}") for i in range(1, 6)),
                        baseline=True)
        clinic.appointments(*(appointment(f"A{i}", f"P{i}", VISIT) for i in range(1, 6)))
        clinic.tick()
    handed: list[OutboundMessage] = []

    def rule(message: OutboundMessage) -> ChannelError | None:
        handed.append(message)
        if len(handed) == 1:
            with elsewhere.transaction() as conn:
                patient_id = patient_by_external_id(conn, "P3")
                assert patient_id is not None
                remove_patient(conn, patient_id.id, now=clock.now(), source="api")
        return None

    clinic.sms.fail_when(rule)
    with freeze_time(REMINDERS_DUE):
        report = clinic.tick()
    assert report.dispatch.claimed == 5
    p3 = clinic.one("pre-visit", "three-days-before", patient="P3")
    assert (p3.status, p3.reason) == (Status.CANCELLED, Reason.PATIENT_REMOVED)
    assert clinic.sent_to(p3.id) == []
    assert [m.touch_point_id for m in handed if m.touch_point_id == p3.id] == []
    assert len(handed) == 4
    assert {clinic.one("pre-visit", "three-days-before", patient=f"P{i}").status
            for i in (1, 2, 4, 5)} == {Status.SENT}
