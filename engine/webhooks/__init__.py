"""Webhooks: verify → normalise → record.

Each provider event becomes one frozen :class:`ProviderEvent` (delivered, bounced,
failed, opened, clicked, spam report, unsubscribed, …, or ``unknown`` for statuses we do
not map — recorded, never crashed on), with an aware UTC timestamp, the provider's ids
and the raw payload. :func:`engine.webhooks.record.record_event` applies it to the ledger:
de-duplicated by the provider's event id, in any order, never moving a touch point back
out of a final state.

``twilio.py`` and ``sendgrid.py`` verify signatures and normalise; ``app.py`` is the
ASGI app ``touchpoint serve`` runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    DROPPED = "dropped"
    FAILED = "failed"
    OPENED = "opened"
    CLICKED = "clicked"
    SPAM_REPORT = "spam_report"
    UNSUBSCRIBED = "unsubscribed"
    RESUBSCRIBED = "resubscribed"
    INBOUND = "inbound"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ProviderEvent:
    provider: str
    event_id: str  # the provider's id for this event (de-duplication)
    kind: Kind
    status: str  # the provider's own word for it
    occurred_at: datetime
    touch_point_id: int | None = None
    provider_message_id: str | None = None
    address: str | None = None
    error_code: str | None = None
    detail: str = ""
    purpose: str | None = None  # for unsubscribes that name one (a SendGrid group)
    temporary: bool = False  # a refusal for now (SendGrid's blocked bounce): retry or fall back
    raw: Mapping[str, Any] = field(default_factory=dict)
