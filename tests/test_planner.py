"""The planner (engine/planner.py) as a pure function: events and journeys in, a Plan out.

No database, no clock: journeys are parsed from YAML text, events and patients are built
by hand. Practice timezone: America/Chicago (CDT, UTC-5, until DST ends on 2026-11-01).
"""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.definitions.journeys import Journey, Step, parse_journey
from engine.domain import Event, Patient
from engine.outcomes import Reason, Status
from engine.planner import Condition, Exit, Plan, Planned, PlanningRules, plan
from engine.timing import QuietHours

CHICAGO = "America/Chicago"
MADRID = "Europe/Madrid"
RULES = PlanningRules(QuietHours(), CHICAGO)

PRE_VISIT = """
version: 1
journey: pre-visit
purpose: transactional
trigger: appointment.booked
exit_on: [appointment.cancelled]
steps:
  - id: two-days-before
    when: {days_before: 2, at: "10:00"}
    channels: [sms, email]
    template: pre-visit/two-days-before
  - id: two-hours-before
    when: {before: 2h}
    channels: [sms]
    template: pre-visit/two-hours-before
"""

WELCOME = """
version: 1
journey: welcome
purpose: transactional
trigger: patient.created
exit_on: [appointment.cancelled]
steps:
  - id: welcome
    when: immediately
    channels: [sms, email]
    template: welcome/welcome
  - id: what-to-expect
    when: {after: 10m}
    channels: [email]
    template: welcome/what-to-expect
"""

FOLLOW_UP = """
version: 1
journey: follow-up
purpose: transactional
trigger: appointment.completed
steps:
  - id: thank-you
    when: {days_after: 0, at: "18:30"}
    catch_up: true
    expires_after: 3h
    channels: [sms, email]
    template: follow-up/thank-you
  - id: home-exercise-nudge
    when: {days_after: 2, at: "17:00"}
    channels: [sms, email]
    template: follow-up/home-exercise-nudge
    exit_on: [appointment.booked]
  - id: satisfaction
    when: {days_after: 1, at: "12:00"}
    only_if: "appointment.visit_number == 3"
    channels: [sms]
    template: follow-up/satisfaction
"""

WIN_BACK = """
version: 1
journey: win-back
purpose: marketing
trigger: {event: patient.lapsed, after: 30d}
exit_on: [appointment.booked]
steps:
  - id: day-30
    when: {days_after: 30, at: "11:00"}
    channels: [sms, email]
    template: win-back/day-30
  - id: day-60
    when: {days_after: 60, at: "11:00"}
    channels: [email, sms]
    template: win-back/day-60
  - id: day-90
    when: {days_after: 90, at: "11:00"}
    channels: [email]
    template: win-back/day-90
"""

TIMING = """
version: 1
journey: timing
trigger: appointment.booked
steps:
  - id: now
    when: immediately
    channels: [sms]
    template: t/now
  - id: two-hours-before
    when: {before: 2h}
    channels: [sms]
    template: t/before
  - id: ninety-after
    when: {after: 90m}
    channels: [sms]
    template: t/after
  - id: two-days-before
    when: {days_before: 2, at: "10:00"}
    channels: [sms]
    template: t/days-before
  - id: next-day
    when: {days_after: 1, at: "18:00"}
    channels: [sms]
    template: t/days-after
"""


QUIET_DETAIL = re.compile(r"quiet hours \(08:00–21:00 (?P<zone>\S+)\) would delay it to "
                          r"(?P<delayed>\S+), past its deadline (?P<deadline>\S+)")


def journey(text: str) -> Journey:
    parsed, diagnostics = parse_journey(textwrap.dedent(text), "x.yaml")
    assert parsed is not None and not diagnostics, [str(d) for d in diagnostics]
    return parsed


def library() -> list[Journey]:
    return [journey(t) for t in (WELCOME, PRE_VISIT, FOLLOW_UP, WIN_BACK)]


