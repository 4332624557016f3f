"""engine/importer.py and `touchpoint import patients|appointments`, on SQLite and PostgreSQL.

Imports are syncs from an EMR export: bad rows are reported by CSV line (header = line 1)
without echoing patient data, good rows are kept, identical rows change nothing, and each
appointment change records exactly one event. Practice timezone: America/Chicago.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, text, update

from engine.cli import cli
from engine.errors import ImportFileError
from engine.importer import (
    APPOINTMENT_COLUMNS,
    PATIENT_COLUMNS,
    ImportSummary,
    import_appointments,
    import_patients,
)
from engine.store.database import Database, open_database
from engine.store.schema import appointments, events, patients
from tests.support import appointment, patient, write_config, write_csv

NOW = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)  # Mon 08:00 CST (DST ended on 2026-11-01)
LATER = NOW + timedelta(days=1)
HEADER = ",".join(PATIENT_COLUMNS)
BAD_PHONE = ("phone is not a valid number (default region US) — check the digits, or add the "
             "country code")
UNKNOWN_PATIENT = "patient_id is not a known patient — import patients first"
DST_GAP = ("start 2026-03-08 02:30 does not exist in America/Chicago (the clocks skip that "
           "hour) — check the time, or give the UTC offset")


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = open_database(database_url)
    yield database
    database.dispose()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def raw_csv(path: Path, text: str) -> Path:
    """Write ``text`` byte for byte, so line numbers are exactly what the test says."""
    path.write_bytes(text.encode("utf-8"))
    return path


def patient_line(patient_id: str, *, first_name: str = "Ana", phone: str = "(312) 555-0100",
                 email: str = "", language: str = "", timezone: str = "",
                 sms: str = "yes", extra: str = "") -> str:
    email = email or f"{patient_id.lower()}@example.com"
    return (f"{patient_id},{first_name},Reyes,{phone},{email},{language},{timezone},{sms},yes,"
            f"no{extra}\n")


def sync_patients(db: Database, path: Path, *, now: datetime = NOW,
                  baseline: bool = False) -> ImportSummary:
    with db.transaction() as conn:
        return import_patients(conn, path, region="US", now=now, baseline=baseline)


def sync_appointments(db: Database, path: Path, *, now: datetime = NOW) -> ImportSummary:
    with db.transaction() as conn:
        return import_appointments(conn, path, practice_tz="America/Chicago", now=now)


def problems(summary: ImportSummary) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in summary.problems]


def _rows(db: Database, table: Any) -> dict[str, Any]:
    with db.transaction() as conn:
        return {row.external_id: row for row in conn.execute(select(table))}


def stored_patients(db: Database) -> dict[str, Any]:
    return _rows(db, patients)


def stored_appointments(db: Database) -> dict[str, Any]:
    return _rows(db, appointments)


def all_events(db: Database) -> list[Any]:
    with db.transaction() as conn:
        return list(conn.execute(select(events).order_by(events.c.id)))


def seed_patients(db: Database, tmp_path: Path, *ids: str) -> dict[str, int]:
    path = write_csv(tmp_path / "seed-patients.csv", [patient(i) for i in ids], PATIENT_COLUMNS)
    summary = sync_patients(db, path, baseline=True)
    assert summary.created == len(ids) and not summary.problems
    return {k: v.id for k, v in stored_patients(db).items()}


class Appointments:
    """Writes each appointments import to a new file, as an EMR export would."""

    def __init__(self, db: Database, folder: Path) -> None:
        self.db, self.folder, self.count = db, folder, 0

    def sync(self, *rows: Mapping[str, str], now: datetime = NOW) -> ImportSummary:
        self.count += 1
        path = write_csv(self.folder / f"appointments-{self.count}.csv", rows,
                         APPOINTMENT_COLUMNS)
        return sync_appointments(self.db, path, now=now)


@pytest.fixture
def appts(db: Database, tmp_path: Path) -> Appointments:
    seed_patients(db, tmp_path, "P1", "P2")
    return Appointments(db, tmp_path)


# --------------------------------------------------------------------------- patients


def test_patient_fields_are_normalised_and_extra_columns_become_custom_fields(
        db: Database, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "patients.csv", [
        patient("P1", phone="(312) 555-0100", language="es-MX", timezone="America/Denver",
                sms_consent="Yes", email_consent="N", marketing_consent="",
                **{"Referral Source": "Dr. Patel", "insurer": "Acme"}),
        patient("P2", phone="+44 20 7946 0958", email="Ben.Okafor@EXAMPLE.com",
                **{"Referral Source": "", "insurer": "Blue"}),
        patient("P3", phone="", email=""),
    ], PATIENT_COLUMNS)

    summary = sync_patients(db, path)

    assert (summary.rows, summary.created, summary.rejected) == (3, 3, 0)
    stored = stored_patients(db)
    p1, p2, p3 = stored["P1"], stored["P2"], stored["P3"]
    assert p1.phone == "+13125550100"
    assert p2.phone == "+442079460958"  # an international number keeps its country
    assert (p1.language, p1.timezone) == ("es-MX", "America/Denver")
    assert (p1.sms_consent, p1.email_consent, p1.marketing_consent) == (True, False, False)
    assert p2.email == "Ben.Okafor@example.com"  # the domain is normalised, not the local part
    assert (p3.phone, p3.email, p3.language, p3.timezone) == (None, None, None, None)
    assert p1.custom == {"referral source": "Dr. Patel", "insurer": "Acme"}
    assert p2.custom == {"referral source": "", "insurer": "Blue"}
    assert p3.custom == {"referral source": "", "insurer": ""}


def test_rejected_rows_report_their_csv_line_and_good_rows_are_kept(
        db: Database, tmp_path: Path) -> None:
    path = raw_csv(tmp_path / "patients.csv", (
        f"{HEADER},notes\n"                                                    # line 1
        + patient_line("P1", extra=',"Prefers mornings\nCall after 9"')        # lines 2-3
        + patient_line("P2", phone="312-555-01", extra=",")                    # line 4
        + patient_line("P3", email="p3@@example", extra=",")                   # line 5
        + "\n"                                                                 # line 6
        + patient_line("P4", timezone="Mars/Olympus_Mons", extra=",")          # line 7
        + patient_line("P5", language="xx", extra=",")                         # line 8
        + patient_line("P6", sms="maybe", extra=",")                           # line 9
        + patient_line("P7", sms="perhaps", extra=',"two\nlines"')             # lines 10-11
        + patient_line("P8", extra=",")                                        # line 12
        + patient_line("P9", first_name="", extra=",")                         # line 13
        + patient_line("", extra=",")                                          # line 14
        + patient_line("P10", extra=",,")                                      # line 15
        + patient_line("P11", extra=",")                                       # line 16
    ))

    summary = sync_patients(db, path)

    found = problems(summary)
    assert [line for line, _ in found] == [4, 5, 7, 8, 9, 10, 13, 14, 15]
    messages = dict(found)
    assert messages[4] == BAD_PHONE
    assert messages[5] == "email is not a valid email address"
    assert messages[7] == ("timezone is not a known timezone — use a name from the tz database, "
                           "such as America/New_York")
    assert "is not a language code — use e.g. en, es or es-MX" in messages[8]
    assert messages[9] == messages[10] == "sms_consent must be yes or no"
    assert messages[13] == "first_name is empty — messages greet patients by first name"
    assert messages[14] == "patient_id is empty"
    assert messages[15] == ("has 12 fields, the header has 11 — check for a stray comma or "
                            "quote")
    assert (summary.rows, summary.created, summary.rejected) == (12, 3, 9)
    stored = stored_patients(db)
    assert sorted(stored) == ["P1", "P11", "P8"]
    assert stored["P1"].custom == {"notes": "Prefers mornings\nCall after 9"}
    assert stored["P11"].source == "patients.csv:16"


@pytest.mark.parametrize(("column", "value"), [
    ("phone", "Ana Reyes"),
    ("phone", "312-555-01"),
    ("email", "ana.reyes.312-555-0100"),
    ("sms_consent", "Ana Reyes"),
    pytest.param("language", "Reyes"),
    pytest.param("timezone", "Reyes, Ana"),
])
def test_rejection_messages_never_echo_the_patients_data(
        db: Database, tmp_path: Path, column: str, value: str) -> None:
    """A shifted export puts names and numbers in any column; the report must not leak them."""
    path = write_csv(tmp_path / "patients.csv", [patient("P1", **{column: value})],
                     PATIENT_COLUMNS)

    summary = sync_patients(db, path)

    [(line, message)] = problems(summary)
    assert line == 2
    assert column in message
    for fragment in (value, *value.replace(",", " ").split()):
        assert fragment.lower() not in message.lower()


def _outcome(db: Database, path: Path) -> tuple[list[int], str]:
    """(lines of rejected rows, or the message refusing the file)."""
    try:
        summary = sync_patients(db, path)
    except ImportFileError as refused:
        return [], refused.message
    return [line for line, _ in problems(summary)], ""


def test_an_unclosed_quote_does_not_swallow_the_rows_after_it(
        db: Database, tmp_path: Path) -> None:
    path = raw_csv(tmp_path / "patients.csv", (
        f"{HEADER},notes\n"
        + patient_line("P1", extra=',"bad knee')                 # line 2: quote never closed
        + "".join(patient_line(f"P{n}", extra=",") for n in range(2, 6))))

    lines, refused = _outcome(db, path)

    assert 2 in lines or "line 2" in refused
    assert not any("P2," in json.dumps(p.custom) for p in stored_patients(db).values())


def test_a_duplicate_patient_id_is_reported_with_the_line_of_the_first(
        db: Database, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "patients.csv", [
        patient("P1", first_name="Ana"), patient("P2"), patient("P1", first_name="Anna"),
    ], PATIENT_COLUMNS)

    summary = sync_patients(db, path)

    assert problems(summary) == [(4, "patient_id appears again (first on line 2) — keep one "
                                     "row per patient; this row was ignored")]
    assert summary.created == 2
    assert stored_patients(db)["P1"].first_name == "Ana"


def test_a_missing_required_column_refuses_the_whole_file(
        db: Database, tmp_path: Path) -> None:
    columns = [c for c in PATIENT_COLUMNS if c not in ("phone", "sms_consent")]
    path = write_csv(tmp_path / "patients.csv", [{c: patient("P1")[c] for c in columns}],
                     columns)

    with pytest.raises(ImportFileError) as refused:
        sync_patients(db, path)

    assert refused.value.message == (
        f"{path}: missing columns phone, sms_consent — the header must include "
        f"{', '.join(PATIENT_COLUMNS)}")
    assert stored_patients(db) == {}
    assert all_events(db) == []


def test_an_empty_file_is_refused(db: Database, tmp_path: Path) -> None:
    path = raw_csv(tmp_path / "patients.csv", "")

    with pytest.raises(ImportFileError) as refused:
        sync_patients(db, path)

    assert refused.value.message == f"{path}: the file is empty — it needs a header row"


def test_a_utf8_file_with_a_byte_order_mark_imports(db: Database, tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM; the first column must still be patient_id."""
    path = tmp_path / "patients.csv"
    path.write_bytes(("\ufeff" + HEADER + "\r\n"
                      + patient_line("P1", first_name="Zoë").replace("\n", "\r\n"))
                     .encode("utf-8"))

    summary = sync_patients(db, path)

    assert (summary.created, summary.rejected) == (1, 0)
    assert stored_patients(db)["P1"].first_name == "Zoë"


