"""Twilio: request signatures, status callbacks and inbound SMS.

Status callbacks carry ``MessageSid``, ``MessageStatus`` and, on failure, ``ErrorCode``;
the callback URL Touchpoint gives each message ends in ``?tp=<touch point id>``, so an
event maps back to its touch point even if the sender died before recording the SID.
Requests are verified with ``X-Twilio-Signature`` over the public URL Twilio called
(``TOUCHPOINT_PUBLIC_URL`` + path + query, so it works behind a proxy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from twilio.request_validator import RequestValidator

from engine.webhooks import Kind, ProviderEvent

STATUS_KINDS: dict[str, Kind] = {
    "accepted": Kind.QUEUED,
    "scheduled": Kind.QUEUED,
    "queued": Kind.QUEUED,
    "sending": Kind.QUEUED,
    "sent": Kind.SENT,
    "delivered": Kind.DELIVERED,
    "read": Kind.DELIVERED,
    "undelivered": Kind.FAILED,
    "failed": Kind.FAILED,
    "canceled": Kind.FAILED,
    "receiving": Kind.INBOUND,
    "received": Kind.INBOUND,
}
UNSUBSCRIBED_CODE = "21610"
#: Twilio error code: a landline or a number that cannot receive texts.
LANDLINE_CODE = "30006"


def verify(auth_token: str, url: str, params: Mapping[str, str], signature: str | None) -> bool:
    if not signature or not auth_token:
        return False
    return bool(RequestValidator(auth_token).validate(url, dict(params), signature))


def status_event(params: Mapping[str, str], touch_point_id: int | None, received_at: datetime,
                 idempotency_token: str | None = None) -> ProviderEvent:
    status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    code = params.get("ErrorCode") or None
    kind = STATUS_KINDS.get(status.lower(), Kind.UNKNOWN)
    detail = f"twilio status {status}" + (f", error {code}" if code else "")
    return ProviderEvent(
        provider="twilio",
        event_id=f"twilio:{idempotency_token}" if idempotency_token
        else f"twilio:{sid}:{status}:{code or ''}",
        kind=kind, status=status, occurred_at=received_at, touch_point_id=touch_point_id,
        provider_message_id=sid or None, address=params.get("To"), error_code=code,
        detail=detail, raw=dict(params))


@dataclass(frozen=True)
class InboundSms:
    message_sid: str
    from_number: str
    to_number: str
    body: str


def inbound_sms(params: Mapping[str, str]) -> InboundSms:
    return InboundSms(params.get("MessageSid") or params.get("SmsSid") or "",
                      params.get("From", ""), params.get("To", ""), params.get("Body", ""))


EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
