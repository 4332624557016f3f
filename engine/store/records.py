"""Reading and writing patients, appointments, events and opt-outs."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    and_,
    any_,
    bindparam,
    delete,
    false,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from engine import outbound_webhooks
from engine.definitions.journeys import CHANNELS, PRIORITIES, SYSTEM_JOURNEYS
from engine.domain import Appointment, Contact, Event, Patient, Referrer
from engine.store.schema import (
    appointments,
    bind_time,
    contacts,
    engine_state,
    events,
    opt_outs,
    patients,
    read_time,
    referrers,
    touch_points,
)

_CHUNK = 500


def chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def among(conn: Connection, column: ColumnElement[Any], values: Sequence[Any],
          ) -> ColumnElement[bool]:
    """``column IN (values)`` with the values as one parameter — a JSON array on SQLite,
    an array on PostgreSQL — so the statement is the same for any number of them: it is
    compiled once, and hundreds of ids are not expanded into hundreds of parameters on
    every query (the dispatcher reads its batches this way)."""
    if conn.dialect.name == "sqlite":
        return column.in_(select(literal_column("value"))
                          .select_from(func.json_each(bindparam(None, json.dumps(list(values))))))
    return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))


def time_binder(dialect: str) -> Callable[[datetime | None], Any]:
    """:func:`bind_time` for the rows of one batch, remembering what it bound: their times
    repeat (visits start on the hour), and a dictionary lookup costs a tenth of formatting
    one. Equal instants bind alike whatever their timezone, so this is safe."""
    bound: dict[datetime | None, Any] = {None: None}

    def bind(instant: datetime | None) -> Any:
        try:
            return bound[instant]
        except KeyError:
            value = bound[instant] = bind_time(dialect, instant)
            return value
    return bind


# The columns a Patient, an Appointment and an Event hold, in their fields' order: planning
# and the dispatcher read thousands at a time and build them from the rows as they come
_PATIENT_COLUMNS = [patients.c[f.name] for f in fields(Patient)]
_APPOINTMENT_COLUMNS = [appointments.c[f.name] for f in fields(Appointment)]
_EVENT_COLUMNS_READ = [events.c[f.name] for f in fields(Event)]


def patient_from_row(row: Row[Any]) -> Patient:
    return Patient(
        id=row.id, external_id=row.external_id, first_name=row.first_name,
        last_name=row.last_name, phone=row.phone, email=row.email, language=row.language,
        timezone=row.timezone, sms_consent=row.sms_consent, email_consent=row.email_consent,
        marketing_consent=row.marketing_consent, custom=dict(row.custom or {}),
        date_of_birth=row.date_of_birth, referrer_id=row.referrer_id,
        discharged_on=row.discharged_on, removed_at=row.removed_at,
        plan_visits=row.plan_visits, plan_visits_per_week=row.plan_visits_per_week,
        plan_start=row.plan_start, plan_end=row.plan_end,
        intake_completed=bool(row.intake_completed), booking_url=row.booking_url,
    )


def contact_from_row(row: Row[Any]) -> Contact:
    return Contact(id=row.id, external_id=row.external_id, patient_id=row.patient_id,
                   relationship=row.relationship, first_name=row.first_name, phone=row.phone,
                   email=row.email, language=row.language, timezone=row.timezone,
                   sms_consent=row.sms_consent, email_consent=row.email_consent,
                   receives=row.receives, marketing_consent=row.marketing_consent)


def referrer_from_row(row: Row[Any]) -> Referrer:
    return Referrer(id=row.id, external_id=row.external_id, name=row.name,
                    contact_name=row.contact_name, email=row.email, fax=row.fax)


def load_contacts(conn: Connection, patient_ids: Iterable[int]) -> dict[int, list[Contact]]:
    """Each patient's contacts, in the order they were imported (removed ones left out)."""
    found: dict[int, list[Contact]] = {}
    for part in chunks(sorted(set(patient_ids))):
        for row in conn.execute(select(contacts).where(among(conn, contacts.c.patient_id, part),
                                                       contacts.c.removed_at.is_(None))
                                .order_by(contacts.c.id)):
            found.setdefault(row.patient_id, []).append(contact_from_row(row))
    return found


