"""A patient's data, governed: export all Touchpoint holds on a person, erase it, and let
old message text go.

* :func:`export` — every row about one patient (by the imported ``patient_id``), table by
  table, as JSON-ready dicts: the request a patient makes under HIPAA's right of access or
  a privacy law's access right.
* :func:`erase` — in one transaction, the personal data is removed and the rows that
  reports count stay, de-identified: ``touchpoint report`` says the same before and after.
  Pending touch points are cancelled (``patient_erased``); ``patients.erased_at`` is set,
  and a later import of that patient_id is refused (engine/importer.py).
* :func:`purge_message_bodies` — the text of messages sent, received or reported longer
  ago than ``retention.message_bodies`` is removed, in small batches (the daemon's
  housekeeping runs it daily).

:data:`TABLES` lists every table of the schema and what export and erase do with it; a
test fails when a table is added to engine/store/schema.py and not to this list, so that
whoever adds one decides how it is exported and erased. docs/privacy.md explains the
choices (what is kept and why) for practice owners.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, Text, and_, cast, or_, select, update

from engine.errors import NotFound, UserError
from engine.outcomes import Reason, Status
from engine.privacy import redact
from engine.settings import Settings
from engine.store.database import Database
from engine.store.records import opt_out_address
from engine.store.schema import (
    audit_log,
    case_events,
    contacts,
    history,
    inbound_messages,
    opt_outs,
    patients,
    provider_events,
    recovery_cases,
    referrers,
    slot_offers,
    slots,
    touch_points,
    waitlist_entries,
)
from engine.timing import format_duration

log = logging.getLogger("touchpoint.privacy")

ERASED_DETAIL = "the patient's personal data was erased"

# Every table of the schema: what export takes from it, and what erase does to it.
TABLES: dict[str, str] = {
    "patients": "export: the row, every column (custom fields, consents, scores, plan of "
                "care). erase: names, phone, email, date of birth, custom fields, language, "
                "timezone, consents and booking link removed; ids, dates, score, referral "
                "source and the plan of care's numbers kept (reports).",
    "contacts": "export: the patient's parents, guardians, caregivers. erase: name, phone, "
                "email, language, timezone and consents removed; relationship kept.",
    "appointments": "export: every appointment. erase: kept as is (times, statuses, "
                    "therapist and location describe the practice's day, not the person).",
    "events": "export: everything that happened to the patient. erase: kept (kinds, times "
              "and appointment references only).",
    "touch_points": "export: every message planned for the patient or about them (staff "
                    "alerts), with the text sent. erase: text and address removed, pending "
                    "ones cancelled (patient_erased); status, reason, journey, times kept.",
    "touch_point_history": "export: the history of those touch points. erase: staff notes "
                           "removed, phone numbers and emails in details masked.",
    "provider_events": "export: what providers reported about those touch points, raw "
                       "payloads included. erase: raw payloads removed.",
    "inbound_messages": "export: the patient's replies, and texts from their or their "
                        "contacts' addresses no one was matched to, with their handling. "
                        "erase: text, from-address and staff note removed; intent, score, "
                        "times kept.",
    "opt_outs": "export: opt-outs of the patient's and contacts' addresses. erase: kept "
                "(honouring an opt-out is a legal obligation; the address stays so that it "
                "holds if the number is imported again under another patient_id), their "
                "note removed.",
    "recovery_cases": "export: the patient's cases. erase: detail and resolution removed; "
                      "cause, status, owner, times kept.",
    "case_events": "export: the history of those cases. erase: details removed; kinds, "
                   "times, who kept.",
    "audit_log": "export: entries whose target is the patient. erase: kept (who did what, "
                 "including this erasure; entries hold ids and counts only).",
    "referrers": "export: the referral source that sent the patient, if any. erase: kept "
                 "(a physician's office, not the patient).",
    "engine_state": "neither: the engine's own facts (heartbeats, definitions, keys).",
    "hl7_messages": "neither: which HL7 messages were applied (control id, type, ACK code); "
                    "the message itself, which holds patient data, is never stored.",
    "staff_users": "neither: the practice's staff accounts.",
    "staff_sessions": "neither: staff sign-in sessions.",
    "definition_drafts": "neither: journeys and templates being edited.",
    "definition_versions": "neither: published journeys and templates.",
    "api_keys": "neither: the practice's integrations' keys (hashed), no patient data.",
    "webhook_endpoints": "neither: the practice's own systems that receive events.",
    "webhook_messages": "neither: events sent to the practice's own systems carry ids and "
                        "codes only (no names, numbers, emails or text), copies of what "
                        "events and touch_points already export.",
    "webhook_deliveries": "neither: delivery state of those events (ids, times, status).",
    "webhook_attempts": "neither: each delivery attempt (status codes, redacted errors).",
    "waitlist_entries": "export: the patient's waitlist entry and preferences. erase: "
                        "withdrawn, preferences (days, times, therapist, location, visit "
                        "type, dates) removed; times kept.",
    "slots": "export: slots the patient freed (cancelled) or claimed. erase: kept (a visit "
             "time of the practice's day; the report counts them).",
    "slot_offers": "export: every slot the patient was offered and their answer. erase: "
                   "kept (ids, waves, times and statuses only: the report counts them); "
                   "standing offers withdrawn.",
}


def _json(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


def _rows(conn: Connection, table: Table, *where: Any) -> list[dict[str, Any]]:
    query = select(table).where(*where)
    key = table.c.id if "id" in table.c else table.primary_key.columns.values()[0]
    return [{k: _json(v) for k, v in row._asdict().items()}
            for row in conn.execute(query.order_by(key))]


@dataclass(frozen=True)
class Person:
    """One patient's keys: their row id, and the addresses they and their contacts use."""

    id: int
    external_id: str
    erased_at: datetime | None
    referrer_id: int | None
    addresses: tuple[str, ...]  # as stored on patients/contacts
    opt_out_addresses: tuple[str, ...]  # as opt-outs store them (email in lower case)


