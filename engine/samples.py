"""A built-in sample patient and appointment, for previews and template checks.

Values are chosen to be realistic *and* on the long side (a nine-letter first name, an
appointment at 10:30 AM on a Wednesday), so a template that fits one SMS segment with the
sample fits for most real patients.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

from engine.definitions.templates import Fields
from engine.message_context import message_context, practice_fields
from engine.records import Appointment, Patient
from engine.settings import Settings
from engine.timing import at_local, zone
from engine.unsubscribe import public_url


class _AnyField(Fields):
    """``patient.custom.whatever`` → ``[whatever]``: custom fields differ per practice."""

    def __getattr__(self, name: str) -> Any:
        return f"[{name}]"

    def __getitem__(self, name: str) -> Any:
        return f"[{name}]"


def sample_patient(language: str | None = None) -> Patient:
    return Patient(
        id=0, external_id="SAMPLE", first_name="Alexandra", last_name="Rivera",
        phone="+13125550123", email="alexandra.rivera@example.com", language=language,
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


def sample_context(settings: Settings, now: datetime, language: str | None = None,
                   journey: str = "", step: str = "") -> dict[str, Any]:
    timezone = settings.require("practice.timezone")
    context = message_context(
        patient=sample_patient(language), appointment=sample_appointment(now, timezone),
        practice=practice_fields(settings), practice_timezone=timezone, touch_point_id=0,
        journey=journey, step=step, visit_number=3)
    context["unsubscribe_url"] = f"{public_url(settings)}/unsubscribe/EXAMPLE-TOKEN"
    patient = context["patient"]
    context["patient"] = Fields({**{k: patient[k] for k in (
        "id", "first_name", "last_name", "full_name", "language", "timezone")},
        "custom": _AnyField({}, "patient.custom")}, "patient")
    return context
