"""Who a step's message goes to: the patient, a minor's guardians, contacts, the referrer.

``step.recipient`` (in ``schedules/*.yaml``):

* not set — the patient; for a minor (under 18 by ``date_of_birth``, in the practice's
  timezone), their guardians (contacts whose relationship is parent or guardian and who
  receive the journey) — never the minor. A minor with no guardian on file gets nothing:
  the touch point is planned as skipped, ``no_guardian``, and staff are alerted (a case,
  see engine/cases.py); one whose guardians do not receive the journey is skipped
  ``no_consent``;
* ``patient`` — the patient themself, minor or not (a minor with no guardian on file:
  skipped ``no_guardian``, as above);
* ``contacts`` — every contact who receives the journey (``receives`` in contacts.csv);
* ``patient_and_contacts`` — both; for a minor, the contacts only (their guardians stand
  in for them, as when not set), never the minor;
* ``referrer`` — the office contact of the patient's referral source (email only).

Each recipient gets their own touch point (the ledger's ``recipient`` column:
``patient``, ``contact:<id>`` or ``referrer:<id>``), timed in their own timezone and
checked against their own consents and opt-outs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from engine.domain import Contact, Patient, Recipient, Referrer
from engine.outcomes import Reason

PATIENT = "patient"


@dataclass(frozen=True)
class Addressee:
    key: str
    timezone: str | None  # None: the patient's, then the practice's
    refused: str | None = None  # why it must not go (planned as skipped, with ``reason``)
    reason: str = Reason.NO_CONSENT


def addressees(recipient: str | None, journey: str, purpose: str, patient: Patient,
               contacts: Sequence[Contact], today: date) -> list[Addressee]:
    """Who one step's message goes to, in a stable order (the patient first)."""
    patient_tz = patient.timezone

    def of(contact: Contact) -> Addressee:
        return Addressee(f"contact:{contact.id}", contact.timezone or patient_tz)

    receiving = [c for c in contacts if c.receives_for(journey, purpose)]
    minor = patient.is_minor(today)
    if minor and recipient in (None, "patient", "patient_and_contacts") \
            and not any(c.is_guardian for c in contacts):
        # (a minor cannot consent to texts themself: a parent must be on file)
        skipped = Addressee(PATIENT, patient_tz, reason=Reason.NO_GUARDIAN, refused=(
            "the patient is a minor with no parent or guardian on file (contacts.csv)"))
        return [skipped, *(of(c) for c in receiving)] if recipient == "patient_and_contacts" \
            else [skipped]
    if recipient is None:
        if not minor:
            return [Addressee(PATIENT, patient_tz)]
        guardians = [of(c) for c in receiving if c.is_guardian]
        return guardians or [Addressee(PATIENT, patient_tz, refused=(
            f"the patient is a minor and no guardian on file receives {journey} "
            f"({purpose}; receives in contacts.csv)"))]
    if recipient == "patient":
        return [Addressee(PATIENT, patient_tz)]
    if recipient == "contacts":
        return [of(c) for c in receiving]
    if recipient == "patient_and_contacts":
        # a minor's guardians stand in for them: the contacts only, never the minor
        return [of(c) for c in receiving] if minor \
            else [Addressee(PATIENT, patient_tz), *(of(c) for c in receiving)]
    if recipient == "referrer":
        return [Addressee(f"referrer:{patient.referrer_id}", None)] \
            if patient.referrer_id is not None else []
    raise ValueError(f"unknown recipient {recipient!r}")


def resolve(key: str, patient: Patient, contacts: Sequence[Contact],
            referrer: Referrer | None) -> Recipient | None:
    """The recipient behind a ledger ``recipient`` key, or None if no longer on file."""
    if key == PATIENT:
        return Recipient.of_patient(patient)
    kind, _, ident = key.partition(":")
    if kind == "contact":
        for contact in contacts:
            if str(contact.id) == ident:
                return Recipient.of_contact(contact, patient)
        return None
    if kind == "referrer" and referrer is not None and str(referrer.id) == ident:
        return Recipient.of_referrer(referrer)
    return None
