"""Channels: where a rendered message leaves Touchpoint.

One module per provider — ``twilio_sms``, ``sendgrid_email``, and the ``fake`` and
``console`` channels beside them — each a :class:`~engine.channels.base.Channel`.
:func:`build_channels` picks them from settings and fails at start-up, naming the
setting, when a credential is missing.
"""

from __future__ import annotations

from email.utils import parseaddr
from typing import TextIO

from engine.channels.base import Channel, OutboundMessage, SendResult
from engine.channels.console import ConsoleChannel
from engine.channels.fake import FakeChannel
from engine.errors import ConfigError
from engine.settings import Settings
from engine.unsubscribe import public_url

__all__ = ["Channel", "ConsoleChannel", "FakeChannel", "OutboundMessage", "SendResult",
           "build_channels"]


def build_channels(settings: Settings, *, dry_run: bool = False,
                   out: TextIO | None = None, once: bool = False) -> dict[str, Channel]:
    """The channel for each kind (``sms``, ``email``). ``dry_run`` forces console;
    ``once`` prints each distinct console message once."""
    channels: dict[str, Channel] = {}
    for kind, key in (("sms", "channels.sms_provider"), ("email", "channels.email_provider")):
        provider = "console" if dry_run else settings.require(key)
        if provider == "console":
            channels[kind] = ConsoleChannel(kind, out=out, once=once)
        elif provider == "fake":
            channels[kind] = FakeChannel(
                kind, outbox=settings.channels.fake_outbox,
                latency=settings.channels.fake_latency.total_seconds())
        elif provider == "twilio":
            channels[kind] = _twilio(settings)
        elif provider == "sendgrid":
            channels[kind] = _sendgrid(settings)
    return channels


def status_callback_builder(settings: Settings) -> str:
    """The URL Twilio calls with a message's status (``?tp=`` is added per message)."""
    return f"{public_url(settings)}/webhooks/twilio/status"


def _require_public_url(settings: Settings, why: str) -> None:
    if not settings.webhooks.public_url:
        raise ConfigError(f"setting webhooks.public_url is not set — {why}: set "
                          "TOUCHPOINT_PUBLIC_URL to where `touchpoint serve` is reachable "
                          "(https)")


def _twilio(settings: Settings) -> Channel:
    from engine.channels.twilio_sms import TwilioSMS

    twilio = settings.twilio
    if not (twilio.from_number or twilio.messaging_service_sid):
        raise ConfigError("setting twilio.from_number or twilio.messaging_service_sid is not "
                          "set — set TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID")
    _require_public_url(settings, "Twilio needs it to report delivery")
    callback = status_callback_builder(settings)
    try:
        return TwilioSMS(
            account_sid=settings.require("twilio.account_sid"),
            auth_token=settings.require("twilio.auth_token"),
            from_number=None if twilio.messaging_service_sid else twilio.from_number,
            messaging_service_sid=twilio.messaging_service_sid or None,
            api_url=twilio.api_url or None,
            status_callback_url=lambda tp_id: f"{callback}?tp={tp_id}",
            timeout=settings.channels.provider_timeout)
    except ValueError as exc:
        raise ConfigError(f"Twilio settings: {exc}") from None


def _sendgrid(settings: Settings) -> Channel:
    from engine.channels.sendgrid_email import SendGridEmail

    name, address = parseaddr(settings.require("email.from_address"))
    # Marketing emails (and transactional ones, by setting) carry List-Unsubscribe with both
    # targets and a visible link: without these they would point nowhere a patient can reach.
    _require_public_url(settings, "emails carry an unsubscribe link to it")
    if not settings.email.unsubscribe_mailto:
        raise ConfigError("setting email.unsubscribe_mailto is not set — List-Unsubscribe needs "
                          "a mailto: set TOUCHPOINT_UNSUBSCRIBE_MAILTO to an address whose mail "
                          "SendGrid Inbound Parse posts to /webhooks/sendgrid/inbound")
    try:
        return SendGridEmail(
            api_key=settings.require("sendgrid.api_key"), from_email=address,
            from_name=name or settings.practice.name, api_url=settings.sendgrid.api_url or None,
            timeout=settings.channels.provider_timeout)
    except ValueError as exc:
        raise ConfigError(f"SendGrid settings: {exc}") from None
