"""`touchpoint report`: a practice's week, told by the ledger, the replies and the cases.

One small practice (its own three-journey library) lives through 2026-11-02 → 11-08:
reminders (one sent and confirmed, one without consent, one cancelled, one still ahead),
two answers to the 0-10 question (a 9 and a 4, which opens a case), two win-back emails
of which one led to a booking within 14 days, and three referred patients from two
sources. The report must say exactly that, as JSON and in the terminal.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console
from sqlalchemy import update

from engine import clock
from engine.cli import cli
from engine.outcomes import Status
from engine.preview import send_test
from engine.replies import record_inbound
from engine.report import sparkline
from engine.store.schema import inbound_messages
from tests.support import LIBRARY_TEMPLATES, Clinic, appointment, patient, referrer

SCHEDULES = {
    "remind.yaml": """version: 1
journey: remind
trigger: appointment.booked
exit_on: [appointment.cancelled]
steps:
  - id: day-before
    when: {days_before: 1, at: "10:00"}
    channels: [sms]
    template: remind/day-before
""",
    "ask.yaml": """version: 1
journey: ask
trigger: appointment.completed
steps:
  - id: score
    when: {after: 1h}
    channels: [sms]
    template: ask/score
    asks: score
""",
    "winback.yaml": """version: 1
journey: winback
purpose: marketing
trigger: {event: patient.lapsed, after: 30d}
exit_on: [appointment.booked]
steps:
  - id: day-30
    when: {days_after: 30, at: "11:00"}
    channels: [email]
    template: winback/day-30
