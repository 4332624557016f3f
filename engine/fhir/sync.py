"""`touchpoint fhir sync`: pull what changed on the EMR's FHIR server since last time.

For Patient, then RelatedPerson, then Appointment (the order references need), search
the resources updated since that type's cursor (inclusive), oldest first, page by page.
Each page is applied (:func:`engine.fhir.imports.apply`) in one transaction, and the
cursor — the newest ``meta.lastUpdated`` of the page — is stored in the same transaction
(``engine_state`` key ``fhir.cursor``): an interrupted sync resumes after the last page
committed, and a failed page leaves the cursor where it was.

A resource refused (an Appointment whose Patient is not known yet, a Patient without a
usable name …) would be lost once the cursor has passed it, so it is remembered
(``engine_state`` key ``fhir.retry``: ``Type/id`` → when first refused) in its page's
transaction. Each sync, before searching a type, reads each remembered resource of that
type again (``GET {base}/{Type}/{id}``) and applies it: applied, it is forgotten; refused
again, it stays; 404 or 410, it is forgotten as ``gone``; any other error keeps it for
next time and the sync goes on. A remembered resource that comes again in the search, in
the version just retried, is not applied twice.

Only one sync runs at a time: on PostgreSQL it holds an advisory lock for its duration
(another worker's daemon skips its turn); on SQLite each page's write transaction is
serialised anyway.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

from engine import clock
from engine.errors import UserError
from engine.fhir.client import FhirClient, FhirServerError
from engine.fhir.imports import (
    SEARCHED,
    Entry,
    FhirSummary,
    Options,
    apply,
    bundle_entries,
)
from engine.privacy import redact
from engine.settings import Settings
from engine.store.database import Database
from engine.store.locks import lock_key
from engine.store.records import get_state, put_state

log = logging.getLogger("touchpoint.fhir")
CURSOR_KEY = "fhir.cursor"
RETRY_KEY = "fhir.retry"
LOCK = "fhir-sync"


@dataclass
class SyncReport:
    summary: FhirSummary = field(default_factory=lambda: FhirSummary("fhir"))
    pages: dict[str, int] = field(default_factory=dict)
    cursors: dict[str, str] = field(default_factory=dict)
    ran: bool = True  # False: another worker was syncing
    retried: int = 0  # resources refused before, asked for again
    still_refused: int = 0  # of those: refused again, or the server could not answer
    gone: int = 0  # of those: 404/410, forgotten
    retry_errors: list[str] = field(default_factory=list)  # one line each, kept for next time

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary.as_dict(), "pages": self.pages, "cursors": self.cursors,
                "ran": self.ran, "retried": self.retried,
                "still_refused": self.still_refused, "gone": self.gone,
                "retry_errors": list(self.retry_errors)}


def format_cursor(at: datetime) -> str:
    """An instant as FHIR writes it (UTC, ``Z``)."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def cursors(db: Database) -> dict[str, str]:
    with db.transaction() as conn:
        return {k: str(v) for k, v in (get_state(conn, CURSOR_KEY) or {}).items()}


def remembered(db: Database) -> dict[str, str]:
    """The refused resources to ask for again: ``Type/id`` → when first refused."""
    with db.transaction() as conn:
        return {k: str(v) for k, v in (get_state(conn, RETRY_KEY) or {}).items()}


def _name(entry: Entry) -> str | None:
    """``Type/id`` of a resource a sync can read again, else None."""
    raw = entry.resource
    if raw is None or raw.get("resourceType") not in SEARCHED:
        return None
    resource_id = raw.get("id")
    return f"{raw['resourceType']}/{resource_id}" if isinstance(resource_id, str) \
        and resource_id else None


def _version(entry: Entry) -> str | None:
    meta = (entry.resource or {}).get("meta")
    updated = meta.get("lastUpdated") if isinstance(meta, dict) else None
    return str(updated) if updated else None


