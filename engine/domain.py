"""The practice's data as plain, immutable values: what the planner and templates see.

These are read from the store (engine.store.records) and never write back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class Patient:
    id: int
    external_id: str
    first_name: str
    last_name: str
    phone: str | None
    email: str | None
    language: str | None
    timezone: str | None
    sms_consent: bool
    email_consent: bool
    marketing_consent: bool
    custom: dict[str, Any] = field(default_factory=dict)
    date_of_birth: date | None = None
    referrer_id: int | None = None
    discharged_on: date | None = None
    removed_at: datetime | None = None  # left the practice's records (engine.removal)
    # the plan of care (engine.plan_of_care); None when the EMR gives none
    plan_visits: int | None = None
    plan_visits_per_week: int | None = None
    plan_start: date | None = None
    plan_end: date | None = None
    intake_completed: bool = False
    booking_url: str | None = None  # the EMR's own booking page for this patient

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    def is_minor(self, on: date) -> bool:
        """Under 18 on ``on`` (unknown date of birth: not a minor)."""
        if self.date_of_birth is None:
            return False
        born = self.date_of_birth
        adult_at = born.replace(year=born.year + 18) if not (born.month == 2 and born.day == 29) \
            else date(born.year + 18, 3, 1)
        return on < adult_at


@dataclass(frozen=True)
class Contact:
    """A parent, guardian, spouse or caregiver who receives some of a patient's messages."""

    id: int
    external_id: str
    patient_id: int
    relationship: str
    first_name: str
    phone: str | None
    email: str | None
    language: str | None
    timezone: str | None
    sms_consent: bool
    email_consent: bool
    receives: str = "transactional"
    marketing_consent: bool = False

    @property
    def is_guardian(self) -> bool:
        return self.relationship in GUARDIANS

    def receives_for(self, journey: str, purpose: str) -> bool:
        """Whether this contact gets ``journey``'s messages: ``receives`` lists purposes
        (transactional, marketing), journey names, ``all`` or ``none``."""
        wanted = {w.strip() for w in self.receives.split(",") if w.strip()}
        return "all" in wanted or purpose in wanted or journey in wanted


@dataclass(frozen=True)
class Referrer:
    id: int
    external_id: str
    name: str
    contact_name: str
    email: str | None
    fax: str | None


@dataclass(frozen=True)
class Recipient:
    """Whoever one touch point is addressed to, with what the guards need to know."""

    key: str  # "patient", "contact:<id>" or "referrer:<id>" (the ledger's recipient column)
    role: str  # patient, parent, guardian, spouse, caregiver, referrer, …
    first_name: str
    last_name: str
    phone: str | None
    email: str | None
    language: str | None
    timezone: str | None
    sms_consent: bool
    email_consent: bool
    marketing_consent: bool

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    @classmethod
    def of_patient(cls, patient: Patient) -> Recipient:
        return cls("patient", "patient", patient.first_name, patient.last_name, patient.phone,
                   patient.email, patient.language, patient.timezone, patient.sms_consent,
                   patient.email_consent, patient.marketing_consent)

    @classmethod
    def of_contact(cls, contact: Contact, patient: Patient | None = None) -> Recipient:
        """A contact, living (unless they say otherwise) in the patient's timezone and
        speaking the patient's language."""
        return cls(f"contact:{contact.id}", contact.relationship, contact.first_name, "",
                   contact.phone, contact.email,
                   contact.language or (patient.language if patient else None),
                   contact.timezone or (patient.timezone if patient else None),
                   contact.sms_consent, contact.email_consent, contact.marketing_consent)

    @classmethod
    def of_referrer(cls, referrer: Referrer) -> Recipient:
        # A referring office gets care-coordination email at its work address: no SMS,
        # no marketing; its unsubscribe link still works.
        return cls(f"referrer:{referrer.id}", "referrer", referrer.contact_name or referrer.name,
                   "", None, referrer.email, None, None, False, True, False)


GUARDIANS = frozenset({"parent", "guardian", "mother", "father", "legal guardian"})


@dataclass(frozen=True)
class Appointment:
    id: int
    external_id: str
    patient_id: int
    start_at: datetime
    duration_minutes: int
    status: str
    visit_type: str
    therapist: str
    location: str
    version: int
    confirmed_at: datetime | None = None
    removed_at: datetime | None = None  # left the practice's records (engine.removal)

    @property
    def end_at(self) -> datetime:
        return self.start_at + timedelta(minutes=self.duration_minutes)


@dataclass(frozen=True)
class Event:
    """Something that happened to a patient; the planner's input.

    ``data`` carries what the event knew when it happened (an appointment's start and
    version at booking time), so re-processing an event always plans the same thing.
    """

    id: int
    kind: str
    patient_id: int
    appointment_id: int | None
    occurred_at: datetime
    data: dict[str, Any]
    source: str = ""


APPOINTMENT_STATUSES = ("booked", "cancelled", "completed", "no_show")
