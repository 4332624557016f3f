"""Caregivers: a patient's contacts (parents, guardians, spouses, caregivers) as recipients.

contacts.csv import; who a step addresses (``recipient:``, minors through their
guardians, ``receives``); what templates know of the recipient; and the guards applied per
recipient — shared addresses, quiet hours in their own timezone, consents, opt-outs and
frequency caps — with the ledger's invariants still holding. SQLite and PostgreSQL.

Practice timezone: America/Chicago (CST, UTC-6, after DST ended on 2026-11-01).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select

from engine import clock
from engine.cases import history as case_history
from engine.cases import list_cases
from engine.definitions import load_definitions
from engine.domain import Patient
from engine.forecast import forecast
from engine.outcomes import FINAL, Status
from engine.replies import record_inbound
from engine.runner import Runner
from engine.store.ledger import TouchPoint
from engine.store.schema import contacts as contacts_table
from tests.support import Clinic, appointment, contact, patient

MakeClinic = Callable[..., Clinic]

NOTE_SMS = ("{{ practice.name }}: for {{ recipient.role }} {{ recipient.name }} "
            "(is_patient={{ recipient.is_patient }}) about {{ patient.first_name }}. "
            "STOP to opt out")
NOTE_EMAIL = ("{% block subject %}About {{ patient.first_name }}{% endblock %}\n"
              "{% block text %}For {{ recipient.role }} {{ recipient.name }} "
              "(is_patient={{ recipient.is_patient }}).{% endblock %}\n")


def step(step_id: str, *, when: str = "immediately", recipient: str | None = None,
         channels: str = "[sms]") -> str:
    """One step of the test journey ``family`` (template family/note)."""
    lines = [f"- id: {step_id}", f"  when: {when}", f"  channels: {channels}",
             "  template: family/note"]
    if recipient is not None:
        lines.append(f"  recipient: {recipient}")
    return "\n".join(lines)


def family_library(folder: Path, steps: Sequence[str]) -> tuple[Path, Path]:
    """A one-journey library: ``family``, transactional, started by patient.created."""
    schedules, templates = folder / "family-schedules", folder / "family-templates"
    schedules.mkdir(parents=True)
    (templates / "family").mkdir(parents=True)
    body = "\n".join("  " + line for s in steps for line in s.splitlines())
    (schedules / "family.yaml").write_text(
        "version: 1\njourney: family\npurpose: transactional\ntrigger: patient.created\n"
        f"steps:\n{body}\n", encoding="utf-8")
    (templates / "family" / "note.sms.j2").write_text(NOTE_SMS, encoding="utf-8")
    (templates / "family" / "note.email.j2").write_text(NOTE_EMAIL, encoding="utf-8")
    return schedules, templates


@pytest.fixture
def make_clinic(database_url: str, tmp_path: Path) -> Iterator[MakeClinic]:
    """``make_clinic()``: the shipped library; ``make_clinic([step(...), …])``: ``family``."""
    made: list[Clinic] = []

    def make(steps: Sequence[str] | None = None, config_extra: str = "") -> Clinic:
        if steps is None:
            practice = Clinic(database_url, tmp_path, config_extra=config_extra)
        else:
            schedules, templates = family_library(tmp_path, steps)
            practice = Clinic(database_url, tmp_path, config_extra=config_extra,
                              schedules=schedules, templates=templates)
        made.append(practice)
        return practice

    yield make
    for practice in made:
        practice.close()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def contact_ids(clinic: Clinic) -> dict[int, str]:
    with clinic.db.transaction() as conn:
        return {row.id: row.external_id for row in conn.execute(
            select(contacts_table.c.id, contacts_table.c.external_id))}


def by_recipient(clinic: Clinic, journey: str, step_id: str,
                 patient_id: str = "P1") -> dict[str, TouchPoint]:
    """A step's touch points for one patient, keyed "patient" or the contact's contact_id."""
    names = contact_ids(clinic)
    found: dict[str, TouchPoint] = {}
    for tp in clinic.touch_points(journey=journey, step=step_id, patient=patient_id):
        kind, _, ident = tp.recipient.partition(":")
        key = "patient" if kind == "patient" else names[int(ident)]
        assert key not in found, f"two touch points for {key}: {found[key]} and {tp}"
        found[key] = tp
    return found


def outcome(tp: TouchPoint) -> tuple[str, str | None, str | None]:
    return tp.status, tp.reason, tp.channel


# --------------------------------------------------------------------------- import


def test_contacts_import_keeps_good_rows_reports_bad_ones_by_line_and_is_idempotent(
        make_clinic: MakeClinic) -> None:
    clinic = make_clinic()
    rows = [
        contact("C1", "P1", phone="(312) 555-0171"),                      # line 2
        contact("C2", "P1", sms_consent="maybe"),                         # line 3
        contact("C3", "P9"),                                              # line 4
        contact("C4", "P2", relationship="Spouse", receives="all",
                marketing_consent="yes", phone="(312) 555-0174"),       # line 5
        contact("C5", "P2", relationship=""),                             # line 6
        contact("C6", "P2", receives="sms;email"),                        # line 7
        contact("C1", "P2"),                                              # line 8
    ]
    with freeze_time("2026-11-02T14:00:00Z"):
        clinic.patients(patient("P1"), patient("P2", phone="(312) 555-0102"), baseline=True)
        first = clinic.contacts(*rows)
        again = clinic.contacts(*rows)
        changed = clinic.contacts(contact("C1", "P1", phone="(312) 555-0199"))
        report = clinic.tick()

    assert (first.rows, first.created, first.updated, first.unchanged) == (7, 2, 0, 0)
    assert [(p.line, p.message) for p in first.problems] == [
        (3, "sms_consent must be yes or no"),
        (4, "patient_id is not a known patient — import patients first"),
        (6, "relationship is empty — write parent, guardian, spouse or caregiver"),
        (7, "receives must list transactional, marketing, all, none or journey names, "
            "separated by commas"),
        (8, "contact_id appears again (first on line 2)"),
    ]
    assert not first.events
    assert (again.created, again.updated, again.unchanged) == (0, 0, 2)
    assert [p.line for p in again.problems] == [3, 4, 6, 7, 8]
    assert (changed.created, changed.updated, changed.unchanged) == (0, 1, 0)
    with clinic.db.transaction() as conn:
        stored = {row.external_id: row for row in conn.execute(select(contacts_table))}
        assert conn.execute(select(func.count()).select_from(contacts_table)).scalar() == 2
    assert set(stored) == {"C1", "C4"}
    assert stored["C1"].phone == "+13125550199"
    c4 = stored["C4"]
    assert (c4.relationship, c4.receives, c4.marketing_consent, c4.sms_consent) == \
        ("spouse", "all", True, True)
    # a contact import records no event and so starts nothing
    assert report.events == 0 and clinic.touch_points() == []


# --------------------------------------------------------------------------- who gets it


def test_is_minor_until_the_eighteenth_birthday() -> None:
    def born(day: date | None) -> Patient:
        return Patient(id=1, external_id="P1", first_name="Ana", last_name="Reyes",
                       phone=None, email=None, language=None, timezone=None,
                       sms_consent=True, email_consent=True, marketing_consent=False,
                       date_of_birth=day)

    assert born(date(2008, 11, 3)).is_minor(date(2026, 11, 2))
    assert not born(date(2008, 11, 2)).is_minor(date(2026, 11, 2))  # 18 today
    assert born(date(2008, 2, 29)).is_minor(date(2026, 2, 28))
    assert not born(date(2008, 2, 29)).is_minor(date(2026, 3, 1))
    assert not born(None).is_minor(date(2026, 11, 2))  # unknown: treated as an adult


def test_a_minors_transactional_messages_go_to_guardians_who_receive_the_journey(
        make_clinic: MakeClinic) -> None:
    """Shipped welcome journey, no ``recipient:``: a minor's guardians (parent/guardian
    whose ``receives`` covers it) get it, never the minor: with no guardian on file it is
    skipped ``no_guardian``, with guardians who do not receive it ``no_consent``."""
    clinic = make_clinic()
    with freeze_time("2026-11-02T15:00:00Z"):  # Mon 09:00 CST
        clinic.patients(
            patient("P1", date_of_birth="2012-05-31", phone="(312) 555-0101"),
            patient("P2", date_of_birth="2012-05-31", phone="(312) 555-0102"),
            patient("P3", date_of_birth="1980-05-31", phone="(312) 555-0103"),
            patient("P4", date_of_birth="05/31/2012", phone="(312) 555-0104"),
            patient("P5", date_of_birth="2012-05-31", phone="(312) 555-0105"),
            patient("P6", date_of_birth="2008-11-02", phone="(312) 555-0106"),  # 18 today
            patient("P7", date_of_birth="2008-11-03", phone="(312) 555-0107"),
        )
        clinic.contacts(
            contact("C1", "P1", relationship="parent", phone="(312) 555-0111"),
            contact("C1b", "P1", relationship="caregiver", receives="all",
                    phone="(312) 555-0112"),
            contact("C3", "P3", relationship="parent", phone="(312) 555-0113"),
            contact("C4", "P4", relationship="guardian", receives="marketing",
                    phone="(312) 555-0114"),
            contact("C5", "P5", relationship="Guardian", receives="welcome",
                    phone="(312) 555-0115"),
            contact("C6", "P6", relationship="parent", phone="(312) 555-0116"),
            contact("C7", "P7", relationship="parent", phone="(312) 555-0117"),
        )
        clinic.tick()

    sent = (Status.SENT, None)
    expected = {"P1": ("C1", sent),  # the parent; the caregiver is no guardian
                "P2": ("patient", (Status.SKIPPED, "no_guardian")),  # no guardian on file
                "P3": ("patient", sent),  # an adult
                # the guardian receives marketing only
                "P4": ("patient", (Status.SKIPPED, "no_consent")),
                "P5": ("C5", sent),  # receives names the journey
                "P6": ("patient", sent),  # 18 on the day
                "P7": ("C7", sent)}
    for pid, (who, (status, reason)) in expected.items():
        welcome = by_recipient(clinic, "welcome", "welcome", pid)
        assert list(welcome) == [who], pid
        assert (welcome[who].status, welcome[who].reason) == (status, reason), pid
    assert sorted(m.to for m in clinic.sms.sent) == [
        "+13125550103", "+13125550106", "+13125550111", "+13125550115", "+13125550117"]
    # the guardian's email gets the what-to-expect email, not the minor's
    assert by_recipient(clinic, "welcome", "what-to-expect", "P1")["C1"].status \
        == Status.PLANNED
    assert list(by_recipient(clinic, "welcome", "what-to-expect", "P1")) == ["C1"]


def test_recipient_patient_sends_to_a_minor_themself(make_clinic: MakeClinic) -> None:
    clinic = make_clinic([step("to-self", recipient="patient"), step("as-usual")])
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.patients(patient("P1", date_of_birth="2012-05-31"))
        clinic.contacts(contact("C1", "P1", relationship="parent"))
        clinic.tick()
    to_self = by_recipient(clinic, "family", "to-self")
    as_usual = by_recipient(clinic, "family", "as-usual")
    assert list(to_self) == ["patient"] and list(as_usual) == ["C1"]
    assert outcome(to_self["patient"]) == (Status.SENT, None, "sms")
    assert outcome(as_usual["C1"]) == (Status.SENT, None, "sms")
    assert [(m.to, m.body) for m in clinic.sms.sent] == [
        ("+13125550100", "Riverside Physical Therapy: for patient Ana Reyes (is_patient=True) "
                         "about Ana. STOP to opt out"),
        ("+13125550177", "Riverside Physical Therapy: for parent Gabriela (is_patient=False) "
                         "about Ana. STOP to opt out"),
    ]


OWNER = "maya@riversidept.example"


def test_a_minor_with_no_guardian_gets_nothing_whoever_a_step_addresses(
        make_clinic: MakeClinic) -> None:
    """Skipped ``no_guardian`` (the minor never; their caregiver still gets theirs), and
    one case for the event tells staff to add a guardian."""
    clinic = make_clinic([step("as-usual"), step("to-self", recipient="patient"),
                          step("everyone", recipient="patient_and_contacts")])
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.patients(patient("P1", date_of_birth="2012-05-31"),
                        patient("P2", date_of_birth="2012-05-31", phone="(312) 555-0102"))
        clinic.contacts(contact("C1", "P1", relationship="caregiver", first_name="Rosa",
                                phone="(312) 555-0172"),
                        contact("C2", "P2", relationship="parent", phone="(312) 555-0177"))
        clinic.tick()

    detail = "the patient is a minor with no parent or guardian on file (contacts.csv)"
    for step_id in ("as-usual", "to-self", "everyone"):
        tp = by_recipient(clinic, "family", step_id)["patient"]
        assert (tp.status, tp.reason, tp.detail) == (Status.SKIPPED, "no_guardian", detail)
    assert outcome(by_recipient(clinic, "family", "everyone")["C1"]) == (
        Status.SENT, None, "sms")
    # with a parent on file, `recipient: patient` is the manager's word for the minor
    assert by_recipient(clinic, "family", "to-self", "P2")["patient"].status == Status.SENT
    assert "+13125550100" not in [m.to for m in clinic.sms.sent]  # P1's own phone

    with clinic.db.transaction() as conn:
        [case] = list_cases(conn)
    ana = by_recipient(clinic, "family", "as-usual")["patient"].patient_id
    assert (case.cause, case.status, case.patient_id) == ("no_guardian", "open", ana)
    assert case.detail == (
        "family/as-usual, family/to-self, family/everyone not sent: the patient is under 18 "
        "and no parent or guardian is on file — import one (touchpoint import contacts), "
        "then resolve this case")


def test_staff_hear_of_a_minor_with_no_guardian_once_and_further_skips_are_noted(
        make_clinic: MakeClinic) -> None:
    clinic = make_clinic(config_extra=f'\n[recovery]\nowner_email = "{OWNER}"\n')
    with freeze_time("2026-11-02T15:00:00Z"):  # Mon 09:00 CST
        clinic.patients(patient("P1", date_of_birth="2012-05-31"))
        clinic.tick()
        clinic.tick()  # the case desk hears of the case
    with freeze_time("2026-11-02T15:05:00Z"):
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
    welcome = by_recipient(clinic, "welcome", "welcome")["patient"]
    reminder = by_recipient(clinic, "pre-visit", "three-days-before")["patient"]
    assert outcome(welcome) == outcome(reminder) == (Status.SKIPPED, "no_guardian", None)
    assert clinic.sms.sent == []
    [alert] = clinic.email.sent
    assert (alert.to, alert.subject) == (
        OWNER, "Recovery case 1: a minor with no parent or guardian on file - Ana Reyes")
    assert "welcome/welcome, welcome/what-to-expect not sent: the patient is under 18" \
        in alert.body
    with clinic.db.transaction() as conn:
        [case] = list_cases(conn)
        notes = [e.detail for e in case_history(conn, case.id) if e.kind == "note"]
    assert notes == ["again: pre-visit/three-days-before, pre-visit/one-day-before, "
                     "pre-visit/two-hours-before not sent: the patient is under 18 and no "
                     "parent or guardian is on file — import one (touchpoint import "
                     "contacts), then resolve this case"]


def test_a_date_of_birth_imported_after_planning_holds_the_minors_texts_at_send_time(
        make_clinic: MakeClinic) -> None:
    clinic = make_clinic()
    with freeze_time("2026-11-02T14:00:00Z"):  # Mon 08:00 CST
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
        assert by_recipient(clinic, "pre-visit", "three-days-before")["patient"].status \
            == Status.PLANNED
        clinic.patients(patient("P1", date_of_birth="2012-05-31"), baseline=True)
    with freeze_time("2026-11-02T16:00:00Z"):  # Mon 10:00 CST: the reminder is due
        clinic.tick()
    reminder = by_recipient(clinic, "pre-visit", "three-days-before")["patient"]
    assert (reminder.status, reminder.reason, reminder.detail) == (
        Status.SKIPPED, "no_guardian",
        "the patient is a minor with no parent or guardian on file (contacts.csv)")
    assert clinic.sms.sent == [] and clinic.email.sent == []


def test_patient_and_contacts_never_texts_a_minor(make_clinic: MakeClinic) -> None:
    clinic = make_clinic([step("everyone", recipient="patient_and_contacts")])
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.patients(patient("P1", date_of_birth="2012-05-31"))
        clinic.contacts(contact("C1", "P1", relationship="parent"),
                        contact("C2", "P1", relationship="caregiver", first_name="Rosa",
                                phone="(312) 555-0172"))
        clinic.tick()
    everyone = by_recipient(clinic, "family", "everyone")
    assert sorted(everyone) == ["C1", "C2"]  # the parent stands in for the minor
    assert sorted(m.to for m in clinic.sms.sent) == ["+13125550172", "+13125550177"]


def test_patient_and_contacts_reaches_every_contact_whose_receives_covers_the_journey(
        make_clinic: MakeClinic) -> None:
    clinic = make_clinic([step("hello", recipient="patient_and_contacts",
                               channels="[sms, email]")])
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.patients(patient("P1", date_of_birth="1950-01-01"))
        clinic.contacts(
            contact("C1", "P1", relationship="spouse", first_name="Luis", receives="all",
                    phone="(312) 555-0171"),
            contact("C2", "P1", relationship="caregiver", first_name="Rosa",
                    receives="family", phone="(312) 555-0172"),
            contact("C3", "P1", relationship="caregiver", receives="none",
                    phone="(312) 555-0173"),
            contact("C4", "P1", relationship="caregiver", receives="marketing",
                    phone="(312) 555-0174"),
            contact("C5", "P1", relationship="caregiver", receives="welcome, win-back",
                    phone="(312) 555-0175"),
            contact("C6", "P1", relationship="caregiver", first_name="Tom",
                    receives="Marketing, Transactional", phone="(312) 555-0176"),
        )
        clinic.tick()
    hello = by_recipient(clinic, "family", "hello")
    assert sorted(hello) == ["C1", "C2", "C6", "patient"]
    assert all(outcome(tp) == (Status.SENT, None, "sms") for tp in hello.values())
    bodies = {m.to: m.body.split(": ", 1)[1] for m in clinic.sms.sent}
    assert bodies == {
        "+13125550100": "for patient Ana Reyes (is_patient=True) about Ana. STOP to opt out",
        "+13125550171": "for spouse Luis (is_patient=False) about Ana. STOP to opt out",
        "+13125550172": "for caregiver Rosa (is_patient=False) about Ana. STOP to opt out",
        "+13125550176": "for caregiver Tom (is_patient=False) about Ana. STOP to opt out",
    }


def test_recipient_contacts_skips_the_patient(make_clinic: MakeClinic) -> None:
    clinic = make_clinic([step("note", recipient="contacts", channels="[email]")])
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.patients(patient("P1"), patient("P2", phone="(312) 555-0102"))
        clinic.contacts(contact("C1", "P1", relationship="spouse"))
        clinic.tick()
    note = by_recipient(clinic, "family", "note")
    assert list(note) == ["C1"] and outcome(note["C1"]) == (Status.SENT, None, "email")
    assert [(m.to, m.subject, m.body) for m in clinic.email.sent] == [
        ("c1@example.com", "About Ana", "For spouse Gabriela (is_patient=False).")]
    assert clinic.touch_points(patient="P2") == []  # no contact: nobody to address


# --------------------------------------------------------------------------- per recipient


def test_a_phone_shared_by_two_recipients_gets_the_message_once(
        make_clinic: MakeClinic) -> None:
    clinic = make_clinic([step("text", recipient="patient_and_contacts"),
                          step("mail", when="{after: 10m}", recipient="patient_and_contacts",
                               channels="[email]")])
    with freeze_time("2026-11-02T15:00:00Z") as frozen:
        clinic.patients(patient("P1"))  # (312) 555-0100, p1@example.com
        clinic.contacts(contact("C1", "P1", relationship="spouse", phone="312-555-0100"))
        clinic.tick()
        frozen.move_to("2026-11-02T15:10:00Z")
        clinic.tick()
        clinic.tick()
    text = by_recipient(clinic, "family", "text")
    assert outcome(text["patient"]) == (Status.SENT, None, "sms")
    shared = text["C1"]
    assert (shared.status, shared.reason) == (Status.SKIPPED, "shared_address")
    assert shared.detail is not None
    assert f"touch point {text['patient'].id}" in shared.detail
    assert "family/text" in shared.detail
    assert "5550100" not in shared.detail  # the number is masked
    assert [m.to for m in clinic.sms.sent] == ["+13125550100"]
    # their own inboxes differ: each gets the email
    mail = by_recipient(clinic, "family", "mail")
    assert {k: outcome(v) for k, v in mail.items()} == {
        "patient": (Status.SENT, None, "email"), "C1": (Status.SENT, None, "email")}
    assert sorted(m.to for m in clinic.email.sent) == ["c1@example.com", "p1@example.com"]


def test_each_recipient_is_timed_and_held_to_quiet_hours_in_their_own_timezone(
        make_clinic: MakeClinic) -> None:
    clinic = make_clinic([step("now", recipient="patient_and_contacts"),
                          step("next-day", when='{days_after: 1, at: "10:00"}',
                               recipient="patient_and_contacts", channels="[email]")])
    with freeze_time("2026-11-02T13:30:00Z") as frozen:  # 08:30 NY, 07:30 CHI, 05:30 LA
        clinic.patients(patient("P1", timezone="America/New_York"))
        clinic.contacts(
            contact("C1", "P1", relationship="spouse", timezone="America/Los_Angeles",
                    phone="(312) 555-0171"),
            contact("C2", "P1", relationship="caregiver", timezone="",  # the patient's
                    phone="(312) 555-0172"))
        clinic.tick()
        now = by_recipient(clinic, "family", "now")
        assert outcome(now["patient"]) == (Status.SENT, None, "sms")
        assert outcome(now["C2"]) == (Status.SENT, None, "sms")  # 08:30 in New York
        assert (now["C1"].status, now["C1"].due_at) == \
            (Status.PLANNED, utc("2026-11-02T08:00:00-08:00"))  # not before 08:00 in LA
        frozen.move_to("2026-11-02T15:59:00Z")
        clinic.tick()
        assert by_recipient(clinic, "family", "now")["C1"].status == Status.PLANNED
        frozen.move_to("2026-11-02T16:00:00Z")
        clinic.tick()
    now = by_recipient(clinic, "family", "now")
    assert outcome(now["C1"]) == (Status.SENT, None, "sms")
    assert now["C1"].sent_at == utc("2026-11-02T16:00:00Z")
    next_day = by_recipient(clinic, "family", "next-day")
    assert {k: tp.due_at for k, tp in next_day.items()} == {
        "patient": utc("2026-11-03T10:00:00-05:00"),
        "C1": utc("2026-11-03T10:00:00-08:00"),
        "C2": utc("2026-11-03T10:00:00-05:00")}


def test_a_contact_who_moved_is_held_to_their_new_quiet_hours_at_send_time(
        make_clinic: MakeClinic) -> None:
    clinic = make_clinic([step("later", when="{after: 1h}", recipient="contacts")])
    with freeze_time("2026-11-02T14:00:00Z") as frozen:  # 08:00 CST
        clinic.patients(patient("P1"))
        clinic.contacts(contact("C1", "P1", relationship="spouse"))
        clinic.tick()
        later = by_recipient(clinic, "family", "later")["C1"]
        assert (later.status, later.due_at) == (Status.PLANNED, utc("2026-11-02T15:00:00Z"))
        clinic.contacts(contact("C1", "P1", relationship="spouse",
                                timezone="Pacific/Honolulu"))
        frozen.move_to("2026-11-02T15:00:00Z")  # 09:00 CST, 05:00 in Honolulu
        clinic.tick()
        later = by_recipient(clinic, "family", "later")["C1"]
        assert clinic.sms.sent == []
        assert (later.status, later.due_at) == \
            (Status.PLANNED, utc("2026-11-02T08:00:00-10:00"))
        frozen.move_to("2026-11-02T18:00:00Z")
        clinic.tick()
    assert outcome(by_recipient(clinic, "family", "later")["C1"]) == \
        (Status.SENT, None, "sms")


def test_consents_and_opt_outs_apply_to_each_recipient_separately(
        make_clinic: MakeClinic) -> None:
    clinic = make_clinic(
        [step("text", recipient="patient_and_contacts"),
         step("text-or-email", recipient="patient_and_contacts", channels="[sms, email]")],
        config_extra="\n[caps]\ntransactional_sms_per_day = 0\n"
                     "transactional_sms_per_week = 0\n")
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.patients(patient("P1"))
        clinic.contacts(
            contact("C1", "P1", relationship="spouse", phone="(312) 555-0171"),
            contact("C2", "P1", relationship="caregiver", phone="(312) 555-0172",
                    sms_consent="no"),
            contact("C3", "P1", relationship="caregiver", phone="", email=""))
        with clinic.db.transaction() as conn:  # C1 texted STOP
            handled = record_inbound(conn, clinic.settings, provider="twilio",
                                     message_id="SM-stop-1", from_number="+13125550171",
                                     to_number="+13125550199", body="Stop", now=clock.now())
        assert handled.intent == "stop"
        clinic.tick()
    text = by_recipient(clinic, "family", "text")
    assert {k: (tp.status, tp.reason) for k, tp in text.items()} == {
        "patient": (Status.SENT, None),
        "C1": (Status.SKIPPED, "opted_out"),
        "C2": (Status.SKIPPED, "no_consent"),
        "C3": (Status.SKIPPED, "no_contact")}
    either = by_recipient(clinic, "family", "text-or-email")
    assert {k: outcome(tp) for k, tp in either.items()} == {
        "patient": (Status.SENT, None, "sms"),
        "C1": (Status.SENT, None, "email"),  # STOP stops texts, not email
        "C2": (Status.SENT, None, "email"),
        "C3": (Status.SKIPPED, "no_contact", None)}
    assert [m.to for m in clinic.sms.sent] == ["+13125550100", "+13125550100"]
    assert sorted(m.to for m in clinic.email.sent) == ["c1@example.com", "c2@example.com"]


def test_frequency_caps_count_what_each_recipient_received(make_clinic: MakeClinic) -> None:
    """Exemption mode: 1 transactional text a day per recipient."""
    clinic = make_clinic([
        step("first", recipient="patient"),
        step("second", recipient="contacts"),
        step("third", when="{after: 2h}", recipient="patient_and_contacts",
             channels="[sms, email]"),
        step("fourth", when="{after: 3h}", recipient="contacts"),
    ], config_extra='\n[caps]\nmode = "exemption"\n')
    with freeze_time("2026-11-02T15:00:00Z") as frozen:
        clinic.patients(patient("P1"))
        clinic.contacts(contact("C1", "P1", relationship="spouse"))
        clinic.tick()
        frozen.move_to("2026-11-02T17:00:00Z")
        clinic.tick()
        frozen.move_to("2026-11-02T18:00:00Z")
        clinic.tick()
    # the patient's text does not count against the spouse's
    assert outcome(by_recipient(clinic, "family", "first")["patient"]) == \
        (Status.SENT, None, "sms")
    assert outcome(by_recipient(clinic, "family", "second")["C1"]) == \
        (Status.SENT, None, "sms")
    third = by_recipient(clinic, "family", "third")
    assert {k: outcome(tp) for k, tp in third.items()} == {
        "patient": (Status.SENT, None, "email"), "C1": (Status.SENT, None, "email")}
    fourth = by_recipient(clinic, "family", "fourth")["C1"]  # waits for the spouse's next day
    assert (fourth.status, fourth.reason) == (Status.PLANNED, "frequency_cap")
    assert fourth.due_at == utc("2026-11-03T08:00:00-06:00")
    assert [m.to for m in clinic.sms.sent] == ["+13125550100", "+13125550177"]


# --------------------------------------------------------------------------- invariants


def test_with_contacts_nothing_goes_twice_and_every_touch_point_is_accounted_for(
        make_clinic: MakeClinic) -> None:
    """Shipped library. A minor whose mother and father share the home phone: each message
    goes once to that phone; re-ticks and re-imports add nothing."""
    clinic = make_clinic()
    people = [patient("P1", date_of_birth="2012-05-31", phone="(312) 555-0101")]
    family = [contact("C1", "P1", relationship="mother", first_name="Gabriela",
                      phone="(312) 555-0177", email="gabriela@example.com"),
              contact("C2", "P1", relationship="father", first_name="Marco",
                      phone="(312) 555-0177", email="marco@example.com")]
    visit = appointment("A1", "P1", "2026-11-05T10:00:00-06:00")
    moments = ["2026-11-02T14:00:00Z", "2026-11-02T14:10:00Z",  # welcome, what-to-expect
               "2026-11-02T16:00:00Z",  # three days before, 10:00 CST
               "2026-11-04T16:00:00Z",  # the day before, 10:00 CST
               "2026-11-05T14:00:00Z"]  # two hours before
    with freeze_time(moments[0]) as frozen:
        clinic.patients(*people)
        clinic.contacts(*family)
        clinic.appointments(visit)
        for moment in moments:
            frozen.move_to(moment)
            clinic.tick()
            clinic.tick()
        before = clinic.touch_points()
        # a re-import of the same files, and a contact's changed language, plan nothing
        assert clinic.patients(*people).unchanged == 1
        assert clinic.contacts(*family).unchanged == 2
        assert clinic.contacts(family[0], {**family[1], "language": "es"}).updated == 1
        assert clinic.appointments(visit).unchanged == 1
        for moment in moments:
            frozen.move_to(moment)
            assert clinic.tick().planned == 0
    after = clinic.touch_points()
    assert [(tp.id, tp.status, tp.reason) for tp in after] == \
        [(tp.id, tp.status, tp.reason) for tp in before]
    names = contact_ids(clinic)
    summary = Counter((tp.step, names.get(int(tp.recipient.partition(":")[2]), tp.recipient),
                       tp.status, tp.reason) for tp in after)
    assert summary == {
        ("welcome", "C1", Status.SENT, None): 1,
        ("welcome", "C2", Status.SKIPPED, "shared_address"): 1,
        ("what-to-expect", "C1", Status.SENT, None): 1,
        ("what-to-expect", "C2", Status.SENT, None): 1,  # their own inbox
        ("three-days-before", "C1", Status.SENT, None): 1,
        ("three-days-before", "C2", Status.SKIPPED, "shared_address"): 1,
        ("one-day-before", "C1", Status.SENT, None): 1,
        ("one-day-before", "C2", Status.SKIPPED, "shared_address"): 1,
        ("two-hours-before", "C1", Status.SENT, None): 1,
        ("two-hours-before", "C2", Status.SKIPPED, "shared_address"): 1,
    }
    # the minor's own phone got nothing; the shared phone got each text once
    sent = [(m.to, m.journey, m.step) for m in [*clinic.sms.sent, *clinic.email.sent]]
    assert sorted(sent) == sorted([
        ("+13125550177", "welcome", "welcome"),
        ("gabriela@example.com", "welcome", "what-to-expect"),
        ("marco@example.com", "welcome", "what-to-expect"),
        ("+13125550177", "pre-visit", "three-days-before"),
        ("+13125550177", "pre-visit", "one-day-before"),
        ("+13125550177", "pre-visit", "two-hours-before"),
    ])
    for tp in after:
        assert tp.status in FINAL | {Status.SENT}, tp
        assert (tp.reason is not None) == (tp.status in (Status.SKIPPED, Status.CANCELLED))
        statuses = [h.status for h in clinic.history(tp) if h.status is not None]
        assert statuses[-1] == tp.status, tp


def test_a_cancelled_visit_cancels_every_recipients_reminders(make_clinic: MakeClinic) -> None:
    clinic = make_clinic()
    with freeze_time("2026-11-02T14:00:00Z") as frozen:
        clinic.patients(patient("P1", date_of_birth="2012-05-31"), baseline=True)
        clinic.contacts(contact("C1", "P1", relationship="mother", phone="(312) 555-0171"),
                        contact("C2", "P1", relationship="father", phone="(312) 555-0172"))
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
        assert sorted(by_recipient(clinic, "pre-visit", "three-days-before")) == ["C1", "C2"]
        frozen.move_to("2026-11-02T15:00:00Z")
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00",
                                        status="cancelled"))
        for moment in ("2026-11-02T16:00:00Z", "2026-11-04T16:00:00Z", "2026-11-05T14:00:00Z"):
            frozen.move_to(moment)
            clinic.tick()
    reminders = clinic.touch_points(journey="pre-visit")
    assert len(reminders) == 6  # three steps, each for both parents
    assert {(tp.status, tp.reason) for tp in reminders} == \
        {(Status.CANCELLED, "appointment_cancelled")}
    assert clinic.sms.sent == [] and clinic.email.sent == []


def test_a_contact_is_written_to_in_their_own_language(make_clinic: MakeClinic) -> None:
    """Shipped welcome text: a Spanish-speaking parent of an English-speaking minor gets the
    Spanish text; a parent with no language on file gets the patient's."""
    clinic = make_clinic()
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.patients(patient("P1", date_of_birth="2012-05-31", language="en"),
                        patient("P2", date_of_birth="2012-05-31", language="es",
                                first_name="Lucia", phone="(312) 555-0102"))
        clinic.contacts(contact("C1", "P1", language="es", phone="(312) 555-0171"),
                        contact("C2", "P2", first_name="Jorge", phone="(312) 555-0172"))
        clinic.tick()
    bodies = {m.to: m.body for m in clinic.sms.sent}
    assert bodies["+13125550171"].startswith(
        "Hola Gabriela, bienvenidos a Riverside Physical Therapy! Formulario de Ana:")
    assert bodies["+13125550172"].startswith(
        "Hola Jorge, bienvenidos a Riverside Physical Therapy! Formulario de Lucia:")
    assert set(bodies) == {"+13125550171", "+13125550172"}