def test_new_patients_record_patient_created_unless_baseline(
        db: Database, tmp_path: Path) -> None:
    existing = write_csv(tmp_path / "existing.csv", [patient("P1"), patient("P2")],
                         PATIENT_COLUMNS)
    summary = sync_patients(db, existing, baseline=True)
    assert summary.created == 2 and not summary.events
    assert all_events(db) == []

    newcomer = write_csv(tmp_path / "new.csv", [patient("P1"), patient("P3")],
                         PATIENT_COLUMNS)
    summary = sync_patients(db, newcomer, now=LATER)

    assert (summary.created, summary.unchanged) == (1, 1)
    assert summary.events == {"patient.created": 1}
    [event] = all_events(db)
    assert (event.kind, event.patient_id) == ("patient.created", stored_patients(db)["P3"].id)
    assert (event.occurred_at, event.source, event.appointment_id) == (LATER, "new.csv:3", None)


def test_reimporting_identical_patients_changes_nothing(db: Database, tmp_path: Path) -> None:
    first = write_csv(tmp_path / "monday.csv", [
        patient("P1", insurer="Acme"), patient("P2", insurer=""),
    ], PATIENT_COLUMNS)
    sync_patients(db, first)
    # the same people, in another order and with the phone written another way
    again = write_csv(tmp_path / "tuesday.csv", [
        patient("P2", phone="+1 312-555-0100", insurer=""), patient("P1", insurer="Acme"),
    ], PATIENT_COLUMNS)

    summary = sync_patients(db, again, now=LATER)

    assert (summary.rows, summary.created, summary.updated, summary.unchanged) == (2, 0, 0, 2)
    assert not summary.events
    assert len(all_events(db)) == 2  # the two patient.created of the first import
    assert {p.updated_at for p in stored_patients(db).values()} == {NOW}


