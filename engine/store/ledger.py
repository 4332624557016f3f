"""The ledger: one row per touch point, plus an append-only history of what happened to it.

* Planning is idempotent: the unique key (patient, recipient, journey, step, anchor)
  turns a second plan of the same touch point into a no-op (``ON CONFLICT DO NOTHING``).
* Claiming is atomic: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the claim runs
  in a ``BEGIN IMMEDIATE`` transaction, which serialises writers. A claim is a lease:
  if its worker vanishes, the rows become claimable again when the lease expires.
* Every status change goes through :func:`transition`, which only moves a row out of the
  status the caller expects and appends the matching history entry in the same
  transaction. A row in ``sending`` is only ever moved by the worker that set it, or by
  :func:`recover_interrupted` (to ``unknown``, never back to ``planned``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, bindparam, false, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from engine.definitions.journeys import SYSTEM_JOURNEYS
from engine.outcomes import Status
from engine.planner import Exit, Planned
from engine.store.records import chunks, opt_out_address, time_binder
from engine.store.schema import (
    IN_FLIGHT,
    PENDING,
    bind_time,
    history,
    read_time,
    touch_points,
)


@dataclass(frozen=True)
class TouchPoint:
    id: int
    patient_id: int | None  # None only for test sends
    appointment_id: int | None
    recipient: str
    test: bool
    journey: str
    step: str
    anchor: str
    purpose: str
    event_id: int | None
    step_fingerprint: str
    due_at: datetime
    expires_at: datetime | None
    status: str
    reason: str | None
    detail: str | None
    channel: str | None
    address: str | None
    provider: str | None
    provider_message_id: str | None
    template_file: str | None
    content: str | None
    attempts: int
    claimed_by: str | None
    claim_expires_at: datetime | None
    sending_at: datetime | None
    sent_at: datetime | None
    finished_at: datetime | None
    planned_at: datetime
    updated_at: datetime


_FIELDS = tuple(f.name for f in fields(TouchPoint))


def touch_point_from_row(row: Row[Any]) -> TouchPoint:
    if row._fields == _FIELDS:  # a whole row, in table order (claims read 500 at a time)
        return TouchPoint(*row)  # type: ignore[call-arg]
    mapping = row._mapping
    return TouchPoint(**{name: mapping[name] for name in _FIELDS})


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    touch_point_id: int
    at: datetime
    kind: str
    status: str | None
    previous_status: str | None
    reason: str | None
    detail: str | None
    source: str
    provider_event_id: str | None


def _insert_ignoring_duplicates(conn: Connection) -> Any:
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    return dialect.insert(touch_points).on_conflict_do_nothing(
        index_elements=["patient_id", "recipient", "journey", "step", "anchor"])


_PLANNED_COLUMNS = ("patient_id", "appointment_id", "recipient", "test", "journey", "step",
                    "anchor", "purpose", "event_id", "step_fingerprint", "due_at",
                    "expires_at", "status", "reason", "detail", "attempts", "finished_at",
                    "planned_at", "updated_at")


def insert_planned(conn: Connection, planned: Sequence[Planned], now: datetime) -> int:
    """Insert what is new and ignore what is already planned (the unique key); record the
    creation of each new one in its history. Returns how many were new.

    Planning writes hundreds of thousands of rows on a first import, so this runs as
    driver-level executemany: the new rows' history is copied from the rows themselves
    (``INSERT … SELECT``), which needs no RETURNING.
    """
    if not planned:
        return 0
    dialect = conn.dialect.name
    mark = "?" if dialect == "sqlite" else "%s"
    columns = ", ".join(_PLANNED_COLUMNS)
    conflict = "ON CONFLICT (patient_id, recipient, journey, step, anchor) DO NOTHING"
    insert_sql = (f"INSERT INTO touch_points ({columns}) VALUES "
                  f"({', '.join([mark] * len(_PLANNED_COLUMNS))}) {conflict}")
    at = bind_time(dialect, now)
    time = time_binder(dialect)
    false_ = 0 if dialect == "sqlite" else False
    rows = [(p.patient_id, p.appointment_id, p.recipient, false_, p.journey, p.step,
             p.anchor, p.purpose, p.event_id, p.step_fingerprint,
             time(p.due_at), time(p.expires_at), p.status,
             p.reason, p.detail, 0, at if p.status != Status.PLANNED else None, at, at)
            for p in planned]
    before = conn.exec_driver_sql("SELECT max(id) FROM touch_points").scalar() or 0
    added = 0
    for start in range(0, len(rows), 2000):  # executemany: rowcount is the rows inserted
        added += conn.exec_driver_sql(insert_sql, rows[start:start + 2000]).rowcount
    if added:  # the new rows are those past the highest id before (planning is a singleton)
        conn.exec_driver_sql(
            "INSERT INTO touch_point_history (touch_point_id, at, kind, status, "
            "previous_status, reason, detail, source, provider_event_id) "
            f"SELECT t.id, {mark}, 'transition', t.status, NULL, t.reason, t.detail, "
            f"'planner', NULL FROM touch_points t WHERE t.id > {mark} "
            "AND NOT EXISTS (SELECT 1 FROM touch_point_history h WHERE h.touch_point_id = t.id)",
            (at, before))
    return added


def sibling_sent_to(conn: Connection, tp: TouchPoint, address: str) -> int | None:
    """The id of a touch point of the same message (patient, journey, step, anchor) for
    another recipient that went, or is going, to ``address``."""
    return conn.execute(
        select(touch_points.c.id)
        .where(touch_points.c.patient_id == tp.patient_id,
               touch_points.c.journey == tp.journey, touch_points.c.step == tp.step,
               touch_points.c.anchor == tp.anchor, touch_points.c.id != tp.id,
               touch_points.c.address == address,
               touch_points.c.status.in_((Status.SENDING, Status.SENT, Status.DELIVERED,
                                          Status.UNKNOWN)))
        .limit(1)).scalar()


def apply_exit(conn: Connection, exit: Exit, now: datetime) -> list[int]:
    """Cancel the pending touch points an exit names. Returns their ids."""
    conditions = [
        touch_points.c.patient_id == exit.patient_id,
        touch_points.c.journey == exit.journey,
        touch_points.c.step.in_(exit.steps),
        touch_points.c.status == Status.PLANNED,
    ]
    if exit.anchor_prefix is not None and exit.anchor_prefix.endswith(":"):
        conditions.append(touch_points.c.anchor.startswith(exit.anchor_prefix, autoescape=True))
    elif exit.anchor_prefix is not None:  # a whole anchor: that run only
        conditions.append(touch_points.c.anchor == exit.anchor_prefix)
    if exit.spare_anchor is not None:
        conditions.append(touch_points.c.anchor != exit.spare_anchor)
    cancelled = conn.execute(
        update(touch_points).where(*conditions)
        .values(status=Status.CANCELLED, reason=exit.reason, detail=exit.detail,
                claimed_by=None, claim_expires_at=None, finished_at=now, updated_at=now)
        .returning(touch_points.c.id)).scalars().all()
    _append_history(conn, cancelled, now, Status.CANCELLED, Status.PLANNED, exit.reason,
                    exit.detail, "planner")
    return list(cancelled)


def cancel_pending(conn: Connection, journey: str, step: str, reason: str, detail: str,
                   now: datetime) -> list[int]:
    """Cancel every pending touch point of one journey step (it was removed)."""
    cancelled = conn.execute(
        update(touch_points)
        .where(touch_points.c.journey == journey, touch_points.c.step == step,
               touch_points.c.status == Status.PLANNED, touch_points.c.test == false())
        .values(status=Status.CANCELLED, reason=reason, detail=detail, claimed_by=None,
                claim_expires_at=None, finished_at=now, updated_at=now)
        .returning(touch_points.c.id)).scalars().all()
    _append_history(conn, cancelled, now, Status.CANCELLED, Status.PLANNED, reason, detail,
                    "definitions")
    return list(cancelled)


def cancel_matching(conn: Connection, where: Sequence[Any], reason: str, detail: str,
                    now: datetime, source: str) -> list[int]:
    """Cancel the pending touch points matching ``where`` (claimed ones too: the batch
    holding one finds it gone at its ``sending`` mark) and log each. Returns their ids."""
    cancelled = conn.execute(
        update(touch_points).where(*where, PENDING)
        .values(status=Status.CANCELLED, reason=reason, detail=detail, claimed_by=None,
                claim_expires_at=None, finished_at=now, updated_at=now)
        .returning(touch_points.c.id)).scalars().all()
    _append_history(conn, cancelled, now, Status.CANCELLED, Status.PLANNED, reason, detail,
                    source)
    return list(cancelled)


def retire(conn: Connection, tp_id: int, status: str, reason: str, detail: str,
           now: datetime) -> int:
    """End one pending touch point after an edit (1 if it was still pending)."""
    return int(transition(conn, tp_id, expect=Status.PLANNED, to=status, now=now,
                          source="definitions", reason=reason, detail=detail,
                          values={"claimed_by": None, "claim_expires_at": None}))


def retime(conn: Connection, tp_id: int, planned: Planned, now: datetime, detail: str) -> int:
    """Move a pending touch point to the time its edited step now gives it."""
    result = conn.execute(
        update(touch_points)
        .where(touch_points.c.id == tp_id, touch_points.c.status == Status.PLANNED)
        .values(due_at=planned.due_at, expires_at=planned.expires_at,
                step_fingerprint=planned.step_fingerprint, claimed_by=None,
                claim_expires_at=None, updated_at=now))
    if result.rowcount != 1:
        return 0
    _append_history(conn, [tp_id], now, Status.PLANNED, Status.PLANNED, "schedule_changed",
                    detail, "definitions", kind="retimed")
    return 1


_HISTORY_INSERT = insert(history)


def _append_history(conn: Connection, ids: Iterable[int], now: datetime, status: str | None,
                    previous: str | None, reason: str | None, detail: str | None,
                    source: str, kind: str = "transition") -> None:
    rows = [{"touch_point_id": tp_id, "at": now, "kind": kind, "status": status,
             "previous_status": previous, "reason": reason, "detail": detail, "source": source,
             "provider_event_id": None} for tp_id in ids]
    if rows:
        conn.execute(_HISTORY_INSERT, rows)


def claim_due(conn: Connection, worker: str, now: datetime, limit: int, lease: timedelta,
              ) -> list[TouchPoint]:
    """Lease up to ``limit`` due, planned touch points to ``worker``, oldest first.

    It runs once per batch of hundreds, as driver-level SQL: building and reading the rows
    through SQLAlchemy's statement and result machinery cost several times the claim."""
    dialect = conn.dialect.name
    claim = _CLAIMS.get(dialect)
    if claim is None:
        claim = _CLAIMS[dialect] = _claim_sql(dialect)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    at = bind_time(dialect, now)
    cursor.execute(claim, (worker, bind_time(dialect, now + lease), at, at, limit))
    claimed = [_from_driver_row(dialect, row) for row in cursor.fetchall()]
    claimed.sort(key=lambda tp: (tp.due_at, tp.id))
    return claimed


