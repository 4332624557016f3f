"""`touchpoint forecast`: what the next N days hold — sent, skipped, and why — changing nothing.

The forecast replays the engine's own rules in memory, on a virtual clock:

* the pending touch points in the ledger (after applying any edit of ``schedules/`` the
  engine has not applied yet, exactly as the next tick would);
* events imported but not yet planned, and patients who will lapse within the window;
* at each touch point's moment, the same send-time guards the dispatcher runs (deadline,
  anchor, quiet hours in the recipient's timezone, consent, opt-outs), then the template
  of the first usable channel is rendered.

It assumes nothing else happens: no new bookings, visits, cancellations or replies, and
providers accept every message. :func:`forecast_limits` also counts, by journey and step,
the messages a limit (``caps``) would defer or skip in the next :data:`LIMITS_DAYS` days.
``--diff`` compares it with the last full forecast (stored in the database; a run limited
by ``--journey`` or ``--patient``, or looking fewer days ahead than that one did, does not
replace it), so a practice manager sees what an edit changes before it goes out; a
message sent since that forecast is not a change.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, false, select
from sqlalchemy.exc import SQLAlchemyError

from engine.definitions import Definitions
from engine.dispatcher import Snapshot, caps_from, engine_error
from engine.domain import Event, Patient, Recipient
from engine.errors import TemplateRenderError
from engine.guards import Defer, Send, Verdict, address_for, exemption_length_refusal
from engine.message_context import practice_fields
from engine.outcomes import Reason, Status
from engine.planner import PendingStep, Planned, Retime, follow_edits, plan
from engine.privacy import mask_address
from engine.runner import Runner, planning_error
from engine.settings import Settings
from engine.store.database import Database
from engine.store.ledger import TouchPoint, touch_point_from_row
from engine.store.records import (
    PlannedSend,
    get_state,
    load_contacts,
    load_patients,
    pending_events,
    put_state,
)
from engine.store.schema import touch_points
from engine.timing import zone

STATE_KEY = "forecast"
LIMITS_DAYS = 14  # how far ahead validate and forecast count what the limits hold

log = logging.getLogger("touchpoint.forecast")


@dataclass(frozen=True)
class Entry:
    at: datetime
    key: str  # the touch point's unique key, stable from one forecast to the next
    touch_point_id: int | None  # None for touch points not planned yet
    patient_id: str
    patient_name: str
    journey: str
    step: str
    outcome: str  # send | skip | cancel
    channel: str | None = None
    recipient: str | None = None
    reason: str | None = None
    detail: str | None = None
    subject: str | None = None
    content: str | None = None

    @property
    def digest(self) -> str | None:
        if self.content is None:
            return None
        return hashlib.sha1(f"{self.subject}\n{self.content}".encode()).hexdigest()[:12]

    def as_dict(self) -> dict[str, Any]:
        return {"at": _iso(self.at), "touch_point_id": self.touch_point_id,
                "patient_id": self.patient_id, "journey": self.journey, "step": self.step,
                "outcome": self.outcome, "channel": self.channel, "recipient": self.recipient,
                "reason": self.reason, "detail": self.detail, "subject": self.subject,
                "content": self.content}

    def baseline(self) -> dict[str, Any]:
        return {"at": _iso(self.at), "outcome": self.outcome, "channel": self.channel,
                "reason": self.reason, "digest": self.digest, "patient_id": self.patient_id,
                "journey": self.journey, "step": self.step}


@dataclass(frozen=True)
class Change:
    kind: str  # added | removed | changed
    key: str
    patient_id: str
    journey: str
    step: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    what: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"change": self.kind, "patient_id": self.patient_id, "journey": self.journey,
                "step": self.step, "what": list(self.what), "before": self.before,
                "after": self.after}


@dataclass(frozen=True)
class LimitCount:
    """Messages of one step a limit would defer (then send, or not) or skip."""

    journey: str
    step: str
    deferred: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"journey": self.journey, "step": self.step, "deferred": self.deferred,
                "skipped": self.skipped}


@dataclass(frozen=True)
class Limits:
    """What the limits would do in the next ``days`` days, by journey and step."""

    mode: str
    days: int
    by_step: tuple[LimitCount, ...]

    @property
    def deferred(self) -> int:
        return sum(c.deferred for c in self.by_step)

    @property
    def skipped(self) -> int:
        return sum(c.skipped for c in self.by_step)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "days": self.days, "deferred": self.deferred,
                "skipped": self.skipped, "by_step": [c.as_dict() for c in self.by_step]}

    def lines(self) -> list[str]:
        """For the terminal: a total, then one line per step."""
        head = f"Limits (caps.mode = {self.mode}), next {self.days} days: "
        if not self.by_step:
            return [head + "no message deferred or skipped."]
        return [head + f"{self.deferred} deferred, {self.skipped} skipped (frequency_cap)."] \
            + [f"  {c.journey}/{c.step}: {c.deferred} deferred, {c.skipped} skipped"
               for c in self.by_step]


def _iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


def _virtual(planned: Planned, number: int, now: datetime) -> TouchPoint:
    """A touch point not in the ledger yet, shaped like one (negative id)."""
    return TouchPoint(
        id=-number, patient_id=planned.patient_id, appointment_id=planned.appointment_id,
        recipient=planned.recipient, test=False, journey=planned.journey, step=planned.step,
        anchor=planned.anchor, purpose=planned.purpose, event_id=planned.event_id,
        step_fingerprint=planned.step_fingerprint, due_at=planned.due_at,
        expires_at=planned.expires_at, status=planned.status, reason=planned.reason,
        detail=planned.detail, channel=None, address=None, provider=None,
        provider_message_id=None, template_file=None, content=None, attempts=0,
        claimed_by=None, claim_expires_at=None, sending_at=None, sent_at=None,
        finished_at=None, planned_at=now, updated_at=now)


def _planned_send(tp: TouchPoint) -> PlannedSend:
    assert tp.patient_id is not None
    return PlannedSend(tp.id, tp.patient_id, tp.recipient, tp.journey, tp.step, tp.purpose,
                       tp.channel, tp.due_at)


class _Forecaster:
    def __init__(self, conn: Connection, runner: Runner, now: datetime, until: datetime) -> None:
        self.conn = conn
        self.runner = runner
        self.definitions = runner.definitions
        self.now = now
        self.until = until
        self.practice_tz = runner.rules.practice_timezone
        self.practice = practice_fields(runner.settings)
        self.caps = caps_from(runner.settings)
        self.entries: list[Entry] = []
        # touch points a limit deferred: key → (journey, step, when)
        self.held: dict[str, tuple[str, str, datetime]] = {}
        self.counter = itertools.count(1)
        self.people: dict[int, Patient | None] = {}
        self.ledger_keys: dict[int, set[str]] = {}
        # events that cannot be planned (the next tick sets them aside): id → error
        self.set_aside: dict[int, str] = {}

    def _person(self, patient_id: int) -> Patient | None:
        if patient_id not in self.people:
            self.people[patient_id] = load_patients(self.conn, [patient_id]).get(patient_id)
        return self.people[patient_id]

    def run(self) -> list[Entry]:
        pending = [touch_point_from_row(row) for row in self.conn.execute(
            select(touch_points).where(touch_points.c.status == Status.PLANNED,
                                       touch_points.c.test == false(),
                                       touch_points.c.due_at <= self.until)
            .order_by(touch_points.c.due_at))]
        live: dict[str, TouchPoint] = {}
        for tp in self._follow_edits(pending):
            live[_key_of(tp)] = tp
        events = pending_events(self.conn, 100_000)
        for after in self.runner.lapse_periods:
            events.extend(Event(id=-next(self.counter), kind=row["kind"],
                                patient_id=row["patient_id"], appointment_id=None,
                                occurred_at=row["occurred_at"], data=row["data"],
                                source=row["source"])
                          for row in self.runner.lapses(self.conn, after, self.now, self.until))
        for event in sorted(events, key=lambda e: (e.occurred_at, e.id)):
            self._plan(event, live)
        self.snapshot = Snapshot.load(self.conn, live.values(), self.definitions, self.now)
        if self.caps.mode == "exemption" or self.caps.sms_per_day:
            # the limits' look-ahead sees the forecast's own plan
            self.snapshot.expect((_planned_send(tp) for tp in live.values()
                                  if tp.patient_id is not None
                                  and tp.purpose == "transactional"), self.definitions)
        queue = [(tp.due_at, next(self.counter), tp) for tp in live.values()]
        heapq.heapify(queue)
        while queue:
            at, _, tp = heapq.heappop(queue)
            if at > self.until:
                break
            try:
                later = self._decide(tp, max(at, self.now))
            except SQLAlchemyError:
                raise
            except Exception as exc:  # as the dispatcher would: set aside, the rest goes on
                self._record(tp, max(at, self.now), "skip", reason=Reason.ENGINE_ERROR,
                             detail=engine_error(exc))
                continue
            if later is not None:
                heapq.heappush(queue, (later.due_at, next(self.counter), later))
        return sorted(self.entries, key=lambda e: (e.at, e.key))

    def _follow_edits(self, pending: list[TouchPoint]) -> Iterator[TouchPoint]:
        """The pending rows as the edited schedules would leave them."""
        by_journey: dict[str, list[TouchPoint]] = {}
        for tp in pending:
            by_journey.setdefault(tp.journey, []).append(tp)
        for name, rows in by_journey.items():
            journey = self.definitions.journey(name)
            if journey is None:
                yield from rows  # decide() reports them as journey_removed
                continue
            steps = [PendingStep(tp.id, tp.step, tp.anchor, tp.event_id, tp.step_fingerprint,
                                 tp.due_at, tp.recipient) for tp in rows]
            events, patients, condition_for = self.runner.planning_inputs(
                self.conn, journey, steps)
            changes, additions = follow_edits(journey, steps, events, patients,
                                              self.runner.rules, self.now, condition_for,
                                              load_contacts(self.conn, patients))
            changed = {change.id: change for change in changes}
            existing = {(tp.step, tp.anchor, tp.recipient) for tp in rows}
            for tp in rows:
                change = changed.get(tp.id)
                if change is None:
                    yield tp
                elif isinstance(change, Retime):
                    yield replace(tp, due_at=change.planned.due_at,
                                  expires_at=change.planned.expires_at)
                else:
                    self._record(tp, self.now, "skip" if change.status == Status.SKIPPED
                                 else "cancel", reason=change.reason, detail=change.detail)
            for planned in additions:
                if (planned.step, planned.anchor, planned.recipient) not in existing:
                    yield from self._new(planned, self.now)

    def _in_ledger(self, tp: TouchPoint) -> bool:
        """Whether the ledger already has this touch point's key, in any status (sent,
        say): planning it again would insert nothing (the unique key)."""
        assert tp.patient_id is not None
        keys = self.ledger_keys.get(tp.patient_id)
        if keys is None:
            keys = self.ledger_keys[tp.patient_id] = {_key(*row) for row in self.conn.execute(
                select(touch_points.c.patient_id, touch_points.c.recipient,
                       touch_points.c.journey, touch_points.c.step, touch_points.c.anchor)
                .where(touch_points.c.patient_id == tp.patient_id))}
        return _key_of(tp) in keys

    def _new(self, planned: Planned, at: datetime) -> Iterator[TouchPoint]:
        """A touch point planned at ``at``; one planned as skipped is recorded then. One
        the ledger already has (sent, skipped, …) is not planned again, as in the engine."""
        tp = _virtual(planned, next(self.counter), self.now)
        if self._in_ledger(tp):
            return
        if planned.status == Status.PLANNED:
            yield tp
        elif at <= self.until:
            self._record(tp, at, "skip", reason=planned.reason, detail=planned.detail)

    def _plan(self, event: Event, live: dict[str, TouchPoint]) -> None:
        """Plan an event not in the ledger yet: its exits end what is live, then its steps."""
        patient = self._person(event.patient_id)
        if patient is None:
            return
        try:
            result = plan(event, patient, self.definitions.journeys.values(),
                          self.runner.rules,
                          contacts=load_contacts(self.conn, [patient.id]).get(patient.id, ()))
        except Exception as exc:  # what the next tick sets aside (Runner.plan_pending)
            self.set_aside[event.id] = planning_error(exc)
            return
        for exit_ in result.exits:
            for key, tp in list(live.items()):
                if (tp.patient_id == exit_.patient_id and tp.journey == exit_.journey
                        and tp.step in exit_.steps and exit_.covers(tp.anchor)):
                    del live[key]
                    self._record(tp, max(self.now, event.occurred_at), "cancel",
                                 reason=exit_.reason, detail=exit_.detail)
        for planned in result.planned:
            for tp in self._new(planned, max(self.now, event.occurred_at)):
                live.setdefault(_key_of(tp), tp)

    def _decide(self, tp: TouchPoint, at: datetime) -> TouchPoint | None:
        """Record what happens to ``tp`` at ``at``; a deferred one comes back later."""
        journey = self.definitions.journey(tp.journey)
        step = journey.step(tp.step) if journey else None
        assert tp.patient_id is not None
        patient = self.snapshot.patients[tp.patient_id]
        appointment = self.snapshot.appointments.get(tp.appointment_id) \
            if tp.appointment_id else None
        decision, recipient = self.snapshot.decide(tp, journey, step, at,
                                                   self.runner.rules.quiet_hours,
                                                   self.practice_tz, self.caps)
        self.snapshot.moved(tp, decision.until if isinstance(decision, Defer) else None)
        if isinstance(decision, Defer):
            if decision.reason == Reason.FREQUENCY_CAP:
                self.held.setdefault(_key_of(tp), (tp.journey, tp.step, at))
            return replace(tp, due_at=decision.until)
        if isinstance(decision, Verdict):
            if decision.reason not in (Reason.STEP_REMOVED, Reason.JOURNEY_REMOVED):
                # (a step taken out of schedules/ is simply no longer in the forecast)
                self._record(tp, at, "skip" if decision.status == Status.SKIPPED
                             else "cancel", reason=decision.reason, detail=decision.detail)
            return None
        assert step is not None
        assert recipient is not None
        self._render(tp, at, step.template, decision, patient, recipient, appointment)
        return None

    def _render(self, tp: TouchPoint, at: datetime, template: str, decision: Send,
                patient: Patient, recipient: Recipient, appointment: Any) -> None:
        context = self.snapshot.context(tp, patient, appointment, self.practice,
                                        self.practice_tz, recipient, self.runner.settings)
        context["unsubscribe_url"] = "(unsubscribe link)"
        problems: list[tuple[str, str]] = []
        for kind in decision.channels:
            try:
                rendered = self.definitions.templates.render(
                    template, kind, recipient.language or patient.language, context,
                    zone(decision.timezone))
            except TemplateRenderError as exc:
                problems.append((Reason.TEMPLATE_ERROR, f"{kind}: {exc.message}"))
                continue
            too_long = exemption_length_refusal(kind, rendered.body, self.caps)
            if too_long is not None:
                problems.append((Reason.FREQUENCY_CAP, too_long))
                continue
            self._record(tp, at, "send", channel=kind,
                         recipient=mask_address(address_for(recipient, kind)),
                         subject=rendered.subject, content=rendered.body)
            self.snapshot.sent(patient.id, tp.purpose, kind, at, tp.recipient,
                               self.definitions.priority(tp.journey, tp.step, tp.purpose))
            return
        self._record(tp, at, "skip", reason=problems[0][0],
                     detail="; ".join(d for _, d in problems))

    def _record(self, tp: TouchPoint, at: datetime, outcome: str, **fields: Any) -> None:
        assert tp.patient_id is not None
        person = self._person(tp.patient_id)
        self.entries.append(Entry(
            at=at, key=_key_of(tp), touch_point_id=tp.id if tp.id > 0 else None,
            patient_id=person.external_id if person else "?",
            patient_name=person.full_name if person else "", journey=tp.journey,
            step=tp.step, outcome=outcome, **fields))


def _key_of(tp: TouchPoint) -> str:
    return _key(tp.patient_id, tp.recipient, tp.journey, tp.step, tp.anchor)


def _key(patient_id: int | None, recipient: str, journey: str, step: str, anchor: str) -> str:
    """The ledger's unique key as one text (the baseline stores entries under it)."""
    return f"{patient_id}|{recipient}|{journey}|{step}|{anchor}"


