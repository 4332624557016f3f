"""Receive one HL7 v2 message: parse, de-duplicate, apply in one transaction, answer.

:meth:`Receiver.receive` is what the MLLP listener and `touchpoint import hl7` call for each
message. It never raises for anything a message holds:

* not HL7 (no MSH, unreadable) → ``AR``, nothing recorded (there is no control id);
* a message type Touchpoint does not take, or an HL7 version before 2.3 → ``AR``;
* a field that cannot be applied (a bad phone in PID-13, no appointment id) → ``AE`` with
  an ERR segment naming it; the message changes nothing;
* an unexpected exception while applying → ``AE`` (code 207), logged without patient data;
  the message changes nothing and may be sent again;
* ``SIU^S17`` (deleted) → the appointment is removed (engine/removal.py: ``removed_at``,
  its pending touch points cancelled ``patient_removed``); an unknown one is nothing to do;
* applied → ``AA``; the rows are written through engine/importer.py (``sync_patients``,
  ``sync_contacts``, ``sync_appointments``) in ONE transaction, together with the
  ``hl7_messages`` row that makes a second copy of the message (same MSH-3, MSH-4,
  MSH-10) get the stored ACK without being applied again. A message answered ``AE`` is
  tried again when it comes again (the patient it needed may have arrived since).
  After each applied message the daemons are woken (``engine.wake.notify``).

Consents: HL7 carries none. A patient or contact first seen here gets
``hl7.sms_consent`` / ``hl7.email_consent`` (healthcare messages; marketing never); one
already on file keeps the consents it has — an update never changes them. Fields HL7 does
not carry (timezone, referral source, discharge date, custom fields) keep what is stored,
and so does a field the message leaves empty; the HL7 null ``""`` clears it.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import hl7
from sqlalchemy import Connection, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from engine import clock, wake
from engine.hl7 import ack as acks
from engine.hl7.mapping import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    DUPLICATE_KEY_IDENTIFIER,
    REQUIRED_FIELD_MISSING,
    UNKNOWN_KEY_IDENTIFIER,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_VERSION_ID,
    Hl7Config,
    Hl7Problem,
    Location,
    Mapped,
    Person,
    map_message,
    value,
)
from engine.importer import ImportSummary, sync_appointments, sync_contacts, sync_patients
from engine.removal import remove_appointment
from engine.settings import Settings
from engine.store.database import Database
from engine.store.schema import appointments, contacts, hl7_messages, patients, referrers

log = logging.getLogger("touchpoint.hl7")

@dataclass(frozen=True)
class Outcome:
    """How one message was answered."""

    control_id: str
    message_type: str
    code: str  # AA, AE, AR
    reason: str  # "" when applied; else which field and what is wrong (no patient data)
    ack: str  # the ACK message, segments separated by \r
    duplicate: bool = False

    @property
    def applied(self) -> bool:
        return self.code == acks.ACCEPT

    def as_dict(self) -> dict[str, Any]:
        return {"control_id": self.control_id, "message_type": self.message_type,
                "ack": self.code, "reason": self.reason, "duplicate": self.duplicate}


def decode(payload: bytes) -> str:
    """UTF-8, else ISO 8859-1 (what MSH-18 ``8859/1`` senders send); never fails."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


def normalise(text: str) -> str:
    """Segments separated by \\r (senders use \\r\\n or \\n too), no blank segments."""
    lines = re.split(r"\r\n|\r|\n", text.strip().strip("\x0b\x1c"))
    return "\r".join(line for line in lines if line.strip())