_CLAIMS: dict[str, str] = {}


def _claim_sql(dialect: str) -> str:
    mark, false_ = ("?", "0") if dialect == "sqlite" else ("%s", "false")
    system = ", ".join(f"'{name}'" for name in SYSTEM_JOURNEYS)
    lock = "" if dialect == "sqlite" else " FOR UPDATE SKIP LOCKED"
    return (f"UPDATE touch_points SET claimed_by = {mark}, claim_expires_at = {mark} "
            "WHERE id IN (SELECT id FROM touch_points WHERE status = 'planned' "
            f"AND due_at <= {mark} AND (claim_expires_at IS NULL OR claim_expires_at < {mark}) "
            f"AND test = {false_} AND journey NOT IN ({system}) "
            f"ORDER BY due_at, id LIMIT {mark}{lock}) "
            f"RETURNING {', '.join(_FIELDS)}")


def _from_driver_row(dialect: str, row: Sequence[Any]) -> TouchPoint:
    """A TouchPoint from a driver row of :data:`_FIELDS`, converted as the column types
    would (aware UTC datetimes, booleans)."""
    values = list(row)
    for index in _TIME_INDEXES:
        values[index] = read_time(values[index])
    values[_TEST_INDEX] = bool(values[_TEST_INDEX])
    return TouchPoint(*values)