def make_patient(timezone: str | None = None, patient_id: int = 7) -> Patient:
    return Patient(id=patient_id, external_id=f"P{patient_id}", first_name="Ana",
                   last_name="Lopez", phone="+13125550100", email="ana@example.com",
                   language="en", timezone=timezone, sms_consent=True, email_consent=True,
                   marketing_consent=True)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def appointment_event(kind: str, start: str, at: str, *, appointment_id: int = 12,
                      version: int = 1, duration: int = 45, event_id: int = 100,
                      **extra: Any) -> Event:
    data: dict[str, Any] = {"appointment": f"A{appointment_id}", "start": start,
                            "duration_minutes": duration, "version": version,
                            "status": "booked", **extra}
    return Event(id=event_id, kind=kind, patient_id=7, appointment_id=appointment_id,
                 occurred_at=utc(at), data=data)


def by_step(result: Plan) -> dict[str, Planned]:
    steps = {p.step: p for p in result.planned}
    assert len(steps) == len(result.planned), "a step was planned twice"
    return steps


def wall(instant: datetime, tz: str) -> str:
    return instant.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")


# --------------------------------------------------------------------------- anchors


def test_an_appointment_journey_is_anchored_on_the_appointment_version_in_the_event() -> None:
    pre_visit = journey(PRE_VISIT)
    event = appointment_event("appointment.booked", "2026-10-14T15:00:00-05:00",
                              "2026-10-05T14:00:00Z", version=3)
    result = plan(event, make_patient(), [pre_visit], RULES)

    assert [p.anchor for p in result.planned] == ["appointment:12:v3", "appointment:12:v3"]
    first = result.planned[0]
    assert first.key == (7, "patient", "pre-visit", "two-days-before", "appointment:12:v3")
    assert (first.appointment_id, first.event_id, first.purpose) == (12, 100, "transactional")
    assert first.step_fingerprint == pre_visit.steps[0].fingerprint()
    assert result.exits == ()


def test_a_patient_journey_is_anchored_on_the_patient() -> None:
    event = Event(id=5, kind="patient.created", patient_id=7, appointment_id=None,
                  occurred_at=utc("2026-10-05T14:00:00Z"), data={})
    steps = by_step(plan(event, make_patient(), library(), RULES))

    assert set(steps) == {"welcome", "what-to-expect"}  # nothing else reacts to a new patient
    assert {p.anchor for p in steps.values()} == {"patient:7"}
    assert {p.appointment_id for p in steps.values()} == {None}
    assert steps["welcome"].due_at == utc("2026-10-05T14:00:00Z")
    assert steps["what-to-expect"].due_at == utc("2026-10-05T14:10:00Z")
    assert steps["what-to-expect"].expires_at == utc("2026-10-06T14:10:00Z")  # default 1 day


def test_win_back_is_anchored_on_the_last_visit_and_counts_days_from_it() -> None:
    event = Event(id=9, kind="patient.lapsed", patient_id=7, appointment_id=None,
                  occurred_at=utc("2026-10-01T05:00:00Z"),  # local midnight, 30 days later
                  data={"after": "30d", "last_visit_id": 55,
                        "last_visit_at": "2026-09-01T09:00:00-05:00"})
    steps = by_step(plan(event, make_patient(), library(), RULES))

    assert set(steps) == {"day-30", "day-60", "day-90"}
    assert {p.anchor for p in steps.values()} == {"lapse:55"}
    assert {p.purpose for p in steps.values()} == {"marketing"}
    # 11:00 local each time, across the end of DST on 2026-11-01
    assert steps["day-30"].due_at == utc("2026-10-01T11:00:00-05:00")
    assert steps["day-60"].due_at == utc("2026-10-31T11:00:00-05:00")
    assert steps["day-90"].due_at == utc("2026-11-30T11:00:00-06:00")
    assert {p.status for p in steps.values()} == {Status.PLANNED}


@pytest.mark.parametrize(("after", "triggers"), [
    ("30d", True),
    ("720h", True),  # the same duration, written differently
    ("60d", False),
    (None, False),
])
def test_a_lapse_only_triggers_journeys_waiting_for_that_long(after: str | None,
                                                              triggers: bool) -> None:
    data: dict[str, Any] = {"last_visit_id": 55, "last_visit_at": "2026-09-01T09:00:00-05:00"}
    if after is not None:
        data["after"] = after
    event = Event(id=9, kind="patient.lapsed", patient_id=7, appointment_id=None,
                  occurred_at=utc("2026-10-01T05:00:00Z"), data=data)
    result = plan(event, make_patient(), library(), RULES)
    assert [p.step for p in result.planned] == (["day-30", "day-60", "day-90"] if triggers
                                                else [])


