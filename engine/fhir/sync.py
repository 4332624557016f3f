"""`touchpoint fhir sync`: pull what changed on the EMR's FHIR server since last time.

For Patient, then RelatedPerson, then Appointment (the order references need), search
the resources updated after that type's cursor, oldest first, page by page. Each page is
applied (:func:`engine.fhir.imports.apply`) in one transaction, and the cursor — the
newest ``meta.lastUpdated`` of the page — is stored in the same transaction
(``engine_state`` key ``fhir.cursor``): an interrupted sync resumes after the last page
committed, and a failed page leaves the cursor where it was.

Only one sync runs at a time: on PostgreSQL it holds an advisory lock for its duration
(another worker's daemon skips its turn); on SQLite each page's write transaction is
serialised anyway.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from engine import clock
from engine.errors import UserError
from engine.fhir.client import FhirClient
from engine.fhir.imports import SEARCHED, FhirSummary, Options, apply, bundle_entries
from engine.privacy import redact
from engine.settings import Settings
from engine.store.database import Database
from engine.store.locks import lock_key
from engine.store.records import get_state, put_state

log = logging.getLogger("touchpoint.fhir")
CURSOR_KEY = "fhir.cursor"
LOCK = "fhir-sync"


@dataclass
class SyncReport:
    summary: FhirSummary = field(default_factory=lambda: FhirSummary("fhir"))
    pages: dict[str, int] = field(default_factory=dict)
    cursors: dict[str, str] = field(default_factory=dict)
    ran: bool = True  # False: another worker was syncing

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary.as_dict(), "pages": self.pages, "cursors": self.cursors,
                "ran": self.ran}


def format_cursor(at: datetime) -> str:
    """An instant as FHIR writes it (UTC, ``Z``)."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def cursors(db: Database) -> dict[str, str]:
    with db.transaction() as conn:
        return {k: str(v) for k, v in (get_state(conn, CURSOR_KEY) or {}).items()}


def options_from(settings: Settings) -> Options:
    return Options(region=settings.phone_region,
                   practice_tz=settings.require("practice.timezone"),
                   identifier_system=settings.fhir.patient_identifier_system,
                   sms_consent=settings.fhir.sms_consent,
                   email_consent=settings.fhir.email_consent)


@contextlib.contextmanager
def _alone(db: Database) -> Iterator[bool]:
    """True while this process holds the sync's session lock (always, on SQLite)."""
    if db.engine.dialect.name != "postgresql":
        yield True
        return
    with db.engine.connect() as conn:
        key = {"key": lock_key(LOCK)}
        held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar())
        conn.commit()
        try:
            yield held
        finally:
            if held:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)
                conn.commit()


def sync(db: Database, settings: Settings, client: FhirClient) -> SyncReport:
    """Sync every type; raises FhirServerError (the pages before it stay committed)."""
    options = options_from(settings)
    page_size = settings.fhir.page_size
    report = SyncReport()
    with _alone(db) as alone:
        if not alone:
            report.ran = False
            return report
        for kind in SEARCHED:
            since = cursors(db).get(kind)
            report.pages[kind] = 0
            for page in client.search(kind, since, page_size):
                with db.transaction() as conn:
                    summary = apply(conn, bundle_entries(page), f"fhir:{kind}", options,
                                    clock.now())
                    newest = summary.last_updated.get(kind)
                    if newest is not None and (
                            since is None or newest > datetime.fromisoformat(since)):
                        stored = get_state(conn, CURSOR_KEY) or {}
                        since = format_cursor(newest)
                        put_state(conn, CURSOR_KEY, {**stored, kind: since}, clock.now())
                report.summary.merge(summary)
                report.pages[kind] += 1
            if since:
                report.cursors[kind] = since
    return report


class ScheduledSync:
    """The daemon's ``fhir-sync`` job: keeps its client (and so its access token) from
    one run to the next; logs what it did, or why it could not, and never raises."""

    def __init__(self, db: Database, settings: Settings,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.db = db
        self.settings = settings
        self.stopping = stopping
        self.client: FhirClient | None = None

    def __call__(self) -> SyncReport | None:
        if self.stopping():
            return None
        try:
            if self.client is None:
                self.client = FhirClient.from_settings(self.settings)
            report = sync(self.db, self.settings, self.client)
        except UserError as exc:
            log.error("fhir sync failed: %s", exc.message, extra={"event": "fhir_sync_failed"})
            return None
        except Exception as exc:  # the daemon runs on; the next run tries again
            log.error("fhir sync failed (%s: %s)", type(exc).__name__, redact(str(exc))[:300],
                      extra={"event": "fhir_sync_failed"})
            return None
        summary = report.summary
        busy = summary.count("created") or summary.count("updated") or summary.problems
        (log.info if busy else log.debug)(
            "fhir sync: %d new, %d updated, %d unchanged, %d refused%s", summary.count(
                "created"), summary.count("updated"), summary.count("unchanged"),
            summary.rejected, "" if report.ran else " (another worker was syncing)",
            extra={"event": "fhir_sync", "refused": summary.rejected})
        for problem in summary.problems:
            log.warning("fhir sync refused %s", problem, extra={"event": "fhir_refused"})
        return report

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