def test_a_schedule_edit_moves_and_retires_each_recipients_pending_touch_points(
        make_clinic: MakeClinic, tmp_path: Path) -> None:
    """Pending touch points follow an edit per recipient: a new time of day in each one's
    timezone; a step no longer addressed to contacts is retired for them only."""
    clinic = make_clinic([step("next-day", when='{days_after: 1, at: "10:00"}',
                               recipient="patient_and_contacts"),
                          step("follow", when="{after: 2d}", recipient="patient_and_contacts")])
    with freeze_time("2026-11-02T15:00:00Z") as frozen:
        clinic.patients(patient("P1"))
        clinic.contacts(contact("C1", "P1", relationship="spouse",
                                timezone="America/Los_Angeles"))
        clinic.tick()
        # the manager moves the step to 11:00 and narrows the second to the patient
        edited = [step("next-day", when='{days_after: 1, at: "11:00"}',
                       recipient="patient_and_contacts"),
                  step("follow", when="{after: 2d}", recipient="patient")]
        schedules, templates = family_library(tmp_path / "edited", edited)
        clinic.definitions = load_definitions(
            schedules, templates, clinic.settings.practice.language).raise_for_errors()
        clinic.runner = Runner(clinic.db, clinic.settings, clinic.definitions,
                               {"sms": clinic.sms, "email": clinic.email})
        frozen.move_to("2026-11-02T16:00:00Z")
        clinic.tick()
    next_day = by_recipient(clinic, "family", "next-day")
    assert {k: (tp.status, tp.due_at) for k, tp in next_day.items()} == {
        "patient": (Status.PLANNED, utc("2026-11-03T11:00:00-06:00")),
        "C1": (Status.PLANNED, utc("2026-11-03T11:00:00-08:00"))}
    follow = by_recipient(clinic, "family", "follow")
    assert follow["patient"].status == Status.PLANNED
    assert (follow["C1"].status, follow["C1"].reason) == (Status.CANCELLED, "step_removed")