def find(conn: Connection, external_id: str, *, lock: bool = False) -> Person:
    """The patient imported as ``external_id``, or NotFound."""
    query = select(patients.c.id, patients.c.external_id, patients.c.erased_at,
                   patients.c.referrer_id, patients.c.phone, patients.c.email) \
        .where(patients.c.external_id == external_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"no patient {external_id} — give the patient_id of the import, as "
                       "`touchpoint log --patient ID` shows it")
    found = [row.phone, row.email]
    for phone, email in conn.execute(select(contacts.c.phone, contacts.c.email)
                                     .where(contacts.c.patient_id == row.id)):
        found += [phone, email]
    addresses = tuple(sorted({a for a in found if a}))
    stored = {opt_out_address("email" if "@" in a else "sms", a) for a in addresses}
    return Person(row.id, row.external_id, row.erased_at, row.referrer_id, addresses,
                  tuple(sorted(stored)))


def _scopes(conn: Connection, person: Person) -> dict[str, list[Any]]:
    """Per table, the conditions that select this person's rows."""
    tp_ids = list(conn.execute(select(touch_points.c.id)
                               .where(touch_points.c.patient_id == person.id)).scalars())
    case_ids = list(conn.execute(select(recovery_cases.c.id)
                                 .where(recovery_cases.c.patient_id == person.id)).scalars())
    inbound = inbound_messages.c
    return {
        "patients": [patients.c.id == person.id],
        "contacts": [contacts.c.patient_id == person.id],
        "appointments": [_table("appointments").c.patient_id == person.id],
        "events": [_table("events").c.patient_id == person.id],
        "touch_points": [touch_points.c.patient_id == person.id],
        "touch_point_history": [history.c.touch_point_id.in_(tp_ids)],
        "provider_events": [provider_events.c.touch_point_id.in_(tp_ids)],
        "inbound_messages": [or_(inbound.patient_id == person.id,
                                 and_(inbound.patient_id.is_(None),
                                      inbound.from_address.in_(person.addresses)))],
        "opt_outs": [opt_outs.c.address.in_(person.opt_out_addresses)],
        "recovery_cases": [recovery_cases.c.patient_id == person.id],
        "case_events": [case_events.c.case_id.in_(case_ids)],
        "audit_log": [audit_log.c.target == target(person.external_id)],
        "referrers": [referrers.c.id == person.referrer_id],
        "waitlist_entries": [waitlist_entries.c.patient_id == person.id],
        "slots": [or_(slots.c.freed_by_patient_id == person.id,
                      slots.c.claimed_by_patient_id == person.id)],
        "slot_offers": [slot_offers.c.patient_id == person.id],
    }


def _table(name: str) -> Table:
    return patients.metadata.tables[name]


def target(external_id: str) -> str:
    """How audit entries name a patient."""
    return f"patient:{external_id}"


# --------------------------------------------------------------------------- export


def export(conn: Connection, external_id: str, now: datetime) -> dict[str, Any]:
    """Everything Touchpoint holds on the patient ``external_id``: ``{"tables": {table:
    [row, …]}}`` with every column of every row, JSON-ready."""
    person = find(conn, external_id)
    tables = {name: _rows(conn, _table(name), *where)
              for name, where in _scopes(conn, person).items()}
    return {"patient_id": person.external_id, "exported_at": now.isoformat(),
            "erased_at": person.erased_at.isoformat() if person.erased_at else None,
            "tables": tables}


