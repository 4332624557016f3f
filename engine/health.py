"""Health and metrics for `touchpoint serve`: /healthz and Prometheus /metrics.

Both read the database — the daemons write a heartbeat each tick — so one ``serve``
reports on every worker, and nothing needs to be shared in memory.

Metrics (computed from the ledger at scrape time, cached for a few seconds):

* ``touchpoint_sent_total{journey,channel}`` — handed to a provider (ever)
* ``touchpoint_failed_total{journey,channel}``, ``touchpoint_skipped_total{journey,reason}``,
  ``touchpoint_cancelled_total{journey,reason}``, ``touchpoint_unknown{journey}``
* ``touchpoint_backlog`` — planned touch points overdue by more than a minute
* ``touchpoint_tick_duration_seconds{worker}``, ``touchpoint_last_tick_timestamp_seconds{worker}``
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, false, func, select
from sqlalchemy.exc import SQLAlchemyError

from engine import clock
from engine.definitions.journeys import SYSTEM_JOURNEYS
from engine.outcomes import Status
from engine.settings import Settings
from engine.store.database import Database
from engine.store.records import count_set_aside
from engine.store.schema import PENDING, engine_state, touch_points

HEARTBEAT_PREFIX = "worker:"
BACKLOG_GRACE = timedelta(minutes=1)


def backlog(conn: Connection, now: datetime) -> int:
    return int(conn.execute(
        select(func.count()).select_from(touch_points)
        .where(PENDING, touch_points.c.due_at <= now - BACKLOG_GRACE,
               touch_points.c.test == false(),
               touch_points.c.journey.not_in(SYSTEM_JOURNEYS))).scalar() or 0)


def heartbeats(conn: Connection) -> dict[str, dict[str, Any]]:
    rows = conn.execute(select(engine_state.c.key, engine_state.c.value)
                        .where(engine_state.c.key.startswith(HEARTBEAT_PREFIX)))
    return {row.key.removeprefix(HEARTBEAT_PREFIX): dict(row.value) for row in rows}


def health(db: Database, settings: Settings) -> tuple[bool, dict[str, Any]]:
    """(healthy, details): the database answers, and a daemon ticked recently.

    A worker is live if it ticked within four ticks and a minute; ``workers`` counts the
    live ones (a worker that stopped is remembered for a day, see Daemon.housekeeping).
    ``set_aside`` counts the events planning could not handle (``touchpoint log``).
    """
    now = clock.now()
    try:
        with db.transaction() as conn:
            beats = heartbeats(conn)
            overdue = backlog(conn, now)
            set_aside = count_set_aside(conn)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
        return False, {"ok": False, "database": "unreachable", "error": reason}
    ticks = [datetime.fromisoformat(b["last_tick"]) for b in beats.values() if "last_tick" in b]
    last = max(ticks, default=None)
    allowed = settings.daemon.tick * 4 + timedelta(minutes=1)
    daemon = "never ticked" if last is None else \
        ("ok" if now - last <= allowed else "stale")
    healthy = daemon == "ok"
    return healthy, {
        "ok": healthy, "database": "ok", "daemon": daemon,
        "last_tick": last.isoformat().replace("+00:00", "Z") if last else None,
        "workers": sum(now - tick <= allowed for tick in ticks), "backlog": overdue,
        "set_aside": set_aside,
    }


class LedgerCollector(Collector):
    """Prometheus metrics read from the ledger, cached for ``ttl`` seconds."""

    def __init__(self, db: Database, ttl: float = 10.0) -> None:
        self.db = db
        self.ttl = ttl
        self._cache: tuple[float, list[Metric]] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._cache is None or time.monotonic() - self._cache[0] > self.ttl:
                self._cache = (time.monotonic(), self._read())
            yield from self._cache[1]

    def _read(self) -> list[Metric]:
        sent = CounterMetricFamily("touchpoint_sent", "Touch points handed to a provider.",
                                   labels=["journey", "channel"])
        failed = CounterMetricFamily("touchpoint_failed", "Touch points that failed.",
                                     labels=["journey", "channel"])
        skipped = CounterMetricFamily("touchpoint_skipped", "Touch points skipped, by reason.",
                                      labels=["journey", "reason"])
        cancelled = CounterMetricFamily("touchpoint_cancelled",
                                        "Touch points cancelled, by reason.",
                                        labels=["journey", "reason"])
        unknown = GaugeMetricFamily("touchpoint_unknown",
                                    "Touch points whose outcome staff should check.",
                                    labels=["journey"])
        ticks = GaugeMetricFamily("touchpoint_tick_duration_seconds",
                                  "How long each worker's last tick took.", labels=["worker"])
        last = GaugeMetricFamily("touchpoint_last_tick_timestamp_seconds",
                                 "When each worker last ticked.", labels=["worker"])
        with self.db.transaction() as conn:
            tp = touch_points
            base = (tp.c.test == false(),)
            for journey, channel, count in conn.execute(
                    select(tp.c.journey, tp.c.channel, func.count())
                    .where(tp.c.sent_at.is_not(None), *base)
                    .group_by(tp.c.journey, tp.c.channel)):
                sent.add_metric([journey, channel or ""], count)
            for journey, channel, count in conn.execute(
                    select(tp.c.journey, tp.c.channel, func.count())
                    .where(tp.c.status == Status.FAILED, *base)
                    .group_by(tp.c.journey, tp.c.channel)):
                failed.add_metric([journey, channel or ""], count)
            unknown_counts: dict[str, int] = {}
            for journey, status, reason, count in conn.execute(
                    select(tp.c.journey, tp.c.status, tp.c.reason, func.count())
                    .where(tp.c.status.in_((Status.SKIPPED, Status.CANCELLED,
                                            Status.UNKNOWN)), *base)
                    .group_by(tp.c.journey, tp.c.status, tp.c.reason)):
                if status == Status.SKIPPED:
                    skipped.add_metric([journey, reason or ""], count)
                elif status == Status.CANCELLED:
                    cancelled.add_metric([journey, reason or ""], count)
                else:
                    unknown_counts[journey] = unknown_counts.get(journey, 0) + count
            for journey, count in unknown_counts.items():
                unknown.add_metric([journey], count)
            waiting = GaugeMetricFamily("touchpoint_backlog",
                                        "Planned touch points overdue by over a minute.",
                                        value=backlog(conn, clock.now()))
            for worker, beat in heartbeats(conn).items():
                ticks.add_metric([worker], float(beat.get("duration_seconds", 0)))
                if "last_tick" in beat:
                    last.add_metric([worker], datetime.fromisoformat(beat["last_tick"])
                                    .timestamp())
        return [sent, failed, skipped, cancelled, unknown, waiting, ticks, last]
