"""`touchpoint demo`: a fictional practice, 60 simulated days, and what the engine did.

It builds a fresh SQLite database from the bundled data (see ``generate.py``), imports
the referral sources, patients, a minor's parent and the appointments on file, replays
the EMR feed and patients' text replies over 60 days on the virtual clock through the
fake channels, and prints a timeline, a summary per journey, and the safety net: the
recovery cases the replies and no-shows opened, and the feedback and referral figures.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from engine import clock
from engine.cases import CAUSES, list_cases
from engine.channels.fake import FakeChannel
from engine.definitions import Definitions
from engine.demo.generate import DAYS, START
from engine.importer import (
    ImportSummary,
    import_appointments,
    import_contacts,
    import_patients,
    import_referrers,
)
from engine.outcomes import Status
from engine.report import satisfaction, sparkline
from engine.reports import JourneySummary, summary
from engine.runner import Runner
from engine.settings import Settings
from engine.simulate import Feed, SimulationResult, simulate
from engine.store.database import Database
from engine.store.schema import contacts, patients, touch_points
from engine.timing import zone

DATA = Path(__file__).parent / "data"
SPOTLIGHT = {"P1004": "speaks Spanish and lives in another timezone (America/New_York)",
             "P1006": "declined text messages",
             "P1003": "is a minor: her reminders go to her parent"}


@dataclass
class DemoResult:
    imports: list[ImportSummary]
    simulation: SimulationResult
    seconds: float


def run_demo(db: Database, settings: Settings, definitions: Definitions, *,
             days: int = DAYS, tick: timedelta = timedelta(minutes=5),
             progress: Callable[[float], None] | None = None) -> DemoResult:
    start = START.astimezone(zone("UTC"))
    channels = {"sms": FakeChannel("sms"), "email": FakeChannel("email")}
    runner = Runner(db, settings, definitions, channels)
    began = clock.now()
    imports: list[ImportSummary] = []
    with clock.travel_to(start), db.transaction() as conn:
        imports.append(import_referrers(conn, DATA / "referrers.csv",
                                        region=settings.phone_region, now=start))
        imports.append(import_patients(conn, DATA / "patients.csv",
                                       region=settings.phone_region, now=start, baseline=True))
        imports.append(import_contacts(conn, DATA / "contacts.csv",
                                       region=settings.phone_region, now=start))
        imports.append(import_appointments(conn, DATA / "appointments.csv",
                                           practice_tz=runner.rules.practice_timezone,
                                           now=start))
    result = simulate(runner, start, start + timedelta(days=days), tick, Feed.load(DATA),
                      progress=progress)
    return DemoResult(imports, result, (clock.now() - began).total_seconds())


@dataclass(frozen=True)
class Entry:
    """One settled touch point, as the timeline shows it."""

    id: int
    at: datetime
    journey: str
    step: str
    status: str
    reason: str | None
    channel: str | None
    content: str | None
    patient: str
    name: str
    timezone: str | None
    to: str = ""  # who it addressed, when not the patient: "parent", "referrer", …

    @property
    def outcome(self) -> str:
        to = f" to {self.to}" if self.to else ""
        return f"{self.channel} sent{to}" if self.status == Status.SENT else \
            f"{self.status}: {self.reason}"

    def line(self, tz: ZoneInfo, with_name: bool = True, with_date: bool = False) -> str:
        local = self.at.astimezone(tz)
        when = f"{local:%a %d %b %H:%M %Z}" if with_date else f"{local:%H:%M}"
        who = f"{self.name:<18.18} " if with_name else ""
        return f"{when}  {who}{self.journey + '/' + self.step:<30} {self.outcome:<24} #{self.id}"


def _entries(db: Database) -> list[Entry]:
    with db.transaction() as conn:
        rows = conn.execute(
            select(touch_points.c.id, touch_points.c.journey, touch_points.c.step,
                   touch_points.c.status, touch_points.c.reason, touch_points.c.channel,
                   touch_points.c.due_at, touch_points.c.sent_at, touch_points.c.finished_at,
                   touch_points.c.content, touch_points.c.recipient, patients.c.external_id,
                   patients.c.first_name, patients.c.last_name, patients.c.timezone)
            .join(patients, patients.c.id == touch_points.c.patient_id)
            .where(touch_points.c.status != Status.PLANNED)).all()
        roles = {f"contact:{row.id}": row.relationship
                 for row in conn.execute(select(contacts.c.id, contacts.c.relationship))}
    entries = [Entry(r.id, r.sent_at or r.finished_at or r.due_at, r.journey, r.step, r.status,
                     r.reason, r.channel, r.content, r.external_id,
                     f"{r.first_name} {r.last_name}", r.timezone,
                     "" if r.recipient == "patient" else
                     roles.get(r.recipient, r.recipient.partition(":")[0]))
               for r in rows]
    return sorted(entries, key=lambda e: (e.at, e.id))


def print_report(console: Console, db: Database, settings: Settings, days: int = DAYS,
                 detailed_days: int = 2) -> None:
    """The timeline (message by message for the first days, then a line a day), the
    spotlight patients, and the per-journey summary."""
    practice_tz = zone(settings.require("practice.timezone"))
    entries = _entries(db)
    with db.transaction() as conn:
        journeys = summary(conn)
    start = START.astimezone(practice_tz)
    console.print(f"\n[bold]Timeline[/] — times in {practice_tz.key}; daylight saving ends "
                  "Sun 01 Nov\n")
    by_day: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        by_day[entry.at.astimezone(practice_tz).strftime("%a %d %b")].append(entry)
    for offset in range(days):
        day = (start + timedelta(days=offset)).strftime("%a %d %b")
        todays = by_day.get(day, [])
        if offset < detailed_days:
            console.print(f"[bold]{day}[/]")
            for entry in todays:
                console.print("  " + entry.line(practice_tz), highlight=False)
            continue
        if offset == detailed_days:
            console.print("\n[bold]…then one line a day[/]")
        counts = Counter(e.outcome for e in todays)
        text = ", ".join(f"{n} {label}" for label, n in counts.most_common()) or "—"
        console.print(f"  {day}  {text}", highlight=False)

    for external_id, story in SPOTLIGHT.items():
        mine = [e for e in entries if e.patient == external_id]
        if not mine:
            continue
        tz = zone(mine[0].timezone) if mine[0].timezone else practice_tz
        console.print(f"\n[bold]{mine[0].name}[/] ({external_id}) {story}; times in {tz.key}")
        for entry in mine:
            console.print("  " + entry.line(tz, with_name=False, with_date=True),
                          highlight=False)
            if entry.content and entry.status == Status.SENT:
                first = entry.content.splitlines()[0]
                console.print(f"      [dim]{first[:100]}{'…' if len(first) > 100 else ''}[/]",
                              highlight=False)

    _print_safety_net(console, db, practice_tz, START.astimezone(practice_tz)
                      + timedelta(days=days))

    table = Table(title="\nSummary per journey", title_justify="left", show_lines=True)
    for column in ("journey", "planned", "sent", "skipped", "cancelled", "failed / unknown",
                   "pending"):
        table.add_column(column)
    for item in journeys:
        def reasons(*statuses: str, item: JourneySummary = item) -> str:
            found: Counter[str] = Counter()
            for status in statuses:
                found.update(item.reasons.get(status, Counter()))
            return "\n".join(f"{n} {r}" for r, n in found.most_common()) or "—"
        table.add_row(item.journey, str(item.planned),
                      str(item.outcomes[Status.SENT] + item.outcomes[Status.DELIVERED]),
                      reasons(Status.SKIPPED), reasons(Status.CANCELLED),
                      reasons(Status.FAILED, Status.UNKNOWN),
                      str(item.outcomes[Status.PLANNED]))
    console.print(table)


def _print_safety_net(console: Console, db: Database, tz: ZoneInfo, end: datetime) -> None:
    """Recovery cases and the 0-10 answers."""
    start = START.astimezone(tz)
    with db.transaction() as conn:
        cases = list_cases(conn)
        names = dict(conn.execute(select(patients.c.id, patients.c.first_name
                                         + " " + patients.c.last_name)).all())
        scores = satisfaction(conn, start, end)
    console.print(f"\n[bold]Safety net[/] — {scores['answers']} answers to the 0-10 question, "
                  f"average {scores['average']}, weekly "
                  f"{sparkline([w['average'] for w in scores['weekly']])}; "
                  f"{len(cases)} recovery cases (`touchpoint cases`)")
    for case in cases:
        state = "open" if case.is_open else "resolved"
        console.print(f"  {case.opened_at.astimezone(tz):%a %d %b %H:%M}  case {case.id:<3} "
                      f"{names.get(case.patient_id, '?'):<18.18} "
                      f"{CAUSES.get(case.cause, case.cause):<34} {state}", highlight=False)


def write_report(out: TextIO, db: Database, settings: Settings) -> None:
    print_report(Console(file=out, width=120), db, settings)
