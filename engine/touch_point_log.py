"""Reports over the ledger: the touch-point log, "why" for one touch point, and the
events planning set aside (``why --event``)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, false, func, select, update

from engine.definitions import Definitions
from engine.errors import NotFound
from engine.outcomes import EXPLANATIONS, Status
from engine.privacy import mask_address
from engine.store import ledger
from engine.store.ledger import HistoryEntry, TouchPoint
from engine.store.records import SetAside, set_aside_events
from engine.store.schema import (
    appointments,
    events,
    history,
    inbound_messages,
    patients,
    touch_points,
)

LOG_FIELDS = ("id", "patient_id", "appointment_id", "journey", "step", "channel", "recipient",
              "due_at", "sent_at", "status", "reason", "attempts", "provider_message_id",
              "purpose", "test", "appointment_confirmed", "detail", "events")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def log_rows(conn: Connection, *, patient: str | None = None, journey: str | None = None,
             status: str | None = None, reveal: bool = False, limit: int | None = None,
             statuses: Sequence[str] | None = None,
             between: tuple[datetime, datetime] | None = None,
             ) -> Iterator[dict[str, Any]]:
    """Touch points with the imported ids, oldest due first. Streams; never loads all.

    ``statuses`` keeps any of several statuses; ``between`` keeps those sent (or, if never
    sent, finished) in that window."""
    query = (
        select(touch_points, patients.c.external_id.label("patient_external_id"),
               appointments.c.external_id.label("appointment_external_id"),
               appointments.c.confirmed_at.label("appointment_confirmed_at"))
        .outerjoin(patients, patients.c.id == touch_points.c.patient_id)
        .outerjoin(appointments, appointments.c.id == touch_points.c.appointment_id)
        .order_by(touch_points.c.due_at, touch_points.c.id)
    )
    if patient is not None:
        query = query.where(patients.c.external_id == patient)
    if journey is not None:
        query = query.where(touch_points.c.journey == journey)
    if status is not None:
        query = query.where(touch_points.c.status == status)
    if statuses is not None:
        query = query.where(touch_points.c.status.in_(list(statuses)))
    if between is not None:
        moment = func.coalesce(touch_points.c.sent_at, touch_points.c.finished_at)
        query = query.where(moment >= between[0], moment < between[1])
    if limit is not None:
        query = query.limit(limit)
    # (on the statement: Connection.execution_options would leave the connection streaming
    # every later statement of the transaction, which PostgreSQL refuses for an INSERT)
    rows = conn.execute(query.execution_options(yield_per=500))
    for part in rows.partitions():
        reported = _delivery_events(conn, [row.id for row in part])
        for row in part:
            yield _log_row(row, reported.get(row.id, []), reveal)


def _delivery_events(conn: Connection, ids: list[int]) -> dict[int, list[str]]:
    """What providers reported for each of ``ids`` (delivered, opened, clicked, bounced…),
    in the order it arrived."""
    found: dict[int, list[str]] = defaultdict(list)
    query = (select(history.c.touch_point_id, history.c.reason)
             .where(history.c.touch_point_id.in_(ids),
                    history.c.kind == "delivery")
             .order_by(history.c.at, history.c.id))
    for tp_id, kind in conn.execute(query):
        found[tp_id].append(kind)
    return found


def _log_row(row: Any, reported: list[str], reveal: bool) -> dict[str, Any]:
    return {
        "id": row.id,
        "patient_id": row.patient_external_id,
        "appointment_id": row.appointment_external_id,
        "journey": row.journey,
        "step": row.step,
        "channel": row.channel,
        "recipient": row.address if reveal else mask_address(row.address) or None,
        "due_at": _iso(row.due_at),
        "sent_at": _iso(row.sent_at),
        "status": row.status,
        "reason": row.reason,
        "attempts": row.attempts,
        "provider_message_id": row.provider_message_id,
        "purpose": row.purpose,
        "test": row.test,
        "appointment_confirmed": row.appointment_confirmed_at is not None
        if row.appointment_id is not None else None,
        "detail": row.detail,
        "events": reported,
    }


@dataclass(frozen=True)
class JourneySummary:
    journey: str
    planned: int
    outcomes: Counter[str]
    reasons: dict[str, Counter[str]]


def summary(conn: Connection) -> list[JourneySummary]:
    """Per journey: how many touch points, and how they ended (status, and reason)."""
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    reasons: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    query = select(touch_points.c.journey, touch_points.c.status, touch_points.c.reason) \
        .where(touch_points.c.test == false())
    for journey, status, reason in conn.execute(query):
        outcomes[journey][status] += 1
        if status in (Status.SKIPPED, Status.CANCELLED, Status.FAILED, Status.UNKNOWN):
            reasons[journey][status][reason or "—"] += 1
    return [JourneySummary(j, sum(c.values()), c, dict(reasons[j]))
            for j, c in sorted(outcomes.items())]


@dataclass(frozen=True)
class Why:
    touch_point: TouchPoint
    patient_external_id: str
    patient_name: str
    appointment_external_id: str | None
    event: dict[str, Any] | None
    history: list[HistoryEntry]
    definition: str
    explanation: str

    def as_dict(self) -> dict[str, Any]:
        tp = self.touch_point
        return {
            "id": tp.id, "patient_id": self.patient_external_id,
            "appointment_id": self.appointment_external_id, "journey": tp.journey,
            "step": tp.step, "anchor": tp.anchor, "purpose": tp.purpose, "status": tp.status,
            "reason": tp.reason, "detail": tp.detail, "channel": tp.channel,
            "recipient": mask_address(tp.address) or None, "due_at": _iso(tp.due_at),
            "expires_at": _iso(tp.expires_at), "sent_at": _iso(tp.sent_at),
            "attempts": tp.attempts, "provider_message_id": tp.provider_message_id,
            "definition": self.definition, "explanation": self.explanation,
            "event": self.event,
            "history": [{"at": _iso(h.at), "kind": h.kind, "status": h.status,
                         "previous_status": h.previous_status, "reason": h.reason,
                         "detail": h.detail, "source": h.source} for h in self.history],
        }


def why(conn: Connection, tp_id: int, definitions: Definitions | None = None) -> Why:
    tp = ledger.get(conn, tp_id)
    if tp is None:
        raise NotFound(f"no touch point {tp_id} — list them with `touchpoint log`")
    patient = conn.execute(select(patients.c.external_id, patients.c.first_name,
                                  patients.c.last_name)
                           .where(patients.c.id == tp.patient_id)).first()
    appointment = None
    if tp.appointment_id is not None:
        appointment = conn.execute(select(appointments.c.external_id)
                                   .where(appointments.c.id == tp.appointment_id)).scalar()
    event = None
    if tp.event_id is not None:
        row = conn.execute(select(events).where(events.c.id == tp.event_id)).first()
        if row is not None:
            event = {"kind": row.kind, "occurred_at": _iso(row.occurred_at),
                     "source": row.source}
    definition = f"({tp.journey}/{tp.step} is no longer in schedules/)"
    if definitions is not None:
        journey = definitions.journey(tp.journey)
        step = journey.step(tp.step) if journey else None
        if journey is not None and step is not None:
            definition = (f"{journey.file}: step '{step.id}' — {step.when.describe()}, "
                          f"channels {', '.join(step.channels)}, template {step.template}")
    patient_id = patient.external_id if patient else "(test send)"
    name = f"{patient.first_name} {patient.last_name}".strip() if patient else ""
    return Why(tp, patient_id, name, appointment, event, ledger.history_of(conn, tp_id),
               definition, explain(tp))


def set_aside_rows(conn: Connection, *, patient: str | None = None) -> list[dict[str, Any]]:
    """Events planning set aside (of one imported patient), as ``why --event`` shows them."""
    return [_set_aside_row(item) for item in set_aside_events(conn, patient=patient)]


def why_event(conn: Connection, event_id: int) -> dict[str, Any]:
    """The story of an event planning set aside: nothing was planned from it, and why."""
    found = set_aside_events(conn, event_id=event_id)
    if not found:
        known = conn.execute(select(events.c.id).where(events.c.id == event_id)).first()
        raise NotFound(f"event {event_id} was not set aside — it was planned as usual; "
                       "`touchpoint log --patient ID` lists what it planned" if known else
                       f"no event {event_id} — `touchpoint log` lists the events set aside")
    return _set_aside_row(found[0])


def _set_aside_row(item: SetAside) -> dict[str, Any]:
    return {
        "event_id": item.id, "kind": item.kind, "patient_id": item.patient_id,
        "occurred_at": _iso(item.occurred_at), "source": item.source,
        "set_aside_at": _iso(item.failed_at), "error": item.error,
        "explanation": "Planning it raised the error above, so nothing was planned from it; "
                       "every other event was planned as usual. It is not retried: correct "
                       f"the value at its source ({item.source or '?'}) and import it again.",
    }


def explain(tp: TouchPoint) -> str:
    """The one-sentence answer to "why was this (not) sent?"."""
    if tp.status in (Status.SENT, Status.DELIVERED):
        verb = "delivered" if tp.status == Status.DELIVERED else "handed to the provider"
        return f"It was {verb} by {tp.channel} ({tp.provider}) at {_iso(tp.sent_at)}."
    if tp.status == Status.PLANNED:
        return f"It is planned for {_iso(tp.due_at)} and has not been sent yet."
    if tp.status == Status.SENDING:
        return "It is being sent right now."
    text = EXPLANATIONS.get(tp.reason or "", tp.reason or "no reason recorded")
    return f"It was {tp.status}: {text}" + (f" ({tp.detail})." if tp.detail else ".")


def inbox(conn: Connection, *, include_done: bool = False, reveal: bool = False,
          ) -> list[dict[str, Any]]:
    """Inbound messages staff should read, newest first."""
    query = (select(inbound_messages, patients.c.external_id, patients.c.first_name,
                    patients.c.last_name)
             .outerjoin(patients, patients.c.id == inbound_messages.c.patient_id)
             .order_by(inbound_messages.c.received_at.desc(), inbound_messages.c.id.desc()))
    if include_done:
        query = query.where(inbound_messages.c.staff_status != "")
    else:
        query = query.where(inbound_messages.c.staff_status == "new")
    return [{
        "id": row.id, "received_at": _iso(row.received_at), "intent": row.intent,
        "from": row.from_address if reveal else mask_address(row.from_address),
        "patient_id": row.external_id,
        "patient_name": f"{row.first_name or ''} {row.last_name or ''}".strip(),
        "body": row.body, "staff_status": row.staff_status,
        "flag": row.flag or None, "due_at": _iso(row.due_at),
    } for row in conn.execute(query)]


def mark_done(conn: Connection, message_id: int) -> bool:
    return bool(conn.execute(update(inbound_messages)
                             .where(inbound_messages.c.id == message_id,
                                    inbound_messages.c.staff_status != "")
                             .values(staff_status="done")).rowcount)
