"""Sign-in attempts, rate-limited per account and per address.

A failed sign-in counts against the email it named and the address it came from. Past
:data:`PER_ACCOUNT` failures for an account, or :data:`PER_ADDRESS` from an address,
within :data:`WINDOW`, further attempts are refused (HTTP 429 with ``Retry-After``) until
the oldest failure leaves the window — a correct password included, so guessing cannot
go on by luck. A successful sign-in clears its account's failures.

The counts live in the serve process (a restart forgets them); they read the time from
:mod:`engine.clock`.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict, deque
from datetime import datetime, timedelta

WINDOW = timedelta(minutes=15)
PER_ACCOUNT = 5
PER_ADDRESS = 20


class SignInLimiter:
    def __init__(self, window: timedelta = WINDOW, per_account: int = PER_ACCOUNT,
                 per_address: int = PER_ADDRESS) -> None:
        self.window = window
        self.limits = {"account": per_account, "address": per_address}
        self._failures: dict[tuple[str, str], deque[datetime]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _keys(self, email: str, address: str) -> list[tuple[str, str]]:
        return [("account", email.strip().lower()), ("address", address)]

    def retry_after(self, email: str, address: str, now: datetime) -> int:
        """Seconds until an attempt is allowed (0: now)."""
        wait = 0.0
        with self._lock:
            for key in self._keys(email, address):
                failures = self._failures.get(key)
                if not failures:
                    continue
                while failures and now - failures[0] >= self.window:
                    failures.popleft()
                if len(failures) >= self.limits[key[0]]:
                    wait = max(wait, (failures[0] + self.window - now).total_seconds())
        return math.ceil(wait)

    def failed(self, email: str, address: str, now: datetime) -> None:
        with self._lock:
            for key in self._keys(email, address):
                self._failures[key].append(now)

    def succeeded(self, email: str) -> None:
        with self._lock:
            self._failures.pop(("account", email.strip().lower()), None)
