"""Plans of care (engine/plan_of_care.py, engine/patient_links.py), on SQLite and PostgreSQL:
the plan's CSV columns and API fields, the under-scheduled arithmetic, the weekly nudge
with the booking link, at-risk cases after visit 1 and 2, patient tokens, the intake link
and the report's numbers.

Practice timezone: America/Chicago. Monday 2026-11-02 15:00 UTC is 09:00 CST.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from freezegun import freeze_time
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import select

from engine import clock, plan_of_care
from engine.cases import list_cases
from engine.cli import cli
from engine.domain import Patient
from engine.fhir.imports import Entry, Options, apply
from engine.importer import PATIENT_COLUMNS, import_patients
from engine.patient_links import (
    links_for,
    make_token,
    read_token,
    serializer_for,
    signer,
    with_token,
)
from engine.plan_of_care import Plan, Shortfall, under_scheduled
from engine.report import build_report
from engine.store.records import add_opt_out, patient_from_row
from engine.store.schema import events, patients
from engine.timing import zone
from tests.support import (
    LIBRARY_SCHEDULES,
    LIBRARY_TEMPLATES,
    Clinic,
    appointment,
    patient,
    write_csv,
)
from tests.test_api import MONDAY_9AM, PATIENT, Api

MONDAY = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)  # 09:00 CST
TODAY = date(2026, 11, 2)
CHICAGO = zone("America/Chicago")
BOOKING_PAGE = "https://riversidept.example/book"


def on_plan(patient_id: str = "P1", *, visits: str = "12", per_week: str = "2",
            start: str = "2026-10-26", end: str = "", **fields: str) -> dict[str, str]:
    return patient(patient_id, plan_visits=visits, plan_visits_per_week=per_week,
                   plan_start=start, plan_end=end, **fields)


def visit(appointment_id: str, start: str, status: str = "completed",
          patient_id: str = "P1") -> dict[str, str]:
    return appointment(appointment_id, patient_id, start, status=status)


# --------------------------------------------------------------------------- arithmetic


def test_under_scheduled_is_the_plans_pace_over_the_coming_two_weeks() -> None:
    plan = Plan(visits=12, per_week=2, start=date(2026, 10, 26))
    assert under_scheduled(plan, 2, [], TODAY) == Shortfall(4, 0, TODAY, date(2026, 11, 16))
    three = [date(2026, 11, 4), date(2026, 11, 6), date(2026, 11, 10)]
    assert under_scheduled(plan, 2, three, TODAY) == Shortfall(4, 3, TODAY, date(2026, 11, 16))
    assert under_scheduled(plan, 2, [*three, date(2026, 11, 13)], TODAY) is None
    # a visit booked beyond the two weeks does not make up for the window
    assert under_scheduled(plan, 2, [*three, date(2026, 11, 20)], TODAY) is not None


def test_under_scheduled_is_bounded_by_the_plans_end_and_its_remaining_visits() -> None:
    ends_sunday = Plan(visits=12, per_week=3, start=date(2026, 10, 26), end=date(2026, 11, 8))
    # 7 days left (Mon 2 – Sun 8): 3 visits
    assert under_scheduled(ends_sunday, 4, [], TODAY) == Shortfall(3, 0, TODAY,
                                                                  date(2026, 11, 9))
    assert under_scheduled(ends_sunday, 4, [date(2026, 11, 3)] * 3, TODAY) is None
    two_left = Plan(visits=6, per_week=2, start=date(2026, 10, 1))
    assert under_scheduled(two_left, 4, [], TODAY) == Shortfall(2, 0, TODAY, date(2026, 11, 16))
    assert under_scheduled(two_left, 4, [date(2026, 11, 5)], TODAY) == Shortfall(
        2, 1, TODAY, date(2026, 11, 16))
    # the last visit is booked, after the window: nothing left to book
    assert under_scheduled(two_left, 4, [date(2026, 11, 5), date(2026, 11, 30)], TODAY) is None
    assert under_scheduled(two_left, 6, [], TODAY) is None  # complete
    ended = Plan(visits=12, per_week=2, start=date(2026, 9, 1), end=date(2026, 11, 1))
    assert under_scheduled(ended, 3, [], TODAY) is None
    # a plan starting next Monday needs its first week's visits
    later = Plan(visits=8, per_week=2, start=date(2026, 11, 9))
    assert under_scheduled(later, 0, [], TODAY) == Shortfall(2, 0, date(2026, 11, 9),
                                                            date(2026, 11, 16))


# --------------------------------------------------------------------------- import


@pytest.fixture
def clinic(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           ) -> Iterator[Clinic]:
    monkeypatch.setenv("TOUCHPOINT_BOOKING_URL", BOOKING_PAGE)
    practice = Clinic(database_url, tmp_path)
    yield practice
    practice.close()


def stored(clinic: Clinic, patient_id: str = "P1") -> Any:
    with clinic.db.transaction() as conn:
        return conn.execute(select(patients).where(patients.c.external_id == patient_id)).one()


def test_csv_plan_columns_are_checked_per_row_and_good_rows_kept(clinic: Clinic) -> None:
    with freeze_time(MONDAY):
        summary = clinic.patients(
            on_plan("P1", end="2026-12-18", intake_completed="yes",
                    booking_url="https://emr.example/book/p1"),
            on_plan("P2", visits="lots"),
            on_plan("P3", per_week=""),
            on_plan("P4", end="2026-10-01"),
            on_plan("P5", per_week="9"),
            patient("P6", intake_completed="maybe"),
            patient("P7", booking_url="emr.example/book"),
            patient("P8", plan_start="31/31/2026"),
            patient("P9"))
    assert [str(p) for p in summary.problems] == [
        "line 3: plan_visits must be a whole number from 1 to 200",
        "line 4: plan_visits_per_week is empty — a plan of care needs plan_visits, "
        "plan_visits_per_week and plan_start (plan_end is optional)",
        "line 5: plan_end is before plan_start — check the dates",
        "line 6: plan_visits_per_week must be a whole number from 1 to 7",
        "line 7: intake_completed must be yes or no",
        "line 8: booking_url is not a web address — write it whole, starting with https://",
        "line 9: plan_start is not a date — write it as 2014-05-31 (or 05/31/2014)",
    ]
    assert summary.created == 2
    row = stored(clinic, "P1")
    assert (row.plan_visits, row.plan_visits_per_week, row.plan_start, row.plan_end,
            row.intake_completed, row.booking_url) == (
        12, 2, date(2026, 10, 26), date(2026, 12, 18), True, "https://emr.example/book/p1")
    row = stored(clinic, "P9")
    assert (row.plan_visits, row.intake_completed, row.booking_url) == (None, False, None)
    assert "plan_visits" not in row.custom


def test_a_file_without_the_plan_columns_keeps_the_plan(clinic: Clinic) -> None:
    with freeze_time(MONDAY):
        clinic.patients(on_plan("P1", intake_completed="yes"))
        again = clinic.patients(patient("P1"))  # demographics only
        assert (again.unchanged, again.updated) == (1, 0)
        moved = clinic.patients(patient("P1", phone="(312) 555-0101"))
        assert moved.updated == 1
        assert (stored(clinic).plan_visits, stored(clinic).intake_completed) == (12, True)
        cleared = clinic.patients(patient("P1", phone="(312) 555-0101", plan_visits="",
                                          plan_visits_per_week="", plan_start="",
                                          intake_completed="no"))
        assert cleared.updated == 1
    assert (stored(clinic).plan_visits, stored(clinic).intake_completed) == (None, False)


def test_a_patients_file_from_before_plans_imports_unchanged(clinic: Clinic,
                                                             tmp_path: Path) -> None:
    path = write_csv(tmp_path / "old.csv", [patient("P1")], PATIENT_COLUMNS)
    with freeze_time(MONDAY), clinic.db.transaction() as conn:
        first = import_patients(conn, path, region="US", now=MONDAY)
        again = import_patients(conn, path, region="US", now=MONDAY)
    assert (first.created, again.unchanged) == (1, 1)


# --------------------------------------------------------------------------- links


def serializer(key: bytes = b"k" * 32) -> URLSafeTimedSerializer:
    return serializer_for(key)


def test_a_token_round_trips_and_a_forged_or_old_one_is_refused() -> None:
    with clock.travel_to(MONDAY):  # (tokens are stamped on the clock seam)
        token = make_token(serializer(), 42)
    with freeze_time(MONDAY + timedelta(days=10)):
        assert read_token(serializer(), token, 60 * 86400) == 42
        body, stamp, signature = token.split(".")
        tampered = f"{make_token(serializer(), 43).split('.')[0]}.{stamp}.{signature}"
        assert read_token(serializer(), tampered, 60 * 86400) is None
        assert read_token(serializer(), f"{body}.{stamp}.{signature[:-2]}xx", 86400 * 60) is None
        assert read_token(serializer(b"another key" * 3), token, 60 * 86400) is None
        other_purpose = URLSafeTimedSerializer(b"k" * 32, salt="unsubscribe").dumps(42)
        assert read_token(serializer(), other_purpose, 60 * 86400) is None
        assert read_token(serializer(), "not-a-token", 60 * 86400) is None
    with freeze_time(MONDAY + timedelta(days=61)):
        assert read_token(serializer(), token, 60 * 86400) is None


def test_with_token_keeps_the_query_the_url_has() -> None:
    assert with_token("https://x.example/book", "T.1") == "https://x.example/book?patient=T.1"
    assert with_token("https://x.example/b?loc=2", "T") == "https://x.example/b?loc=2&patient=T"


def a_patient(**fields: Any) -> Patient:
    values: dict[str, Any] = {
        "id": 7, "external_id": "P7", "first_name": "Ana", "last_name": "Reyes",
        "phone": None, "email": None, "language": None, "timezone": None,
        "sms_consent": True, "email_consent": True, "marketing_consent": False}
    return Patient(**{**values, **fields})


def test_links_booking_from_the_emr_else_the_practice_intake_until_complete(
        clinic: Clinic) -> None:
    with clinic.db.transaction() as conn:
        signing = signer(conn, clinic.settings)
    links = links_for(a_patient(), clinic.settings, signing)
    booking_token = links.booking.removeprefix(f"{BOOKING_PAGE}?patient=")
    assert read_token(signing, booking_token, 3600) == 7
    assert links.intake.startswith("https://riversidept.example/intake?patient=")
    assert read_token(signing, links.intake.partition("=")[2], 3600) == 7
    done = links_for(a_patient(intake_completed=True, booking_url="https://emr.example/b/7"),
                     clinic.settings, signing)
    assert (done.booking, done.intake) == ("https://emr.example/b/7", "")


# --------------------------------------------------------------------------- the nudge


def check(clinic: Clinic) -> plan_of_care.PlanCheck:
    """The daemon's daily plan check, now."""
    return plan_of_care.check(clinic.db, clinic.settings, clock.now())


