"""Limits on messages (``caps``): who waits, who is never held, and what is skipped.

Invariant 8, *nothing that matters is silenced*: with consent on file a courtesy limit
and step priorities decide which message waits, and a visit's reminder is never the one
dropped; exemption mode keeps the FCC healthcare exemption's rules.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine import clock
from engine.cli import cli
from engine.definitions.journeys import PRIORITIES, Journey, Step, parse_journey
from engine.dispatcher import Snapshot
from engine.domain import Patient
from engine.guards import (
    Defer,
    FrequencyCaps,
    Held,
    Send,
    Verdict,
    cap_refusal,
    channel_refusal,
    decide,
)
from engine.outcomes import Status
from engine.store.ledger import TouchPoint
from engine.store.records import PlannedSend, RecentSend
from engine.timing import QuietHours
from tests.support import (
    LIBRARY_SCHEDULES,
    LIBRARY_TEMPLATES,
    Clinic,
    appointment,
    patient,
    write_config,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def journey_text(*steps: str, purpose: str = "transactional",
                 trigger: str = "patient.created") -> str:
    return (f"version: 1\njourney: j\npurpose: {purpose}\ntrigger: {trigger}\nsteps:\n"
            + "".join(steps))


def step_text(step_id: str, *extra: str, when: str = "immediately") -> str:
    lines = [f"  - id: {step_id}\n", f"    when: {when}\n", "    channels: [sms]\n",
             "    template: welcome/welcome\n"]
    return "".join(lines + [f"    {line}\n" for line in extra])


def write_schedules(folder: Path, *journeys: str) -> Path:
    target = folder / "schedules"
    target.mkdir()
    for index, text in enumerate(journeys):
        (target / f"journey-{index}.yaml").write_text(text, encoding="utf-8")
    return target


# --------------------------------------------------------------------------- priority:


def test_a_step_priority_is_a_name_or_a_number_and_defaults_by_kind() -> None:
    journey, found = parse_journey(journey_text(
        step_text("named", "priority: question"),
        step_text("numbered", "priority: 35"),
        step_text("visit", when="{days_before: 1, at: \"10:00\"}"),
        step_text("score", "asks: score"),
        step_text("other", when="{after: 1h}"),
        trigger="appointment.booked"), "j.yaml")
    assert found == []
    assert journey is not None
    assert {s.id: journey.priority_of(s) for s in journey.steps} == {
        "named": PRIORITIES["question"], "numbered": 35, "visit": PRIORITIES["reminder"],
        "score": PRIORITIES["question"], "other": PRIORITIES["nudge"]}
    offers, found = parse_journey(journey_text(step_text("offer"), purpose="marketing"),
                                  "o.yaml")
    assert found == [] and offers is not None
    assert offers.priority_of(offers.steps[0]) == PRIORITIES["marketing"]
    assert PRIORITIES["reminder"] > PRIORITIES["question"] > PRIORITIES["nudge"] \
        > PRIORITIES["marketing"]


@pytest.mark.parametrize(("value", "hint"), [
    ("reminders", "did you mean 'reminder'?"),
    ("101", "write e.g. `priority: reminder`"),
    ("true", "write e.g. `priority: reminder`"),
])
def test_a_bad_priority_is_reported_with_its_file_and_line(value: str, hint: str) -> None:
    journey, found = parse_journey(journey_text(
        step_text("ok"), step_text("bad", f"priority: {value}")), "j.yaml")
    assert journey is None
    assert [(d.file, d.line, d.code) for d in found] == [("j.yaml", 14, "priority")]
    assert found[0].message.startswith("priority must be one of reminder, question, nudge, "
                                       "marketing or a number from 0 to 100")
    assert found[0].fix.startswith(hint)


# --------------------------------------------------------------------------- the guards


def text_at(at: str, priority: int = PRIORITIES["nudge"], purpose: str = "transactional",
            ) -> RecentSend:
    return RecentSend(purpose, "sms", utc(at), priority=priority)


def test_the_courtesy_day_is_the_recipients_and_survives_a_dst_change() -> None:
    """Chicago leaves daylight saving time on Sunday 1 Nov 2026: the next local day
    begins at 05:00 UTC on Sunday, and 08:00 there is 14:00 UTC (13:00 the day before)."""
    caps = FrequencyCaps()
    now = utc("2026-10-31T19:00:00-05:00")
    sends = [text_at("2026-10-31T09:00:00-05:00"), text_at("2026-10-31T12:00:00-05:00")]
    held = cap_refusal("sms", "transactional", sends, now, caps, "America/Chicago")
    assert held == Held("sms: 2 text(s) of the same or a higher priority today (courtesy "
                        "limit 2 a day)", utc("2026-11-01T00:00:00-05:00"))
    tp = planned_touch_point(due=now, expires=now + timedelta(days=1))
    decision = decide(tp, *nudge_journey(), chicago_patient(), None, {}, {}, now,
                      QuietHours(), "America/Chicago", sends, caps)
    assert decision == Defer(utc("2026-11-01T14:00:00Z"), "sms: 2 text(s) of the same or a "
                             "higher priority today (courtesy limit 2 a day); deferred",
                             "frequency_cap")
    # Honolulu's day is not Chicago's: both texts were early on Saturday there
    assert cap_refusal("sms", "transactional", sends, utc("2026-11-01T04:30:00Z"), caps,
                       "Pacific/Honolulu") is not None  # 18:30 HST, same HST day
    assert cap_refusal("sms", "transactional", sends, utc("2026-11-01T10:30:00Z"), caps,
                       "Pacific/Honolulu") is None  # 00:30 HST Sunday


def test_reminders_are_never_held_and_count_only_against_what_ranks_lower_or_equal() -> None:
    caps = FrequencyCaps()
    now = utc("2026-11-02T15:00:00-06:00")
    reminders = [text_at("2026-11-02T08:00:00-06:00", PRIORITIES["reminder"]),
                 text_at("2026-11-02T10:00:00-06:00", PRIORITIES["reminder"]),
                 text_at("2026-11-02T12:00:00-06:00", PRIORITIES["reminder"])]
    assert cap_refusal("sms", "transactional", reminders, now, caps, "America/Chicago",
                       PRIORITIES["reminder"]) is None
    assert cap_refusal("sms", "transactional", reminders, now, caps, "America/Chicago",
                       PRIORITIES["nudge"]) is not None
    nudges = [text_at("2026-11-02T09:00:00-06:00"), text_at("2026-11-02T10:00:00-06:00")]
    assert cap_refusal("sms", "transactional", nudges, now, caps, "America/Chicago",
                       PRIORITIES["question"]) is None
    assert cap_refusal("sms", "transactional", nudges, now, caps, "America/Chicago",
                       PRIORITIES["nudge"]) is not None
    assert cap_refusal("sms", "transactional", nudges, now,
                       FrequencyCaps(sms_per_day=0), "America/Chicago") is None


def test_exemption_mode_counts_every_text_and_waits_for_room_in_the_week() -> None:
    caps = FrequencyCaps(mode="exemption")
    now = utc("2026-11-05T10:00:00-06:00")
    week = [text_at("2026-11-02T09:00:00-06:00", PRIORITIES["nudge"]),
            text_at("2026-11-03T09:00:00-06:00", PRIORITIES["nudge"]),
            text_at("2026-11-04T09:00:00-06:00", PRIORITIES["nudge"])]
    held = cap_refusal("sms", "transactional", week, now, caps, "America/Chicago",
                       PRIORITIES["reminder"])  # priority does not matter here
    assert held == Held("sms: 3 texts in the last 7 days (cap 3 a week)",
                        utc("2026-11-09T09:00:00-06:00"))
    today = [text_at("2026-11-05T08:00:00-06:00", PRIORITIES["marketing"])]
    held = cap_refusal("sms", "transactional", today, now, caps, "America/Chicago",
                       PRIORITIES["reminder"])
    assert held is not None and held.until == utc("2026-11-06T00:00:00-06:00")


def chicago_patient() -> Patient:
    return Patient(id=1, external_id="P1", first_name="Ana", last_name="Reyes",
                   phone="+13125550100", email=None, language="en",
                   timezone="America/Chicago", sms_consent=True, email_consent=False,
                   marketing_consent=False)


def nudge_journey() -> tuple[Journey, Step]:
    journey, _ = parse_journey(journey_text(step_text("nudge")), "j.yaml")
    assert journey is not None
    return journey, journey.steps[0]


def planned_touch_point(due: datetime, expires: datetime | None) -> TouchPoint:
    return TouchPoint(
        id=1, patient_id=1, appointment_id=None, recipient="patient", test=False, journey="j",
        step="nudge", anchor="patient:1", purpose="transactional", event_id=1,
        step_fingerprint="", due_at=due, expires_at=expires, status=Status.PLANNED,
        reason=None, detail=None, channel=None, address=None, provider=None,
        provider_message_id=None, template_file=None, content=None, attempts=0,
        claimed_by=None, claim_expires_at=None, sending_at=None, sent_at=None,
        finished_at=None, planned_at=due, updated_at=due)


def test_a_held_message_past_its_deadline_is_skipped_frequency_cap() -> None:
    now = utc("2026-11-02T18:00:00-06:00")
    sends = [text_at("2026-11-02T09:00:00-06:00"), text_at("2026-11-02T12:00:00-06:00")]
    tp = planned_touch_point(due=now, expires=now + timedelta(hours=3))
    decision = decide(tp, *nudge_journey(), chicago_patient(), None, {}, {}, now,
                      QuietHours(), "America/Chicago", sends, FrequencyCaps())
    assert isinstance(decision, Verdict)
    assert (decision.status, decision.reason) == (Status.SKIPPED, "frequency_cap")
    assert decision.detail.endswith("the next allowed time 2026-11-03T14:00:00+00:00 is "
                                    "past its deadline 2026-11-03T03:00:00+00:00")


# --------------------------------------------------------------------------- a practice


def test_a_patient_with_three_visits_a_week_gets_every_reminder_by_text(
        database_url: str, tmp_path: Path) -> None:
    """Mon/Wed/Fri for two weeks: on a visit day the 2-hour reminder and a later visit's
    3-day reminder both go, and on other days two reminders at 10:00 (the exemption would
    allow one), across the end of daylight saving time on Sunday 1 November."""
    clinic = Clinic(database_url, tmp_path)
    try:
        clock.set_now(utc("2026-10-29T09:00:00-05:00"))
        clinic.patients(patient("P1"))
        days = ("2026-11-02", "2026-11-04", "2026-11-06", "2026-11-09", "2026-11-11",
                "2026-11-13")
        clinic.appointments(*(appointment(f"A{n}", "P1", f"{day}T10:00:00-06:00")
                              for n, day in enumerate(days)))
        clinic.run_until(utc("2026-11-13T10:00:00-06:00"), timedelta(hours=1))
        reminders = clinic.touch_points(journey="pre-visit")
        assert len(reminders) == 18
        assert {(tp.step, tp.status, tp.channel) for tp in reminders} == {
            ("three-days-before", Status.SENT, "sms"), ("one-day-before", Status.SENT, "sms"),
            ("two-hours-before", Status.SENT, "sms")}
        assert not [h for tp in reminders for h in clinic.history(tp) if h.kind == "deferred"]

        def sent_on(day: str) -> list[datetime]:
            return sorted(tp.sending_at for tp in reminders
                          if tp.sending_at is not None and tp.sending_at.date().isoformat() == day)

        # Friday's 2-hour reminder at 08:00 and Monday's 3-day one at 10:00
        assert sent_on(days[2]) == [utc(f"{days[2]}T08:00:00-06:00"),
                                    utc(f"{days[2]}T10:00:00-06:00")]
        # Tuesday: Wednesday's day-before reminder and Friday's 3-day one, both at 10:00
        assert sent_on("2026-11-10") == [utc("2026-11-10T10:00:00-06:00")] * 2
    finally:
        clinic.close()


VISIT_REMINDERS = journey_text(
    step_text("day-before", when="{days_before: 1, at: \"09:00\"}"),
    step_text("two-hours", when="{before: 2h}"), trigger="appointment.booked")
CHECK_IN = """version: 1
journey: check-in
purpose: transactional
trigger: patient.created
steps:
""" + step_text("nudge", "expires_after: 2d", when="{after: 3h}") \
    + step_text("nudge-2", when="{after: 4h}") \
    + step_text("question", "priority: question", "expires_after: 2d", when="{after: 5h}")


def test_a_nudge_waits_for_the_next_day_when_reminders_filled_it_and_a_question_is_not_held_by_nudges(  # noqa: E501
        database_url: str, tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path, schedules=write_schedules(
        tmp_path, VISIT_REMINDERS, CHECK_IN))
    try:
        # P1 has visits Monday 13:00 and Tuesday 13:00: reminders Mon 09:00 and 11:00
        clock.set_now(utc("2026-11-02T09:00:00-06:00"))
        clinic.patients(patient("P1", email=""),
                        patient("P2", phone="(312) 555-0102", email=""))
        clinic.appointments(appointment("A1", "P1", "2026-11-02T13:00:00-06:00"),
                            appointment("A2", "P1", "2026-11-03T13:00:00-06:00"))
        clinic.run_until(utc("2026-11-04T12:00:00-06:00"), timedelta(minutes=30))
        sent = sorted((tp.patient_id, tp.sending_at, tp.step) for tp in clinic.touch_points()
                      if tp.status == Status.SENT)
        assert sent == [
            (1, utc("2026-11-02T09:00:00-06:00"), "day-before"),  # (of Tuesday's visit)
            (1, utc("2026-11-02T11:00:00-06:00"), "two-hours"),
            # two reminders filled Monday; on Tuesday the question and the reminder planned
            # at 11:00 take the day's two texts (look-ahead), so the first nudge waits
            # for Wednesday...
            (1, utc("2026-11-03T08:00:00-06:00"), "question"),
            (1, utc("2026-11-03T11:00:00-06:00"), "two-hours"),  # a reminder is never held
            (1, utc("2026-11-04T08:00:00-06:00"), "nudge"),
            # P2 had no reminders: a nudge, then the question planned that afternoon keeps
            # the day's second text; the second nudge goes the next morning
            (2, utc("2026-11-02T12:00:00-06:00"), "nudge"),
            (2, utc("2026-11-02T14:00:00-06:00"), "question"),
            (2, utc("2026-11-03T08:00:00-06:00"), "nudge-2"),
        ]
        # ...and the second, whose deadline is Tuesday 13:00, is the one dropped
        dropped = clinic.one("check-in", "nudge-2", patient_id=1)
        assert (dropped.status, dropped.reason) == (Status.SKIPPED, "frequency_cap")
        assert "2 of a higher priority planned later today" in (dropped.detail or "")
        question = clinic.one("check-in", "question", patient_id=1)
        assert [(h.reason, h.detail) for h in clinic.history(question)
                if h.kind == "deferred"] == [
            ("frequency_cap", "sms: 2 text(s) of the same or a higher priority today "
                              "(courtesy limit 2 a day); deferred")]
    finally:
        clinic.close()


LONG_TEXT = ("{{ practice.name }}: hi {{ patient.first_name }}, thanks for choosing us. Here is "
             "everything you need before your first visit: {{ practice.links.intake }} Call "
             "{{ practice.phone }} with questions. STOP to opt out")


def exemption_library(folder: Path) -> tuple[Path, Path]:
    templates = folder / "templates"
    shutil.copytree(LIBRARY_TEMPLATES, templates)
    (templates / "long").mkdir()
    (templates / "long" / "text.sms.j2").write_text(LONG_TEXT, encoding="utf-8")
    shutil.copy(templates / "welcome" / "welcome.email.j2", templates / "long" / "text.email.j2")
    schedules = write_schedules(folder, """version: 1
