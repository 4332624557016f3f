"""Closing the loop with referral sources: the referral-loop events and the monthly digest.

When a patient with a ``referral_source`` reaches a milestone, the planner records one
event per (patient, referrer), which the shipped ``schedules/referral-loop.yaml`` turns
into an email to the referrer's office:

* ``referral.first_visit_booked`` — their first visit was booked (a thank-you);
* ``referral.first_visit_attended`` — they came to it;
* ``referral.first_visit_missed`` — they did not;
* ``patient.discharged`` — the plan of care ended (``discharged_on`` in patients.csv).

On the first day of each month (at ``referrals.digest_at``) each referrer with an email
gets a digest of last month: patients referred (first imported that month), seen (a
completed visit that month) and discharged. Months before Touchpoint first ran are never
sent. Messages to referrers carry names, dates and attended yes/no — nothing clinical
unless the practice lists a field in ``referrals.allowed_fields``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select

from engine import notify, unsubscribe
from engine.definitions import Definitions
from engine.definitions.templates import Fields
from engine.domain import Event, Patient
from engine.message_context import practice_fields, referrer_fields
from engine.outcomes import Status
from engine.settings import Settings
from engine.store import ledger
from engine.store.database import Database
from engine.store.locks import try_singleton
from engine.store.records import (
    get_state,
    opted_out,
    put_state,
    referrer_from_row,
    visit_numbers,
)
from engine.store.schema import appointments, patients, referrers, touch_points
from engine.timing import at_local, zone

if TYPE_CHECKING:
    from engine.dispatcher import Dispatcher

log = logging.getLogger("touchpoint.referrals")

DIGEST_JOURNEY = "referral-digest"
DIGEST_TEMPLATE = "referrals/monthly-digest"
DIGEST_TRIES = 3
# (the appointment event, the referral event, the visit number that makes it the first)
_MILESTONES = {
    "appointment.booked": ("referral.first_visit_booked", 0),
    "appointment.completed": ("referral.first_visit_attended", 1),
    "appointment.no_show": ("referral.first_visit_missed", 0),
}


def referral_events(conn: Connection, batch: Iterable[Event], people: Mapping[int, Patient],
                    ) -> list[dict[str, Any]]:
    """The referral-loop events ``batch`` (being planned) gives rise to, as event rows."""
    relevant = [e for e in batch if e.kind in _MILESTONES and e.appointment_id is not None
                and (p := people.get(e.patient_id)) is not None and p.referrer_id is not None]
    if not relevant:
        return []
    numbers = visit_numbers(conn, {e.appointment_id for e in relevant if e.appointment_id})
    rows = []
    for event in relevant:
        kind, first = _MILESTONES[event.kind]
        assert event.appointment_id is not None
        if numbers.get(event.appointment_id, 0) != first:
            continue
        referrer_id = people[event.patient_id].referrer_id
        rows.append({
            "kind": kind, "patient_id": event.patient_id,
            "appointment_id": event.appointment_id, "occurred_at": event.occurred_at,
            "data": {"appointment": event.data.get("appointment", ""),
                     "start": event.data.get("start"), "anchor": f"referral:{referrer_id}"},
            "source": f"event {event.id}",
            "dedupe_key": f"{kind}:{event.patient_id}:{referrer_id}", "processed_at": None})
    return rows


# --------------------------------------------------------------------------- the digest


@dataclass
class DigestLine:
    name: str
    referred_on: date | None = None
    seen: int = 0  # completed visits in the month
    discharged_on: date | None = None

    def fields(self) -> Fields:
        return Fields({"name": self.name, "referred_on": self.referred_on,
                       "visits": self.seen, "discharged_on": self.discharged_on},
                      "digest.patients[]")


@dataclass
class Digest:
    referrer_id: int
    lines: dict[int, DigestLine] = field(default_factory=dict)

    def line(self, patient: Any) -> DigestLine:
        if patient.id not in self.lines:
            self.lines[patient.id] = DigestLine(f"{patient.first_name} {patient.last_name}")
        return self.lines[patient.id]


def month_bounds(day: date) -> tuple[date, date]:
    """First day of ``day``'s month and of the next."""
    first = day.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following


def previous_month(day: date) -> date:
    return (day.replace(day=1) - timedelta(days=1)).replace(day=1)


def digests(conn: Connection, month: date, tz_name: str) -> dict[int, Digest]:
    """What each referrer's digest for ``month`` (its first day) says; referrers with
    nothing to report are left out."""
    tz = zone(tz_name)
    first, following = month_bounds(month)
    start, end = at_local(first, datetime.min.time(), tz), at_local(following,
                                                                     datetime.min.time(), tz)
    found: dict[int, Digest] = {}
    referred = conn.execute(select(patients).where(
        patients.c.referrer_id.is_not(None), patients.c.erased_at.is_(None),
        patients.c.created_at >= start,
        patients.c.created_at < end))
    for row in referred:
        digest = found.setdefault(row.referrer_id, Digest(row.referrer_id))
        digest.line(row).referred_on = row.created_at.astimezone(tz).date()
    who = (patients.c.id, patients.c.first_name, patients.c.last_name, patients.c.referrer_id)
    seen = conn.execute(
        select(*who, func.count(appointments.c.id).label("visits"))
        .join(appointments, appointments.c.patient_id == patients.c.id)
        .where(patients.c.referrer_id.is_not(None), patients.c.erased_at.is_(None),
               appointments.c.status == "completed",
               appointments.c.start_at >= start, appointments.c.start_at < end)
        .group_by(*who))
    for row in seen:
        found.setdefault(row.referrer_id, Digest(row.referrer_id)).line(row).seen = row.visits
    discharged = conn.execute(select(patients).where(
        patients.c.referrer_id.is_not(None), patients.c.erased_at.is_(None),
        patients.c.discharged_on >= first,
        patients.c.discharged_on < following))
    for row in discharged:
        digest = found.setdefault(row.referrer_id, Digest(row.referrer_id))
        digest.line(row).discharged_on = row.discharged_on
    return found


