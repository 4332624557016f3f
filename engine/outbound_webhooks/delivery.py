"""Delivering outbound webhooks: claim what is due, sign, POST, record every attempt.

Each request carries the Standard Webhooks headers (``webhook-id``: the message id, the
same on every attempt; ``webhook-timestamp``: the attempt's time; ``webhook-signature``:
``v1,<base64 HMAC-SHA256>`` made by the ``standardwebhooks`` library with the endpoint's
``whsec_`` secret). The answer decides:

=================================  ===================================================
the endpoint answers               then
=================================  ===================================================
2xx                                ``delivered``
410 Gone                           ``failed``, and the endpoint is disabled: nothing more
                                   is sent to it (its pending deliveries are cancelled)
                                   until ``touchpoint webhooks enable ID``
anything else, a timeout (10 s),   tried again on :data:`RETRY_DELAYS` (5 s, 5 min,
a connection error, a redirect     30 min, 2 h, 5 h, 10 h), a last time 24 h after the
                                   first attempt, then ``failed``
=================================  ===================================================

Every attempt is a row of ``webhook_attempts`` (``touchpoint webhooks log``): its time,
the status code, a redacted excerpt of the error and when the next attempt is due.

Deliveries are claimed like touch points: a lease, and ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several daemons never send one twice at once. No transaction is open
while a request is in flight. An endpoint that timed out or could not be reached is not
tried again in the same run (its other deliveries wait for the next one), so one dead
endpoint costs a run one timeout, not one per message.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
from sqlalchemy import Connection, or_, select, text, update
from standardwebhooks.webhooks import Webhook

from engine import clock
from engine.dispatcher import new_worker_id
from engine.outbound_webhooks import disable_endpoint
from engine.privacy import redact
from engine.retry import GiveUp, RetryAt
from engine.store.database import Database
from engine.store.schema import (
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_messages,
)

log = logging.getLogger("touchpoint.outbound_webhooks")

TIMEOUT_SECONDS = 10.0
RETRY_DELAYS = (timedelta(seconds=5), timedelta(minutes=5), timedelta(minutes=30),
                timedelta(hours=2), timedelta(hours=5), timedelta(hours=10))
RETRY_WINDOW = timedelta(hours=24)
USER_AGENT = "Touchpoint-Webhooks/1"
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PENDING = text("webhook_deliveries.status = 'pending'")  # literal: the partial index


@dataclass(frozen=True)
class DeliveryRetryPolicy:
    """After a failed attempt: the next one after ``delays[attempts - 1]`` (the last delay
    repeats), never later than ``window`` after the first attempt — one last attempt is
    made then — and after that, give up."""

    delays: tuple[timedelta, ...] = RETRY_DELAYS
    window: timedelta = RETRY_WINDOW

    def decide(self, attempts: int, first_attempt_at: datetime, now: datetime,
               ) -> RetryAt | GiveUp:
        deadline = first_attempt_at + self.window
        if now >= deadline:
            return GiveUp(f"failed for {_span(self.window)} ({attempts} attempts)")
        delay = self.delays[min(max(attempts, 1), len(self.delays)) - 1]
        return RetryAt(min(now + delay, deadline))

    def schedule(self) -> list[timedelta]:
        """When each attempt is made, after the first, if every one fails."""
        times, at, attempts = [timedelta(0)], timedelta(0), 1
        while True:
            decision = self.decide(attempts, _EPOCH, _EPOCH + at)
            if isinstance(decision, GiveUp):
                return times
            at = decision.at - _EPOCH
            attempts += 1
            times.append(at)


def _span(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:g} h"


@dataclass
class DeliveryStats:
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    cancelled: int = 0
    put_off: int = 0  # another delivery to that endpoint just timed out: next run

    def as_dict(self) -> dict[str, int]:
        return {"delivered": self.delivered, "retried": self.retried, "failed": self.failed,
                "cancelled": self.cancelled, "put_off": self.put_off}

    @property
    def attempts(self) -> int:
        return self.delivered + self.retried + self.failed


@dataclass(frozen=True)
class Due:
    """A claimed delivery with what sending it needs."""

    id: int
    attempts: int
    first_attempt_at: datetime | None
    endpoint_id: int
    url: str
    secret: str
    enabled: bool
    message_id: str
    event_type: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Answer:
    status_code: int | None
    error: str | None
    duration_ms: int
    unreachable: bool = False  # a timeout or connection error

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class Deliverer:
    """Sends what is due. One per process (it keeps an HTTP client); ``run`` is called by
    the daemon's own thread, by ``touchpoint run --once`` and by ``webhooks deliver``."""

    db: Database
    worker: str = field(default_factory=new_worker_id)
    timeout: float = TIMEOUT_SECONDS
    batch_size: int = 20
    policy: DeliveryRetryPolicy = field(default_factory=DeliveryRetryPolicy)
    client: httpx2.Client | None = None

    def __post_init__(self) -> None:
        if self.client is None:
            self.client = httpx2.Client(timeout=self.timeout, follow_redirects=False,
                                        headers={"user-agent": USER_AGENT})

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def run(self, stop: Callable[[], bool] = lambda: False) -> DeliveryStats:
        """Deliver everything due now; return when nothing due is left (or ``stop()``)."""
        stats = DeliveryStats()
        unreachable: set[int] = set()
        gone: set[int] = set()  # answered 410: disabled, what waits for them cancelled
        while not stop():
            with self.db.transaction() as conn:
                batch = claim_due(conn, self.worker, clock.now(), self.batch_size,
                                  self.lease(), skip_endpoints=unreachable)
            if not batch:
                break
            for index, due in enumerate(batch):
                if stop():
                    self._release([d.id for d in batch[index:]], stats)
                    break
                if due.endpoint_id in gone:
                    continue
                if due.endpoint_id in unreachable:
                    self._release([due.id], stats)
                elif not due.enabled:
                    self._cancel(due, stats)
                else:
                    answer = self.attempt(due)
                    if answer.unreachable:
                        unreachable.add(due.endpoint_id)
                    if answer.status_code == 410:
                        gone.add(due.endpoint_id)
                    self._record(due, answer, stats)
        if stats.attempts or stats.cancelled:
            log.info("outbound webhooks: %d delivered, %d to retry, %d failed",
                     stats.delivered, stats.retried, stats.failed,
                     extra={"event": "webhooks_delivered", **stats.as_dict()})
        return stats

    def lease(self) -> timedelta:
        return timedelta(seconds=self.batch_size * (self.timeout + 5) + 60)

    def _release(self, ids: list[int], stats: DeliveryStats) -> None:
        if not ids:
            return
        with self.db.transaction() as conn:
            conn.execute(update(webhook_deliveries).where(
                webhook_deliveries.c.id.in_(ids),
                webhook_deliveries.c.claimed_by == self.worker)
                .values(claimed_by=None, claim_expires_at=None))
        stats.put_off += len(ids)

    # ------------------------------------------------------------------ one attempt

    def attempt(self, due: Due) -> Answer:
        """POST the message, signed now; what the endpoint answered. Never raises for
        what the endpoint does (timeouts, refusals, bad answers)."""
        assert self.client is not None
        now = clock.now()
        body = json.dumps(due.payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"content-type": "application/json", "webhook-id": due.message_id,
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": Webhook(due.secret).sign(due.message_id, now, body)}
        started = time.monotonic()
        try:
            with self.client.stream("POST", due.url, content=body, headers=headers) as reply:
                excerpt = b""
                if not 200 <= reply.status_code < 300:
                    for chunk in reply.iter_bytes():
                        excerpt += chunk
                        if len(excerpt) >= 200:
                            break
        except httpx2.TimeoutException:
            return Answer(None, f"timed out after {self.timeout:g} s", _ms(started), True)
        except httpx2.TransportError as exc:
            return Answer(None, _one_line(f"{type(exc).__name__}: {exc}"), _ms(started), True)
        except httpx2.HTTPError as exc:
            return Answer(None, _one_line(f"{type(exc).__name__}: {exc}"), _ms(started))
        if 200 <= reply.status_code < 300:
            return Answer(reply.status_code, None, _ms(started))
        said = _one_line(excerpt.decode("utf-8", "replace"))
        return Answer(reply.status_code, f"HTTP {reply.status_code}" + (
            f": {said}" if said else ""), _ms(started))

    def _record(self, due: Due, answer: Answer, stats: DeliveryStats) -> None:
        now = clock.now()
        attempt = due.attempts + 1
        first = due.first_attempt_at or now
        next_at: datetime | None = None
        error = redact(answer.error)[:300] if answer.error else None
        if answer.ok:
            outcome = status = "delivered"
            stats.delivered += 1
        elif answer.status_code == 410:
            outcome = status = "failed"
            error = f"{error or 'HTTP 410'} (410 Gone: the endpoint is disabled)"[:300]
            stats.failed += 1
        else:
            decision = self.policy.decide(attempt, first, now)
            if isinstance(decision, RetryAt):
                outcome, status, next_at = "retry", "pending", decision.at
                stats.retried += 1
            else:
                outcome = status = "failed"
                error = f"{error}; gave up: {decision.why}"[:300]
                stats.failed += 1
        with self.db.transaction() as conn:
            moved = conn.execute(update(webhook_deliveries).where(
                webhook_deliveries.c.id == due.id,
                webhook_deliveries.c.claimed_by == self.worker)
                .values(status=status, attempts=attempt, first_attempt_at=first,
                        next_attempt_at=next_at, claimed_by=None, claim_expires_at=None,
                        last_status_code=answer.status_code, last_error=error,
                        finished_at=None if status == "pending" else now)).rowcount
            if moved != 1:  # the claim lapsed and another worker took it: it records its own
                log.warning("webhook delivery %s: the claim lapsed before the answer was "
                            "recorded", due.id)
                return
            conn.execute(webhook_attempts.insert().values(
                delivery_id=due.id, attempt=attempt, at=now, status_code=answer.status_code,
                error=error, duration_ms=answer.duration_ms, outcome=outcome,
                next_attempt_at=next_at))
            if answer.status_code == 410:
                cancelled = disable_endpoint(conn, due.endpoint_id,
                                             "410 Gone from the endpoint", now)
                stats.cancelled += cancelled
                log.warning("webhook endpoint %s answered 410 Gone: disabled (%d pending "
                            "deliveries cancelled)", due.endpoint_id, cancelled,
                            extra={"event": "webhook_endpoint_gone"})
        if status == "failed":
            log.warning("webhook %s (%s) to endpoint %s failed: %s", due.message_id,
                        due.event_type, due.endpoint_id, error,
                        extra={"event": "webhook_failed"})

    def _cancel(self, due: Due, stats: DeliveryStats) -> None:
        with self.db.transaction() as conn:
            conn.execute(update(webhook_deliveries).where(
                webhook_deliveries.c.id == due.id,
                webhook_deliveries.c.claimed_by == self.worker)
                .values(status="cancelled", next_attempt_at=None, claimed_by=None,
                        claim_expires_at=None, finished_at=clock.now(),
                        last_error="the endpoint is disabled"))
        stats.cancelled += 1


def deliver_due(db: Database, stop: Callable[[], bool] = lambda: False) -> DeliveryStats:
    """Deliver what is due now, once (``touchpoint run --once``, ``webhooks deliver``)."""
    deliverer = Deliverer(db)
    try:
        return deliverer.run(stop)
    finally:
        deliverer.close()


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


# --------------------------------------------------------------------------- claiming


def claim_due(conn: Connection, worker: str, now: datetime, limit: int, lease: timedelta,
              *, skip_endpoints: Collection[int] = ()) -> list[Due]:
    """Lease up to ``limit`` pending deliveries due at ``now`` to ``worker``, oldest first
    (rows another worker holds are skipped on PostgreSQL, never waited for), leaving out
    those to ``skip_endpoints``."""
    d = webhook_deliveries
    due_ids = (select(d.c.id)
               .where(_PENDING, d.c.next_attempt_at <= now,
                      or_(d.c.claim_expires_at.is_(None), d.c.claim_expires_at < now))
               .order_by(d.c.next_attempt_at, d.c.id).limit(limit)
               .with_for_update(skip_locked=True))
    if skip_endpoints:
        due_ids = due_ids.where(d.c.endpoint_id.not_in(list(skip_endpoints)))
    found = conn.execute(due_ids).scalars().all()  # (idle: one read, no write lock)
    if not found:
        return []
    claimed = conn.execute(update(d).where(  # (SQLite: still claimable when we write)
        d.c.id.in_(found), _PENDING,
        or_(d.c.claim_expires_at.is_(None), d.c.claim_expires_at < now))
        .values(claimed_by=worker, claim_expires_at=now + lease)
        .returning(d.c.id)).scalars().all()
    if not claimed:
        return []
    rows = conn.execute(
        select(d.c.id, d.c.attempts, d.c.first_attempt_at, d.c.next_attempt_at,
               d.c.endpoint_id, webhook_endpoints.c.url, webhook_endpoints.c.secret,
               webhook_endpoints.c.enabled, d.c.message_id, webhook_messages.c.type,
               webhook_messages.c.payload)
        .join(webhook_endpoints, webhook_endpoints.c.id == d.c.endpoint_id)
        .join(webhook_messages, webhook_messages.c.id == d.c.message_id)
        .where(d.c.id.in_(claimed))
        .order_by(d.c.next_attempt_at, d.c.id)).all()
    return [Due(row.id, row.attempts, row.first_attempt_at, row.endpoint_id, row.url,
                row.secret, row.enabled, row.message_id, row.type, dict(row.payload))
            for row in rows]


# --------------------------------------------------------------------------- the log


@dataclass(frozen=True)
class LoggedAttempt:
    at: datetime
    endpoint_id: int
    url: str
    message_id: str
    event_type: str
    attempt: int
    outcome: str
    status_code: int | None
    error: str | None
    duration_ms: int
    next_attempt_at: datetime | None
    delivery_status: str

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "endpoint": self.endpoint_id, "url": self.url,
                "message_id": self.message_id, "type": self.event_type,
                "attempt": self.attempt, "outcome": self.outcome,
                "status_code": self.status_code, "error": self.error,
                "duration_ms": self.duration_ms,
                "next_attempt_at": self.next_attempt_at.isoformat()
                if self.next_attempt_at else None,
                "delivery_status": self.delivery_status}


