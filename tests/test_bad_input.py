"""One bad input never stops everyone (invariant 9), on SQLite and PostgreSQL.

* An event planning cannot handle is set aside with its error — shown by ``log``,
  ``why --event`` and /healthz — and every other event is planned and sent.
* An import refuses each bad cell with its line number and keeps the good rows.
* ``validate`` refuses timing values no date can carry, and names the ledger cannot store.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from freezegun import freeze_time
from sqlalchemy import func, insert, select

from engine import clock
from engine import runner as runner_module
from engine.cli import cli
from engine.definitions import load_definitions
from engine.definitions.journeys import parse_journey
from engine.dispatcher import Snapshot
from engine.errors import ImportFileError
from engine.importer import import_patients
from engine.runner import Runner
from engine.store.records import append_events
from engine.store.schema import appointments, events, patients
from engine.webhooks.app import Services, create_app
from tests.support import (
    LIBRARY_SCHEDULES,
    LIBRARY_TEMPLATES,
    ONE_REMINDER_JOURNEY,
    ONE_REMINDER_SMS,
    Clinic,
    appointment,
    contact,
    patient,
    referrer,
    write_config,
)

NOW = "2026-11-02T15:00:00Z"  # Mon 09:00 in the practice (America/Chicago)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def book_directly(clinic: Clinic, patient_id: str, start: str) -> int:
    """An appointment and its booked event written straight to the database, as a hand
    edit or another tool would: nothing checked the start on the way in."""
    now = clock.now()
    with clinic.db.transaction() as conn:
        owner = conn.execute(select(patients.c.id)
                             .where(patients.c.external_id == patient_id)).scalar_one()
        at = datetime.fromisoformat(start)
        appointment_id = conn.execute(insert(appointments).values(
            external_id=f"BAD-{patient_id}", patient_id=owner, start_at=at,
            duration_minutes=60, status="booked", visit_type="", therapist="", location="",
            version=1, row_hash="-", source="hand edit", created_at=now, updated_at=now,
        )).inserted_primary_key[0]
        append_events(conn, [{
            "kind": "appointment.booked", "patient_id": owner,
            "appointment_id": appointment_id, "occurred_at": now,
            "data": {"appointment": f"BAD-{patient_id}", "start": at.isoformat(),
                     "duration_minutes": 60, "version": 1, "status": "booked"},
            "source": "hand edit", "dedupe_key": None, "processed_at": None}])
        return int(conn.execute(select(func.max(events.c.id))).scalar_one())


def event_row(clinic: Clinic, event_id: int) -> Any:
    with clinic.db.transaction() as conn:
        return conn.execute(select(events).where(events.c.id == event_id)).one()


# --------------------------------------------------------------------------- planning


def test_an_event_that_cannot_be_planned_is_set_aside_and_the_others_are_sent(
        database_url: str, tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path)
    client = TestClient(create_app(Services(clinic.settings, clinic.db, clinic.definitions,
                                            {})))
    with freeze_time(NOW):
        clinic.patients(patient("P1"), patient("P2", phone="(312) 555-0102"))
        bad = [book_directly(clinic, "P1", "0001-01-01T00:30:00+00:00"),
               book_directly(clinic, "P2", "9999-12-31T23:00:00+00:00")]
        clinic.patients(patient("P3", phone="(312) 555-0103"))
        clinic.appointments(appointment("A2", "P2", "2026-11-05T10:00:00-06:00"),
                            appointment("A3", "P3", "2026-11-05T11:00:00-06:00"))
        report = clinic.tick()

        # every good event was planned; the welcome texts went out
        assert (report.events, report.set_aside) == (7, 2)
        welcomed = {tp.patient_id for tp in clinic.touch_points(journey="welcome")
                    if tp.status == "sent"}
        assert len(welcomed) == 3
        for external_id in ("P2", "P3"):
            assert [tp.status for tp in clinic.touch_points(journey="pre-visit",
                                                           patient=external_id)] \
                == ["planned", "planned", "planned"]
        assert clinic.touch_points(patient="P1", journey="pre-visit") == []
        for event_id in bad:
            row = event_row(clinic, event_id)
            assert row.error == "OverflowError: date value out of range"
            assert row.failed_at == row.processed_at == clock.now()

        # set aside, not retried: the next tick plans nothing and finds nothing new
        assert clinic.tick().events == 0

        health = client.get("/healthz").json()
        assert health["set_aside"] == 2

        options = ["--db", database_url, "--schedules", str(LIBRARY_SCHEDULES),
                   "--templates", str(LIBRARY_TEMPLATES)]
        shown = invoke(*options, "log", "--patient", "P1")
        assert shown.exit_code == 0, shown.output
        assert "1 event(s) could not be planned and were set aside" in shown.output
        assert f"{bad[0]} " in shown.output and "appointment.booked" in shown.output
        assert "OverflowError: date value out of range" in shown.output
        assert "welcome" in shown.output  # P1's touch points are listed as before
        assert "set aside" not in invoke(*options, "log", "--patient", "P3").output

        as_json = invoke(*options, "log", "--patient", "P1", "--json")
        assert as_json.exit_code == 0
        assert "set aside" in as_json.stderr and "set aside" not in as_json.stdout

        story = invoke(*options, "why", "--event", str(bad[1]))
        assert story.exit_code == 0, story.output
        assert f"Event {bad[1]} — appointment.booked, set aside" in story.output
        assert "patient     P2" in story.output
        assert "OverflowError: date value out of range" in story.output
        assert "nothing was planned from it" in story.output

        planned_event = invoke(*options, "why", "--event", str(bad[1] + 1))
        assert planned_event.exit_code != 0
        assert "was not set aside" in planned_event.output
        assert "Traceback" not in planned_event.output
        assert invoke(*options, "why").exit_code != 0  # an id or --event, not neither
    clinic.close()


def test_run_once_says_how_many_events_were_set_aside(database_url: str,
                                                    tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path)
    with freeze_time(NOW):
        clinic.patients(patient("P1"))
        book_directly(clinic, "P1", "0001-01-01T00:30:00+00:00")
    options = ["--db", database_url, "--schedules", str(LIBRARY_SCHEDULES),
               "--templates", str(LIBRARY_TEMPLATES), "--now", NOW]
    result = invoke(*options, "run", "--once")
    assert result.exit_code == 0, result.output
    assert ("2 event(s) planned into 2 touch point(s); 1 event(s) could not be planned and "
            "were set aside (see `touchpoint log`); 1 sent") in result.stdout
    again = invoke(*options, "run", "--once", "--json")
    assert json.loads(again.stdout)["set_aside"] == 0  # not retried
    clinic.close()


def test_a_batch_with_a_bad_event_plans_its_good_ones_in_about_three_batches(
        database_url: str, tmp_path: Path) -> None:
    """The fallback halves the batch down to the bad event: the good events around it are
    planned in a few savepoints, not one by one."""
    clinic = Clinic(database_url, tmp_path)
    calls: list[int] = []
    plan_batch = clinic.runner._plan_batch

    def counting(conn: Any, batch: list[Any]) -> tuple[int, int]:
        calls.append(len(batch))
        return plan_batch(conn, batch)

    clinic.runner._plan_batch = counting  # type: ignore[method-assign]
    with freeze_time(NOW):
        clinic.patients(*[patient(f"P{i}", phone=f"(312) 555-{i:04d}") for i in range(1, 41)])
        bad = book_directly(clinic, "P7", "0001-01-01T00:30:00+00:00")
        clinic.patients(*[patient(f"Q{i}", phone=f"(312) 556-{i:04d}") for i in range(1, 25)])
        report = clinic.tick()
    assert report.events == 65
    assert len({tp.patient_id for tp in clinic.touch_points(journey="welcome")}) == 64
    assert event_row(clinic, bad).error is not None
    # 65, then 32 + 33, then the failing half's halves (33 + 17 + 9 + …): about 3 × 65
    assert sum(calls) <= 3 * 65 + 10
    assert calls.count(1) <= 2
    clinic.close()


# --------------------------------------------------------------------------- imports


BAD_PATIENT_CELLS = [
    (dict(timezone="America/" + "x" * 247),
     "timezone is longer than the 64 characters of any timezone name — use a name from the "
     "tz database, such as America/New_York"),
    (dict(timezone="Mars/Olympus_Mons"),
     "timezone is not a known timezone — use a name from the tz database, such as "
     "America/New_York"),
    (dict(first_name="A" * 101),
     "first_name is longer than the 100 characters Touchpoint keeps (101) — shorten it"),
    (dict(last_name="R" * 250),
     "last_name is longer than the 100 characters Touchpoint keeps (250) — shorten it"),
    (dict(patient_id="P" * 65),
     "patient_id is longer than the 64 characters Touchpoint keeps (65) — shorten it"),
    (dict(first_name="Ana\x00"),
     "first_name contains a NUL byte (an invisible control character) — re-export the file, "
     "or delete the character in the cell"),
    (dict(allergies="none\x00"),  # a custom field
     "allergies contains a NUL byte (an invisible control character) — re-export the file, "
     "or delete the character in the cell"),
    (dict(date_of_birth="9999-12-31"),
     "date_of_birth 9999-12-31 is outside the years 1900–2200 that Touchpoint plans for — "
     "check the year"),
    (dict(discharged_on="0001-01-01"),
     "discharged_on 0001-01-01 is outside the years 1900–2200 that Touchpoint plans for — "
     "check the year"),
    (dict(referral_source="R" * 65),
     "referral_source is longer than the 64 characters Touchpoint keeps (65) — shorten it"),
]


def test_each_bad_patient_cell_refuses_its_row_by_line_and_keeps_the_good_ones(
        database_url: str, tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path)
    rows = [patient("GOOD1")]
    for index, (cells, _) in enumerate(BAD_PATIENT_CELLS):
        rows.append({**patient(f"B{index}"), "allergies": "", "date_of_birth": "",
                     "discharged_on": "", "referral_source": "", **cells})
    rows.append(patient("GOOD2"))
    with freeze_time(NOW):
        summary = clinic.patients(*rows)
    assert [(p.line, p.message) for p in summary.problems] == [
        (index + 3, message) for index, (_, message) in enumerate(BAD_PATIENT_CELLS)]
    assert summary.created == 2
    with clinic.db.transaction() as conn:
        assert sorted(conn.execute(select(patients.c.external_id)).scalars()) \
            == ["GOOD1", "GOOD2"]
    clinic.close()


BAD_APPOINTMENT_CELLS = [
    (dict(start="9999-12-31T23:00-05:00"),
     "start 9999-12-31 is outside the years 1900–2200 that Touchpoint plans for — check the "
     "year"),
    (dict(start="0001-01-01T00:30+01:00"),
     "start 0001-01-01 is outside the years 1900–2200 that Touchpoint plans for — check the "
     "year"),
    (dict(start="9999-12-31 23:30"),  # local time in the practice's timezone
     "start 9999-12-31 is outside the years 1900–2200 that Touchpoint plans for — check the "
     "year"),
    (dict(start="2201-01-01T10:00:00Z"),
     "start 2201-01-01 is outside the years 1900–2200 that Touchpoint plans for — check the "
     "year"),
    (dict(therapist="T" * 101),
     "therapist is longer than the 100 characters Touchpoint keeps (101) — shorten it"),
    (dict(location="L\x00"),
     "location contains a NUL byte (an invisible control character) — re-export the file, "
     "or delete the character in the cell"),
    (dict(appointment_id="A" * 65),
     "appointment_id is longer than the 64 characters Touchpoint keeps (65) — shorten it"),
    (dict(patient_id="P" * 65),
     "patient_id is longer than the 64 characters Touchpoint keeps (65) — shorten it"),
]


def test_each_bad_appointment_cell_refuses_its_row_by_line_and_keeps_the_good_ones(
        database_url: str, tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path)
    with freeze_time(NOW):
        clinic.patients(patient("P1"))
        rows = [appointment("GOOD1", "P1", "2026-11-05T10:00:00-06:00")]
        rows += [{**appointment(f"B{index}", "P1"), **cells}
                 for index, (cells, _) in enumerate(BAD_APPOINTMENT_CELLS)]
        rows.append(appointment("GOOD2", "P1", "2200-12-31T10:00:00-06:00"))
        summary = clinic.appointments(*rows)
        assert [(p.line, p.message) for p in summary.problems] == [
            (index + 3, message) for index, (_, message) in enumerate(BAD_APPOINTMENT_CELLS)]
        assert summary.created == 2
        report = clinic.tick()  # the kept rows plan as usual, nothing is set aside
    assert report.events == 3
    assert {tp.step for tp in clinic.touch_points(journey="pre-visit")} \
        == {"three-days-before", "one-day-before", "two-hours-before"}
    with clinic.db.transaction() as conn:
        assert conn.execute(select(func.count()).select_from(events)
                            .where(events.c.failed_at.is_not(None))).scalar() == 0
    clinic.close()


def test_bad_contact_and_referrer_cells_refuse_their_rows(database_url: str,
                                                          tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path)
    with freeze_time(NOW):
        clinic.patients(patient("P1"))
        contacts = clinic.contacts(contact("C1"), contact("C2", relationship="x" * 33),
                                   contact("C3", timezone="Europe/Paris\x00"),
                                   contact("C4", receives="all," * 60 + "all"))
        referrers = clinic.referrers(referrer("DR1"), referrer("DR2", name="N" * 201),
                                     referrer("D" * 65))
    assert [str(p) for p in contacts.problems] == [
        "line 3: relationship is longer than the 32 characters Touchpoint keeps (33) — "
        "shorten it",
        "line 4: timezone contains a NUL byte (an invisible control character) — re-export "
        "the file, or delete the character in the cell",
        "line 5: receives is longer than the 200 characters Touchpoint keeps (243) — "
        "shorten it"]
    assert contacts.created == 1
    assert [str(p) for p in referrers.problems] == [
        "line 3: name is longer than the 200 characters Touchpoint keeps (201) — shorten it",
        "line 4: referrer_id is longer than the 64 characters Touchpoint keeps (65) — "
        "shorten it"]
    assert referrers.created == 1
    clinic.close()


def test_a_nul_byte_in_the_header_refuses_the_file(sqlite_url: str, tmp_path: Path) -> None:
    clinic = Clinic(sqlite_url, tmp_path)
    path = tmp_path / "nul.csv"
    path.write_text("patient_id,first_name,last_name,phone,email,language,timezone,"
                    "sms_consent,email_consent,marketing_consent,no\x00te\n", encoding="utf-8")
    with clinic.db.transaction() as conn, pytest.raises(ImportFileError, match="NUL byte"):
        import_patients(conn, path, region="US", now=clock.now())
    clinic.close()


# --------------------------------------------------------------------------- definitions


JOURNEY, SMS = ONE_REMINDER_JOURNEY, ONE_REMINDER_SMS
LONG_NAME = "r" * 65


@pytest.mark.parametrize(("old", "new", "line", "error"), [
    ("{before: 2h}", "{before: 99999999999d}", 6,
     "when: '99999999999d' is more than ten years — write at most 3650d"),
    ("{before: 2h}", "{after: 3651d}", 6,
     "when: '3651d' is more than ten years — write at most 3650d"),
    ("{before: 2h}", "{days_before: 1000000, at: \"10:00\"}", 6,
     "when: days_before 1000000 is more than 3650 days (ten years) — write at most "
     "days_before: 3650"),
    ("template: reminders/two-hours-before\n",
     "template: reminders/two-hours-before\n    expires_after: 99999999999d\n", 9,
     "'99999999999d' is more than ten years — write at most 3650d"),
    ("trigger: appointment.booked\n",
     "trigger: appointment.booked\nonce_per: 600000w\n", 4,
     "once_per: '600000w' is more than ten years — write at most 3650d"),
    ("journey: reminders", f"journey: {LONG_NAME}", 2,
     "the journey name is 65 characters long; Touchpoint keeps at most 64 — shorten it"),
    ("id: two-hours-before", f"id: {LONG_NAME}", 5,
     "the step id is 65 characters long; Touchpoint keeps at most 64 — shorten it"),
])
def test_validate_refuses_timing_no_date_can_carry_and_names_the_ledger_cannot_keep(
        tmp_path: Path, old: str, new: str, line: int, error: str) -> None:
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    (schedules / "reminders.yaml").write_text(JOURNEY.replace(old, new, 1), encoding="utf-8")
    templates = tmp_path / "templates"
    (templates / "reminders").mkdir(parents=True)
    (templates / "reminders" / "two-hours-before.sms.j2").write_text(SMS, encoding="utf-8")
    write_config(tmp_path)
    result = CliRunner().invoke(cli, ["--schedules", str(schedules), "--templates",
                                      str(templates), "validate"])
    assert result.exit_code == 1, result.output
    assert f"{schedules / 'reminders.yaml'}:{line}: {error}" in result.stderr.splitlines()
    assert "Traceback" not in result.output


def test_the_longest_allowed_timing_and_names_validate(tmp_path: Path) -> None:
    text = (JOURNEY.replace("journey: reminders", f"journey: {LONG_NAME[:64]}")
            .replace("{before: 2h}", "{days_before: 3650, at: \"10:00\"}")
            .replace("id: two-hours-before", f"id: {LONG_NAME[:64]}"))
    journey, found = parse_journey(text, "reminders.yaml")
    assert found == [] and journey is not None
    assert (journey.name, journey.steps[0].id) == (LONG_NAME[:64], LONG_NAME[:64])


def test_forecast_leaves_out_an_event_it_cannot_plan_and_says_so(
        database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Until the next tick sets it aside, an unplannable event is still pending: the
    forecast (and validate's limits report) must not fail on it."""
    clinic = Clinic(database_url, tmp_path)
    with freeze_time(NOW):
        clinic.patients(patient("P1"), patient("P2", phone="(312) 555-0102"))
        bad = book_directly(clinic, "P1", "9999-12-31T23:00:00+00:00")
        clinic.appointments(appointment("A2", "P2", "2026-11-05T10:00:00-06:00"))
        options = ["--db", database_url, "--schedules", str(LIBRARY_SCHEDULES),
                   "--templates", str(LIBRARY_TEMPLATES)]
        with caplog.at_level("WARNING", logger="touchpoint.forecast"):
            shown = invoke(*options, "forecast", "--json")
    assert shown.exit_code == 0, shown.output
    entries = json.loads(shown.stdout)["entries"]
    assert {(e["patient_id"], e["journey"]) for e in entries} >= {("P2", "pre-visit")}
    assert not [e for e in entries if e["patient_id"] == "P1" and e["journey"] == "pre-visit"]
    assert f"event {bad} cannot be planned" in caplog.text
    assert "OverflowError" in caplog.text
    # P1's welcome would show that visit (its end overflows): set aside, as the dispatcher
    # would, and P2's still forecast
    welcome = {e["patient_id"]: e for e in entries if e["journey"] == "welcome"}
    assert (welcome["P1"]["outcome"], welcome["P1"]["reason"]) == ("skip", "engine_error")
    assert welcome["P2"]["outcome"] == "send"
    clinic.close()


