"""Channels: where a rendered message leaves Touchpoint.

One module per provider (``fake``, ``console``; the real providers beside them), each a
:class:`~engine.channels.base.Channel`. :func:`build_channels` picks them from settings.
"""

from __future__ import annotations

from typing import TextIO

from engine.channels.base import Channel, OutboundMessage, SendResult
from engine.channels.console import ConsoleChannel
from engine.channels.fake import FakeChannel
from engine.settings import Settings

__all__ = ["Channel", "ConsoleChannel", "FakeChannel", "OutboundMessage", "SendResult",
           "build_channels"]


def build_channels(settings: Settings, *, dry_run: bool = False,
                   out: TextIO | None = None) -> dict[str, Channel]:
    """The channel for each kind (``sms``, ``email``). ``dry_run`` forces console."""
    channels: dict[str, Channel] = {}
    for kind, key in (("sms", "channels.sms_provider"), ("email", "channels.email_provider")):
        provider = "console" if dry_run else settings.require(key)
        if provider == "console":
            channels[kind] = ConsoleChannel(kind, out=out)
        elif provider == "fake":
            channels[kind] = FakeChannel(kind, outbox=settings.channels.fake_outbox)
    return channels