def test_a_changed_consent_updates_the_patient_without_an_event(
        db: Database, tmp_path: Path) -> None:
    sync_patients(db, write_csv(tmp_path / "monday.csv", [patient("P1"), patient("P2")],
                                PATIENT_COLUMNS))

    summary = sync_patients(db, write_csv(tmp_path / "tuesday.csv", [
        patient("P1", sms_consent="no"), patient("P2"),
    ], PATIENT_COLUMNS), now=LATER)

    assert (summary.created, summary.updated, summary.unchanged) == (0, 1, 1)
    assert not summary.events
    assert [e.kind for e in all_events(db)] == ["patient.created", "patient.created"]
    stored = stored_patients(db)
    assert (stored["P1"].sms_consent, stored["P1"].updated_at) == (False, LATER)
    assert (stored["P2"].sms_consent, stored["P2"].updated_at) == (True, NOW)


# --------------------------------------------------------------------------- appointments


def test_an_appointment_of_an_unknown_patient_is_rejected(appts: Appointments) -> None:
    summary = appts.sync(appointment("A1", "P1"), appointment("A2", "P404"),
                         appointment("A3", "P2"))

    assert problems(summary) == [(3, UNKNOWN_PATIENT)]
    assert (summary.created, summary.rejected) == (2, 1)
    assert sorted(stored_appointments(appts.db)) == ["A1", "A3"]