# --------------------------------------------------------------------------- due times


def test_each_kind_of_when_is_due_at_its_moment_with_its_deadline() -> None:
    # Wed 14 Oct 15:00 CDT for 45 minutes, booked on Mon 5 Oct 09:00 CDT
    event = appointment_event("appointment.booked", "2026-10-14T15:00:00-05:00",
                              "2026-10-05T14:00:00Z")
    steps = by_step(plan(event, make_patient(), [journey(TIMING)], RULES))
    start = utc("2026-10-14T20:00:00Z")

    due = {name: p.due_at for name, p in steps.items()}
    assert due == {
        "now": utc("2026-10-05T14:00:00Z"),
        "two-hours-before": utc("2026-10-14T13:00:00-05:00"),
        "ninety-after": utc("2026-10-14T17:15:00-05:00"),  # from the END: 15:45 + 90m
        "two-days-before": utc("2026-10-12T10:00:00-05:00"),
        "next-day": utc("2026-10-15T18:00:00-05:00"),
    }
    expires = {name: p.expires_at for name, p in steps.items()}
    assert expires == {
        "now": due["now"] + timedelta(days=1),
        "two-hours-before": start,  # never at or after the visit
        "ninety-after": due["ninety-after"] + timedelta(days=1),
        "two-days-before": start,
        "next-day": due["next-day"] + timedelta(days=1),
    }
    assert {p.status for p in steps.values()} == {Status.PLANNED}
    assert {p.reason for p in steps.values()} == {None}


def test_due_times_and_deadlines_leave_the_planner_in_utc() -> None:
    event = appointment_event("appointment.booked", "2026-10-14T15:00:00-05:00",
                              "2026-10-05T14:00:00Z")
    steps = by_step(plan(event, make_patient(), [journey(TIMING)], RULES))
    not_utc = sorted(f"{name} {field}={value.isoformat()}"
                     for name, p in steps.items()
                     for field, value in (("due_at", p.due_at), ("expires_at", p.expires_at))
                     if value is not None and value.tzinfo is not UTC)
    assert not_utc == []


def test_the_practices_default_expiry_and_a_steps_expires_after_set_the_deadline() -> None:
    text = TIMING.replace('at: "10:00"}', 'at: "10:00"}\n    expires_after: 3h') \
                 .replace("{after: 90m}", "{after: 90m}\n    expires_after: 2d")
    rules = PlanningRules(QuietHours(), CHICAGO, default_expiry=timedelta(hours=6))
    event = appointment_event("appointment.booked", "2026-10-14T15:00:00-05:00",
                              "2026-10-05T14:00:00Z")
    steps = by_step(plan(event, make_patient(), [journey(text)], rules))

    assert steps["now"].expires_at == utc("2026-10-05T20:00:00Z")  # 6h default
    assert steps["next-day"].expires_at == utc("2026-10-15T18:00:00-05:00") + timedelta(hours=6)
    assert steps["ninety-after"].expires_at == utc("2026-10-16T17:15:00-05:00")  # its own 2d
    # a before-step with expires_after: the earlier of the visit and due + expires_after
    assert steps["two-days-before"].expires_at == utc("2026-10-12T13:00:00-05:00")
    assert steps["two-hours-before"].expires_at == utc("2026-10-14T15:00:00-05:00")