def forecast(db: Database, settings: Settings, definitions: Definitions, now: datetime,
             days: float) -> list[Entry]:
    return forecast_limits(db, settings, definitions, now, days)[0]


def forecast_limits(db: Database, settings: Settings, definitions: Definitions,
                    now: datetime, days: float = LIMITS_DAYS) -> tuple[list[Entry], Limits]:
    """The forecast of the next ``days`` days, and what the limits would defer or skip in
    the next :data:`LIMITS_DAYS` (one run, as far ahead as the longer of the two)."""
    runner = Runner(db, settings, definitions)
    until = now + timedelta(days=days)
    horizon = now + timedelta(days=LIMITS_DAYS)
    with db.transaction() as conn:
        forecaster = _Forecaster(conn, runner, now, max(until, horizon))
        entries = forecaster.run()
    for event_id, error in sorted(forecaster.set_aside.items()):
        log.warning("event %d cannot be planned, so the forecast leaves it out (the next tick "
                    "sets it aside): %s — see `touchpoint why --event %d` then", event_id,
                    error, event_id)
    counts: dict[tuple[str, str], list[int]] = {}
    for journey, step, at in forecaster.held.values():
        if at <= horizon:
            counts.setdefault((journey, step), [0, 0])[0] += 1
    for entry in entries:
        if entry.reason == Reason.FREQUENCY_CAP and entry.at <= horizon:
            counts.setdefault((entry.journey, entry.step), [0, 0])[1] += 1
    limits = Limits(settings.caps.mode, LIMITS_DAYS, tuple(
        LimitCount(journey, step, deferred, skipped)
        for (journey, step), (deferred, skipped) in sorted(counts.items())))
    return [e for e in entries if e.at <= until], limits