def nudges(clinic: Clinic, patient_id: str = "P1") -> list[Any]:
    return clinic.touch_points(journey="plan-of-care", patient=patient_id)


def test_an_under_scheduled_patient_is_nudged_with_the_booking_link_once_a_week(
        clinic: Clinic) -> None:
    with freeze_time(MONDAY - timedelta(days=7)):
        clinic.patients(on_plan("P1"))
        clinic.appointments(visit("A1", "2026-10-26T10:00-05:00"))
        clinic.tick()
    with freeze_time(MONDAY):
        assert check(clinic).under_scheduled == 1
        clinic.tick()
    [nudge] = nudges(clinic)
    assert nudge.status == "sent" and nudge.channel == "sms"
    [text] = [m.body for m in clinic.sent_to(nudge.id)]
    assert f"{BOOKING_PAGE}?patient=" in text
    link = next(word for word in text.split() if word.startswith(BOOKING_PAGE))
    patient_id = stored(clinic).id
    with freeze_time(MONDAY + timedelta(hours=1)), clinic.db.transaction() as conn:
        assert read_token(signer(conn, clinic.settings), link.partition("=")[2],
                          86400) == patient_id
    for day in range(1, 7):  # still short, but nudged this week
        with freeze_time(MONDAY + timedelta(days=day)):
            assert check(clinic).under_scheduled == 0
            clinic.tick()
    assert len(nudges(clinic)) == 1
    with freeze_time(MONDAY + timedelta(days=7)):
        assert check(clinic).under_scheduled == 1
        clinic.tick()
    assert [n.status for n in nudges(clinic)] == ["sent", "sent"]