class Receiver:
    """Applies HL7 messages to one database with one practice's settings."""

    def __init__(self, database: Database, settings: Settings, *,
                 on_applied: Callable[[], None] | None = None) -> None:
        self.database = database
        self.settings = settings
        self.config = Hl7Config.from_settings(settings.hl7)
        self.practice_tz: str = settings.require("practice.timezone")
        # (after each applied message: wake the daemons, engine/wake.py)
        self.on_applied = on_applied or (lambda: wake.notify(database))
        self._acks = itertools.count(1)

    # ---------------------------------------------------------------- one message

    def receive(self, payload: bytes | str, *, source: str = "hl7") -> Outcome:
        now = clock.now()
        text = normalise(decode(payload) if isinstance(payload, bytes) else payload)
        ack_id = self._ack_id(now)
        if not re.match(r"^MSH[^A-Za-z0-9\r]", text) or len(text) < 9:
            return self._unreadable(now, ack_id, "not an HL7 v2 message: it must start with "
                                    "an MSH segment")
        try:
            message = hl7.parse(text)
            msh = message.segment("MSH")
            control_id = value(msh, 10)
            kind, event = value(msh, 9, 1).upper(), value(msh, 9, 2).upper()
            spoken = acks.version(message)
        except Exception:  # whatever the parser trips on is "not HL7"
            return self._unreadable(now, ack_id, "not an HL7 v2 message: its MSH segment "
                                    "cannot be read")
        message_type = f"{kind}^{event}" if event else kind
        if not control_id:
            return self._reject(message, now, ack_id, "", message_type,
                                Location("MSH", 10), REQUIRED_FIELD_MISSING,
                                "MSH-10 (message control id) is empty")
        if spoken < (2, 3):
            return self._reject(message, now, ack_id, control_id, message_type,
                                Location("MSH", 12), UNSUPPORTED_VERSION_ID,
                                "HL7 versions before 2.3 are not supported - send 2.3 to 2.5.1")
        sender = (value(msh, 3)[:227], value(msh, 4)[:227])
        control_id = control_id[:199]
        try:
            stored = self._stored(sender, control_id)
        except Exception as exc:  # (the database is unreachable: try again later)
            return self._failed(message, now, ack_id, sender, control_id, message_type,
                                type(exc).__name__)
        if stored is not None and stored["ack_code"] == acks.ACCEPT:
            log.info("hl7 %s %s from %s (%s): already applied, ACK sent again",
                     message_type, control_id, sender[0] or "?", source)
            return Outcome(control_id, message_type, acks.ACCEPT, "", stored["ack"],
                           duplicate=True)
        try:
            mapped = map_message(message, self.config)
        except Hl7Problem as problem:
            if problem.code in (UNSUPPORTED_MESSAGE_TYPE, UNSUPPORTED_EVENT_CODE):
                return self._reject(message, now, ack_id, control_id, message_type,
                                    problem.location, problem.code, str(problem))
            return self._error(message, now, ack_id, sender, control_id, message_type,
                               problem)
        try:
            with self.database.transaction() as conn:
                self._apply(conn, mapped, now, f"hl7:{control_id}")
                ack = acks.acknowledge(message, acks.ACCEPT, now=now, control_id=ack_id)
                self._record(conn, sender, control_id, message_type, now, acks.ACCEPT, "",
                             ack, exists=stored is not None)
        except Hl7Problem as problem:
            return self._error(message, now, ack_id, sender, control_id, message_type,
                               problem)
        except IntegrityError:
            again = self._stored(sender, control_id)
            if again is not None and again["ack_code"] == acks.ACCEPT:  # a copy won the race
                return Outcome(control_id, message_type, acks.ACCEPT, "", again["ack"],
                               duplicate=True)
            return self._failed(message, now, ack_id, sender, control_id, message_type,
                                "IntegrityError")
        except Exception as exc:  # one bad message never stops the listener
            return self._failed(message, now, ack_id, sender, control_id, message_type,
                                type(exc).__name__)
        log.info("hl7 %s %s from %s (%s): applied", message_type, control_id,
                 sender[0] or "?", source)
        try:
            self.on_applied()
        except Exception as exc:  # (the message is applied: the next tick plans it)
            log.warning("hl7: waking the engine failed (%s)", type(exc).__name__)
        return Outcome(control_id, message_type, acks.ACCEPT, "", ack)

    # ---------------------------------------------------------------- answers

    def _ack_id(self, now: datetime) -> str:
        return f"TP{now:%Y%m%d%H%M%S}{next(self._acks):06d}"

    def _unreadable(self, now: datetime, ack_id: str, reason: str) -> Outcome:
        log.warning("hl7: rejected a frame: %s", reason)
        return Outcome("", "", acks.REJECT, reason,
                       acks.reject_unreadable(now=now, control_id=ack_id, text=reason))

    def _reject(self, message: hl7.Message, now: datetime, ack_id: str, control_id: str,
                message_type: str, location: Location, code: int, reason: str) -> Outcome:
        log.warning("hl7 %s %s: rejected: %s", message_type, control_id or "?", reason)
        ack = acks.acknowledge(message, acks.REJECT, now=now, control_id=ack_id, text=reason,
                               location=location, error_code=code)
        return Outcome(control_id, message_type, acks.REJECT, reason, ack)

    def _error(self, message: hl7.Message, now: datetime, ack_id: str,
               sender: tuple[str, str], control_id: str, message_type: str,
               problem: Hl7Problem) -> Outcome:
        reason = str(problem)
        log.warning("hl7 %s %s: not applied: %s", message_type, control_id, reason)
        ack = acks.acknowledge(message, acks.ERROR, now=now, control_id=ack_id, text=reason,
                               location=problem.location, error_code=problem.code)
        self._keep_error(sender, control_id, message_type, now, reason, ack)
        return Outcome(control_id, message_type, acks.ERROR, reason, ack)

    def _failed(self, message: hl7.Message, now: datetime, ack_id: str,
                sender: tuple[str, str], control_id: str, message_type: str,
                error: str) -> Outcome:
        # (the exception's text may quote patient data: only its class is logged)
        log.error("hl7 %s %s: applying it failed (%s); nothing was changed", message_type,
                  control_id, error)
        reason = (f"Touchpoint could not apply it (internal error {error}); nothing was "
                  "changed - send it again later")
        ack = acks.acknowledge(message, acks.ERROR, now=now, control_id=ack_id, text=reason,
                               error_code=APPLICATION_INTERNAL_ERROR)
        self._keep_error(sender, control_id, message_type, now, reason, ack)
        return Outcome(control_id, message_type, acks.ERROR, reason, ack)

    # ---------------------------------------------------------------- hl7_messages

    def _stored(self, sender: tuple[str, str], control_id: str) -> Mapping[str, Any] | None:
        with self.database.transaction() as conn:
            row = conn.execute(select(hl7_messages).where(
                hl7_messages.c.sending_application == sender[0],
                hl7_messages.c.sending_facility == sender[1],
                hl7_messages.c.control_id == control_id)).mappings().first()
        return dict(row) if row is not None else None

    def _record(self, conn: Connection, sender: tuple[str, str], control_id: str,
                message_type: str, now: datetime, code: str, error: str, ack: str, *,
                exists: bool) -> None:
        values = {"message_type": message_type[:20], "received_at": now, "ack_code": code,
                  "error": error, "ack": ack}
        if exists:
            conn.execute(update(hl7_messages).where(
                hl7_messages.c.sending_application == sender[0],
                hl7_messages.c.sending_facility == sender[1],
                hl7_messages.c.control_id == control_id).values(**values))
        else:
            conn.execute(insert(hl7_messages).values(
                sending_application=sender[0], sending_facility=sender[1],
                control_id=control_id, **values))

    def _keep_error(self, sender: tuple[str, str], control_id: str, message_type: str,
                    now: datetime, reason: str, ack: str) -> None:
        try:
            with self.database.transaction() as conn:
                stored = conn.execute(select(hl7_messages.c.id).where(
                    hl7_messages.c.sending_application == sender[0],
                    hl7_messages.c.sending_facility == sender[1],
                    hl7_messages.c.control_id == control_id)).first()
                self._record(conn, sender, control_id, message_type, now, acks.ERROR, reason,
                             ack, exists=stored is not None)
        except Exception as exc:  # the answer matters more than the record
            log.error("hl7 %s: recording the error failed (%s)", control_id,
                      type(exc).__name__)

    # ---------------------------------------------------------------- applying

    def _apply(self, conn: Connection, mapped: Mapped, now: datetime, source: str) -> None:
        region = self.settings.phone_region
        patient_row = self._patient_row(conn, mapped.patient)
        _check(sync_patients(conn, [(1, patient_row)], source, region=region, now=now),
               {1: mapped.patient})
        if mapped.contacts:
            rows = [(n, self._contact_row(conn, c)) for n, c in
                    enumerate(mapped.contacts, start=1)]
            _check(sync_contacts(conn, rows, source, region=region, now=now),
                   dict(enumerate(mapped.contacts, start=1)))
        if mapped.appointment is not None:
            self._apply_appointment(conn, mapped, now, source)

    def _apply_appointment(self, conn: Connection, mapped: Mapped, now: datetime,
                           source: str) -> None:
        assert mapped.appointment is not None
        person = mapped.appointment
        stored = _one(conn, appointments, person.values["appointment_id"])
        if mapped.action == "remove":
            if stored is not None:  # (an unknown appointment: nothing to remove)
                remove_appointment(conn, stored["id"], now=now, source=source)
            return
        row: dict[str, str] = {}
        # (a cancellation or no-show of a known appointment changes its status only: the
        # times it carries may be the original booking's)
        status_only = stored is not None and mapped.action in ("cancel", "no_show")
        for column in ("appointment_id", "patient_id", "start", "duration_minutes", "status",
                       "visit_type", "therapist", "location"):
            given = person.values.get(column)
            if status_only and column not in ("appointment_id", "patient_id", "status"):
                given = None
            if given is not None:
                row[column] = given
            elif stored is not None:
                row[column] = _stored_appointment_value(stored, column)
            elif column in ("start", "duration_minutes"):
                what = "start time" if column == "start" else "duration"
                raise Hl7Problem(person.where[column], REQUIRED_FIELD_MISSING,
                                 f"no {what} for a new appointment")
            else:
                row[column] = "booked" if column == "status" else ""
        _check(sync_appointments(conn, [(1, row)], source, practice_tz=self.practice_tz,
                                 now=now), {1: person})

    def _patient_row(self, conn: Connection, person: Person) -> dict[str, str]:
        stored = _one(conn, patients, person.values["patient_id"])
        row = _merge(person, stored, ("patient_id", "first_name", "last_name", "phone",
                                      "email", "language", "date_of_birth"))
        if stored is None:
            row.update(timezone="", marketing_consent="no",
                       sms_consent=_yes(self.config.sms_consent),
                       email_consent=_yes(self.config.email_consent))
            return row
        row.update(timezone=stored["timezone"] or "",
                   sms_consent=_yes(stored["sms_consent"]),
                   email_consent=_yes(stored["email_consent"]),
                   marketing_consent=_yes(stored["marketing_consent"]),
                   discharged_on=stored["discharged_on"].isoformat()
                   if stored["discharged_on"] else "")
        if stored["referrer_id"] is not None:
            row["referral_source"] = conn.execute(select(referrers.c.external_id).where(
                referrers.c.id == stored["referrer_id"])).scalar_one()
        for key, custom in (stored["custom"] or {}).items():
            row.setdefault(str(key), str(custom))
        return row

    def _contact_row(self, conn: Connection, person: Person) -> dict[str, str]:
        stored = _one(conn, contacts, person.values["contact_id"])
        row = _merge(person, stored, ("contact_id", "patient_id", "relationship",
                                      "first_name", "phone", "email", "language"))
        if stored is None:
            row.update(timezone="", receives="transactional", marketing_consent="no",
                       sms_consent=_yes(self.config.sms_consent),
                       email_consent=_yes(self.config.email_consent))
            return row
        row.update(timezone=stored["timezone"] or "", receives=stored["receives"],
                   sms_consent=_yes(stored["sms_consent"]),
                   email_consent=_yes(stored["email_consent"]),
                   marketing_consent=_yes(stored["marketing_consent"]))
        return row