# A touch point in one of these has gone to a provider (or was being handed to one): it is
# no longer part of what is coming, and its leaving the forecast is not a change.
_DISPATCHED = (Status.SENDING, Status.SENT, Status.DELIVERED, Status.FAILED, Status.UNKNOWN)


def diff(db: Database, entries: list[Entry], now: datetime, until: datetime,
         save: bool = True) -> tuple[list[Change], str | None]:
    """Compare with the baseline (the last full forecast); with ``save``, this one
    becomes the next baseline if it looks at least as far ahead. Only a full forecast
    should be saved: one limited to a journey or a patient, or to fewer days, would leave
    the others out of the next comparison.

    The comparison covers what both forecasts looked at: from now to the earlier of their
    horizons. A touch point sent since the baseline (and one the baseline foresaw for a
    moment that has passed) is what was expected to happen, not a change.

    Returns the changes and when the baseline was made (None if there is none).
    """
    current = {e.key: e.baseline() for e in entries}
    with db.transaction() as conn:
        previous = get_state(conn, STATE_KEY)
        old_horizon = _instant(previous["until"]) if previous and previous.get("until") \
            else until
        if save and until >= old_horizon:  # (a shorter look ahead is not a full forecast)
            put_state(conn, STATE_KEY, {"made_at": _iso(now), "until": _iso(until),
                                        "entries": current}, now)
        if previous is None:
            return [], None
        before: dict[str, dict[str, Any]] = previous.get("entries", {})
        start = now.astimezone(UTC)
        horizon = min(until, old_horizon)
        gone = [key for key, old in before.items()
                if key not in current and start < _instant(old["at"]) <= horizon]
        sent = _dispatched(conn, gone)
    changes = []
    for key, after in current.items():
        old = before.get(key)
        if old is None:
            if _instant(after["at"]) <= horizon:  # (past the old horizon nothing was foreseen)
                changes.append(Change("added", key, after["patient_id"], after["journey"],
                                      after["step"], None, after))
            continue
        changed = _changed(key, old, after)
        if changed is not None:
            changes.append(changed)
    for key in gone:
        if key not in sent:
            old = before[key]
            changes.append(Change("removed", key, old["patient_id"], old["journey"],
                                  old["step"], old, None))
    return sorted(changes, key=lambda c: ((c.after or c.before or {}).get("at", ""), c.key)), \
        previous.get("made_at")