journey: long
purpose: transactional
trigger: patient.created
steps:
  - id: text-only
    when: immediately
    channels: [sms]
    template: long/text
  - id: text-or-email
    when: {days_after: 1, at: "10:00"}
    channels: [sms, email]
    template: long/text
  - id: short
    when: {days_after: 2, at: "10:00"}
    channels: [sms]
    template: welcome/welcome
""")
    return schedules, templates


@pytest.mark.parametrize("mode", ["exemption", "consent"])
def test_exemption_mode_sends_no_text_longer_than_160_characters(
        sqlite_url: str, tmp_path: Path, mode: str) -> None:
    schedules, templates = exemption_library(tmp_path)
    clinic = Clinic(sqlite_url, tmp_path, config_extra=f'\n[caps]\nmode = "{mode}"\n',
                    schedules=schedules, templates=templates)
    try:
        clock.set_now(utc("2026-11-02T09:00:00-06:00"))
        clinic.patients(patient("P1"))
        clinic.run_until(utc("2026-11-04T10:00:00-06:00"), timedelta(hours=1))
        outcomes = {tp.step: (tp.status, tp.reason, tp.channel)
                    for tp in clinic.touch_points(journey="long")}
        if mode == "consent":
            assert set(outcomes.values()) == {(Status.SENT, None, "sms")}
            return
        assert outcomes == {"text-only": (Status.SKIPPED, "frequency_cap", None),
                            "text-or-email": (Status.SENT, None, "email"),
                            "short": (Status.SENT, None, "sms")}
        length = len(clinic.sms.sent[0].body)
        assert 130 < length <= 160  # the welcome text, as exempt
        assert clinic.one("long", "text-only").detail == (
            "sms: 199 characters, over the healthcare exemption's 160 (caps.mode = exemption)")
        assert not clinic.sent_to(clinic.one("long", "text-only").id)
    finally:
        clinic.close()


# --------------------------------------------------------------------------- reports


def test_validate_and_forecast_count_what_the_limits_defer_or_skip_in_14_days(
        database_url: str, tmp_path: Path) -> None:
    late = """version: 1
