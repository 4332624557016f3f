"""Recovery cases and satisfaction scores: engine/feedback.py (reading a reply), the score
and complaint handling of engine/replies.py, engine/cases.py (opening, the case desk's
alerts, retries and escalations, resolving), their place in engine/runner.py's tick, the
`cases` / `case` commands, and the shipped recovery, review-request and follow-up journeys.

Texts arrive through the real ASGI app, signed as Twilio signs them (the ``Practice`` rig
of tests/test_webhooks.py); the fake channels record what went out. Practice timezone:
America/Chicago (CST, UTC-6 after 2026-11-01); 2026-11-02 is a Monday. The default
patient P1 (Ana Reyes) texts from +13125550100.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import update

from engine import clock
from engine.cases import Case, due_time, get_case, history, list_cases, resolve
from engine.channels.base import OutboundMessage
from engine.errors import PermanentChannelError
from engine.feedback import parse_score, reads_as_complaint
from engine.outcomes import Status
from engine.report import satisfaction
from engine.runner import Runner
from engine.settings import load_settings
from engine.store.ledger import TouchPoint
from engine.store.schema import appointments, inbound_messages, patients, touch_points
from tests.support import appointment, patient, write_config
from tests.test_webhooks import STAFF, Practice

OWNER_NAME = "Maya Chen"
OWNER = "maya@riversidept.example"
OWNER_PHONE = "+13125550111"
DIRECTOR = "director@riversidept.example"
RECOVERY = f'\n[recovery]\nowner_name = "{OWNER_NAME}"\nowner_email = "{OWNER}"\n'
ALERT_COMMAND = 'touchpoint case 1 resolve --note "what you did"'

# P1's first visit was Tuesday 27 Oct 10:00, two more followed: the follow-up journey asks
# the 0-10 question 7 days after the first visit, on Tuesday 03 Nov at 12:00 CST.
VISITS = (appointment("A1", "P1", "2026-10-27T10:00:00-05:00", status="completed"),
          appointment("A2", "P1", "2026-10-29T10:00:00-05:00", status="completed"),
          appointment("A3", "P1", "2026-11-02T10:00:00-06:00", status="completed"))
QUESTION_AT = "2026-11-03T12:00:00-06:00"


# --------------------------------------------------------------------------- the rig


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.fixture
def desk(database_url: str, tmp_path: Path) -> Iterator[Practice]:
    """The practice with a named recovery owner (email, no phone)."""
    rig = Practice(database_url, tmp_path, extra=RECOVERY)
    yield rig
    rig.close()


@pytest.fixture
def sqlite_desk(sqlite_url: str, tmp_path: Path) -> Iterator[Practice]:
    rig = Practice(sqlite_url, tmp_path, extra=RECOVERY)
    yield rig
    rig.close()


def visited(p: Practice, **fields: str) -> None:
    """P1 (no welcome) imported with their first visit on Tuesday 27 Oct, the visits since
    on Monday 02 Nov 11:30 CST (a visit first seen days later is history: it asks nothing)."""
    p.at("2026-10-27T11:30:00-05:00")
    p.clinic.patients(patient("P1", **fields), baseline=True)
    p.clinic.appointments(VISITS[0])
    p.clinic.tick()
    p.at("2026-11-02T11:30:00-06:00")
    p.clinic.appointments(*VISITS)
    p.clinic.tick()


def asked(p: Practice, **fields: str) -> TouchPoint:
    """P1 a week after their first visit, texted the 0-10 question on Tuesday at 12:00 CST."""
    visited(p, **fields)
    p.at(QUESTION_AT)
    p.clinic.tick()
    question = p.clinic.one("follow-up", "satisfaction-day-7")
    assert (question.status, question.channel) == (Status.SENT, "sms")
    return question


def booked(p: Practice, *rows: dict[str, str]) -> None:
    """P1 (no welcome) with ``rows`` booked, imported and planned on Monday 09:00 CST."""
    p.at("2026-11-02T09:00:00-06:00")
    p.clinic.patients(patient("P1"), baseline=True)
    p.clinic.appointments(*rows)
    p.clinic.tick()


def cases_of(p: Practice) -> list[Case]:
    with p.clinic.db.transaction() as conn:
        return list_cases(conn)


def story(p: Practice, case_id: int) -> list[tuple[str, str]]:
    """(kind, by) of each step in the case's history."""
    with p.clinic.db.transaction() as conn:
        return [(e.kind, e.by) for e in history(conn, case_id)]


def details(p: Practice, case_id: int) -> list[str]:
    with p.clinic.db.transaction() as conn:
        return [e.detail for e in history(conn, case_id)]


def case(p: Practice, case_id: int) -> Case:
    with p.clinic.db.transaction() as conn:
        found = get_case(conn, case_id)
    assert found is not None
    return found


def mail_to(p: Practice, address: str) -> list[OutboundMessage]:
    return [m for m in p.clinic.email.sent if m.to == address]


def tick_at(p: Practice, when: str) -> tuple[int, int, int]:
    """(cases opened, case alerts, escalations) of one tick at ``when``."""
    p.at(when)
    report = p.clinic.tick()
    return report.cases_opened, report.case_alerts, report.escalations


def cli(p: Practice, *args: str) -> Result:
    """The touchpoint command at the rig's clock (the command releases the clock on exit)."""
    now = clock.now()
    try:
        return p.cli(*args)
    finally:
        clock.set_now(now)


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# --------------------------------------------------------------------------- reading replies


