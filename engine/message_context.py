"""What a template sees: plain values built from records and practice settings.

Only fields listed in ``definitions.templates.FIELDS`` are exposed — no phone numbers,
emails or consents — so a template cannot leak what it was never given.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from babel.numbers import format_currency

from engine.definitions.templates import Fields, format_phone
from engine.domain import Appointment, Patient, Recipient, Referrer
from engine.settings import Settings
from engine.store.records import as_utc

if TYPE_CHECKING:
    from engine.patient_links import PatientLinks


def practice_fields(settings: Settings) -> Fields:
    practice = settings.practice
    return Fields({
        "name": practice.name or "",
        "phone": format_phone(practice.phone) if practice.phone else "",
        "phone_e164": practice.phone or "",
        "address": practice.address,
        "website": practice.website,
        "timezone": practice.timezone or "",
        "links": Fields(practice.links, "practice.links"),
        "visit_price": money(practice.visit_price, practice.currency),
    }, "practice")


def money(amount: Decimal | None, currency: str) -> str:
    """``$120`` (cents only when there are some); ``""`` when the amount is unset."""
    if amount is None:
        return ""
    whole = amount == amount.to_integral_value()
    return format_currency(amount, currency, format="¤#,##0" if whole else "¤#,##0.00",
                           locale="en_US", currency_digits=False)


def patient_fields(patient: Patient, practice_timezone: str,
                   custom: Collection[str] | None = None,
                   links: PatientLinks | None = None) -> Fields:
    """``custom`` limits the custom fields shown (a referrer sees only those the practice
    allowed); None shows them all. ``links``: the patient's booking and intake links
    (engine.patient_links; empty without)."""
    shown = patient.custom if custom is None else \
        {k: v for k, v in patient.custom.items() if k in custom}
    return Fields({
        "id": patient.external_id,
        "first_name": patient.first_name,
        "last_name": patient.last_name,
        "full_name": patient.full_name,
        "language": patient.language or "",
        "timezone": patient.timezone or practice_timezone,
        "custom": Fields(shown, "patient.custom"),
        "discharged_on": patient.discharged_on,
        "booking_link": links.booking if links else "",
        "intake_link": links.intake if links else "",
    }, "patient")


def recipient_fields(recipient: Recipient, practice_timezone: str) -> Fields:
    return Fields({"role": recipient.role, "first_name": recipient.first_name,
                   "last_name": recipient.last_name, "name": recipient.name,
                   "is_patient": recipient.key == "patient",
                   "language": recipient.language or "",
                   "timezone": recipient.timezone or practice_timezone}, "recipient")


def referrer_fields(referrer: Referrer) -> Fields:
    return Fields({"name": referrer.name, "contact_name": referrer.contact_name}, "referrer")


def appointment_fields(appointment: Appointment, visit_number: int | None = None,
                       visit_type: bool = True) -> Fields:
    return Fields({
        "id": appointment.external_id,
        "start": appointment.start_at,
        "end": appointment.end_at,
        "duration_minutes": appointment.duration_minutes,
        "visit_type": appointment.visit_type if visit_type else "",
        "therapist": appointment.therapist,
        "location": appointment.location,
        "status": appointment.status,
        "visit_number": visit_number if visit_number is not None else 0,
        "confirmed": appointment.confirmed_at is not None,
    }, "appointment")


def slot_fields(row: Any, expires_at: datetime | None = None) -> Fields:
    """A ``slots`` row for templates (``slot.start`` renders in the recipient's zone)."""
    start = as_utc(row.start_at)
    return Fields({
        "id": row.id, "start": start,
        "end": start + timedelta(minutes=row.duration_minutes),
        "duration_minutes": row.duration_minutes, "therapist": row.therapist,
        "location": row.location, "visit_type": row.visit_type, "status": row.status,
        "expires_at": expires_at,
    }, "slot")


def message_context(
    *,
    patient: Patient,
    appointment: Appointment | None,
    practice: Fields,
    practice_timezone: str,
    touch_point_id: int = 0,
    journey: str = "",
    step: str = "",
    visit_number: int | None = None,
    recipient: Recipient | None = None,
    referrer: Referrer | None = None,
    case: Fields | None = None,
    custom_fields: Collection[str] | None = None,
    links: PatientLinks | None = None,
    slot: Fields | None = None,
) -> dict[str, Any]:
    # (a referring office, which sees only some custom fields, never gets the patient's links)
    patient_view = patient_fields(patient, practice_timezone, custom_fields,
                                  links if custom_fields is None else None)
    return {
        "patient": patient_view,
        "recipient": recipient_fields(recipient or Recipient.of_patient(patient),
                                      practice_timezone),
        "referrer": referrer_fields(referrer) if referrer else None,
        "case": case,
        "slot": slot,
        "appointment": appointment_fields(
            appointment, visit_number,
            # minimum necessary: whoever sees only some custom fields sees no visit type
            # unless it is one of them
            visit_type=custom_fields is None or "visit_type" in custom_fields)
        if appointment else None,
        "practice": practice,
        "touch_point": Fields({"id": touch_point_id, "journey": journey, "step": step},
                              "touch_point"),
        "unsubscribe_url": None,  # set by the dispatcher for emails that carry one
    }
