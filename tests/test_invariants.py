"""PRODUCT.md invariants 1–5, end to end, on SQLite and PostgreSQL.

The clock is moved with freezegun; the engine reads it through engine.clock.
Practice timezone: America/Chicago (CST, UTC-6, after DST ended on 2026-11-01).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlalchemy import update

from engine import clock
from engine.definitions.journeys import PRIORITIES
from engine.outcomes import FINAL, Status
from engine.store.schema import appointments as appointments_table
from tests.support import Clinic, appointment, patient, write_config, write_csv


@pytest.fixture
def clinic(database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    practice = Clinic(database_url, tmp_path)
    yield practice
    practice.close()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# --------------------------------------------------------------------------- 1. never twice


def test_a_booking_plans_each_step_once_and_sends_it_once(clinic: Clinic) -> None:
    with freeze_time("2026-11-02T14:00:00Z") as frozen:  # Mon 08:00 CST
        clinic.patients(patient("P1"))
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
        reminder = clinic.one("pre-visit", "three-days-before")
        assert reminder.status == Status.PLANNED
        assert reminder.due_at == utc("2026-11-02T10:00:00-06:00")

        frozen.move_to("2026-11-02T16:00:00Z")  # Mon 10:00 CST
        clinic.tick()
        clinic.tick()  # a second pass finds nothing to do
        # re-importing the very same data changes nothing and plans nothing new
        summary = clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        assert summary.unchanged == 1 and not summary.events
        report = clinic.tick()
        assert report.planned == 0

    reminder = clinic.one("pre-visit", "three-days-before")
    assert reminder.status == Status.SENT and reminder.channel == "sms"
    assert len(clinic.sent_to(reminder.id)) == 1
    assert Counter((tp.journey, tp.step) for tp in clinic.touch_points()) == {
        ("pre-visit", "three-days-before"): 1, ("pre-visit", "one-day-before"): 1,
        ("pre-visit", "two-hours-before"): 1,
        ("welcome", "welcome"): 1, ("welcome", "what-to-expect"): 1}


def test_replanning_the_same_event_after_a_crash_adds_nothing(clinic: Clinic) -> None:
    """The planner's unique key makes a second pass over an event a no-op."""
    from sqlalchemy import update as sql_update

    from engine.store.schema import events

    with freeze_time("2026-11-02T14:00:00Z"):
        clinic.patients(patient("P1"))
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
        before = len(clinic.touch_points())
        with clinic.db.transaction() as conn:  # as if the process died before marking them
            conn.execute(sql_update(events).values(processed_at=None))
        report = clinic.tick()
    assert report.events > 0 and report.planned == 0
    assert len(clinic.touch_points()) == before