def test_local_times_use_the_patients_timezone_and_fall_back_to_the_practices() -> None:
    # 19:00 CDT on 14 Oct is 02:00 on 15 Oct in Madrid: "two days before" is another day
    event = appointment_event("appointment.booked", "2026-10-14T19:00:00-05:00",
                              "2026-10-05T14:00:00Z")
    in_madrid = by_step(plan(event, make_patient(MADRID), [journey(TIMING)], RULES))
    at_practice = by_step(plan(event, make_patient(None), [journey(TIMING)], RULES))

    assert wall(in_madrid["two-days-before"].due_at, MADRID) == "2026-10-13 10:00 CEST"
    assert wall(at_practice["two-days-before"].due_at, CHICAGO) == "2026-10-12 10:00 CDT"
    assert wall(in_madrid["next-day"].due_at, MADRID) == "2026-10-16 18:00 CEST"
    assert wall(at_practice["next-day"].due_at, CHICAGO) == "2026-10-15 18:00 CDT"
    # 17:00 in Chicago is fine; the same instant is midnight in Madrid, and the visit
    # itself (02:00 there) comes before the morning
    assert at_practice["two-hours-before"].status == Status.PLANNED
    assert (in_madrid["two-hours-before"].status, in_madrid["two-hours-before"].reason) == (
        Status.SKIPPED, Reason.TOO_LATE)


@pytest.mark.parametrize(("start", "timezone", "expected"), [
    # America/Chicago leaves DST on Sun 2026-11-01
    ("2026-11-02T10:00:00-06:00", None, "2026-10-31T15:00:00Z"),  # 10:00 CDT
    ("2026-11-03T10:00:00-06:00", None, "2026-11-01T16:00:00Z"),  # 10:00 CST, the day itself
    ("2026-11-04T10:00:00-06:00", None, "2026-11-02T16:00:00Z"),  # 10:00 CST
    # ...and enters it on Sun 2026-03-08
    ("2026-03-09T10:00:00-05:00", None, "2026-03-07T16:00:00Z"),  # 10:00 CST
    ("2026-03-10T10:00:00-05:00", None, "2026-03-08T15:00:00Z"),  # 10:00 CDT, the day itself
    # Europe/Madrid leaves DST on Sun 2026-10-25, a week before Chicago
    ("2026-10-26T12:00:00+01:00", MADRID, "2026-10-24T08:00:00Z"),  # 10:00 CEST
    ("2026-10-27T12:00:00+01:00", MADRID, "2026-10-25T09:00:00Z"),  # 10:00 CET, the day itself
])
def test_a_ten_oclock_reminder_is_at_ten_local_on_both_sides_of_a_dst_change(
        start: str, timezone: str | None, expected: str) -> None:
    event = appointment_event("appointment.booked", start, "2026-02-01T12:00:00Z")
    reminder = by_step(plan(event, make_patient(timezone), [journey(PRE_VISIT)],
                            RULES))["two-days-before"]
    assert reminder.due_at == utc(expected)
    local = reminder.due_at.astimezone(ZoneInfo(timezone or CHICAGO))
    assert local.time() == time(10, 0)
    assert reminder.status == Status.PLANNED


# --------------------------------------------------------------------------- too late


def test_a_step_whose_moment_passed_before_the_event_is_skipped_too_late() -> None:
    # booked on Tue 13 Oct 10:00 CDT for Wed 14 Oct 15:00: "two days before" was yesterday
    event = appointment_event("appointment.booked", "2026-10-14T15:00:00-05:00",
                              "2026-10-13T15:00:00Z")
    steps = by_step(plan(event, make_patient(), [journey(PRE_VISIT)], RULES))

    late = steps["two-days-before"]
    assert (late.status, late.reason) == (Status.SKIPPED, Reason.TOO_LATE)
    assert late.detail == (
        "it was due 2026-10-12T15:00:00+00:00, before the appointment.booked event at "
        "2026-10-13T15:00:00+00:00 (set catch_up: true to send late)")
    assert late.due_at == utc("2026-10-12T15:00:00Z")  # the ledger keeps when it was due
    assert late.expires_at == utc("2026-10-14T20:00:00Z")
    assert (steps["two-hours-before"].status, steps["two-hours-before"].reason) == (
        Status.PLANNED, None)


def test_catch_up_sends_a_missed_step_at_the_event_time() -> None:
    text = PRE_VISIT.replace('at: "10:00"}', 'at: "10:00"}\n    catch_up: true')
    event = appointment_event("appointment.booked", "2026-10-14T15:00:00-05:00",
                              "2026-10-13T15:00:00Z")
    step = by_step(plan(event, make_patient(), [journey(text)], RULES))["two-days-before"]

    assert (step.status, step.reason, step.detail) == (Status.PLANNED, None, None)
    assert step.due_at == utc("2026-10-13T15:00:00Z")
    assert step.expires_at == utc("2026-10-14T20:00:00Z")