@pytest.mark.parametrize(("body", "score"), [
    ("8", 8), (" 8. ", 8), ("8/10", 8), ("8 / 10", 8), ("8 out of 10", 8), ("8 of 10", 8),
    ("eight", 8), ("Eight!", 8), ("ocho", 8), ("OCHO", 8), ("8 de 10", 8), ("8 sobre 10", 8),
    ("diez", 10), ("10/10", 10), ("ten", 10), ("0", 0), ("cero", 0), ("seis", 6),
])
def test_a_score_is_a_bare_number_or_n_of_ten_in_english_or_spanish(body: str,
                                                                     score: int) -> None:
    assert parse_score(body) == score


@pytest.mark.parametrize("body", [
    "11", "-1", "8.5", "8/100", "I'd say 8", "8 because the wait was long", "8 9", "",
    "C", "yes", "10 out of 5", "eighty",
])
def test_anything_but_a_score_is_not_read_as_one(body: str) -> None:
    assert parse_score(body) is None


@pytest.mark.parametrize(("body", "phrase"), [
    ("The front desk was RUDE to me", "rude"),
    ("I waited 40 minutes", "waited"),
    ("Very disappointed with today's session", "disappointed"),
    ("Esperé mucho y el servicio fue pésimo", "espere mucho"),
    ("Quiero poner una queja", "queja"),
    ("No complaints but the wait was terrible", "terrible"),
    ("No complaints, thanks!", None),
    ("Nothing to complain about, see you Thursday", None),
    ("Great session, thank you Maya", None),
    ("Sin queja, gracias", None),
])
def test_a_complaint_is_read_in_english_or_spanish_but_not_when_denied(
        body: str, phrase: str | None) -> None:
    assert reads_as_complaint(body) == phrase


@pytest.mark.parametrize(("opened", "extra", "due"), [
    ("2026-11-06T10:00:00-06:00", "", "2026-11-09T10:00:00-06:00"),  # Fri → Mon
    ("2026-11-02T16:45:00-06:00", "", "2026-11-03T16:45:00-06:00"),  # Mon → Tue
    ("2026-11-07T09:00:00-06:00", "", "2026-11-09T09:00:00-06:00"),  # Sat → Mon
    ("2026-11-06T10:00:00-06:00", "business_days = \"mon-sat\"", "2026-11-07T10:00:00-06:00"),
    ("2026-11-05T10:00:00-06:00", "sla_business_days = 2", "2026-11-09T10:00:00-06:00"),
    # across the spring DST change: same local time, an hour less in UTC
    ("2027-03-12T10:00:00-06:00", "", "2027-03-15T10:00:00-05:00"),
])
def test_a_case_is_due_business_days_later_at_the_same_local_time(
        tmp_path: Path, opened: str, extra: str, due: str) -> None:
    settings = load_settings(write_config(tmp_path, f"\n[recovery]\n{extra}\n"), {})
    assert due_time(local(opened), settings) == local(due)


# --------------------------------------------------------------------------- scores


def test_a_texted_score_is_kept_on_the_patient_the_visit_and_the_message(
        desk: Practice) -> None:
    question = asked(desk)
    desk.at("2026-11-03T12:40:00-06:00")
    assert desk.text_in("8/10", "SMscore").status_code == 200

    [reply] = desk.rows(inbound_messages)
    assert (reply.intent, reply.score, reply.touch_point_id, reply.staff_status) == (
        "score", 8, question.id, "")
    [ana] = desk.rows(patients)
    assert (ana.satisfaction_score, ana.satisfaction_at) == (8, local("2026-11-03T12:40-06:00"))
    scored = {a.external_id: a.satisfaction_score for a in desk.rows(appointments)}
    assert scored == {"A1": 8, "A2": None, "A3": None}  # the first visit: it asked
    assert reply.appointment_id == question.appointment_id
    assert desk.clinic.history(question)[-1].detail == "the patient answered 8/10"
    # a middling score: no case, no review request, nothing for the inbox or the staff
    desk.at("2026-11-03T14:00:00-06:00")
    desk.clinic.tick()
    assert cases_of(desk) == []
    assert desk.clinic.touch_points(journey="review-request") == []
    assert desk.emails() == []


def test_the_question_goes_7_and_28_days_after_the_first_visit_and_each_answer_counts(
        desk: Practice) -> None:
    question = asked(desk)
    later = desk.clinic.one("follow-up", "satisfaction-day-28")  # one: visits 2 and 3 ask none
    assert (later.status, later.due_at) == (Status.PLANNED, local("2026-11-24T12:00:00-06:00"))
    first_visit = {a.external_id: a.id for a in desk.rows(appointments)}["A1"]
    assert question.appointment_id == later.appointment_id == first_visit
    desk.at("2026-11-03T12:30:00-06:00")
    desk.text_in("8", "SMweek")
    desk.at("2026-11-24T12:00:00-06:00")
    desk.clinic.tick()
    later = desk.clinic.one("follow-up", "satisfaction-day-28")
    assert (later.status, later.channel) == (Status.SENT, "sms")
    desk.at("2026-11-24T12:20:00-06:00")
    desk.text_in("9", "SMmonth")
    assert [(r.score, r.touch_point_id) for r in desk.rows(inbound_messages)] == [
        (8, question.id), (9, later.id)]
    assert desk.rows(patients)[0].satisfaction_score == 9  # the latest answer


def test_answers_to_the_old_third_visit_question_still_count_after_an_upgrade(
        desk: Practice) -> None:
    """A practice upgrading from the single ``satisfaction`` step keeps its history: the
    report counts every scored reply, whatever the step that asked was called."""
    question = asked(desk)
    desk.at("2026-11-03T12:30:00-06:00")
    desk.text_in("9", "SMold")
    with desk.clinic.db.transaction() as conn:
        conn.execute(update(touch_points).where(touch_points.c.id == question.id)
                     .values(step="satisfaction"))
        scores = satisfaction(conn, local("2026-11-02T00:00:00-06:00"),
                              local("2026-11-09T00:00:00-06:00"))
    assert (scores["answers"], scores["average"], scores["promoters"]) == (1, 9.0, 1)


