"""One turn of the engine, shared by ``run --once``, ``simulate`` and the daemon.

A tick does, in order:

1. **recover** — touch points left in ``sending`` by a worker that died become ``unknown``;
2. **sweep** — patients with no visit for a journey's ``patient.lapsed`` period and
   nothing booked get one ``patient.lapsed`` event per lapse;
3. **plan** — unprocessed events go through the planner into the ledger;
4. **dispatch** — due touch points are claimed, re-checked, rendered and sent.

Planning and the sweep run under a singleton lock (PostgreSQL advisory lock), so several
workers can tick at once; dispatch is safe to run concurrently by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, and_, func, select

from engine import clock
from engine.channels.base import Channel
from engine.definitions import Definitions
from engine.definitions.journeys import Journey, Step
from engine.dispatcher import Dispatcher, DispatchStats
from engine.errors import TemplateRenderError
from engine.message_context import message_context, practice_fields
from engine.outcomes import Status
from engine.planner import Plan, Planned, PlanningRules, plan
from engine.records import Appointment, Event, Patient
from engine.settings import Settings
from engine.store import ledger
from engine.store.database import Database
from engine.store.locks import try_singleton
from engine.store.records import (
    append_events,
    chunks,
    load_appointments,
    load_patients,
    mark_processed,
    pending_events,
    visit_numbers,
)
from engine.store.schema import appointments, events, touch_points
from engine.timing import at_local, format_duration, zone

log = logging.getLogger("touchpoint.runner")

EVENT_BATCH = 1000
# A lapse older than this when first noticed starts no journey (an initial import of
# last year's patients must not send "we miss you" to all of them at once).
LAPSE_LOOKBACK = timedelta(days=7)


@dataclass
class TickReport:
    at: datetime
    recovered: int = 0
    lapses: int = 0
    events: int = 0
    planned: int = 0
    exited: int = 0
    dispatch: DispatchStats = field(default_factory=DispatchStats)

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "recovered": self.recovered, "lapses": self.lapses,
                "events": self.events, "planned": self.planned, "exited": self.exited,
                "dispatch": self.dispatch.as_dict()}


class Runner:
    def __init__(self, db: Database, settings: Settings, definitions: Definitions,
                 channels: Mapping[str, Channel] | None = None, worker: str | None = None,
                 ) -> None:
        self.db = db
        self.settings = settings
        self.definitions = definitions
        self.rules = PlanningRules(settings.quiet_hours, settings.require("practice.timezone"),
                                   settings.dispatch.default_expiry)
        self.dispatcher = Dispatcher(db, definitions, settings, channels, worker=worker) \
            if channels is not None else None

    # ------------------------------------------------------------------ tick

    def tick(self, *, sweep: bool = True, stop: Callable[[], bool] = lambda: False,
             ) -> TickReport:
        report = TickReport(clock.now())
        report.recovered = self.recover()
        if sweep:
            report.lapses = self.sweep_lapses()
        report.events, report.planned, report.exited = self.plan_pending()
        if self.dispatcher is not None:
            report.dispatch = self.dispatcher.run(stop=stop)
        return report

    def recover(self) -> int:
        with self.db.transaction() as conn:
            recovered = ledger.recover_interrupted(conn, clock.now(),
                                                   self.settings.dispatch.send_timeout)
        if recovered:
            log.warning("%d touch point(s) were interrupted mid-send and are now 'unknown': %s",
                        len(recovered), ", ".join(map(str, recovered[:20])))
        return len(recovered)

    # ------------------------------------------------------------------ planning

    def plan_pending(self) -> tuple[int, int, int]:
        """Plan every unprocessed event. Returns (events, touch points planned, exited)."""
        total_events = total_planned = total_exited = 0
        while True:
            with self.db.transaction() as conn:
                if not try_singleton(conn, "planner"):
                    break
                batch = pending_events(conn, EVENT_BATCH)
                if not batch:
                    break
                planned, exited = self._plan_batch(conn, batch)
                mark_processed(conn, [e.id for e in batch], clock.now())
            total_events += len(batch)
            total_planned += planned
            total_exited += exited
        return total_events, total_planned, total_exited

    def _plan_batch(self, conn: Connection, batch: list[Event]) -> tuple[int, int]:
        now = clock.now()
        journeys = list(self.definitions.journeys.values())
        patients = load_patients(conn, {e.patient_id for e in batch})
        conditional = any(step.only_if for j in journeys for step in j.steps)
        appointment_ids = {e.appointment_id for e in batch if e.appointment_id}
        appts = load_appointments(conn, appointment_ids) if conditional else {}
        numbers = visit_numbers(conn, appointment_ids) if conditional else {}
        # (patient, journey) pairs that may have pending rows an exit could cancel
        pending_pairs = _pending_pairs(conn, patients.keys())
        to_insert: list[Planned] = []
        planned = exited = 0
        for event in batch:
            patient = patients.get(event.patient_id)
            if patient is None:
                continue
            condition = self._condition(patient, appts.get(event.appointment_id or 0),
                                        numbers) if conditional else None
            result: Plan = plan(event, patient, journeys, self.rules, condition)
            relevant = [x for x in result.exits if (x.patient_id, x.journey) in pending_pairs]
            if relevant:
                planned += len(ledger.insert_planned(conn, to_insert, now))
                to_insert = []
                for exit_ in relevant:
                    exited += len(ledger.apply_exit(conn, exit_, now))
            to_insert.extend(result.planned)
            pending_pairs.update((p.patient_id, p.journey) for p in result.planned
                                 if p.status == Status.PLANNED)
        planned += len(ledger.insert_planned(conn, to_insert, now))
        return planned, exited

    def _condition(self, patient: Patient, appointment: Appointment | None,
                   numbers: Mapping[int, int]) -> Callable[[Journey, Step], bool]:
        templates = self.definitions.templates
        context = message_context(
            patient=patient, appointment=appointment, practice=practice_fields(self.settings),
            practice_timezone=self.rules.practice_timezone,
            visit_number=numbers.get(appointment.id) if appointment else None)

        def holds(journey: Journey, step: Step) -> bool:
            if not step.only_if:
                return True
            try:
                return bool(templates.compile_expression(step.only_if)(**context))
            except Exception as exc:  # a manager's expression must not stop planning
                log.error("%s step %s: only_if %r failed (%s); the step is not planned",
                          journey.file, step.id, step.only_if,
                          TemplateRenderError(str(exc)).message)
                return False
        return holds

    # ------------------------------------------------------------------ lapse sweep

    def sweep_lapses(self) -> int:
        periods = sorted({j.trigger.after for j in self.definitions.journeys.values()
                          if j.trigger.event == "patient.lapsed" and j.trigger.after})
        if not periods:
            return 0
        now = clock.now()
        added = 0
        with self.db.transaction() as conn:
            if not try_singleton(conn, "lapse-sweep"):
                return 0
            for after in periods:
                added += self._sweep(conn, after, now)
        return added

    def _sweep(self, conn: Connection, after: timedelta, now: datetime) -> int:
        """One ``patient.lapsed`` event per patient whose last visit is ``after`` ago.

        The lapse happens at the start of the practice's day on which the patient has
        gone ``after`` without a visit (so win-back steps timed ``{days_after: 30, at:
        "11:00"}`` from the last visit are still ahead when it is noticed).
        """
        tz = zone(self.rules.practice_timezone)
        last = (select(appointments.c.patient_id,
                       func.max(appointments.c.start_at).label("last_start"))
                .where(appointments.c.status == "completed")
                .group_by(appointments.c.patient_id).subquery())
        later = appointments.alias("later")
        booked = select(later.c.id).where(
            later.c.status == "booked", later.c.start_at > last.c.last_start,
            later.c.patient_id == last.c.patient_id)
        rows = conn.execute(
            select(appointments.c.id, appointments.c.patient_id, appointments.c.start_at)
            .join(last, and_(appointments.c.patient_id == last.c.patient_id,
                             appointments.c.start_at == last.c.last_start))
            .where(appointments.c.status == "completed",
                   last.c.last_start <= now - after + timedelta(days=1),
                   last.c.last_start > now - after - LAPSE_LOOKBACK - timedelta(days=1),
                   ~booked.exists())).all()
        label = format_duration(after)
        candidates = {}
        for row in rows:
            lapsed_at = lapse_moment(row.start_at, after, tz)
            if lapsed_at <= now and lapsed_at > now - LAPSE_LOOKBACK:
                candidates[f"patient.lapsed:{row.patient_id}:{row.id}:{label}"] = (row, lapsed_at)
        if not candidates:
            return 0
        known = set(conn.execute(select(events.c.dedupe_key)
                                 .where(events.c.dedupe_key.in_(list(candidates)))).scalars())
        new = [{"kind": "patient.lapsed", "patient_id": row.patient_id, "appointment_id": None,
                "occurred_at": lapsed_at,
                "data": {"after": label, "last_visit_id": row.id,
                         "last_visit_at": row.start_at.isoformat()},
                "source": "lapse sweep", "dedupe_key": key, "processed_at": None}
               for key, (row, lapsed_at) in candidates.items() if key not in known]
        append_events(conn, new)
        return len(new)


def lapse_moment(last_visit: datetime, after: timedelta, tz: ZoneInfo) -> datetime:
    """Local midnight of the day the patient has gone ``after`` without a visit."""
    day = (last_visit + after).astimezone(tz).date()
    return at_local(day, time(0, 0), tz)


def _pending_pairs(conn: Connection, patient_ids: Iterable[int]) -> set[tuple[int, str]]:
    pairs: set[tuple[int, str]] = set()
    for part in chunks(sorted(patient_ids)):
        pairs.update((row.patient_id, row.journey) for row in conn.execute(
            select(touch_points.c.patient_id, touch_points.c.journey).distinct()
            .where(touch_points.c.patient_id.in_(part), touch_points.c.status == "planned")))
    return pairs