def test_catch_up_at_night_waits_for_the_morning() -> None:
    text = PRE_VISIT.replace('at: "10:00"}', 'at: "10:00"}\n    catch_up: true')
    # booked Tue 13 Oct 22:00 CDT
    event = appointment_event("appointment.booked", "2026-10-14T15:00:00-05:00",
                              "2026-10-14T03:00:00Z")
    step = by_step(plan(event, make_patient(), [journey(text)], RULES))["two-days-before"]
    assert step.status == Status.PLANNED
    assert step.due_at == utc("2026-10-14T08:00:00-05:00")


@pytest.mark.parametrize(("completed_at", "status", "due"), [
    ("2026-10-14T17:05:00-05:00", Status.PLANNED, "2026-10-14T18:30:00-05:00"),  # on time
    ("2026-10-14T19:05:00-05:00", Status.PLANNED, "2026-10-14T19:05:00-05:00"),  # caught up
    ("2026-10-14T21:10:00-05:00", Status.SKIPPED, "2026-10-15T08:00:00-05:00"),  # not tomorrow
])
def test_the_evening_thank_you_catches_up_but_never_goes_the_next_morning(
        completed_at: str, status: Status, due: str) -> None:
    event = appointment_event("appointment.completed", "2026-10-14T16:00:00-05:00",
                              completed_at, duration=60)
    thank_you = by_step(plan(event, make_patient(), [journey(FOLLOW_UP)], RULES))["thank-you"]
    assert thank_you.status == status
    assert thank_you.due_at == utc(due)
    assert thank_you.expires_at == utc("2026-10-14T21:30:00-05:00")
    if status == Status.SKIPPED:
        assert thank_you.reason == Reason.TOO_LATE
        assert thank_you.detail == (
            "quiet hours (08:00–21:00 America/Chicago) would delay it to "
            "2026-10-15T13:00:00+00:00, past its deadline 2026-10-15T02:30:00+00:00")


def test_a_caught_up_step_past_its_deadline_in_daytime_does_not_blame_quiet_hours() -> None:
    text = """
    version: 1
    journey: morning
    trigger: appointment.completed
    steps:
      - id: same-morning
        when: {days_after: 0, at: "09:00"}
        catch_up: true
        expires_after: 2h
        channels: [sms]
        template: m/same-morning
    """
    # a 07:00 visit recorded as completed at 14:00: the 09:00–11:00 window is gone
    event = appointment_event("appointment.completed", "2026-10-14T07:00:00-05:00",
                              "2026-10-14T14:00:00-05:00")
    step = plan(event, make_patient(), [journey(text)], RULES).planned[0]
    assert (step.status, step.reason) == (Status.SKIPPED, Reason.TOO_LATE)
    assert step.detail is not None
    assert "2026-10-14T16:00:00+00:00" in step.detail  # names the deadline
    assert "quiet hours" not in step.detail  # 14:00 is inside the sending window


# --------------------------------------------------------------------------- quiet hours


