"""Shared set-up for the benchmarks: a practice, a database, bulk-loaded rows."""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.pool import NullPool

from engine import clock
from engine.definitions import Definitions
from engine.definitions.journeys import load_journeys
from engine.settings import Settings, load_settings
from engine.store.database import Database, open_database
from engine.store.schema import bind_time, patients, touch_points
from engine.validate import check_definitions

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("TOUCHPOINT_BENCH_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Monday 2026-11-02 16:00 UTC = 10:00 in Chicago: every message may go at once.
NOW = datetime(2026, 11, 2, 16, 0, tzinfo=UTC)

CONFIG = """
[practice]
name = "Riverside Physical Therapy"
phone = "+13125550199"
address = "1200 W Riverside Ave, Chicago, IL 60607"
timezone = "America/Chicago"
[practice.links]
intake = "https://riversidept.example/intake"
directions = "https://riversidept.example/find-us"
exercises = "https://riversidept.example/exercises"
book = "https://riversidept.example/book"
review = "https://riversidept.example/review"
[channels]
sms_provider = "fake"
email_provider = "fake"
[caps]
transactional_sms_per_day = 0
transactional_sms_per_week = 0
marketing_per_week = 0
"""


def settings_for(folder: Path, url: str, **flags: object) -> Settings:
    config = folder / "touchpoint.toml"
    config.write_text(CONFIG, encoding="utf-8")
    return load_settings(config, {"database.url": url,
                                  "paths.schedules": str(ROOT / "schedules"),
                                  "paths.templates": str(ROOT / "message_templates"),
                                  **flags})


def definitions_for(settings: Settings) -> Definitions:
    return check_definitions(settings, NOW).raise_for_errors()


@contextmanager
def database(kind: str) -> Iterator[tuple[str, Path]]:
    """A fresh, migrated database ("sqlite" or "postgresql") and a scratch folder."""
    folder = Path(tempfile.mkdtemp(prefix="touchpoint-bench-"))
    if kind == "sqlite":
        url = f"sqlite:///{folder / 'bench.db'}"
        open_database(url).dispose()
        try:
            yield url, folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    name = f"touchpoint_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    open_database(url).dispose()
    try:
        yield url, folder
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(folder, ignore_errors=True)


def welcome_fingerprint() -> str:
    journeys, _ = load_journeys(ROOT / "schedules")
    step = journeys["welcome"].step("welcome")
    assert step is not None
    return step.fingerprint()


def load_due(db: Database, count: int, *, patients_count: int | None = None,
             due: datetime = NOW, status: str = "planned", start: int = 0) -> None:
    """``count`` welcome texts due at ``due`` for ``patients_count`` patients (bulk)."""
    fingerprint = welcome_fingerprint()
    patients_count = patients_count or count
    with db.transaction() as conn:
        existing = conn.execute(text("SELECT count(*) FROM patients")).scalar() or 0
        rows = [{"external_id": f"P{i}", "first_name": "Alexandra", "last_name": "Rivera",
                 "phone": f"+1312{i:07d}", "email": f"p{i}@example.com", "language": None,
                 "timezone": None, "sms_consent": True, "email_consent": True,
                 "marketing_consent": True, "custom": {}, "row_hash": "", "source": "bench",
                 "created_at": NOW, "updated_at": NOW}
                for i in range(existing, max(existing, patients_count))]
        for part in range(0, len(rows), 5000):
            conn.execute(insert(patients), rows[part:part + 5000])
        ids = [row[0] for row in conn.execute(text("SELECT id FROM patients ORDER BY id"))]
    with db.transaction() as conn:
        batch = []
        for n in range(start, start + count):
            batch.append({
                "patient_id": ids[n % len(ids)], "appointment_id": None, "recipient": "patient",
                "test": False, "journey": "welcome", "step": "welcome",
                "anchor": f"bench:{n}", "purpose": "transactional", "event_id": None,
                "step_fingerprint": fingerprint, "due_at": due,
                "expires_at": due + timedelta(days=1),
                "status": status, "attempts": 0, "planned_at": NOW, "updated_at": NOW,
                "sent_at": due if status == "sent" else None,
                "finished_at": due if status == "sent" else None,
                "channel": "sms" if status == "sent" else None})
            if len(batch) == 5000:
                conn.execute(insert(touch_points), batch)
                batch = []
        if batch:
            conn.execute(insert(touch_points), batch)


def load_settled(db: Database, count: int, patients_count: int = 10_000) -> None:
    """``count`` already-sent touch points (the history a ledger accumulates), fast."""
    load_due(db, 0, patients_count=patients_count)
    dialect = db.dialect
    mark = "?" if dialect == "sqlite" else "%s"
    with db.transaction() as conn:
        ids = [row[0] for row in conn.exec_driver_sql("SELECT id FROM patients ORDER BY id")]
        at = bind_time(dialect, NOW - timedelta(days=400))
        sql = ("INSERT INTO touch_points (patient_id, recipient, test, journey, step, anchor, "
               "purpose, step_fingerprint, due_at, status, attempts, channel, provider, "
               "provider_message_id, sent_at, finished_at, planned_at, updated_at, content) "
               f"VALUES ({', '.join([mark] * 19)})")
        false_ = 0 if dialect == "sqlite" else False
        batch = []
        for n in range(count):
            batch.append((ids[n % len(ids)], "patient", false_, "pre-visit", "three-days-before",
                          f"old:{n}", "transactional", "", at, "sent", 1, "sms", "fake",
                          f"fake-{n}", at, at, at, at,
                          "Riverside Physical Therapy: Hi Alexandra, see you Wed, Dec 2 at "
                          "10:30 AM. Reply C to confirm. (312) 555-0199. STOP to opt out"))
            if len(batch) == 20_000:
                conn.exec_driver_sql(sql, batch)
                batch = []
        if batch:
            conn.exec_driver_sql(sql, batch)


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage: a child started by fork+exec from a
    big parent would report the parent's peak as its own ru_maxrss."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def pin_clock() -> None:
    clock.set_now(NOW)


def read_instant(value: object) -> datetime:
    """A time as a driver returns it (SQLite: naive text; PostgreSQL: a datetime), aware."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