_TIME_INDEXES = tuple(i for i, f in enumerate(fields(TouchPoint))
                      if f.type in ("datetime", "datetime | None"))
_TEST_INDEX = _FIELDS.index("test")


_SETTLED = frozenset({Status.SENT, Status.DELIVERED, Status.FAILED, Status.SKIPPED,
                      Status.CANCELLED, Status.UNKNOWN})
_TRANSITIONS: dict[tuple[tuple[str, ...], bool], Any] = {}


def _transition_statement(columns: tuple[str, ...], by_worker: bool) -> Any:
    """One UPDATE per shape of change, built once: the dispatch loop runs it per message,
    and building SQLAlchemy statements costs more than executing them."""
    key = (columns, by_worker)
    statement = _TRANSITIONS.get(key)
    if statement is None:
        conditions = [touch_points.c.id == bindparam("w_id"),
                      touch_points.c.status == bindparam("w_expect")]
        if by_worker:
            conditions.append(touch_points.c.claimed_by == bindparam("w_worker"))
        statement = update(touch_points).where(*conditions).values(
            {column: bindparam(f"v_{column}") for column in columns})
        _TRANSITIONS[key] = statement
    return statement


def transition(conn: Connection, tp_id: int, *, expect: str, to: str, now: datetime,
               source: str, reason: str | None = None, detail: str | None = None,
               worker: str | None = None, values: dict[str, Any] | None = None,
               record: bool = True) -> bool:
    """Move one touch point from ``expect`` to ``to`` and log it; False if it was not there.

    With ``worker``, the row must also be claimed by that worker.
    """
    changes: dict[str, Any] = {"status": to, "reason": reason, "detail": detail,
                               "updated_at": now, **(values or {})}
    if to in _SETTLED and "finished_at" not in changes:
        changes["finished_at"] = now
    columns = tuple(sorted(changes))
    params = {f"v_{column}": changes[column] for column in columns}
    params.update(w_id=tp_id, w_expect=expect, w_worker=worker)
    result = conn.execute(_transition_statement(columns, worker is not None), params)
    if result.rowcount != 1:
        return False
    if record:
        conn.execute(_HISTORY_INSERT, {
            "touch_point_id": tp_id, "at": now, "kind": "transition", "status": to,
            "previous_status": expect, "reason": reason, "detail": detail, "source": source,
            "provider_event_id": None})
    return True