def test_start_times_with_offset_z_or_practice_local_time(appts: Appointments) -> None:
    summary = appts.sync(
        appointment("A1", start="2026-11-05T10:00:00-06:00"),
        appointment("A2", start="2026-11-05T16:00:00Z"),
        appointment("A3", start="2026-11-05 10:00"),       # CST, UTC-6
        appointment("A4", start="2027-06-01T10:00"),       # CDT, UTC-5
        appointment("A5", start="2026-03-08 02:30"),       # 02:00-03:00 does not exist
        appointment("A6", start="next Tuesday 10am"),
        appointment("A7", start=""),
    )

    assert problems(summary) == [
        (6, DST_GAP),
        (7, "start is not a date and time — write ISO 8601, e.g. 2026-11-24T15:00-05:00, or "
            "local time 2026-11-24 15:00"),
        (8, "start is empty"),
    ]
    stored = stored_appointments(appts.db)
    assert {k: v.start_at for k, v in stored.items()} == {
        "A1": utc("2026-11-05T16:00:00+00:00"), "A2": utc("2026-11-05T16:00:00+00:00"),
        "A3": utc("2026-11-05T16:00:00+00:00"), "A4": utc("2027-06-01T15:00:00+00:00")}


def test_status_aliases_and_duration_validation(appts: Appointments) -> None:
    past = "2026-10-01T10:00:00-05:00"
    summary = appts.sync(
        appointment("A1", start=past, status="Canceled"),
        appointment("A2", start=past, status="no-show"),
        appointment("A3", start=past, status="Completed", duration_minutes="1440"),
        appointment("A4", status="pending"),
        appointment("A5", duration_minutes="0"),
        appointment("A6", duration_minutes="1441"),
        appointment("A7", duration_minutes="45.5"),
        appointment("A1", start=past, status="cancelled"),
    )

    assert problems(summary) == [
        (5, "status must be one of booked, cancelled, completed, no_show"),
        (6, "duration_minutes must be between 1 and 1440"),
        (7, "duration_minutes must be between 1 and 1440"),
        (8, "duration_minutes must be a whole number of minutes"),
        (9, "appointment_id appears again (first on line 2) — keep one row per appointment; "
            "this row was ignored"),
    ]
    stored = stored_appointments(appts.db)
    assert {k: (v.status, v.duration_minutes) for k, v in stored.items()} == {
        "A1": ("cancelled", 60), "A2": ("no_show", 60), "A3": ("completed", 1440)}


