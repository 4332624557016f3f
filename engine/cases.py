"""Recovery cases: when service does not go to plan, a person owns putting it right.

A case opens, once per cause, for

=====================  ===========================================  =====================
cause                  when                                         opened once per
=====================  ===========================================  =====================
``low_score``          a 0-6 answer to the satisfaction question    question asked
``complaint``          a text that reads as a complaint             text received
``failed_delivery``    a transactional message failed for good      touch point
``no_show``            a missed visit                               appointment
``late_cancellation``  a cancellation within 24 h of the visit      appointment
``no_guardian``        a minor with no parent or guardian on file:  event planned
                       their messages were skipped (``no_guardian``)
``at_risk``            at risk of dropping out: nothing booked 2    visit
                       days after visit 1 or 2 of a plan of care
                       (engine/plan_of_care.py)
=====================  ===========================================  =====================

(``cause_key`` is unique: re-imports, re-played webhooks and restarts never open a case
twice; a new complaint, failed delivery or skipped message of a minor while the patient's
case of that cause is still open is added to it as a note.)

Opening a case records a ``case.opened`` event (the recovery journey starts on it) and
the next tick alerts the owner — email, and SMS in the daytime if an owner phone is set.
The case is due after ``recovery.sla_business_days`` business days; past due and still
open, it is escalated by email. ``touchpoint case ID resolve --note …`` closes it (and
records ``case.resolved``, which ends the recovery journey). Every step is kept in
``case_events``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from engine import clock, notify, outbound_webhooks
from engine.definitions import Definitions
from engine.definitions.journeys import SYSTEM_JOURNEYS
from engine.definitions.templates import Fields
from engine.domain import Event
from engine.errors import UserError
from engine.message_context import appointment_fields, patient_fields, practice_fields
from engine.outcomes import Status
from engine.privacy import mask_address
from engine.settings import Settings
from engine.store import ledger
from engine.store.database import Database
from engine.store.locks import try_singleton
from engine.store.records import (
    append_events,
    as_utc,
    get_state,
    load_appointments,
    load_patients,
    put_state,
)
from engine.store.schema import case_events, inbound_messages, recovery_cases, touch_points
from engine.timing import at_local, zone

if TYPE_CHECKING:
    from engine.dispatcher import Dispatcher

log = logging.getLogger("touchpoint.cases")

CAUSES: dict[str, str] = {
    "low_score": "a low satisfaction score",
    "complaint": "a reply that reads as a complaint",
    "failed_delivery": "a message about their care could not be delivered",
    "no_show": "a missed visit",
    "late_cancellation": "a late cancellation",
    "no_guardian": "a minor with no parent or guardian on file",
    "at_risk": "at risk of dropping out",
}
# Causes whose repeats go onto the patient's open case of that cause as notes.
GATHERED = ("complaint", "failed_delivery", "no_guardian")
ALERT_TRIES = 3  # attempts per alert channel before giving up (the case still shows it)
ALERT_RETRY = timedelta(minutes=5)  # between attempts
LOOK_EVERY = timedelta(minutes=1)  # open cases are checked for escalation this often
FAILURE_OVERLAP = timedelta(minutes=10)


@dataclass(frozen=True)
class Case:
    id: int
    patient_id: int
    cause: str
    cause_key: str
    status: str
    owner: str
    detail: str
    appointment_id: int | None
    touch_point_id: int | None
    inbound_id: int | None
    opened_at: datetime
    due_at: datetime
    alerted_at: datetime | None
    escalated_at: datetime | None
    resolved_at: datetime | None
    resolution: str | None

    @property
    def is_open(self) -> bool:
        return self.status == "open"

    def overdue(self, now: datetime) -> bool:
        return self.is_open and now >= self.due_at


@dataclass(frozen=True)
class CaseEvent:
    at: datetime
    kind: str
    detail: str
    by: str


def _case(row: Any) -> Case:
    return Case(**{name: getattr(row, name) for name in Case.__dataclass_fields__})


# --------------------------------------------------------------------------- time


def due_time(opened: datetime, settings: Settings) -> datetime:
    """``sla_business_days`` business days after ``opened``, same local time (a case
    opened on a Saturday morning is due on Monday morning for a one-day SLA)."""
    return business_days_after(opened, settings.recovery.sla_business_days, settings)


def business_days_after(start: datetime, days: int, settings: Settings) -> datetime:
    """``days`` of the practice's business days (``recovery.business_days``) after
    ``start``, at the same local time."""
    tz = zone(settings.require("practice.timezone"))
    local = start.astimezone(tz)
    day, left = local.date(), days
    while left > 0:
        day += timedelta(days=1)
        if day.weekday() in settings.recovery.business_days:
            left -= 1
    return at_local(day, local.time().replace(second=0, microsecond=0), tz)


# --------------------------------------------------------------------------- opening


def open_case(conn: Connection, settings: Settings, *, patient_id: int, cause: str, key: str,
              detail: str, now: datetime, appointment_id: int | None = None,
              touch_point_id: int | None = None, inbound_id: int | None = None) -> int | None:
    """Open a case for ``cause`` (once per ``key``); its id, or None if not opened (the
    key was seen before, or the detail went onto the patient's open case of that cause)."""
    assert cause in CAUSES, cause
    if known_causes(conn, [key]):
        return None
    same = conn.execute(select(recovery_cases.c.id).where(
        recovery_cases.c.patient_id == patient_id, recovery_cases.c.cause == cause,
        recovery_cases.c.status == "open")).first()
    if same is not None and cause in GATHERED:
        # one person calls the patient about it all: the open case gets a note, once
        add_event(conn, same.id, "note", f"again: {detail}", "touchpoint", now, cause_key=key)
        return None
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    owner = settings.recovery.owner_name
    row = conn.execute(dialect.insert(recovery_cases).values(
        patient_id=patient_id, cause=cause, cause_key=key, status="open", owner=owner,
        detail=detail, appointment_id=appointment_id, touch_point_id=touch_point_id,
        inbound_id=inbound_id, opened_at=now, due_at=due_time(now, settings))
        .on_conflict_do_nothing(index_elements=["cause_key"])
        .returning(recovery_cases.c.id)).first()
    if row is None:
        return None
    add_event(conn, row.id, "opened", f"{CAUSES[cause]}: {detail}", "touchpoint", now)
    append_events(conn, [{
        "kind": "case.opened", "patient_id": patient_id, "appointment_id": appointment_id,
        "occurred_at": now, "data": {"case": row.id, "cause": cause, "anchor": f"case:{row.id}"},
        "source": f"case {row.id}", "dedupe_key": f"case.opened:{row.id}",
        "processed_at": None}])
    outbound_webhooks.emit_about(conn, "case.opened", now, patient_id=patient_id,
                                 appointment_id=appointment_id, case_id=row.id, cause=cause,
                                 touch_point_id=touch_point_id, due_at=due_time(now, settings)
                                 .isoformat().replace("+00:00", "Z"))
    log.info("recovery case %s opened for patient %s: %s", row.id, patient_id, cause)
    return int(row.id)


def add_event(conn: Connection, case_id: int, kind: str, detail: str, by: str,
              now: datetime, cause_key: str | None = None) -> None:
    conn.execute(insert(case_events).values(case_id=case_id, at=now, kind=kind,
                                            detail=detail[:2000], by=by[:100],
                                            cause_key=cause_key))


def known_causes(conn: Connection, keys: Sequence[str]) -> set[str]:
    """The cause keys among ``keys`` already seen: a case opened for them, or a note."""
    if not keys:
        return set()
    opened = select(recovery_cases.c.cause_key).where(recovery_cases.c.cause_key.in_(keys))
    noted = select(case_events.c.cause_key).where(case_events.c.cause_key.in_(keys))
    return {key for key in conn.execute(opened.union(noted)).scalars() if key is not None}


def cases_from_events(conn: Connection, settings: Settings, batch: Iterable[Event]) -> int:
    """Cases for the no-shows and late cancellations among ``batch`` (planning)."""
    opened = 0
    window = settings.recovery.late_cancellation
    for event in batch:
        if event.appointment_id is None or "start" not in event.data:
            continue
        start = datetime.fromisoformat(event.data["start"])
        label = event.data.get("appointment", "")
        if event.kind == "appointment.no_show":
            opened += open_case(
                conn, settings, patient_id=event.patient_id, cause="no_show",
                key=f"no_show:{event.appointment_id}", now=event.occurred_at,
                detail=f"did not come to appointment {label} at {start.isoformat()}",
                appointment_id=event.appointment_id) is not None
        elif event.kind == "appointment.cancelled" and \
                event.occurred_at - timedelta(days=1) < start < event.occurred_at + window:
            notice = start - event.occurred_at
            hours = max(0, int(notice.total_seconds() // 3600))
            opened += open_case(
                conn, settings, patient_id=event.patient_id, cause="late_cancellation",
                key=f"late_cancellation:{event.appointment_id}", now=event.occurred_at,
                detail=f"cancelled appointment {label} {hours} h before it "
                       f"({start.isoformat()})",
                appointment_id=event.appointment_id) is not None
    return opened


def cases_for_minors(conn: Connection, settings: Settings,
                     skipped: Iterable[tuple[Event, Sequence[str]]]) -> int:
    """Cases for minors with no guardian on file, one per event whose messages planning
    skipped ``no_guardian`` (``skipped``: the event and those journey/step names)."""
    opened = 0
    for event, steps in skipped:
        opened += open_case(
            conn, settings, patient_id=event.patient_id, cause="no_guardian",
            key=f"no_guardian:{event.id}", now=event.occurred_at,
            appointment_id=event.appointment_id,
            detail=f"{', '.join(steps)} not sent: the patient is under 18 and no parent or "
                   f"guardian is on file — import one (touchpoint import contacts), then "
                   f"resolve this case") is not None
    return opened


def cases_from_failures(conn: Connection, settings: Settings, since: datetime,
                        ) -> tuple[int, datetime | None]:
    """Cases for transactional journey messages that failed for good (by the dispatcher or,
    later, a provider's callback) at or after ``since``. Returns (cases opened, the latest
    failure seen). Cheap when there are none: failed rows have their own small index."""
    rows = conn.execute(
        select(touch_points.c.id, touch_points.c.patient_id, touch_points.c.appointment_id,
               touch_points.c.journey, touch_points.c.step, touch_points.c.channel,
               touch_points.c.detail, touch_points.c.finished_at, touch_points.c.purpose,
               touch_points.c.test, touch_points.c.recipient)
        .where(touch_points.c.status == Status.FAILED, touch_points.c.finished_at >= since)
        .order_by(touch_points.c.finished_at)).all()
    if not rows:
        return 0, None
    # (a referring office's email that bounced is not the patient's problem to call about)
    keys = {f"failed_delivery:{row.id}": row for row in rows
            if row.purpose == "transactional" and not row.test and row.patient_id is not None
            and row.journey not in SYSTEM_JOURNEYS and not row.recipient.startswith("referrer:")}
    known = known_causes(conn, list(keys))
    opened = 0
    for key, row in keys.items():
        if key in known:
            continue
        opened += open_case(
            conn, settings, patient_id=row.patient_id, cause="failed_delivery", key=key,
            now=row.finished_at, touch_point_id=row.id, appointment_id=row.appointment_id,
            detail=f"{row.journey}/{row.step} by {row.channel or '?'} failed: "
                   f"{(row.detail or '')[:200]}") is not None
    return opened, max(as_utc(row.finished_at) for row in rows)


# --------------------------------------------------------------------------- staff actions


def get_case(conn: Connection, case_id: int) -> Case | None:
    row = conn.execute(select(recovery_cases).where(recovery_cases.c.id == case_id)).first()
    return _case(row) if row else None


def list_cases(conn: Connection, open_only: bool = False,
               patient_id: int | None = None) -> list[Case]:
    query = select(recovery_cases).order_by(recovery_cases.c.opened_at, recovery_cases.c.id)
    if open_only:
        query = query.where(recovery_cases.c.status == "open")
    if patient_id is not None:
        query = query.where(recovery_cases.c.patient_id == patient_id)
    return [_case(row) for row in conn.execute(query)]


def history(conn: Connection, case_id: int) -> list[CaseEvent]:
    return [CaseEvent(row.at, row.kind, row.detail, row.by) for row in conn.execute(
        select(case_events).where(case_events.c.case_id == case_id)
        .order_by(case_events.c.at, case_events.c.id))]


def resolve(conn: Connection, case_id: int, note: str, by: str, now: datetime) -> Case:
    """Close a case with what was done; records ``case.resolved`` (ends the recovery
    journey's pending messages for it)."""
    case = _require(conn, case_id)
    if not case.is_open:
        raise UserError(f"case {case_id} was already resolved on "
                        f"{case.resolved_at:%Y-%m-%d %H:%M} UTC ({case.resolution})")
    if not note.strip():
        raise UserError("say what was done: --note \"called her, rebooked for Monday\"")
    conn.execute(update(recovery_cases).where(recovery_cases.c.id == case_id)
                 .values(status="resolved", resolved_at=now, resolution=note.strip()))
    add_event(conn, case_id, "resolved", note.strip(), by, now)
    append_events(conn, [{
        "kind": "case.resolved", "patient_id": case.patient_id,
        "appointment_id": case.appointment_id, "occurred_at": now,
        "data": {"case": case_id, "anchor": f"case:{case_id}"}, "source": f"case {case_id}",
        "dedupe_key": f"case.resolved:{case_id}", "processed_at": None}])
    outbound_webhooks.emit_about(conn, "case.resolved", now, patient_id=case.patient_id,
                                 appointment_id=case.appointment_id, case_id=case_id,
                                 cause=case.cause)
    resolved = get_case(conn, case_id)
    assert resolved is not None
    return resolved


def note(conn: Connection, case_id: int, text: str, by: str, now: datetime) -> None:
    _require(conn, case_id)
    if not text.strip():
        raise UserError("the note is empty")
    add_event(conn, case_id, "note", text.strip(), by, now)


def assign(conn: Connection, case_id: int, owner: str, by: str, now: datetime) -> Case:
    """Give an open case to ``owner`` (a person's name or email), kept in its history."""
    case = _require(conn, case_id)
    owner = " ".join(owner.split())[:200]
    if not owner:
        raise UserError("say who owns it: a name or an email")
    if not case.is_open:
        raise UserError(f"case {case_id} is resolved; it has no owner to change")
    if owner == case.owner:
        return case
    conn.execute(update(recovery_cases).where(recovery_cases.c.id == case_id)
                 .values(owner=owner))
    add_event(conn, case_id, "assigned", f"to {owner}" + (f" (was {case.owner})"
                                                          if case.owner else ""), by, now)
    assigned = get_case(conn, case_id)
    assert assigned is not None
    return assigned


def _require(conn: Connection, case_id: int) -> Case:
    case = get_case(conn, case_id)
    if case is None:
        raise UserError(f"there is no case {case_id} — `touchpoint cases` lists them")
    return case


def open_case_states(conn: Connection, patient_ids: Iterable[int]) -> dict[int, str]:
    """``{case id: status}`` for the cases of these patients."""
    ids = sorted(set(patient_ids))
    if not ids:
        return {}
    return {row.id: row.status for row in conn.execute(
        select(recovery_cases.c.id, recovery_cases.c.status)
        .where(recovery_cases.c.patient_id.in_(ids)))}


# --------------------------------------------------------------------------- templates


def case_fields(case: Case, settings: Settings, score: int | None = None) -> Fields:
    return Fields({
        "id": case.id, "cause": case.cause, "reason": CAUSES.get(case.cause, case.cause),
        "detail": case.detail, "owner": case.owner or settings.recovery.owner_name,
        "status": case.status, "opened_at": case.opened_at, "due_at": case.due_at,
        "command": f"touchpoint case {case.id} resolve --note \"what you did\"",
        "score": score,
    }, "case")


def case_score(conn: Connection, case: Case) -> int | None:
    if case.inbound_id is None:
        return None
    return conn.execute(select(inbound_messages.c.score)
                        .where(inbound_messages.c.id == case.inbound_id)).scalar()


# --------------------------------------------------------------------------- the desk


@dataclass(frozen=True)
class _Alert:
    case: Case
    channel: str  # email | sms | escalation
    to: str
    tries: int


class CaseDesk:
    """Alerts owners of new cases and escalates overdue ones; run on every tick."""

    def __init__(self, db: Database, definitions: Definitions, settings: Settings,
                 dispatcher: Dispatcher) -> None:
        self.db = db
        self.definitions = definitions
        self.settings = settings
        self.dispatcher = dispatcher
        recovery = settings.recovery
        self.owner_email = recovery.owner_email or settings.practice.staff_email
        self.owner_phone = recovery.owner_phone
        self.escalate_to = recovery.escalate_to or self.owner_email
        self.opened = 0  # cases opened by the last run (failed deliveries)
        self._since: datetime | None = None  # failures before this were looked at
        self._looked_at: datetime | None = None  # when open cases were last looked at
        self.practice_tz = settings.require("practice.timezone")

    def poke(self) -> None:
        """A case was opened elsewhere (a text, planning): look at open cases next run."""
        self._looked_at = None

    def run(self, now: datetime) -> tuple[int, int]:
        """(alerts sent, escalations sent); ``opened`` says how many cases it opened.

        Failures are looked for on every run (an indexed query); open cases when one was
        just opened and otherwise once a minute (escalations, alert retries), so an idle
        tick stays cheap.
        """
        self.opened = 0
        with self.db.transaction() as conn:
            if not try_singleton(conn, "case-desk"):
                return 0, 0
            if self._since is None:
                state = get_state(conn, "cases.failures")
                self._since = datetime.fromisoformat(state["since"]) if state else now
                if state is None:
                    put_state(conn, "cases.failures", {"since": now.isoformat()}, now)
            # a failure committed by another worker a little late is still found: cases
            # open once per cause_key whatever the overlap
            self.opened, latest = cases_from_failures(conn, self.settings,
                                                      self._since - FAILURE_OVERLAP)
            if latest is not None and latest > self._since:
                self._since = latest
                put_state(conn, "cases.failures", {"since": latest.isoformat()}, now)
            if self.opened:
                log.info("%d recovery case(s) opened for failed deliveries", self.opened)
                self._looked_at = None
            if self._looked_at is not None and now - self._looked_at < LOOK_EVERY:
                return 0, 0
            self._looked_at = now
            due = self._due_alerts(conn, now)
            if not due:
                return 0, 0
            work = self._prepare(conn, due, now)
        alerts = escalations = 0
        for alert, tp, rendered in work:
            done = notify.deliver(self.dispatcher, tp, rendered)
            ok = done is not None and done.status in (Status.SENT, Status.DELIVERED)
            with self.db.transaction() as conn:
                self._record(conn, alert, ok, done, clock.now())
            if ok:
                if alert.channel == "escalation":
                    escalations += 1
                else:
                    alerts += 1
        return alerts, escalations

    def _due_alerts(self, conn: Connection, now: datetime) -> list[_Alert]:
        open_cases = [_case(row) for row in conn.execute(
            select(recovery_cases).where(recovery_cases.c.status == "open")
            .order_by(recovery_cases.c.id))]
        if not open_cases:
            return []
        tries = _attempts(conn, [c.id for c in open_cases])
        daytime = self.settings.quiet_hours.allows(now, zone(self.practice_tz))
        wanted: list[_Alert] = []
        for case in open_cases:
            channels = [("email", self.owner_email), ("sms", self.owner_phone)]
            if case.overdue(now):
                channels.append(("escalation", self.escalate_to))
            for channel, to in channels:
                if not to or (channel == "sms" and not daytime):
                    continue
                tried = tries.get((case.id, channel), notify.Attempts())
                if tried.done or tried.failed >= ALERT_TRIES or (
                        tried.last_failure and now - tried.last_failure < ALERT_RETRY):
                    continue
                wanted.append(_Alert(case, channel, to, tried.failed + 1))
        return wanted

    def _prepare(self, conn: Connection, due: Sequence[_Alert], now: datetime,
                 ) -> list[tuple[_Alert, ledger.TouchPoint, notify.Rendered]]:
        patients = load_patients(conn, {a.case.patient_id for a in due})
        appointments = load_appointments(
            conn, {a.case.appointment_id for a in due if a.case.appointment_id})
        replies = _replies(conn, [a.case.inbound_id for a in due if a.case.inbound_id])
        practice = practice_fields(self.settings)
        tz = zone(self.practice_tz)
        work = []
        for alert in due:
            case = alert.case
            patient = patients.get(case.patient_id)
            appointment = appointments.get(case.appointment_id or 0)
            reply = replies.get(case.inbound_id or 0)
            context: dict[str, Any] = {
                "practice": practice,
                "patient": patient_fields(patient, self.practice_tz) if patient else None,
                "appointment": appointment_fields(appointment) if appointment else None,
                "case": case_fields(case, self.settings, reply[1] if reply else None),
                "reply": Fields({"body": reply[0], "from": "", "received_at": case.opened_at,
                                 "flag": "", "due_at": None}, "reply") if reply else None,
                "unsubscribe_url": None,
            }
            step, template, kind = {
                "email": ("recovery-case", "staff/recovery-case", "email"),
                "sms": ("recovery-case-sms", "staff/recovery-case", "sms"),
                "escalation": ("recovery-escalation", "staff/recovery-escalation", "email"),
            }[alert.channel]
            notice = notify.Notice("staff-alerts", step, kind, alert.to, template,
                                   anchor=f"case:{case.id}:{alert.channel}:{alert.tries}",
                                   patient_id=case.patient_id,
                                   appointment_id=case.appointment_id)
            rendered = notify.render(self.definitions.templates, notice, context, tz)
            if rendered is None:
                continue
            work.append((alert, notify.insert(conn, self.dispatcher, notice), rendered))
        return work

    def _record(self, conn: Connection, alert: _Alert, ok: bool,
                done: ledger.TouchPoint | None, now: datetime) -> None:
        case = alert.case
        what = f"{'escalation email' if alert.channel == 'escalation' else alert.channel} " \
               f"to {mask_address(alert.to)} (touch point {done.id if done else '?'})"
        if ok:
            kind = "escalated" if alert.channel == "escalation" else "alerted"
            add_event(conn, case.id, kind, what, alert.channel, now)
            column = "escalated_at" if alert.channel == "escalation" else "alerted_at"
            conn.execute(update(recovery_cases)
                         .where(recovery_cases.c.id == case.id,
                                getattr(recovery_cases.c, column).is_(None))
                         .values({column: now}))
        else:
            why = (done.detail or done.status) if done else "not recorded"
            add_event(conn, case.id, "alert_failed",
                      f"{what}: {why} (try {alert.tries} of {ALERT_TRIES})", alert.channel, now)
            log.error("recovery case %s: %s could not be sent (%s)", case.id, what, why)


def _attempts(conn: Connection, case_ids: Sequence[int],
              ) -> dict[tuple[int, str], notify.Attempts]:
    """``{(case, channel): attempts}`` from the alert touch points."""
    found: dict[tuple[int, str], notify.Attempts] = {}
    wanted = {f"case:{i}" for i in case_ids}
    rows = conn.execute(
        select(touch_points.c.anchor, touch_points.c.status, touch_points.c.finished_at)
        .where(touch_points.c.journey == "staff-alerts",
               touch_points.c.anchor.like("case:%"),
               touch_points.c.step.in_(("recovery-case", "recovery-case-sms",
                                        "recovery-escalation"))))
    for row in rows:
        prefix = row.anchor.rpartition(":")[0]  # case:12:email:1 → case:12:email
        base, _, channel = prefix.rpartition(":")
        if base in wanted:
            key = (int(base.split(":")[1]), channel)
            found.setdefault(key, notify.Attempts()).add(row.status, row.finished_at)
    return found


def _replies(conn: Connection, ids: Sequence[int]) -> dict[int, tuple[str, int | None]]:
    if not ids:
        return {}
    return {row.id: (row.body, row.score) for row in conn.execute(
        select(inbound_messages.c.id, inbound_messages.c.body, inbound_messages.c.score)
        .where(inbound_messages.c.id.in_(sorted(set(ids)))))}


# --------------------------------------------------------------------------- reports


def case_counts(conn: Connection, since: datetime | None = None) -> Mapping[str, int]:
    query = select(recovery_cases.c.cause, func.count()).group_by(recovery_cases.c.cause)
    if since is not None:
        query = query.where(recovery_cases.c.opened_at >= since)
    return {row[0]: int(row[1]) for row in conn.execute(query)}


def case_age(case: Case, now: datetime) -> timedelta:
    return (case.resolved_at or now) - case.opened_at