def test_a_touch_point_the_dispatcher_cannot_prepare_is_set_aside_and_the_rest_go(
        database_url: str, tmp_path: Path) -> None:
    """A row written around the import (a hand edit, an older version) that breaks the
    message's preparation fails alone, with its error; every other message goes."""
    clinic = Clinic(database_url, tmp_path)
    with freeze_time(NOW):
        clinic.patients(patient("P1"), patient("P2", phone="(312) 555-0102"),
                        patient("P3", phone="(312) 555-0103"))
        book_directly(clinic, "P2", "9999-12-31T23:00:00+00:00")  # the welcome shows it
        report = clinic.tick()
    assert report.dispatch.sent == 2 and report.dispatch.failed == 1
    statuses = {tp.patient_id: (tp.status, tp.reason, tp.detail)
                for tp in clinic.touch_points(journey="welcome", step="welcome")}
    assert sorted(s for s, _, _ in statuses.values()) == ["failed", "sent", "sent"]
    failed = next(v for v in statuses.values() if v[0] == "failed")
    assert failed[1] == "engine_error"
    assert failed[2] == "OverflowError: date value out of range"
    options = ["--db", database_url, "--schedules", str(LIBRARY_SCHEDULES),
               "--templates", str(LIBRARY_TEMPLATES)]
    failed_id = next(tp.id for tp in clinic.touch_points(journey="welcome", step="welcome")
                     if tp.status == "failed")
    shown = invoke(*options, "why", str(failed_id))
    assert shown.exit_code == 0, shown.output
    assert "engine_error" in shown.output and "set aside" in shown.output
    clinic.close()


