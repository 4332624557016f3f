"""The inbox as conversations: replies grouped per patient, and staff answering them.

:func:`conversations` groups the replies staff should read by patient (a sender Touchpoint
cannot match is a conversation of its own, by masked number), the ones flagged
"possible opt-out" first, then the most recent; each carries the recent exchange with
that patient — their texts and the texts sent to them — so a reply is read in context.

:func:`staff_reply` sends a person's free-text answer to a reply as an ordinary touch
point (journey ``replies``, step ``staff-reply``) through the same channel and send path
as every message: it is refused when the number opted out, the patient has no SMS
consent, or it is quiet hours where the patient is, and it is in the log with its text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from engine.channels.base import Channel
from engine.definitions import Definitions
from engine.dispatcher import Dispatcher
from engine.errors import NotFound, UserError
from engine.notify import Notice, Rendered, deliver, insert
from engine.outcomes import Status
from engine.privacy import mask_address
from engine.replies import POSSIBLE_OPT_OUT, opt_out_by_staff, send_outgoing
from engine.settings import Settings
from engine.store import ledger
from engine.store.database import Database
from engine.store.records import opted_out, patient_from_row
from engine.store.schema import inbound_messages, patients, touch_points
from engine.timing import zone
from engine.touch_point_log import inbox

#: How far back a conversation's exchange goes, and how many messages it shows.
THREAD_DAYS = 30
THREAD_LENGTH = 12
MAX_REPLY = 1600  # characters (Twilio's limit for one message)


@dataclass
class Conversation:
    key: str  # the patient's id, or "unknown:<masked number>"
    patient_id: str | None
    name: str
    waiting: list[dict[str, Any]] = field(default_factory=list)  # replies to read
    thread: list[dict[str, Any]] = field(default_factory=list)  # oldest first

    @property
    def flagged(self) -> bool:
        return any(m["flag"] == POSSIBLE_OPT_OUT for m in self.waiting)

    @property
    def latest(self) -> str:
        return max(str(m["received_at"]) for m in self.waiting)


def conversations(conn: Connection, now: datetime, *, reveal: bool = False,
                  ) -> list[Conversation]:
    """The replies staff should read, as conversations: flagged first, then newest."""
    grouped: dict[str, Conversation] = {}
    for message in inbox(conn, reveal=reveal):
        key = message["patient_id"] or f"unknown:{mask_address(message['from'])}"
        conversation = grouped.setdefault(key, Conversation(
            key, message["patient_id"], message["patient_name"] or "Unknown sender"))
        conversation.waiting.append(message)
    ids = {c.patient_id for c in grouped.values() if c.patient_id}
    threads = _threads(conn, ids, now - timedelta(days=THREAD_DAYS), reveal) if ids else {}
    for conversation in grouped.values():
        if conversation.patient_id:
            conversation.thread = threads.get(conversation.patient_id, [])[-THREAD_LENGTH:]
        else:
            conversation.thread = sorted(
                ({"direction": "in", "text": m["body"],
                  "at": datetime.fromisoformat(m["received_at"].replace("Z", "+00:00"))}
                 for m in conversation.waiting), key=lambda m: m["at"])
    ordered = sorted(grouped.values(), key=lambda c: c.latest, reverse=True)
    return sorted(ordered, key=lambda c: not c.flagged)


def _threads(conn: Connection, external_ids: set[str], since: datetime,
             reveal: bool) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    received = conn.execute(
        select(patients.c.external_id, inbound_messages.c.received_at,
               inbound_messages.c.body, inbound_messages.c.from_address)
        .join(patients, patients.c.id == inbound_messages.c.patient_id)
        .where(patients.c.external_id.in_(sorted(external_ids)),
               inbound_messages.c.received_at >= since))
    for row in received:
        found.setdefault(row.external_id, []).append(
            {"direction": "in", "at": row.received_at, "text": row.body,
             "address": row.from_address if reveal else mask_address(row.from_address)})
    sent = conn.execute(
        select(patients.c.external_id, touch_points.c.sent_at, touch_points.c.content,
               touch_points.c.address, touch_points.c.journey, touch_points.c.step)
        .join(patients, patients.c.id == touch_points.c.patient_id)
        .where(patients.c.external_id.in_(sorted(external_ids)),
               touch_points.c.channel == "sms", touch_points.c.sent_at >= since,
               touch_points.c.content.is_not(None)))
    for out in sent:
        found.setdefault(out.external_id, []).append(
            {"direction": "out", "at": out.sent_at, "text": out.content,
             "address": out.address if reveal else mask_address(out.address),
             "what": f"{out.journey} / {out.step}"})
    for messages in found.values():
        messages.sort(key=lambda m: m["at"])
    return found


def staff_reply(db: Database, definitions: Definitions, settings: Settings,
                channels: Mapping[str, Channel], message_id: int, text: str, now: datetime,
                ) -> ledger.TouchPoint:
    """Send staff's ``text`` to the number inbound message ``message_id`` came from."""
    body = text.strip()
    if not body:
        raise UserError("the reply is empty — write what to send")
    if len(body) > MAX_REPLY:
        raise UserError(f"the reply has {len(body)} characters; a text holds at most "
                        f"{MAX_REPLY} — shorten it")
    if "sms" not in channels:
        raise UserError("no SMS channel is set up here — set channels.sms_provider")
    dispatcher = Dispatcher(db, definitions, settings, channels)
    with db.transaction() as conn:
        row = conn.execute(select(inbound_messages).where(
            inbound_messages.c.id == message_id)).first()
        if row is None or row.channel != "sms":
            raise NotFound(f"no text {message_id} in the inbox")
        number = row.from_address
        if opted_out(conn, [number]).get(("sms", number)):
            raise UserError("this number opted out of texts — call the patient instead; "
                            "nothing was sent")
        patient = None
        if row.patient_id is not None:
            found = conn.execute(select(patients).where(patients.c.id == row.patient_id)
                                 ).first()
            patient = patient_from_row(found) if found is not None else None
        if patient is not None and not patient.sms_consent and patient.phone == number:
            raise UserError("the patient has no SMS consent on file — call them instead; "
                            "nothing was sent")
        tz_name = (patient.timezone if patient and patient.timezone else
                   settings.require("practice.timezone"))
        if not settings.quiet_hours.allows(now, zone(tz_name)):
            local = now.astimezone(zone(tz_name))
            raise UserError(f"it is {local:%H:%M} for the patient ({tz_name}), inside quiet "
                            f"hours ({settings.quiet_hours.describe()}) — reply in the "
                            "morning; nothing was sent")
        sent_before = conn.execute(
            select(func.count()).select_from(touch_points).where(
                touch_points.c.journey == "replies", touch_points.c.step == "staff-reply",
                touch_points.c.anchor.startswith(f"inbound:{message_id}:"))).scalar_one()
        notice = Notice("replies", "staff-reply", "sms", number, "(staff reply)",
                        anchor=f"inbound:{message_id}:staff:{sent_before + 1}",
                        recipient="patient", patient_id=row.patient_id)
        tp = insert(conn, dispatcher, notice)
    sent = deliver(dispatcher, tp, Rendered(notice, body, None, None, "(typed by staff)"))
    assert sent is not None
    return sent


@dataclass(frozen=True)
class OptedOut:
    message_id: int
    number: str  # masked
    already: bool  # the number had opted out before: no second confirmation
    confirmed: bool  # the one confirmation text went


def staff_opt_out(db: Database, definitions: Definitions, settings: Settings,
                  channels: Mapping[str, Channel], message_id: int, now: datetime,
                  ) -> OptedOut:
    """Staff read text ``message_id`` as "stop texting me": opt its number out of every
    text, mark it done, and confirm it to the number once."""
    with db.transaction() as conn:
        found = opt_out_by_staff(conn, message_id, now)
    if found is None:
        raise NotFound(f"no text {message_id} in the inbox — see `touchpoint inbox`")
    handled, body, from_number = found
    if not handled.outgoing:
        return OptedOut(message_id, mask_address(from_number), True, False)
    sent = send_outgoing(db, definitions, settings, channels, handled, body, from_number)
    return OptedOut(message_id, mask_address(from_number), False,
                    any(tp.status in (Status.SENT, Status.DELIVERED) for tp in sent))
