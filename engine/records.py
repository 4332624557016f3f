"""The practice's data as plain, immutable values: what the planner and templates see.

These are read from the store (engine.store.records) and never write back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
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

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


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