def counts(exported: Mapping[str, Any]) -> dict[str, int]:
    """Rows per table of an export (what the audit entry keeps: counts, no data)."""
    return {name: len(rows) for name, rows in exported["tables"].items() if rows}


# --------------------------------------------------------------------------- erase


@dataclass
class Erasure:
    patient_id: str
    erased_at: datetime
    already: bool = False  # erased before: nothing was done
    changed: dict[str, int] = field(default_factory=dict)  # rows changed per table
    cancelled: int = 0  # pending touch points cancelled

    def as_dict(self) -> dict[str, Any]:
        return {"patient_id": self.patient_id, "erased_at": self.erased_at.isoformat(),
                "already_erased": self.already, "changed": dict(self.changed),
                "cancelled": self.cancelled}


def erase(conn: Connection, external_id: str, now: datetime) -> Erasure:
    """Remove the personal data of patient ``external_id`` (in ``conn``'s transaction);
    keep what reports count. Erasing again changes nothing (``already`` is true).

    Refused while one of the patient's messages is being sent (``sending``): that send
    would write the text and address back after the erasure; it settles within
    ``dispatch.send_timeout``.
    """
    person = find(conn, external_id, lock=True)
    if person.erased_at is not None:
        return Erasure(person.external_id, person.erased_at, already=True)
    done = Erasure(person.external_id, now)
    # Cancelling first takes the write locks (SQLite's database lock, PostgreSQL's row
    # locks), so no pending message can start sending until this commits; one that
    # started before is seen below, and the erasure is refused until it has settled.
    done.cancelled = _cancel_pending(conn, person.id, now)
    sending = conn.execute(select(touch_points.c.id).where(
        touch_points.c.patient_id == person.id, touch_points.c.status == Status.SENDING)
        .limit(1)).scalar()
    if sending is not None:
        raise UserError(f"a message to patient {external_id} is being sent right now (touch "
                        f"point {sending}) — try again in a few minutes")
    scopes = _scopes(conn, person)

    def change(name: str, values: Mapping[str, Any], *extra: Any) -> None:
        table = _table(name)
        count = conn.execute(update(table).where(*scopes[name], *extra).values(**values)
                             ).rowcount
        if count:
            done.changed[name] = done.changed.get(name, 0) + count

    change("patients", {"first_name": "", "last_name": "", "phone": None, "email": None,
                        "date_of_birth": None, "custom": {}, "language": None,
                        "timezone": None, "sms_consent": False, "email_consent": False,
                        "marketing_consent": False, "booking_url": None,
                        "row_hash": "erased", "erased_at": now, "updated_at": now})
    # (no longer in the practice's records for planning: the lapse sweep and the next
    # bookings leave them out, as for a removed patient — see engine.removal)
    conn.execute(update(patients).where(patients.c.id == person.id,
                                        patients.c.removed_at.is_(None))
                 .values(removed_at=now))
    change("contacts", {"first_name": "", "phone": None, "email": None, "language": None,
                        "timezone": None, "sms_consent": False, "email_consent": False,
                        "marketing_consent": False, "row_hash": "erased", "updated_at": now})
    change("touch_points", {"content": None, "address": None, "updated_at": now},
           or_(touch_points.c.content.is_not(None), touch_points.c.address.is_not(None)))
    change("touch_point_history", {"detail": None}, history.c.source == "staff",
           history.c.detail.is_not(None))
    _redact_details(conn, history, scopes["touch_point_history"], done)
    _redact_details(conn, touch_points, scopes["touch_points"], done)
    change("provider_events", {"payload": {}})
    _redact_details(conn, provider_events, scopes["provider_events"], done)
    change("inbound_messages", {"body": "", "from_address": "", "detail": None})
    change("opt_outs", {"detail": None}, opt_outs.c.detail.is_not(None))
    change("recovery_cases", {"detail": ""})
    change("recovery_cases", {"resolution": ""}, recovery_cases.c.resolution.is_not(None))
    change("case_events", {"detail": ""})
    change("waitlist_entries", {"status": "withdrawn", "days": [], "time_from": None,
                                "time_until": None, "therapist": "", "location": "",
                                "visit_type": "", "earliest": None, "latest": None,
                                "source": "", "updated_at": now})
    change("slot_offers", {"status": "withdrawn", "answered_at": now},
           slot_offers.c.status == "offered")
    return done