def test_first_sight_starts_journeys_only_for_what_is_ahead_or_recent(
        appts: Appointments) -> None:
    summary = appts.sync(
        appointment("A1", "P1", "2026-11-05T10:00:00-06:00"),                       # ahead
        appointment("A2", "P1", "2026-09-01T10:00:00-05:00", status="completed"),  # long ago
        appointment("A3", "P2", "2026-11-01T10:00:00-06:00", status="completed"),  # yesterday
        appointment("A4", "P2", "2026-10-20T10:00:00-05:00"),             # booked, but passed
    )

    assert (summary.created, summary.historical, summary.rejected) == (4, 2, 0)
    assert summary.events == {"appointment.booked": 1, "appointment.completed": 1}
    stored = stored_appointments(appts.db)
    booked, completed = all_events(appts.db)
    assert (booked.kind, booked.appointment_id, booked.patient_id) == (
        "appointment.booked", stored["A1"].id, stored["A1"].patient_id)
    assert booked.data == {"appointment": "A1", "start": "2026-11-05T16:00:00+00:00",
                           "duration_minutes": 60, "version": 1, "status": "booked"}
    assert (booked.occurred_at, booked.source) == (NOW, "appointments-1.csv:2")
    assert (completed.kind, completed.appointment_id) == (
        "appointment.completed", stored["A3"].id)
    assert {k: v.version for k, v in stored.items()} == {"A1": 1, "A2": 1, "A3": 1, "A4": 1}


def test_reimporting_identical_appointments_changes_nothing(appts: Appointments) -> None:
    rows = [appointment("A1", start="2026-11-05T10:00:00-06:00"),
            appointment("A2", "P2", start="2026-11-06 09:00")]
    appts.sync(*rows)
    before = stored_appointments(appts.db)

    # the same visits, one written as UTC instead of local time
    summary = appts.sync(rows[0], {**rows[1], "start": "2026-11-06T15:00:00Z"}, now=LATER)

    assert (summary.created, summary.updated, summary.unchanged) == (0, 0, 2)
    assert not summary.events
    assert len(all_events(appts.db)) == 2
    assert stored_appointments(appts.db) == before


@pytest.mark.parametrize(("status", "kind"), [
    ("cancelled", "appointment.cancelled"),
    ("completed", "appointment.completed"),
    ("no_show", "appointment.no_show"),
])
def test_a_status_change_records_its_event(appts: Appointments, status: str,
                                           kind: str) -> None:
    appts.sync(appointment("A1", start="2026-11-05T10:00:00-06:00"))
    after_visit = utc("2026-11-05T12:00:00-06:00")

    summary = appts.sync(appointment("A1", start="2026-11-05T10:00:00-06:00", status=status),
                         now=after_visit)

    assert (summary.updated, summary.unchanged, summary.historical) == (1, 0, 0)
    assert summary.events == {kind: 1}
    first, change = all_events(appts.db)
    assert first.kind == "appointment.booked"
    stored = stored_appointments(appts.db)["A1"]
    assert (change.kind, change.appointment_id, change.occurred_at) == (
        kind, stored.id, after_visit)
    assert change.data == {"appointment": "A1", "start": "2026-11-05T16:00:00+00:00",
                           "duration_minutes": 60, "version": 1, "status": status}
    assert (stored.status, stored.version, stored.updated_at) == (status, 1, after_visit)