def patient_names(conn: Connection, ids: Iterable[int]) -> dict[int, str]:
    found: dict[int, str] = {}
    for part in chunks(sorted(set(ids))):
        for row in conn.execute(select(patients.c.id, patients.c.first_name,
                                       patients.c.last_name).where(patients.c.id.in_(part))):
            found[row.id] = f"{row.first_name} {row.last_name}".strip()
    return found


def load_referrers(conn: Connection, ids: Iterable[int]) -> dict[int, Referrer]:
    """The referral sources of these ids (removed ones left out: no longer recipients)."""
    found: dict[int, Referrer] = {}
    for part in chunks(sorted(set(ids))):
        for row in conn.execute(select(referrers).where(among(conn, referrers.c.id, part),
                                                        referrers.c.removed_at.is_(None))):
            found[row.id] = referrer_from_row(row)
    return found


def appointment_from_row(row: Row[Any]) -> Appointment:
    return Appointment(
        id=row.id, external_id=row.external_id, patient_id=row.patient_id,
        start_at=row.start_at, duration_minutes=row.duration_minutes, status=row.status,
        visit_type=row.visit_type, therapist=row.therapist, location=row.location,
        version=row.version, confirmed_at=row.confirmed_at, removed_at=row.removed_at,
    )


def load_patients(conn: Connection, ids: Iterable[int]) -> dict[int, Patient]:
    wanted = sorted(set(ids))
    found: dict[int, Patient] = {}
    for part in chunks(wanted):
        for row in conn.execute(select(*_PATIENT_COLUMNS).where(among(conn, patients.c.id, part))):
            found[row[0]] = Patient(*row)  # a Patient's columns, in order
    return found


def load_appointments(conn: Connection, ids: Iterable[int]) -> dict[int, Appointment]:
    wanted = sorted(set(ids))
    found: dict[int, Appointment] = {}
    for part in chunks(wanted):
        for row in conn.execute(select(*_APPOINTMENT_COLUMNS)
                                .where(among(conn, appointments.c.id, part))):
            found[row[0]] = Appointment(*row)  # an Appointment's columns, in order
    return found


def patient_by_external_id(conn: Connection, external_id: str) -> Patient | None:
    row = conn.execute(select(patients).where(patients.c.external_id == external_id)).first()
    return patient_from_row(row) if row else None


def appointments_of(conn: Connection, patient_id: int) -> list[Appointment]:
    rows = conn.execute(select(*_APPOINTMENT_COLUMNS)
                        .where(appointments.c.patient_id == patient_id)
                        .order_by(appointments.c.start_at))
    return [Appointment(*row) for row in rows]


def next_booked(conn: Connection, patient_ids: Iterable[int], now: datetime,
                ) -> dict[int, Appointment]:
    """Each patient's next booked appointment after ``now``."""
    found: dict[int, Appointment] = {}
    for part in chunks(sorted(set(patient_ids))):
        rows = conn.execute(
            select(*_APPOINTMENT_COLUMNS)
            .where(among(conn, appointments.c.patient_id, part), appointments.c.status == "booked",
                   appointments.c.start_at > now, appointments.c.removed_at.is_(None))
            .order_by(appointments.c.start_at))
        for row in rows:
            if row.patient_id not in found:
                found[row.patient_id] = Appointment(*row)
    return found