def _changed(key: str, before: dict[str, Any], after: dict[str, Any]) -> Change | None:
    """How one touch point differs between two forecasts (None: it does not)."""
    what = tuple(field for field in ("at", "outcome", "channel", "reason", "digest")
                 if before.get(field) != after.get(field))
    return Change("changed", key, after["patient_id"], after["journey"], after["step"],
                  before, after, what) if what else None


def compare(before: list[Entry], after: list[Entry]) -> list[Change]:
    """What changes between two forecasts of the same days (say, the definitions running
    now and a draft of them): touch points that appear, disappear, or move, change outcome,
    channel, reason or wording. Ordered by time."""
    old = {e.key: e.baseline() for e in before}
    new = {e.key: e.baseline() for e in after}
    changes = [Change("added", key, row["patient_id"], row["journey"], row["step"], None, row)
               for key, row in new.items() if key not in old]
    changes += [Change("removed", key, row["patient_id"], row["journey"], row["step"], row,
                       None) for key, row in old.items() if key not in new]
    changes += [changed for key, row in new.items() if key in old
                and (changed := _changed(key, old[key], row)) is not None]
    return sorted(changes, key=lambda c: ((c.after or c.before or {}).get("at", ""), c.key))


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _dispatched(conn: Connection, keys: list[str]) -> set[str]:
    """Which of these forecast keys are touch points that have gone to a provider."""
    patient_ids = sorted({int(key.split("|", 1)[0]) for key in keys})
    wanted = set(keys)
    found: set[str] = set()
    for start in range(0, len(patient_ids), 500):
        rows = conn.execute(
            select(touch_points.c.patient_id, touch_points.c.recipient,
                   touch_points.c.journey, touch_points.c.step, touch_points.c.anchor)
            .where(touch_points.c.patient_id.in_(patient_ids[start:start + 500]),
                   touch_points.c.status.in_(_DISPATCHED), touch_points.c.test == false()))
        found.update(key for row in rows
                     if (key := _key(*row)) in wanted)
    return found


@dataclass(frozen=True)
class Reach:
    """Who one step will reach in a forecast: patients messaged, messages, and those the
    step would skip (with the reasons)."""

    patients: int
    messages: int
    skipped: int
    reasons: tuple[tuple[str, int], ...]


def reach(entries: list[Entry]) -> dict[tuple[str, str], Reach]:
    """Each (journey, step) of a forecast, by who it reaches."""
    patients: dict[tuple[str, str], set[str]] = {}
    messages: Counter[tuple[str, str]] = Counter()
    skipped: dict[tuple[str, str], Counter[str]] = {}
    for entry in entries:
        key = (entry.journey, entry.step)
        if entry.outcome == "send":
            patients.setdefault(key, set()).add(entry.patient_id)
            messages[key] += 1
        else:
            skipped.setdefault(key, Counter())[entry.reason or entry.outcome] += 1
    return {key: Reach(len(patients.get(key, ())), messages[key],
                       sum(skipped.get(key, Counter()).values()),
                       tuple(skipped.get(key, Counter()).most_common()))
            for key in set(patients) | set(skipped)}
