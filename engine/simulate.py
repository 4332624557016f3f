"""Simulation on a virtual clock: run the engine tick by tick from one instant to another.

The clock seam is moved to each tick and the engine runs exactly as the daemon would
(sweep, plan, dispatch). Ticks where nothing can happen — nothing due, no feed row, no
sweep — are skipped over, which gives the same result as visiting them, only faster.

A *feed* replays an EMR export over time: ``feed_patients.csv`` and
``feed_appointments.csv`` are the usual import files with an extra first column ``at``
(UTC), each row imported at that instant. ``feed_replies.csv`` (``at, from, body``)
replays patients' text replies as if they came in through the SMS webhook (STOP, C, a
score, a complaint …).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from engine import clock
from engine.errors import ImportFileError, UserError
from engine.importer import (
    APPOINTMENT_COLUMNS,
    PATIENT_COLUMNS,
    ImportSummary,
    normalise_phone,
    sync_appointments,
    sync_patients,
)
from engine.replies import record_inbound, send_outgoing
from engine.runner import Runner, TickReport
from engine.store import ledger

SWEEP_EVERY = timedelta(hours=1)
REPLY_COLUMNS = ("from", "body")


@dataclass(frozen=True)
class FeedRow:
    at: datetime
    kind: str  # patients | appointments | replies
    line: int
    row: dict[str, str]


@dataclass
class Feed:
    rows: list[FeedRow]
    position: int = 0

    @classmethod
    def load(cls, directory: Path) -> Feed:
        rows: list[FeedRow] = []
        for kind, required in (("patients", PATIENT_COLUMNS),
                               ("appointments", APPOINTMENT_COLUMNS),
                               ("replies", REPLY_COLUMNS)):
            path = directory / f"feed_{kind}.csv"
            if not path.exists():
                continue
            with path.open(encoding="utf-8-sig", newline="") as fh:
                reader = csv.DictReader(fh)
                missing = [c for c in ("at", *required) if c not in (reader.fieldnames or [])]
                if missing:
                    raise ImportFileError(f"{path}: missing column(s) {', '.join(missing)}")
                for values in reader:
                    try:
                        at = datetime.fromisoformat(values.pop("at").replace("Z", "+00:00"))
                    except ValueError:
                        raise ImportFileError(f"{path}:{reader.line_num}: 'at' must be an ISO "
                                              "8601 instant with offset, e.g. "
                                              "2026-10-05T16:47Z") from None
                    if at.tzinfo is None:
                        raise ImportFileError(f"{path}:{reader.line_num}: 'at' needs a UTC "
                                              "offset (end it with Z)")
                    rows.append(FeedRow(at, kind, reader.line_num, values))
        rows.sort(key=lambda r: (r.at, r.kind != "patients", r.line))
        return cls(rows)

    def next_at(self) -> datetime | None:
        return self.rows[self.position].at if self.position < len(self.rows) else None

    def due(self, now: datetime) -> list[FeedRow]:
        start = self.position
        while self.position < len(self.rows) and self.rows[self.position].at <= now:
            self.position += 1
        return self.rows[start:self.position]


@dataclass
class SimulationResult:
    start: datetime
    until: datetime
    ticks: int = 0
    reports: list[TickReport] = field(default_factory=list)
    imports: list[ImportSummary] = field(default_factory=list)
    replies: int = 0

    @property
    def sent(self) -> int:
        return sum(r.dispatch.sent for r in self.reports)


def _reply_id(row: FeedRow) -> str:
    """The reply's message id: the same row replayed is one message (recorded once),
    and a row of another feed on the same line is another (ids are not line numbers)."""
    what = "\x1f".join((row.at.isoformat(), row.row["from"], row.row["body"]))
    return f"feed-{hashlib.sha256(what.encode()).hexdigest()[:24]}"


def apply_replies(runner: Runner, rows: list[FeedRow]) -> int:
    """Record each text reply as the SMS webhook would, then send what it calls for."""
    settings = runner.settings
    handled = 0
    for row in rows:
        if row.kind != "replies":
            continue
        try:
            number = normalise_phone(row.row["from"], settings.phone_region)
        except ValueError as exc:
            raise ImportFileError(f"feed_replies.csv:{row.line}: {exc}") from None
        if number is None:
            raise ImportFileError(f"feed_replies.csv:{row.line}: 'from' is empty")
        with runner.db.transaction() as conn:
            result = record_inbound(conn, settings, provider="simulated",
                                    message_id=_reply_id(row), from_number=number,
                                    to_number=settings.practice.phone or "",
                                    body=row.row["body"], now=clock.now(),
                                    asks_score=runner.definitions.score_steps)
        if result.outgoing and runner.dispatcher is not None:
            send_outgoing(runner.db, runner.definitions, settings, runner.dispatcher.channels,
                          result, row.row["body"], number)
        handled += not result.duplicate
    return handled


def apply_feed(runner: Runner, rows: list[FeedRow]) -> list[ImportSummary]:
    settings = runner.settings
    summaries = []
    with runner.db.transaction() as conn:
        patients = [(r.line, r.row) for r in rows if r.kind == "patients"]
        appointments = [(r.line, r.row) for r in rows if r.kind == "appointments"]
        if patients:
            summaries.append(sync_patients(conn, patients, "feed_patients.csv",
                                           region=settings.phone_region, now=clock.now()))
        if appointments:
            summaries.append(sync_appointments(conn, appointments, "feed_appointments.csv",
                                               practice_tz=runner.rules.practice_timezone,
                                               now=clock.now()))
    return summaries


def simulate(runner: Runner, start: datetime, until: datetime, tick: timedelta,
             feed: Feed | None = None,
             progress: Callable[[float], None] | None = None) -> SimulationResult:
    """Advance the clock from ``start`` to ``until`` in steps of ``tick``."""
    if until <= start:
        raise UserError("--until must be after the start time (--now)")
    if tick <= timedelta(0):
        raise UserError("--tick must be positive")
    for channel in (runner.dispatcher.channels.values() if runner.dispatcher else ()):
        if channel.sends_for_real:
            raise UserError(f"simulate only runs with the fake or console channels, not "
                            f"{channel.provider} — set TOUCHPOINT_SMS_PROVIDER / "
                            "TOUCHPOINT_EMAIL_PROVIDER to fake or console")
    result = SimulationResult(start, until)
    total = (until - start).total_seconds()
    previous = clock.pinned()
    now, next_sweep = start, start
    try:
        while now <= until:
            clock.set_now(now)
            if feed is not None:
                rows = feed.due(now)
                if rows:
                    result.imports.extend(apply_feed(runner, rows))
                    result.replies += apply_replies(runner, rows)
            sweep = now >= next_sweep
            if sweep:
                next_sweep = now + SWEEP_EVERY
            result.reports.append(runner.tick(sweep=sweep))
            result.ticks += 1
            if progress:
                progress((now - start).total_seconds() / total)
            now = _next_tick(runner, feed, start, now, tick, next_sweep, until)
    finally:
        clock.set_now(previous)
    if progress:
        progress(1.0)
    return result


def _next_tick(runner: Runner, feed: Feed | None, start: datetime, now: datetime,
               tick: timedelta, next_sweep: datetime, until: datetime) -> datetime:
    """The first tick boundary at which something can happen."""
    with runner.db.transaction() as conn:
        due = ledger.next_due(conn)
    moments = [m for m in (due, feed.next_at() if feed else None, next_sweep) if m is not None]
    target = max(min(moments), now + tick) if moments else until + tick
    steps = -(-(target - start) // tick)  # ceiling division on timedeltas
    return start + steps * tick
