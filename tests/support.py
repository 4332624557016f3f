"""A practice under test: settings, database, the shipped journey library, fake channels.

    clinic = Clinic(database_url, tmp_path)
    with freeze_time("2026-11-02T14:00:00Z"):
        clinic.patients(patient("P1"))
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00-06:00"))
        clinic.tick()
    clinic.one("pre-visit", "three-days-before").status
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from engine import clock
from engine.channels.fake import FakeChannel
from engine.definitions import Definitions, load_definitions
from engine.importer import (
    APPOINTMENT_COLUMNS,
    CONTACT_COLUMNS,
    PATIENT_COLUMNS,
    REFERRER_COLUMNS,
    ImportSummary,
    import_appointments,
    import_contacts,
    import_patients,
    import_referrers,
)
from engine.runner import Runner, TickReport
from engine.settings import Settings, load_settings
from engine.store.database import Database, open_database
from engine.store.ledger import HistoryEntry, TouchPoint, history_of, touch_point_from_row
from engine.store.schema import patients as patients_table
from engine.store.schema import touch_points

ROOT = Path(__file__).resolve().parent.parent
LIBRARY_SCHEDULES = ROOT / "schedules"
LIBRARY_TEMPLATES = ROOT / "message_templates"

PRACTICE_TOML = """
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
"""


def write_config(folder: Path, extra: str = "") -> Path:
    path = folder / "touchpoint.toml"
    path.write_text(PRACTICE_TOML + extra, encoding="utf-8")
    return path


def patient(patient_id: str = "P1", **fields: str) -> dict[str, str]:
    row = {"patient_id": patient_id, "first_name": "Ana", "last_name": "Reyes",
           "phone": "(312) 555-0100", "email": f"{patient_id.lower()}@example.com",
           "language": "", "timezone": "", "sms_consent": "yes", "email_consent": "yes",
           "marketing_consent": "yes"}
    row.update(fields)
    return row


def appointment(appointment_id: str = "A1", patient_id: str = "P1",
                start: str = "2026-11-05T10:00:00-06:00", **fields: str) -> dict[str, str]:
    row = {"appointment_id": appointment_id, "patient_id": patient_id, "start": start,
           "duration_minutes": "60", "status": "booked", "visit_type": "Follow-up",
           "therapist": "Maya Chen, DPT", "location": "Main St"}
    row.update(fields)
    return row


def contact(contact_id: str = "C1", patient_id: str = "P1", **fields: str) -> dict[str, str]:
    row = {"patient_id": patient_id, "contact_id": contact_id, "relationship": "parent",
           "first_name": "Gabriela", "phone": "(312) 555-0177",
           "email": f"{contact_id.lower()}@example.com", "language": "", "timezone": "",
           "sms_consent": "yes", "email_consent": "yes", "receives": "transactional"}
    row.update(fields)
    return row


def referrer(referrer_id: str = "DR1", **fields: str) -> dict[str, str]:
    row = {"referrer_id": referrer_id, "name": "Lakeside Orthopedics",
           "contact_name": "Dana Whitfield", "email": f"{referrer_id.lower()}@lakeside.example"}
    row.update(fields)
    return row


def write_csv(path: Path, rows: Iterable[Mapping[str, str]], columns: Iterable[str]) -> Path:
    rows = list(rows)
    header = list(columns)
    for row in rows:
        header.extend(k for k in row if k not in header)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def definitions_of(schedules: Path, templates: Path, language: str) -> Definitions:
    """The checked definitions of these folders; the shipped library's are loaded once per
    test process (no test writes to it; a test that edits files edits its own copy)."""
    if (schedules, templates) == (LIBRARY_SCHEDULES, LIBRARY_TEMPLATES):
        return _shipped_definitions(language)
    return load_definitions(schedules, templates, language).raise_for_errors()


@functools.cache
def _shipped_definitions(language: str) -> Definitions:
    return load_definitions(LIBRARY_SCHEDULES, LIBRARY_TEMPLATES, language).raise_for_errors()


class Clinic:
    def __init__(self, database_url: str, folder: Path, *, config_extra: str = "",
                 schedules: Path = LIBRARY_SCHEDULES, templates: Path = LIBRARY_TEMPLATES,
                 ) -> None:
        self.folder = folder
        self.config = write_config(folder, config_extra)
        self.settings: Settings = load_settings(self.config, {
            "database.url": database_url, "paths.schedules": str(schedules),
            "paths.templates": str(templates)})
        self.db: Database = open_database(database_url)
        self.definitions: Definitions = definitions_of(
            schedules, templates, self.settings.practice.language)
        self.sms = FakeChannel("sms")
        self.email = FakeChannel("email")
        self.runner = Runner(self.db, self.settings, self.definitions,
                             {"sms": self.sms, "email": self.email})
        self._files = 0

    def close(self) -> None:
        self.db.dispose()

    # ------------------------------------------------------------------ data in

    def _file(self, kind: str) -> Path:
        self._files += 1
        return self.folder / f"{kind}-{self._files}.csv"

    def patients(self, *rows: Mapping[str, str], baseline: bool = False) -> ImportSummary:
        path = write_csv(self._file("patients"), rows, PATIENT_COLUMNS)
        with self.db.transaction() as conn:
            return import_patients(conn, path, region="US", now=clock.now(), baseline=baseline)

    def appointments(self, *rows: Mapping[str, str]) -> ImportSummary:
        path = write_csv(self._file("appointments"), rows, APPOINTMENT_COLUMNS)
        with self.db.transaction() as conn:
            return import_appointments(conn, path, practice_tz="America/Chicago",
                                       now=clock.now())

    def contacts(self, *rows: Mapping[str, str]) -> ImportSummary:
        path = write_csv(self._file("contacts"), rows, CONTACT_COLUMNS)
        with self.db.transaction() as conn:
            return import_contacts(conn, path, region="US", now=clock.now())

    def referrers(self, *rows: Mapping[str, str]) -> ImportSummary:
        path = write_csv(self._file("referrers"), rows, REFERRER_COLUMNS)
        with self.db.transaction() as conn:
            return import_referrers(conn, path, region="US", now=clock.now())

    # ------------------------------------------------------------------ running

    def tick(self) -> TickReport:
        return self.runner.tick()

    def run_until(self, until: datetime, step: timedelta = timedelta(minutes=5)) -> None:
        """Tick every ``step`` from now until ``until`` (the clock is pinned as it goes)."""
        now = clock.now()
        while now <= until:
            with clock.travel_to(now):
                self.tick()
            now += step

    # ------------------------------------------------------------------ looking

    def touch_points(self, **where: Any) -> list[TouchPoint]:
        query = select(touch_points).order_by(touch_points.c.due_at, touch_points.c.id)
        if "patient" in where:
            query = query.join(patients_table, patients_table.c.id == touch_points.c.patient_id
                               ).where(patients_table.c.external_id == where.pop("patient"))
        for column, value in where.items():
            query = query.where(touch_points.c[column] == value)
        with self.db.transaction() as conn:
            return [touch_point_from_row(row) for row in conn.execute(query)]

    def one(self, journey: str, step: str, **where: Any) -> TouchPoint:
        found = self.touch_points(journey=journey, step=step, **where)
        assert len(found) == 1, f"expected one {journey}/{step}, found {len(found)}: {found}"
        return found[0]

    def history(self, tp: TouchPoint) -> list[HistoryEntry]:
        with self.db.transaction() as conn:
            return history_of(conn, tp.id)

    def sent_to(self, touch_point_id: int) -> list[Any]:
        return [m for m in [*self.sms.sent, *self.email.sent]
                if m.touch_point_id == touch_point_id]


def daytime_zone() -> str:
    """A fixed-offset zone where it is around noon right now, for tests that run a daemon
    on the real clock (quiet hours must not get in the way)."""
    from datetime import UTC, datetime

    offset = (12 - datetime.now(UTC).hour + 12) % 24 - 12  # local = UTC + offset, -12…+11
    return "Etc/GMT" + (f"-{offset}" if offset > 0 else f"+{-offset}")


def daemon_config(folder: Path) -> Path:
    """touchpoint.toml for a daemon on the real clock: it is daytime in the practice."""
    text = PRACTICE_TOML.replace('timezone = "America/Chicago"',
                                 f'timezone = "{daytime_zone()}"')
    path = folder / "touchpoint.toml"
    path.write_text(text, encoding="utf-8")
    return path


# One valid journey about an appointment, with one text: definition tests break or edit it.
ONE_REMINDER_JOURNEY = """\
version: 1
journey: reminders
trigger: appointment.booked
steps:
  - id: two-hours-before
    when: {before: 2h}
    channels: [sms]
    template: reminders/two-hours-before
"""
ONE_REMINDER_SMS = ("{{ practice.name }}: see you at {{ appointment.start | time }}, "
                    "{{ patient.first_name }}. {{ practice.phone }}. STOP to opt out\n")