@pytest.mark.parametrize(("body", "score"), [
    ("8", 8), ("eight", 8), ("Ocho", 8), ("8 de 10", 8), ("7 out of 10", 7), ("siete.", 7)])
def test_each_way_of_writing_a_score_is_read_as_the_answer(
        sqlite_desk: Practice, body: str, score: int) -> None:
    asked(sqlite_desk)
    sqlite_desk.at("2026-11-03T13:00:00-06:00")
    sqlite_desk.text_in(body, "SMscore")
    [reply] = sqlite_desk.rows(inbound_messages)
    assert (reply.intent, reply.score) == ("score", score)
    assert sqlite_desk.rows(patients)[0].satisfaction_score == score


def test_a_number_is_an_answer_only_within_a_week_of_the_question(desk: Practice) -> None:
    visited(desk)
    desk.text_in("7", "SMnoquestion")  # nothing asked yet: just a text
    desk.at(QUESTION_AT)
    desk.clinic.tick()
    desk.at("2026-11-03T12:30:00-06:00")
    desk.text_in("7, parking was hard", "SMwords")
    desk.at("2026-11-10T11:59:00-06:00")  # 6 days 23 h 59 min after the question
    desk.text_in("7", "SMintime")
    desk.at("2026-11-10T12:01:00-06:00")  # a week and a minute after
    desk.text_in("6", "SMlate")

    rows = desk.rows(inbound_messages)
    assert [(r.body, r.intent, r.score, r.staff_status) for r in rows] == [
        ("7", "other", None, "new"),
        ("7, parking was hard", "other", None, "new"),
        ("7", "score", 7, ""),
        ("6", "other", None, "new"),
    ]
    assert desk.rows(patients)[0].satisfaction_score == 7
    assert [m.to for m in desk.emails()] == [STAFF] * 3  # the staff read the free texts
    assert cases_of(desk) == []  # a late "6" opens no low-score case


@pytest.mark.parametrize(("body", "cause"), [
    ("0", "low_score"), ("6", "low_score"), ("7", None), ("8", None), ("9", None),
    ("10", None)])
def test_zero_to_six_opens_a_case_and_no_score_asks_for_a_review(
        sqlite_desk: Practice, body: str, cause: str | None) -> None:
    """No review gating: the review request never depends on the score (it goes at a
    visit milestone, see below); a low score opens a recovery case."""
    asked(sqlite_desk)
    sqlite_desk.at("2026-11-03T12:30:00-06:00")
    sqlite_desk.text_in(body, "SMscore")
    sqlite_desk.at("2026-11-04T12:31:00-06:00")
    sqlite_desk.clinic.tick()
    assert [c.cause for c in cases_of(sqlite_desk)] == ([cause] if cause else [])
    assert sqlite_desk.clinic.touch_points(journey="review-request") == []
    assert sqlite_desk.rows(patients)[0].satisfaction_score == int(body)  # reports keep it


# --------------------------------------------------------------------------- low score


def test_a_low_score_opens_a_case_the_owner_hears_of_next_tick_and_the_patient_gets_a_note(
        desk: Practice) -> None:
    question = asked(desk)
    desk.at("2026-11-03T12:30:00-06:00")
    desk.text_in("3", "SMlow")
    desk.text_in("3", "SMlow")  # Twilio re-delivered the webhook
    [opened] = cases_of(desk)
    assert (opened.id, opened.cause, opened.status, opened.owner) == (
        1, "low_score", "open", OWNER_NAME)
    assert (opened.touch_point_id, opened.appointment_id) == (question.id,
                                                              question.appointment_id)
    assert opened.detail == "answered 3/10 to follow-up/satisfaction-day-7"
    assert opened.opened_at == local("2026-11-03T12:30:00-06:00")
    assert opened.due_at == local("2026-11-04T12:30:00-06:00")
    assert opened.alerted_at is None and desk.emails() == []
    assert len(desk.rows(inbound_messages)) == 1

    assert tick_at(desk, "2026-11-03T12:31:00-06:00")[1:] == (1, 0)
    [alert] = mail_to(desk, OWNER)
    assert alert.subject == "Recovery case 1: a low satisfaction score - Ana Reyes"
    lines = [line.strip() for line in alert.body.splitlines()]
    assert "Why:     a low satisfaction score - answered 3/10 to follow-up/satisfaction-day-7" in \
        alert.body
    assert 'They wrote: "3"' in lines
    assert ALERT_COMMAND in lines
    assert desk.emails() == [alert]  # nobody else: a score is not an inbox message
    assert case(desk, 1).alerted_at == local("2026-11-03T12:31:00-06:00")
    for later in ("2026-11-03T12:33:00-06:00", "2026-11-03T13:30:00-06:00"):
        assert tick_at(desk, later)[1:] == (0, 0)
    assert len(mail_to(desk, OWNER)) == 1

    # staff call first: the note is for the next morning, if the case is still open
    note = desk.clinic.one("recovery", "personal-note")
    assert (note.status, note.anchor, note.due_at) == (
        Status.PLANNED, "case:1", local("2026-11-04T10:30:00-06:00"))
    tick_at(desk, "2026-11-04T10:30:00-06:00")
    note = desk.clinic.one("recovery", "personal-note")
    assert note.status == Status.SENT
    [message] = desk.clinic.sent_to(note.id)
    assert OWNER_NAME in message.body and "(312) 555-0199" in message.body
    assert message.to in ("+13125550100", "p1@example.com")
    assert story(desk, 1) == [("opened", "touchpoint"), ("alerted", "email")]
    assert len(cases_of(desk)) == 1