def test_the_nudge_uses_the_emrs_booking_link_when_imported(clinic: Clinic) -> None:
    with freeze_time(MONDAY):
        clinic.patients(on_plan("P1", booking_url="https://emr.example/book?p=P1"))
        check(clinic)
        clinic.tick()
    [text] = [m.body for m in clinic.sent_to(nudges(clinic)[0].id)]
    assert "https://emr.example/book?p=P1" in text and BOOKING_PAGE not in text


def test_enough_visits_booked_no_nudge_and_a_booking_before_it_goes_ends_it(
        clinic: Clinic) -> None:
    with freeze_time(MONDAY):
        clinic.patients(on_plan("P1", per_week="1"), on_plan("P2", per_week="1"))
        clinic.appointments(visit("A1", "2026-11-04T10:00-06:00", "booked"),
                            visit("A2", "2026-11-11T10:00-06:00", "booked"))
        assert check(clinic).under_scheduled == 1  # P2 only
    assert nudges(clinic, "P1") == []
    with freeze_time(MONDAY + timedelta(minutes=1)):  # booked before the tick planned it
        clinic.tick()
        clinic.appointments(visit("A3", "2026-11-04T10:00-06:00", "booked", "P2"))
    assert [n.status for n in nudges(clinic, "P2")] == ["sent"]