def reschedule(conn: Connection, tp_id: int, *, worker: str, expect: str, due_at: datetime,
               now: datetime, reason: str, detail: str) -> bool:
    """Put a claimed touch point (``planned`` for quiet hours, ``sending`` after a transient
    error) back to ``planned`` at ``due_at``, saying why."""
    result = conn.execute(
        update(touch_points)
        .where(touch_points.c.id == tp_id, touch_points.c.claimed_by == worker,
               touch_points.c.status == expect)
        .values(status=Status.PLANNED, due_at=due_at, claimed_by=None, claim_expires_at=None,
                reason=reason, detail=detail, updated_at=now))
    if result.rowcount != 1:
        return False
    _append_history(conn, [tp_id], now, Status.PLANNED, expect, reason, detail, "dispatcher",
                    kind="deferred")
    return True


def insert_immediate(conn: Connection, *, patient_id: int | None, journey: str, step: str,
                     purpose: str, recipient: str, anchor: str, worker: str, now: datetime,
                     appointment_id: int | None = None, test: bool = False,
                     source: str = "reply") -> TouchPoint:
    """A touch point sent at once outside any journey run (a test send, a reply to a
    patient's text, a staff alert), already claimed by ``worker``: never dispatched."""
    row = conn.execute(insert(touch_points).values(
        patient_id=patient_id, appointment_id=appointment_id, recipient=recipient, test=test,
        journey=journey, step=step, anchor=anchor, purpose=purpose, event_id=None,
        step_fingerprint="", due_at=now, expires_at=None, status=Status.PLANNED, attempts=0,
        claimed_by=worker, claim_expires_at=now + timedelta(minutes=5), planned_at=now,
        updated_at=now)
        .returning(*touch_points.c)).one()
    _append_history(conn, [row.id], now, Status.PLANNED, None, None, source, source)
    return touch_point_from_row(row)


