"""Outbound webhooks: telling the practice's own systems what happened (the outbox).

Inbound provider webhooks (Twilio, SendGrid) live in :mod:`engine.webhooks`; this package
sends events the other way, to URLs the practice registers with ``touchpoint webhooks
add URL --events …``.

::

    a change (a C reply, a status callback, STOP, a case)    same transaction
        │  emit(): one webhook_messages row (msg_…, type, payload)
        │          + one webhook_deliveries row per endpoint subscribed to the type
        ▼
    webhook_deliveries (pending, next_attempt_at)             the daemon's own thread
        │  delivery.Deliverer: claim due (FOR UPDATE SKIP LOCKED) → sign → POST → record
        ▼
    webhook_attempts (every attempt: status code, redacted error, next attempt)

Because the message is written in the transaction of the change it reports, an event is
sent if and only if its change committed. With no endpoint subscribed to a type, emitting
it costs one small query and writes nothing.

=========================  ==================================================
event type                 emitted when
=========================  ==================================================
``appointment.confirmed``  a patient replies C (CONFIRM, YES) to a reminder
``reschedule.requested``   a patient replies R (RESCHEDULE) to a reminder
``patient.opted_out``      an address of the patient's is opted out: STOP and
                           its variants, ``inbox opt-out``, a one-click or
                           SendGrid unsubscribe, a spam report, Twilio 21610
``case.opened``            a recovery case opens
``case.resolved``          staff resolve a recovery case
``touch_point.failed``     a message failed for good (the dispatcher, or a
                           provider's status callback)
``touch_point.delivered``  a provider reports a message delivered
``slot.claimed``           a waitlisted patient's yes won a freed slot
                           (``slot_id``, ``slot_offer_id``, ``status``:
                           claimed or booked, ``start_at``,
                           ``duration_minutes``, ``claimed_at``)
=========================  ==================================================

Payloads follow the Standard Webhooks shape ``{"type", "timestamp", "data"}``; ``data``
is the minimum necessary: the practice's own ids (``patient_id``, ``appointment_id``),
Touchpoint's ids (``touch_point_id``, ``case_id``), journey, step, channel and reason
codes — never a name, phone number, email address or message text.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, func, insert, select, true, update

from engine.errors import UserError
from engine.store.schema import (
    appointments,
    patients,
    touch_points,
    webhook_deliveries,
    webhook_endpoints,
    webhook_messages,
)

EVENT_TYPES = ("appointment.confirmed", "reschedule.requested", "patient.opted_out",
               "case.opened", "case.resolved", "touch_point.failed", "touch_point.delivered",
               "slot.claimed")
#: What ``touchpoint webhooks test ID`` sends (to that endpoint only; not subscribable).
TEST_EVENT = "webhook.test"
SECRET_PREFIX = "whsec_"
#: Opt-out sources that are not the patient's choice (Twilio 30006: a landline).
NOT_AN_OPT_OUT = frozenset({"landline"})


@dataclass(frozen=True)
class Endpoint:
    id: int
    url: str
    secret: str
    event_types: tuple[str, ...]
    enabled: bool
    disabled_reason: str | None
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """For listing: the secret is not shown (it is printed once, when added)."""
        return {"id": self.id, "url": self.url, "events": list(self.event_types),
                "enabled": self.enabled, "disabled_reason": self.disabled_reason,
                "created_at": self.created_at.isoformat()}


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(row.id, row.url, row.secret, tuple(row.event_types or ()), row.enabled,
                    row.disabled_reason, row.created_at)


# --------------------------------------------------------------------------- endpoints


def parse_event_types(text: str) -> tuple[str, ...]:
    """``appointment.confirmed,case.opened`` → the types, checked; a UserError names the
    first one that is not an event type."""
    found: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        if name not in EVENT_TYPES:
            raise UserError(f"{name!r} is not an event type; choose from: "
                            f"{', '.join(EVENT_TYPES)}")
        if name not in found:
            found.append(name)
    if not found:
        raise UserError(f"name at least one event type: {', '.join(EVENT_TYPES)}")
    return tuple(found)


def check_url(url: str) -> str | None:
    """Raise UserError if ``url`` is not an http(s) URL with a host; return a warning for
    plain http (the events then travel unencrypted)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise UserError(f"{url!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{url!r} is not an http(s) URL; write e.g. "
                        "https://emr.example.com/touchpoint-events")
    if len(url) > 2000:
        raise UserError("the URL is longer than 2000 characters")
    if parts.scheme == "http":
        return ("the URL is plain http: events (ids, not names) travel unencrypted; "
                "use https outside a private network")
    return None


