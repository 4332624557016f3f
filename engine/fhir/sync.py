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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from engine import clock
from engine.fhir.client import FhirClient
from engine.fhir.imports import ORDER, FhirSummary, Options, apply, bundle_entries
from engine.settings import Settings
from engine.store.database import Database
from engine.store.locks import lock_key
from engine.store.records import get_state, put_state

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
        for kind in ORDER:
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
