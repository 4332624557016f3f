"""Keeping patients on their plan of care: nudges, at-risk cases and the plan report.

A patient's plan (``plan_visits`` prescribed, ``plan_visits_per_week``, ``plan_start``
and an optional ``plan_end``: patients.csv, the API or a FHIR CarePlan) is checked once
a day (``touchpoint daemon``'s ``plan-check`` job, ``daemon.plan_cron``):

* **Under-scheduled** — the plan's pace over the coming two weeks (from today or the
  plan's start, to 14 days ahead or the plan's end) asks for ``ceil(visits a week × days
  / 7)`` visits, never more than the plan still has to book; a patient with fewer visits
  booked in that window records a ``plan.under_scheduled`` event, which the shipped
  journey ``plan-of-care`` turns into a nudge with the booking link. At most one event
  per patient in 7 days (and the journey starts at most once a week), so quiet hours,
  consents, opt-outs, caps, the log and ``why`` all apply as to any message.
* **At risk of dropping out** — a patient who came to visit 1 or 2 of their plan and has
  nothing booked after it, :data:`AT_RISK_GRACE` (2 days) after that visit, gets a
  recovery case with cause ``at_risk`` ("at risk of dropping out"), once per visit.

Visits count from the plan's start (an earlier episode of care is not this plan's).
A plan is over once its visits are done, its end has passed, or the patient is
discharged; removed and erased patients are never checked.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, false, select

from engine import cases
from engine.definitions import Definitions
from engine.outcomes import Status
from engine.settings import Settings
from engine.store.database import Database
from engine.store.locks import try_singleton
from engine.store.records import among, append_events, as_utc, chunks
from engine.store.schema import appointments, events, patients, touch_points
from engine.timing import at_local, zone

log = logging.getLogger("touchpoint.plan_of_care")

EVENT = "plan.under_scheduled"
WINDOW = timedelta(days=14)  # "the coming two weeks"
NUDGE_EVERY = timedelta(days=7)  # at most one under-scheduled event per patient
AT_RISK_GRACE = timedelta(days=2)  # after visit 1 or 2, before nothing booked is a risk
AT_RISK_VISITS = (1, 2)
# Visits older than this (after the grace) open no case: a first check after an import
# must not open cases for last year's patients.
AT_RISK_LOOKBACK = timedelta(days=14)
# Report: a patient on a plan with nothing booked and no visit for this long dropped out.
DROP_OUT_AFTER = timedelta(days=14)
BOOKED_WITHIN = timedelta(days=7)  # a nudge "worked" when a visit is booked this soon


@dataclass(frozen=True)
class Plan:
    visits: int
    per_week: int
    start: date
    end: date | None = None

    def over(self, today: date, completed: int, discharged_on: date | None = None) -> bool:
        return completed >= self.visits or (self.end is not None and self.end < today) or \
            (discharged_on is not None and discharged_on <= today)


@dataclass(frozen=True)
class Shortfall:
    """Fewer visits booked in [first, last) than the plan needs there."""

    needed: int
    booked: int
    first: date
    last: date  # exclusive


def under_scheduled(plan: Plan, completed: int, booked: Sequence[date], today: date,
                    ) -> Shortfall | None:
    """Whether the visits ``booked`` (their local days, today or later) fall short of what
    ``plan`` needs in the coming two weeks, with ``completed`` of its visits done."""
    first = max(today, plan.start)
    last = today + WINDOW
    if plan.end is not None:
        last = min(last, plan.end + timedelta(days=1))
    if last <= first or completed >= plan.visits:
        return None
    in_window = sum(1 for day in booked if day < last)
    later = len(booked) - in_window
    pace = math.ceil(plan.per_week * (last - first).days / 7)
    needed = min(pace, plan.visits - completed - later)
    if in_window >= needed:
        return None
    return Shortfall(needed, in_window, first, last)


# --------------------------------------------------------------------------- reading


@dataclass
class OnPlan:
    """A patient on a plan, with the visits that count for it."""

    patient_id: int
    plan: Plan
    discharged_on: date | None
    completed: list[tuple[int, datetime]] = field(default_factory=list)  # (id, start)
    booked: list[datetime] = field(default_factory=list)  # every booked visit's start


def on_plan(conn: Connection, tz: ZoneInfo) -> list[OnPlan]:
    """Every active patient with a plan, and their visits since the plan's start."""
    found: dict[int, OnPlan] = {}
    for row in conn.execute(
            select(patients.c.id, patients.c.plan_visits, patients.c.plan_visits_per_week,
                   patients.c.plan_start, patients.c.plan_end, patients.c.discharged_on)
            .where(patients.c.plan_visits.is_not(None),
                   patients.c.plan_visits_per_week.is_not(None),
                   patients.c.plan_start.is_not(None), patients.c.removed_at.is_(None),
                   patients.c.erased_at.is_(None))
            .order_by(patients.c.id)):
        found[row.id] = OnPlan(row.id, Plan(row.plan_visits, row.plan_visits_per_week,
                                            row.plan_start, row.plan_end), row.discharged_on)
    for part in chunks(sorted(found)):
        for visit in conn.execute(
                select(appointments.c.id, appointments.c.patient_id, appointments.c.start_at,
                       appointments.c.status)
                .where(among(conn, appointments.c.patient_id, part),
                       appointments.c.status.in_(("completed", "booked")),
                       appointments.c.removed_at.is_(None))
                .order_by(appointments.c.start_at, appointments.c.id)):
            entry = found[visit.patient_id]
            start = as_utc(visit.start_at)
            if start < at_local(entry.plan.start, time(0, 0), tz):
                continue  # an earlier episode of care
            if visit.status == "completed":
                entry.completed.append((visit.id, start))
            else:
                entry.booked.append(start)
    return list(found.values())


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class PlanCheck:
    under_scheduled: int = 0  # plan.under_scheduled events recorded
    at_risk: int = 0  # cases opened


