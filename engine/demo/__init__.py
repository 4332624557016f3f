"""`touchpoint demo`: a fictional practice, 60 simulated days, and what the engine did.

It builds a fresh SQLite database from the bundled data (see ``generate.py``), imports
the referral sources, patients, a minor's parent and the appointments on file, replays
the EMR feed and patients' text replies over 60 days on the virtual clock through the
fake channels, and prints the practice's story first — who was reached, which visits
were reminded and confirmed, what the safety net caught and who came back — with every
reason a message was not sent explained in words; then the details: a timeline, three
patients' stories, the recovery cases and a summary per journey.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.table import Table
from sqlalchemy import false, func, select

from engine import clock, staff
from engine.cases import CAUSES, list_cases
from engine.channels.fake import FakeChannel
from engine.definitions import Definitions
from engine.definitions.journeys import SYSTEM_JOURNEYS
from engine.demo.generate import DAYS, START
from engine.importer import (
    ImportSummary,
    import_appointments,
    import_contacts,
    import_patients,
    import_referrers,
)
from engine.outcomes import EXPLANATIONS, Status
from engine.report import satisfaction, sparkline
from engine.runner import Runner
from engine.settings import Settings
from engine.simulate import Feed, SimulationResult, simulate
from engine.store.database import Database
from engine.store.records import as_utc
from engine.store.schema import appointments, contacts, inbound_messages, patients, touch_points
from engine.timing import zone
from engine.touch_point_log import JourneySummary, summary

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


@dataclass(frozen=True)
class Story:
    """What the practice got out of the simulated days, in its own terms."""

    patients: int  # on file at the end
    reached: int  # patients who got at least one message (themselves or via a contact)
    contacts_reached: int  # parents, guardians, caregivers
    referrers_reached: int  # referring offices
    texts: int
    emails: int
    failed: int
    alerted: int  # cases whose owner was alerted
    slowest_alert: timedelta | None  # the longest a case waited for its owner's alert
    visits: int  # appointments due in the period (not cancelled)
    reminded: int  # ...with a message sent before they began
    confirmed: int  # ...confirmed by a text reply
    answers: int  # to the 0-10 question
    average: float | None
    for_staff: int  # replies staff had to read (inbox)
    cases: Counter[str]  # recovery cases by cause
    notes: int  # personal notes sent to those patients
    came_back: int  # patients with a case who had a visit after it opened
    with_case: int  # patients with a case
    not_sent: Counter[tuple[str, str]]  # (status, reason) of what was not sent


def practice_story(db: Database, start: datetime, end: datetime) -> Story:
    """The demo's first screen, from the ledger, appointments, replies and cases."""
    tp = touch_points
    sent = (tp.c.status.in_((Status.SENT, Status.DELIVERED)), tp.c.test == false())
    journeys = tp.c.journey.not_in(SYSTEM_JOURNEYS)
    with db.transaction() as conn:
        reached = conn.execute(
            select(func.count(func.distinct(tp.c.patient_id)))
            .where(*sent, journeys, tp.c.recipient.not_like("referrer:%"))).scalar() or 0
        recipients = [r for (r,) in conn.execute(
            select(tp.c.recipient).where(*sent).distinct())]
        by_channel: dict[str, int] = {channel: n for channel, n in conn.execute(
            select(tp.c.channel, func.count()).where(*sent, journeys)
            .group_by(tp.c.channel))}
        failed = conn.execute(select(func.count()).where(
            tp.c.status == Status.FAILED, tp.c.test == false(), journeys)).scalar() or 0
        due = [row for row in conn.execute(
            select(appointments.c.id, appointments.c.start_at, appointments.c.confirmed_at)
            .where(appointments.c.status != "cancelled", appointments.c.start_at >= start,
                   appointments.c.start_at < end))]
        reminded = {row.appointment_id for row in conn.execute(
            select(tp.c.appointment_id, tp.c.sent_at, appointments.c.start_at)
            .join(appointments, appointments.c.id == tp.c.appointment_id)
            .where(*sent, journeys))
            if as_utc(row.sent_at) < as_utc(row.start_at)}
        scores = satisfaction(conn, start, end)
        for_staff = conn.execute(select(func.count()).select_from(inbound_messages).where(
            inbound_messages.c.staff_status != "")).scalar() or 0
        cases = list_cases(conn)
        notes = conn.execute(select(func.count()).where(
            *sent, journeys, tp.c.anchor.like("case:%"))).scalar() or 0
        later_visits = conn.execute(
            select(appointments.c.patient_id, appointments.c.start_at)
            .where(appointments.c.status == "completed")).all()
        not_sent = Counter((status, reason or "—") for status, reason, in conn.execute(
            select(tp.c.status, tp.c.reason).where(
                tp.c.status.in_((Status.SKIPPED, Status.CANCELLED, Status.FAILED,
                                 Status.UNKNOWN)), tp.c.test == false(), journeys)))
        patients_on_file = conn.execute(
            select(func.count()).select_from(patients)).scalar() or 0
    first_case: dict[int, datetime] = {}
    for case in cases:
        first_case.setdefault(case.patient_id, as_utc(case.opened_at))
    came_back = {patient_id for patient_id, at in later_visits
                 if patient_id in first_case and as_utc(at) > first_case[patient_id]}
    return Story(
        patients=patients_on_file, reached=reached,
        contacts_reached=sum(1 for r in recipients if r.startswith("contact:")),
        referrers_reached=sum(1 for r in recipients if r.startswith("referrer:")),
        texts=by_channel.get("sms", 0), emails=by_channel.get("email", 0), failed=failed,
        alerted=sum(1 for case in cases if case.alerted_at is not None),
        slowest_alert=max((as_utc(case.alerted_at) - as_utc(case.opened_at) for case in cases
                           if case.alerted_at is not None), default=None),
        visits=len(due),
        reminded=sum(1 for row in due if row.id in reminded),
        confirmed=sum(1 for row in due if row.confirmed_at is not None),
        answers=scores["answers"], average=scores["average"], for_staff=for_staff,
        cases=Counter(case.cause for case in cases), notes=notes, came_back=len(came_back),
        with_case=len(first_case), not_sent=not_sent)