def test_no_nudge_once_the_plan_is_complete_or_after_an_opt_out(clinic: Clinic) -> None:
    with freeze_time(MONDAY - timedelta(days=14)):
        clinic.patients(on_plan("P1", visits="2", start="2026-10-19"),
                        on_plan("P2", phone="(312) 555-0102", email=""))
        clinic.appointments(visit("A1", "2026-10-19T10:00-05:00"),
                            visit("A2", "2026-10-22T10:00-05:00"))
    with freeze_time(MONDAY):
        with clinic.db.transaction() as conn:
            add_opt_out(conn, "sms", "+13125550102", "all", "reply", "STOP", MONDAY)
        assert check(clinic).under_scheduled == 1  # P2; P1's plan is done
        clinic.tick()
    assert nudges(clinic, "P1") == []
    [nudge] = nudges(clinic, "P2")
    assert (nudge.status, nudge.reason) == ("skipped", "opted_out")
    assert clinic.sms.sent == [] and clinic.email.sent == []


def test_removed_discharged_and_ended_plans_are_not_checked(clinic: Clinic) -> None:
    with freeze_time(MONDAY):
        clinic.patients(on_plan("P1", discharged_on="2026-11-01"),
                        on_plan("P2", end="2026-11-01"), on_plan("P3", start="2026-12-01"))
        assert check(clinic).under_scheduled == 0


# --------------------------------------------------------------------------- at risk


def at_risk_cases(clinic: Clinic) -> list[Any]:
    with clinic.db.transaction() as conn:
        return [c for c in list_cases(conn) if c.cause == "at_risk"]


def test_nothing_booked_after_visit_1_opens_an_at_risk_case_after_the_grace(
        clinic: Clinic) -> None:
    with freeze_time(MONDAY - timedelta(days=3)):  # Friday
        clinic.patients(on_plan("P1"))
        clinic.appointments(visit("A1", "2026-10-30T08:00-05:00"))
    with freeze_time(datetime(2026, 11, 1, 12, 0, tzinfo=UTC)):  # 1 day and a bit later
        assert check(clinic).at_risk == 0
    with freeze_time(MONDAY):
        assert check(clinic).at_risk == 1
        assert check(clinic).at_risk == 0  # once per visit
    [case] = at_risk_cases(clinic)
    assert case.status == "open"
    assert case.detail == "came to visit 1 of 12 on 2026-10-30 and has nothing booked since"
    with clinic.db.transaction() as conn:
        kinds = [e.kind for e in conn.execute(select(events.c.kind))]
    assert "case.opened" in kinds


def test_visit_2_opens_its_own_case_and_a_booked_next_visit_none(clinic: Clinic) -> None:
    with freeze_time(MONDAY - timedelta(days=7)):
        clinic.patients(on_plan("P1"), on_plan("P2"))
        clinic.appointments(visit("A1", "2026-10-26T08:00-05:00"),
                            visit("A2", "2026-10-29T08:00-05:00"),
                            visit("B1", "2026-10-26T09:00-05:00", patient_id="P2"),
                            visit("B2", "2026-10-29T09:00-05:00", patient_id="P2"),
                            visit("B3", "2026-11-05T09:00-06:00", "booked", "P2"))
    with freeze_time(MONDAY):
        assert check(clinic).at_risk == 1
    [case] = at_risk_cases(clinic)
    assert case.detail.startswith("came to visit 2 of 12")
    with freeze_time(MONDAY + timedelta(days=14)):  # visit 3 done: no longer at risk
        clinic.appointments(visit("A3", "2026-11-10T08:00-06:00"))
        assert check(clinic).at_risk == 0


# --------------------------------------------------------------------------- report