def test_the_forecast_shows_what_a_minors_guardian_will_receive(
        make_clinic: MakeClinic) -> None:
    clinic = make_clinic()
    with freeze_time("2026-11-02T14:00:00Z"):
        clinic.patients(patient("P1", date_of_birth="2012-05-31"), baseline=True)
        clinic.contacts(contact("C1", "P1", relationship="parent"))  # (312) 555-0177
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        before = forecast(clinic.db, clinic.settings, clinic.definitions, clock.now(), 4)
        clinic.tick()  # plans the reminders, for the parent
        after = forecast(clinic.db, clinic.settings, clinic.definitions, clock.now(), 4)
    guardian = contact_ids(clinic)
    key = next(f"contact:{i}" for i, name in guardian.items() if name == "C1")
    ledger = {tp.step: tp for tp in clinic.touch_points(journey="pre-visit")}
    assert {tp.recipient for tp in ledger.values()} == {key}
    for entries in (before, after):
        shown = {e.step: (e.outcome, e.recipient) for e in entries if e.journey == "pre-visit"}
        assert shown == {"three-days-before": ("send", "+1••••••••77"),
                         "one-day-before": ("send", "+1••••••••77"),
                         "two-hours-before": ("send", "+1••••••••77")}
        assert all(f"|{key}|" in e.key for e in entries if e.journey == "pre-visit")