def test_an_sms_only_patient_who_scores_low_still_gets_the_personal_note(
        sqlite_desk: Practice) -> None:
    asked(sqlite_desk, email="")
    sqlite_desk.at("2026-11-03T12:30:00-06:00")
    sqlite_desk.text_in("3", "SMlow")
    for when in ("2026-11-03T12:31:00-06:00", "2026-11-03T14:30:00-06:00",
                 "2026-11-04T10:30:00-06:00", "2026-11-04T14:30:00-06:00"):
        tick_at(sqlite_desk, when)
    note = sqlite_desk.clinic.one("recovery", "personal-note")
    assert (note.status, note.reason) == (Status.SENT, None)
    [message] = sqlite_desk.clinic.sent_to(note.id)
    assert message.to == "+13125550100" and OWNER_NAME in message.body


def test_resolving_a_case_cancels_its_note_and_not_the_note_of_another_open_case(
        desk: Practice) -> None:
    asked(desk)
    desk.at("2026-11-03T12:30:00-06:00")
    desk.text_in("2", "SMlow")
    desk.at("2026-11-03T12:45:00-06:00")
    desk.text_in("Honestly the front desk was rude", "SMrude")
    assert [(c.id, c.cause) for c in cases_of(desk)] == [(1, "low_score"), (2, "complaint")]
    assert tick_at(desk, "2026-11-03T12:46:00-06:00")[1] == 2
    notes = desk.clinic.touch_points(journey="recovery")
    assert [(n.anchor, n.status) for n in notes] == [("case:1", Status.PLANNED),
                                                     ("case:2", Status.PLANNED)]

    desk.at("2026-11-03T13:10:00-06:00")
    result = cli(desk, "case", "1", "resolve", "--note", "Called Ana; she is rebooked",
                 "--by", "maya")
    assert (result.exit_code, result.stdout) == (0, "case 1 resolved.\n")
    tick_at(desk, "2026-11-04T10:30:00-06:00")  # both notes were due now
    first, second = desk.clinic.touch_points(journey="recovery")
    assert (first.anchor, first.status, first.reason) == (
        "case:1", Status.CANCELLED, "journey_exited")
    assert desk.clinic.sent_to(first.id) == []
    assert (second.anchor, second.status) == ("case:2", Status.SENT)
    assert case(desk, 2).is_open
    assert story(desk, 1)[-1] == ("resolved", "maya")


# --------------------------------------------------------------------------- other causes


def test_no_shows_and_late_cancellations_open_one_case_each_early_cancellations_none(
        desk: Practice) -> None:
    booked(desk, appointment("A1", "P1", "2026-11-04T10:00:00-06:00"),
           appointment("A2", "P1", "2026-11-05T09:00:00-06:00"),
           appointment("A3", "P1", "2026-11-09T10:00:00-06:00"))
    changed = (appointment("A1", "P1", "2026-11-04T10:00:00-06:00", status="no_show"),
               appointment("A2", "P1", "2026-11-05T09:00:00-06:00", status="cancelled"),
               appointment("A3", "P1", "2026-11-09T10:00:00-06:00", status="cancelled"))
    desk.at("2026-11-04T12:00:00-06:00")
    desk.clinic.appointments(*changed)
    assert tick_at(desk, "2026-11-04T12:00:00-06:00") == (2, 2, 0)  # opened and alerted

    ids = {a.id: a.external_id for a in desk.rows(appointments)}
    found = [(c.cause, ids[c.appointment_id or 0], c.detail) for c in cases_of(desk)]
    assert found == [
        ("no_show", "A1", "did not come to appointment A1 at 2026-11-04T16:00:00+00:00"),
        ("late_cancellation", "A2",
         "cancelled appointment A2 21 h before it (2026-11-05T15:00:00+00:00)"),
    ]
    assert sorted(m.subject or "" for m in mail_to(desk, OWNER)) == [
        "Recovery case 1: a missed visit - Ana Reyes",
        "Recovery case 2: a late cancellation - Ana Reyes"]
    # the personal note is for the missed visit, not the cancellation
    [note] = desk.clinic.touch_points(journey="recovery")
    assert (note.anchor, note.due_at) == ("case:1", local("2026-11-05T10:30:00-06:00"))

    # the same export again, the visit flipped back and marked missed again, more ticks
    desk.at("2026-11-04T12:30:00-06:00")
    desk.clinic.appointments(*changed)
    desk.clinic.appointments(appointment("A1", "P1", "2026-11-04T10:00:00-06:00"))
    desk.clinic.appointments(changed[0])
    for when in ("2026-11-04T12:30:00-06:00", "2026-11-04T12:45:00-06:00",
                 "2026-11-05T10:30:00-06:00"):
        assert tick_at(desk, when)[:2] == (0, 0)
    assert len(cases_of(desk)) == 2
    assert len(mail_to(desk, OWNER)) == 2
    [note] = desk.clinic.touch_points(journey="recovery")
    assert note.status == Status.SENT
    [message] = desk.clinic.sent_to(note.id)
    assert "We missed you at your visit" in message.body and OWNER_NAME in message.body


def unreachable_patient(database_url: str, tmp_path: Path) -> Practice:
    """A practice (owner named, no owner_email) where nothing reaches P1: the number is
    invalid and the mailbox does not exist."""
    p = Practice(database_url, tmp_path, extra=f'\n[recovery]\nowner_name = "{OWNER_NAME}"\n')
    p.clinic.sms.fail_when(lambda m: PermanentChannelError(
        "invalid number", provider="fake", code="21211") if m.to == "+13125550100" else None)
    p.clinic.email.fail_when(lambda m: PermanentChannelError(
        "mailbox does not exist", provider="fake") if m.to == "p1@example.com" else None)
    return p


