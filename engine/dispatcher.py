"""The dispatcher: claim due → re-check guards → render → send → record.

For each due touch point, in order of due time:

1. the journey and step still exist (else ``cancelled``: journey_removed / step_removed);
2. its deadline has not passed (else ``skipped``: too_late);
3. its anchor still holds and no exit event happened since planning (else ``cancelled``);
4. it is daytime where the recipient is (else deferred to the next allowed minute, or
   ``skipped``: too_late if that is past the deadline);
5. the first of the step's channels with a contact, consent and no opt-out, within the
   limits (``caps``), is chosen (else ``skipped`` with the first channel's reason, every
   channel's in the detail; held by a limit alone, deferred to when it has room, or
   ``skipped``: frequency_cap if that is past the deadline; in exemption mode the limits
   keep room for the higher-priority texts planned, read with the batch's snapshot);
6. the message is rendered and the row marked ``sending`` — **committed before the
   provider is called**, so a crash can never lead to a blind re-send. The mark itself
   re-checks what steps 3 and 5 read from the batch's snapshot (the appointment's status
   and version, exit events, the recovery case, the address's opt-outs): a cancellation,
   a move or an opt-out committed while the batch is being sent stops the message, and
   the guards, run again on fresh data, say how it ends (``cancelled``:
   appointment_cancelled / anchor_changed / journey_exited, ``skipped``: opted_out);
7. the provider's answer is recorded: ``sent``; a transient error is retried by the
   retry policy (back to ``planned`` at a later time) and, when the retries run out,
   falls through to the next channel (before the deadline) or ``failed``; a permanent
   error falls through to the next channel or ``failed`` (``opted_out`` for Twilio's
   21610); an ambiguous one becomes ``unknown``.

A touch point a carrier or mailbox turned away after it was sent comes back ``planned``
with reason ``fallback`` (see :mod:`engine.webhooks.record`): only the step's channels
after the one that failed are tried.

Only :class:`~engine.errors.ChannelError` and template render errors are caught here;
configuration errors stop the run.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import chain
from typing import Any

from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from engine import clock, outbound_webhooks, patient_links, unsubscribe
from engine.cases import Case, case_fields, get_case
from engine.channels.base import Channel, OutboundMessage
from engine.definitions import Definitions
from engine.definitions.journeys import PRIORITIES, SYSTEM_JOURNEYS, Journey, Step
from engine.definitions.templates import Fields
from engine.domain import Appointment, Contact, Patient, Recipient, Referrer
from engine.errors import (
    AmbiguousChannelError,
    ChannelError,
    ConfigError,
    PermanentChannelError,
    TemplateRenderError,
    TransientChannelError,
)
from engine.guards import (
    Decision,
    Defer,
    FrequencyCaps,
    Send,
    Verdict,
    address_for,
    decide,
    exemption_length_refusal,
)
from engine.message_context import message_context, practice_fields, slot_fields
from engine.outcomes import Reason, Status
from engine.patient_links import PatientLinks
from engine.privacy import mask_address, redact
from engine.recipients import PATIENT, resolve
from engine.retry import GiveUp, RetryPolicy
from engine.settings import Settings
from engine.store import ledger
from engine.store.database import Database
from engine.store.ledger import TouchPoint
from engine.store.locks import serialise
from engine.store.records import (
    PlannedSend,
    RecentSend,
    add_opt_out,
    latest_events,
    load_appointments,
    load_contacts,
    load_patients,
    load_referrers,
    next_booked,
    opted_out,
    planned_sends,
    recent_sends,
    visit_numbers,
)
from engine.timing import QuietHours, zone
from engine.waitlist_offers import slot_id_of, standing_offers

log = logging.getLogger("touchpoint.dispatch")

# How many times one touch point's guards are run again on fresh data in one run, when
# what they read keeps changing under its ``sending`` mark; then it waits for its claim to
# expire and is claimed again.
RECHECKS = 3
# How far ahead the limits look for planned texts they must keep room for: the week a text
# falls in (exemption mode), and a day more for the recipient's local day.
LOOK_AHEAD = timedelta(days=8)
# ... and in consent mode, the recipient's local day alone (a local day is at most 25 hours
# long, the day clocks go back; two days leave room for any zone's odd change).
DAY_AHEAD = timedelta(days=2)


def new_worker_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class DispatchStats:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    deferred: int = 0
    retried: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    cancelled: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"claimed": self.claimed, "sent": self.sent, "failed": self.failed,
                "unknown": self.unknown, "deferred": self.deferred, "retried": self.retried,
                "skipped": dict(self.skipped), "cancelled": dict(self.cancelled)}


@dataclass(frozen=True)
class Snapshot:
    """What the guards and templates need for a batch of touch points, read in one go."""

    patients: Mapping[int, Patient]
    appointments: Mapping[int, Appointment]
    next_appointments: Mapping[int, Appointment]
    visit_numbers: Mapping[int, int]
    opt_outs: Mapping[tuple[str, str], set[str]]
    latest_events: Mapping[int, Mapping[str, datetime]]
    sends: dict[int, list[RecentSend]]  # grows as the batch sends (frequency caps)
    contacts: Mapping[int, list[Contact]] = field(default_factory=dict)
    referrers: Mapping[int, Referrer] = field(default_factory=dict)
    cases: Mapping[int, Case] = field(default_factory=dict)
    # (journey, step) → its patient-scoped exit events, and whether resolving a case ends it
    exits: dict[tuple[str, str], tuple[tuple[str, ...], bool]] = field(default_factory=dict)
    # each patient's texts still planned, by touch point id (the limits' look-ahead)
    planned: dict[int, dict[int, PlannedSend]] = field(default_factory=dict)
    # waitlist offers (anchor slot:ID): (slot id, patient id) → (slot row, offer ends)
    # for the offers that still stand (engine.waitlist_offers)
    offers: dict[tuple[int, int], tuple[Any, datetime]] = field(default_factory=dict)

    @classmethod
    def load(cls, conn: Connection, batch: Iterable[TouchPoint], definitions: Definitions,
             now: datetime, caps: FrequencyCaps | None = None) -> Snapshot:
        """With ``caps`` that limit texts: also the batch's patients' texts planned in the
        next :data:`LOOK_AHEAD` (one query), for the look-ahead."""
        batch = list(batch)
        patient_ids = {tp.patient_id for tp in batch if tp.patient_id is not None}
        exit_kinds = {rule.event for journey in definitions.journeys.values()
                      for step in journey.steps for rule in journey.exits_for(step)
                      if rule.scope == "patient"}
        patients = load_patients(conn, patient_ids)
        appointment_ids = {tp.appointment_id for tp in batch if tp.appointment_id}
        appointments = load_appointments(conn, appointment_ids)
        unanchored = {tp.patient_id for tp in batch
                      if tp.appointment_id is None and tp.patient_id is not None}
        upcoming = next_booked(conn, unanchored, now) if unanchored else {}
        numbers = visit_numbers(conn, appointment_ids | {a.id for a in upcoming.values()})
        # (a minor's contacts too: a text to a minor needs a guardian on file — a date of
        # birth imported after planning is caught here; yesterday's date covers every zone)
        young = {p.id for p in patients.values() if p.is_minor(now.date() - timedelta(days=1))}
        contacts = load_contacts(conn, {tp.patient_id for tp in batch if tp.patient_id
                                        and (tp.recipient.startswith("contact:")
                                             or tp.patient_id in young)})
        referrers = load_referrers(conn, {int(tp.recipient.partition(":")[2]) for tp in batch
                                          if tp.recipient.startswith("referrer:")})
        addresses = {a for p in patients.values() for a in (p.phone, p.email) if a}
        addresses |= {a for cs in contacts.values() for c in cs for a in (c.phone, c.email) if a}
        addresses |= {r.email for r in referrers.values() if r.email}
        case_ids = {int(tp.anchor.split(":")[1]) for tp in batch
                    if tp.anchor.startswith("case:") and tp.anchor.split(":")[1].isdigit()}
        sends = {patient_id: [replace(s, priority=definitions.priority(s.journey, s.step,
                                                                       s.purpose))
                              for s in found]
                 for patient_id, found in recent_sends(conn, patient_ids,
                                                       now - timedelta(days=8)).items()}
        snapshot = cls(patients, appointments, upcoming, numbers, opted_out(conn, addresses),
                       latest_events(conn, patient_ids, exit_kinds), sends, contacts,
                       referrers, _load_cases(conn, case_ids))
        offer_pairs = {(slot_id, tp.patient_id) for tp in batch if tp.patient_id is not None
                       for slot_id in [slot_id_of(tp.anchor)] if slot_id is not None}
        if offer_pairs:
            snapshot.offers.update(standing_offers(conn, offer_pairs, now))
        if caps is not None and (caps.mode == "exemption" or caps.sms_per_day):
            snapshot.look_ahead(conn, batch, definitions, now, caps)
        return snapshot

    def look_ahead(self, conn: Connection, batch: list[TouchPoint], definitions: Definitions,
                   now: datetime, caps: FrequencyCaps) -> None:
        """Keep (:meth:`expect`) the texts the limits keep room for: the batch's patients'
        transactional touch points planned within the days the limits count (consent
        mode: the recipient's local day, :data:`DAY_AHEAD`; exemption mode: the week,
        :data:`LOOK_AHEAD`).

        A planned text only counts against another of the same patient: the batch's own
        rows come from memory, not read again, and are kept only for a patient with more
        than one in the batch. In the usual batch — one text due per patient, nothing else
        planned that day — this is one query that finds nothing, and each message's limits
        have nothing to count."""
        until = now + (LOOK_AHEAD if caps.mode == "exemption" else DAY_AHEAD)
        per_patient = Counter(tp.patient_id for tp in batch)
        own = (PlannedSend(tp.id, tp.patient_id, tp.recipient, tp.journey, tp.step,
                           tp.purpose, tp.channel, tp.due_at)
               for tp in batch if tp.patient_id is not None and per_patient[tp.patient_id] > 1
               and tp.status == Status.PLANNED and tp.purpose == "transactional"
               and not tp.test and tp.journey not in SYSTEM_JOURNEYS and tp.due_at <= until)
        later = planned_sends(conn, {tp.patient_id for tp in batch if tp.patient_id is not None},
                              until, besides={tp.id for tp in batch})
        self.expect(chain(own, (p for found in later.values() for p in found)), definitions)

    def expect(self, planned: Iterable[PlannedSend], definitions: Definitions) -> None:
        """Keep, ranked by priority, the planned touch points that would go by text (the
        step's first channel, or the one a retry goes back to)."""
        for item in planned:
            journey = definitions.journey(item.journey)
            step = journey.step(item.step) if journey is not None else None
            if journey is None or step is None:
                continue  # cancelled when it comes due
            channel = item.channel if item.channel in step.channels else step.channels[0]
            if channel == "sms":
                self.planned.setdefault(item.patient_id, {})[item.id] = replace(
                    item, priority=journey.priority_of(step))

    def moved(self, tp: TouchPoint, due_at: datetime | None) -> None:
        """``tp`` was deferred to ``due_at``, or settled (None): it no longer holds its
        planned slot (a sent one counts among ``sends``)."""
        if not self.planned or tp.patient_id is None \
                or tp.id not in self.planned.get(tp.patient_id, {}):
            return
        found = self.planned[tp.patient_id]
        if due_at is None:
            del found[tp.id]
        else:
            found[tp.id] = replace(found[tp.id], due_at=due_at)

    def sent(self, patient_id: int, purpose: str, channel: str, at: datetime,
             recipient: str = PATIENT, priority: int = PRIORITIES["nudge"]) -> None:
        self.sends.setdefault(patient_id, []).append(RecentSend(
            purpose, channel, at, recipient, priority=priority))

    def recipient(self, tp: TouchPoint, patient: Patient) -> Recipient | None:
        """Who ``tp`` addresses, or None if they are no longer on file."""
        referrer = self.referrers.get(int(tp.recipient.partition(":")[2])) \
            if tp.recipient.startswith("referrer:") else None
        return resolve(tp.recipient, patient, self.contacts.get(patient.id, ()), referrer)

    def decide(self, tp: TouchPoint, journey: Journey | None, step: Step | None, now: datetime,
               quiet: QuietHours, practice_timezone: str, caps: FrequencyCaps,
               ) -> tuple[Decision, Recipient | None]:
        """Every send-time guard for ``tp`` and who it addresses (None: no longer on file,
        and the decision says so)."""
        assert tp.patient_id is not None, "test sends are never dispatched"
        patient = self.patients[tp.patient_id]
        recipient = self.recipient(tp, patient)
        if recipient is None:
            return Verdict(Status.SKIPPED, Reason.NO_CONTACT,
                           f"{tp.recipient.replace(':', ' ')} is no longer on file"), None
        if recipient.key == PATIENT and patient.is_minor(
                now.astimezone(zone(practice_timezone)).date()) and not any(
                c.is_guardian for c in self.contacts.get(patient.id, ())):
            return Verdict(Status.SKIPPED, Reason.NO_GUARDIAN,
                           "the patient is a minor with no parent or guardian on file "
                           "(contacts.csv)"), recipient
        appointment = self.appointments.get(tp.appointment_id) if tp.appointment_id else None
        case = self.case(tp)
        return decide(tp, journey, step, patient, appointment,
                      self.latest_events.get(tp.patient_id, {}), self.opt_outs, now, quiet,
                      practice_timezone, self.sends.get(tp.patient_id, []), caps,
                      recipient=recipient,
                      case_open=case.is_open if case is not None else None,
                      planned=list(self.planned[tp.patient_id].values())
                      if tp.patient_id in self.planned else (),
                      offer_stands=self.offer(tp) is not None
                      if slot_id_of(tp.anchor) is not None else None), recipient

    def recheck(self, tp: TouchPoint, journey: Journey, step: Step) -> ledger.Recheck:
        """What the guards read here for ``tp`` that must be unchanged when it is marked
        ``sending`` (see :class:`~engine.store.ledger.Recheck`)."""
        assert tp.patient_id is not None, "test sends are never dispatched"
        appointment = self.appointments.get(tp.appointment_id) if tp.appointment_id else None
        exits = self.exits.get((tp.journey, tp.step))
        if exits is None:
            rules = journey.exits_for(step)
            exits = self.exits[tp.journey, tp.step] = (
                tuple(sorted({r.event for r in rules
                              if r.scope == "patient" and r.event != "case.resolved"})),
                any(r.event == "case.resolved" for r in rules))
        case = self.case(tp) if exits[1] else None
        return ledger.Recheck(
            tp.purpose, tp.patient_id, tp.planned_at,
            appointment=(appointment.id, appointment.status, appointment.version)
            if appointment else None,
            exits=exits[0], case_id=case.id if case is not None and case.is_open else None,
            offer=(slot_id, tp.patient_id)
            if (slot_id := slot_id_of(tp.anchor)) is not None else None)

    def offer(self, tp: TouchPoint) -> tuple[Any, datetime] | None:
        """The standing waitlist offer ``tp`` makes (its slot row and when it ends)."""
        slot_id = slot_id_of(tp.anchor)
        return self.offers.get((slot_id, tp.patient_id or 0)) if slot_id is not None else None

    def case(self, tp: TouchPoint) -> Case | None:
        _, _, ident = tp.anchor.partition(":")
        return self.cases.get(int(ident)) if tp.anchor.startswith("case:") \
            and ident.isdigit() else None

    def context(self, tp: TouchPoint, patient: Patient, appointment: Appointment | None,
                practice: Fields, practice_timezone: str, recipient: Recipient | None = None,
                settings: Settings | None = None, links: PatientLinks | None = None,
                ) -> dict[str, Any]:
        """Template variables for ``tp``: its appointment, or the patient's next one."""
        shown = appointment or self.next_appointments.get(patient.id)
        referrer = self.referrers.get(patient.referrer_id) if patient.referrer_id else None
        case = self.case(tp)
        to_referrer = recipient is not None and recipient.role == "referrer"
        return message_context(
            patient=patient, appointment=shown, practice=practice,
            practice_timezone=practice_timezone, touch_point_id=tp.id, journey=tp.journey,
            step=tp.step, visit_number=self.visit_numbers.get(shown.id) if shown else None,
            recipient=recipient, referrer=referrer,
            case=case_fields(case, settings) if case is not None and settings else None,
            # a referring office sees only the custom fields the practice allowed
            custom_fields=settings.referrals.allowed_fields if to_referrer and settings
            else None, links=links,
            slot=slot_fields(*offer) if (offer := self.offer(tp)) is not None else None)


class Dispatcher:
    def __init__(self, db: Database, definitions: Definitions, settings: Settings,
                 channels: Mapping[str, Channel], *, worker: str | None = None,
                 retry: RetryPolicy | None = None) -> None:
        self.db = db
        self.definitions = definitions
        self.settings = settings
        self.channels = channels
        self.worker = worker or new_worker_id()
        self.retry = retry or RetryPolicy(settings.dispatch.max_attempts,
                                          settings.dispatch.retry_backoff)
        self.practice_timezone: str = settings.require("practice.timezone")
        self.practice = practice_fields(settings)
        self.quiet_hours = settings.quiet_hours
        self.caps = caps_from(settings)
        self._secret: bytes | None = None
        self._signer: URLSafeTimedSerializer | None = None  # of patient links, once needed
        self._conn: Connection | None = None  # the batch's connection, while run() runs
        self._driver: Any = None  # its DB-API connection, for the per-message commit
        self._pending: list[Callable[[Connection], None]] = []
        self._path = ledger.SendPath(db.dialect)
        self.stats = DispatchStats()

    # ------------------------------------------------------------------ the loop

    def run(self, stop: Callable[[], bool] = lambda: False) -> DispatchStats:
        """Send everything due now; return when nothing due is left or ``stop()`` says so."""
        self.stats = DispatchStats()
        batch_size = self.settings.dispatch.batch_size
        # A claim lasts as long as a send may: a vanished worker's rows are taken over then.
        lease = self.settings.dispatch.send_timeout
        with self.db.connection() as self._conn, ExitStack() as background:
            # (not in a dry run: everything there is one transaction, rolled back)
            self._driver = None if self.db.pinned else self._conn.connection.driver_connection
            try:
                while not stop():
                    with self._tx() as conn:
                        batch = ledger.claim_due(conn, self.worker, clock.now(), batch_size,
                                                 lease)
                    if not batch:
                        break
                    if len(batch) == batch_size and self.stats.claimed == 0:
                        background.enter_context(self.db.checkpointing())  # a backlog
                    self.stats.claimed += len(batch)
                    snapshot = self._batch_snapshot(batch)
                    for index, tp in enumerate(batch):
                        if stop():
                            with self._tx() as conn:
                                ledger.release(conn, [t.id for t in batch[index:]],
                                               self.worker)
                            break
                        self._handle_apart(tp, snapshot)
                with self._tx():
                    pass  # records what the last provider said
            finally:
                self._conn = self._driver = None
        return self.stats

    @contextmanager
    def _tx(self, *, on_driver: bool = False) -> Iterator[Connection]:
        """A transaction on the batch's connection that first records the answers of
        providers still pending (see :meth:`_record_sent`). ``on_driver``: see
        :meth:`_begin`."""
        try:
            with self._begin(on_driver) as conn:
                self._flush(conn)
                yield conn
                self._path.flush_history(conn)
        except BaseException:
            self._path.history.clear()  # rolled back with the rows they describe
            raise
        self._pending.clear()  # committed

    @contextmanager
    def _begin(self, on_driver: bool) -> Iterator[Connection]:
        """Begin and commit. ``on_driver``: straight on the DB-API connection when the
        dispatcher holds one — the per-message commit of the ``sending`` mark, where
        SQLAlchemy's transaction bookkeeping costs more than SQLite's BEGIN; only
        driver-level statements (:class:`~engine.store.ledger.SendPath`) may run in it."""
        if on_driver and self._driver is not None:
            assert self._conn is not None
            if self._path.sqlite:
                self._driver.execute("BEGIN IMMEDIATE")  # (PostgreSQL's driver begins itself)
            try:
                yield self._conn
            except BaseException:
                self._driver.rollback()
                raise
            self._driver.commit()
        elif self._conn is None:
            with self.db.transaction() as conn:
                yield conn
        else:
            with self.db.begin(self._conn) as conn:
                yield conn

    def _flush(self, conn: Connection) -> None:
        for write in self._pending:
            write(conn)

    def _snapshot(self, batch: list[TouchPoint]) -> Snapshot:
        with self._tx() as conn:
            return Snapshot.load(conn, batch, self.definitions, clock.now(), self.caps)

    # ------------------------------------------------------------------ one touch point

    def handle(self, tp: TouchPoint, snapshot: Snapshot) -> None:
        journey = self.definitions.journey(tp.journey)
        step = journey.step(tp.step) if journey else None
        assert tp.patient_id is not None, "test sends are never dispatched"
        patient = snapshot.patients[tp.patient_id]
        appointment = snapshot.appointments.get(tp.appointment_id) if tp.appointment_id \
            else None
        decision, recipient = self._decide(tp, journey, step, snapshot)
        if isinstance(decision, Verdict | Defer):
            self._act(tp, decision)
        else:
            assert journey is not None
            assert step is not None
            assert recipient is not None
            self._send(tp, journey, step, patient, recipient, appointment, snapshot, decision)
        snapshot.moved(tp, decision.until if isinstance(decision, Defer) else None)

    def _batch_snapshot(self, batch: list[TouchPoint]) -> Snapshot | None:
        """The batch's snapshot; None if one of its rows breaks reading it (each touch
        point then reads its own, and the one that breaks is set aside)."""
        try:
            return self._snapshot(batch)
        except (SQLAlchemyError, ConfigError):
            raise
        except Exception as exc:
            log.warning("the batch's records could not all be read (%s); reading them one "
                        "touch point at a time", engine_error(exc))
            return None

    def _handle_apart(self, tp: TouchPoint, snapshot: Snapshot | None) -> None:
        """:meth:`handle`, but one touch point the engine cannot work with (a value that
        breaks the code — a date outside the calendar) is set aside with its error, and
        the batch goes on: one bad row never stops everyone. Database and configuration
        errors still stop the run (they are no one row's fault). Without ``snapshot``,
        it reads its own."""
        try:
            self.handle(tp, snapshot if snapshot is not None else self._snapshot([tp]))
        except (SQLAlchemyError, ConfigError):
            raise
        except Exception as exc:
            error = engine_error(exc)
            log.error("touch point %s could not be prepared and is set aside: %s — see "
                      "`touchpoint why %s`", tp.id, error, tp.id,
                      extra={"event": "set_aside", "touch_point_id": tp.id})
            with self._tx() as conn:
                # not sent if it never reached ``sending``; else the provider may have it
                if ledger.transition(conn, tp.id, expect=Status.PLANNED, to=Status.FAILED,
                                     now=clock.now(), source="dispatcher",
                                     reason=Reason.ENGINE_ERROR, detail=error,
                                     worker=self.worker,
                                     values={"claimed_by": None, "claim_expires_at": None}):
                    outbound_webhooks.emit_touch_point(conn, "touch_point.failed",
                                                       clock.now(), tp.id)
                    self.stats.failed += 1
                elif ledger.transition(conn, tp.id, expect=Status.SENDING, to=Status.UNKNOWN,
                                       now=clock.now(), source="dispatcher",
                                       reason=Reason.AMBIGUOUS,
                                       detail=f"{error}; after the provider was called — not "
                                              "re-sent", worker=self.worker,
                                       values={"claimed_by": None, "claim_expires_at": None}):
                    self.stats.unknown += 1

    def _decide(self, tp: TouchPoint, journey: Journey | None, step: Step | None,
                snapshot: Snapshot) -> tuple[Decision, Recipient | None]:
        """Every send-time guard for ``tp``, now, on what ``snapshot`` read."""
        return snapshot.decide(tp, journey, step, clock.now(), self.quiet_hours,
                               self.practice_timezone, self.caps)

    def _act(self, tp: TouchPoint, decision: Verdict | Defer, *,
             fallback: bool = False) -> None:
        """Record a guard's no (settled) or not yet (deferred: quiet hours, a limit).

        ``fallback`` (or ``tp``'s reason): a channel of the step already failed for good
        (turned away by the carrier, retries run out), so only the channels after it may
        be used; a deferral keeps that reason, or the deferred message would be sent again
        through the channel that failed."""
        fallback = fallback or tp.reason == Reason.FALLBACK
        if isinstance(decision, Verdict):
            if fallback and decision.status == Status.SKIPPED:
                # it went out and was turned away; no channel after that one may be used
                decision = Verdict(Status.FAILED, Reason.PROVIDER_ERROR,
                                   f"{tp.detail}; no channel left to try ({decision.detail})")
            self._settle(tp, decision)
            return
        reason, detail = decision.reason, decision.detail
        if fallback:
            reason, detail = Reason.FALLBACK, f"{detail}; then the step's next channel"
        with self._tx() as conn:
            ledger.reschedule(conn, tp.id, worker=self.worker, expect=Status.PLANNED,
                              due_at=decision.until, now=clock.now(), reason=reason,
                              detail=detail)
        self.stats.deferred += 1

    def _send(self, tp: TouchPoint, journey: Journey, step: Step, patient: Patient,
              recipient: Recipient, appointment: Appointment | None, snapshot: Snapshot,
              decision: Send) -> None:
        candidates, timezone = list(decision.channels), decision.timezone
        # channels that failed for good (template or provider), or turned it away
        tried: list[str] = []
        if tp.reason == Reason.FALLBACK and tp.channel in step.channels:
            # the carrier or mailbox turned it away on tp.channel: the channels after it
            tried = list(step.channels[:step.channels.index(tp.channel) + 1])
            candidates = [kind for kind in candidates if kind not in tried]
            if not candidates:
                passed = "; ".join(decision.refused)
                self._settle(tp, Verdict(Status.FAILED, Reason.PROVIDER_ERROR,
                                         f"{tp.detail}; no channel left to try"
                                         + (f" ({passed})" if passed else "")))
                return
        context = snapshot.context(tp, patient, appointment, self.practice,
                                   self.practice_timezone, recipient, self.settings,
                                   self._links(patient))
        # several recipients of one message: one number or inbox gets it once
        shared = tp.recipient != PATIENT or step.recipient in ("contacts", "patient_and_contacts")
        email_headers = self._unsubscribe(tp, context) if "email" in candidates else {}
        # Why an earlier channel was passed over stays with the touch point ("why email?").
        failures: list[tuple[str, str]] = [("refused", d) for d in decision.refused]
        recheck = snapshot.recheck(tp, journey, step)
        attempts = rechecks = 0
        while candidates:
            kind = candidates.pop(0)
            last = not candidates
            try:
                rendered = self.definitions.templates.render(
                    step.template, kind, recipient.language or patient.language, context,
                    zone(timezone))
            except TemplateRenderError as exc:
                failures.append((Reason.TEMPLATE_ERROR, f"{kind}: {exc.message}"))
                log.error("template error for touch point %s: %s", tp.id, exc.message)
                tried.append(kind)
                continue
            too_long = exemption_length_refusal(kind, rendered.body, self.caps)
            if too_long is not None:  # not sent as exempt: the next channel, if any
                failures.append((Reason.FREQUENCY_CAP, too_long))
                tried.append(kind)
                continue
            address = address_for(recipient, kind)
            assert address is not None
            message = OutboundMessage(
                touch_point_id=tp.id, kind=kind, to=address, body=rendered.body,
                subject=rendered.subject, html=rendered.html, purpose=tp.purpose,
                headers=email_headers if kind == "email" else {},
                journey=tp.journey, step=tp.step)
            attempts += 1
            outcome = self._attempt(tp, kind, message, attempt=tp.attempts + attempts,
                                    template_file=rendered.template_file, last=last,
                                    failures=failures, shared=shared, recheck=recheck)
            if outcome == "stale":
                # What the guards read changed since the batch's snapshot: run them again
                # on fresh data, and go on with what they allow now.
                attempts -= 1  # (nothing was attempted)
                rechecks += 1
                fresh = self._snapshot([tp])
                again, who = self._decide(tp, journey, step, fresh)
                if isinstance(again, Verdict | Defer):
                    if isinstance(again, Verdict):  # ("why was it not sent?")
                        again = Verdict(again.status, again.reason, "; ".join(
                            [f"{again.detail} (found as it was about to be sent)"]
                            + [d for r, d in failures if r != "refused"]))
                    self._act(tp, again, fallback=bool(tried))
                    return
                if rechecks >= RECHECKS:
                    # (its claim stays: claimed again at once, it would loop in this run)
                    log.warning("touch point %s: what its guards read kept changing as it "
                                "was about to be sent; it is tried again when its claim "
                                "expires (dispatch.send_timeout)", tp.id)
                    return
                assert who is not None
                candidates = [c for c in again.channels if c not in tried]
                timezone, recipient, recheck = again.timezone, who, fresh.recheck(tp, journey,
                                                                                 step)
                patient = fresh.patients[patient.id]
                appointment = fresh.appointments.get(tp.appointment_id) \
                    if tp.appointment_id else None
                context = fresh.context(tp, patient, appointment, self.practice,
                                        self.practice_timezone, recipient, self.settings,
                                        self._links(patient))
                email_headers = self._unsubscribe(tp, context) if "email" in candidates else {}
                failures = [("refused", d) for d in again.refused] + \
                    [f for f in failures if f[0] != "refused"]
                continue
            if outcome != "next":
                if outcome == "sent":
                    snapshot.sent(patient.id, tp.purpose, kind, clock.now(), tp.recipient,
                                  journey.priority_of(step))
                return
            tried.append(kind)
        # Every candidate failed before reaching a provider (template errors, or too long
        # to go under the healthcare exemption), or those that had not were refused when
        # the guards ran again.
        reason = next(r for r, _ in failures if r != "refused")
        status = Status.SKIPPED if reason == Reason.FREQUENCY_CAP else Status.FAILED
        self._settle(tp, Verdict(status, reason, "; ".join(d for _, d in failures)))

    def deliver(self, tp: TouchPoint, message: OutboundMessage, template_file: str) -> None:
        """Send one claimed touch point through ``message.kind`` now, once: a test send or
        a reply to a text. A transient error fails it rather than retrying later."""
        self._attempt(tp, message.kind, message, attempt=tp.attempts + 1,
                      template_file=template_file, last=True, failures=[], retry=False)

    def _attempt(self, tp: TouchPoint, kind: str, message: OutboundMessage, *, attempt: int,
                 template_file: str, last: bool, failures: list[tuple[str, str]],
                 retry: bool = True, shared: bool = False,
                 recheck: ledger.Recheck | None = None) -> str:
        """Send through one channel: "sent", "done" (settled otherwise), "next" (try the
        next channel), or "stale" (``recheck`` no longer holds: nothing was done).
        ``shared``: another recipient of the same message may have the same address; if it
        already went there, this one is skipped."""
        channel = self.channels[kind]
        passed_over = [d for r, d in failures if r == "refused"]
        with self._tx(on_driver=not shared) as conn:
            if shared:
                sibling = self._shared_with(conn, tp, message.to)
                if sibling is not None:
                    ledger.transition(
                        conn, tp.id, expect=Status.PLANNED, to=Status.SKIPPED, now=clock.now(),
                        source="dispatcher", reason=Reason.SHARED_ADDRESS,
                        detail=f"{kind}: {mask_address(message.to)} already got this message "
                               f"(touch point {sibling}, {tp.journey}/{tp.step})",
                        values={"claimed_by": None, "claim_expires_at": None})
                    self.stats.skipped[Reason.SHARED_ADDRESS] += 1
                    return "done"
            started = self._path.mark_sending(
                conn, tp.id, worker=self.worker, now=clock.now(),
                detail=f"{kind} via {channel.provider} to {mask_address(message.to)}"
                + (f" (passed over {'; '.join(passed_over)})" if passed_over else ""),
                channel=kind, address=message.to, provider=channel.provider,
                attempts=attempt, template_file=template_file, content=_content(message),
                recheck=recheck)
            stale = not started and recheck is not None \
                and self._path.held(conn, tp.id, self.worker)
        if stale:
            log.info("touch point %s: its anchor or an opt-out changed since its batch was "
                     "read; checking again", tp.id)
            return "stale"
        if not started:
            log.warning("touch point %s was taken by another worker; leaving it", tp.id)
            return "done"
        try:
            result = channel.send(message)
        except TransientChannelError as exc:
            if self._after_transient(tp, exc, attempt, retry, kind=kind, last=last,
                                     failures=failures):
                return "next"
            return "done"
        except PermanentChannelError as exc:
            detail = f"{kind}: {redact(exc.describe())}"
            reason = Reason.OPTED_OUT if exc.opted_out else Reason.PROVIDER_ERROR
            failures.append((reason, detail))
            if exc.opted_out:
                self._record_opt_out(kind, message.to, f"provider: {exc.describe()}")
            if last:
                self._finish(tp, Status.SENDING, Status.FAILED, reason,
                             "; ".join(d for r, d in failures if r != "refused"))
                self.stats.failed += 1
                return "done"
            self._finish(tp, Status.SENDING, Status.PLANNED, Reason.PROVIDER_ERROR,
                         f"{detail}; trying the next channel", keep_claim=True)
            return "next"
        except AmbiguousChannelError as exc:
            self._finish(tp, Status.SENDING, Status.UNKNOWN, "ambiguous",
                         f"{redact(exc.describe())}; not re-sent — waiting for the provider's "
                         "status callback")
            self.stats.unknown += 1
            return "done"
        except ChannelError as exc:
            if self._after_transient(
                    tp, TransientChannelError(exc.message, provider=exc.provider), attempt,
                    retry, kind=kind, last=last, failures=failures):
                return "next"
            return "done"
        self._record_sent(tp, result.provider, result.provider_message_id, result.detail)
        self.stats.sent += 1
        return "sent"

    @staticmethod
    def _shared_with(conn: Connection, tp: TouchPoint, address: str) -> int | None:
        """Another recipient's touch point of the same message that went (or is going) to
        ``address``. Serialised per patient, so two workers cannot both miss each other."""
        serialise(conn, f"recipients:{tp.patient_id}")
        return ledger.sibling_sent_to(conn, tp, address)

    def _record_sent(self, tp: TouchPoint, provider: str, message_id: str | None,
                     detail: str) -> None:
        """Record a provider's acceptance — in the same commit as the next message's
        ``sending`` mark (one commit a message, not two), or when the run ends. A crash
        before that commit leaves it ``sending``, which recovery turns into ``unknown``:
        never a blind re-send."""
        now = clock.now()

        def write(conn: Connection) -> None:
            for expect, note in ((Status.SENDING, detail or None),
                                 # the send outlived send_timeout and recovery marked it
                                 # unknown: what the provider said settles it
                                 (Status.UNKNOWN, "the provider took it after the send was "
                                                  "presumed interrupted")):
                if self._path.mark_sent(conn, tp.id, expect=expect, now=now, detail=note,
                                        provider=provider, message_id=message_id):
                    return
            log.warning("touch point %s: sent (provider id %s), but its row had moved on",
                        tp.id, message_id)
        self._pending.append(write)
        if self._conn is None:  # not inside run(): record it now
            with self._tx():
                pass

    def _after_transient(self, tp: TouchPoint, exc: TransientChannelError, attempt: int,
                         retry: bool = True, *, kind: str = "", last: bool = True,
                         failures: list[tuple[str, str]] | None = None) -> bool:
        """Retry later, or give up: True when the step's next channel should be tried
        (the retries ran out, another channel follows and the deadline has not passed)."""
        now = clock.now()
        decision = self.retry.decide(attempt, exc, now, tp.expires_at) if retry else \
            GiveUp("not retried: try again later")
        detail = redact(exc.describe())
        if isinstance(decision, GiveUp):
            before_deadline = tp.expires_at is None or now < tp.expires_at
            if retry and not last and before_deadline and failures is not None:
                failures.append((Reason.PROVIDER_ERROR, f"{kind}: {detail}; {decision.why}"))
                self._finish(tp, Status.SENDING, Status.PLANNED, Reason.FALLBACK,
                             f"{kind}: {detail}; {decision.why}; trying the next channel",
                             keep_claim=True)
                return True
            self._finish(tp, Status.SENDING, Status.FAILED, Reason.PROVIDER_ERROR,
                         "; ".join([*(d for r, d in failures or () if r != "refused"),
                                    f"{detail}; {decision.why}"]))
            self.stats.failed += 1
            return False
        with self._tx() as conn:
            ledger.reschedule(conn, tp.id, worker=self.worker, expect=Status.SENDING,
                              due_at=decision.at, now=now, reason="retry",
                              detail=f"{detail}; retrying at {decision.at.isoformat()}")
        self.stats.retried += 1
        return False

    def _finish(self, tp: TouchPoint, expect: str, to: str, reason: str | None,
                detail: str | None, values: dict[str, Any] | None = None,
                keep_claim: bool = False) -> None:
        changes = dict(values or {})
        if not keep_claim:
            changes.update(claimed_by=None, claim_expires_at=None)
        with self._tx() as conn:
            moved = ledger.transition(conn, tp.id, expect=expect, to=to, now=clock.now(),
                                      source="dispatcher", reason=reason, detail=detail,
                                      values=changes)
            if moved and to == Status.FAILED:
                outbound_webhooks.emit_touch_point(conn, "touch_point.failed", clock.now(),
                                                   tp.id)

    def _settle(self, tp: TouchPoint, verdict: Verdict) -> None:
        self._finish(tp, Status.PLANNED, verdict.status, verdict.reason, verdict.detail)
        bucket = self.stats.skipped if verdict.status == Status.SKIPPED else \
            self.stats.cancelled if verdict.status == Status.CANCELLED else None
        if bucket is not None:
            bucket[verdict.reason] += 1
        elif verdict.status == Status.FAILED:
            self.stats.failed += 1

    def _record_opt_out(self, channel: str, address: str, detail: str) -> None:
        with self._tx() as conn:
            add_opt_out(conn, channel, address, "all", "provider", redact(detail), clock.now())

    def _links(self, patient: Patient) -> PatientLinks:
        """The patient's booking and intake links (engine.patient_links)."""
        if self._signer is None:
            with self._tx() as conn:
                self._signer = patient_links.signer(conn, self.settings)
        return patient_links.links_for(patient, self.settings, self._signer)

    def _unsubscribe(self, tp: TouchPoint, context: dict[str, Any]) -> dict[str, str]:
        """List-Unsubscribe headers for an email, and its visible link in ``context``."""
        context["unsubscribe_url"] = None
        if tp.purpose != "marketing" and not self.settings.email.unsubscribe_transactional:
            return {}
        if self._secret is None:
            with self._tx() as conn:
                self._secret = unsubscribe.secret_key(conn, self.settings)
        token = unsubscribe.make_token(self._secret, tp.id, tp.purpose)
        context["unsubscribe_url"] = unsubscribe.unsubscribe_url(self.settings, token)
        return unsubscribe.headers(self.settings, token)


def _load_cases(conn: Connection, ids: set[int]) -> dict[int, Case]:
    found = {}
    for case_id in sorted(ids):
        case = get_case(conn, case_id)
        if case is not None:
            found[case_id] = case
    return found


def caps_from(settings: Settings) -> FrequencyCaps:
    caps = settings.caps
    return FrequencyCaps(caps.mode, caps.sms_per_day, caps.transactional_sms_per_day,
                         caps.transactional_sms_per_week, caps.marketing_per_week)


def engine_error(exc: BaseException) -> str:
    """What broke, in one line, without patient data."""
    lines = str(exc).strip().splitlines()
    return redact(f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": "))[:300]


def _content(message: OutboundMessage) -> str:
    return f"Subject: {message.subject}\n\n{message.body}" if message.subject else message.body
