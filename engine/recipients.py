"""Who a step's message goes to: the patient, a minor's guardians, contacts, the referrer.

``step.recipient`` (in ``schedules/*.yaml``):

* not set — the patient; for a minor (under 18 by ``date_of_birth``), their guardians
  (contacts whose relationship is parent or guardian and who receive the journey). A
  minor with no guardian on file gets transactional messages themself; marketing goes
  to a minor only through a guardian who receives it (otherwise it is planned as
  skipped, ``no_consent``);
* ``patient`` — the patient, minor or not;
* ``contacts`` — every contact who receives the journey (``receives`` in contacts.csv);
* ``patient_and_contacts`` — both;
* ``referrer`` — the office contact of the patient's referral source (email only).

Each recipient gets their own touch point (the ledger's ``recipient`` column:
``patient``, ``contact:<id>`` or ``referrer:<id>``), timed in their own timezone and
checked against their own consents and opt-outs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from engine.records import Contact, Patient, Recipient, Referrer

PATIENT = "patient"


@dataclass(frozen=True)
class Addressee:
    key: str
    timezone: str | None  # None: the patient's, then the practice's
    refused: str | None = None  # why it must not go (planned as skipped, no_consent)


def addressees(recipient: str | None, journey: str, purpose: str, patient: Patient,
               contacts: Sequence[Contact], today: date) -> list[Addressee]:
    """Who one step's message goes to, in a stable order (the patient first)."""
    patient_tz = patient.timezone

    def of(contact: Contact) -> Addressee:
        return Addressee(f"contact:{contact.id}", contact.timezone or patient_tz)

    receiving = [c for c in contacts if c.receives_for(journey, purpose)]
    if recipient is None:
        if not patient.is_minor(today):
            return [Addressee(PATIENT, patient_tz)]
        guardians = [of(c) for c in receiving if c.is_guardian]
        if guardians:
            return guardians
        if purpose == "marketing":
            return [Addressee(PATIENT, patient_tz, refused=(
                "the patient is a minor and no guardian on file receives marketing "
                "(receives in contacts.csv)"))]
        return [Addressee(PATIENT, patient_tz)]
    if recipient == "patient":
        return [Addressee(PATIENT, patient_tz)]
    if recipient == "contacts":
        return [of(c) for c in receiving]
    if recipient == "patient_and_contacts":
        return [Addressee(PATIENT, patient_tz), *(of(c) for c in receiving)]
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