def test_a_message_that_failed_for_good_opens_a_case_for_the_practice_not_the_patient(
        database_url: str, tmp_path: Path) -> None:
    # no owner_email: the alert goes to practice.staff_email
    p = unreachable_patient(database_url, tmp_path)
    try:
        p.at("2026-11-02T09:00:00-06:00")
        p.clinic.patients(patient("P1"))
        assert p.clinic.tick().dispatch.failed == 1
        welcome = p.clinic.one("welcome", "welcome")
        assert (welcome.status, welcome.reason) == (Status.FAILED, "provider_error")
        assert cases_of(p) == []

        assert tick_at(p, "2026-11-02T09:00:15-06:00") == (1, 1, 0)
        [opened] = cases_of(p)
        assert (opened.cause, opened.touch_point_id) == ("failed_delivery", welcome.id)
        assert opened.detail.startswith("welcome/welcome by email failed: sms: fake code 21211")
        [alert] = mail_to(p, STAFF)
        assert alert.subject == ("Recovery case 1: a message about their care could not be "
                                 "delivered - Ana Reyes")
        assert ALERT_COMMAND in alert.body
        # an apology to an address that does not work would not reach anyone
        assert p.clinic.touch_points(journey="recovery") == []
        assert tick_at(p, "2026-11-02T09:01:30-06:00") == (0, 0, 0)
        assert len(cases_of(p)) == 1
    finally:
        p.close()


def test_a_second_failure_while_the_case_is_open_is_noted_on_it_once(
        database_url: str, tmp_path: Path) -> None:
    """The case desk looks at recent failures again on every tick (a late commit by
    another worker is still found); a failure already noted is not noted again."""
    p = unreachable_patient(database_url, tmp_path)
    try:
        p.at("2026-11-02T09:00:00-06:00")
        p.clinic.patients(patient("P1"))
        p.clinic.tick()
        assert tick_at(p, "2026-11-02T09:00:15-06:00")[0] == 1  # welcome/welcome failed

        # ten minutes later the what-to-expect email fails too, then the desk keeps ticking
        for when in ("2026-11-02T09:10:00-06:00", "2026-11-02T09:10:15-06:00",
                     "2026-11-02T09:11:30-06:00", "2026-11-02T09:30:00-06:00",
                     "2026-11-02T10:30:00-06:00"):
            assert tick_at(p, when)[0] == 0
        assert p.clinic.one("welcome", "what-to-expect").status == Status.FAILED

        [opened] = cases_of(p)
        again = [d for d in details(p, opened.id) if d.startswith("again: ")]
        assert len(again) == 1
        assert again[0].startswith("again: welcome/what-to-expect by email failed")
    finally:
        p.close()


def test_a_text_twilio_reports_undelivered_opens_a_case(sqlite_desk: Practice) -> None:
    [welcome] = sqlite_desk.welcomed(patient("P1", email=""))  # no email to fall back to
    assert welcome.channel == "sms"
    sqlite_desk.at("2026-11-02T09:05:00-06:00")
    assert sqlite_desk.status(welcome.id, "undelivered", welcome.provider_message_id or "",
                              error="30003").status_code == 204
    assert sqlite_desk.clinic.one("welcome", "welcome").reason == "fallback"
    # the step's email is tried first: no email on file, so it fails for good…
    assert tick_at(sqlite_desk, "2026-11-02T09:05:15-06:00")[:2] == (0, 0)
    assert sqlite_desk.clinic.one("welcome", "welcome").status == Status.FAILED
    # …and the next tick opens its case
    assert tick_at(sqlite_desk, "2026-11-02T09:05:30-06:00")[:2] == (1, 1)
    [opened] = cases_of(sqlite_desk)
    assert (opened.cause, opened.touch_point_id) == ("failed_delivery", welcome.id)
    assert opened.detail.startswith("welcome/welcome by sms failed: twilio status "
                                    "undelivered, error 30003; no channel left to try (")


def test_a_text_twilio_reports_undelivered_goes_by_email_and_opens_no_case(
        sqlite_desk: Practice) -> None:
    [welcome] = sqlite_desk.welcomed()  # welcome: [sms, email]
    sqlite_desk.at("2026-11-02T09:05:00-06:00")
    assert sqlite_desk.status(welcome.id, "undelivered", welcome.provider_message_id or "",
                              error="30003").status_code == 204
    assert tick_at(sqlite_desk, "2026-11-02T09:05:15-06:00")[:2] == (0, 0)
    assert sqlite_desk.clinic.one("welcome", "welcome").channel == "email"
    assert cases_of(sqlite_desk) == []


def test_a_complaint_opens_one_case_and_more_complaints_while_it_is_open_add_notes(
        desk: Practice) -> None:
    booked(desk)
    desk.at("2026-11-02T10:00:00-06:00")
    desk.text_in("The front desk was rude to me", "SM1")
    desk.text_in("The front desk was rude to me", "SM1")  # re-played webhook
    desk.at("2026-11-02T10:05:00-06:00")
    desk.text_in("And I waited 40 minutes!", "SM2")
    desk.text_in("No complaints about Maya though", "SM3")
    [opened] = cases_of(desk)
    assert (opened.cause, opened.status) == ("complaint", "open")
    assert opened.detail == ("texted “The front desk was rude to me” (reads as a complaint: "
                             "“rude”)")
    assert story(desk, 1) == [("opened", "touchpoint"), ("note", "touchpoint")]
    assert details(desk, 1)[1] == ("again: texted “And I waited 40 minutes!” "
                                   "(reads as a complaint: “waited”)")
    rows = desk.rows(inbound_messages)
    assert [(r.provider_message_id, r.intent, r.staff_status) for r in rows] == [
        ("SM1", "other", "new"), ("SM2", "other", "new"), ("SM3", "other", "new")]
    assert opened.inbound_id == rows[0].id
    assert tick_at(desk, "2026-11-02T10:06:00-06:00")[1] == 1
    [alert] = mail_to(desk, OWNER)
    assert 'They wrote: "The front desk was rude to me"' in alert.body

    # once it is resolved, a new complaint is a new case
    with desk.clinic.db.transaction() as conn:
        resolve(conn, 1, "Apologised by phone", "maya", local("2026-11-02T11:00:00-06:00"))
    desk.at("2026-11-02T11:30:00-06:00")
    desk.text_in("Still unhappy about the bill", "SM4")
    assert [(c.id, c.cause, c.status) for c in cases_of(desk)] == [
        (1, "complaint", "resolved"), (2, "complaint", "open")]


