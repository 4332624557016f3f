"""Full sync (``touchpoint import … --full``) and records that come back (engine/importer.py
with engine/removal.py), on SQLite and PostgreSQL.

Practice timezone America/Chicago (CST, UTC-6); visits Thu 2026-11-05 10:00 CST.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from freezegun import freeze_time
from sqlalchemy import select

from engine import clock
from engine.cli import cli
from engine.errors import ImportFileError
from engine.importer import (
    APPOINTMENT_COLUMNS,
    CONTACT_COLUMNS,
    PATIENT_COLUMNS,
    import_appointments,
    import_contacts,
    import_patients,
)
from engine.outcomes import Reason, Status
from engine.store.schema import appointments, contacts, events, patients
from tests.support import (
    LIBRARY_SCHEDULES,
    LIBRARY_TEMPLATES,
    Clinic,
    appointment,
    contact,
    patient,
    referrer,
    write_csv,
)

VISIT = "2026-11-05T10:00:00-06:00"
PLANNING = "2026-11-02T14:00:00Z"
LATER = "2026-11-02T15:00:00Z"


@pytest.fixture
def clinic(database_url: str, tmp_path: Path) -> Iterator[Clinic]:
    practice = Clinic(database_url, tmp_path)
    with freeze_time(PLANNING):
        practice.patients(*(patient(f"P{i}", phone=f"(312) 555-010{i}") for i in (1, 2, 3)))
        practice.contacts(contact("C1", "P1"), contact("C2", "P2"))
        practice.appointments(*(appointment(f"A{i}", f"P{i}", VISIT) for i in (1, 2, 3)))
        practice.tick()
    yield practice
    practice.close()


def full(clinic: Clinic, kind: str, rows: list[dict[str, str]], name: str = "full"):  # type: ignore[no-untyped-def]
    columns = {"patients": PATIENT_COLUMNS, "appointments": APPOINTMENT_COLUMNS,
               "contacts": CONTACT_COLUMNS}[kind]
    path = write_csv(clinic.folder / f"{name}-{kind}.csv", rows, rows[0].keys() if rows
                     else columns)
    with clinic.db.transaction() as conn:
        if kind == "patients":
            return import_patients(conn, path, region="US", now=clock.now(), full=True)
        if kind == "appointments":
            return import_appointments(conn, path, practice_tz="America/Chicago",
                                       now=clock.now(), full=True)
        return import_contacts(conn, path, region="US", now=clock.now(), full=True)


def removed(clinic: Clinic, table: str) -> set[str]:
    chosen = {"patients": patients, "appointments": appointments, "contacts": contacts}[table]
    with clinic.db.transaction() as conn:
        return set(conn.execute(select(chosen.c.external_id)
                                .where(chosen.c.removed_at.is_not(None))).scalars())


def pending(clinic: Clinic, who: str) -> list[str]:
    return sorted(f"{tp.journey}/{tp.step}/{tp.recipient}" for tp in
                  clinic.touch_points(patient=who) if tp.status == Status.PLANNED)


def test_a_full_patients_file_removes_who_left_but_not_a_rejected_row(clinic: Clinic) -> None:
    before = {p: pending(clinic, p) for p in ("P1", "P2", "P3")}
    assert all(before.values())
    with freeze_time(LATER):
        summary = full(clinic, "patients", [
            patient("P1", phone="(312) 555-0101"),
            patient("P3", phone="(312) 555-0103", sms_consent="maybe")])  # a bad cell
    assert summary.rejected == 1 and summary.removed == 1
    assert summary.cancelled == len(before["P2"])
    assert summary.as_dict()["removed"] == 1
    assert removed(clinic, "patients") == {"P2"}
    assert removed(clinic, "appointments") == {"A2"}  # with its patient
    assert pending(clinic, "P2") == []
    assert {tp.reason for tp in clinic.touch_points(patient="P2")
            if tp.status == Status.CANCELLED} == {Reason.PATIENT_REMOVED}
    assert pending(clinic, "P1") == before["P1"] and pending(clinic, "P3") == before["P3"]

    with freeze_time(LATER):  # the same file again: nothing more
        again = full(clinic, "patients", [patient("P1", phone="(312) 555-0101"),
                                          patient("P3", phone="(312) 555-0103")], "again")
    assert (again.removed, again.cancelled, again.reactivated) == (0, 0, 0)


def test_a_full_file_with_no_good_row_is_refused_and_changes_nothing(clinic: Clinic) -> None:
    for rows in ([], [patient("P1", sms_consent="maybe")]):
        with freeze_time(LATER), pytest.raises(ImportFileError, match="one good row"):
            full(clinic, "patients", rows, f"bad{len(rows)}")
    assert removed(clinic, "patients") == set()
    assert all(pending(clinic, p) for p in ("P1", "P2", "P3"))


def test_a_removed_patient_who_comes_back_is_reactivated_with_their_visit(
        clinic: Clinic) -> None:
    with freeze_time(LATER):
        full(clinic, "patients", [patient("P1", phone="(312) 555-0101"),
                                  patient("P3", phone="(312) 555-0103")])
        back = clinic.patients(patient("P2", phone="(312) 555-0102"))
    assert (back.reactivated, back.unchanged, back.created) == (1, 1, 0)
    assert back.events["appointment.booked"] == 1  # its visit ahead, booked again
    assert removed(clinic, "patients") == removed(clinic, "appointments") == set()
    with freeze_time(LATER):
        clinic.tick()
    reminders = clinic.touch_points(patient="P2", journey="pre-visit",
                                    step="three-days-before", recipient="patient")
    assert [(tp.status, tp.anchor.endswith(":v2")) for tp in reminders] == [
        (Status.CANCELLED, False), (Status.PLANNED, True)]


def test_a_full_appointments_file_removes_the_visits_that_left(clinic: Clinic) -> None:
    with freeze_time(LATER):
        summary = full(clinic, "appointments", [appointment("A1", "P1", VISIT),
                                                appointment("A3", "P3", VISIT)])
    assert summary.removed == 1 and summary.cancelled > 0
    assert removed(clinic, "appointments") == {"A2"} and removed(clinic, "patients") == set()
    assert [p for p in pending(clinic, "P2") if p.startswith("pre-visit")] == []
    assert [p for p in pending(clinic, "P1") if p.startswith("pre-visit")]
    with freeze_time(LATER):
        back = clinic.appointments(appointment("A2", "P2", VISIT))
        clinic.tick()
    assert back.reactivated == 1 and back.events["appointment.booked"] == 1
    assert removed(clinic, "appointments") == set()
    assert [p for p in pending(clinic, "P2") if p.startswith("pre-visit")]


def test_a_full_contacts_file_removes_the_contacts_that_left(clinic: Clinic) -> None:
    with freeze_time(LATER):
        summary = full(clinic, "contacts", [contact("C1", "P1")])
    assert summary.removed == 1
    assert removed(clinic, "contacts") == {"C2"}
    with freeze_time(LATER):
        back = clinic.contacts(contact("C1", "P1"), contact("C2", "P2"))
    assert back.reactivated == 1 and removed(clinic, "contacts") == set()


def test_the_cli_takes_full_and_reports_removed(database_url: str, tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path)
    clinic.close()
    options = ["--db", database_url, "--schedules", str(LIBRARY_SCHEDULES),
               "--templates", str(LIBRARY_TEMPLATES), "--now", "2026-11-02T08:00-06:00"]
    write_csv(tmp_path / "all.csv", [patient("P1"), patient("P2")], PATIENT_COLUMNS)
    write_csv(tmp_path / "one.csv", [patient("P1")], PATIENT_COLUMNS)
    write_csv(tmp_path / "bad.csv", [patient("P1", sms_consent="maybe")], PATIENT_COLUMNS)
    runner = CliRunner()
    assert runner.invoke(cli, [*options, "import", "patients", "all.csv"]).exit_code == 0
    result = runner.invoke(cli, [*options, "import", "patients", "one.csv", "--full"])
    assert result.exit_code == 0, result.output
    assert "1 removed" in result.output
    refused = runner.invoke(cli, [*options, "import", "patients", "bad.csv", "--full"])
    assert refused.exit_code == 1 and "full sync needs at least one good row" in refused.output
    result = runner.invoke(cli, [*options, "import", "patients", "all.csv", "--json"])
    answer = json.loads(result.output)
    assert (answer["reactivated"], answer["removed"]) == (1, 0)
    (tmp_path / "check").mkdir()
    check = Clinic(database_url, tmp_path / "check")
    with check.db.transaction() as conn:
        kinds = list(conn.execute(select(events.c.kind)).scalars())
    check.close()
    assert kinds.count("patient.created") == 2  # coming back is not a new patient


def test_a_full_referrers_file_removes_the_offices_that_left(clinic: Clinic) -> None:
    from engine.importer import REFERRER_COLUMNS, import_referrers
    from engine.store.schema import referrers

    with freeze_time(LATER):
        clinic.referrers(referrer("DR1"), referrer("DR2", name="North Shore"))
        path = write_csv(clinic.folder / "full-referrers.csv", [referrer("DR1")],
                         REFERRER_COLUMNS)
        with clinic.db.transaction() as conn:
            summary = import_referrers(conn, path, region="US", now=clock.now(), full=True)
    assert summary.removed == 1
    with clinic.db.transaction() as conn:
        assert set(conn.execute(select(referrers.c.external_id)
                                .where(referrers.c.removed_at.is_not(None))).scalars()) \
            == {"DR2"}
