"""The channel contract.

The base class owns the send flow; a provider fills in three hooks::

    send(message)
      └─ build_payload(message)   what the provider's API takes
      └─ call(payload)            one request; raises a ChannelError subclass on failure
      └─ parse_reply(reply)       → SendResult (provider message id)

Adapters never sleep or retry: the dispatcher asks the retry policy what to do with a
:class:`~engine.errors.TransientChannelError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
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

    def close(self) -> None:  # noqa: B027 - optional hook, most channels hold nothing
        """Release connections (called on shutdown)."""
