"""The channel contract.

The base class owns the send flow; a provider fills in three hooks::

    send(message)
      └─ build_payload(message)   what the provider's API takes
      └─ call(payload)            one request; raises a ChannelError subclass on failure
      └─ parse_reply(reply)       → SendResult (provider message id)

Adapters never sleep or retry: the dispatcher asks the retry policy what to do with a
:class:`~engine.errors.TransientChannelError`.

One more hook, for reconciliation (:mod:`engine.reconcile`): a channel whose provider can
list what it sent sets ``can_find_sent`` and implements :meth:`Channel.find_sent` — was a
message with this body sent to this address since then? (Twilio: ``messages.list``;
SendGrid's basic API has no such lookup.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class OutboundMessage:
    touch_point_id: int
    kind: str  # "sms" or "email"
    to: str
    body: str
    subject: str | None = None
    html: str | None = None
    purpose: str = "transactional"
    headers: dict[str, str] = field(default_factory=dict)
    journey: str = ""
    step: str = ""
    test: bool = False


@dataclass(frozen=True)
class SendResult:
    provider: str
    provider_message_id: str | None
    detail: str = ""


class Channel(ABC):
    """Sends one kind of message (``sms`` or ``email``) through one provider."""

    provider: str = "channel"
    sends_for_real: bool = True
    #: whether :meth:`find_sent` can ask the provider what it sent
    can_find_sent: bool = False

    def __init__(self, kind: str) -> None:
        if kind not in ("sms", "email"):
            raise ValueError(f"unknown channel kind {kind!r}")
        self.kind = kind

    def send(self, message: OutboundMessage) -> SendResult:
        payload = self.build_payload(message)
        reply = self.call(payload, message)
        return self.parse_reply(reply, message)

    def build_payload(self, message: OutboundMessage) -> Any:
        return message

    @abstractmethod
    def call(self, payload: Any, message: OutboundMessage) -> Any:
        """Hand the payload to the provider. Raises ChannelError subclasses."""

    @abstractmethod
    def parse_reply(self, reply: Any, message: OutboundMessage) -> SendResult:
        """Turn the provider's reply into a SendResult."""

    def find_sent(self, to: str, since: datetime, body: str) -> str | None:
        """The provider's id of a message with ``body`` sent to ``to`` at or after
        ``since``, or None if the provider has none. Raises a ChannelError if the provider
        could not be asked. Only for channels with ``can_find_sent``."""
        raise NotImplementedError(f"{self.provider} cannot look up the messages it sent")

    def close(self) -> None:  # noqa: B027 - optional hook, most channels hold nothing
        """Release connections (called on shutdown)."""