def check(db: Database, settings: Settings, now: datetime) -> PlanCheck:
    """Record the under-scheduled events and open the at-risk cases due ``now`` (one
    worker at a time: an advisory lock on PostgreSQL)."""
    with db.transaction() as conn:
        if not try_singleton(conn, "plan-check"):
            return PlanCheck()
        tz = zone(settings.require("practice.timezone"))
        patients_on_plan = on_plan(conn, tz)
        nudges = nudge_events(conn, patients_on_plan, now, tz)
        append_events(conn, nudges)
        opened = open_at_risk_cases(conn, settings, patients_on_plan, now, tz)
    if nudges or opened:
        log.info("plan check: %d under-scheduled, %d at risk", len(nudges), opened,
                 extra={"event": "plan_check", "under_scheduled": len(nudges),
                        "at_risk": opened})
    return PlanCheck(len(nudges), opened)


def nudge_events(conn: Connection, found: Iterable[OnPlan], now: datetime, tz: ZoneInfo,
                 ) -> list[dict[str, Any]]:
    """``plan.under_scheduled`` events (as rows) for the under-scheduled patients not
    nudged in the last 7 days."""
    today = now.astimezone(tz).date()
    short: dict[int, Shortfall] = {}
    for entry in found:
        if entry.plan.over(today, len(entry.completed), entry.discharged_on):
            continue
        ahead = [start.astimezone(tz).date() for start in entry.booked if start >= now]
        shortfall = under_scheduled(entry.plan, len(entry.completed), ahead, today)
        if shortfall is not None:
            short[entry.patient_id] = shortfall
    recent = _nudged_since(conn, short, now - NUDGE_EVERY)
    return [{"kind": EVENT, "patient_id": patient_id, "appointment_id": None,
             "occurred_at": now,
             "data": {"anchor": f"plan:{today.isoformat()}", "needed": s.needed,
                      "booked": s.booked, "from": s.first.isoformat(),
                      "until": (s.last - timedelta(days=1)).isoformat()},
             "source": "plan check", "dedupe_key": f"{EVENT}:{patient_id}:{today.isoformat()}",
             "processed_at": None}
            for patient_id, s in short.items() if patient_id not in recent]


def _nudged_since(conn: Connection, patient_ids: Iterable[int], since: datetime) -> set[int]:
    found: set[int] = set()
    for part in chunks(sorted(patient_ids)):
        found.update(conn.execute(
            select(events.c.patient_id).where(among(conn, events.c.patient_id, part),
                                              events.c.kind == EVENT,
                                              events.c.occurred_at > since)).scalars())
    return found


def open_at_risk_cases(conn: Connection, settings: Settings, found: Iterable[OnPlan],
                       now: datetime, tz: ZoneInfo) -> int:
    """A case for each patient whose visit 1 or 2 of the plan is their last, at least
    :data:`AT_RISK_GRACE` ago, with nothing booked after it."""
    opened = 0
    today = now.astimezone(tz).date()
    for entry in found:
        count = len(entry.completed)
        if count not in AT_RISK_VISITS or entry.plan.over(today, count, entry.discharged_on):
            continue
        visit_id, last = entry.completed[-1]
        if not now - AT_RISK_GRACE - AT_RISK_LOOKBACK < last <= now - AT_RISK_GRACE:
            continue
        if any(start > last for start in entry.booked):
            continue
        opened += cases.open_case(
            conn, settings, patient_id=entry.patient_id, cause="at_risk",
            key=f"at_risk:{visit_id}", now=now, appointment_id=visit_id,
            detail=f"came to visit {count} of {entry.plan.visits} on "
                   f"{last.astimezone(tz):%Y-%m-%d} and has nothing booked since") is not None
    return opened