def visit_numbers(conn: Connection, appointment_ids: Iterable[int]) -> dict[int, int]:
    """For each appointment, how many of its patient's completed visits started at or before it."""
    found: dict[int, int] = {}
    for part in chunks(sorted(set(appointment_ids))):
        this = appointments.alias("this")
        done = appointments.alias("done")
        rows = conn.execute(
            select(this.c.id, func.count(done.c.id))
            .select_from(this.outerjoin(done, and_(
                done.c.patient_id == this.c.patient_id, done.c.status == "completed",
                done.c.start_at <= this.c.start_at)))
            .where(among(conn, this.c.id, part)).group_by(this.c.id))
        found.update({row[0]: int(row[1]) for row in rows})
    return found


def _events_from(rows: Iterable[Any]) -> list[Event]:
    """Events from rows of ``_EVENT_COLUMNS_READ``."""
    return [Event(id_, kind, patient_id, appointment_id, occurred_at, data or {}, source)
            for id_, kind, patient_id, appointment_id, occurred_at, data, source in rows]


def pending_events(conn: Connection, limit: int) -> list[Event]:
    return _events_from(conn.execute(select(*_EVENT_COLUMNS_READ)
                                     .where(events.c.processed_at.is_(None))
                                     .order_by(events.c.id).limit(limit)))


def load_events(conn: Connection, ids: Sequence[int]) -> list[Event]:
    found: list[Event] = []
    for part in chunks(list(ids)):
        found.extend(_events_from(conn.execute(select(*_EVENT_COLUMNS_READ)
                                               .where(among(conn, events.c.id, part)))))
    return found


def mark_processed(conn: Connection, ids: Sequence[int], now: datetime) -> None:
    for part in chunks(ids):
        conn.execute(update(events).where(events.c.id.in_(part)).values(processed_at=now))


def set_aside(conn: Connection, errors: Mapping[int, str], now: datetime) -> None:
    """Set aside events whose planning failed: processed (never retried), with the error."""
    for event_id, error in errors.items():
        conn.execute(update(events).where(events.c.id == event_id)
                     .values(processed_at=now, failed_at=now, error=error))


@dataclass(frozen=True)
class SetAside:
    """An event planning could not handle: nothing was planned from it."""

    id: int
    kind: str
    patient_id: str  # the imported patient_id
    occurred_at: datetime
    source: str
    failed_at: datetime
    error: str


def set_aside_events(conn: Connection, *, patient: str | None = None,
                     event_id: int | None = None) -> list[SetAside]:
    """Set-aside events (of one imported patient, or one event), oldest first."""
    query = (select(events.c.id, events.c.kind, patients.c.external_id, events.c.occurred_at,
                    events.c.source, events.c.failed_at, events.c.error)
             .join(patients, patients.c.id == events.c.patient_id)
             .where(events.c.failed_at.is_not(None)).order_by(events.c.id))
    if patient is not None:
        query = query.where(patients.c.external_id == patient)
    if event_id is not None:
        query = query.where(events.c.id == event_id)
    return [SetAside(*row) for row in conn.execute(query)]


def count_set_aside(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(events)
                            .where(events.c.failed_at.is_not(None))).scalar() or 0)


_EVENT_COLUMNS = ("kind", "patient_id", "appointment_id", "occurred_at", "data", "source",
                  "dedupe_key", "processed_at")


