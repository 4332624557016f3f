"""One patient as the front desk sees them: found by name, id or phone, and their timeline.

The timeline puts in one list, newest first, everything Touchpoint knows happened to a
patient: each touch point with its status and the `why` sentence, each event the
practice's records produced (booked, moved, cancelled, completed…), each reply and each
recovery case; beside it the contacts and guardians, the consents and the opt-outs.
Phone numbers and emails are masked unless ``reveal`` is asked for (the console audits
that). The console and the command line share these functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, func, or_, select

from engine.cases import list_cases
from engine.privacy import mask_address
from engine.store import ledger
from engine.store.records import (
    appointments_of,
    load_contacts,
    opt_out_address,
    patient_by_external_id,
)
from engine.store.schema import (
    events,
    history,
    inbound_messages,
    opt_outs,
    patients,
    touch_points,
)
from engine.touch_point_log import explain

SEARCH_LIMIT = 25
#: How an event kind reads in a timeline.
EVENT_TITLES = {
    "patient.created": "Added to Touchpoint", "appointment.booked": "Visit booked",
    "appointment.rescheduled": "Visit moved", "appointment.cancelled": "Visit cancelled",
    "appointment.completed": "Visit completed", "appointment.no_show": "Missed visit",
    "patient.lapsed": "No visit for a while", "patient.discharged": "Discharged",
    "plan.under_scheduled": "Fewer visits booked than the plan of care needs",
    "waitlist.offered": "Offered a freed slot from the waitlist",
}


@dataclass(frozen=True)
class Found:
    patient_id: str
    name: str
    phone: str
    email: str


@dataclass(frozen=True)
class Entry:
    at: datetime
    kind: str  # touch_point, provider_event, event, reply, case
    title: str
    status: str
    text: str
    link: str = ""


@dataclass
class Timeline:
    patient_id: str
    name: str
    phone: str
    email: str
    language: str
    timezone: str
    date_of_birth: date | None
    consents: dict[str, bool]
    contacts: list[dict[str, Any]] = field(default_factory=list)
    opt_outs: list[dict[str, Any]] = field(default_factory=list)
    appointments: list[dict[str, Any]] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    # the plan of care: visits done (since its start) and prescribed, a week, its dates;
    # None without a plan
    plan: dict[str, Any] | None = None
    intake_completed: bool = False

    def minor_on(self, day: date) -> bool:
        dob = self.date_of_birth
        return dob is not None and (day.year - dob.year
                                    - ((day.month, day.day) < (dob.month, dob.day))) < 18


def _shown(address: str | None, reveal: bool) -> str:
    return (address or "") if reveal else mask_address(address)


def search(conn: Connection, query: str, *, limit: int = SEARCH_LIMIT) -> list[Found]:
    """Patients whose id starts with ``query``, whose name contains it, or whose phone
    number ends with its digits (7 or more), best matches first. Addresses are masked."""
    text = query.strip()
    if not text:
        return []
    digits = re.sub(r"\D", "", text)
    lowered = text.lower()
    matches = [patients.c.external_id.startswith(text, autoescape=True),
               func.lower(patients.c.first_name + " " + patients.c.last_name)
               .contains(lowered, autoescape=True),
               func.lower(patients.c.last_name + " " + patients.c.first_name)
               .contains(lowered, autoescape=True),
               func.lower(patients.c.last_name + ", " + patients.c.first_name)
               .contains(lowered, autoescape=True)]
    if len(digits) >= 7:
        matches.append(patients.c.phone.endswith(digits[-10:]))
    rows = conn.execute(select(patients.c.external_id, patients.c.first_name,
                               patients.c.last_name, patients.c.phone, patients.c.email)
                        .where(or_(*matches))
                        .order_by(patients.c.last_name, patients.c.first_name,
                                  patients.c.external_id)
                        .limit(limit * 2)).all()
    ranked = sorted(rows, key=lambda r: (r.external_id != text,
                                         not r.external_id.startswith(text)))
    return [Found(r.external_id, f"{r.first_name} {r.last_name}".strip(),
                  mask_address(r.phone), mask_address(r.email)) for r in ranked[:limit]]


def timeline(conn: Connection, external_id: str, *, reveal: bool = False) -> Timeline | None:
    """Everything about one patient, newest first; None if there is no such patient."""
    patient = patient_by_external_id(conn, external_id)
    if patient is None:
        return None
    view = Timeline(
        patient_id=patient.external_id,
        name=f"{patient.first_name} {patient.last_name}".strip(),
        phone=_shown(patient.phone, reveal), email=_shown(patient.email, reveal),
        language=patient.language or "", timezone=patient.timezone or "",
        date_of_birth=patient.date_of_birth,
        consents={"sms": patient.sms_consent, "email": patient.email_consent,
                  "marketing": patient.marketing_consent})
    contacts = load_contacts(conn, [patient.id]).get(patient.id, [])
    view.contacts = [{"relationship": c.relationship, "name": c.first_name,
                      "phone": _shown(c.phone, reveal), "email": _shown(c.email, reveal),
                      "receives": c.receives,
                      "consents": {"sms": c.sms_consent, "email": c.email_consent,
                                   "marketing": c.marketing_consent}} for c in contacts]
    addresses = {("sms", opt_out_address("sms", a)) for a in
                 [patient.phone, *(c.phone for c in contacts)] if a}
    addresses |= {("email", opt_out_address("email", a)) for a in
                  [patient.email, *(c.email for c in contacts)] if a}
    if addresses:
        rows = conn.execute(select(opt_outs).where(
            opt_outs.c.address.in_([a for _, a in addresses])).order_by(opt_outs.c.created_at))
        view.opt_outs = [{"channel": r.channel, "address": _shown(r.address, reveal),
                          "purpose": r.purpose, "source": r.source, "at": r.created_at}
                         for r in rows if (r.channel, r.address) in addresses]
    visits = appointments_of(conn, patient.id)
    by_id = {a.id: a.external_id for a in visits}
    view.appointments = [{"appointment_id": a.external_id, "start": a.start_at,
                          "status": a.status, "visit_type": a.visit_type,
                          "therapist": a.therapist, "location": a.location,
                          "confirmed": a.confirmed_at is not None} for a in visits]
    entries: list[Entry] = []
    for row in conn.execute(select(touch_points)
                            .where(touch_points.c.patient_id == patient.id)):
        tp = ledger.touch_point_from_row(row)
        to = (f" by {tp.channel} to {_shown(tp.address, reveal) or 'nobody'}"
              if tp.channel else "")  # (a planned one's channel is chosen when it is due)
        entries.append(Entry(tp.sent_at or tp.due_at, "touch_point",
                             f"{tp.journey} / {tp.step}{to}", tp.status, explain(tp),
                             f"/touch-points/{tp.id}"))
    reported = conn.execute(
        select(history.c.at, history.c.reason, history.c.source, history.c.touch_point_id,
               touch_points.c.journey, touch_points.c.step, touch_points.c.channel)
        .join(touch_points, touch_points.c.id == history.c.touch_point_id)
        .where(touch_points.c.patient_id == patient.id, history.c.kind == "delivery"))
    for row in reported:  # what providers reported: delivered, bounced, opened, …
        entries.append(Entry(row.at, "provider_event",
                             f"{row.channel or ''} {row.reason or 'report'}: {row.journey} / "
                             f"{row.step}".strip(), row.reason or "",
                             f"reported by {row.source}", f"/touch-points/{row.touch_point_id}"))
    for row in conn.execute(select(events).where(events.c.patient_id == patient.id)):
        visit = by_id.get(row.appointment_id) if row.appointment_id else None
        entries.append(Entry(row.occurred_at, "event",
                             EVENT_TITLES.get(row.kind, row.kind)
                             + (f" ({visit})" if visit else ""),
                             "set aside" if row.failed_at else "", row.source or ""))
    for row in conn.execute(select(inbound_messages)
                            .where(inbound_messages.c.patient_id == patient.id)):
        entries.append(Entry(row.received_at, "reply",
                             f"Reply by {row.channel} from {_shown(row.from_address, reveal)}",
                             row.flag or row.intent, row.body))
    for case in list_cases(conn, patient_id=patient.id):
        entries.append(Entry(case.opened_at, "case", f"Case {case.id}: {case.cause}",
                             case.status, case.resolution or case.detail,
                             f"/cases/{case.id}"))
    view.entries = sorted(entries, key=lambda e: e.at, reverse=True)
    view.intake_completed = patient.intake_completed
    if patient.plan_visits is not None and patient.plan_start is not None:
        view.plan = {"done": sum(1 for a in visits if a.status == "completed"
                                 and a.start_at.date() >= patient.plan_start),
                     "visits": patient.plan_visits, "per_week": patient.plan_visits_per_week,
                     "start": patient.plan_start, "end": patient.plan_end}
    return view