""",
}
TEMPLATES = {
    "remind/day-before.sms.j2": "{{ practice.name }}: see you {{ appointment.start | short_date }}"
                                ". Reply C to confirm. {{ practice.phone }}. STOP to opt out\n",
    "ask/score.sms.j2": "{{ practice.name }}: how likely are you to recommend us, 0-10? "
                        "{{ practice.phone }}. STOP to opt out\n",
    "winback/day-30.email.j2": "{% block subject %}We miss you{% endblock %}\n"
                               "{% block text %}Book again. {{ practice.address }} "
                               "{{ unsubscribe_url }}{% endblock %}\n",
}


def library(folder: Path) -> tuple[Path, Path]:
    schedules, templates = folder / "schedules", folder / "templates"
    for base, files in ((schedules, SCHEDULES), (templates, TEMPLATES)):
        for name, text in files.items():
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            (base / name).write_text(text, encoding="utf-8")
    for system in ("replies", "staff", "referrals"):  # what Touchpoint sends on its own
        shutil.copytree(LIBRARY_TEMPLATES / system, templates / system)
    return schedules, templates


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def text_in(clinic: Clinic, when: str, phone: str, body: str, sid: str) -> str:
    with clock.travel_to(at(when)), clinic.db.transaction() as conn:
        return record_inbound(conn, clinic.settings, provider="twilio", message_id=sid,
                              from_number=phone, to_number="+13125550199", body=body,
                              now=at(when), asks_score=clinic.definitions.score_steps).intent


@pytest.fixture
def week(database_url: str, tmp_path: Path) -> Clinic:
    schedules, templates = library(tmp_path)
    clinic = Clinic(database_url, tmp_path, schedules=schedules, templates=templates,
                    config_extra='\n[recovery]\nowner_email = "maya@riversidept.example"\n')
    start = at("2026-11-02T09:00:00-06:00")
    with clock.travel_to(start):
        clinic.referrers(referrer("DR1", name="Lakeside Orthopedics"),
                         referrer("DR2", name="North Shore Sports"))
        clinic.patients(
            patient("P1", phone="(312) 555-0101"),
            patient("P2", phone="(312) 555-0102", first_name="Ben", sms_consent="no"),
            patient("P3", phone="(312) 555-0103", first_name="Cleo", referral_source="DR1"),
            patient("P4", phone="(312) 555-0104", first_name="Dev", last_name="Shah",
                    referral_source="DR1"),
            patient("P5", phone="(312) 555-0105", first_name="Eli", referral_source="DR2"),
            patient("P6", phone="(312) 555-0106", first_name="Fay"), baseline=True)
        clinic.appointments(
            appointment("H3", "P3", "2026-10-03T10:00:00-05:00", status="completed"),
            appointment("H6", "P6", "2026-10-03T10:00:00-05:00", status="completed"),
            appointment("A1", "P1", "2026-11-05T10:00:00-06:00"),
            appointment("A2", "P2", "2026-11-05T11:00:00-06:00"),
            appointment("A3", "P1", "2026-11-06T10:00:00-06:00"),
            appointment("A4", "P4", "2026-11-04T14:00:00-06:00"))
    steps: list[tuple[str, Any]] = [
        ("2026-11-03T08:00:00-06:00", lambda: clinic.appointments(
            appointment("A3", "P1", "2026-11-06T10:00:00-06:00", status="cancelled"),
            appointment("A5", "P3", "2026-11-10T09:00:00-06:00"))),
        ("2026-11-04T10:30:00-06:00",
         lambda: text_in(clinic, "2026-11-04T10:30:00-06:00", "+13125550101", "C", "SM1")),
        ("2026-11-04T15:30:00-06:00", lambda: clinic.appointments(
            appointment("A4", "P4", "2026-11-04T14:00:00-06:00", status="completed"))),
        ("2026-11-04T16:30:00-06:00",
         lambda: text_in(clinic, "2026-11-04T16:30:00-06:00", "+13125550104", "4", "SM2")),
        ("2026-11-05T12:00:00-06:00", lambda: clinic.appointments(
            appointment("A1", "P1", "2026-11-05T10:00:00-06:00", status="completed"))),
        ("2026-11-05T12:30:00-06:00",
         lambda: text_in(clinic, "2026-11-05T12:30:00-06:00", "+13125550101", "9", "SM3")),
    ]
    now = start
    while now <= at("2026-11-08T12:00:00-06:00"):
        while steps and at(steps[0][0]) <= now:
            with clock.travel_to(at(steps[0][0])):
                steps.pop(0)[1]()
        with clock.travel_to(now):
            clinic.tick()
        now += timedelta(minutes=30)
    yield clinic
    clinic.close()


def report(clinic: Clinic, *args: str) -> Any:
    result = CliRunner().invoke(cli, [
        "--config", str(clinic.config), "--db", clinic.settings.database_url,
        "--schedules", str(clinic.settings.schedules_dir),
        "--templates", str(clinic.settings.templates_dir),
        "--now", "2026-11-08T12:00:00-06:00", "report", *args])
    assert result.exit_code == 0, result.output
    return result


def test_the_report_counts_every_step_reply_conversion_score_case_and_referral(
        week: Clinic) -> None:
    data = json.loads(report(week, "--since", "2026-11-01", "--json").stdout)

    assert (data["since"], data["until"]) == ("2026-11-01T05:00:00+00:00",
                                              "2026-11-08T18:00:00+00:00")
    lines = {(line["journey"], line["step"]): line for line in data["journeys"]}
    assert set(lines) == {("remind", "day-before"), ("ask", "score"), ("winback", "day-30")}
    remind = lines[("remind", "day-before")]
    assert {k: remind[k] for k in ("planned", "sent", "delivered", "failed", "unknown",
                                   "pending", "replies", "confirmations")} == {
        "planned": 5, "sent": 2, "delivered": 0, "failed": 0, "unknown": 0, "pending": 1,
        "replies": 1, "confirmations": 1}
    assert remind["skipped"] == {"no_consent": 1}
    assert remind["cancelled"] == {"appointment_cancelled": 1}
    ask = lines[("ask", "score")]
    assert (ask["planned"], ask["sent"], ask["replies"], ask["confirmations"]) == (2, 2, 2, 0)
    winback = lines[("winback", "day-30")]
    assert (winback["planned"], winback["sent"], winback["cancelled"]) == (2, 2, {})

    # Cleo booked within 14 days of her win-back email; Fay did not
    assert data["win_back"] == {"journeys": ["winback"], "messaged": 2,
                                "booked_within_14_days": 1, "conversion": 0.5}
    score = data["satisfaction"]
    assert (score["answers"], score["average"], score["promoters"], score["detractors"]) == (
        2, 6.5, 1, 1)
    assert [(w["week_of"], w["answers"], w["average"]) for w in score["weekly"]] == [
        ("2026-11-01", 2, 6.5), ("2026-11-08", 0, None)]
    cases = data["cases"]
    assert (cases["opened"], cases["resolved"]) == ({"low_score": 1}, 0)
    [case] = cases["open"]
    assert (case["id"], case["cause"], case["patient"], case["overdue"]) == (
        1, "low_score", "Dev Shah", True)  # due Thursday 16:30, still open on Sunday
    assert case["age_hours"] == pytest.approx(3 * 24 + 19.5)
    assert data["referrals"] == [
        {"referrer": "Lakeside Orthopedics", "referred": 2, "seen": 1, "discharged": 0,
         "messages": 0},
        {"referrer": "North Shore Sports", "referred": 1, "seen": 0, "discharged": 0,
         "messages": 0}]


def test_the_report_reads_in_a_terminal(week: Clinic) -> None:
    text = report(week, "--since", "2026-11-01").stdout

    assert "Since Sun 01 Nov 2026" in text
    assert "Touch points by journey and step" in text
    assert "1 no_consent, 1 appointment_cancelled" in text
    assert "Win-back: 1 of 2 patients messaged booked within 14 days (50%)." in text
    assert "Satisfaction: average 6.5/10 from 2 answers (1 promoters, 1 detractors)" in text
    assert "Recovery: opened 1 low score; 0 resolved; 1 open." in text
    assert "case 1    low score" in text and "Dev Shah" in text and "overdue" in text
    assert "Lakeside Orthopedics" in text and "North Shore Sports" in text


def test_since_limits_the_report_to_what_was_planned_from_that_day(week: Clinic) -> None:
    data = json.loads(report(week, "--since", "2026-11-05", "--json").stdout)

    lines = {(line["journey"], line["step"]): line for line in data["journeys"]}
    # Only A1's question was planned (on its completion) from Thursday on
    assert set(lines) == {("ask", "score")}
    assert (lines[("ask", "score")]["planned"], lines[("ask", "score")]["replies"]) == (1, 1)
    assert data["satisfaction"]["answers"] == 1 and data["satisfaction"]["average"] == 9
    assert data["win_back"]["messaged"] == 0 and data["win_back"]["conversion"] is None
    assert data["cases"]["opened"] == {} and len(data["cases"]["open"]) == 1


def test_a_bad_since_is_one_clear_error(sqlite_url: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--db", sqlite_url, "report", "--since", "last week"])

    assert result.exit_code == 2
    assert "write a day as YYYY-MM-DD, e.g. 2026-11-01" in result.output
    assert "Traceback" not in result.output


def test_a_sparkline_shows_each_week_from_low_to_high_and_a_gap_for_none() -> None:
    assert sparkline([0, 5, 10, None, 7.5]) == "▁▅█ ▆"
    assert sparkline([]) == ""


def test_a_booking_soon_after_a_later_win_back_message_is_a_conversion(
        sqlite_url: str, tmp_path: Path) -> None:
    """Booked 3 days after the day-60 message (33 days after the day-30 one): the day-60
    message brought them back."""
    schedules, templates = library(tmp_path)
    (schedules / "winback.yaml").write_text(SCHEDULES["winback.yaml"] + """\
  - id: day-60
    when: {days_after: 60, at: "11:00"}
    channels: [email]
    template: winback/day-30
