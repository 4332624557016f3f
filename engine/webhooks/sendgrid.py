"""SendGrid: the signed Event Webhook.

SendGrid signs the raw body with ECDSA (P-256, SHA-256) over ``timestamp + body``; the
public key is ``SENDGRID_WEBHOOK_PUBLIC_KEY``. A signature whose timestamp is more than
:data:`MAX_SIGNATURE_AGE` old is refused (a captured request cannot be replayed later).
Each event carries ``sg_event_id`` (used for de-duplication), ``sg_message_id`` and the
custom arg ``touch_point_id`` Touchpoint put on the message.

Event names are matched case-insensitively. A ``bounce`` whose ``type`` is ``blocked``
(and the older ``blocked`` event) is temporary: the receiving server refused it for now
(reputation, rate, content), so it is retried or handed to the step's next channel rather
than failed for good (``ProviderEvent.temporary``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sendgrid.helpers.eventwebhook import EventWebhook

from engine.privacy import redact
from engine.webhooks import Kind, ProviderEvent

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

#: How old a signed request may be (its signed timestamp against the clock).
MAX_SIGNATURE_AGE = timedelta(minutes=10)
#: ``type`` values of a ``bounce`` event that mean "not now" rather than "never".
TEMPORARY_BOUNCE_TYPES = frozenset({"blocked"})

EVENT_KINDS: dict[str, Kind] = {
    "processed": Kind.QUEUED,
    "delivered": Kind.DELIVERED,
    "deferred": Kind.DEFERRED,
    "bounce": Kind.BOUNCED,
    "blocked": Kind.BOUNCED,
    "dropped": Kind.DROPPED,
    "open": Kind.OPENED,
    "click": Kind.CLICKED,
    "spamreport": Kind.SPAM_REPORT,
    "unsubscribe": Kind.UNSUBSCRIBED,
    "group_unsubscribe": Kind.UNSUBSCRIBED,
    "group_resubscribe": Kind.RESUBSCRIBED,
}


def verify(public_key: str, body: bytes, signature: str | None, timestamp: str | None) -> bool:
    if not (public_key and signature and timestamp):
        return False
    try:
        webhook = EventWebhook(public_key)
        return bool(webhook.verify_signature(body.decode("utf-8"), signature, timestamp))
    except (ValueError, TypeError, UnicodeDecodeError):  # malformed key or signature
        return False


def fresh(timestamp: str | None, now: datetime) -> bool:
    """Whether a signature's timestamp (seconds since the epoch) is at most
    :data:`MAX_SIGNATURE_AGE` old — and not further ahead than that (clocks differ a
    little; a timestamp far in the future is a replay waiting to happen)."""
    try:
        signed_at = datetime.fromtimestamp(int((timestamp or "").strip()), UTC)
    except (ValueError, OverflowError, OSError):
        return False
    return abs(now - signed_at) <= MAX_SIGNATURE_AGE


def events(payload: Any, received_at: datetime) -> Iterator[ProviderEvent]:
    """Normalise a decoded webhook body (a JSON array of events)."""
    if not isinstance(payload, list):
        return
    for item in payload:
        if not isinstance(item, Mapping):
            continue
        name = str(item.get("event", ""))
        kind = EVENT_KINDS.get(name.lower(), Kind.UNKNOWN)
        temporary = name.lower() == "blocked" or (
            name.lower() == "bounce"
            and str(item.get("type") or "").lower() in TEMPORARY_BOUNCE_TYPES)
        try:
            occurred = datetime.fromtimestamp(int(item.get("timestamp") or 0), UTC)
        except (TypeError, ValueError, OverflowError):
            occurred = received_at
        raw_tp = item.get("touch_point_id")
        touch_point_id = int(str(raw_tp)) if str(raw_tp or "").isdigit() else None
        message_id = str(item.get("sg_message_id") or "").split(".", 1)[0] or None
        reason = " ".join(str(item.get(k)) for k in ("type", "reason", "status", "response")
                          if item.get(k))
        yield ProviderEvent(
            provider="sendgrid",
            event_id=f"sendgrid:{item.get('sg_event_id') or f'{message_id}:{name}:{occurred}'}",
            kind=kind, status=name, occurred_at=occurred, touch_point_id=touch_point_id,
            provider_message_id=message_id, address=item.get("email"),
            detail=redact(f"sendgrid {name}" + (f": {reason}" if reason else "")),
            purpose="marketing" if kind == Kind.RESUBSCRIBED or name.lower() == "group_unsubscribe"
            else None,
            temporary=temporary, raw=dict(item))
