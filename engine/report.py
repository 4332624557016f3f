"""`touchpoint report`: how the practice's communication is doing, since a date.

* per journey and step — touch points planned, sent, delivered, failed, skipped and
  cancelled by reason, still pending or unknown; replies to them and confirmations;
* win-back conversion — patients sent a win-back message (a journey triggered by
  ``patient.lapsed``) who booked within 14 days of the first one;
* satisfaction — answers to the 0-10 question, their average, and the weekly trend;
* recovery — cases opened by cause, resolved, and every open case with its age;
* referrals — per referral source: patients referred, seen, discharged, messages sent;
* plans of care — plan completion rate, drop-outs by visit number, nudges sent and the
  visits booked within 7 days of one (engine/plan_of_care.py);
* waitlist — slots freed, offered and filled (claimed or booked), the median time from
  freed to filled, and the visits recovered with their value (``practice.visit_price``,
  when ``settings`` are passed in) (engine/waitlist_offers.py).

Everything is read from the ledger, events and cases; nothing is kept twice. Test sends
(``touchpoint test-send``) and replies to them are never counted.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, false, func, or_, select

from engine.cases import CAUSES, list_cases
from engine.definitions import Definitions
from engine.definitions.journeys import SYSTEM_JOURNEYS
from engine.outcomes import Status
from engine.plan_of_care import plan_report
from engine.settings import Settings
from engine.store.records import as_utc
from engine.store.schema import (
    appointments,
    events,
    inbound_messages,
    patients,
    recovery_cases,
    referrers,
    slot_offers,
    slots,
    touch_points,
)

CONVERSION_WINDOW = timedelta(days=14)
UTC_ZONE = ZoneInfo("UTC")
_SENT = (Status.SENT, Status.DELIVERED)
SPARKS = "▁▂▃▄▅▆▇█"


@dataclass
class StepLine:
    journey: str
    step: str
    planned: int = 0
    sent: int = 0  # handed to the provider (sent or delivered)
    delivered: int = 0
    failed: int = 0
    unknown: int = 0
    pending: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    cancelled: Counter[str] = field(default_factory=Counter)
    replies: int = 0
    confirmations: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"journey": self.journey, "step": self.step, "planned": self.planned,
                "sent": self.sent, "delivered": self.delivered, "failed": self.failed,
                "unknown": self.unknown, "pending": self.pending,
                "skipped": dict(self.skipped), "cancelled": dict(self.cancelled),
                "replies": self.replies, "confirmations": self.confirmations}


def build_report(conn: Connection, definitions: Definitions, since: datetime,
                 now: datetime, tz: ZoneInfo = UTC_ZONE,
                 settings: Settings | None = None) -> dict[str, Any]:
    """``tz``: the practice's, for the days plans of care end on; ``settings``: for the
    value of the visits the waitlist recovered (``practice.visit_price``)."""
    return {
        "since": since.isoformat(), "until": now.isoformat(),
        "journeys": [line.as_dict() for line in step_lines(conn, since)],
        "win_back": win_back(conn, definitions, since),
        "satisfaction": satisfaction(conn, since, now),
        "cases": case_summary(conn, since, now),
        "referrals": referral_lines(conn, since),
        "plan_of_care": plan_report(conn, definitions, since, now, tz),
        "waitlist": waitlist_report(conn, since, settings),
    }


def waitlist_report(conn: Connection, since: datetime, settings: Settings | None = None,
                    ) -> dict[str, Any]:
    """Slots freed since ``since``: how many were offered (at least one wave), filled
    (claimed or booked), the median minutes from freed to filled, and the visits
    recovered with their value (``practice.visit_price``; None when unset)."""
    rows = conn.execute(select(slots.c.status, slots.c.waves, slots.c.opened_at,
                               slots.c.claimed_at, slots.c.booked_at)
                        .where(slots.c.opened_at >= since)).all()
    filled = [row for row in rows if row.status in ("claimed", "booked")]
    waits = sorted((as_utc(row.claimed_at or row.booked_at) - as_utc(row.opened_at))
                   .total_seconds() / 60 for row in filled if row.claimed_at or row.booked_at)
    offers = conn.execute(select(func.count()).select_from(slot_offers)
                          .where(slot_offers.c.offered_at >= since)).scalar_one()
    price = settings.practice.visit_price if settings is not None else None
    return {"freed": len(rows), "offered": sum(1 for row in rows if row.waves > 0),
            "offers": int(offers), "filled": len(filled),
            "booked": sum(1 for row in filled if row.status == "booked"),
            "median_minutes_to_fill": round(statistics.median(waits), 1) if waits else None,
            "visits_recovered": len(filled),
            "value_recovered": str(price * len(filled)) if price is not None else None,
            "currency": settings.practice.currency
            if settings is not None and price is not None else None}


def waitlist_lines(section: dict[str, Any]) -> list[str]:
    """The ``waitlist`` section of :func:`build_report` as ``touchpoint report`` prints it."""
    median = section["median_minutes_to_fill"]
    lines = ["Waitlist (freed slots)",
             f"  freed {section['freed']}, offered {section['offered']} "
             f"({section['offers']} offers), filled {section['filled']} "
             f"({section['booked']} booked)",
             f"  median time to fill: {format_minutes(median)}" if median is not None
             else "  median time to fill: -"]
    value = section["value_recovered"]
    lines.append(f"  visits recovered: {section['visits_recovered']}"
                 + (f", worth {value} {section['currency']}" if value is not None else ""))
    return lines


def format_minutes(minutes: float) -> str:
    whole = round(minutes)
    return f"{whole // 60}h {whole % 60:02d}m" if whole >= 60 else f"{whole}m"


def step_lines(conn: Connection, since: datetime) -> list[StepLine]:
    tp = touch_points
    lines: dict[tuple[str, str], StepLine] = {}

    def line(journey: str, step: str) -> StepLine:
        return lines.setdefault((journey, step), StepLine(journey, step))

    rows = conn.execute(
        select(tp.c.journey, tp.c.step, tp.c.status, tp.c.reason, func.count())
        .where(tp.c.planned_at >= since, tp.c.test == false(),
               tp.c.journey.not_in(SYSTEM_JOURNEYS))
        .group_by(tp.c.journey, tp.c.step, tp.c.status, tp.c.reason))
    for journey, step, status, reason, count in rows:
        entry = line(journey, step)
        entry.planned += count
        if status in _SENT:
            entry.sent += count
            entry.delivered += count if status == Status.DELIVERED else 0
        elif status == Status.FAILED:
            entry.failed += count
        elif status == Status.UNKNOWN:
            entry.unknown += count
        elif status in (Status.PLANNED, Status.SENDING):
            entry.pending += count
        elif status == Status.SKIPPED:
            entry.skipped[reason or "?"] += count
        elif status == Status.CANCELLED:
            entry.cancelled[reason or "?"] += count
    replies = conn.execute(
        select(tp.c.journey, tp.c.step, inbound_messages.c.intent, func.count())
        .join(tp, tp.c.id == inbound_messages.c.touch_point_id)
        .where(inbound_messages.c.received_at >= since, tp.c.journey.not_in(SYSTEM_JOURNEYS),
               tp.c.test == false())
        .group_by(tp.c.journey, tp.c.step, inbound_messages.c.intent))
    for journey, step, intent, count in replies:
        entry = line(journey, step)
        entry.replies += count
        entry.confirmations += count if intent == "confirm" else 0
    return sorted(lines.values(), key=lambda x: (x.journey, x.step))


def win_back(conn: Connection, definitions: Definitions, since: datetime) -> dict[str, Any]:
    """Patients messaged by a win-back journey since ``since`` who booked within 14 days of
    one of those messages (day 30, 60 or 90: whichever brought them back)."""
    names = sorted(j.name for j in definitions.journeys.values()
                   if any(t.event == "patient.lapsed" for t in j.triggers))
    if not names:
        return {"journeys": [], "messaged": 0, "booked_within_14_days": 0, "conversion": None}
    messages: dict[int, list[datetime]] = defaultdict(list)
    for patient_id, sent_at in conn.execute(
            select(touch_points.c.patient_id, touch_points.c.sent_at)
            .where(touch_points.c.journey.in_(names), touch_points.c.status.in_(_SENT),
                   touch_points.c.sent_at >= since, touch_points.c.test == false())):
        messages[patient_id].append(as_utc(sent_at))
    booked = 0
    if messages:
        bookings: dict[int, list[datetime]] = defaultdict(list)
        for patient_id, at in conn.execute(
                select(events.c.patient_id, events.c.occurred_at)
                .where(events.c.kind == "appointment.booked",
                       events.c.patient_id.in_(sorted(messages)),
                       events.c.occurred_at >= since)):
            bookings[patient_id].append(as_utc(at))
        booked = sum(1 for patient_id, sent in messages.items()
                     if any(message <= at <= message + CONVERSION_WINDOW
                            for message in sent for at in bookings.get(patient_id, ())))
    return {"journeys": names, "messaged": len(messages), "booked_within_14_days": booked,
            "conversion": round(booked / len(messages), 3) if messages else None}


def satisfaction(conn: Connection, since: datetime, now: datetime) -> dict[str, Any]:
    answers = conn.execute(
        select(inbound_messages.c.received_at, inbound_messages.c.score)
        .outerjoin(touch_points, touch_points.c.id == inbound_messages.c.touch_point_id)
        .where(inbound_messages.c.score.is_not(None),
               inbound_messages.c.received_at >= since,
               or_(touch_points.c.id.is_(None), touch_points.c.test == false()))
        .order_by(inbound_messages.c.received_at)).all()
    weeks: list[dict[str, Any]] = []
    start = since
    while start < now:
        chunk = [score for at, score in answers if start <= as_utc(at) < start + timedelta(days=7)]
        weeks.append({"week_of": start.date().isoformat(), "answers": len(chunk),
                      "average": round(sum(chunk) / len(chunk), 1) if chunk else None})
        start += timedelta(days=7)
    scores = [score for _, score in answers]
    return {"answers": len(scores),
            "average": round(sum(scores) / len(scores), 1) if scores else None,
            "promoters": sum(1 for s in scores if s >= 9),
            "detractors": sum(1 for s in scores if s <= 6),
            "weekly": weeks}


def case_summary(conn: Connection, since: datetime, now: datetime) -> dict[str, Any]:
    opened: dict[str, int] = dict(conn.execute(
        select(recovery_cases.c.cause, func.count())
        .where(recovery_cases.c.opened_at >= since)
        .group_by(recovery_cases.c.cause)).all())
    resolved = conn.execute(select(func.count()).select_from(recovery_cases).where(
        recovery_cases.c.resolved_at >= since)).scalar() or 0
    names = {row.id: f"{row.first_name} {row.last_name}" for row in conn.execute(
        select(patients.c.id, patients.c.first_name, patients.c.last_name)
        .join(recovery_cases, recovery_cases.c.patient_id == patients.c.id)
        .where(recovery_cases.c.status == "open"))}
    open_cases = [{"id": c.id, "cause": c.cause, "patient": names.get(c.patient_id, "?"),
                   "opened_at": c.opened_at.isoformat(), "due_at": c.due_at.isoformat(),
                   "age_hours": round((now - c.opened_at).total_seconds() / 3600, 1),
                   "overdue": c.overdue(now)}
                  for c in list_cases(conn, open_only=True)]
    return {"opened": {cause: opened.get(cause, 0) for cause in CAUSES if cause in opened},
            "resolved": int(resolved), "open": open_cases}


def referral_lines(conn: Connection, since: datetime) -> list[dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {
        row.id: {"referrer": row.name, "referred": 0, "seen": 0, "discharged": 0,
                 "messages": 0}
        for row in conn.execute(select(referrers.c.id, referrers.c.name))}
    if not found:
        return []
    for referrer_id, count in conn.execute(
            select(patients.c.referrer_id, func.count())
            .where(patients.c.referrer_id.is_not(None), patients.c.created_at >= since)
            .group_by(patients.c.referrer_id)):
        found[referrer_id]["referred"] = count
    for referrer_id, count in conn.execute(
            select(patients.c.referrer_id, func.count(func.distinct(patients.c.id)))
            .join(appointments, appointments.c.patient_id == patients.c.id)
            .where(patients.c.referrer_id.is_not(None), appointments.c.status == "completed",
                   appointments.c.start_at >= since)
            .group_by(patients.c.referrer_id)):
        found[referrer_id]["seen"] = count
    for referrer_id, count in conn.execute(
            select(patients.c.referrer_id, func.count())
            .where(patients.c.referrer_id.is_not(None),
                   patients.c.discharged_on >= since.date())
            .group_by(patients.c.referrer_id)):
        found[referrer_id]["discharged"] = count
    for recipient, count in conn.execute(
            select(touch_points.c.recipient, func.count())
            .where(touch_points.c.recipient.like("referrer:%"),
                   touch_points.c.status.in_(_SENT), touch_points.c.sent_at >= since)
            .group_by(touch_points.c.recipient)):
        referrer_id = int(recipient.partition(":")[2])
        if referrer_id in found:
            found[referrer_id]["messages"] += count
    return sorted(found.values(), key=lambda r: (-r["referred"], r["referrer"]))


def sparkline(values: list[float | None], low: float = 0, high: float = 10) -> str:
    """One character per value, ▁ (low) to █ (high); a gap for no value."""
    out = []
    for value in values:
        if value is None:
            out.append(" ")
            continue
        share = (value - low) / (high - low) if high > low else 0
        out.append(SPARKS[min(len(SPARKS) - 1, max(0, round(share * (len(SPARKS) - 1))))])
    return "".join(out)


# --------------------------------------------------------------------------- by day

LATE_CANCELLATION = timedelta(hours=24)  # cancelled less than this before the visit


@dataclass
class Day:
    day: date
    sent: int = 0  # handed to a provider that day (delivered or not)
    delivered: int = 0
    failed: int = 0
    replies: int = 0
    no_shows: int = 0
    late_cancellations: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "sent": self.sent, "delivered": self.delivered,
                "failed": self.failed, "replies": self.replies, "no_shows": self.no_shows,
                "late_cancellations": self.late_cancellations}


def days(conn: Connection, since: datetime, now: datetime, tz: ZoneInfo) -> list[Day]:
    """Messages sent, delivered and failed, replies, no-shows and late cancellations per
    day (the practice's days), from ``since`` to ``now``; days with none included."""
    first, last = since.astimezone(tz).date(), now.astimezone(tz).date()
    found = {first + timedelta(days=n): Day(first + timedelta(days=n))
             for n in range((last - first).days + 1)}

    def on(instant: datetime) -> Day | None:
        return found.get(as_utc(instant).astimezone(tz).date())

    tp = touch_points
    for status, sent_at, finished_at in conn.execute(
            select(tp.c.status, tp.c.sent_at, tp.c.finished_at)
            .where(or_(tp.c.sent_at >= since, tp.c.finished_at >= since), tp.c.test == false(),
                   tp.c.journey.not_in(SYSTEM_JOURNEYS),
                   tp.c.status.in_([*_SENT, Status.FAILED]))):
        if status in _SENT and sent_at is not None and (day := on(sent_at)) is not None:
            day.sent += 1
            day.delivered += status == Status.DELIVERED
        elif status == Status.FAILED and finished_at is not None \
                and (day := on(finished_at)) is not None:
            day.failed += 1
    for (received_at,) in conn.execute(select(inbound_messages.c.received_at).where(
            inbound_messages.c.received_at >= since)):
        if (day := on(received_at)) is not None:
            day.replies += 1
    for kind, occurred_at, data in conn.execute(
            select(events.c.kind, events.c.occurred_at, events.c.data)
            .where(events.c.occurred_at >= since,
                   events.c.kind.in_(["appointment.no_show", "appointment.cancelled"]))):
        if (day := on(occurred_at)) is None:
            continue
        if kind == "appointment.no_show":
            day.no_shows += 1
        elif _late(occurred_at, (data or {}).get("start")):
            day.late_cancellations += 1
    return [found[key] for key in sorted(found)]


def _late(cancelled_at: datetime, start: str | None) -> bool:
    if not start:
        return False
    visit = datetime.fromisoformat(start)
    return timedelta(0) <= visit - as_utc(cancelled_at) < LATE_CANCELLATION


def reminder_confirmations(lines: list[dict[str, Any]],
                           definitions: Definitions) -> dict[str, Any]:
    """Of the reminders sent (steps timed before their visit), how many were confirmed."""
    reminders = {(j.name, s.id) for j in definitions.journeys.values() for s in j.steps
                 if s.when.before_anchor}
    sent = sum(line["sent"] for line in lines if (line["journey"], line["step"]) in reminders)
    confirmed = sum(line["confirmations"] for line in lines
                    if (line["journey"], line["step"]) in reminders)
    return {"sent": sent, "confirmed": confirmed,
            "rate": round(confirmed / sent, 3) if sent else None}


CASE_AGES = (("under a day", timedelta(days=1)), ("1–3 days", timedelta(days=3)),
             ("3–7 days", timedelta(days=7)), ("over a week", timedelta.max))


def open_cases_by_age(open_cases: list[dict[str, Any]]) -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    for case in open_cases:
        age = timedelta(hours=case["age_hours"])
        counts[next(label for label, limit in CASE_AGES if age < limit)] += 1
    return [(label, counts[label]) for label, _ in CASE_AGES]