def test_report_plan_completion_drop_outs_and_nudges(clinic: Clinic) -> None:
    with freeze_time(MONDAY - timedelta(days=30)):
        clinic.patients(on_plan("P1", visits="2", start="2026-10-01"),
                        on_plan("P2", visits="6", start="2026-10-01", end="2026-10-31"),
                        on_plan("P3", start="2026-10-01"),
                        on_plan("P4", start="2026-10-01"))
        clinic.appointments(
            visit("A1", "2026-10-05T10:00-05:00"), visit("A2", "2026-10-08T10:00-05:00"),
            visit("B1", "2026-10-05T11:00-05:00", patient_id="P2"),
            visit("B2", "2026-10-08T11:00-05:00", patient_id="P2"),
            visit("C1", "2026-10-05T12:00-05:00", patient_id="P3"),
            visit("D1", "2026-10-26T12:00-05:00", patient_id="P4"))
    with freeze_time(MONDAY):
        check(clinic)  # P3 and P4 are under-scheduled
        clinic.tick()
    with freeze_time(MONDAY + timedelta(days=3)):
        clinic.appointments(visit("D2", "2026-11-09T12:00-06:00", "booked", "P4"))
        clinic.tick()
    with freeze_time(MONDAY + timedelta(days=4)), clinic.db.transaction() as conn:
        data = build_report(conn, clinic.definitions, MONDAY - timedelta(days=40),
                            MONDAY + timedelta(days=4), CHICAGO)["plan_of_care"]
    assert data == {"plans_finished": 2, "plans_completed": 1, "completion_rate": 0.5,
                    "drop_outs_by_visit": {"1": 1, "2": 1}, "nudges_sent": 2,
                    "booked_within_7_days": 1}
    assert plan_of_care.report_lines(data)[0] == \
        "Plans of care: 1 of 2 finished plans completed (50%)."


# --------------------------------------------------------------------------- API


@pytest.fixture
def api(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("TOUCHPOINT_BOOKING_URL", BOOKING_PAGE)
    rig = Api(database_url, tmp_path)
    yield rig
    rig.close()


def test_api_put_patient_carries_the_plan_and_names_every_bad_field(api: Api) -> None:
    plan = {"plan_visits": 12, "plan_visits_per_week": 2, "plan_start": "2026-10-26",
            "plan_end": "2026-12-18", "intake_completed": True}
    assert api.put("/patients/P1", {**PATIENT, **plan}).status_code == 201
    row = api.rows(patients)[0]
    assert (row.plan_visits, row.plan_visits_per_week, row.plan_start, row.plan_end,
            row.intake_completed) == (12, 2, date(2026, 10, 26), date(2026, 12, 18), True)
    # fields left out keep what is stored
    assert api.put("/patients/P1", PATIENT).json()["result"] == "unchanged"
    assert api.rows(patients)[0].plan_visits == 12
    bad = api.put("/patients/P1", {**PATIENT, "plan_visits": 0, "plan_visits_per_week": "x",
                                   "plan_start": "2026-10-26", "booking_url": "ftp://x"})
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == [
        "plan_visits", "plan_visits_per_week", "booking_url"]
    assert api.rows(patients)[0].plan_visits == 12  # nothing applied
    # one plan field given: the others left out are cleared with it
    cleared = api.put("/patients/P1", {**PATIENT, "plan_visits": None})
    assert cleared.json()["result"] == "updated"
    assert (api.rows(patients)[0].plan_visits, api.rows(patients)[0].plan_end) == (None, None)


def test_api_patient_token_answers_whose_it_is_and_refuses_a_forged_one(api: Api) -> None:
    api.put("/patients/P1", PATIENT)
    verifier = api.key("booking-page", "read:patient-tokens")
    with api.clinic.db.transaction() as conn:
        signing = signer(conn, api.clinic.settings)
        token = links_for(patient_from_row(conn.execute(select(patients)).one()),
                          api.clinic.settings, signing).booking.partition("=")[2]
    found = api.get(f"/patient-tokens/{token}", verifier)
    assert (found.status_code, found.json()) == (200, {"patient_id": "P1"})
    body, stamp, signature = token.split(".")
    forged = api.get(f"/patient-tokens/{body}.{stamp}.{signature[::-1]}", verifier)
    assert forged.status_code == 404
    assert api.get(f"/patient-tokens/{token}").status_code == 403  # read:log is not enough
    with clock.travel_to(MONDAY_9AM + timedelta(days=61)):  # links.max_age: 60 days
        assert api.get(f"/patient-tokens/{token}", verifier).status_code == 404
    api.client.delete("/api/v1/patients/P1", headers={"Authorization": f"Bearer {api.write}"})
    assert api.get(f"/patient-tokens/{token}", verifier).status_code == 404


# --------------------------------------------------------------------------- FHIR

FHIR_EXAMPLES = Path(__file__).parent / "payloads" / "fhir"


def care_plan(**changes: Any) -> dict[str, Any]:
    """A physiotherapy CarePlan shaped as the specification's examples (CarePlan-f201's
    subject, period and activity.detail), with the scheduledTiming a plan of care has:
    12 visits, twice a week."""
    plan: dict[str, Any] = {
        "resourceType": "CarePlan", "id": "pt-plan", "status": "active", "intent": "plan",
        "subject": {"reference": "Patient/example", "display": "Peter James Chalmers"},
        "period": {"start": "2026-10-26", "end": "2026-12-18"},
        "activity": [
            {"detail": {"kind": "ServiceRequest", "status": "completed",
                        "code": {"coding": [{"system": "http://snomed.info/sct",
                                             "code": "306005",
                                             "display": "Echography of kidney"}]}}},
            {"detail": {
                "kind": "ServiceRequest", "status": "in-progress", "doNotPerform": False,
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91251008",
                                     "display": "Physical therapy procedure"}]},
                "scheduledTiming": {"repeat": {"count": 12, "frequency": 2, "period": 1,
                                               "periodUnit": "wk"}}}}]}
    plan.update(changes)
    return plan


