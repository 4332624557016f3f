"""Who is calling: the ``Authorization: Bearer KEY`` header, the key's scopes, its rate.

==========================  ======  ==========================================
no key, or not a key of ours  401     ``WWW-Authenticate: Bearer``
a revoked key                 401     (audited as ``api.denied``)
a key without the scope       403     (audited as ``api.denied``)
over the key's rate           429     ``Retry-After: <seconds>`` (audited as
                                      ``api.denied``, once a period per key)
==========================  ======  ==========================================

The rate (setting ``api.rate_limit``, e.g. ``600/minute``) is a token bucket per key, in
the serve process: a key may burst up to the count, then makes requests as fast as the
bucket refills. It reads time from :mod:`engine.clock`, so tests can move it. A key over
its rate is audited at its first refusal, then at most once per the setting's period (a
minute for ``600/minute``): a flood of requests does not flood the audit log.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine import audit, clock
from engine.api import keys
from engine.api.problems import Problem


@dataclass(frozen=True)
class Caller:
    """An authenticated request: which key, from where."""

    key_id: int
    name: str
    address: str

    @property
    def actor(self) -> str:
        return f"api-key:{self.name}"


class RateLimiter:
    """A token bucket per key: ``count`` tokens, refilled at ``count`` per ``period``."""

    def __init__(self, count: int, period: timedelta) -> None:
        self.capacity = float(count)
        self.per_second = count / period.total_seconds()
        self.period = period
        self._buckets: dict[str, tuple[float, datetime]] = {}
        self._audited: dict[str, datetime] = {}  # the last refusal audited, per key
        self._lock = threading.Lock()

    def take(self, key: str, now: datetime) -> float:
        """Take one token for ``key``: 0 when allowed, else the seconds until one is back."""
        with self._lock:
            tokens, then = self._buckets.get(key, (self.capacity, now))
            elapsed = max((now - then).total_seconds(), 0.0)
            tokens = min(self.capacity, tokens + elapsed * self.per_second)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.per_second

    def to_audit(self, key: str, now: datetime) -> bool:
        """Whether this refusal of ``key`` is audited: its first, then one a period."""
        with self._lock:
            last = self._audited.get(key)
            if last is not None and timedelta(0) <= now - last < self.period:
                return False
            self._audited[key] = now
            return True


_bearer = HTTPBearer(auto_error=False, scheme_name="api-key",
                     description="An API key from `touchpoint api-keys create NAME --scope …`")

_CREDENTIALS = Security(_bearer)


def _unauthorized(detail: str, error: str | None = None) -> Problem:
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


def requires(scope: str) -> Callable[..., Caller]:
    """A dependency: the calling key, which must hold ``scope`` and be within its rate."""

    def dependency(request: Request,
                   credentials: HTTPAuthorizationCredentials | None = _CREDENTIALS) -> Caller:
        if credentials is None:
            raise _unauthorized("send an API key: Authorization: Bearer KEY (make one with "
                                "`touchpoint api-keys create NAME --scope …`)")
        services = request.app.state.services
        address = request.client.host if request.client else ""
        now = clock.now()
        with services.db.transaction() as conn:
            key = keys.find(conn, credentials.credentials)
            if key is None:
                raise _unauthorized("this is not a valid API key", "invalid_token")
            refusal: Problem | None = None
            if key.revoked_at is not None:
                refusal = _unauthorized(f"the key {key.name} was revoked", "invalid_token")
            elif scope not in key.scopes:
                refusal = Problem(
                    403, "insufficient-scope", f"the key {key.name} lacks the scope {scope} — "
                    f"make a key with --scope {scope}",
                    headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", '
                             f'scope="{scope}"'})
            if refusal is not None:
                audit.record(conn, actor=f"api-key:{key.name}", action="api.denied", now=now,
                             target=f"{request.method} {request.url.path}", address=address,
                             detail={"status": refusal.status, "reason": refusal.kind})
        if refusal is not None:
            raise refusal
        limiter: RateLimiter = request.app.state.api_limiter
        wait = limiter.take(key.name, now)
        if wait > 0:
            limited = Problem(429, "rate-limited",
                              f"the key {key.name} made more requests than api.rate_limit "
                              "allows — wait Retry-After seconds", headers={
                                  "Retry-After": str(max(1, math.ceil(wait)))})
            if limiter.to_audit(key.name, now):
                with services.db.transaction() as conn:
                    audit.record(conn, actor=f"api-key:{key.name}", action="api.denied",
                                 now=now, target=f"{request.method} {request.url.path}",
                                 address=address,
                                 detail={"status": 429, "reason": limited.kind})
            raise limited
        return Caller(key.id, key.name, address)

    return dependency
