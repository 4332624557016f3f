"""The console channel (dry run): prints each message, never calls a provider."""

from __future__ import annotations

import itertools
import sys
from typing import Any, TextIO

from engine.channels.base import Channel, OutboundMessage, SendResult
from engine.privacy import mask_address


class ConsoleChannel(Channel):
    provider = "console"
    sends_for_real = False

    def __init__(self, kind: str, out: TextIO | None = None, reveal: bool = False,
                 once: bool = False) -> None:
        super().__init__(kind)
        self.out = out
        self.reveal = reveal
        self.once = once  # print each distinct message once (a dry-run daemon re-plans)
        self._printed: set[tuple[str, str, str]] = set()
        self._ids = itertools.count(1)

    def call(self, payload: Any, message: OutboundMessage) -> Any:
        key = (message.to, message.subject or "", message.body)
        if self.once and key in self._printed:
            return f"console-{next(self._ids)}"
        self._printed.add(key)
        out = self.out or sys.stdout
        to = message.to if self.reveal else mask_address(message.to)
        header = f"── {message.kind} to {to} · {message.journey}/{message.step} " \
                 f"· touch point {message.touch_point_id}"
        lines = [header]
        if message.subject:
            lines.append(f"Subject: {message.subject}")
        lines.append(message.body)
        out.write("\n".join(lines) + "\n\n")
        return f"console-{next(self._ids)}"

    def parse_reply(self, reply: Any, message: OutboundMessage) -> SendResult:
        return SendResult(self.provider, str(reply))