def test_a_fhir_care_plan_sets_the_patients_plan_of_care(clinic: Clinic) -> None:
    patient_example = json.loads((FHIR_EXAMPLES / "Patient-example.json").read_text("utf-8"))
    draft = care_plan(id="draft", status="draft")
    daily = care_plan(id="daily", activity=[{"detail": {
        "status": "in-progress", "scheduledString": "daily"}}])
    options = Options(region="AU", practice_tz="America/Chicago")  # (Peter is Australian)
    with freeze_time(MONDAY), clinic.db.transaction() as conn:
        summary = apply(conn, [Entry("entry 1", patient_example), Entry("entry 2", care_plan()),
                               Entry("entry 3", draft), Entry("entry 4", daily)],
                        "bundle.json", options, MONDAY)
    assert [str(p) for p in summary.problems] == [
        "CarePlan/draft: status draft: only active, on-hold, completed CarePlans carry a "
        "plan of care",
        "CarePlan/daily: has no activity.detail.scheduledTiming.repeat with a frequency per "
        "d, wk or mo: no plan of care to take from it"]
    assert summary.as_dict()["resources"]["CarePlan"]["updated"] == 1
    row = stored(clinic, "example")
    assert (row.plan_visits, row.plan_visits_per_week, row.plan_start, row.plan_end) == (
        12, 2, date(2026, 10, 26), date(2026, 12, 18))
    # the Patient again (an update from the EMR) keeps the plan; the CarePlan again is unchanged
    with freeze_time(MONDAY), clinic.db.transaction() as conn:
        again = apply(conn, [Entry("entry 1", patient_example), Entry("entry 2", care_plan())],
                      "bundle.json", options, MONDAY)
    assert again.as_dict()["resources"]["CarePlan"]["unchanged"] == 1
    assert stored(clinic, "example").plan_visits == 12


def test_plan_check_command_and_the_reports_plan_lines(clinic: Clinic) -> None:
    with freeze_time(MONDAY - timedelta(days=3)):
        clinic.patients(on_plan("P1"))
        clinic.appointments(visit("A1", "2026-10-30T08:00-05:00"))
    args = ["--config", str(clinic.config), "--db", clinic.settings.database_url,
            "--schedules", str(LIBRARY_SCHEDULES), "--templates", str(LIBRARY_TEMPLATES)]
    with freeze_time(MONDAY):
        checked = CliRunner().invoke(cli, [*args, "plan-check", "--json"])
        assert checked.exit_code == 0, checked.output
        assert json.loads(checked.output) == {"under_scheduled": 1, "at_risk": 1}
        clinic.tick()
        report = CliRunner().invoke(cli, [*args, "report"])
    assert report.exit_code == 0, report.output
    assert "Plans of care: 0 of 0 finished plans completed." in report.output
    assert "nudges: 1 sent, 0 followed by a booking within 7 days." in report.output
    assert "at risk" in report.output