def test_moving_a_booked_appointment_records_a_reschedule(appts: Appointments) -> None:
    appts.sync(appointment("A1", start="2026-11-05T10:00:00-06:00"))
    with appts.db.transaction() as conn:  # the patient had confirmed the old time
        conn.execute(update(appointments).values(confirmed_at=NOW))

    summary = appts.sync(appointment("A1", start="2026-11-06T11:30:00-06:00"), now=LATER)

    assert summary.updated == 1
    assert summary.events == {"appointment.rescheduled": 1}
    moved = all_events(appts.db)[-1]
    assert moved.kind == "appointment.rescheduled"
    assert moved.data == {"appointment": "A1", "start": "2026-11-06T17:30:00+00:00",
                          "previous_start": "2026-11-05T16:00:00+00:00",
                          "duration_minutes": 60, "version": 2, "status": "booked"}
    stored = stored_appointments(appts.db)["A1"]
    assert (stored.start_at, stored.version, stored.confirmed_at) == (
        utc("2026-11-06T17:30:00+00:00"), 2, None)


def test_a_cancelled_appointment_booked_again_is_a_new_booking(appts: Appointments) -> None:
    start = "2026-11-05T10:00:00-06:00"
    appts.sync(appointment("A1", start=start))
    appts.sync(appointment("A1", start=start, status="canceled"), now=NOW + timedelta(hours=1))

    summary = appts.sync(appointment("A1", start=start), now=NOW + timedelta(hours=2))

    assert summary.events == {"appointment.booked": 1}
    found = all_events(appts.db)
    assert [(e.kind, e.data["version"]) for e in found] == [
        ("appointment.booked", 1), ("appointment.cancelled", 1), ("appointment.booked", 2)]
    stored = stored_appointments(appts.db)["A1"]
    assert (stored.status, stored.version) == ("booked", 2)


def test_an_appointment_cannot_change_patient(appts: Appointments) -> None:
    appts.sync(appointment("A1", "P1"))
    owner = stored_appointments(appts.db)["A1"].patient_id

    summary = appts.sync(appointment("A2", "P2"), appointment("A1", "P2"), now=LATER)

    assert problems(summary) == [(3, "this appointment belongs to another patient in "
                                     "Touchpoint — an appointment cannot change patient; give "
                                     "it a new appointment_id")]
    assert (summary.created, summary.updated) == (1, 0)
    stored = stored_appointments(appts.db)["A1"]
    assert (stored.patient_id, stored.updated_at) == (owner, NOW)
    assert [e.appointment_id for e in all_events(appts.db)].count(stored.id) == 1


# --------------------------------------------------------------------------- the command


def run(database_url: str, tmp_path: Path, *args: str) -> Result:
    config = write_config(tmp_path)
    return CliRunner().invoke(cli, ["--db", database_url, "--config", str(config), *args])


def count(database_url: str, table: Any) -> int:
    database = open_database(database_url)
    try:
        with database.transaction() as conn:
            return len(list(conn.execute(select(table.c.id))))
    finally:
        database.dispose()


def test_import_patients_json_prints_the_summary_and_exits_3_on_rejections(
        database_url: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "patients.csv", [
        patient("P1"), patient("P2", phone="312-555-01")], PATIENT_COLUMNS)

    result = run(database_url, tmp_path, "import", "patients", str(path), "--json")

    assert result.exit_code == 3, result.output
    assert json.loads(result.stdout) == {
        "file": "patients.csv", "kind": "patients", "rows": 2, "created": 1, "updated": 0,
        "unchanged": 0, "rejected": 1, "historical": 0, "reactivated": 0, "removed": 0,
        "cancelled": 0, "events": {"patient.created": 1},
        "problems": [{"line": 3, "message": BAD_PHONE}]}
    assert count(database_url, patients) == 1