def delivery_log(conn: Connection, endpoint_id: int | None = None, limit: int | None = None,
                 ) -> list[LoggedAttempt]:
    """Every attempt, oldest first (the latest ``limit`` when given)."""
    a, d, e, m = webhook_attempts, webhook_deliveries, webhook_endpoints, webhook_messages
    query = (select(a.c.at, d.c.endpoint_id, e.c.url, d.c.message_id, m.c.type, a.c.attempt,
                    a.c.outcome, a.c.status_code, a.c.error, a.c.duration_ms,
                    a.c.next_attempt_at, d.c.status)
             .join(d, d.c.id == a.c.delivery_id)
             .join(e, e.c.id == d.c.endpoint_id)
             .join(m, m.c.id == d.c.message_id)
             .order_by(a.c.at.desc(), a.c.id.desc()))
    if endpoint_id is not None:
        query = query.where(d.c.endpoint_id == endpoint_id)
    if limit is not None:
        query = query.limit(limit)
    found = [LoggedAttempt(*row) for row in conn.execute(query)]  # type: ignore[call-arg]
    found.reverse()
    return found


def pending(conn: Connection, endpoint_id: int | None = None) -> list[dict[str, Any]]:
    """Deliveries not yet attempted or waiting for a retry."""
    d, m = webhook_deliveries, webhook_messages
    query = (select(d.c.endpoint_id, d.c.message_id, m.c.type, d.c.attempts,
                    d.c.next_attempt_at)
             .join(m, m.c.id == d.c.message_id).where(_PENDING)
             .order_by(d.c.next_attempt_at, d.c.id))
    if endpoint_id is not None:
        query = query.where(d.c.endpoint_id == endpoint_id)
    return [{"endpoint": row.endpoint_id, "message_id": row.message_id, "type": row.type,
             "attempts": row.attempts, "next_attempt_at": row.next_attempt_at.isoformat()
             if row.next_attempt_at else None} for row in conn.execute(query)]