def _remember(conn: Connection, entries: list[Entry], summary: FhirSummary, now: datetime,
              gone: Iterable[str] = ()) -> None:
    """Update ``fhir.retry`` after applying ``entries``: the refused remembered, the
    applied (and the ``gone``) forgotten."""
    names = {n for n in map(_name, entries) if n}
    refused = {p.resource for p in summary.problems} & names
    stored = {k: str(v) for k, v in (get_state(conn, RETRY_KEY) or {}).items()}
    kept = {n: at for n, at in stored.items()
            if (n not in names or n in refused) and n not in set(gone)}
    kept.update({n: format_cursor(now) for n in refused if n not in kept})
    if kept != stored:
        put_state(conn, RETRY_KEY, kept, now)


def _retry(db: Database, client: FhirClient, kind: str, options: Options,
           report: SyncReport) -> dict[str, str | None]:
    """Ask again for the remembered resources of ``kind`` and apply them (one
    transaction); returns the versions applied, ``Type/id`` → ``meta.lastUpdated``."""
    names = sorted(n for n in remembered(db) if n.startswith(f"{kind}/"))
    if not names:
        return {}
    fetched: list[Entry] = []
    gone: list[str] = []
    for name in names:
        report.retried += 1
        try:
            resource = client.read(kind, name.partition("/")[2])
        except FhirServerError as exc:
            report.still_refused += 1
            report.retry_errors.append(f"{name}: {exc.message}")
            log.warning("fhir sync could not read %s again, kept for the next sync: %s",
                        name, exc.message, extra={"event": "fhir_retry_failed"})
            continue
        if resource is None:
            gone.append(name)
        else:
            fetched.append(Entry(name, resource))
    now = clock.now()
    with db.transaction() as conn:
        summary = apply(conn, fetched, f"fhir:{kind}", options, now)
        _remember(conn, fetched, summary, now, gone)
    refused = {p.resource for p in summary.problems}
    report.still_refused += sum(1 for e in fetched if _name(e) in refused)
    report.gone += len(gone)
    report.summary.merge(summary)
    return {n: _version(e) for e in fetched if (n := _name(e))}


def _not_again(entries: Iterable[Entry], retried: dict[str, str | None],
               ) -> tuple[list[Entry], list[Entry]]:
    """``entries`` split: to apply, and the versions this sync's retry applied already."""
    apply_: list[Entry] = []
    again: list[Entry] = []
    for entry in entries:
        name = _name(entry)
        seen = name is not None and name in retried and retried[name] == _version(entry)
        (again if seen else apply_).append(entry)
    return apply_, again


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
            retried = _retry(db, client, kind, options, report)
            since = cursors(db).get(kind)
            report.pages[kind] = 0
            for page in client.search(kind, since, page_size):
                entries, again = _not_again(bundle_entries(page), retried)
                now = clock.now()
                with db.transaction() as conn:
                    summary = apply(conn, entries, f"fhir:{kind}", options, now)
                    _remember(conn, entries, summary, now)
                    newest = _newest(summary.last_updated.get(kind), again)
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


def _newest(newest: datetime | None, skipped: Iterable[Entry]) -> datetime | None:
    """The cursor a page moves to: its newest applied resource, or one skipped as
    applied already by the retry."""
    for entry in skipped:
        version = _version(entry)
        try:
            at = datetime.fromisoformat(version) if version else None
        except ValueError:
            continue
        if at is not None and at.tzinfo is not None and (newest is None or at > newest):
            newest = at
    return newest


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
        busy = summary.count("created") or summary.count("updated") or summary.problems \
            or report.retried
        (log.info if busy else log.debug)(
            "fhir sync: %d new, %d updated, %d unchanged, %d refused; %d retried (%d still "
            "refused, %d gone)%s", summary.count("created"), summary.count("updated"),
            summary.count("unchanged"), summary.rejected, report.retried,
            report.still_refused, report.gone,
            "" if report.ran else " (another worker was syncing)",
            extra={"event": "fhir_sync", "refused": summary.rejected,
                   "retried": report.retried, "still_refused": report.still_refused,
                   "gone": report.gone})
        for problem in summary.problems:
            log.warning("fhir sync refused %s", problem, extra={"event": "fhir_refused"})
        return report

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