def release(conn: Connection, ids: Sequence[int], worker: str) -> None:
    """Give back claimed rows this worker did not get to (e.g. on shutdown)."""
    for part in chunks(list(ids)):
        conn.execute(update(touch_points)
                     .where(touch_points.c.id.in_(part), touch_points.c.claimed_by == worker,
                            touch_points.c.status == Status.PLANNED)
                     .values(claimed_by=None, claim_expires_at=None))


def release_all(conn: Connection, worker: str) -> int:
    """Give back every planned row ``worker`` still holds a claim on (on shutdown)."""
    return int(conn.execute(update(touch_points)
                            .where(touch_points.c.claimed_by == worker,
                                   touch_points.c.status == Status.PLANNED)
                            .values(claimed_by=None, claim_expires_at=None)).rowcount)


def recover_interrupted(conn: Connection, now: datetime, timeout: timedelta) -> list[int]:
    """``sending`` rows older than ``timeout`` (their worker died mid-send) → ``unknown``."""
    stale = conn.execute(
        update(touch_points)
        .where(IN_FLIGHT, touch_points.c.sending_at < now - timeout)
        .values(status=Status.UNKNOWN, reason="interrupted", claimed_by=None,
                claim_expires_at=None, finished_at=now, updated_at=now,
                detail="the sender stopped between calling the provider and recording the "
                       "result; not re-sent — waiting for a provider callback or staff")
        .returning(touch_points.c.id)).scalars().all()
    _append_history(conn, stale, now, Status.UNKNOWN, Status.SENDING, "interrupted",
                    "sender stopped mid-send", "recovery")
    return list(stale)


def get(conn: Connection, tp_id: int) -> TouchPoint | None:
    row = conn.execute(select(touch_points).where(touch_points.c.id == tp_id)).first()
    return touch_point_from_row(row) if row else None


def history_of(conn: Connection, tp_id: int) -> list[HistoryEntry]:
    rows = conn.execute(select(history).where(history.c.touch_point_id == tp_id)
                        .order_by(history.c.at, history.c.id))
    return [HistoryEntry(**{f.name: row._mapping[f.name] for f in fields(HistoryEntry)})
            for row in rows]


def next_due(conn: Connection) -> datetime | None:
    """When the next touch point the dispatcher will claim is due."""
    row = conn.execute(select(touch_points.c.due_at)
                       .where(PENDING, touch_points.c.test == false(),
                              touch_points.c.journey.not_in(SYSTEM_JOURNEYS))
                       .order_by(touch_points.c.due_at).limit(1)).first()
    return row.due_at if row else None


@dataclass(frozen=True)
class Recheck:
    """What the send-time guards read from a batch's snapshot that must still be true
    when one touch point is marked ``sending`` (:meth:`SendPath.mark_sending`).

    The mark re-checks it in its own statement, so a cancellation, a move or an opt-out
    committed while the batch is being sent stops every message not yet handed to the
    provider: the address has no opt-out covering ``purpose`` on the channel; the
    appointment is still in the (status, version) the guards saw, and not removed; none of the
    patient-scoped ``exits`` events happened after ``planned_at``; the recovery case is
    still open; a waitlist offer's slot is still open and the offer still ``offered``.
    """

    purpose: str
    patient_id: int
    planned_at: datetime
    appointment: tuple[int, str, int] | None = None  # (id, status, version)
    exits: tuple[str, ...] = ()
    case_id: int | None = None
    offer: tuple[int, int] | None = None  # (slot id, patient id): the offer still stands


