"""One turn of the engine, shared by ``run --once``, ``simulate`` and the daemon.

A tick does, in order:

1. **recover** — touch points left in ``sending`` by a worker that died become ``unknown``;
   **reconcile** — ``unknown`` texts with no status callback ``dispatch.reconcile_after``
   after the attempt are looked up at the provider: found → ``sent``, not found → sent
   again once (:mod:`engine.reconcile`);
2. **sweep** — patients with no visit for a journey's ``patient.lapsed`` period and
   nothing booked get one ``patient.lapsed`` event per lapse;
3. **plan** — unprocessed events go through the planner into the ledger (and open the
   recovery cases no-shows and late cancellations call for, and record referral-loop
   milestones); an event whose planning raises is set aside with its error, and the
   others are planned; an event of a removed patient or appointment plans nothing
   (:mod:`engine.removal`);
4. **waitlist** — stale offers expire, freed slots that started expire, and every open
   slot whose next wave is due is offered to the next ``waitlist.wave_size`` matching
   waiting patients (:mod:`engine.waitlist_offers`); their ``waitlist.offered`` events
   are planned in the same tick;
5. **cases** — cases for messages that failed for good are opened, owners of new cases
   alerted, overdue cases escalated; on the 1st, last month's referral digests go out;
6. **dispatch** — due touch points are claimed, re-checked, rendered and sent.

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

from sqlalchemy import Connection, and_, false, func, select
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from engine import clock
from engine.cases import CaseDesk, case_fields, cases_for_minors, cases_from_events, get_case
from engine.channels.base import Channel
from engine.definitions import Definitions
from engine.definitions.journeys import SYSTEM_JOURNEYS, Journey, Step
from engine.definitions.templates import Fields
from engine.dispatcher import Dispatcher, DispatchStats
from engine.domain import Appointment, Event, Patient
from engine.errors import TemplateRenderError
from engine.message_context import message_context, practice_fields
from engine.outcomes import Reason, Status
from engine.planner import (
    Condition,
    PendingStep,
    Plan,
    Planned,
    PlanningRules,
    Retime,
    follow_edits,
    plan,
)
from engine.privacy import redact
from engine.reconcile import reconcile
from engine.referrals import DigestJob, referral_events
from engine.settings import Settings
from engine.store import ledger
from engine.store.database import Database
from engine.store.locks import try_singleton
from engine.store.records import (
    among,
    append_events,
    as_utc,
    chunks,
    get_state,
    load_appointments,
    load_contacts,
    load_events,
    load_patients,
    mark_processed,
    pending_events,
    put_state,
    set_aside,
    visit_numbers,
)
from engine.store.schema import PENDING, appointments, events, patients, touch_points
from engine.timing import at_local, format_duration, zone
from engine.waitlist_offers import offer_waves, slot_for_cancellation

log = logging.getLogger("touchpoint.runner")

EVENT_BATCH = 5000
# A lapse older than this when first noticed starts no journey (an initial import of
# last year's patients must not send "we miss you" to all of them at once).
LAPSE_LOOKBACK = timedelta(days=7)


@dataclass
class EditImpact:
    """What an edit of schedules/ did to pending touch points."""

    retimed: int = 0
    added: int = 0
    cancelled: int = 0
    skipped: int = 0

    def __bool__(self) -> bool:
        return bool(self.retimed or self.added or self.cancelled or self.skipped)

    def as_dict(self) -> dict[str, int]:
        return {"retimed": self.retimed, "added": self.added, "cancelled": self.cancelled,
                "skipped": self.skipped}


@dataclass
class TickReport:
    at: datetime
    edits: EditImpact = field(default_factory=EditImpact)
    recovered: int = 0
    reconciled: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("found", "resent", "left", "unreachable"), 0))
    lapses: int = 0
    events: int = 0
    planned: int = 0
    exited: int = 0
    set_aside: int = 0  # events planning could not handle (touchpoint log lists them)
    cases_opened: int = 0
    case_alerts: int = 0
    escalations: int = 0
    digests: int = 0
    offers: int = 0  # waitlist offers made
    dispatch: DispatchStats = field(default_factory=DispatchStats)

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat().replace("+00:00", "Z"), "edits": self.edits.as_dict(),
                "recovered": self.recovered, "reconciled": dict(self.reconciled),
                "lapses": self.lapses,
                "events": self.events, "planned": self.planned, "exited": self.exited,
                "set_aside": self.set_aside,
                "cases_opened": self.cases_opened, "case_alerts": self.case_alerts,
                "escalations": self.escalations, "digests": self.digests,
                "offers": self.offers,
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
        self.channels = channels
        self.dispatcher = Dispatcher(db, definitions, settings, channels, worker=worker) \
            if channels is not None else None
        self.case_desk = CaseDesk(db, definitions, settings, self.dispatcher) \
            if self.dispatcher is not None else None
        self.digest = DigestJob(db, definitions, settings, self.dispatcher) \
            if self.dispatcher is not None else None
        self.cases_opened = 0  # by planning, since the last tick
        self.set_aside = 0  # events planning set aside, since the last tick
        self._synced: str | None = None  # the definitions fingerprint applied to the ledger
        self.practice = practice_fields(settings)

    # ------------------------------------------------------------------ tick

    def tick(self, *, sweep: bool = True, stop: Callable[[], bool] = lambda: False,
             ) -> TickReport:
        report = TickReport(clock.now())
        report.edits = self.sync_definitions()
        report.recovered = self.recover()
        if self.channels is not None:
            report.reconciled = reconcile(self.db, self.settings, self.channels,
                                          clock.now()).as_dict()
        if sweep:
            report.lapses = self.sweep_lapses()
        report.events, report.planned, report.exited = self.plan_pending()
        report.offers = self.offer_slots()
        if report.offers:  # their waitlist.offered events become texts in this tick
            events, planned, exited = self.plan_pending()
            report.events += events
            report.planned += planned
            report.exited += exited
        report.cases_opened, self.cases_opened = self.cases_opened, 0
        if self.case_desk is not None:
            report.case_alerts, report.escalations = self.case_desk.run(clock.now())
            report.cases_opened += self.case_desk.opened
        if self.digest is not None:
            report.digests = self.digest.run(clock.now())
        if self.case_desk is not None and self.case_desk.opened:
            # their case.opened events start the recovery journey in this tick
            events, planned, exited = self.plan_pending()
            report.events += events
            report.planned += planned
            report.exited += exited
        report.set_aside, self.set_aside = self.set_aside, 0
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

    def offer_slots(self) -> int:
        """Expire offers and slots, and send the due waves of open slots (the waitlist)."""
        with self.db.transaction() as conn:
            if not try_singleton(conn, "waitlist"):
                return 0
            waves = offer_waves(conn, self.settings, clock.now())
        return waves.offered

    # ------------------------------------------------------------------ edits

    def sync_definitions(self) -> EditImpact:
        """Make pending touch points follow the current schedules (once per change).

        A step whose timing changed re-times its pending rows; a removed step or journey
        cancels them (``step_removed`` / ``journey_removed``); a step added to a journey
        is planned for the runs of that journey still pending.
        """
        fingerprint = self.definitions.fingerprint
        if fingerprint == self._synced:
            return EditImpact()
        now = clock.now()
        with self.db.transaction() as conn:
            if not try_singleton(conn, "planner"):
                return EditImpact()  # another worker is on it; look again next tick
            stored = get_state(conn, "definitions") or {}
            impact = EditImpact()
            if stored.get("fingerprint") != fingerprint:
                impact = self._apply_edits(conn, now)
                put_state(conn, "definitions", {"fingerprint": fingerprint,
                                                "applied_at": now.isoformat()}, now)
        self._synced = fingerprint
        if impact:
            log.info("schedules changed: %s", impact.as_dict())
        return impact

    def _apply_edits(self, conn: Connection, now: datetime) -> EditImpact:
        impact = EditImpact()
        groups = conn.execute(
            select(touch_points.c.journey, touch_points.c.step, touch_points.c.step_fingerprint)
            .where(PENDING, touch_points.c.test == false(),
                   touch_points.c.journey.not_in(SYSTEM_JOURNEYS))
            .distinct()).all()
        stale_journeys: set[str] = set()
        for journey_name, step_id, step_fingerprint in groups:
            journey = self.definitions.journey(journey_name)
            step = journey.step(step_id) if journey else None
            if journey is None or step is None:
                reason = Reason.JOURNEY_REMOVED if journey is None else Reason.STEP_REMOVED
                impact.cancelled += len(ledger.cancel_pending(
                    conn, journey_name, step_id, reason,
                    f"{journey_name}/{step_id} was removed from schedules/", now))
            elif step.fingerprint() != step_fingerprint:
                stale_journeys.add(journey_name)
        # Journeys whose steps changed or gained a step: re-plan their pending runs.
        pending_journeys = {journey for journey, _, _ in groups}
        for name in sorted(pending_journeys):
            journey = self.definitions.journey(name)
            if journey is None:
                continue
            planned_steps = {step for j, step, _ in groups if j == name}
            if name in stale_journeys or {s.id for s in journey.steps} - planned_steps:
                self._replan_apart(conn, journey, now, impact)
        return impact

    def _replan_apart(self, conn: Connection, journey: Journey, now: datetime,
                      impact: EditImpact) -> None:
        """Re-plan one journey after an edit in a savepoint: if one of its rows breaks the
        re-planning, that journey's pending touch points keep their earlier timing (said
        in the log), and every other journey and the tick go on."""
        try:
            with conn.begin_nested():
                self._replan_journey(conn, journey, now, impact)
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:
            log.error("schedules changed, but the pending touch points of journey %s could "
                      "not be re-planned (%s); they keep their earlier timing",
                      journey.name, planning_error(exc))

    def _replan_journey(self, conn: Connection, journey: Journey, now: datetime,
                        impact: EditImpact) -> None:
        pending = [PendingStep(row.id, row.step, row.anchor, row.event_id,
                               row.step_fingerprint, row.due_at, row.recipient)
                   for row in conn.execute(
                       select(touch_points.c.id, touch_points.c.step, touch_points.c.anchor,
                              touch_points.c.event_id, touch_points.c.step_fingerprint,
                              touch_points.c.due_at, touch_points.c.recipient)
                       .where(touch_points.c.status == Status.PLANNED,
                              touch_points.c.test == false(),
                              touch_points.c.journey == journey.name))]
        events, patients, condition_for = self.planning_inputs(conn, journey, pending)
        changes, additions = follow_edits(journey, pending, events, patients, self.rules, now,
                                          condition_for, load_contacts(conn, patients))
        due_before = {p.id: p.due_at for p in pending}
        for change in changes:
            if isinstance(change, Retime):
                before, after = due_before[change.id], change.planned.due_at
                impact.retimed += ledger.retime(
                    conn, change.id, change.planned, now,
                    f"the schedule changed: due {before.isoformat()} → {after.isoformat()}"
                    if before != after else "the step changed; its time did not")
            elif change.status == Status.CANCELLED:
                impact.cancelled += ledger.retire(conn, change.id, change.status,
                                                  change.reason, change.detail, now)
            else:
                impact.skipped += ledger.retire(conn, change.id, change.status, change.reason,
                                                change.detail, now)
        impact.added += ledger.insert_planned(conn, additions, now)

    def planning_inputs(self, conn: Connection, journey: Journey, pending: list[PendingStep],
                        ) -> tuple[dict[int, Event], dict[int, Patient],
                                   Callable[[Event, Patient], Condition | None]]:
        """The events behind pending touch points, their patients, and only_if conditions."""
        event_ids = sorted({p.event_id for p in pending if p.event_id is not None})
        events = {event.id: event for event in load_events(conn, event_ids)}
        patients = load_patients(conn, {event.patient_id for event in events.values()})
        appointment_ids = {e.appointment_id for e in events.values() if e.appointment_id}
        conditional = any(step.only_if for step in journey.steps)
        appts = load_appointments(conn, appointment_ids) if conditional else {}
        numbers = visit_numbers(conn, appointment_ids) if conditional else {}
        case_views = self._case_views(conn, events.values()) if conditional else {}

        def condition_for(event: Event, patient: Patient) -> Condition | None:
            if not conditional:
                return None
            return self._condition(patient, appts.get(event.appointment_id or 0), numbers,
                                   case_views.get(event.id))
        return events, patients, condition_for

    def _case_views(self, conn: Connection, batch: Iterable[Event]) -> dict[int, Fields]:
        """``case`` for only_if, for the ``case.opened`` events among ``batch``."""
        views = {}
        for event in batch:
            if event.kind == "case.opened" and "case" in event.data:
                case = get_case(conn, int(event.data["case"]))
                if case is not None:
                    views[event.id] = case_fields(case, self.settings)
        return views

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
                planned, exited, errors = self._plan_apart(conn, batch)
                mark_processed(conn, [e.id for e in batch if e.id not in errors], clock.now())
                set_aside(conn, errors, clock.now())
            self.set_aside += len(errors)
            for event in batch:
                if event.id in errors:
                    log.error("event %d (%s, from %s) could not be planned and is set aside: "
                              "%s — see `touchpoint why --event %d`", event.id, event.kind,
                              event.source or "?", errors[event.id], event.id,
                              extra={"event": "set_aside", "event_id": event.id})
            if self.case_desk is not None and any(e.kind == "case.opened" for e in batch):
                self.case_desk.poke()  # alert its owner in this tick
            total_events += len(batch)
            total_planned += planned
            total_exited += exited
        return total_events, total_planned, total_exited

    def _plan_apart(self, conn: Connection, batch: list[Event],
                    ) -> tuple[int, int, dict[int, str]]:
        """Plan ``batch`` (and open the cases it calls for) in a savepoint. If that raises,
        plan each half apart, and so on down to the single event that raises, which is set
        aside with its error (``{event id: error}``): one event no rule can plan never
        stops the others, and a batch with one such event costs about three batches' work
        (the whole, its halves, the failing half's halves, …), not one per event.

        Lost connections and locks are not the event's fault: they end the tick as before.
        """
        try:
            with conn.begin_nested():
                planned, exited = self._plan_batch(conn, batch)
                opened = cases_from_events(conn, self.settings, batch)
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:
            if len(batch) == 1:
                return 0, 0, {batch[0].id: planning_error(exc)}
            half = len(batch) // 2
            first, second = self._plan_apart(conn, batch[:half]), \
                self._plan_apart(conn, batch[half:])
            return (first[0] + second[0], first[1] + second[1], {**first[2], **second[2]})
        self.cases_opened += opened
        return planned, exited, {}

    def _plan_batch(self, conn: Connection, batch: list[Event]) -> tuple[int, int]:
        now = clock.now()
        journeys = list(self.definitions.journeys.values())
        patients = load_patients(conn, {e.patient_id for e in batch})
        contacts = load_contacts(conn, patients)
        conditional = any(step.only_if for j in journeys for step in j.steps)
        appointment_ids = {e.appointment_id for e in batch if e.appointment_id}
        appts = load_appointments(conn, appointment_ids) if conditional else {}
        numbers = visit_numbers(conn, appointment_ids) if conditional else {}
        case_views = self._case_views(conn, batch) if conditional else {}
        repeating = {j.name: j for j in journeys if j.once_per}
        started = _last_started(conn, repeating, patients) if repeating else {}
        # (patient, journey) pairs that may have pending rows an exit could cancel
        pending_pairs = _pending_pairs(conn, patients.keys())
        to_insert: list[Planned] = []
        no_guardian: dict[int, tuple[Event, list[str]]] = {}  # by event: staff are told
        planned = exited = 0
        gone = removed_appointments(conn, appointment_ids)
        for event in batch:
            patient = patients.get(event.patient_id)
            if patient is None or patient.removed_at is not None \
                    or event.appointment_id in gone:
                continue  # left the practice's records: nothing new (engine.removal)
            if event.kind == "appointment.cancelled":
                slot_for_cancellation(conn, event, now)  # offered to the waitlist
            condition = self._condition(patient, appts.get(event.appointment_id or 0),
                                        numbers, case_views.get(event.id)) \
                if conditional else None
            last = started.setdefault(patient.id, {})
            result: Plan = plan(event, patient, journeys, self.rules, condition,
                                contacts.get(patient.id, ()), last)
            for item in result.planned:
                if item.journey in repeating and item.status == Status.PLANNED:
                    last[item.journey] = max(last.get(item.journey, item.due_at), item.due_at)
                elif item.reason == Reason.NO_GUARDIAN:
                    no_guardian.setdefault(event.id, (event, []))[1].append(
                        f"{item.journey}/{item.step}")
            relevant = [x for x in result.exits if (x.patient_id, x.journey) in pending_pairs]
            if relevant:
                planned += ledger.insert_planned(conn, to_insert, now)
                to_insert = []
                for exit_ in relevant:
                    exited += len(ledger.apply_exit(conn, exit_, now))
            to_insert.extend(result.planned)
            pending_pairs.update((p.patient_id, p.journey) for p in result.planned
                                 if p.status == Status.PLANNED)
        planned += ledger.insert_planned(conn, to_insert, now)
        append_events(conn, referral_events(conn, batch, patients))
        self.cases_opened += cases_for_minors(conn, self.settings, no_guardian.values())
        return planned, exited

    def _condition(self, patient: Patient, appointment: Appointment | None,
                   numbers: Mapping[int, int], case: Fields | None = None,
                   ) -> Callable[[Journey, Step], bool]:
        templates = self.definitions.templates
        context: dict[str, Any] = {}

        def holds(journey: Journey, step: Step) -> bool:
            if not step.only_if:
                return True
            if not context:  # built on first use: most events meet no condition
                context.update(message_context(
                    patient=patient, appointment=appointment, practice=self.practice,
                    practice_timezone=self.rules.practice_timezone,
                    visit_number=numbers.get(appointment.id) if appointment else None,
                    case=case))
            try:
                return bool(templates.compile_expression(step.only_if)(**context))
            except Exception as exc:  # a manager's expression must not stop planning
                log.error("%s step %s: only_if %r failed (%s); the step is not planned",
                          journey.file, step.id, step.only_if,
                          TemplateRenderError(str(exc)).message)
                return False
        return holds

    # ------------------------------------------------------------------ lapse sweep

    @property
    def lapse_periods(self) -> list[timedelta]:
        return sorted({j.trigger.after for j in self.definitions.journeys.values()
                       if j.trigger.event == "patient.lapsed" and j.trigger.after})

    def sweep_lapses(self) -> int:
        periods = self.lapse_periods
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
        new = self.lapses(conn, after, now, now)
        append_events(conn, new)
        return len(new)

    def lapses(self, conn: Connection, after: timedelta, now: datetime, until: datetime,
               ) -> list[dict[str, Any]]:
        """``patient.lapsed`` events (as rows) for lapses from ``now - LAPSE_LOOKBACK`` to
        ``until`` that are not recorded yet.

        A patient lapses at the start of the practice's day on which they have gone
        ``after`` without a visit and have nothing booked (so win-back steps timed
        ``{days_after: 30, at: "11:00"}`` from the last visit are still ahead when it is
        noticed).
        """
        tz = zone(self.rules.practice_timezone)
        last = (select(appointments.c.patient_id,
                       func.max(appointments.c.start_at).label("last_start"))
                .where(appointments.c.status == "completed",
                       appointments.c.removed_at.is_(None))
                .group_by(appointments.c.patient_id).subquery())
        later = appointments.alias("later")
        booked = select(later.c.id).where(
            later.c.status == "booked", later.c.start_at > last.c.last_start,
            later.c.patient_id == last.c.patient_id, later.c.removed_at.is_(None))
        rows = conn.execute(
            select(appointments.c.id, appointments.c.patient_id, appointments.c.start_at)
            .join(last, and_(appointments.c.patient_id == last.c.patient_id,
                             appointments.c.start_at == last.c.last_start))
            .where(appointments.c.status == "completed", appointments.c.removed_at.is_(None),
                   ~select(patients.c.id).where(patients.c.id == appointments.c.patient_id,
                                                patients.c.removed_at.is_not(None)).exists(),
                   last.c.last_start <= until - after + timedelta(days=1),
                   last.c.last_start > now - after - LAPSE_LOOKBACK - timedelta(days=1),
                   ~booked.exists())).all()
        label = format_duration(after)
        candidates = {}
        for row in rows:
            lapsed_at = lapse_moment(row.start_at, after, tz)
            if now - LAPSE_LOOKBACK < lapsed_at <= until:
                candidates[f"patient.lapsed:{row.patient_id}:{row.id}:{label}"] = (row, lapsed_at)
        if not candidates:
            return []
        known = set(conn.execute(select(events.c.dedupe_key)
                                 .where(events.c.dedupe_key.in_(list(candidates)))).scalars())
        return [{"kind": "patient.lapsed", "patient_id": row.patient_id, "appointment_id": None,
                 "occurred_at": lapsed_at,
                 "data": {"after": label, "last_visit_id": row.id,
                          "last_visit_at": row.start_at.isoformat()},
                 "source": "lapse sweep", "dedupe_key": key, "processed_at": None}
                for key, (row, lapsed_at) in candidates.items() if key not in known]


def planning_error(exc: Exception) -> str:
    """What went wrong planning an event, in one line, without patient data."""
    cause = getattr(exc, "orig", None) if isinstance(exc, SQLAlchemyError) else None
    lines = str(cause or exc).strip().splitlines()
    text = f"{type(cause or exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return redact(text)[:300]


def lapse_moment(last_visit: datetime, after: timedelta, tz: ZoneInfo) -> datetime:
    """Local midnight of the day the patient has gone ``after`` without a visit."""
    day = (last_visit + after).astimezone(tz).date()
    return at_local(day, time(0, 0), tz)


def _last_started(conn: Connection, journeys: Iterable[str], patient_ids: Iterable[int],
                  ) -> dict[int, dict[str, datetime]]:
    """When each ``once_per`` journey last went (or is due to go) to each patient."""
    found: dict[int, dict[str, datetime]] = {}
    names = sorted(journeys)
    for part in chunks(sorted(patient_ids)):
        for patient_id, journey, last in conn.execute(
                select(touch_points.c.patient_id, touch_points.c.journey,
                       func.max(touch_points.c.due_at))
                .where(among(conn, touch_points.c.patient_id, part),
                       touch_points.c.journey.in_(names),
                       touch_points.c.status.in_((Status.PLANNED, Status.SENDING, Status.SENT,
                                                  Status.DELIVERED, Status.UNKNOWN)))
                .group_by(touch_points.c.patient_id, touch_points.c.journey)):
            found.setdefault(patient_id, {})[journey] = as_utc(last)
    return found


def removed_appointments(conn: Connection, ids: Iterable[int]) -> set[int]:
    """Which of these appointments left the practice's records (engine.removal)."""
    found: set[int] = set()
    for part in chunks(sorted(set(ids))):
        found.update(conn.execute(select(appointments.c.id)
                                  .where(among(conn, appointments.c.id, part),
                                         appointments.c.removed_at.is_not(None))).scalars())
    return found


def _pending_pairs(conn: Connection, patient_ids: Iterable[int]) -> set[tuple[int, str]]:
    pairs: set[tuple[int, str]] = set()
    for part in chunks(sorted(patient_ids)):
        rows = conn.execute(
            select(touch_points.c.patient_id, touch_points.c.journey).distinct()
            .where(among(conn, touch_points.c.patient_id, part),
                   touch_points.c.status == "planned"))
        pairs.update((patient_id, journey) for patient_id, journey in rows)
    return pairs