# --------------------------------------------------------------------------- report


def plan_report(conn: Connection, definitions: Definitions, since: datetime, now: datetime,
                tz: ZoneInfo) -> dict[str, Any]:
    """Plans of care since ``since``: how many finished plans were completed, the patients
    who dropped out by the visit they stopped after, and the nudges sent with the visits
    booked within 7 days of one.

    A plan *finished* in the period when its visits were done, its end passed or the
    patient was discharged then; it was *completed* if all its visits were done. A patient
    *dropped out* after visit N when their plan is not complete, nothing is booked, and
    their last visit (in the period) is more than 14 days ago or the plan is over.
    """
    today = now.astimezone(tz).date()
    first_day = since.astimezone(tz).date()
    finished = completed = 0
    drop_outs: dict[int, int] = defaultdict(int)
    for entry in on_plan(conn, tz):
        done = len(entry.completed)
        plan = entry.plan
        if done >= plan.visits:
            ended: date | None = entry.completed[plan.visits - 1][1].astimezone(tz).date()
        else:
            ends = [d for d in (plan.end, entry.discharged_on) if d is not None and d < today]
            ended = min(ends) if ends else None
        if ended is not None and first_day <= ended:
            finished += 1
            completed += done >= plan.visits
        if done >= plan.visits or not entry.completed or \
                any(start >= now for start in entry.booked):
            continue
        last = entry.completed[-1][1]
        if last >= since and (now - last > DROP_OUT_AFTER or ended is not None):
            drop_outs[done] += 1
    sent, booked = _nudges(conn, definitions, since)
    return {"plans_finished": finished, "plans_completed": completed,
            "completion_rate": round(completed / finished, 3) if finished else None,
            "drop_outs_by_visit": {str(n): drop_outs[n] for n in sorted(drop_outs)},
            "nudges_sent": sent, "booked_within_7_days": booked}


def _nudges(conn: Connection, definitions: Definitions, since: datetime) -> tuple[int, int]:
    """(nudges sent since ``since``, those followed by a booking within 7 days)."""
    names = sorted(j.name for j in definitions.journeys.values()
                   if any(t.event == EVENT for t in j.triggers))
    if not names:
        return 0, 0
    first_sent: dict[tuple[int, str], datetime] = {}
    for patient_id, anchor, sent_at in conn.execute(
            select(touch_points.c.patient_id, touch_points.c.anchor, touch_points.c.sent_at)
            .where(touch_points.c.journey.in_(names),
                   touch_points.c.status.in_((Status.SENT, Status.DELIVERED)),
                   touch_points.c.sent_at >= since, touch_points.c.test == false())):
        key = (patient_id, anchor)  # one nudge, whatever its channels and recipients
        at = as_utc(sent_at)
        first_sent[key] = min(at, first_sent.get(key, at))
    bookings: Mapping[int, list[datetime]] = _bookings(conn, {p for p, _ in first_sent}, since)
    booked = sum(1 for (patient_id, _), at in first_sent.items()
                 if any(at <= when <= at + BOOKED_WITHIN for when in bookings[patient_id]))
    return len(first_sent), booked


def _bookings(conn: Connection, patient_ids: Iterable[int], since: datetime,
              ) -> Mapping[int, list[datetime]]:
    found: dict[int, list[datetime]] = defaultdict(list)
    for part in chunks(sorted(patient_ids)):
        for patient_id, at in conn.execute(
                select(events.c.patient_id, events.c.occurred_at)
                .where(among(conn, events.c.patient_id, part),
                       events.c.kind == "appointment.booked", events.c.occurred_at >= since)):
            found[patient_id].append(as_utc(at))
    return found


def report_lines(data: Mapping[str, Any]) -> list[str]:
    """The plan-of-care part of ``touchpoint report`` as text."""
    rate = data["completion_rate"]
    drops = ", ".join(f"{n} after visit {visit}"
                      for visit, n in data["drop_outs_by_visit"].items()) or "none"
    return [
        f"Plans of care: {data['plans_completed']} of {data['plans_finished']} finished "
        f"plans completed" + (f" ({rate:.0%})" if rate is not None else "") + ".",
        f"  drop-outs: {drops}.",
        f"  nudges: {data['nudges_sent']} sent, {data['booked_within_7_days']} followed by a "
        f"booking within 7 days.",
    ]
