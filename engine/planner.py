"""The planner: a pure function from an event to the touch points it plans and ends.

``plan(event, patient, journeys, rules)`` returns a :class:`Plan`:

* ``planned`` — one :class:`Planned` per step of every journey the event triggers and per
  recipient of that step (see :mod:`engine.recipients`), each with its unique key
  (patient × recipient × journey × step × anchor), its due time in UTC — in the
  recipient's timezone — and its deadline. A step whose moment has already passed is planned as
  ``skipped/too_late`` (unless it sets ``catch_up: true``), so the ledger still says why.
* ``exits`` — which pending touch points the event ends (an appointment cancelled, a
  visit booked, an appointment moved).

It reads no clock, no database and no channel: the same event always plans the same
thing, which is what makes re-processing after a crash safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from engine.definitions.journeys import Journey, Step, Trigger, When
from engine.domain import Contact, Event, Patient
from engine.outcomes import Reason, Status
from engine.recipients import Addressee, addressees
from engine.timing import QuietHours, at_local, format_duration, parse_duration, zone

Condition = Callable[[Journey, Step], bool]


@dataclass(frozen=True)
class PlanningRules:
    quiet_hours: QuietHours
    practice_timezone: str
    default_expiry: timedelta = timedelta(days=1)


@dataclass(frozen=True)
class Planned:
    patient_id: int
    appointment_id: int | None
    recipient: str
    journey: str
    step: str
    anchor: str
    purpose: str
    event_id: int
    step_fingerprint: str
    due_at: datetime
    expires_at: datetime | None
    status: str = Status.PLANNED
    reason: str | None = None
    detail: str | None = None
    timezone: str | None = None  # the recipient's (None: the practice's); not stored

    @property
    def key(self) -> tuple[int, str, str, str, str]:
        return (self.patient_id, self.recipient, self.journey, self.step, self.anchor)


@dataclass(frozen=True)
class Exit:
    """Cancel the patient's pending touch points of ``journey``/``steps``.

    ``anchor_prefix`` limits it to one appointment (any of its versions: a prefix ends
    with ``:``) or to one anchor (``case:12``); ``None`` means any anchor.
    ``spare_anchor`` is never cancelled (the new version after a move).
    """

    patient_id: int
    journey: str
    steps: tuple[str, ...]
    anchor_prefix: str | None
    reason: str
    detail: str
    spare_anchor: str | None = None

    def covers(self, anchor: str) -> bool:
        if anchor == self.spare_anchor:
            return False
        if self.anchor_prefix is None:
            return True
        if self.anchor_prefix.endswith(":"):
            return anchor.startswith(self.anchor_prefix)
        return anchor == self.anchor_prefix


@dataclass(frozen=True)
class Plan:
    planned: tuple[Planned, ...] = ()
    exits: tuple[Exit, ...] = ()


@dataclass(frozen=True)
class Anchor:
    key: str
    appointment_id: int | None
    start: datetime  # what "before" counts back from
    end: datetime  # what "after" counts on from


def appointment_anchor(appointment_id: int, version: int) -> str:
    return f"appointment:{appointment_id}:v{version}"


def anchor_for(trigger: Trigger, event: Event) -> Anchor | None:
    """Where steps started by ``trigger`` on ``event`` are anchored, or None if they cannot be.

    Appointment events anchor on the appointment's version, a lapse on the last visit,
    other events on the anchor they carry (``data.anchor``: a case, a discharge date, a
    referral) or else on the patient.
    """
    data = event.data
    if trigger.event.startswith("appointment."):
        if event.appointment_id is None or "start" not in data:
            return None
        start = datetime.fromisoformat(data["start"]).astimezone(UTC)
        end = start + timedelta(minutes=int(data.get("duration_minutes", 0)))
        return Anchor(appointment_anchor(event.appointment_id, int(data.get("version", 1))),
                      event.appointment_id, start, end)
    if trigger.event == "patient.lapsed":
        # Win-back steps count from the last visit: {days_after: 30, at: "11:00"}.
        last_visit = datetime.fromisoformat(data["last_visit_at"]).astimezone(UTC) \
            if "last_visit_at" in data else event.occurred_at
        return Anchor(f"lapse:{data.get('last_visit_id', event.id)}", None, last_visit,
                      last_visit)
    return Anchor(str(data.get("anchor") or f"patient:{event.patient_id}"),
                  event.appointment_id, event.occurred_at, event.occurred_at)


def due_time(when: When, anchor: Anchor, event_time: datetime, tz: ZoneInfo) -> datetime:
    """The raw moment a step is due, before quiet hours."""
    if when.kind == "immediately":
        return event_time
    if when.kind == "before":
        return anchor.start - when.offset
    if when.kind == "after":
        return anchor.end + when.offset
    assert when.at is not None
    if when.kind == "days_before":
        day = anchor.start.astimezone(tz).date() - timedelta(days=when.days)
    else:
        day = anchor.end.astimezone(tz).date() + timedelta(days=when.days)
    return at_local(day, when.at, tz)


def triggered_by(trigger: Trigger, event: Event) -> bool:
    if event.kind == "appointment.rescheduled":
        return trigger.event == "appointment.booked"
    if trigger.event != event.kind:
        return False
    if trigger.event == "patient.lapsed":
        try:
            return parse_duration(event.data.get("after", "")) == trigger.after
        except ValueError:
            return False
    return True


def plan(event: Event, patient: Patient, journeys: Iterable[Journey], rules: PlanningRules,
         condition: Condition | None = None, contacts: Sequence[Contact] = (),
         last_started: Mapping[str, datetime] | None = None) -> Plan:
    """``last_started`` maps a journey with ``once_per`` to when it last went to this
    patient (its latest touch point that was not skipped or cancelled)."""
    journeys = list(journeys)
    today = event.occurred_at.astimezone(zone(rules.practice_timezone)).date()
    planned: list[Planned] = []
    exits = list(_exits(event, journeys))
    moved = event.kind == "appointment.rescheduled"
    for journey in journeys:
        if not journey.may_start_on(event.kind):
            continue
        steps = [s for s in journey.steps if triggered_by(journey.trigger_for(s), event)
                 # a move re-plans what is timed from the visit, not what the booking sent
                 and not (moved and s.when.kind == "immediately")]
        if not steps:
            continue
        by_trigger: dict[str, Anchor | None] = {}
        for step in steps:
            trigger = journey.trigger_for(step)
            if trigger.event not in by_trigger:
                by_trigger[trigger.event] = anchor_for(trigger, event)
        anchors = {s.id: by_trigger[journey.trigger_for(s).event] for s in steps}
        if moved:
            spare = next((a.key for a in anchors.values() if a is not None), None)
            exits.append(Exit(
                event.patient_id, journey.name, tuple(s.id for s in steps),
                f"appointment:{event.appointment_id}:", Reason.ANCHOR_CHANGED,
                f"appointment {event.data.get('appointment', '')} moved from "
                f"{event.data.get('previous_start', '?')} to {event.data.get('start', '?')}",
                spare_anchor=spare))
        repeat = _repeat_detail(journey, event, last_started)
        for step in steps:
            anchor = anchors[step.id]
            if anchor is None or (condition is not None and not condition(journey, step)):
                continue
            for addressee in addressees(step.recipient, journey.name, journey.purpose, patient,
                                        contacts, today):
                item = _plan_step(event, patient, journey, step, anchor, rules, addressee)
                if addressee.refused and item.status == Status.PLANNED:
                    item = replace(item, status=Status.SKIPPED, reason=addressee.reason,
                                   detail=addressee.refused)
                elif repeat and item.status == Status.PLANNED:
                    item = replace(item, status=Status.SKIPPED, reason=Reason.ONCE_PER,
                                   detail=repeat)
                planned.append(item)
    return Plan(tuple(planned), tuple(exits))


def _repeat_detail(journey: Journey, event: Event,
                   last_started: Mapping[str, datetime] | None) -> str | None:
    """Why ``journey`` may not start again for this patient yet (``once_per``), or None."""
    if journey.once_per is None or not last_started or journey.name not in last_started:
        return None
    last = last_started[journey.name]
    if event.occurred_at >= last + journey.once_per:
        return None
    return (f"{journey.name} already went to this patient on {last.date().isoformat()}; it "
            f"starts at most once per {format_duration(journey.once_per)}")


def replan(event: Event, patient: Patient, journey: Journey, rules: PlanningRules,
           now: datetime, condition: Condition | None = None,
           contacts: Sequence[Contact] = ()) -> tuple[Planned, ...]:
    """What ``journey``, as it is defined *now*, plans for an event handled before.

    Used when a schedule is edited. A step whose new moment has already passed is
    skipped as ``too_late`` (or sent now if it sets ``catch_up: true``), exactly as if the
    event had happened now; the steps are otherwise planned as :func:`plan` would.
    """
    planned = []
    for item in plan(event, patient, [journey], rules, condition, contacts).planned:
        step = journey.step(item.step)
        if item.status == Status.PLANNED and item.due_at < now and step is not None:
            if step.catch_up:
                tz = zone(item.timezone or rules.practice_timezone)
                due = rules.quiet_hours.next_allowed(now, tz)
                if item.expires_at is None or due < item.expires_at:
                    planned.append(replace(item, due_at=due))
                    continue
            item = replace(item, status=Status.SKIPPED, reason=Reason.TOO_LATE,
                           detail=f"the schedule changed after its new moment "
                                  f"{item.due_at.isoformat()} had passed")
        planned.append(item)
    return tuple(planned)


@dataclass(frozen=True)
class PendingStep:
    """A pending touch point, as much of it as following an edit needs."""

    id: int
    step: str
    anchor: str
    event_id: int | None
    step_fingerprint: str
    due_at: datetime
    recipient: str = "patient"


@dataclass(frozen=True)
class Retime:
    id: int
    planned: Planned


@dataclass(frozen=True)
class Retire:
    id: int
    status: str
    reason: str
    detail: str


def follow_edits(journey: Journey, pending: Iterable[PendingStep], events: Mapping[int, Event],
                 patients: Mapping[int, Patient], rules: PlanningRules, now: datetime,
                 condition_for: Callable[[Event, Patient], Condition | None] | None = None,
                 contacts: Mapping[int, Sequence[Contact]] | None = None,
                 ) -> tuple[list[Retime | Retire], list[Planned]]:
    """How a journey's pending touch points change after its definition was edited.

    Returns the changes to existing rows (re-timed, or retired because the step no longer
    applies or its new moment has passed) and the touch points to add (steps new to the
    journey; already-planned ones are among them and are ignored by the unique key).
    """
    fresh: dict[tuple[str, str, str], Planned] = {}
    additions: list[Planned] = []
    for event_id in sorted({p.event_id for p in pending if p.event_id is not None}):
        event = events.get(event_id)
        patient = patients.get(event.patient_id) if event else None
        if event is None or patient is None:
            continue
        condition = condition_for(event, patient) if condition_for else None
        for item in replan(event, patient, journey, rules, now, condition,
                           (contacts or {}).get(patient.id, ())):
            fresh[(item.step, item.anchor, item.recipient)] = item
            additions.append(item)
    changes: list[Retime | Retire] = []
    for row in pending:
        step = journey.step(row.step)
        if step is None or step.fingerprint() == row.step_fingerprint:
            continue
        if row.event_id is None or row.event_id not in events:
            continue  # nothing to re-plan it from: it keeps its time
        new = fresh.get((row.step, row.anchor, row.recipient))
        if new is None:
            changes.append(Retire(row.id, Status.CANCELLED, Reason.STEP_REMOVED,
                                  "after the schedule changed the step no longer applies"))
        elif new.status != Status.PLANNED:
            changes.append(Retire(row.id, new.status, new.reason or Reason.TOO_LATE,
                                  new.detail or ""))
        else:
            changes.append(Retime(row.id, new))
    return changes, additions


def _plan_step(event: Event, patient: Patient, journey: Journey, step: Step, anchor: Anchor,
               rules: PlanningRules, addressee: Addressee) -> Planned:
    tz = zone(addressee.timezone or rules.practice_timezone)
    due = due_time(step.when, anchor, event.occurred_at, tz)
    expires = deadline(step, anchor, due, rules.default_expiry)  # lateness from its moment
    status, reason, detail = Status.PLANNED, None, None
    if due < event.occurred_at:
        if step.catch_up:
            due = event.occurred_at
        else:
            status, reason = Status.SKIPPED, Reason.TOO_LATE
            detail = (f"it was due {due.isoformat()}, before the {event.kind} event at "
                      f"{event.occurred_at.isoformat()} (set catch_up: true to send late)")
    if status == Status.PLANNED:
        allowed = rules.quiet_hours.next_allowed(due, tz)
        if expires is not None and due >= expires:
            status, reason = Status.SKIPPED, Reason.TOO_LATE
            detail = (f"its deadline {expires.isoformat()} had passed when the "
                      f"{event.kind} event came in at {event.occurred_at.isoformat()}")
        elif expires is not None and allowed >= expires:
            status, reason = Status.SKIPPED, Reason.TOO_LATE
            detail = (f"quiet hours ({rules.quiet_hours.describe()} {tz.key}) would delay it "
                      f"to {allowed.isoformat()}, past its deadline {expires.isoformat()}")
        due = allowed
    return Planned(
        patient_id=patient.id,
        appointment_id=anchor.appointment_id,
        recipient=addressee.key,
        journey=journey.name,
        step=step.id,
        anchor=anchor.key,
        purpose=journey.purpose,
        event_id=event.id,
        step_fingerprint=step.fingerprint(),
        due_at=due,
        expires_at=expires,
        status=status,
        reason=reason,
        detail=detail,
        timezone=addressee.timezone,
    )


def deadline(step: Step, anchor: Anchor, due: datetime, default_expiry: timedelta,
             ) -> datetime | None:
    """The instant from which a step may no longer go (exclusive).

    A step timed before an appointment never goes at or after its start (nor later than
    ``expires_after`` past its moment, when the step sets it); any other step may go at
    most ``expires_after`` (default: the practice's default expiry) late.
    """
    late = due + (step.expires_after or default_expiry)
    if step.when.before_anchor:
        return min(anchor.start, late) if step.expires_after else anchor.start
    return late


def _exits(event: Event, journeys: Iterable[Journey]) -> Iterable[Exit]:
    label = event.data.get("appointment", "")
    kind = event.kind
    for journey in journeys:
        for scope, steps in journey.exits_on(kind):
            prefix = f"appointment:{event.appointment_id}:" \
                if scope == "anchor" and event.appointment_id is not None else None
            if kind == "case.resolved":  # ends the run for that case only
                prefix = str(event.data.get("anchor", f"case:{event.data.get('case')}"))
            reason = Reason.APPOINTMENT_CANCELLED if kind == "appointment.cancelled" \
                else Reason.JOURNEY_EXITED
            yield Exit(event.patient_id, journey.name, tuple(steps), prefix, reason,
                       f"{kind} {label}".strip())