def test_a_journey_whose_pending_rows_cannot_be_replanned_after_an_edit_stops_nothing(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """An edit re-plans pending touch points; if one journey's re-planning breaks, its
    rows keep their earlier timing, said in the log, and the tick still sends."""
    schedules, templates = tmp_path / "schedules", tmp_path / "message_templates"
    shutil.copytree(LIBRARY_SCHEDULES, schedules)
    shutil.copytree(LIBRARY_TEMPLATES, templates)
    clinic = Clinic(database_url, tmp_path, schedules=schedules, templates=templates)
    with freeze_time(NOW):
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
    before = {tp.step: tp.due_at for tp in clinic.touch_points(journey="pre-visit")}
    edited = schedules / "pre-visit.yaml"
    edited.write_text(edited.read_text(encoding="utf-8").replace('at: "10:00"', 'at: "09:00"'),
                      encoding="utf-8")
    definitions = load_definitions(schedules, templates, "en").raise_for_errors()
    real = runner_module.follow_edits

    def breaks_on_pre_visit(journey: Any, *args: Any) -> Any:
        if journey.name == "pre-visit":
            raise OverflowError("date value out of range")
        return real(journey, *args)

    monkeypatch.setattr(runner_module, "follow_edits", breaks_on_pre_visit)
    runner = Runner(clinic.db, clinic.settings, definitions,
                    {"sms": clinic.sms, "email": clinic.email})
    with freeze_time(NOW), caplog.at_level("ERROR", logger="touchpoint.runner"):
        clinic.patients(patient("P2", phone="(312) 555-0102"))
        report = runner.tick()
    assert report.dispatch.sent == 1  # P2's welcome
    assert [m.to for m in clinic.sms.sent][-1] == "+13125550102"
    assert {tp.step: tp.due_at for tp in clinic.touch_points(journey="pre-visit")} == before
    assert "pending touch points of journey pre-visit could not be re-planned " \
           "(OverflowError: date value out of range); they keep their earlier timing" \
        in caplog.text
    clinic.close()


def test_a_row_that_breaks_reading_the_batch_is_set_aside_and_the_rest_go(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the batch's records cannot all be read (one row breaks the lookups), each touch
    point reads its own: the one that breaks is set aside, the others are sent."""
    clinic = Clinic(database_url, tmp_path)
    with freeze_time(NOW):
        clinic.patients(patient("P1"), patient("P2", phone="(312) 555-0102"),
                        patient("P3", phone="(312) 555-0103"))
        clinic.runner.plan_pending()
        bad = {tp.id for tp in clinic.touch_points(patient="P2")}
        real = Snapshot.load.__func__  # type: ignore[attr-defined]

        def breaks_on_p2(cls: type[Snapshot], conn: Any, batch: Any, *args: Any) -> Snapshot:
            batch = list(batch)
            if any(tp.id in bad for tp in batch):
                raise OverflowError("date value out of range")
            return real(cls, conn, batch, *args)  # type: ignore[no-any-return]

        monkeypatch.setattr(Snapshot, "load", classmethod(breaks_on_p2))
        report = clinic.tick()
    assert report.dispatch.sent == 2 and report.dispatch.failed == 1
    outcomes = {(tp.patient_id in {t.patient_id for t in clinic.touch_points(patient="P2")},
                 tp.status, tp.reason) for tp in clinic.touch_points(journey="welcome",
                                                                     step="welcome")}
    assert outcomes == {(False, "sent", None), (True, "failed", "engine_error")}
    clinic.close()