def new_secret() -> str:
    """A signing secret in the Standard Webhooks format: ``whsec_`` + base64(32 bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def add_endpoint(conn: Connection, url: str, event_types: Sequence[str], now: datetime,
                 ) -> Endpoint:
    check_url(url)
    types = parse_event_types(",".join(event_types))
    row = conn.execute(insert(webhook_endpoints).values(
        url=url, secret=new_secret(), event_types=list(types), enabled=True,
        disabled_reason=None, created_at=now, updated_at=now, removed_at=None)
        .returning(*webhook_endpoints.c)).one()
    return _endpoint(row)


def list_endpoints(conn: Connection) -> list[Endpoint]:
    return [_endpoint(row) for row in conn.execute(
        select(webhook_endpoints).where(webhook_endpoints.c.removed_at.is_(None))
        .order_by(webhook_endpoints.c.id))]


def get_endpoint(conn: Connection, endpoint_id: int) -> Endpoint:
    """The endpoint (not removed); UserError if there is none."""
    row = conn.execute(select(webhook_endpoints).where(
        webhook_endpoints.c.id == endpoint_id,
        webhook_endpoints.c.removed_at.is_(None))).first()
    if row is None:
        raise UserError(f"there is no webhook endpoint {endpoint_id} "
                        "(see `touchpoint webhooks list`)")
    return _endpoint(row)


def remove_endpoint(conn: Connection, endpoint_id: int, now: datetime) -> int:
    """Remove an endpoint: it gets nothing more, what was pending for it is cancelled and
    its delivery log is kept. Returns how many pending deliveries were cancelled."""
    get_endpoint(conn, endpoint_id)
    conn.execute(update(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
                 .values(enabled=False, removed_at=now, updated_at=now))
    return cancel_pending(conn, endpoint_id, now, "the endpoint was removed")


def disable_endpoint(conn: Connection, endpoint_id: int, reason: str, now: datetime) -> int:
    """Stop delivering to an endpoint (410 Gone); its pending deliveries are cancelled."""
    conn.execute(update(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
                 .values(enabled=False, disabled_reason=reason[:200], updated_at=now))
    return cancel_pending(conn, endpoint_id, now, reason)


def enable_endpoint(conn: Connection, endpoint_id: int, now: datetime) -> Endpoint:
    """Deliver to a disabled endpoint again (from the next event on)."""
    get_endpoint(conn, endpoint_id)
    conn.execute(update(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
                 .values(enabled=True, disabled_reason=None, updated_at=now))
    return get_endpoint(conn, endpoint_id)


def cancel_pending(conn: Connection, endpoint_id: int, now: datetime, reason: str) -> int:
    return int(conn.execute(update(webhook_deliveries).where(
        webhook_deliveries.c.endpoint_id == endpoint_id,
        webhook_deliveries.c.status == "pending")
        .values(status="cancelled", finished_at=now, next_attempt_at=None, claimed_by=None,
                claim_expires_at=None, last_error=reason[:300])).rowcount)


# --------------------------------------------------------------------------- the outbox


def subscribers(conn: Connection, event_type: str) -> list[int]:
    """The enabled endpoints subscribed to ``event_type`` (a tiny table: one query)."""
    rows = conn.execute(select(webhook_endpoints.c.id, webhook_endpoints.c.event_types)
                        .where(webhook_endpoints.c.enabled == true(),
                               webhook_endpoints.c.removed_at.is_(None)))
    return [row.id for row in rows if event_type in (row.event_types or ())]


def timestamp(now: datetime) -> str:
    """An instant as payloads carry it: ISO 8601 in UTC with a ``Z``."""
    return now.isoformat().replace("+00:00", "Z")


def emit(conn: Connection, event_type: str, now: datetime, data: Mapping[str, Any], *,
         endpoints: Sequence[int] | None = None) -> str | None:
    """Put ``event_type`` in the outbox for every endpoint subscribed to it (or for
    ``endpoints``), in the caller's transaction. Its message id (``msg_…``), or None if
    no endpoint wants it (then nothing is written)."""
    targets = subscribers(conn, event_type) if endpoints is None else list(endpoints)
    if not targets:
        return None
    message_id = f"msg_{uuid.uuid4().hex}"
    payload = {"type": event_type, "timestamp": timestamp(now), "data": dict(data)}
    conn.execute(insert(webhook_messages).values(id=message_id, type=event_type,
                                                 payload=payload, created_at=now))
    conn.execute(insert(webhook_deliveries), [
        {"endpoint_id": endpoint_id, "message_id": message_id, "status": "pending",
         "attempts": 0, "next_attempt_at": now, "first_attempt_at": None, "claimed_by": None,
         "claim_expires_at": None, "last_status_code": None, "last_error": None,
         "created_at": now, "finished_at": None} for endpoint_id in targets])
    return message_id


def _external_ids(conn: Connection, patient_id: int | None, appointment_id: int | None,
                  ) -> dict[str, str | None]:
    """The practice's own ids (as imported) of a patient and an appointment."""
    found: dict[str, str | None] = {"patient_id": None, "appointment_id": None}
    if patient_id is not None:
        found["patient_id"] = conn.execute(select(patients.c.external_id).where(
            patients.c.id == patient_id)).scalar()
    if appointment_id is not None:
        found["appointment_id"] = conn.execute(select(appointments.c.external_id).where(
            appointments.c.id == appointment_id)).scalar()
    return found


