"""Referrals: referrers.csv, patients' referral_source, the shipped referral-loop journey,
the minimum-necessary lint (``touchpoint validate``) and the monthly digest.

Practice timezone: America/Chicago — CDT (UTC-5) in October 2026, CST (UTC-6) from
Sun 2026-11-01 02:00, so the digest's 08:00 on Nov 1 and Dec 1 is 14:00Z.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from engine import clock
from engine.cases import list_cases
from engine.errors import PermanentChannelError
from engine.outcomes import Status
from engine.settings import load_settings
from engine.store.records import add_opt_out
from engine.store.schema import referrers as referrers_table
from engine.validate import check_definitions
from tests.support import (
    LIBRARY_SCHEDULES,
    LIBRARY_TEMPLATES,
    Clinic,
    appointment,
    patient,
    referrer,
    write_config,
)

DR1_EMAIL = "dr1@lakeside.example"


@pytest.fixture
def clinic(database_url: str, tmp_path: Path) -> Iterator[Clinic]:
    practice = Clinic(database_url, tmp_path)
    yield practice
    practice.close()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def copy_library(folder: Path, templates: dict[str, str]) -> tuple[Path, Path]:
    """The shipped schedules and templates, with ``templates`` (relative path → text)
    written over the copy."""
    schedules, copied = folder / "lib-schedules", folder / "lib-templates"
    shutil.copytree(LIBRARY_SCHEDULES, schedules)
    shutil.copytree(LIBRARY_TEMPLATES, copied)
    for name, text in templates.items():
        (copied / name).write_text(text, encoding="utf-8")
    return schedules, copied


def referral_mail(clinic: Clinic) -> list[Any]:
    """Every message that went to a referrer (any channel)."""
    return [m for m in [*clinic.sms.sent, *clinic.email.sent]
            if m.journey in ("referral-loop", "referral-digest")]


def referrer_key(clinic: Clinic, external_id: str) -> str:
    with clinic.db.transaction() as conn:
        ident = conn.execute(select(referrers_table.c.id).where(
            referrers_table.c.external_id == external_id)).scalar_one()
    return f"referrer:{ident}"


def assert_minimum_necessary(message: Any) -> None:
    """Nothing clinical: no visit type, no custom field (see the patient rows below)."""
    for text in (message.subject or "", message.body, message.html or ""):
        for clinical in ("Initial evaluation", "ACL tear", "Aetna", "Follow-up"):
            assert clinical not in text, (clinical, text)


def referred(patient_id: str = "P1", source: str = "DR1", **fields: str) -> dict[str, str]:
    """A referred patient with clinical custom fields that must never reach the referrer."""
    return patient(patient_id, referral_source=source, diagnosis="ACL tear",
                   insurance="Aetna PPO", **fields)


# --------------------------------------------------------------------------- import


def test_referrers_import_reports_bad_rows_by_line_and_keeps_good_ones(clinic: Clinic) -> None:
    rows = [
        referrer("DR1"),                                                   # line 2
        referrer("DR2", email="", fax="(312) 555-0150"),                   # line 3
        referrer("DR3", name=""),                                          # line 4
        referrer("DR4", email="front-desk@"),                              # line 5
        referrer("DR5", fax="12"),                                         # line 6
        referrer("DR1", name="Lakeside Again"),                            # line 7
    ]
    with freeze_time("2026-10-05T15:00:00Z"):
        first = clinic.referrers(*rows)
        again = clinic.referrers(*rows)
        changed = clinic.referrers(referrer("DR1", contact_name="Sam Ortiz"))
    assert (first.rows, first.created, first.updated, first.unchanged) == (6, 2, 0, 0)
    assert [(p.line, p.message) for p in first.problems] == [
        (4, "name is empty — write the practice or physician's name"),
        (5, "email is not a valid email address"),
        (6, "fax is not a valid number (default region US) — check the digits, or add the "
            "country code"),
        (7, "referrer_id appears again (first on line 2)"),
    ]
    assert (again.created, again.updated, again.unchanged, again.rejected) == (0, 0, 2, 4)
    assert (changed.created, changed.updated, changed.unchanged) == (0, 1, 0)
    with clinic.db.transaction() as conn:
        stored = {r.external_id: r for r in conn.execute(select(referrers_table))}
    assert set(stored) == {"DR1", "DR2"}
    assert (stored["DR1"].email, stored["DR1"].contact_name, stored["DR1"].fax) == \
        (DR1_EMAIL, "Sam Ortiz", None)
    assert (stored["DR2"].email, stored["DR2"].fax) == (None, "+13125550150")


def test_a_patient_with_an_unknown_referral_source_is_rejected_and_the_others_kept(
        clinic: Clinic) -> None:
    with freeze_time("2026-10-05T15:00:00Z"):
        clinic.referrers(referrer("DR1"))
        rows = [referred("P1", phone="(312) 555-0101"),                    # line 2
                referred("P2", "DR9", phone="(312) 555-0102"),             # line 3
                patient("P3", phone="(312) 555-0103")]                     # line 4
        summary = clinic.patients(*rows)
        clinic.referrers(referrer("DR1"), referrer("DR9", name="Northside Sports Medicine"))
        retried = clinic.patients(*rows)
    assert (summary.created, summary.rejected) == (2, 1)
    assert [(p.line, p.message) for p in summary.problems] == [
        (3, "referral_source is not a known referrer — import referrers first")]
    assert summary.events == {"patient.created": 2}
    # once the referrer is on file the same row goes in; the others are unchanged
    assert (retried.created, retried.unchanged, retried.rejected) == (1, 2, 0)
    with freeze_time("2026-10-05T15:00:00Z"):
        clinic.appointments(appointment("A1", "P1", "2026-10-08T10:00:00-05:00"))
        clinic.tick()
    thank_you = clinic.one("referral-loop", "thank-you", patient="P1")
    assert thank_you.recipient == referrer_key(clinic, "DR1")
    assert clinic.touch_points(journey="referral-loop", patient="P3") == []


# --------------------------------------------------------------------------- referral loop


def test_the_referrer_is_thanked_once_when_a_referred_patients_first_visit_is_booked(
        clinic: Clinic) -> None:
    with freeze_time("2026-10-05T15:00:00Z") as frozen:  # Mon 10:00 CDT
        clinic.referrers(referrer("DR1"))
        clinic.patients(referred("P1"), referred("P2", first_name="Ben", last_name="Okafor",
                                                 phone="(312) 555-0102"),
                        patient("P3", phone="(312) 555-0103"), baseline=True)
        clinic.appointments(  # the first visit and a second, booked together
            appointment("A1", "P1", "2026-10-08T10:00:00-05:00", visit_type="Initial evaluation"),
            appointment("A2", "P1", "2026-10-15T10:00:00-05:00"),
            appointment("B1", "P2", "2026-10-09T11:00:00-05:00"),
            appointment("C1", "P3", "2026-10-09T12:00:00-05:00"))
        clinic.tick()
        frozen.move_to("2026-10-06T15:00:00Z")
        moved = clinic.appointments(
            appointment("A1", "P1", "2026-10-09T09:00:00-05:00", visit_type="Initial evaluation"),
            appointment("A3", "P1", "2026-10-22T10:00:00-05:00"))
        assert moved.events == {"appointment.rescheduled": 1, "appointment.booked": 1}
        clinic.tick()
        clinic.tick()

    dr1 = referrer_key(clinic, "DR1")
    thanks = clinic.touch_points(journey="referral-loop")
    assert [(tp.step, tp.status, tp.channel, tp.recipient, tp.address) for tp in thanks] == [
        ("thank-you", Status.SENT, "email", dr1, DR1_EMAIL),
        ("thank-you", Status.SENT, "email", dr1, DR1_EMAIL)]
    assert thanks[0].sent_at == utc("2026-10-05T15:00:00Z")
    mail = referral_mail(clinic)
    assert [(m.kind, m.to, m.subject) for m in mail] == [
        ("email", DR1_EMAIL, "Thank you for referring Ana Reyes"),
        ("email", DR1_EMAIL, "Thank you for referring Ben Okafor")]
    ana = next(m for m in mail if "Ana" in (m.subject or ""))
    assert "Dear Dana Whitfield," in ana.body
    assert "Thank you for referring Ana Reyes to Riverside Physical Therapy. Their first " \
           "visit is booked for Thursday, October 8." in ana.body
    for message in mail:
        assert_minimum_necessary(message)
    assert clinic.touch_points(journey="referral-loop", patient="P3") == []


def test_the_referrer_hears_that_the_first_visit_was_attended_or_missed(
        clinic: Clinic) -> None:
    with freeze_time("2026-10-05T15:00:00Z") as frozen:
        clinic.referrers(referrer("DR1"))
        clinic.patients(referred("P1"), referred("P2", first_name="Ben", last_name="Okafor",
                                                 phone="(312) 555-0102"), baseline=True)
        clinic.appointments(
            appointment("A1", "P1", "2026-10-08T10:00:00-05:00", visit_type="Initial evaluation"),
            appointment("A2", "P1", "2026-10-12T10:00:00-05:00"),
            appointment("B1", "P2", "2026-10-08T11:00:00-05:00"))
        clinic.tick()
        frozen.move_to("2026-10-08T17:00:00Z")  # noon CDT: the EMR export after the visits
        clinic.appointments(
            appointment("A1", "P1", "2026-10-08T10:00:00-05:00", visit_type="Initial evaluation",
                        status="completed"),
            appointment("B1", "P2", "2026-10-08T11:00:00-05:00", status="no_show"))
        clinic.tick()
        attended = clinic.one("referral-loop", "attended", patient="P1")
        missed = clinic.one("referral-loop", "missed", patient="P2")
        assert (attended.status, attended.due_at) == \
            (Status.PLANNED, utc("2026-10-08T18:00:00Z"))
        assert (missed.status, missed.due_at) == (Status.PLANNED, utc("2026-10-09T17:00:00Z"))
        frozen.move_to("2026-10-08T18:00:00Z")
        clinic.tick()
        frozen.move_to("2026-10-09T17:00:00Z")
        clinic.tick()
        frozen.move_to("2026-10-12T18:00:00Z")  # P1's second visit is a no-show: not news
        clinic.appointments(appointment("A2", "P1", "2026-10-12T10:00:00-05:00",
                                        status="no_show"))
        clinic.tick()
        frozen.move_to("2026-10-14T18:00:00Z")
        clinic.tick()

    loop = {(tp.patient_id, tp.step): tp for tp in clinic.touch_points(journey="referral-loop")}
    assert sorted(step for _, step in loop) == ["attended", "missed", "thank-you", "thank-you"]
    assert all(tp.status == Status.SENT and tp.channel == "email" for tp in loop.values())
    mail = {m.subject: m for m in referral_mail(clinic)}
    assert set(mail) == {"Thank you for referring Ana Reyes",
                         "Thank you for referring Ben Okafor",
                         "Ana Reyes attended their first visit",
                         "Ben Okafor did not attend their first visit"}
    assert "Ana Reyes, whom you referred, attended their first visit at Riverside Physical " \
           "Therapy on Thursday, October 8." in mail["Ana Reyes attended their first visit"].body
    assert "Ben Okafor, whom you referred, did not attend their first visit at Riverside " \
           "Physical Therapy on Thursday, October 8." in \
        mail["Ben Okafor did not attend their first visit"].body
    for message in mail.values():
        assert message.to == DR1_EMAIL and message.kind == "email"
        assert_minimum_necessary(message)


def test_the_referrer_hears_once_when_discharged_on_appears(clinic: Clinic) -> None:
    with freeze_time("2026-10-05T15:00:00Z") as frozen:
        clinic.referrers(referrer("DR1"))
        clinic.patients(referred("P1"), baseline=True)
        clinic.tick()
        frozen.move_to("2026-10-20T17:00:00Z")
        summary = clinic.patients(referred("P1", discharged_on="2026-10-20"))
        assert summary.events == {"patient.discharged": 1}
        clinic.tick()
        frozen.move_to("2026-10-21T17:00:00Z")
        again = clinic.patients(referred("P1", discharged_on="2026-10-20"))
        assert again.unchanged == 1 and not again.events
        clinic.tick()
    discharged = clinic.one("referral-loop", "discharged", patient="P1")
    assert (discharged.status, discharged.channel, discharged.address) == \
        (Status.SENT, "email", DR1_EMAIL)
    [message] = referral_mail(clinic)
    assert message.subject == "Ana Reyes has completed their plan of care"
    assert "Ana Reyes, whom you referred, completed their plan of care at Riverside Physical " \
           "Therapy on Tuesday, October 20." in message.body
    assert_minimum_necessary(message)


def test_an_opted_out_referrer_gets_no_referral_loop_email(clinic: Clinic) -> None:
    with freeze_time("2026-10-05T15:00:00Z"):
        clinic.referrers(referrer("DR1"))
        clinic.patients(referred("P1"), baseline=True)
        with clinic.db.transaction() as conn:
            add_opt_out(conn, "email", DR1_EMAIL, "all", "unsubscribe", "one click",
                        clock.now())
        clinic.appointments(appointment("A1", "P1", "2026-10-08T10:00:00-05:00"))
        clinic.tick()
    thank_you = clinic.one("referral-loop", "thank-you")
    assert (thank_you.status, thank_you.reason) == (Status.SKIPPED, "opted_out")
    assert referral_mail(clinic) == []


def test_no_thank_you_claims_a_first_visit_that_was_cancelled_before_it_went(
        clinic: Clinic) -> None:
    with freeze_time("2026-10-06T03:00:00Z") as frozen:  # 22:00 CDT: deferred to 08:00
        clinic.referrers(referrer("DR1"))
        clinic.patients(referred("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-10-08T10:00:00-05:00"))
        clinic.tick()
        thank_you = clinic.one("referral-loop", "thank-you")
        assert (thank_you.status, thank_you.due_at) == \
            (Status.PLANNED, utc("2026-10-06T08:00:00-05:00"))
        frozen.move_to("2026-10-06T12:00:00Z")  # 07:00: the patient cancels
        clinic.appointments(appointment("A1", "P1", "2026-10-08T10:00:00-05:00",
                                        status="cancelled"))
        clinic.tick()
        frozen.move_to("2026-10-06T13:00:00Z")
        clinic.tick()
    thank_you = clinic.one("referral-loop", "thank-you")
    assert thank_you.status in (Status.CANCELLED, Status.SKIPPED)
    assert thank_you.reason is not None
    assert not [m for m in referral_mail(clinic) if "booked for Thursday, October 8" in m.body]


def test_a_referrers_email_keeps_the_practices_hours_not_the_patients(
        clinic: Clinic) -> None:
    with freeze_time("2026-10-06T14:00:00Z"):  # 09:00 in Chicago, 04:00 in Honolulu
        clinic.referrers(referrer("DR1"))
        clinic.patients(referred("P1", timezone="Pacific/Honolulu"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-10-08T10:00:00-05:00"))
        clinic.tick()
    thank_you = clinic.one("referral-loop", "thank-you")
    assert (thank_you.status, thank_you.sent_at) == (Status.SENT, utc("2026-10-06T14:00:00Z"))


# --------------------------------------------------------------------------- minimum necessary

CLINICAL_THANK_YOU = """\
{% block subject %}Thank you for referring {{ patient.first_name }}{% endblock %}
{% block text %}
Dear {{ recipient.name }},
Thank you for referring {{ patient.full_name }}.
Diagnosis: {{ patient.custom.diagnosis }}
{% if appointment %}First visit: {{ appointment.start | date }},
{{ appointment.visit_type }}{% endif %}
{{ practice.name }}
{% endblock %}
"""


def _minimum_necessary(tmp_path: Path, extra: str) -> list[tuple[str, int | None, str]]:
    schedules, templates = tmp_path / "lib-schedules", tmp_path / "lib-templates"
    settings = load_settings(write_config(tmp_path, extra), {
        "paths.schedules": str(schedules), "paths.templates": str(templates)})
    found = check_definitions(settings, datetime(2026, 10, 5, 15, tzinfo=UTC)).diagnostics
    return [(Path(d.file).relative_to(templates).as_posix(), d.line, d.message)
            for d in found if d.code == "minimum-necessary" and d.severity == "error"]


def test_validate_refuses_a_clinical_field_in_a_referrer_template_unless_allowed(
        tmp_path: Path) -> None:
    _, templates = copy_library(tmp_path, {})
    assert _minimum_necessary(tmp_path, "") == []  # the shipped library is clean
    (templates / "referral-loop" / "thank-you.email.j2").write_text(CLINICAL_THANK_YOU,
                                                                    encoding="utf-8")
    where = "referral-loop/thank-you.email.j2"
    diagnosis = (where, 5, "patient.custom.diagnosis goes to a referral source, who gets "
                           "the minimum necessary (name, dates, attended)")
    visit_type = (where, 7, "appointment.visit_type goes to a referral source, who gets the "
                            "minimum necessary (name, dates, attended)")
    assert sorted(_minimum_necessary(tmp_path, ""), key=lambda d: d[1] or 0) == \
        [diagnosis, visit_type]
    allow = '\n[referrals]\nallowed_fields = ["diagnosis"]\n'
    assert _minimum_necessary(tmp_path, allow) == [visit_type]
    allow_both = '\n[referrals]\nallowed_fields = ["diagnosis", "visit_type"]\n'
    assert _minimum_necessary(tmp_path, allow_both) == []


def test_a_referrer_message_shows_only_the_custom_fields_the_practice_allowed(
        database_url: str, tmp_path: Path) -> None:
    schedules, templates = copy_library(tmp_path, {
        "referral-loop/thank-you.email.j2":
            "{% block subject %}Referral: {{ patient.first_name }}{% endblock %}\n"
            "{% block text %}Dx: {{ patient.custom.diagnosis }}."
            "{% if 'insurance' in patient.custom %} Plan: {{ patient.custom['insurance'] }}."
            "{% endif %}{% endblock %}\n",
        "welcome/welcome.sms.j2":  # the patient's own message still sees every field
            "{{ practice.name }}: welcome! {% if 'insurance' in patient.custom %}"
            "Plan: {{ patient.custom['insurance'] }}. {% endif %}STOP to opt out",
    })
    clinic = Clinic(database_url, tmp_path, schedules=schedules, templates=templates,
                    config_extra='\n[referrals]\nallowed_fields = ["diagnosis"]\n')
    try:
        with freeze_time("2026-10-05T15:00:00Z"):
            clinic.referrers(referrer("DR1"))
            clinic.patients(referred("P1"))
            clinic.appointments(appointment("A1", "P1", "2026-10-08T10:00:00-05:00"))
            clinic.tick()
        [message] = referral_mail(clinic)
        assert (message.to, message.subject, message.body) == \
            (DR1_EMAIL, "Referral: Ana", "Dx: ACL tear.")
        [welcome] = [m for m in clinic.sms.sent if m.journey == "welcome"]
        assert "Plan: Aetna PPO." in welcome.body
    finally:
        clinic.close()


# --------------------------------------------------------------------------- monthly digest


def digest_mail(clinic: Clinic) -> list[Any]:
    return [m for m in clinic.email.sent if m.journey == "referral-digest"]


def october_practice(clinic: Clinic) -> None:
    """Touchpoint first runs on Mon 2026-10-05; DR1 gets two patients in October (one
    seen, and discharged), DR2 none, DR3 (no email) one."""
    with freeze_time("2026-10-05T15:00:00Z") as frozen:
        clinic.referrers(referrer("DR1"), referrer("DR2", name="Northside Sports Medicine",
                                                   email="dr2@northside.example"),
                         referrer("DR3", name="Dr. Patel", email="", fax="(312) 555-0150"))
        clinic.patients(referred("P1"),
                        referred("P2", first_name="Ben", last_name="Okafor",
                                 phone="(312) 555-0102"),
                        referred("P3", "DR3", first_name="Cora", phone="(312) 555-0103"),
                        baseline=True)
        clinic.tick()
        frozen.move_to("2026-10-08T17:00:00Z")
        clinic.appointments(appointment("A1", "P1", "2026-10-08T10:00:00-05:00",
                                        status="completed", visit_type="Initial evaluation"),
                            appointment("C1", "P3", "2026-10-08T11:00:00-05:00",
                                        status="completed"))
        clinic.tick()
        frozen.move_to("2026-10-20T17:00:00Z")
        clinic.patients(referred("P1", discharged_on="2026-10-20"))
        clinic.tick()


def test_the_monthly_digest_goes_once_on_the_first_at_eight_to_referrers_with_news(
        clinic: Clinic, database_url: str, tmp_path: Path) -> None:
    october_practice(clinic)
    with freeze_time("2026-11-01T13:59:00Z") as frozen:  # 07:59 CST
        assert clinic.tick().digests == 0
        frozen.move_to("2026-11-01T14:00:00Z")  # 08:00 CST
        assert clinic.tick().digests == 1
        clinic.tick()
        restarted = Clinic(database_url, tmp_path)  # a new process on the same database
        try:
            frozen.move_to("2026-11-01T20:00:00Z")
            assert restarted.tick().digests == 0
            frozen.move_to("2026-11-02T14:00:00Z")
            assert clinic.tick().digests == 0
            frozen.move_to("2026-11-03T14:00:00Z")
            assert restarted.tick().digests == 0
            assert digest_mail(restarted) == []
        finally:
            restarted.close()

    [digest] = digest_mail(clinic)
    assert (digest.to, digest.subject) == \
        (DR1_EMAIL, "Your patients at Riverside Physical Therapy: October 2026")
    assert "Dear Dana Whitfield," in digest.body
    assert "  referred:   2\n  seen:       1\n  discharged: 1" in digest.body
    assert "- Ana Reyes, referred Mon, Oct 5, 1 visit, discharged Tue, Oct 20" in digest.body
    assert "- Ben Okafor, referred Mon, Oct 5\n" in digest.body
    assert "Cora" not in digest.body  # DR3's patient
    assert_minimum_necessary(digest)
    [tp] = clinic.touch_points(journey="referral-digest")
    assert (tp.status, tp.recipient, tp.channel, tp.address, tp.sent_at) == \
        (Status.SENT, referrer_key(clinic, "DR1"), "email", DR1_EMAIL,
         utc("2026-11-01T14:00:00Z"))


def test_no_digest_for_a_month_before_touchpoint_first_ran(clinic: Clinic) -> None:
    with freeze_time("2026-10-05T15:00:00Z") as frozen:  # data imported, nothing run yet
        clinic.referrers(referrer("DR1"))
        clinic.patients(referred("P1"), baseline=True)
        frozen.move_to("2026-11-01T15:00:00Z")  # the first tick: 09:00 CST on Nov 1
        assert clinic.tick().digests == 0
        frozen.move_to("2026-11-02T15:00:00Z")
        assert clinic.tick().digests == 0
        frozen.move_to("2026-11-10T20:00:00Z")
        clinic.appointments(appointment("A1", "P1", "2026-11-10T10:00:00-06:00",
                                        status="completed"))
        clinic.tick()
        frozen.move_to("2026-12-01T14:00:00Z")
        assert clinic.tick().digests == 1
    [digest] = digest_mail(clinic)
    assert digest.subject == "Your patients at Riverside Physical Therapy: November 2026"
    assert "  referred:   0\n  seen:       1\n  discharged: 0" in digest.body
    assert "- Ana Reyes, 1 visit\n" in digest.body


def test_the_digest_goes_at_digest_at(sqlite_url: str, tmp_path: Path) -> None:
    clinic = Clinic(sqlite_url, tmp_path, config_extra='\n[referrals]\ndigest_at = "10:30"\n')
    try:
        october_practice(clinic)
        with freeze_time("2026-11-01T16:29:00Z") as frozen:  # 10:29 CST
            assert clinic.tick().digests == 0
            frozen.move_to("2026-11-01T16:30:00Z")
            assert clinic.tick().digests == 1
        assert [m.to for m in digest_mail(clinic)] == [DR1_EMAIL]
    finally:
        clinic.close()


def test_monthly_digest_false_turns_it_off(sqlite_url: str, tmp_path: Path) -> None:
    clinic = Clinic(sqlite_url, tmp_path, config_extra="\n[referrals]\nmonthly_digest = false\n")
    try:
        october_practice(clinic)
        with freeze_time("2026-11-01T15:00:00Z") as frozen:
            assert clinic.tick().digests == 0
            frozen.move_to("2026-12-01T15:00:00Z")
            assert clinic.tick().digests == 0
        assert digest_mail(clinic) == []
        assert clinic.touch_points(journey="referral-digest") == []
    finally:
        clinic.close()


def test_a_referrer_who_opted_out_of_email_gets_no_digest(clinic: Clinic) -> None:
    """Invariant 4: opted-out addresses get nothing (e.g. after a SendGrid unsubscribe or
    spam report for the referring office's address)."""
    october_practice(clinic)
    with freeze_time("2026-10-25T15:00:00Z"), clinic.db.transaction() as conn:
        add_opt_out(conn, "email", DR1_EMAIL, "all", "unsubscribe", "one click", clock.now())
    with freeze_time("2026-11-01T14:00:00Z"):
        clinic.tick()
    assert digest_mail(clinic) == []
    for tp in clinic.touch_points(journey="referral-digest"):
        assert (tp.status, tp.reason) == (Status.SKIPPED, "opted_out")


def test_a_referrers_email_that_bounces_opens_no_case_about_the_patient(
        clinic: Clinic) -> None:
    clinic.email.fail_when(lambda m: PermanentChannelError(
        "mailbox does not exist", provider="fake") if m.to == DR1_EMAIL else None)
    with freeze_time("2026-10-05T15:00:00Z") as frozen:  # Mon 10:00 CDT
        clinic.referrers(referrer("DR1"))
        clinic.patients(referred("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-10-08T10:00:00-05:00"))
        clinic.tick()
        frozen.move_to("2026-10-05T15:01:00Z")
        clinic.tick()

    [thanks] = clinic.touch_points(journey="referral-loop")
    assert thanks.status == Status.FAILED
    with clinic.db.transaction() as conn:
        assert list_cases(conn) == []