""", encoding="utf-8")
    clinic = Clinic(sqlite_url, tmp_path, schedules=schedules, templates=templates)
    try:
        with clock.travel_to(at("2026-11-02T09:00:00-06:00")):
            clinic.patients(patient("P6", first_name="Fay"), baseline=True)
            clinic.appointments(appointment("H6", "P6", "2026-10-03T10:00:00-05:00",
                                            status="completed"))
        for when in ("2026-11-02T09:00:00-06:00", "2026-11-02T11:00:00-06:00",
                     "2026-12-02T11:00:00-06:00"):
            with clock.travel_to(at(when)):
                clinic.tick()
        with clock.travel_to(at("2026-12-05T10:00:00-06:00")):
            clinic.appointments(appointment("A9", "P6", "2026-12-09T10:00:00-06:00"))
            clinic.tick()
        sent = [tp.step for tp in clinic.touch_points(journey="winback") if tp.sent_at]
        assert sent == ["day-30", "day-60"]

        result = CliRunner().invoke(cli, [
            "--config", str(clinic.config), "--db", sqlite_url, "--schedules", str(schedules),
            "--templates", str(templates), "--now", "2026-12-06T12:00:00-06:00", "report",
            "--since", "2026-11-01", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["win_back"] == {
            "journeys": ["winback"], "messaged": 1, "booked_within_14_days": 1,
            "conversion": 1.0}
    finally:
        clinic.close()


def test_test_sends_and_replies_to_them_are_left_out_of_the_report(week: Clinic) -> None:
    """The manager tries the win-back email on a real patient, and the 0-10 question on
    their own phone (as a patient, then with the sample patient), and answers it."""
    before = json.loads(report(week, "--since", "2026-11-01", "--json").stdout)
    channels = {"sms": week.sms, "email": week.email}
    sunday = at("2026-11-08T10:00:00-06:00")
    with clock.travel_to(sunday):
        sent = [send_test(week.db, week.definitions, week.settings, channels, journey, step,
                          to, sunday, patient_id=patient_id)
                for journey, step, to, patient_id in (
                    ("winback", "day-30", "me@riversidept.example", "P2"),
                    ("ask", "score", "(312) 555-0142", "P6"),
                    ("remind", "day-before", "(312) 555-0142", "P3"),
                    ("ask", "score", "(312) 555-0143", None))]
    assert {tp.status for tp in sent} == {Status.SENT}
    assert text_in(week, "2026-11-08T10:05:00-06:00", "+13125550142", "3", "SM8") == "other"
    assert text_in(week, "2026-11-08T10:06:00-06:00", "+13125550142", "C", "SM9") == "other"
    assert text_in(week, "2026-11-08T10:07:00-06:00", "+13125550143", "10", "SM10") == "other"

    after = json.loads(report(week, "--since", "2026-11-01", "--json").stdout)
    assert after == before
    assert after["win_back"]["messaged"] == 2 and after["satisfaction"]["answers"] == 2
    assert after["cases"]["opened"] == {"low_score": 1}  # Fay's 3 to a test opened none


def test_a_reply_already_recorded_against_a_test_send_is_not_counted(week: Clinic) -> None:
    """Before test sends were told apart, a 0-10 reply to one was kept as an answer."""
    before = json.loads(report(week, "--since", "2026-11-01", "--json").stdout)
    sunday = at("2026-11-08T10:00:00-06:00")
    with clock.travel_to(sunday):
        tp = send_test(week.db, week.definitions, week.settings, {"sms": week.sms}, "ask",
                       "score", "(312) 555-0142", sunday)
    text_in(week, "2026-11-08T10:05:00-06:00", "+13125550142", "2", "SM8")
    with week.db.transaction() as conn:
        conn.execute(update(inbound_messages).where(inbound_messages.c.provider_message_id
                                                    == "SM8")
                     .values(touch_point_id=tp.id, intent="score", score=2))

    after = json.loads(report(week, "--since", "2026-11-01", "--json").stdout)
    assert after["satisfaction"] == before["satisfaction"]
    assert after["journeys"] == before["journeys"]


# --------------------------------------------------------------------------- the demo


@pytest.mark.slow
def test_the_demo_opens_with_the_practices_story_and_explains_every_reason(
        database_url: str, tmp_path: Path) -> None:
    from engine.cases import list_cases
    from engine.definitions.journeys import SYSTEM_JOURNEYS
    from engine.demo import print_report, run_demo
    from engine.outcomes import EXPLANATIONS

    clinic = Clinic(database_url, tmp_path)
    try:
        run_demo(clinic.db, clinic.settings, clinic.definitions, days=7)
        out = io.StringIO()
        print_report(Console(file=out, width=400), clinic.db, clinic.settings, days=7)
        text = out.getvalue()
        points = [tp for tp in clinic.touch_points() if not tp.test]
        with clinic.db.transaction() as conn:
            cases = list_cases(conn)
    finally:
        clinic.close()

    story = text[:text.index("Timeline")]
    labels = [line.split()[0] for line in story.splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    assert labels == ["Reached", "Sent", "Visits", "Listened", "Caught"]
    assert story.index("What Touchpoint did for Riverside Physical Therapy in 7 days") \
        < story.index("Reached") < story.index("Not sent, and why")

    sent = [tp for tp in points if tp.status in (Status.SENT, Status.DELIVERED)
            and tp.journey not in SYSTEM_JOURNEYS]
    texts = sum(1 for tp in sent if tp.channel == "sms")
    reached = {tp.patient_id for tp in sent if not tp.recipient.startswith("referrer:")}
    assert f"Reached    {len(reached)} of " in story
    assert f"Sent       {len(sent)} messages: {texts} texts and {len(sent) - texts} emails" \
        in story
    assert f"Caught     {len(cases)} recovery cases: " in story and len(cases) > 0

    # every reason the report shows anywhere is explained in words on the first screen
    shown = set(re.findall(r"\b(skipped|cancelled|failed|unknown): ([a-z_]+)", text))
    assert {("skipped", "too_late"), ("cancelled", "appointment_cancelled")} <= shown
    for status, reason in shown:
        [line] = [line for line in story.splitlines() if f"{status}: {reason} " in line]
        count = sum(1 for tp in points if (tp.status, tp.reason) == (status, reason)
                    and tp.journey not in SYSTEM_JOURNEYS)
        assert line.split()[0] == str(count)
        assert line.endswith(EXPLANATIONS[reason])


def test_the_story_counts_visits_reminded_and_confirmed(week: Clinic) -> None:
    """A1 (reminded, confirmed with C), A2 (no consent: not reminded) and A4 (reminded)
    were due in the week; A3 was cancelled, A5 is next week."""
    from engine.demo import practice_story, print_story

    start, end = at("2026-11-02T00:00:00-06:00"), at("2026-11-08T12:00:00-06:00")
    story = practice_story(week.db, start, end)
    out = io.StringIO()
    print_story(Console(file=out, width=300), story, "Riverside Physical Therapy", start, end)

    assert (story.visits, story.reminded, story.confirmed) == (3, 2, 1)
    assert "Visits     2 of 3 visits were reminded beforehand; 1 confirmed by replying C" \
        in out.getvalue()
    assert (story.cases, story.with_case) == ({"low_score": 1}, 1)  # Dev's 4
    assert "Caught     1 recovery case: 1 low satisfaction score" in out.getvalue()