# --------------------------------------------------------------------------- the case desk


def test_the_owner_phone_is_texted_in_the_daytime_only(sqlite_url: str, tmp_path: Path) -> None:
    # no owner_email, no escalate_to: the staff email gets the alert and the escalation
    p = Practice(sqlite_url, tmp_path,
                 extra=f'\n[recovery]\nowner_name = "{OWNER_NAME}"\n'
                       f'owner_phone = "{OWNER_PHONE}"\n')
    try:
        booked(p, appointment("A1", "P1", "2026-11-05T18:00:00-06:00"))
        p.at("2026-11-05T22:30:00-06:00")  # Thursday night
        p.clinic.appointments(appointment("A1", "P1", "2026-11-05T18:00:00-06:00",
                                          status="no_show"))
        assert tick_at(p, "2026-11-05T22:30:00-06:00") == (1, 1, 0)
        assert [m.subject for m in mail_to(p, STAFF)] == [
            "Recovery case 1: a missed visit - Ana Reyes"]
        for night in ("2026-11-05T23:00:00-06:00", "2026-11-06T07:59:00-06:00"):
            assert tick_at(p, night) == (0, 0, 0)
        assert [m for m in p.texts() if m.to == OWNER_PHONE] == []

        assert tick_at(p, "2026-11-06T08:00:00-06:00") == (0, 1, 0)
        [text] = [m for m in p.texts() if m.to == OWNER_PHONE]
        assert text.body == ("Touchpoint: recovery case 1 (no show) for Ana R. Due Friday, "
                             "November 6, 10:30 PM. Details by email.")
        assert tick_at(p, "2026-11-06T12:00:00-06:00") == (0, 0, 0)
        # due Friday 22:30 (one business day): escalated to the owner's address
        assert tick_at(p, "2026-11-06T22:30:00-06:00") == (0, 0, 1)
        assert [m.subject for m in mail_to(p, STAFF)][-1] == \
            "Overdue: recovery case 1 - Ana Reyes"
        assert [k for k, _ in story(p, 1)] == ["opened", "alerted", "alerted", "escalated"]
    finally:
        p.close()


def test_a_case_left_open_past_its_due_time_is_escalated_once(database_url: str,
                                                               tmp_path: Path) -> None:
    p = Practice(database_url, tmp_path, extra=RECOVERY + f'escalate_to = "{DIRECTOR}"\n')
    try:
        booked(p, appointment("A1", "P1", "2026-11-06T08:30:00-06:00"))
        p.at("2026-11-06T10:00:00-06:00")  # Friday
        p.clinic.appointments(appointment("A1", "P1", "2026-11-06T08:30:00-06:00",
                                          status="no_show"))
        assert tick_at(p, "2026-11-06T10:00:00-06:00") == (1, 1, 0)
        assert case(p, 1).due_at == local("2026-11-09T10:00:00-06:00")  # Monday
        for before in ("2026-11-07T10:00:00-06:00", "2026-11-09T09:59:00-06:00"):
            assert tick_at(p, before) == (0, 0, 0)
        assert mail_to(p, DIRECTOR) == []

        assert tick_at(p, "2026-11-09T10:00:00-06:00") == (0, 0, 1)
        [escalation] = mail_to(p, DIRECTOR)
        assert escalation.subject == "Overdue: recovery case 1 - Ana Reyes"
        assert ALERT_COMMAND in escalation.body
        for later in ("2026-11-09T10:05:00-06:00", "2026-11-10T10:00:00-06:00"):
            assert tick_at(p, later) == (0, 0, 0)
        assert len(mail_to(p, DIRECTOR)) == 1 and len(mail_to(p, OWNER)) == 1
        assert case(p, 1).escalated_at == local("2026-11-09T10:00:00-06:00")

        p.at("2026-11-10T11:00:00-06:00")
        result = cli(p, "case", "1", "resolve", "--note", "Called Ana; rebooked", "--by",
                     "maya")
        assert (result.exit_code, result.stdout) == (0, "case 1 resolved.\n")
        assert story(p, 1) == [("opened", "touchpoint"), ("alerted", "email"),
                               ("escalated", "escalation"), ("resolved", "maya")]
        resolved = case(p, 1)
        assert (resolved.status, resolved.resolution, resolved.resolved_at) == (
            "resolved", "Called Ana; rebooked", local("2026-11-10T11:00:00-06:00"))
    finally:
        p.close()