@pytest.mark.parametrize(("start", "timezone", "status", "due"), [
    # 09:00 visit: the 07:00 reminder waits until 08:00, still before the visit
    ("2026-10-14T09:00:00-05:00", None, Status.PLANNED, "2026-10-14T08:00:00-05:00"),
    # 08:00 visit: 08:00 is the deadline itself — pointless, skipped
    ("2026-10-14T08:00:00-05:00", None, Status.SKIPPED, "2026-10-14T08:00:00-05:00"),
    # 08:30 visit: a minute of room is room enough
    ("2026-10-14T08:30:00-05:00", None, Status.PLANNED, "2026-10-14T08:00:00-05:00"),
    # the patient's night, not the practice's: 09:00 in Madrid is 02:00 in Chicago
    ("2026-10-14T09:00:00+02:00", MADRID, Status.PLANNED, "2026-10-14T08:00:00+02:00"),
    ("2026-10-14T08:00:00+02:00", MADRID, Status.SKIPPED, "2026-10-14T08:00:00+02:00"),
])
def test_quiet_hours_push_a_night_time_reminder_to_eight_or_skip_it(
        start: str, timezone: str | None, status: Status, due: str) -> None:
    event = appointment_event("appointment.booked", start, "2026-10-05T14:00:00Z")
    reminder = by_step(plan(event, make_patient(timezone), [journey(PRE_VISIT)],
                            RULES))["two-hours-before"]
    assert reminder.status == status
    assert reminder.due_at == utc(due)
    assert reminder.expires_at == utc(start)
    if status == Status.SKIPPED:
        assert reminder.reason == Reason.TOO_LATE
        assert reminder.detail is not None
        match = QUIET_DETAIL.fullmatch(reminder.detail)
        assert match is not None, reminder.detail
        assert match["zone"] == (timezone or CHICAGO)
        assert (utc(match["delayed"]), utc(match["deadline"])) == (utc(due), utc(start))
    else:
        assert (reminder.reason, reminder.detail) == (None, None)


def test_a_late_evening_after_step_goes_the_next_morning_before_its_deadline() -> None:
    # 20:00 visit for 60 minutes: "90 minutes after" is 22:30
    event = appointment_event("appointment.booked", "2026-10-14T20:00:00-05:00",
                              "2026-10-05T14:00:00Z", duration=60)
    after = by_step(plan(event, make_patient(), [journey(TIMING)], RULES))["ninety-after"]
    assert after.status == Status.PLANNED
    assert after.due_at == utc("2026-10-15T08:00:00-05:00")
    assert after.expires_at == utc("2026-10-15T22:30:00-05:00")


def test_a_practices_narrower_quiet_hours_apply() -> None:
    rules = PlanningRules(QuietHours(time(9, 0), time(18, 0)), CHICAGO)
    event = appointment_event("appointment.booked", "2026-10-14T10:30:00-05:00",
                              "2026-10-05T14:00:00Z")
    steps = by_step(plan(event, make_patient(), [journey(TIMING)], rules))
    assert steps["two-hours-before"].due_at == utc("2026-10-14T09:00:00-05:00")
    assert steps["two-hours-before"].status == Status.PLANNED
    assert steps["next-day"].due_at == utc("2026-10-16T09:00:00-05:00")  # 18:00 is closed


# --------------------------------------------------------------------------- exits


def test_a_cancelled_visit_ends_only_that_appointments_reminders() -> None:
    event = appointment_event("appointment.cancelled", "2026-10-14T15:00:00-05:00",
                              "2026-10-10T14:00:00Z", version=2)
    result = plan(event, make_patient(), library(), RULES)

    assert result.planned == ()
    pre_visit = [e for e in result.exits if e.journey == "pre-visit"]
    assert pre_visit == [Exit(7, "pre-visit", ("two-days-before", "two-hours-before"),
                              "appointment:12:", Reason.APPOINTMENT_CANCELLED,
                              "appointment.cancelled A12")]
    prefix = pre_visit[0].anchor_prefix
    assert prefix is not None
    assert "appointment:12:v1".startswith(prefix) and "appointment:12:v2".startswith(prefix)
    assert not "appointment:120:v1".startswith(prefix)  # another appointment's reminders live
    # the welcome journey is anchored on the patient, so its exit cannot be per appointment
    assert [e for e in result.exits if e.journey != "pre-visit"] == [
        Exit(7, "welcome", ("welcome", "what-to-expect"), None, Reason.APPOINTMENT_CANCELLED,
             "appointment.cancelled A12")]


def test_booking_a_visit_ends_the_nudges_and_the_win_back_but_nothing_else() -> None:
    event = appointment_event("appointment.booked", "2026-10-20T15:00:00-05:00",
                              "2026-10-10T14:00:00Z", appointment_id=13)
    result = plan(event, make_patient(), library(), RULES)

    assert sorted(result.exits, key=lambda e: e.journey) == [
        Exit(7, "follow-up", ("home-exercise-nudge",), None, Reason.JOURNEY_EXITED,
             "appointment.booked A13"),
        Exit(7, "win-back", ("day-30", "day-60", "day-90"), None, Reason.JOURNEY_EXITED,
             "appointment.booked A13"),
    ]
    assert [(p.journey, p.step, p.anchor) for p in result.planned] == [
        ("pre-visit", "two-days-before", "appointment:13:v1"),
        ("pre-visit", "two-hours-before", "appointment:13:v1"),
    ]


