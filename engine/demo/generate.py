"""Writes the bundled demo data (deterministic; run it to regenerate ``data/``).

    python -m engine.demo.generate

A fictional cash-based PT practice in Chicago, "Riverside Physical Therapy", over the 60
days from Monday 2026-10-05 (daylight saving ends on 2026-11-01 inside the window):

* ``patients.csv`` — the patients on file at the start (imported as a baseline: they
  are not new, so they get no welcome);
* ``appointments.csv`` — the appointments on file at the start, including past visits;
* ``feed_patients.csv`` / ``feed_appointments.csv`` — what the EMR export says later,
  one row per change, with the instant (``at``, UTC) it shows up: new patients,
  bookings, completions, cancellations, moves and no-shows;
* ``referrers.csv`` — two referral sources; some new patients name one;
* ``contacts.csv`` — the parent of the practice's one minor patient;
* ``feed_replies.csv`` — patients' answers to the 0-10 question (7 and 28 days after
  their first visit), including a low score and a complaint.

All phone numbers are in the 555-01xx range reserved for fiction; emails use
example.com.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from engine.importer import APPOINTMENT_COLUMNS, CONTACT_COLUMNS, PATIENT_COLUMNS, REFERRER_COLUMNS

DATA = Path(__file__).parent / "data"
TZ = ZoneInfo("America/Chicago")
START = datetime(2026, 10, 5, 7, 0, tzinfo=TZ)
DAYS = 60
END = START + timedelta(days=DAYS)

FIRST = ["Emma", "Liam", "Olivia", "Noah", "Ava", "James", "Sophia", "Benjamin", "Mia",
         "Lucas", "Harper", "Henry", "Amelia", "Jack", "Evelyn", "Owen", "Abigail", "Wyatt",
         "Ella", "Leo", "Grace", "Daniel", "Chloe", "Mateo", "Nora", "Caleb", "Zoe", "Isaac",
         "Lily", "Ryan", "Hannah", "Nathan", "Aria", "Samuel", "Layla", "David", "Riley",
         "Carter", "Aubrey", "Julian", "Stella", "Gabriel", "Violet", "Adrian", "Hazel",
         "Diego", "Camila", "Andre", "Priya", "Wei"]
LAST = ["Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson", "Anderson",
        "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Thompson", "White", "Harris",
        "Clark", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott",
        "Hill", "Green", "Adams", "Baker", "Nelson", "Carter", "Mitchell", "Roberts", "Turner",
        "Phillips", "Campbell", "Parker", "Evans", "Edwards", "Collins", "Stewart", "Morris",
        "Rogers", "Reed", "Cook", "Morgan", "Bell", "Murphy", "Bailey"]
THERAPISTS = ["Maya Chen, DPT", "Jordan Ellis, PT", "Sam Ortiz, DPT"]
LOCATION = "Riverside PT, 1200 W Riverside Ave"


@dataclass
class Patient:
    patient_id: str
    first_name: str
    last_name: str
    phone: str
    email: str
    language: str = ""
    timezone: str = ""
    sms_consent: str = "yes"
    email_consent: str = "yes"
    marketing_consent: str = "no"
    arrives: datetime | None = None  # None: on file at the start
    date_of_birth: str = ""
    referral_source: str = ""


@dataclass
class Visit:
    appointment_id: str
    patient_id: str
    start: datetime
    duration: int
    visit_type: str
    therapist: str
    booked_at: datetime
    fate: str  # completed | cancelled | no_show | moved
    fate_at: datetime | None = None
    moved_to: datetime | None = None
    changes: list[tuple[datetime, dict[str, str]]] = field(default_factory=list)


def _slot(rng: random.Random, day: datetime) -> datetime:
    """A clinic slot: 07:30–18:00 local, half-hourly, on a weekday."""
    while day.weekday() >= 5:
        day += timedelta(days=1)
    minutes = rng.choice(range(7 * 60 + 30, 18 * 60 + 1, 30))
    return datetime.combine(day.date(), time(minutes // 60, minutes % 60), tzinfo=TZ)


def build(seed: int = 7) -> tuple[list[Patient], list[Visit]]:
    rng = random.Random(seed)
    patients: list[Patient] = []
    for index in range(56):
        given, family = FIRST[index % len(FIRST)], LAST[(index * 7) % len(LAST)]
        patients.append(Patient(
            patient_id=f"P{1001 + index}", first_name=given, last_name=family,
            phone=f"(312) 555-{100 + index:04d}",
            email=f"{given.lower()}.{family.lower()}@example.com",
            marketing_consent="yes" if rng.random() < 0.6 else "no",
        ))
    # People the demo tells stories about
    lucia = patients[3]
    lucia.first_name, lucia.last_name, lucia.language = "Lucía", "Fernández", "es"
    lucia.timezone, lucia.email = "America/New_York", "lucia.fernandez@example.com"
    lucia.marketing_consent = "yes"
    robert = patients[5]
    robert.first_name, robert.last_name, robert.sms_consent = "Robert", "Hale", "no"
    robert.email = "robert.hale@example.com"
    patients[9].email = ""  # a patient without email
    patients[2].date_of_birth = "2011-04-12"  # a minor: reminders go to her parent
    for newcomer in patients[40:]:
        newcomer.arrives = START + timedelta(days=rng.randint(1, 45), hours=rng.randint(1, 9))

    visits: list[Visit] = []
    counter = iter(range(5001, 9999))

    def visit(patient: Patient, start: datetime, booked_at: datetime, visit_type: str,
              fate: str | None = None) -> Visit:
        if fate is None:
            roll = rng.random()
            fate = "cancelled" if roll < 0.09 else "moved" if roll < 0.16 else \
                "no_show" if roll < 0.21 else "completed"
        v = Visit(f"A{next(counter)}", patient.patient_id, start, rng.choice([45, 60]),
                  visit_type, THERAPISTS[int(patient.patient_id[1:]) % 3], booked_at, fate)
        visits.append(v)
        return v

    for index, patient in enumerate(patients):
        if patient.arrives is None and index < 30:  # in an active plan of care
            for past in range(rng.randint(1, 4)):
                start = _slot(rng, START - timedelta(days=7 * (past + 1) + rng.randint(0, 2)))
                visit(patient, start, start - timedelta(days=10), "Follow-up", "completed")
            day = START + timedelta(days=rng.randint(0, 3))
            for _ in range(rng.randint(3, 6)):
                start = _slot(rng, day)
                booked = min(START - timedelta(days=1), start - timedelta(days=9)) \
                    if start < START + timedelta(days=8) else start - timedelta(days=rng.choice(
                        [1, 3, 6, 9]))
                visit(patient, start, booked, "Follow-up")
                day = start + timedelta(days=rng.choice([3, 4, 7]))
        elif patient.arrives is None:  # lapsing: last visit 10–50 days before the start
            last = _slot(rng, START - timedelta(days=rng.randint(10, 50)))
            for past in range(rng.randint(1, 3)):
                start = last - timedelta(days=7 * past)
                visit(patient, _slot(rng, start), start - timedelta(days=10), "Follow-up",
                      "completed")
            if index % 4 == 0:  # comes back after a win-back message
                comeback = _slot(rng, last + timedelta(days=rng.randint(40, 62)))
                if comeback < END:
                    visit(patient, comeback, comeback - timedelta(days=5), "Follow-up",
                          "completed")
        else:  # new patient: evaluation, then a few visits
            arrives = patient.arrives
            first = _slot(rng, arrives + timedelta(days=rng.choice([1, 2, 4, 6])))
            visit(patient, first, arrives, "Initial evaluation",
                  "cancelled" if index == 44 else "completed")
            day = first + timedelta(days=rng.choice([3, 4]))
            for _ in range(rng.randint(1, 4)):
                start = _slot(rng, day)
                visit(patient, start, first + timedelta(hours=2), "Follow-up")
                day = start + timedelta(days=rng.choice([3, 4, 7]))
    for index, newcomer in enumerate(patients[40:]):  # half the new patients were referred
        if index % 2 == 0:
            newcomer.referral_source = "R1" if index % 4 == 0 else "R2"
    lucia_visit = next(v for v in visits if v.patient_id == lucia.patient_id
                       and v.start > START + timedelta(days=5))
    lucia_visit.visit_type, lucia_visit.fate = "Telehealth", "completed"

    for v in visits:
        if v.fate == "cancelled":
            lead = (v.start - v.booked_at).total_seconds()
            v.fate_at = v.booked_at + timedelta(seconds=lead * rng.uniform(0.3, 0.97))
        elif v.fate == "moved":
            v.fate_at = v.booked_at + (v.start - v.booked_at) * rng.uniform(0.2, 0.8)
            v.moved_to = _slot(rng, v.start + timedelta(days=rng.choice([1, 2, 3])))
        elif v.fate == "no_show":
            v.fate_at = v.start + timedelta(minutes=30)
        else:
            v.fate_at = v.start + timedelta(minutes=v.duration + 20)
    return patients, visits


def _row(v: Visit, start: datetime, status: str) -> dict[str, str]:
    return {"appointment_id": v.appointment_id, "patient_id": v.patient_id,
            "start": start.isoformat(), "duration_minutes": str(v.duration), "status": status,
            "visit_type": v.visit_type, "therapist": v.therapist, "location": LOCATION}


def timeline(v: Visit) -> list[tuple[datetime, dict[str, str]]]:
    """Each state the EMR export shows for this visit, from when it shows it."""
    assert v.fate_at is not None
    states = [(v.booked_at, _row(v, v.start, "booked"))]
    if v.fate == "cancelled":
        states.append((v.fate_at, _row(v, v.start, "cancelled")))
    elif v.fate == "moved":
        assert v.moved_to is not None
        states.append((v.fate_at, _row(v, v.moved_to, "booked")))
        states.append((v.moved_to + timedelta(minutes=v.duration + 20),
                       _row(v, v.moved_to, "completed")))
    else:
        states.append((v.fate_at, _row(v, v.start, v.fate)))
    return states


REFERRERS = [
    {"referrer_id": "R1", "name": "Lakeside Orthopedics", "contact_name": "Dana Whitfield",
     "email": "referrals@lakeside-ortho.example.com", "fax": ""},
    {"referrer_id": "R2", "name": "North Shore Sports Medicine", "contact_name": "Omar Haddad",
     "email": "office@northshore-sports.example.com", "fax": "(312) 555-0198"},
]
# How patients answer the 0-10 question, in turn (the Spanish speaker answers in Spanish).
ANSWERS = ["10", "9", "8/10", "eight", "4", "10", "7", "the front desk was rude to me",
           "9", "3"]


def replies(patients: list[Patient], visits: list[Visit]) -> list[tuple[datetime, str, str]]:
    """(when, from, body): an answer 25 minutes after each satisfaction question, which
    goes at 12:00 7 and 28 days after a patient's first completed visit (a first visit
    before the demo starts is history: no question follows it)."""
    completed: dict[str, list[datetime]] = {}
    for v in visits:
        if v.fate == "completed":
            completed.setdefault(v.patient_id, []).append(v.start)
        elif v.fate == "moved" and v.moved_to is not None:
            completed.setdefault(v.patient_id, []).append(v.moved_to)
    out = []
    answers = iter(ANSWERS * 10)
    for p in patients:
        starts = sorted(completed.get(p.patient_id, []))
        if not starts or starts[0] < START or p.sms_consent != "yes" or p.date_of_birth:
            continue
        tz = ZoneInfo(p.timezone) if p.timezone else TZ
        for days in (7, 28):
            day = starts[0].astimezone(tz).date() + timedelta(days=days)
            at = datetime.combine(day, time(12, 25), tzinfo=tz)
            if START < at < END:
                answer = next(answers)
                out.append((at, p.phone, "ocho" if p.language == "es" else answer))
    return sorted(out)


def write(directory: Path = DATA) -> None:
    patients, visits = build()
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "referrers.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, [*REFERRER_COLUMNS, "fax"])
        writer.writeheader()
        writer.writerows(REFERRERS)
    with (directory / "contacts.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, list(CONTACT_COLUMNS))
        writer.writeheader()
        for p in patients:
            if p.date_of_birth:
                writer.writerow({
                    "patient_id": p.patient_id, "contact_id": f"C{p.patient_id[1:]}",
                    "relationship": "parent", "first_name": "Rachel", "phone": "(312) 555-0190",
                    "email": "rachel.parent@example.com", "language": "", "timezone": "",
                    "sms_consent": "yes", "email_consent": "yes", "receives": "transactional"})
    with (directory / "feed_replies.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["at", "from", "body"])
        writer.writeheader()
        for at, number, body in replies(patients, visits):
            writer.writerow({"at": _utc(at), "from": number, "body": body})
    columns = [*PATIENT_COLUMNS, "date_of_birth", "referral_source", "preferred_name"]
    with (directory / "patients.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for p in patients:
            if p.arrives is None:
                writer.writerow(_patient_row(p))
    with (directory / "feed_patients.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["at", *columns])
        writer.writeheader()
        for p in sorted((p for p in patients if p.arrives), key=lambda p: p.arrives or START):
            assert p.arrives is not None
            writer.writerow({"at": _utc(p.arrives), **_patient_row(p)})
    initial: list[dict[str, str]] = []
    feed: list[tuple[datetime, dict[str, str]]] = []
    for v in visits:
        states = timeline(v)
        on_file = [row for at, row in states if at <= START]
        if on_file:
            initial.append(on_file[-1])
        feed.extend((at, row) for at, row in states if START < at < END)
    with (directory / "appointments.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, list(APPOINTMENT_COLUMNS))
        writer.writeheader()
        writer.writerows(sorted(initial, key=lambda r: r["start"]))
    with (directory / "feed_appointments.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["at", *APPOINTMENT_COLUMNS])
        writer.writeheader()
        for at, row in sorted(feed, key=lambda item: item[0]):
            writer.writerow({"at": _utc(at), **row})


def _patient_row(p: Patient) -> dict[str, str]:
    return {"patient_id": p.patient_id, "first_name": p.first_name, "last_name": p.last_name,
            "phone": p.phone, "email": p.email, "language": p.language, "timezone": p.timezone,
            "sms_consent": p.sms_consent, "email_consent": p.email_consent,
            "marketing_consent": p.marketing_consent, "date_of_birth": p.date_of_birth,
            "referral_source": p.referral_source, "preferred_name": ""}


def _utc(at: datetime) -> str:
    return at.astimezone(UTC).replace(second=0, microsecond=0).isoformat().replace("+00:00", "Z")


if __name__ == "__main__":
    write()
    print(f"wrote demo data to {DATA}")
