"""Retry policy: what to do after a transient provider error.

The policy returns a decision — retry at an instant, or give up — and never sleeps.
Backoff doubles from ``backoff`` up to ``max_backoff``; a provider's Retry-After wins
when it asks for longer; nothing is retried past the touch point's deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.errors import TransientChannelError


@dataclass(frozen=True)
class RetryAt:
    at: datetime


@dataclass(frozen=True)
class GiveUp:
    why: str


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff: timedelta = timedelta(minutes=1)
    max_backoff: timedelta = timedelta(hours=1)

    def delay(self, attempts: int) -> timedelta:
        delay: timedelta = self.backoff * (2 ** max(attempts - 1, 0))
        return min(delay, self.max_backoff)

    def decide(self, attempts: int, error: TransientChannelError, now: datetime,
               deadline: datetime | None) -> RetryAt | GiveUp:
        if attempts >= self.max_attempts:
            return GiveUp(f"gave up after {attempts} attempts")
        at = now + self.delay(attempts)
        if error.retry_after is not None and error.retry_after > at:
            at = error.retry_after
        if deadline is not None and at >= deadline:
            return GiveUp("the next retry would be past its deadline")
        return RetryAt(at)
