"""The fake provider: records every message and can be scripted to fail.

For tests and demos. ``sent`` holds what it took, in order; with ``outbox`` set it also
appends one JSON line per message to that file (so several processes can be checked).
Script outcomes with :meth:`FakeChannel.script` (consumed one per send) or a rule with
:meth:`FakeChannel.fail_when`.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine.channels.base import Channel, OutboundMessage, SendResult
from engine.errors import ChannelError

Outcome = ChannelError | Callable[[OutboundMessage], None] | None


class FakeChannel(Channel):
    provider = "fake"
    sends_for_real = False

    def __init__(self, kind: str, outbox: Path | None = None, latency: float = 0.0) -> None:
        super().__init__(kind)
        self.outbox = outbox
        self.latency = latency
        self.sent: list[OutboundMessage] = []
        self.attempts: list[OutboundMessage] = []
        self._scripted: deque[Outcome] = deque()
        self._rules: list[Callable[[OutboundMessage], ChannelError | None]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def script(self, *outcomes: Outcome) -> None:
        """Queue outcomes: an exception to raise, a callable to run, or None (success)."""
        self._scripted.extend(outcomes)

    def fail_when(self, rule: Callable[[OutboundMessage], ChannelError | None]) -> None:
        self._rules.append(rule)

    def call(self, payload: Any, message: OutboundMessage) -> Any:
        if self.latency:
            time.sleep(self.latency)  # a provider's round trip, for demos and load tests
        with self._lock:
            self.attempts.append(message)
            outcome = self._scripted.popleft() if self._scripted else None
        for rule in self._rules:
            error = rule(message)
            if error is not None:
                raise error
        if isinstance(outcome, ChannelError):
            raise outcome
        if callable(outcome):
            outcome(message)
        with self._lock:
            self.sent.append(message)
            message_id = f"fake-{self.kind}-{os.getpid()}-{next(self._ids)}"
        if self.outbox is not None:
            line = json.dumps({**asdict(message), "provider_message_id": message_id}) + "\n"
            with self.outbox.open("a", encoding="utf-8") as fh:
                fh.write(line)
        return message_id

    def parse_reply(self, reply: Any, message: OutboundMessage) -> SendResult:
        return SendResult(self.provider, str(reply))