def _cancel_pending(conn: Connection, patient_id: int, now: datetime) -> int:
    cancelled = list(conn.execute(
        update(touch_points)
        .where(touch_points.c.patient_id == patient_id, touch_points.c.status == Status.PLANNED)
        .values(status=Status.CANCELLED, reason=Reason.PATIENT_ERASED, detail=ERASED_DETAIL,
                claimed_by=None, claim_expires_at=None, finished_at=now, updated_at=now)
        .returning(touch_points.c.id)).scalars())
    if cancelled:
        conn.execute(history.insert(), [
            {"touch_point_id": tp_id, "at": now, "kind": "transition",
             "status": Status.CANCELLED, "previous_status": Status.PLANNED,
             "reason": Reason.PATIENT_ERASED, "detail": ERASED_DETAIL, "source": "erasure",
             "provider_event_id": None} for tp_id in cancelled])
    return len(cancelled)


def _redact_details(conn: Connection, table: Table, where: Sequence[Any],
                    done: Erasure) -> None:
    """Mask the phone numbers and emails left in free-text details (provider errors)."""
    for row_id, detail in conn.execute(select(table.c.id, table.c.detail)
                                       .where(*where, table.c.detail.is_not(None))).all():
        masked = redact(detail)
        if masked != detail:
            conn.execute(update(table).where(table.c.id == row_id).values(detail=masked))


def erased_on(conn: Connection, external_ids: Iterable[str]) -> dict[str, datetime]:
    """When each of these patient ids was erased (those erased)."""
    ids = sorted(set(external_ids))
    if not ids:
        return {}
    found: dict[str, datetime] = {}
    for start in range(0, len(ids), 500):
        found.update(conn.execute(
            select(patients.c.external_id, patients.c.erased_at)
            .where(patients.c.external_id.in_(ids[start:start + 500]),
                   patients.c.erased_at.is_not(None))).all())
    return found


def refusal(external_id: str, erased_at: datetime) -> str:
    """The problem line an import shows for a row of an erased patient."""
    return (f"patient {external_id} was erased on {erased_at:%Y-%m-%d}; remove them from "
            "the export (this row was ignored)")


# --------------------------------------------------------------------------- retention


@dataclass
class Purged:
    touch_points: int = 0  # texts of messages sent
    inbound_messages: int = 0  # texts received
    provider_events: int = 0  # raw payloads providers sent

    def total(self) -> int:
        return self.touch_points + self.inbound_messages + self.provider_events

    def as_dict(self) -> dict[str, int]:
        return {"touch_points": self.touch_points, "inbound_messages": self.inbound_messages,
                "provider_events": self.provider_events}


def purge_message_bodies(db: Database, keep: timedelta | None, now: datetime, *,
                         batch_size: int = 500) -> Purged:
    """Remove message text older than ``keep`` (None: keep forever): what was sent before
    the cutoff (or, never sent, finished before it), replies received before it, and the
    raw payloads providers reported before it. Rows, statuses and reasons stay.

    Each batch of ``batch_size`` rows is its own short transaction, so senders and
    webhooks are never held up for long; running it again finds nothing more to do.
    """
    purged = Purged()
    if keep is None:
        return purged
    cutoff = now - keep
    tp = touch_points.c
    purged.touch_points = _in_batches(db, touch_points, batch_size, {"content": None}, [
        tp.content.is_not(None),
        or_(tp.sent_at < cutoff, and_(tp.sent_at.is_(None), tp.finished_at < cutoff))])
    purged.inbound_messages = _in_batches(db, inbound_messages, batch_size, {"body": ""}, [
        inbound_messages.c.received_at < cutoff, inbound_messages.c.body != ""])
    purged.provider_events = _in_batches(db, provider_events, batch_size, {"payload": {}}, [
        provider_events.c.received_at < cutoff,
        cast(provider_events.c.payload, Text) != "{}"])
    return purged


def _in_batches(db: Database, table: Table, size: int, values: Mapping[str, Any],
                where: Sequence[Any]) -> int:
    total = 0
    after = 0
    while True:
        with db.transaction() as conn:
            ids = list(conn.execute(select(table.c.id).where(*where, table.c.id > after)
                                    .order_by(table.c.id).limit(size)).scalars())
            if not ids:
                return total
            conn.execute(update(table).where(table.c.id.in_(ids)).values(**values))
        total += len(ids)
        after = ids[-1]
        if len(ids) < size:
            return total


def purge_old_message_text(db: Database, settings: Settings, now: datetime) -> Purged:
    """The daemon's housekeeping step: :func:`purge_message_bodies` with the practice's
    ``retention.message_bodies``, logged with its counts."""
    keep = settings.retention.message_bodies
    purged = purge_message_bodies(db, keep, now)
    if keep is not None:
        log.info("housekeeping: removed the text of %d sent message(s), %d repl(ies) and %d "
                 "provider payload(s) older than %s", purged.touch_points,
                 purged.inbound_messages, purged.provider_events, format_duration(keep),
                 extra={"event": "retention", **purged.as_dict()})
    return purged