@pytest.mark.parametrize(("failures", "alerted"), [(2, True), (10, False)])
def test_a_failed_alert_is_tried_three_times(sqlite_desk: Practice, failures: int,
                                             alerted: bool) -> None:
    refused: list[str] = []

    def refuse(message: OutboundMessage) -> PermanentChannelError | None:
        if message.to != OWNER or len(refused) >= failures:
            return None
        refused.append(message.subject or "")
        return PermanentChannelError("mailbox full", provider="fake")

    sqlite_desk.clinic.email.fail_when(refuse)
    booked(sqlite_desk, appointment("A1", "P1", "2026-11-02T10:00:00-06:00"))
    sqlite_desk.at("2026-11-02T12:00:00-06:00")
    sqlite_desk.clinic.appointments(appointment("A1", "P1", "2026-11-02T10:00:00-06:00",
                                                status="no_show"))
    # tried at once, then again 5 minutes after each failure (a minute's look at open
    # cases in between finds it too soon)
    alerts = [tick_at(sqlite_desk, f"2026-11-02T12:{minute:02}:00-06:00")[1]
              for minute in (0, 2, 5, 7, 10, 30)]
    attempts = [m for m in sqlite_desk.clinic.email.attempts if m.to == OWNER]
    assert len(attempts) == 3
    assert alerts == ([0, 0, 0, 0, 1, 0] if alerted else [0] * 6)
    assert [k for k, _ in story(sqlite_desk, 1)] == \
        ["opened", "alert_failed", "alert_failed", "alerted" if alerted else "alert_failed"]
    if not alerted:
        assert details(sqlite_desk, 1)[-1].endswith("mailbox full (try 3 of 3)")
    assert (case(sqlite_desk, 1).alerted_at is not None) is alerted
    assert len(cases_of(sqlite_desk)) == 1  # a failed staff alert is not a patient's case


def test_two_runners_ticking_open_alert_and_note_a_case_once(desk: Practice) -> None:
    booked(desk, appointment("A1", "P1", "2026-11-02T10:00:00-06:00"))
    other = Runner(desk.clinic.db, desk.clinic.settings, desk.clinic.definitions,
                   {"sms": desk.clinic.sms, "email": desk.clinic.email}, worker="second")
    desk.at("2026-11-02T12:00:00-06:00")
    desk.clinic.appointments(appointment("A1", "P1", "2026-11-02T10:00:00-06:00",
                                         status="no_show"))
    opened = alerts = 0
    for when in ("02T12:00:00", "02T12:00:00", "02T12:01:30", "02T12:03:00", "03T10:30:00",
                 "03T10:30:00", "03T10:35:00"):
        for runner in (other, desk.clinic.runner):
            desk.at(f"2026-11-{when}-06:00")
            report = runner.tick()
            opened += report.cases_opened
            alerts += report.case_alerts
    assert (opened, alerts, len(cases_of(desk)), len(mail_to(desk, OWNER))) == (1, 1, 1, 1)
    [note] = desk.clinic.touch_points(journey="recovery")
    assert note.status == Status.SENT and len(desk.clinic.sent_to(note.id)) == 1


# --------------------------------------------------------------------------- the commands


def test_cases_are_listed_resolved_and_noted_from_the_command_line(desk: Practice) -> None:
    booked(desk, appointment("A1", "P1", "2026-11-04T10:00:00-06:00"),
           appointment("A2", "P1", "2026-11-05T09:00:00-06:00"))
    assert cli(desk, "cases").stdout == "No recovery cases yet.\n"
    desk.at("2026-11-04T12:00:00-06:00")
    desk.clinic.appointments(
        appointment("A1", "P1", "2026-11-04T10:00:00-06:00", status="no_show"),
        appointment("A2", "P1", "2026-11-05T09:00:00-06:00", status="cancelled"))
    ran = json.loads(cli(desk, "run", "--once", "--json").stdout)
    assert (ran["cases_opened"], ran["case_alerts"], ran["escalations"]) == (2, 2, 0)

    listed = json.loads(cli(desk, "cases", "--json").stdout)
    assert [(c["id"], c["status"], c["cause"], c["patient"], c["owner"], c["overdue"])
            for c in listed] == [(1, "open", "no_show", "Ana Reyes", OWNER_NAME, False),
                                 (2, "open", "late_cancellation", "Ana Reyes", OWNER_NAME,
                                  False)]
    assert (listed[0]["opened_at"], listed[0]["due_at"], listed[0]["alerted_at"]) == (
        "2026-11-04T18:00:00Z", "2026-11-05T18:00:00Z", "2026-11-04T18:00:00Z")

    desk.at("2026-11-04T13:15:00-06:00")
    done = cli(desk, "case", "1", "resolve", "--note", "Called Ana, rebooked", "--by", "maya")
    assert (done.exit_code, done.stdout) == (0, "case 1 resolved.\n")
    assert one_line_error(cli(desk, "case", "1", "resolve", "--note", "again")) == (
        "Error: case 1 was already resolved on 2026-11-04 19:15 UTC (Called Ana, rebooked)")
    assert one_line_error(cli(desk, "case", "99", "resolve", "--note", "x")) == (
        "Error: there is no case 99 — `touchpoint cases` lists them")
    assert one_line_error(cli(desk, "case", "99")) == (
        "Error: there is no case 99 — `touchpoint cases` lists them")
    assert one_line_error(cli(desk, "case", "2", "resolve", "--note", "  ")).startswith(
        "Error: say what was done")
    noted = cli(desk, "case", "2", "note", "--note", "Left a voicemail", "--by", "maya")
    assert (noted.exit_code, noted.stdout) == (0, "note added to case 2.\n")

    still_open = json.loads(cli(desk, "cases", "--open", "--json").stdout)
    assert [(c["id"], c["resolution"]) for c in still_open] == [(2, None)]
    shown = cli(desk, "case", "2").stdout.splitlines()
    assert shown[0] == "case 2 · open · a late cancellation"
    assert "  Wed 04 Nov 13:15  note         Left a voicemail (maya)" in shown
    assert shown[-1] == 'When it is handled: touchpoint case 2 resolve --note "…"'
    assert story(desk, 2) == [("opened", "touchpoint"), ("alerted", "email"),
                              ("note", "maya")]
    cli(desk, "case", "2", "resolve", "--note", "Rebooked for Friday")
    assert cli(desk, "cases", "--open").stdout == "No open recovery cases.\n"
    assert [c["status"] for c in json.loads(cli(desk, "cases", "--json").stdout)] == [
        "resolved", "resolved"]