def print_story(console: Console, story: Story, practice: str, start: datetime,
                end: datetime) -> None:
    """The first screen: what the practice got, then why anything was not sent."""
    def row(label: str, text: str) -> None:
        console.print(f"  [bold]{label:<10}[/] {text}", highlight=False)

    days = (end - start).days
    console.print(f"\n[bold]What Touchpoint did for {practice} in {days} days[/] "
                  f"({start:%a %d %b} – {end - timedelta(minutes=1):%a %d %b})\n")
    others = [part for part in (_plural(story.contacts_reached, "parent or caregiver",
                                        "parents and caregivers"),
                                _plural(story.referrers_reached, "referring office"))
              if part]
    row("Reached", ", ".join([f"{story.reached} of {story.patients} patients", *others]))
    row("Sent", f"{_plural(story.texts + story.emails, 'message')}: "
        f"{_plural(story.texts, 'text')} and {_plural(story.emails, 'email')}; "
        + (f"{story.failed} failed" if story.failed else "none failed"))
    row("Visits", f"{story.reminded} of {story.visits} visits were reminded beforehand"
        + (f"; {story.confirmed} confirmed by replying C" if story.confirmed else ""))
    average = f" (average {story.average}/10)" if story.average is not None else ""
    row("Listened", f"{_plural(story.answers, 'answer')} to the 0-10 question{average}; "
        f"{_plural(story.for_staff, 'reply', 'replies')} for staff to read")
    causes = ", ".join(_plural(n, CAUSES.get(cause, cause).removeprefix("a ").removeprefix(
        "an "), CAUSES_PLURAL.get(cause)) for cause, n in story.cases.most_common())
    row("Caught", f"{_plural(sum(story.cases.values()), 'recovery case')}"
        + (f": {causes}" if causes else ""))
    if story.cases:
        alerted = f"its owner alerted for {story.alerted} of {sum(story.cases.values())}"
        if story.slowest_alert is not None:
            minutes = math.ceil(story.slowest_alert.total_seconds() / 60)
            alerted += f" ({'each within ' + _plural(minutes, 'minute') if minutes else 'at once'})"
        row("", f"{alerted}; {_plural(story.notes, 'personal note')} to the patients; "
            f"{story.came_back} of the {story.with_case} patients came back for another visit")
    if story.not_sent:
        console.print("\n[bold]Not sent, and why[/] — each touch point ends with one of "
                      "these reasons (`touchpoint why ID` tells one's story)")
        for (status, reason), n in sorted(story.not_sent.items(),
                                          key=lambda item: (-item[1], item[0])):
            console.print(f"  {n:>4} {status + ': ' + reason:<34} "
                          f"{EXPLANATIONS.get(reason, '(no explanation recorded)')}",
                          highlight=False)
    console.print("\nThe details follow: a timeline, three patients' stories, the recovery "
                  "cases and a summary per journey.")


# plural forms of the case causes, as the story counts them
CAUSES_PLURAL = {"low_score": "low satisfaction scores",
                 "complaint": "replies that read as complaints",
                 "failed_delivery": "messages about their care that could not be delivered",
                 "no_show": "missed visits", "late_cancellation": "late cancellations"}


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def print_report(console: Console, db: Database, settings: Settings, days: int = DAYS,
                 detailed_days: int = 2) -> None:
    """The practice's story, then the timeline (message by message for the first days,
    then a line a day), the spotlight patients, and the per-journey summary."""
    practice_tz = zone(settings.require("practice.timezone"))
    start = START.astimezone(practice_tz)
    end = start + timedelta(days=days)
    print_story(console, practice_story(db, start, end),
                settings.practice.name or "the practice", start, end)
    entries = _entries(db)
    with db.transaction() as conn:
        journeys = summary(conn)
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


DEMO_ACCOUNT = "demo@touchpoint.example"


def demo_account(db: Database, now: datetime) -> tuple[str, str]:
    """An owner account on the demo's database, with a fresh random password: (email,
    password) to sign in to the console with."""
    password = secrets.token_urlsafe(12)
    with db.transaction() as conn:
        if staff.get_user(conn, DEMO_ACCOUNT) is None:
            staff.add_user(conn, DEMO_ACCOUNT, "owner", password, now)
        else:
            staff.set_password(conn, DEMO_ACCOUNT, password, now)
    return DEMO_ACCOUNT, password