def test_import_patients_json_exits_0_and_baseline_records_no_events(
        database_url: str, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "patients.csv", [patient("P1"), patient("P2")],
                     PATIENT_COLUMNS)

    result = run(database_url, tmp_path, "import", "patients", str(path), "--baseline",
                 "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["created"], summary["rejected"], summary["events"],
            summary["problems"]) == (2, 0, {}, [])
    assert (count(database_url, patients), count(database_url, events)) == (2, 0)


def test_import_human_output_lists_problems_on_stderr(database_url: str,
                                                     tmp_path: Path) -> None:
    path = write_csv(tmp_path / "patients.csv", [
        patient("P1"), patient("P2", phone="312-555-01"), patient("P3", email="p3@@x")],
        PATIENT_COLUMNS)

    result = run(database_url, tmp_path, "import", "patients", str(path))

    assert result.exit_code == 3
    assert result.stdout == ("patients.csv: 3 rows, 1 new, 0 updated, 0 unchanged, "
                             "2 rejected.\nevents: 1 patient.created\n")
    assert [line.strip() for line in result.stderr.splitlines()] == [
        f"patients.csv: line 3: {BAD_PHONE}",
        "patients.csv: line 4: email is not a valid email address"]


def test_import_appointments_reads_local_times_in_the_practice_timezone(
        database_url: str, tmp_path: Path) -> None:
    people = write_csv(tmp_path / "patients.csv", [patient("P1")], PATIENT_COLUMNS)
    visits = write_csv(tmp_path / "appointments.csv", [
        appointment("A1", "P1", "2026-11-05 10:00"),
        appointment("A2", "P1", "2026-03-08 02:30", status="completed"),
    ], APPOINTMENT_COLUMNS)
    now = ("--now", "2026-11-02T08:00-06:00")

    assert run(database_url, tmp_path, *now, "import", "patients", str(people)).exit_code == 0
    result = run(database_url, tmp_path, *now, "import", "appointments", str(visits), "--json")

    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert (summary["kind"], summary["created"], summary["events"], summary["problems"]) == (
        "appointments", 1, {"appointment.booked": 1}, [{"line": 3, "message": DST_GAP}])
    database = open_database(database_url)
    try:
        assert stored_appointments(database)["A1"].start_at == utc("2026-11-05T16:00:00Z")
    finally:
        database.dispose()


@pytest.mark.parametrize("problem", ["missing file", "missing column"])
def test_an_unreadable_file_is_one_error_line_and_exit_1(
        database_url: str, tmp_path: Path, problem: str) -> None:
    path = tmp_path / "patients.csv"
    if problem == "missing file":
        expected = f"Error: {path}: file not found"
    else:
        raw_csv(path, "patient_id,first_name\nP1,Ana\n")
        expected = (f"Error: {path}: missing columns last_name, phone, email, language, "
                    f"timezone, sms_consent, email_consent, marketing_consent — the header "
                    f"must include {', '.join(PATIENT_COLUMNS)}")

    result = run(database_url, tmp_path, "import", "patients", str(path))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == expected + "\n"
    assert "Traceback" not in result.output
    assert count(database_url, patients) == 0


def test_an_import_on_postgresql_plans_its_lookups_for_the_rows_it_finds(
        postgres_url: str, tmp_path: Path) -> None:
    """psycopg prepares a statement run five times; PostgreSQL may then keep a generic plan
    costed while a first import's tables were empty, and the import slowed quadratically
    (bench/README.md). Imports ask for custom plans, for their own transaction only.
    (SQLite plans every statement as it runs: nothing to set there.)"""
    from tests.conftest import _truncate

    _truncate(postgres_url)
    db = open_database(postgres_url)
    path = write_csv(tmp_path / "patients.csv", [patient("P1"), patient("P2")], PATIENT_COLUMNS)
    mode = text("SHOW plan_cache_mode")
    try:
        with db.transaction() as conn:
            before = conn.execute(mode).scalar_one()
            import_patients(conn, path, region="US", now=NOW)
            during = conn.execute(mode).scalar_one()
        with db.transaction() as conn:
            after = conn.execute(mode).scalar_one()
    finally:
        db.dispose()

    assert (before, during, after) == ("auto", "force_custom_plan", "auto")
    assert count(postgres_url, patients) == 2