def test_case_id_json_shows_the_case_and_its_history(sqlite_desk: Practice) -> None:
    booked(sqlite_desk, appointment("A1", "P1", "2026-11-02T10:00:00-06:00"))
    sqlite_desk.at("2026-11-02T12:00:00-06:00")
    sqlite_desk.clinic.appointments(appointment("A1", "P1", "2026-11-02T10:00:00-06:00",
                                                status="no_show"))
    sqlite_desk.clinic.tick()
    result = cli(sqlite_desk, "case", "1", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["id"], shown["cause"], shown["status"]) == (1, "no_show", "open")
    assert [(h["kind"], h["by"], h["at"]) for h in shown["history"]] == [
        ("opened", "touchpoint", "2026-11-02T18:00:00Z"),
        ("alerted", "email", "2026-11-02T18:00:00Z")]


# --------------------------------------------------------------------------- review request


def completed(p: Practice, *visits: tuple[str, str]) -> None:
    """P1's visits (id, local start) imported as completed, planned at once."""
    p.clinic.appointments(*(appointment(visit, "P1", start, status="completed")
                            for visit, start in visits))
    p.clinic.tick()


def discharged(p: Practice, on: str, at: str) -> None:
    """P1's discharge date (``on``) arriving in an import at ``at``, planned at once."""
    p.at(at)
    p.clinic.patients(patient("P1", discharged_on=on))
    p.clinic.tick()


def six_visits(p: Practice, **fields: str) -> None:
    """P1 (no welcome) with six weekly visits, the 6th on Mon 23 Nov at 10:00 CST, imported
    as completed at 11:30: the review request is due on Tuesday at 11:00."""
    p.at("2026-10-19T09:00:00-05:00")
    p.clinic.patients(patient("P1", **fields), baseline=True)
    p.at("2026-11-23T11:30:00-06:00")
    completed(p, *((f"A{n}", (datetime(2026, 10, 12, 10) + timedelta(weeks=n)).isoformat()
                    + ("-05:00" if n < 3 else "-06:00")) for n in range(1, 7)))


def test_every_patient_is_asked_for_a_review_after_the_sixth_visit_whatever_their_score(
        desk: Practice) -> None:
    question = asked(desk)
    desk.at("2026-11-03T12:30:00-06:00")
    desk.text_in("2", "SMlow")  # an unhappy patient is still asked; their case runs alongside
    desk.at("2026-11-23T11:30:00-06:00")
    completed(desk, ("A4", "2026-11-09T10:00:00-06:00"), ("A5", "2026-11-16T10:00:00-06:00"),
              ("A6", "2026-11-23T10:00:00-06:00"))
    [request] = desk.clinic.touch_points(journey="review-request")
    sixth = next(a.id for a in desk.rows(appointments) if a.external_id == "A6")
    assert (request.step, request.status, request.purpose, request.due_at,
            request.appointment_id) == ("sixth-visit", Status.PLANNED, "marketing",
                                        local("2026-11-24T11:00:00-06:00"), sixth)

    desk.at("2026-11-24T11:00:00-06:00")
    desk.clinic.tick()
    [request] = desk.clinic.touch_points(journey="review-request")
    assert request.status == Status.SENT
    [message] = desk.clinic.sent_to(request.id)
    assert message.body == ("Riverside Physical Therapy: thank you, Ana! Would you share "
                            "your experience in a review? https://riversidept.example/review "
                            "STOP to opt out")
    [low] = cases_of(desk)
    assert (low.cause, low.status, low.touch_point_id) == ("low_score", "open", question.id)
    assert desk.rows(patients)[0].satisfaction_score == 2

    desk.at("2026-11-30T11:30:00-06:00")  # the 7th visit is no milestone
    completed(desk, ("A7", "2026-11-30T10:00:00-06:00"))
    assert len(desk.clinic.touch_points(journey="review-request")) == 1


def test_a_discharge_asks_for_a_review_at_most_once_every_six_months(desk: Practice) -> None:
    six_visits(desk)
    desk.at("2026-11-24T11:00:00-06:00")
    desk.clinic.tick()
    [sixth] = desk.clinic.touch_points(journey="review-request")
    assert (sixth.step, sixth.status) == ("sixth-visit", Status.SENT)

    discharged(desk, "2026-12-07", "2026-12-07T09:00:00-06:00")  # two weeks later: once_per
    sixth, again = desk.clinic.touch_points(journey="review-request")
    assert (again.step, again.status, again.reason, again.detail) == (
        "discharge", Status.SKIPPED, "once_per", "review-request already went to this "
        "patient on 2026-11-24; it starts at most once per 26w")
    assert desk.clinic.sent_to(again.id) == []

    discharged(desk, "2027-07-01", "2027-07-01T09:00:00-05:00")  # back, and discharged again
    *_, third = desk.clinic.touch_points(journey="review-request")
    assert (third.step, third.status, third.anchor, third.due_at) == (
        "discharge", Status.PLANNED, "discharge:2027-07-01", local("2027-07-02T11:00-05:00"))
    desk.at("2027-07-02T11:00:00-05:00")
    desk.clinic.tick()
    *_, third = desk.clinic.touch_points(journey="review-request")
    assert third.status == Status.SENT
    assert "https://riversidept.example/review" in desk.clinic.sent_to(third.id)[0].body
    assert cases_of(desk) == []


def test_a_review_request_needs_marketing_consent(sqlite_desk: Practice) -> None:
    six_visits(sqlite_desk, marketing_consent="no")
    sqlite_desk.at("2026-11-24T11:00:00-06:00")
    sqlite_desk.clinic.tick()
    request = sqlite_desk.clinic.one("review-request", "sixth-visit")
    assert (request.status, request.reason) == (Status.SKIPPED, "no_consent")
    assert sqlite_desk.clinic.sent_to(request.id) == []
