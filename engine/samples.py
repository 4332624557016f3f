"""Built-in sample patients and an appointment, for previews and template checks.

Values are chosen to be realistic *and* on the long side (a nine-letter first name, an
appointment at 10:30 AM on a Wednesday), so a template that fits one SMS segment with the
sample fits for most real patients. The second sample patient has an accented name, as
many real patients do: "í" is not in the GSM-7 alphabet, so `touchpoint validate` counts
segments as such a patient's text would be sent.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime, time, timedelta
from typing import Any

from engine.cases import CAUSES, Case, case_fields
from engine.definitions.templates import Fields
from engine.domain import Appointment, Contact, Patient, Recipient, Referrer
from engine.message_context import message_context, practice_fields
from engine.patient_links import with_token
from engine.referrals import DigestLine
from engine.settings import Settings
from engine.timing import at_local, zone
from engine.unsubscribe import public_url


class _AnyField(Fields):
    """``patient.custom.whatever`` → ``[whatever]``: custom fields differ per practice."""

    def __getattr__(self, name: str) -> Any:
        return f"[{name}]"

    def __getitem__(self, name: str) -> Any:
        return f"[{name}]"


# (first name, last name) of each sample patient; the first is the one previews show.
SAMPLE_NAMES: tuple[tuple[str, str], ...] = (("Alexandra", "Rivera"), ("Lucía", "Fernández"))


def sample_patient(language: str | None = None,
                   name: tuple[str, str] = SAMPLE_NAMES[0]) -> Patient:
    first, last = name
    mailbox = unicodedata.normalize("NFKD", f"{first}.{last}".lower()).encode("ascii", "ignore")
    return Patient(
        id=0, external_id="SAMPLE", first_name=first, last_name=last,
        phone="+13125550123", email=f"{mailbox.decode()}@example.com", language=language,
        timezone=None, sms_consent=True, email_consent=True, marketing_consent=True)


def sample_appointment(now: datetime, timezone: str) -> Appointment:
    """Next week's Wednesday, 10:30 local."""
    tz = zone(timezone)
    today = now.astimezone(tz).date()
    wednesday = today + timedelta(days=(2 - today.weekday()) % 7 + 7)
    return Appointment(
        id=0, external_id="SAMPLE-1", patient_id=0,
        start_at=at_local(wednesday, time(10, 30), tz), duration_minutes=60, status="booked",
        visit_type="Follow-up", therapist="Maya Chen, DPT", location="Main clinic", version=1)


def sample_referrer() -> Referrer:
    return Referrer(id=0, external_id="SAMPLE-REF", name="Lakeside Orthopedics",
                    contact_name="Dana Whitfield", email="referrals@lakeside.example", fax=None)


def sample_guardian(language: str | None = None) -> Contact:
    return Contact(id=0, external_id="SAMPLE-C", patient_id=0, relationship="parent",
                   first_name="Gabriela", phone="+13125550124", email=None,
                   language=language, timezone=None, sms_consent=True, email_consent=True)


def sample_case(now: datetime, settings: Settings, cause: str = "low_score") -> Case:
    return Case(id=0, patient_id=0, cause=cause, cause_key="SAMPLE", status="open",
                owner=settings.recovery.owner_name or "Jordan Ellis", detail=CAUSES[cause],
                appointment_id=None, touch_point_id=None, inbound_id=None, opened_at=now,
                due_at=now + timedelta(days=1), alerted_at=None, escalated_at=None,
                resolved_at=None, resolution=None)


def sample_slot(now: datetime, timezone: str) -> Fields:
    """A freed slot tomorrow at 10:00, offered for 2 hours."""
    appointment = sample_appointment(now, timezone)
    return Fields({"id": 0, "start": appointment.start_at, "end": appointment.end_at,
                   "duration_minutes": appointment.duration_minutes,
                   "therapist": appointment.therapist, "location": appointment.location,
                   "visit_type": appointment.visit_type, "status": "open",
                   "expires_at": now + timedelta(hours=2)}, "slot")


def sample_context(settings: Settings, now: datetime, language: str | None = None,
                   journey: str = "", step: str = "", recipient: str | None = None,
                   name: tuple[str, str] = SAMPLE_NAMES[0]) -> dict[str, Any]:
    """Template variables for a sample patient (``name``, one of :data:`SAMPLE_NAMES`);
    ``recipient`` is the step's (a referrer or a contact gets their own ``recipient``)."""
    timezone = settings.require("practice.timezone")
    patient = sample_patient(language, name)
    referrer = sample_referrer()
    addressed = Recipient.of_referrer(referrer) if recipient == "referrer" else \
        Recipient.of_contact(sample_guardian(language), patient) if recipient == "contacts" \
        else None
    context = message_context(
        patient=patient, appointment=sample_appointment(now, timezone),
        practice=practice_fields(settings), practice_timezone=timezone, touch_point_id=0,
        journey=journey, step=step, visit_number=3, recipient=addressed, referrer=referrer,
        case=case_fields(sample_case(now, settings), settings),
        slot=sample_slot(now, timezone))
    context["unsubscribe_url"] = f"{public_url(settings)}/unsubscribe/EXAMPLE-TOKEN"
    view = context["patient"]
    context["patient"] = Fields({**{k: view[k] for k in (
        "id", "first_name", "last_name", "full_name", "language", "timezone")},
        "discharged_on": now.astimezone(zone(timezone)).date(),
        "custom": _AnyField({}, "patient.custom"), **_sample_links(settings)}, "patient")
    return context


# As long as a real patient token (engine.patient_links), so lengths and segments are right
SAMPLE_TOKEN = "MTIzNA.aUPaAg.Rk3q9m1WbX2sYtQpLz8vN4cHjE0"


def _sample_links(settings: Settings) -> dict[str, str]:
    """The sample patient's booking and intake links: the practice's, with a token."""
    booking, intake = settings.practice.booking_url, settings.practice.links.get("intake", "")
    return {"booking_link": with_token(booking, SAMPLE_TOKEN) if booking else "",
            "intake_link": with_token(intake, SAMPLE_TOKEN) if intake else ""}


def sample_digest(now: datetime, settings: Settings) -> Fields:
    """A monthly referral digest with two patients."""
    month = now.astimezone(zone(settings.require("practice.timezone"))).date().replace(day=1)
    first = DigestLine("Alexandra Rivera", referred_on=month.replace(day=3), seen=4)
    second = DigestLine("Samuel Okafor", seen=6, discharged_on=month.replace(day=20))
    return Fields({"month": month, "referred": 1, "seen": 2, "discharged": 1,
                   "patients": [first.fields(), second.fields()]}, "digest")