def _one(conn: Connection, table: Table, external_id: str | None) -> dict[str, Any] | None:
    """The stored row of ``external_id`` in ``table``, if any."""
    row = conn.execute(select(table).where(table.c.external_id == external_id)).first()
    return row._asdict() if row is not None else None


def _yes(flag: object) -> str:
    return "yes" if flag else "no"


def _merge(person: Person, stored: Mapping[str, Any] | None,
           columns: tuple[str, ...]) -> dict[str, str]:
    """The message's values; where it has none, the stored ones (as text)."""
    stored_names = {"patient_id": "external_id", "contact_id": "external_id"}
    row: dict[str, str] = {}
    for column in columns:
        given = person.values.get(column)
        if given is not None:
            row[column] = given
            continue
        found = stored.get(stored_names.get(column, column)) if stored is not None else None
        row[column] = found.isoformat() if isinstance(found, date) else str(found or "")
    return row


def _stored_appointment_value(stored: Mapping[str, Any], column: str) -> str:
    if column == "start":
        return str(stored["start_at"].isoformat())
    if column == "appointment_id":
        return str(stored["external_id"])
    return str(stored[column] or "")


# Importer problems start with the column they are about ("phone is not a valid number…").
_ERROR_CODES = (("is empty", REQUIRED_FIELD_MISSING), ("not a known", UNKNOWN_KEY_IDENTIFIER),
                ("belongs to another", DUPLICATE_KEY_IDENTIFIER))


def _check(summary: ImportSummary, people: Mapping[int, Person]) -> None:
    """Raise the first row problem as an Hl7Problem on the field the column came from."""
    if not summary.problems:
        return
    problem = summary.problems[0]
    person = people[problem.line]
    column = max((c for c in person.where if problem.message.startswith(c)), key=len,
                 default=None)
    location = person.where[column] if column else Location("MSH", 9)
    code = next((c for phrase, c in _ERROR_CODES if phrase in problem.message),
                DATA_TYPE_ERROR)
    raise Hl7Problem(location, code, problem.message)