def emit_about(conn: Connection, event_type: str, now: datetime, *, patient_id: int | None,
               appointment_id: int | None = None, **data: Any) -> str | None:
    """:func:`emit` with the patient's and appointment's ids as the practice knows them
    (looked up only when an endpoint is subscribed)."""
    targets = subscribers(conn, event_type)
    if not targets:
        return None
    return emit(conn, event_type, now, {**_external_ids(conn, patient_id, appointment_id),
                                        **data}, endpoints=targets)


def emit_touch_point(conn: Connection, event_type: str, now: datetime, tp_id: int, *,
                     error_code: str | None = None) -> str | None:
    """``touch_point.failed`` / ``touch_point.delivered`` for touch point ``tp_id``, as it
    is now in this transaction (its channel, reason). Test sends to a manager's own phone
    are not reported."""
    targets = subscribers(conn, event_type)
    if not targets:
        return None
    tp = conn.execute(select(touch_points).where(touch_points.c.id == tp_id)).first()
    if tp is None or tp.test or tp.patient_id is None:
        return None
    data: dict[str, Any] = {"touch_point_id": tp.id, "journey": tp.journey, "step": tp.step,
                            "channel": tp.channel, "recipient": _recipient_kind(tp.recipient)}
    if event_type == "touch_point.failed":
        data.update(reason=tp.reason, error_code=error_code)
    return emit(conn, event_type, now, {
        **_external_ids(conn, tp.patient_id, tp.appointment_id), **data}, endpoints=targets)


def _recipient_kind(recipient: str | None) -> str:
    """``patient``, ``contact`` or ``referrer`` (the kind, not whose address)."""
    return (recipient or "patient").split(":", 1)[0]


def emit_opt_out(conn: Connection, channel: str, address: str, purpose: str, source: str,
                 now: datetime) -> int:
    """``patient.opted_out`` for each patient whose own phone (SMS) or email is
    ``address``; how many were emitted. The address itself is never in the event."""
    if source in NOT_AN_OPT_OUT:
        return 0
    targets = subscribers(conn, "patient.opted_out")
    if not targets:
        return 0
    column = patients.c.phone if channel == "sms" else func.lower(patients.c.email)
    wanted = address if channel == "sms" else address.strip().lower()
    found = conn.execute(select(patients.c.external_id).where(column == wanted)
                         .order_by(patients.c.id)).scalars().all()
    for external_id in found:
        emit(conn, "patient.opted_out", now, {
            "patient_id": external_id, "channel": channel, "purpose": purpose,
            "source": source}, endpoints=targets)
    return len(found)


__all__ = ["EVENT_TYPES", "TEST_EVENT", "Endpoint", "add_endpoint", "check_url", "emit",
           "emit_about", "emit_opt_out", "emit_touch_point"]