class DigestJob:
    """Sends last month's digests once the month has turned (run on every tick)."""

    def __init__(self, db: Database, definitions: Definitions, settings: Settings,
                 dispatcher: Dispatcher) -> None:
        self.db = db
        self.definitions = definitions
        self.settings = settings
        self.dispatcher = dispatcher
        self.tz_name: str = settings.require("practice.timezone")
        self._done: str | None = None  # the month whose digests are all sent

    def run(self, now: datetime) -> int:
        if not self.settings.referrals.monthly_digest:
            return 0
        tz = zone(self.tz_name)
        today = now.astimezone(tz).date()
        if now < at_local(today.replace(day=1), self.settings.referrals.digest_at, tz):
            return 0  # the 1st, before the digest's hour: it is still last month's turn
        month = previous_month(today)
        label = f"{month:%Y-%m}"
        if label == self._done:
            return 0
        with self.db.transaction() as conn:
            if not try_singleton(conn, DIGEST_JOURNEY):
                return 0
            state = get_state(conn, DIGEST_JOURNEY) or {}
            if "since" not in state:  # never for months before Touchpoint ran
                put_state(conn, DIGEST_JOURNEY, {"since": f"{today:%Y-%m}"}, now)
                return 0
            if label < state["since"] or state.get("done") == label:
                self._done = label
                return 0
            work = self._prepare(conn, month, label)
            if not work:
                put_state(conn, DIGEST_JOURNEY, {**state, "done": label}, now)
                self._done = label
                return 0
        sent = 0
        for tp, rendered in work:
            done = notify.deliver(self.dispatcher, tp, rendered)
            if done is not None and done.status in (Status.SENT, Status.DELIVERED):
                sent += 1
        log.info("referral digests for %s: %d of %d sent", label, sent, len(work))
        return sent

    def _prepare(self, conn: Connection, month: date, label: str,
                 ) -> list[tuple[ledger.TouchPoint, notify.Rendered]]:
        found = digests(conn, month, self.tz_name)
        tries = _tries(conn, label)
        practice = practice_fields(self.settings)
        tz = zone(self.tz_name)
        rows = conn.execute(select(referrers).where(referrers.c.id.in_(sorted(found)),
                                                    referrers.c.removed_at.is_(None))).all()
        blocked = opted_out(conn, [row.email for row in rows if row.email])
        work = []
        for row in rows:
            tried = tries.get(row.id, notify.Attempts())
            if not row.email or tried.done or tried.failed >= DIGEST_TRIES:
                continue
            if blocked.get(("email", row.email), set()) & {"all", "transactional"}:
                continue  # the office unsubscribed
            lines = sorted(found[row.id].lines.values(), key=lambda line: line.name)
            context = {
                "practice": practice,
                "referrer": referrer_fields(referrer_from_row(row)),
                "digest": Fields({
                    "month": month,
                    "referred": sum(1 for x in lines if x.referred_on),
                    "seen": sum(1 for x in lines if x.seen),
                    "discharged": sum(1 for x in lines if x.discharged_on),
                    "patients": [x.fields() for x in lines]}, "digest"),
                "unsubscribe_url": "https://example.invalid/unsubscribe",
            }
            notice = notify.Notice(DIGEST_JOURNEY, "monthly", "email", row.email,
                                   DIGEST_TEMPLATE, anchor=f"digest:{label}:{tried.failed + 1}",
                                   recipient=f"referrer:{row.id}")
            if notify.render(self.definitions.templates, notice, context, tz) is None:
                continue  # logged; nothing recorded for a message that cannot be written
            tp = notify.insert(conn, self.dispatcher, notice)
            token = unsubscribe.make_token(unsubscribe.secret_key(conn, self.settings), tp.id,
                                           "transactional")
            context["unsubscribe_url"] = unsubscribe.unsubscribe_url(self.settings, token)
            rendered = notify.render(self.definitions.templates, notice, context, tz,
                                     unsubscribe.headers(self.settings, token))
            assert rendered is not None  # it rendered a moment ago with the same values
            work.append((tp, rendered))
        return work


def _tries(conn: Connection, label: str) -> dict[int, notify.Attempts]:
    found: dict[int, notify.Attempts] = {}
    for row in conn.execute(
            select(touch_points.c.recipient, touch_points.c.status, touch_points.c.finished_at)
            .where(touch_points.c.journey == DIGEST_JOURNEY,
                   touch_points.c.anchor.like(f"digest:{label}:%"))):
        referrer_id = int(row.recipient.partition(":")[2])
        found.setdefault(referrer_id, notify.Attempts()).add(row.status, row.finished_at)
    return found