journey: check-in
purpose: transactional
trigger: patient.created
steps:
""" + step_text("nudge", when="{after: 3h}") \
        + step_text("same-day-only", "expires_after: 2h", when="{after: 4h}")
    schedules = write_schedules(tmp_path, VISIT_REMINDERS, late)
    clinic = Clinic(database_url, tmp_path, schedules=schedules)
    try:
        clock.set_now(utc("2026-11-02T09:00:00-06:00"))
        clinic.patients(patient("P1", email=""))
        clinic.appointments(appointment("A1", "P1", "2026-11-02T13:00:00-06:00"),
                            appointment("A2", "P1", "2026-11-03T13:00:00-06:00"))
        clinic.tick()

        def run(*args: str) -> str:
            result = CliRunner().invoke(cli, [
                "--config", str(clinic.config), "--db", database_url, "--schedules",
                str(schedules), "--templates", str(LIBRARY_TEMPLATES),
                "--now", "2026-11-02T09:00:00-06:00", *args])
            assert result.exit_code == 0, result.output
            return result.stdout

        expected = {"mode": "consent", "days": 14, "deferred": 1, "skipped": 1, "by_step": [
            {"journey": "check-in", "step": "nudge", "deferred": 1, "skipped": 0},
            {"journey": "check-in", "step": "same-day-only", "deferred": 0, "skipped": 1}]}
        # (forecast --days 1 still counts 14 days of limits)
        assert json.loads(run("forecast", "--days", "1", "--json"))["limits"] == expected
        assert json.loads(run("validate", "--json"))["limits"] == expected
        text = run("validate")
        assert "Limits (caps.mode = consent), next 14 days: 1 deferred, 1 skipped " \
               "(frequency_cap).\n  check-in/nudge: 1 deferred, 0 skipped\n" \
               "  check-in/same-day-only: 0 deferred, 1 skipped\n" in text
        assert "Limits (caps.mode = consent), next 14 days: 1 deferred" in run("forecast")
        # the forecast changed nothing
        assert clinic.one("check-in", "nudge").status == Status.PLANNED
    finally:
        clinic.close()


def test_validate_without_a_database_says_the_limits_were_not_forecast(tmp_path: Path) -> None:
    clinic_db = tmp_path / "none.db"
    result = CliRunner().invoke(cli, [
        "--config", str(write_config(tmp_path)), "--db", f"sqlite:///{clinic_db}",
        "--schedules", str(LIBRARY_SCHEDULES), "--templates", str(LIBRARY_TEMPLATES),
        "--now", "2026-11-02T09:00:00-06:00", "validate", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["limits"] == {
        "mode": "consent", "days": 14,
        "note": f"no database yet at {clinic_db} (import patients and appointments first)"}
    assert not clinic_db.exists()


@pytest.mark.parametrize("mode", ["exemption", "consent"])
def test_validate_warns_of_texts_exemption_mode_would_not_send(tmp_path: Path,
                                                                mode: str) -> None:
    schedules, templates = exemption_library(tmp_path)
    offers = schedules / "offers.yaml"
    offers.write_text(journey_text(step_text("offer"), purpose="marketing").replace(
        "journey: j", "journey: offers"), encoding="utf-8")
    config = write_config(tmp_path, f'\n[caps]\nmode = "{mode}"\n')
    result = CliRunner().invoke(cli, [
        "--config", str(config), "--db", f"sqlite:///{tmp_path / 'none.db'}",
        "--schedules", str(schedules), "--templates", str(templates),
        "--now", "2026-11-02T09:00:00-06:00", "validate", "--json"])
    assert result.exit_code == 0, result.output
    found = sorted((Path(d["file"]).name, d["message"]) for d in
                   json.loads(result.stdout)["diagnostics"] if d["code"] == "exemption")
    if mode == "consent":
        assert found == []
        return
    assert found == [
        ("text.sms.j2", "with the sample patient this SMS is 205 characters: in exemption "
                        "mode a text over 160 is not sent (the step's next channel is used, "
                        "or it is skipped)"),
        ("welcome.es.sms.j2", "in exemption mode marketing texts are never sent"),
        ("welcome.sms.j2", "in exemption mode marketing texts are never sent")]


# --------------------------------------------------------------------------- exemption mode


def planned_text(tp_id: int, due: str, priority: int = PRIORITIES["reminder"],
                 recipient: str = "patient") -> PlannedSend:
    return PlannedSend(tp_id, 1, recipient, "pre-visit", "two-hours-before", "transactional",
                       None, utc(due), priority)


def patient_in(timezone: str, **fields: bool) -> Patient:
    return replace(chicago_patient(), timezone=timezone, **fields)


def test_exemption_look_ahead_a_nudge_leaves_the_days_one_text_to_a_later_reminder() -> None:
    caps = FrequencyCaps(mode="exemption")
    now = utc("2026-11-02T09:00:00-06:00")
    tp = planned_touch_point(due=now, expires=now + timedelta(days=2))
    reminder = planned_text(7, "2026-11-02T15:00:00-06:00")
    decision = decide(tp, *nudge_journey(), chicago_patient(), None, {}, {}, now,
                      QuietHours(), "America/Chicago", (), caps, planned=[reminder])
    assert decision == Defer(utc("2026-11-03T08:00:00-06:00"),
                             "sms: 0 text(s) today and 1 of a higher priority planned that "
                             "day (cap 1 a day); deferred", "frequency_cap")
    # the same nudge with a deadline before then is skipped, never the reminder
    short = planned_touch_point(due=now, expires=now + timedelta(hours=12))
    skipped = decide(short, *nudge_journey(), chicago_patient(), None, {}, {}, now,
                     QuietHours(), "America/Chicago", (), caps, planned=[reminder])
    assert isinstance(skipped, Verdict) and skipped.reason == "frequency_cap"
    # what ranks the same or lower, is planned for someone else or another day, or the
    # touch point itself, keeps no slot
    for other in (planned_text(7, "2026-11-02T15:00:00-06:00", PRIORITIES["nudge"]),
                  planned_text(7, "2026-11-02T15:00:00-06:00", recipient="contact:3"),
                  planned_text(7, "2026-11-03T09:00:00-06:00"),
                  planned_text(1, "2026-11-02T15:00:00-06:00")):
        assert decide(tp, *nudge_journey(), chicago_patient(), None, {}, {}, now,
                      QuietHours(), "America/Chicago", (), caps,
                      planned=[other]) == Send(("sms",), "America/Chicago")
    # consent mode looks ahead too, at its own limit (2 a day): one reminder later today
    # leaves the nudge room, two do not
    assert decide(tp, *nudge_journey(), chicago_patient(), None, {}, {}, now, QuietHours(),
                  "America/Chicago", (), FrequencyCaps(),
                  planned=[reminder]) == Send(("sms",), "America/Chicago")
    two = [reminder, planned_text(8, "2026-11-02T17:00:00-06:00", PRIORITIES["question"])]
    assert decide(tp, *nudge_journey(), chicago_patient(), None, {}, {}, now, QuietHours(),
                  "America/Chicago", (), FrequencyCaps(), planned=two) == Defer(
        utc("2026-11-03T08:00:00-06:00"),
        "sms: 0 text(s) of the same or a higher priority today and 2 of a higher priority "
        "planned later today (courtesy limit 2 a day); deferred", "frequency_cap")


def test_exemption_look_ahead_counts_the_recipients_local_day_across_a_dst_change() -> None:
    """Chicago leaves daylight saving time on Sunday 1 November 2026. A reminder at 20:00
    on Saturday (01:00 UTC Sunday) is on Saturday there, and one at 10:00 on Sunday
    takes Sunday: the nudge waits for Monday 08:00 CST (14:00 UTC)."""
    caps = FrequencyCaps(mode="exemption")
    now = utc("2026-10-31T09:00:00-05:00")
    tp = planned_touch_point(due=now, expires=now + timedelta(days=5))
    reminders = [planned_text(7, "2026-10-31T20:00:00-05:00"),
                 planned_text(8, "2026-11-01T10:00:00-06:00")]
    decision = decide(tp, *nudge_journey(), chicago_patient(), None, {}, {}, now,
                      QuietHours(), "America/Chicago", (), caps, planned=reminders)
    assert isinstance(decision, Defer)
    assert decision.until == utc("2026-11-02T14:00:00Z")
    # in Honolulu (the recipient's zone, not the practice's) 06:00 UTC Sunday is 20:00
    # on Saturday: the same local day as the nudge at 09:00 HST
    honolulu = patient_in("Pacific/Honolulu")
    now = utc("2026-10-31T09:00:00-10:00")
    tp = planned_touch_point(due=now, expires=now + timedelta(days=5))
    reminder = planned_text(7, "2026-11-01T06:00:00Z")
    decision = decide(tp, *nudge_journey(), honolulu, None, {}, {}, now, QuietHours(),
                      "America/Chicago", (), caps, planned=[reminder])
    assert isinstance(decision, Defer)
    assert decision.until == utc("2026-11-01T08:00:00-10:00")
    # in Chicago that reminder is at 01:00 on Sunday, the next local day: no conflict
    assert isinstance(decide(tp, *nudge_journey(), chicago_patient(), None, {}, {}, now,
                             QuietHours(), "America/Chicago", (), caps,
                             planned=[reminder]), Send)


def test_exemption_look_ahead_a_nudge_waits_for_a_week_with_room_for_three_reminders() -> None:
    """Reminders Mon, Wed and Fri at 10:00 fill the 3-a-week limit: a nudge on Sunday
    would make four in the 7 days to Friday. It waits until Monday's reminder is a week
    old — not Sunday again (Monday's is still in the week), nor Tuesday."""
    caps = FrequencyCaps(mode="exemption")
    now = utc("2026-11-01T09:00:00-06:00")
    reminders = [planned_text(n, f"2026-11-0{day}T10:00:00-06:00")
                 for n, day in ((7, 2), (8, 4), (9, 6))]
    tp = planned_touch_point(due=now, expires=now + timedelta(days=14))
    decision = decide(tp, *nudge_journey(), chicago_patient(), None, {}, {}, now,
                      QuietHours(), "America/Chicago", (), caps, planned=reminders)
    assert decision == Defer(utc("2026-11-09T10:00:00-06:00"),
                             "sms: 0 text(s) sent and 3 of a higher priority planned in the "
                             "7 days to 2026-11-06 10:00 (cap 3 a week); deferred",
                             "frequency_cap")
    # once they went (sent now, none planned), the week's room is the same
    sent = [text_at(f"2026-11-0{day}T10:00:00-06:00", PRIORITIES["reminder"])
            for day in (2, 4, 6)]
    later = utc("2026-11-07T09:00:00-06:00")
    held = cap_refusal("sms", "transactional", sent, later, caps, "America/Chicago")
    assert held == Held("sms: 3 texts in the last 7 days (cap 3 a week)",
                        utc("2026-11-09T10:00:00-06:00"))


@pytest.mark.parametrize("mode", ["exemption", "consent"])
def test_exemption_mode_texts_transactional_messages_without_sms_consent(mode: str) -> None:
    caps = FrequencyCaps(mode=mode)  # type: ignore[arg-type]
    unconsented = patient_in("America/Chicago", sms_consent=False)
    refusal = channel_refusal("sms", unconsented, "transactional", {}, caps)
    assert refusal == (None if mode == "exemption" else ("no_consent", "sms: no sms consent"))
    # opt-outs still stop everything
    assert channel_refusal("sms", unconsented, "transactional",
                           {("sms", "+13125550100"): {"all"}}, caps) == (
        "opted_out", "sms: the address opted out (all)")
    # marketing still needs SMS and marketing consent (and is not exempt)
    assert channel_refusal("sms", unconsented, "marketing", {}, caps) == (
        "no_consent", "sms: no sms consent")
    # email consent is untouched
    assert channel_refusal("email", replace(unconsented, email="ana@example.com"),
                           "transactional", {}, caps) == ("no_consent", "email: no email consent")


ONE_REMINDER = journey_text(step_text("two-hours", when="{before: 2h}"),
                            trigger="appointment.booked").replace("journey: j", "journey: visit")
ONE_NUDGE = """version: 1
journey: check-in
purpose: transactional
trigger: patient.created
steps:
""" + step_text("nudge", "expires_after: 2d", when="{after: 3h}")


def test_exemption_mode_a_reminder_due_later_that_day_goes_and_the_nudge_waits(
        database_url: str, tmp_path: Path) -> None:
    """Without the look-ahead the 09:00 nudge would take Monday's one text and the 15:00
    reminder would be skipped; with it the reminder goes and the nudge goes on Tuesday.
    Neither patient gave SMS consent: exemption mode texts without it."""
    schedules = write_schedules(tmp_path, ONE_REMINDER, ONE_NUDGE)
    clinic = Clinic(database_url, tmp_path, schedules=schedules,
                    config_extra='\n[caps]\nmode = "exemption"\n')
    try:
        clock.set_now(utc("2026-11-02T06:00:00-06:00"))
        clinic.patients(patient("P1", email="", sms_consent="no"),
                        patient("P2", phone="(312) 555-0102", email="", sms_consent="no"))
        clinic.appointments(appointment("A1", "P1", "2026-11-02T17:00:00-06:00"))

        def forecast(*args: str) -> dict[str, Any]:
            result = CliRunner().invoke(cli, [
                "--config", str(clinic.config), "--db", database_url, "--schedules",
                str(schedules), "--templates", str(LIBRARY_TEMPLATES),
                "--now", "2026-11-02T06:00:00-06:00", *args, "--json"])
            assert result.exit_code == 0, result.output
            data: dict[str, Any] = json.loads(result.stdout)
            return data

        expected = [("P1", "2026-11-02T21:00:00Z", "two-hours"),   # 15:00 CST
                    ("P1", "2026-11-03T14:00:00Z", "nudge"),       # Tuesday 08:00 CST
                    ("P2", "2026-11-02T15:00:00Z", "nudge")]       # P2: Monday 09:00
        # the forecast (before anything is planned) and validate's 14-day limits say so
        planned = forecast("forecast", "--days", "2")
        assert sorted((e["patient_id"], e["at"], e["step"]) for e in planned["entries"]
                      if e["outcome"] == "send") == expected
        limits = {"mode": "exemption", "days": 14, "deferred": 1, "skipped": 0, "by_step": [
            {"journey": "check-in", "step": "nudge", "deferred": 1, "skipped": 0}]}
        assert planned["limits"] == limits
        assert forecast("validate")["limits"] == limits
        clock.set_now(utc("2026-11-02T06:00:00-06:00"))  # (the command set it back)
        clinic.run_until(utc("2026-11-03T12:00:00-06:00"), timedelta(minutes=30))
        sent = sorted((f"P{tp.patient_id}", tp.sending_at, tp.step)
                      for tp in clinic.touch_points() if tp.status == Status.SENT)
        assert sent == [(p, utc(at), step) for p, at, step in expected]
        nudge = clinic.one("check-in", "nudge", patient_id=1)
        assert [(h.reason, h.detail) for h in clinic.history(nudge) if h.kind == "deferred"] \
            == [("frequency_cap", "sms: 0 text(s) today and 1 of a higher priority planned "
                                  "that day (cap 1 a day); deferred")]
    finally:
        clinic.close()


def test_a_higher_priority_text_in_the_same_batch_keeps_its_slot(
        database_url: str, tmp_path: Path) -> None:
    """A nudge and a question due together for one patient are claimed in one batch: the
    question, read from the batch itself (not the database), still keeps the day's one
    text, and the nudge waits."""
    same_time = journey_text(step_text("nudge"),
                             step_text("question", "priority: question"))
    clinic = Clinic(database_url, tmp_path, schedules=write_schedules(tmp_path, same_time),
                    config_extra="[caps]\nsms_per_day = 1\n")
    try:
        clock.set_now(utc("2026-11-02T10:00:00-06:00"))
        clinic.patients(patient("P1", email=""))
        clinic.tick()
        nudge = clinic.one("j", "nudge", patient_id=1)
        assert nudge.status == Status.PLANNED and nudge.reason == "frequency_cap"
        assert nudge.due_at == utc("2026-11-03T08:00:00-06:00")
        assert "1 of a higher priority planned later today (courtesy limit 1 a day)" \
            in (nudge.detail or "")
        assert clinic.one("j", "question", patient_id=1).status == Status.SENT
    finally:
        clinic.close()


def test_the_snapshot_reads_the_planned_texts_only_when_a_limit_looks_ahead(
        database_url: str, tmp_path: Path) -> None:
    """The batch's patients' planned texts, ranked; not a step that emails first, not
    another patient's; a touch point deferred or settled in the batch moves or leaves. A
    patient's only touch point in the batch is not kept: nothing else there can count it."""
    email_first = ONE_NUDGE.replace("journey: check-in", "journey: email-first") \
        .replace("channels: [sms]", "channels: [email, sms]")
    schedules = write_schedules(tmp_path, ONE_REMINDER, ONE_NUDGE, email_first)
    clinic = Clinic(database_url, tmp_path, schedules=schedules)
    try:
        clock.set_now(utc("2026-11-02T06:00:00-06:00"))
        clinic.patients(patient("P1"), patient("P2", phone="(312) 555-0102"))
        clinic.appointments(appointment("A1", "P1", "2026-11-02T17:00:00-06:00"))
        clinic.tick()  # plans them; nothing is due yet
        nudge = clinic.one("check-in", "nudge", patient_id=1)
        reminder = clinic.one("visit", "two-hours", patient_id=1)
        batch = [nudge, reminder]
        with clinic.db.transaction() as conn:
            unlimited = Snapshot.load(conn, batch, clinic.definitions, clock.now(),
                                      FrequencyCaps(sms_per_day=0))
            consent = Snapshot.load(conn, batch, clinic.definitions, clock.now(),
                                    FrequencyCaps())
            exemption = Snapshot.load(conn, batch, clinic.definitions, clock.now(),
                                      FrequencyCaps(mode="exemption"))
            alone = Snapshot.load(conn, [nudge], clinic.definitions, clock.now(),
                                  FrequencyCaps())
        assert unlimited.planned == {}  # no courtesy limit: nothing to look ahead for
        assert list(alone.planned[1]) == [reminder.id]  # read; the nudge was in hand
        assert consent.planned == exemption.planned
        assert set(exemption.planned) == {1}
        assert sorted((p.journey, p.step, p.due_at, p.priority)
                      for p in exemption.planned[1].values()) == [
            ("check-in", "nudge", utc("2026-11-02T09:00:00-06:00"), PRIORITIES["nudge"]),
            ("visit", "two-hours", utc("2026-11-02T15:00:00-06:00"), PRIORITIES["reminder"])]
        exemption.moved(nudge, utc("2026-11-03T08:00:00-06:00"))
        assert exemption.planned[1][nudge.id].due_at == utc("2026-11-03T08:00:00-06:00")
        exemption.moved(nudge, None)
        assert [p.step for p in exemption.planned[1].values()] == ["two-hours"]
    finally:
        clinic.close()


def test_exemption_mode_a_nudge_waits_for_a_week_with_room_for_three_planned_reminders(
        database_url: str, tmp_path: Path) -> None:
    """Visits Mon, Wed and Fri at 12:00 (reminders at 10:00) fill the 3-a-week limit: the
    nudge due Sunday 09:00 waits until Monday's reminder is a week old, and every
    reminder goes."""
    nudge = ONE_NUDGE.replace("expires_after: 2d", "expires_after: 14d")
    clinic = Clinic(database_url, tmp_path, schedules=write_schedules(
        tmp_path, ONE_REMINDER, nudge), config_extra='\n[caps]\nmode = "exemption"\n')
    try:
        clock.set_now(utc("2026-11-01T06:00:00-06:00"))
        clinic.patients(patient("P1", email=""))
        clinic.appointments(*(appointment(f"A{day}", "P1", f"2026-11-0{day}T12:00:00-06:00")
                              for day in (2, 4, 6)))
        clinic.run_until(utc("2026-11-09T11:00:00-06:00"), timedelta(hours=1))
        sent = [(tp.sending_at, tp.step) for tp in clinic.touch_points()
                if tp.status == Status.SENT]
        assert sent == [
            *((utc(f"2026-11-0{day}T10:00:00-06:00"), "two-hours") for day in (2, 4, 6)),
            (utc("2026-11-09T10:00:00-06:00"), "nudge")]
        held = clinic.one("check-in", "nudge")
        assert [h.detail for h in clinic.history(held) if h.kind == "deferred"] == [
            "sms: 0 text(s) sent and 3 of a higher priority planned in the 7 days to "
            "2026-11-06 10:00 (cap 3 a week); deferred"]
    finally:
        clinic.close()