def append_events(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Append events (mappings of ``_EVENT_COLUMNS``); one whose ``dedupe_key`` is already
    recorded is skipped. Returns how many were added.

    A first import appends hundreds of thousands, so this is driver-level executemany, as
    planning's inserts are: SQLAlchemy's processing of each row's parameters took longer
    than SQLite's own work.
    """
    if not rows:
        return 0
    dialect = conn.dialect.name
    mark = "?" if dialect == "sqlite" else "%s"
    statement = (f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES "
                 f"({', '.join([mark] * len(_EVENT_COLUMNS))}) "
                 "ON CONFLICT (dedupe_key) DO NOTHING")
    time = time_binder(dialect)
    values = [(r["kind"], r["patient_id"], r["appointment_id"], time(r["occurred_at"]),
               json.dumps(r["data"]), r["source"], r["dedupe_key"], time(r["processed_at"]))
              for r in rows]
    added = 0
    for start in range(0, len(values), 2000):  # executemany: rowcount is the rows inserted
        added += conn.exec_driver_sql(statement, values[start:start + 2000]).rowcount
    return added


def opt_out_address(channel: str, address: str) -> str:
    """The address as opt-outs store it: email addresses in lower case (``Pat@X.com`` and
    ``pat@x.com`` are one inbox to an unsubscribe), phone numbers as they are (E.164)."""
    return address.strip().lower() if channel == "email" else address


def opted_out(conn: Connection, addresses: Iterable[str]) -> dict[tuple[str, str], set[str]]:
    """``{(channel, address): {purposes}}`` for every opt-out recorded for these addresses,
    keyed by each address as given (an email opt-out matches it in any case).

    Naming the channels lets the lookup search the (channel, address, purpose) key; by
    address alone it scanned the whole key, for every batch the dispatcher sends.
    """
    given = set(addresses)
    as_stored: dict[str, set[str]] = {}  # stored form → the addresses given for it
    for address in given:
        as_stored.setdefault(address, set()).add(address)
        as_stored.setdefault(opt_out_address("email", address), set()).add(address)
    found: dict[tuple[str, str], set[str]] = {}
    for part in chunks(sorted(as_stored)):
        rows = conn.execute(select(opt_outs.c.channel, opt_outs.c.address, opt_outs.c.purpose)
                            .where(opt_outs.c.channel.in_(CHANNELS),
                                   among(conn, opt_outs.c.address, part)))
        for channel, address, purpose in rows:
            matches = as_stored.get(address, set()) if channel == "email" \
                else {address} & given
            for original in matches:
                found.setdefault((channel, original), set()).add(purpose)
    return found


def as_utc(value: object) -> datetime:
    """An instant from an aggregate (``max``, ``min``), which may come back as the
    driver gives it, as an aware UTC datetime."""
    instant = read_time(value)
    assert instant is not None
    return instant


def get_state(conn: Connection, key: str) -> dict[str, Any] | None:
    row = conn.execute(select(engine_state.c.value).where(engine_state.c.key == key)).first()
    return dict(row.value) if row else None


def put_state(conn: Connection, key: str, value: Mapping[str, Any], now: datetime) -> None:
    updated = conn.execute(update(engine_state).where(engine_state.c.key == key)
                           .values(value=dict(value), updated_at=now))
    if updated.rowcount == 0:
        conn.execute(insert(engine_state).values(key=key, value=dict(value), updated_at=now))


def latest_events(conn: Connection, patient_ids: Iterable[int], kinds: Iterable[str],
                  ) -> dict[int, dict[str, datetime]]:
    """``{patient_id: {kind: latest occurred_at}}`` for the given event kinds."""
    wanted_kinds = sorted(set(kinds))
    found: dict[int, dict[str, datetime]] = {}
    if not wanted_kinds:
        return found
    for part in chunks(sorted(set(patient_ids))):
        rows = conn.execute(
            select(events.c.patient_id, events.c.kind, func.max(events.c.occurred_at))
            .where(among(conn, events.c.patient_id, part), events.c.kind.in_(wanted_kinds))
            .group_by(events.c.patient_id, events.c.kind))
        for patient_id, kind, at in rows:
            found.setdefault(patient_id, {})[kind] = as_utc(at)
    return found


def add_opt_out(conn: Connection, channel: str, address: str, purpose: str, source: str,
                detail: str, now: datetime) -> bool:
    """Record an opt-out; False if the address had already opted out of that purpose."""
    address = opt_out_address(channel, address)
    existing = opted_out(conn, [address]).get((channel, address), set())
    if purpose in existing or "all" in existing:
        return False
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    result = conn.execute(dialect.insert(opt_outs).values(
        channel=channel, address=address, purpose=purpose, source=source, detail=detail,
        created_at=now).on_conflict_do_nothing(index_elements=["channel", "address", "purpose"]))
    if not result.rowcount:
        return False
    outbound_webhooks.emit_opt_out(conn, channel, address, purpose, source, now)
    return True


def remove_opt_outs(conn: Connection, channel: str, address: str,
                    purpose: str | None = None) -> int:
    """Opt an address back in: every purpose of that channel (START), or one."""
    conditions = [opt_outs.c.channel == channel,
                  opt_outs.c.address == opt_out_address(channel, address)]
    if purpose is not None:
        conditions.append(opt_outs.c.purpose == purpose)
    return int(conn.execute(delete(opt_outs).where(*conditions)).rowcount)


@dataclass(frozen=True)
class RecentSend:
    purpose: str
    channel: str
    at: datetime
    recipient: str = "patient"  # caps count what each person received
    journey: str = ""
    step: str = ""
    # ranks it against the message a limit would hold (Definitions.priority)
    priority: int = PRIORITIES["nudge"]


@dataclass(frozen=True)
class PlannedSend:
    """A touch point planned for a patient (not sent yet): what a limit keeps room for."""

    id: int
    patient_id: int
    recipient: str
    journey: str
    step: str
    purpose: str
    channel: str | None  # the channel a retry goes back to; None: the step's first
    due_at: datetime
    # ranks it against the message a limit would hold (Definitions.priority)
    priority: int = PRIORITIES["nudge"]


def planned_sends(conn: Connection, patient_ids: Iterable[int], until: datetime,
                  purpose: str = "transactional", *, besides: Collection[int] = (),
                  ) -> dict[int, list[PlannedSend]]:
    """Each patient's ``purpose`` touch points still planned, due by ``until`` (overdue
    ones too), but those in ``besides`` (ids the caller holds already). Test sends and
    system journeys are left out, as in :func:`recent_sends`."""
    found: dict[int, list[PlannedSend]] = {}
    for part in chunks(sorted(set(patient_ids))):
        query = select(
            touch_points.c.id, touch_points.c.patient_id, touch_points.c.recipient,
            touch_points.c.journey, touch_points.c.step, touch_points.c.purpose,
            touch_points.c.channel, touch_points.c.due_at,
        ).where(among(conn, touch_points.c.patient_id, part),
                touch_points.c.status == "planned", touch_points.c.due_at <= until,
                touch_points.c.purpose == purpose, touch_points.c.test == false(),
                touch_points.c.journey.not_in(SYSTEM_JOURNEYS))
        if besides:
            query = query.where(~among(conn, touch_points.c.id, sorted(besides)))
        rows = conn.execute(query)
        for row in rows:
            found.setdefault(row.patient_id, []).append(PlannedSend(
                row.id, row.patient_id, row.recipient, row.journey, row.step, row.purpose,
                row.channel, row.due_at))
    return found


def recent_sends(conn: Connection, patient_ids: Iterable[int], since: datetime,
                 ) -> dict[int, list[RecentSend]]:
    """What each patient was sent (or may have been: sending/unknown) since ``since``.

    Test sends, replies to their messages and staff alerts do not count.
    """
    found: dict[int, list[RecentSend]] = {}
    for part in chunks(sorted(set(patient_ids))):
        rows = conn.execute(
            select(touch_points.c.patient_id, touch_points.c.purpose, touch_points.c.channel,
                   touch_points.c.sending_at, touch_points.c.recipient,
                   touch_points.c.journey, touch_points.c.step)
            .where(among(conn, touch_points.c.patient_id, part),
                   touch_points.c.status.in_(("sending", "sent", "delivered", "unknown")),
                   touch_points.c.sending_at >= since, touch_points.c.test == false(),
                   touch_points.c.journey.not_in(SYSTEM_JOURNEYS)))
        for row in rows:
            found.setdefault(row.patient_id, []).append(
                RecentSend(row.purpose, row.channel, row.sending_at, row.recipient,
                           row.journey, row.step))
    return found