@pytest.mark.slow
def test_two_run_once_processes_at_the_same_moment_send_each_touch_point_once(
        database_url: str, tmp_path: Path) -> None:
    write_config(tmp_path)
    outbox = tmp_path / "outbox.jsonl"
    env = {**os.environ, "TOUCHPOINT_DATABASE_URL": database_url,
           "TOUCHPOINT_FAKE_OUTBOX": str(outbox), "TOUCHPOINT_BATCH_SIZE": "3",
           "TOUCHPOINT_SCHEDULES": str(Path(__file__).parent.parent / "schedules"),
           "TOUCHPOINT_TEMPLATES": str(Path(__file__).parent.parent / "message_templates")}
    people = [patient(f"P{i}", phone=f"(312) 555-{i:04d}") for i in range(100, 140)]
    write_csv(tmp_path / "patients.csv", people, people[0].keys())
    command = [sys.executable, "-m", "engine", "--now", "2026-11-02T15:00:00Z"]
    subprocess.run([*command, "import", "patients", "patients.csv"], cwd=tmp_path, env=env,
                   check=True, capture_output=True)
    runs = [subprocess.Popen([*command, "run", "--once", "--json"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [run.communicate(timeout=120) for run in runs]
    assert all(run.returncode == 0 for run in runs), results
    reports = [json.loads(out) for out, _ in results]
    sent_ids = [json.loads(line)["touch_point_id"] for line in outbox.read_text().splitlines()]
    # 40 welcome texts (the what-to-expect email is due 10 minutes later)
    assert len(sent_ids) == 40
    assert len(set(sent_ids)) == 40
    assert sum(r["dispatch"]["sent"] for r in reports) == 40


# --------------------------------------------------------------------------- 2. never stale


def test_no_reminder_for_a_cancelled_appointment(clinic: Clinic) -> None:
    with freeze_time("2026-11-02T14:00:00Z") as frozen:
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
        frozen.move_to("2026-11-03T12:00:00Z")
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00",
                                        status="cancelled"))
        frozen.move_to("2026-11-02T16:00:00Z")
        clinic.tick()
        frozen.move_to("2026-11-05T14:00:00Z")
        clinic.tick()
    assert clinic.sms.sent == [] and clinic.email.sent == []
    for tp in clinic.touch_points(journey="pre-visit"):
        assert (tp.status, tp.reason) == (Status.CANCELLED, "appointment_cancelled")


def test_cancellation_not_yet_planned_is_caught_at_send_time(clinic: Clinic) -> None:
    """Even before the cancellation event is processed, the send-time guard sees it."""
    with freeze_time("2026-11-02T14:00:00Z") as frozen:
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
        with clinic.db.transaction() as conn:  # the EMR row changed; no event yet
            conn.execute(update(appointments_table).values(status="cancelled"))
        frozen.move_to("2026-11-02T16:00:00Z")
        clinic.runner.dispatcher.run()  # type: ignore[union-attr]
    reminder = clinic.one("pre-visit", "three-days-before")
    assert (reminder.status, reminder.reason) == (Status.CANCELLED, "appointment_cancelled")
    assert clinic.sms.sent == []


def test_a_moved_appointment_gets_reminders_for_its_new_time_only(clinic: Clinic) -> None:
    with freeze_time("2026-11-02T14:00:00Z") as frozen:
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
        frozen.move_to("2026-11-02T15:00:00Z")
        summary = clinic.appointments(appointment("A1", "P1", "2026-11-10T15:00:00-06:00"))
        assert summary.events == {"appointment.rescheduled": 1}
        clinic.tick()
        frozen.move_to("2026-11-02T16:00:00Z")  # the old reminder's moment
        clinic.tick()
        frozen.move_to("2026-11-07T16:00:00Z")  # Sat 10:00 CST, 3 days before the new time
        clinic.tick()
    old, new = clinic.touch_points(journey="pre-visit", step="three-days-before")
    assert (old.status, old.reason) == (Status.CANCELLED, "anchor_changed")
    assert new.status == Status.SENT and new.due_at == utc("2026-11-07T10:00:00-06:00")
    assert [m.touch_point_id for m in clinic.sms.sent] == [new.id]
    assert "Tue, Nov 10" in clinic.sms.sent[0].body and "3:00 PM" in clinic.sms.sent[0].body


def test_no_win_back_after_a_booking(clinic: Clinic) -> None:
    with freeze_time("2026-10-01T15:00:00Z") as frozen:
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(appointment("A0", "P1", "2026-10-01T09:00:00-05:00",
                                        status="completed"))
        frozen.move_to("2026-10-31T06:00:00Z")  # 30 days later: the lapse is noticed
        clinic.tick()
        day_30 = clinic.one("win-back", "day-30")
        assert day_30.status == Status.PLANNED
        assert day_30.due_at == utc("2026-10-31T11:00:00-05:00")
        clinic.appointments(appointment("A1", "P1", "2026-11-09T09:00:00-06:00"))
        frozen.move_to("2026-10-31T16:00:00Z")
        clinic.tick()
    for tp in clinic.touch_points(journey="win-back"):
        assert (tp.status, tp.reason) == (Status.CANCELLED, "journey_exited")
    assert not [m for m in clinic.sms.sent if m.journey == "win-back"]


# --------------------------------------------------------------------------- 3. never at night


def test_reminders_stay_at_ten_local_across_the_dst_change(clinic: Clinic) -> None:
    """America/Chicago leaves DST on Sun 2026-11-01: 10:00 local is 15:00Z, then 16:00Z."""
    with freeze_time("2026-10-28T14:00:00Z"):
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(
            appointment("A1", "P1", "2026-10-31T10:00:00-05:00"),  # Sat, CDT
            appointment("A2", "P1", "2026-11-04T10:00:00-06:00"))  # Wed, CST
        clinic.tick()
    first, second = clinic.touch_points(journey="pre-visit", step="three-days-before")
    assert first.due_at == datetime(2026, 10, 28, 15, 0, tzinfo=UTC)
    assert second.due_at == datetime(2026, 11, 1, 16, 0, tzinfo=UTC)  # the change day


def test_quiet_hours_follow_the_recipients_timezone(clinic: Clinic) -> None:
    """A patient in Los Angeles is not texted at 07:00 Pacific, even if it is 09:00 here."""
    with freeze_time("2026-11-02T15:00:00Z") as frozen:  # 09:00 Chicago, 07:00 LA
        clinic.patients(patient("P1"), patient("P2", timezone="America/Los_Angeles",
                                               phone="(213) 555-0101"))
        clinic.tick()
        here, there = (clinic.one("welcome", "welcome", patient=p) for p in ("P1", "P2"))
        assert here.status == Status.SENT
        assert there.status == Status.PLANNED
        assert there.due_at == utc("2026-11-02T08:00:00-08:00")
        frozen.move_to("2026-11-02T15:59:00Z")
        clinic.tick()
        assert clinic.one("welcome", "welcome", patient="P2").status == Status.PLANNED
        frozen.move_to("2026-11-02T16:00:00Z")
        clinic.tick()
    assert clinic.one("welcome", "welcome", patient="P2").status == Status.SENT


def test_a_message_due_at_night_is_deferred_at_send_time(clinic: Clinic) -> None:
    with freeze_time("2026-11-02T14:00:00Z") as frozen:
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
        frozen.move_to("2026-11-03T03:30:00Z")  # the daemon was down; it is 21:30 CST
        clinic.tick()
        reminder = clinic.one("pre-visit", "three-days-before")
        assert reminder.status == Status.PLANNED
        assert reminder.due_at == utc("2026-11-03T08:00:00-06:00")
        assert clinic.history(reminder)[-1].reason == "quiet_hours"
        frozen.move_to("2026-11-03T14:00:00Z")
        clinic.tick()
    assert clinic.one("pre-visit", "three-days-before").status == Status.SENT


def test_an_early_visits_two_hour_reminder_is_skipped_not_sent_at_night(clinic: Clinic) -> None:
    """07:30 visit: 2 h before is 05:30, quiet hours move it to 08:00 — after the visit."""
    with freeze_time("2026-11-02T14:00:00Z"):
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-05T07:30:00-06:00"))
        clinic.tick()
    reminder = clinic.one("pre-visit", "two-hours-before")
    assert (reminder.status, reminder.reason) == (Status.SKIPPED, "too_late")
    assert "quiet hours" in (reminder.detail or "")


def test_a_three_days_before_reminder_for_a_visit_booked_tomorrow_is_not_sent_late(
        clinic: Clinic) -> None:
    with freeze_time("2026-11-02T14:00:00Z"):
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-03T15:00:00-06:00"))
        clinic.tick()
    reminder = clinic.one("pre-visit", "three-days-before")
    assert (reminder.status, reminder.reason) == (Status.SKIPPED, "too_late")
    assert clinic.sms.sent == []
    # the day-before reminder is still ahead (Mon 10:00 CST) and will go
    day_before = clinic.one("pre-visit", "one-day-before")
    assert (day_before.status, day_before.due_at) == (Status.PLANNED,
                                                      utc("2026-11-02T10:00:00-06:00"))


# --------------------------------------------------------------------------- 4. consent first


def test_sms_without_consent_falls_back_to_email(clinic: Clinic) -> None:
    with freeze_time("2026-11-02T14:00:00Z") as frozen:
        clinic.patients(patient("P1", sms_consent="no"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
        frozen.move_to("2026-11-02T16:00:00Z")
        clinic.tick()
        frozen.move_to("2026-11-05T14:00:00Z")
        clinic.tick()
    three_days = clinic.one("pre-visit", "three-days-before")
    assert (three_days.status, three_days.channel) == (Status.SENT, "email")
    two_hours = clinic.one("pre-visit", "two-hours-before")  # sms only
    assert (two_hours.status, two_hours.reason) == (Status.SKIPPED, "no_consent")
    assert clinic.sms.sent == []


def test_marketing_needs_marketing_consent(clinic: Clinic) -> None:
    with freeze_time("2026-10-01T15:00:00Z") as frozen:
        clinic.patients(patient("P1", marketing_consent="no"), baseline=True)
        clinic.appointments(appointment("A0", "P1", "2026-10-01T09:00:00-05:00",
                                        status="completed"))
        frozen.move_to("2026-10-31T16:00:00Z")
        clinic.tick()
    day_30 = clinic.one("win-back", "day-30")
    assert (day_30.status, day_30.reason) == (Status.SKIPPED, "no_consent")
    assert "marketing" in (day_30.detail or "")


def test_an_opted_out_number_gets_nothing(clinic: Clinic) -> None:
    from engine.store.schema import opt_outs

    with freeze_time("2026-11-02T14:00:00Z") as frozen:
        clinic.patients(patient("P1", email=""), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
        with clinic.db.transaction() as conn:
            conn.execute(opt_outs.insert().values(channel="sms", address="+13125550100",
                                                  purpose="all", source="test",
                                                  created_at=clock.now()))
        frozen.move_to("2026-11-02T16:00:00Z")
        clinic.tick()
    reminder = clinic.one("pre-visit", "three-days-before")
    assert (reminder.status, reminder.reason) == (Status.SKIPPED, "opted_out")


def test_no_contact_is_a_reason_not_an_error(clinic: Clinic) -> None:
    with freeze_time("2026-11-02T14:00:00Z"):
        clinic.patients(patient("P1", phone="", email=""))
        clinic.tick()
    welcome = clinic.one("welcome", "welcome")
    assert (welcome.status, welcome.reason) == (Status.SKIPPED, "no_contact")


# --------------------------------------------------------------------------- 5. accounted for


@pytest.mark.slow
def test_every_touch_point_of_the_demo_ends_with_a_status_and_reason(
        database_url: str, tmp_path: Path) -> None:
    from engine.cases import list_cases
    from engine.demo import run_demo

    clinic = Clinic(database_url, tmp_path)
    result = run_demo(clinic.db, clinic.settings, clinic.definitions, days=60)
    assert result.simulation.sent > 500
    points = clinic.touch_points()
    statuses = Counter(tp.status for tp in points)
    assert statuses[Status.SENDING] == 0 and statuses[Status.UNKNOWN] == 0
    end = datetime(2026, 12, 4, 13, 0, tzinfo=UTC)
    for tp in points:
        if tp.status == Status.PLANNED:  # still ahead of the simulated clock
            assert tp.due_at > end - timedelta(minutes=5), tp
            continue
        assert tp.status in FINAL | {Status.SENT}, tp
        if tp.status in (Status.SKIPPED, Status.CANCELLED, Status.FAILED):
            assert tp.reason, tp
        if tp.status == Status.SENT:
            assert tp.sent_at is not None and tp.content
        assert clinic.history(tp), tp
    for kind in ("too_late", "appointment_cancelled", "anchor_changed", "no_consent",
                 "journey_exited"):
        assert any(tp.reason == kind for tp in points), kind
    # nothing that matters is silenced: no reminder, no satisfaction question skipped by a
    # limit (invariant 8)
    limited = [tp for tp in points
               if tp.status == Status.SKIPPED and tp.reason == "frequency_cap"]
    assert not [tp for tp in limited if clinic.definitions.priority(
        tp.journey, tp.step, tp.purpose) >= PRIORITIES["question"]]
    # the safety net and the wider customer are part of the story: a minor's parent, the
    # referring offices, the cases the replies and no-shows opened
    sent = [tp for tp in points if tp.status == Status.SENT]
    assert any(tp.recipient.startswith("contact:") for tp in sent)
    assert {tp.journey for tp in sent} >= {"referral-loop", "recovery", "review-request"}
    with clinic.db.transaction() as conn:
        causes = {c.cause for c in list_cases(conn)}
    assert causes == {"low_score", "complaint", "no_show", "late_cancellation"}
    clinic.close()
