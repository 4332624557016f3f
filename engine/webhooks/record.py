"""Apply a provider event to the ledger: once, in any order, never backwards.

Statuses only move up this ladder; a final state (delivered, failed) never changes::

    sending ─┐
    unknown ─┼─► sent ─► delivered
             └────────► failed

so a ``sent`` callback arriving after ``delivered`` is kept in the history but changes
nothing, and an ``unknown`` touch point (the sender died after calling the provider) is
reconciled by whatever the provider reports. Every event is kept in
``provider_events`` (de-duplicated by the provider's event id) and in the touch point's
history; unsubscribes, spam reports and Twilio's 21610 become opt-outs.

One way back: a message the carrier or mailbox turned away — a Twilio ``undelivered`` /
``failed`` callback (30003 unreachable, 30005 unknown number, 30006 landline, …) or a
SendGrid blocked bounce — goes back to ``planned`` (reason ``fallback``) when its step
has a channel after the one that failed and its deadline has not passed; the dispatcher
then sends it through that next channel only. A blocked bounce with no channel left is
retried on the same channel (reason ``retry``) as the retry policy allows. Twilio 21610
fails it with reason ``opted_out``; 30006 also marks the number as not textable (an SMS
opt-out with source ``landline``), so later steps go straight to email.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from engine import outbound_webhooks
from engine.definitions import Definitions
from engine.errors import TransientChannelError
from engine.outcomes import Reason, Status
from engine.privacy import redact
from engine.retry import RetryAt, RetryPolicy
from engine.store.ledger import TouchPoint, touch_point_from_row
from engine.store.records import add_opt_out, remove_opt_outs
from engine.store.schema import history, provider_events, touch_points
from engine.webhooks import Kind, ProviderEvent
from engine.webhooks.twilio import LANDLINE_CODE, UNSUBSCRIBED_CODE

log = logging.getLogger("touchpoint.webhooks")

#: The opt-out source that marks a number as not textable (Twilio 30006).
LANDLINE_SOURCE = "landline"

_RANK = {Status.PLANNED: 0, Status.SENDING: 1, Status.UNKNOWN: 2, Status.SENT: 3,
         Status.DELIVERED: 4, Status.FAILED: 4, Status.SKIPPED: 4, Status.CANCELLED: 4}
#: Which channel a provider's events are about (a late SMS callback after the touch point
#: fell back to email must not settle the email).
_CHANNEL_OF = {"twilio": "sms", "sendgrid": "email"}
_TARGET = {Kind.QUEUED: Status.SENT, Kind.SENT: Status.SENT, Kind.DELIVERED: Status.DELIVERED,
           Kind.FAILED: Status.FAILED, Kind.BOUNCED: Status.FAILED, Kind.DROPPED: Status.FAILED}


@dataclass(frozen=True)
class Redelivery:
    """What may be done with a message a carrier or mailbox turned away: the step's next
    channel (from the definitions), or a retry on the same one (the retry policy)."""

    definitions: Definitions
    retry: RetryPolicy

    def next_channel(self, tp: TouchPoint) -> str | None:
        journey = self.definitions.journey(tp.journey)
        step = journey.step(tp.step) if journey else None
        if step is None or tp.channel not in step.channels:
            return None
        later = step.channels[step.channels.index(tp.channel) + 1:]
        return later[0] if later else None

    def retry_at(self, tp: TouchPoint, event: ProviderEvent, now: datetime) -> datetime | None:
        decision = self.retry.decide(max(tp.attempts, 1), TransientChannelError(
            event.detail, provider=event.provider), now, tp.expires_at)
        return decision.at if isinstance(decision, RetryAt) else None


@dataclass(frozen=True)
class Recorded:
    outcome: str  # duplicate | applied | noted | orphan
    touch_point_id: int | None = None
    status: str | None = None


def record_event(conn: Connection, event: ProviderEvent, now: datetime,
                 redelivery: Redelivery | None = None) -> Recorded:
    """Record ``event`` and apply it. With ``redelivery``, a message turned away by the
    carrier or mailbox is tried again (next channel, or a retry) instead of failing."""
    detail = redact(event.detail)
    tp = _find(conn, event)
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    inserted = conn.execute(
        dialect.insert(provider_events).values(
            provider=event.provider, event_id=event.event_id[:160], kind=event.kind,
            status=event.status[:40], touch_point_id=tp.id if tp else None,
            provider_message_id=event.provider_message_id, occurred_at=event.occurred_at,
            received_at=now, detail=detail, payload=dict(event.raw))
        .on_conflict_do_nothing(index_elements=["event_id"])
        .returning(provider_events.c.id)).first()
    if inserted is None:
        return Recorded("duplicate", tp.id if tp else None)
    _opt_out(conn, event, tp, now)
    if tp is None:
        log.warning("%s event %s (%s) matches no touch point", event.provider, event.kind,
                    event.event_id)
        return Recorded("orphan")
    target = _TARGET.get(event.kind)
    about_another_channel = tp.channel is not None \
        and _CHANNEL_OF.get(event.provider, tp.channel) != tp.channel
    if target is not None and not about_another_channel \
            and _RANK[target] > _RANK[Status(tp.status)] \
            and tp.status in (Status.SENDING, Status.UNKNOWN, Status.SENT):
        if target == Status.FAILED and redelivery is not None:
            again = _again(conn, tp, event, redelivery, now, detail)
            if again is not None:
                return again
        changes = {"status": target, "updated_at": now,
                   "provider_message_id": tp.provider_message_id or event.provider_message_id,
                   "provider": tp.provider or event.provider,
                   "sent_at": tp.sent_at or event.occurred_at,
                   "claimed_by": None, "claim_expires_at": None}
        if target == Status.FAILED:
            opted_out = event.provider == "twilio" and event.error_code == UNSUBSCRIBED_CODE
            changes.update(reason=Reason.OPTED_OUT if opted_out else Reason.PROVIDER_ERROR,
                           detail=detail, finished_at=now)
        elif target == Status.DELIVERED:
            changes.update(reason=None, finished_at=now)
        else:
            changes.update(reason=None, detail=None)
        moved = conn.execute(update(touch_points)
                             .where(touch_points.c.id == tp.id,
                                    touch_points.c.status == tp.status)
                             .values(**changes)).rowcount
        if moved == 1:
            _history(conn, tp.id, now, event, target, tp.status, detail)
            if target in (Status.DELIVERED, Status.FAILED):
                outbound_webhooks.emit_touch_point(conn, f"touch_point.{target}", now, tp.id,
                                                   error_code=event.error_code)
            return Recorded("applied", tp.id, target)
        tp = _find(conn, event) or tp  # it moved under us: note the event against it
    _history(conn, tp.id, now, event, None, None, detail)
    return Recorded("noted", tp.id, tp.status)


def _again(conn: Connection, tp: TouchPoint, event: ProviderEvent, redelivery: Redelivery,
           now: datetime, detail: str) -> Recorded | None:
    """Put a touch point the carrier or mailbox turned away back to ``planned`` — for the
    step's next channel, or (a temporary refusal with no channel left) for a retry — if
    its deadline allows; None if it fails for good."""
    carrier = event.provider == "twilio" and event.status.lower() in ("undelivered", "failed") \
        and event.error_code != UNSUBSCRIBED_CODE
    if not (carrier or event.temporary):
        return None
    if tp.expires_at is not None and now >= tp.expires_at:
        return None
    following = redelivery.next_channel(tp)
    reason: str
    if following is not None:  # (the row keeps what the provider said; history the plan)
        reason, due, kept = Reason.FALLBACK, now, detail
        note = f"{detail}; trying {following} next"
    else:
        retry_at = redelivery.retry_at(tp, event, now) if event.temporary else None
        if retry_at is None:
            return None
        reason, due = "retry", retry_at
        kept = note = f"{detail}; retrying at {retry_at.isoformat()}"
    moved = conn.execute(update(touch_points)
                         .where(touch_points.c.id == tp.id, touch_points.c.status == tp.status)
                         .values(status=Status.PLANNED, reason=reason, detail=kept,
                                 due_at=max(due, now), claimed_by=None, claim_expires_at=None,
                                 finished_at=None, updated_at=now)).rowcount
    if moved != 1:
        return None
    _history(conn, tp.id, now, event, Status.PLANNED, tp.status, note)
    log.info("touch point %s: %s reported %s; %s", tp.id, event.provider, event.status,
             "trying " + following if following else "retrying")
    return Recorded("applied", tp.id, Status.PLANNED)


def _find(conn: Connection, event: ProviderEvent) -> TouchPoint | None:
    row = None
    if event.touch_point_id is not None:
        row = conn.execute(select(touch_points)
                           .where(touch_points.c.id == event.touch_point_id)).first()
    if row is None and event.provider_message_id:
        row = conn.execute(select(touch_points).where(
            touch_points.c.provider_message_id == event.provider_message_id)).first()
    return touch_point_from_row(row) if row is not None else None


def _history(conn: Connection, tp_id: int, now: datetime, event: ProviderEvent,
             status: str | None, previous: str | None, detail: str) -> None:
    conn.execute(insert(history).values(
        touch_point_id=tp_id, at=now, kind="delivery", status=status, previous_status=previous,
        reason=str(event.kind), detail=detail, source=event.provider,
        provider_event_id=event.event_id[:120]))


def _opt_out(conn: Connection, event: ProviderEvent, tp: TouchPoint | None,
             now: datetime) -> None:
    address = (tp.address if tp else None) or event.address
    if not address:
        return
    if event.kind == Kind.SPAM_REPORT:
        add_opt_out(conn, "email", address, "all", event.provider,
                    "spam report", now)
    elif event.kind == Kind.UNSUBSCRIBED:
        add_opt_out(conn, "email", address, event.purpose or "all", event.provider,
                    f"unsubscribed at {event.provider}", now)
    elif event.kind == Kind.RESUBSCRIBED:  # a group resubscribe: that group only
        remove_opt_outs(conn, "email", address, event.purpose or "marketing")
    elif event.kind == Kind.FAILED and event.error_code == UNSUBSCRIBED_CODE:
        add_opt_out(conn, "sms", address, "all", event.provider,
                    "the carrier reports the recipient unsubscribed (21610)", now)
    elif event.kind == Kind.FAILED and event.error_code == LANDLINE_CODE:
        add_opt_out(conn, "sms", address, "all", LANDLINE_SOURCE,
                    f"not textable: {event.provider} reports a landline or a number that "
                    f"cannot take texts ({LANDLINE_CODE})", now)