def test_a_moved_visit_replaces_its_old_reminders_and_plans_the_new_ones() -> None:
    event = appointment_event("appointment.rescheduled", "2026-10-16T11:00:00-05:00",
                              "2026-10-10T14:00:00Z", version=2,
                              previous_start="2026-10-14T15:00:00-05:00")
    result = plan(event, make_patient(), library(), RULES)

    assert result.exits == (Exit(
        7, "pre-visit", ("two-days-before", "two-hours-before"), "appointment:12:",
        Reason.ANCHOR_CHANGED,
        "appointment A12 moved from 2026-10-14T15:00:00-05:00 to 2026-10-16T11:00:00-05:00",
        spare_anchor="appointment:12:v2"),)
    steps = by_step(result)
    assert set(steps) == {"two-days-before", "two-hours-before"}
    assert {p.anchor for p in steps.values()} == {"appointment:12:v2"}
    assert steps["two-days-before"].due_at == utc("2026-10-14T10:00:00-05:00")
    assert steps["two-hours-before"].due_at == utc("2026-10-16T09:00:00-05:00")
    assert {p.expires_at for p in steps.values()} == {utc("2026-10-16T11:00:00-05:00")}


def test_completing_a_visit_plans_the_follow_up_and_ends_nothing() -> None:
    event = appointment_event("appointment.completed", "2026-10-14T15:00:00-05:00",
                              "2026-10-14T15:50:00-05:00")
    result = plan(event, make_patient(), library(), RULES)
    assert result.exits == ()
    assert [(p.journey, p.step) for p in result.planned] == [
        ("follow-up", "thank-you"), ("follow-up", "home-exercise-nudge"),
        ("follow-up", "satisfaction")]
    assert {p.anchor for p in result.planned} == {"appointment:12:v1"}


# --------------------------------------------------------------------------- only_if


def test_only_if_steps_are_planned_when_the_condition_says_so() -> None:
    event = appointment_event("appointment.completed", "2026-10-14T15:00:00-05:00",
                              "2026-10-14T15:50:00-05:00")
    asked: list[tuple[str, str]] = []

    def third_visit(answer: bool) -> Condition:
        def condition(journey: Journey, step: Step) -> bool:
            asked.append((journey.name, step.id))
            return answer if step.only_if else True
        return condition

    kept = plan(event, make_patient(), [journey(FOLLOW_UP)], RULES, third_visit(True))
    assert [p.step for p in kept.planned] == ["thank-you", "home-exercise-nudge",
                                              "satisfaction"]
    assert asked == [("follow-up", "thank-you"), ("follow-up", "home-exercise-nudge"),
                     ("follow-up", "satisfaction")]

    dropped = plan(event, make_patient(), [journey(FOLLOW_UP)], RULES, third_visit(False))
    assert [p.step for p in dropped.planned] == ["thank-you", "home-exercise-nudge"]


# --------------------------------------------------------------------------- determinism


def test_the_same_event_always_plans_the_same_thing() -> None:
    events = [
        appointment_event("appointment.booked", "2026-10-14T08:00:00-05:00",
                          "2026-10-13T15:00:00Z"),
        appointment_event("appointment.rescheduled", "2026-10-16T11:00:00-05:00",
                          "2026-10-10T14:00:00Z", version=2,
                          previous_start="2026-10-14T15:00:00-05:00"),
        appointment_event("appointment.completed", "2026-10-14T15:00:00-05:00",
                          "2026-10-14T21:10:00-05:00"),
    ]
    for event in events:
        first = plan(event, make_patient(MADRID), library(), RULES)
        again = plan(event, make_patient(MADRID), library(), RULES)
        assert first == again
        assert first.planned  # the comparison is not between two empty plans
        assert [p.key for p in first.planned] == [p.key for p in again.planned]