class SendPath:
    """The two writes every message makes — ``planned → sending`` before the provider is
    called, ``sending → sent`` after — as precompiled driver-level SQL.

    They run once per message, so they skip SQLAlchemy's statement machinery (which costs
    several times what the database does) while staying inside the caller's SQLAlchemy
    transaction. Their history rows are buffered and written with the next statement
    batch of the same transaction (:meth:`flush_history`), so the history stays complete
    and in order. Semantics are those of :func:`transition`.

    With a :class:`Recheck`, the ``sending`` mark is conditional on it: on PostgreSQL
    (READ COMMITTED) the statement sees everything committed before it started; on SQLite
    it runs in a ``BEGIN IMMEDIATE`` transaction, after every other writer's commit. A
    mark that matches no row while the row is still this worker's (:meth:`held`) means
    something the guards read has changed: the caller re-reads it and decides again.
    """

    _SENDING = (
        "UPDATE touch_points SET status = 'sending', reason = NULL, detail = {p}, "
        "updated_at = {p}, channel = {p}, address = {p}, provider = {p}, attempts = {p}, "
        "sending_at = {p}, template_file = {p}, content = {p} "
        "WHERE id = {p} AND status = 'planned' AND claimed_by = {p}")
    # The conditions a Recheck adds to _SENDING, in this order (SQLite and PostgreSQL)
    _NOT_OPTED_OUT = (" AND NOT EXISTS (SELECT 1 FROM opt_outs WHERE channel = {p} "
                      "AND address = {p} AND purpose IN ('all', {p}))")
    _SAME_APPOINTMENT = (" AND EXISTS (SELECT 1 FROM appointments WHERE id = {p} "
                         "AND status = {p} AND version = {p} AND removed_at IS NULL)")
    _NO_EXIT = (" AND NOT EXISTS (SELECT 1 FROM events WHERE patient_id = {p} "
                "AND occurred_at > {p} AND kind {kinds})")
    _CASE_OPEN = (" AND EXISTS (SELECT 1 FROM recovery_cases WHERE id = {p} "
                  "AND status = 'open')")
    _OFFER_STANDS = (" AND EXISTS (SELECT 1 FROM slot_offers JOIN slots ON slots.id = "
                     "slot_offers.slot_id WHERE slot_offers.slot_id = {p} AND "
                     "slot_offers.patient_id = {p} AND slot_offers.status = 'offered' "
                     "AND slots.status = 'open')")
    _HELD = "SELECT 1 FROM touch_points WHERE id = {p} AND status = 'planned' AND claimed_by = {p}"
    _SENT = (
        "UPDATE touch_points SET status = 'sent', reason = NULL, detail = {p}, "
        "updated_at = {p}, finished_at = {p}, provider_message_id = {p}, provider = {p}, "
        "sent_at = {p}, claimed_by = NULL, claim_expires_at = NULL "
        "WHERE id = {p} AND status = {p}")
    _HISTORY = (
        "INSERT INTO touch_point_history (touch_point_id, at, kind, status, previous_status, "
        "reason, detail, source, provider_event_id) "
        "VALUES ({p}, {p}, 'transition', {p}, {p}, NULL, {p}, 'dispatcher', NULL)")

    def __init__(self, dialect: str) -> None:
        mark = "?" if dialect == "sqlite" else "%s"
        self.sqlite = dialect == "sqlite"
        self.sending_sql = self._SENDING.format(p=mark)
        self.sent_sql = self._SENT.format(p=mark)
        self.history_sql = self._HISTORY.format(p=mark)
        self.held_sql = self._HELD.format(p=mark)
        self._mark = mark
        self._rechecked: dict[tuple[bool, int, bool, bool], str] = {}
        self.history: list[tuple[Any, ...]] = []
        self._raw: Any = None
        self._raw_cursor: Any = None

    def _time(self, instant: datetime) -> Any:
        return bind_time("sqlite" if self.sqlite else "postgresql", instant)

    def mark_sending(self, conn: Connection, tp_id: int, *, worker: str, now: datetime,
                     detail: str, channel: str, address: str, provider: str, attempts: int,
                     template_file: str, content: str, recheck: Recheck | None = None,
                     ) -> bool:
        """``planned → sending``, if the row is still ``worker``'s and, with ``recheck``,
        what it says still holds; False otherwise."""
        cursor = self._cursor(conn)
        self._flush(cursor)
        at = self._time(now)
        params: tuple[Any, ...] = (detail, at, channel, address, provider, attempts, at,
                                   template_file, content, tp_id, worker)
        sql = self.sending_sql
        if recheck is not None:
            sql = self._recheck_sql(recheck)
            params += (channel, opt_out_address(channel, address), recheck.purpose)
            if recheck.appointment is not None:
                params += recheck.appointment
            if recheck.exits:
                params += (recheck.patient_id, self._time(recheck.planned_at), *recheck.exits)
            if recheck.case_id is not None:
                params += (recheck.case_id,)
            if recheck.offer is not None:
                params += recheck.offer
        cursor.execute(sql, params)
        if cursor.rowcount != 1:
            return False
        self.history.append((tp_id, at, Status.SENDING.value, Status.PLANNED.value, detail))
        return True

    def held(self, conn: Connection, tp_id: int, worker: str) -> bool:
        """Whether ``tp_id`` is still planned and claimed by ``worker`` (after a
        conditional mark matched nothing: its recheck failed, it was not taken)."""
        cursor = self._cursor(conn)
        cursor.execute(self.held_sql, (tp_id, worker))
        return cursor.fetchone() is not None

    def _recheck_sql(self, recheck: Recheck) -> str:
        # (one statement per shape, each kept prepared by the driver; a step has an exit
        # event or two, bound one by one: cheaper than an array parameter on SQLite)
        shape = (recheck.appointment is not None, len(recheck.exits),
                 recheck.case_id is not None, recheck.offer is not None)
        sql = self._rechecked.get(shape)
        if sql is None:
            sql = self.sending_sql + self._NOT_OPTED_OUT.format(p=self._mark)
            if shape[0]:
                sql += self._SAME_APPOINTMENT.format(p=self._mark)
            if shape[1]:
                kinds = f"IN ({', '.join([self._mark] * shape[1])})"
                sql += self._NO_EXIT.format(p=self._mark, kinds=kinds)
            if shape[2]:
                sql += self._CASE_OPEN.format(p=self._mark)
            if shape[3]:
                sql += self._OFFER_STANDS.format(p=self._mark)
            self._rechecked[shape] = sql
        return sql

    def mark_sent(self, conn: Connection, tp_id: int, *, expect: str, now: datetime,
                  detail: str | None, provider: str, message_id: str | None) -> bool:
        at = self._time(now)
        cursor = self._cursor(conn)
        cursor.execute(self.sent_sql, (detail, at, at, message_id, provider, at, tp_id, expect))
        if cursor.rowcount != 1:
            return False
        self.history.append((tp_id, at, Status.SENT.value, expect, detail))
        return True

    def flush_history(self, conn: Connection) -> None:
        if self.history:
            self._flush(self._cursor(conn))

    def _flush(self, cursor: Any) -> None:
        if self.history:
            cursor.executemany(self.history_sql, self.history)
            self.history = []

    def _cursor(self, conn: Connection) -> Any:
        """A DB-API cursor on the connection of ``conn``'s transaction (the statements run
        in it, unseen by SQLAlchemy's per-statement machinery); one per driver connection."""
        raw = conn.connection.driver_connection
        assert raw is not None
        if raw is not self._raw:
            self._raw, self._raw_cursor = raw, raw.cursor()
        return self._raw_cursor
