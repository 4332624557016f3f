"""Planning throughput: import 100k patients and 200k appointments, plan every touch point."""

from __future__ import annotations

import csv
import random
import sys
from datetime import timedelta
from pathlib import Path

from bench.common import NOW, Timer, database, definitions_for, pin_clock, settings_for
from engine.importer import (
    APPOINTMENT_COLUMNS,
    PATIENT_COLUMNS,
    import_appointments,
    import_patients,
)
from engine.runner import Runner
from engine.store.database import open_database


def write_files(folder: Path, patients: int, appointments: int) -> tuple[Path, Path]:
    rng = random.Random(1)
    people = folder / "patients.csv"
    with people.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(PATIENT_COLUMNS)
        for n in range(patients):
            writer.writerow([f"P{n}", "Alexandra", "Rivera", f"(312) {200 + n // 10000:03d}-"
                             f"{n % 10000:04d}", f"p{n}@example.com",
                             rng.choice(["", "", "", "es"]), "", "yes", "yes",
                             rng.choice(["yes", "no"])])
    visits = folder / "appointments.csv"
    with visits.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(APPOINTMENT_COLUMNS)
        for n in range(appointments):
            past = n % 4 == 0  # a quarter are visits completed in the last two days
            offset = timedelta(hours=-rng.randint(2, 40)) if past else \
                timedelta(days=rng.randint(1, 60), hours=rng.randint(0, 9))
            start = (NOW + offset).replace(minute=0, second=0, microsecond=0)
            writer.writerow([f"A{n}", f"P{n % patients}", start.isoformat(), 60,
                             "completed" if past else "booked", "Follow-up", "Maya Chen, DPT",
                             "Main clinic"])
    return people, visits


def run(kind: str, patients: int = 100_000, appointments: int = 200_000) -> dict[str, object]:
    pin_clock()
    with database(kind) as (url, folder):
        people, visits = write_files(folder, patients, appointments)
        settings = settings_for(folder, url)
        db = open_database(url)
        runner = Runner(db, settings, definitions_for(settings))
        with Timer() as total:
            with Timer() as importing, db.transaction() as conn:
                import_patients(conn, people, region="US", now=NOW)
                import_appointments(conn, visits, practice_tz="America/Chicago", now=NOW)
            with Timer() as planning:
                events, planned, _ = runner.plan_pending()
        db.dispose()
    return {"benchmark": "planning", "database": kind, "patients": patients,
            "appointments": appointments, "events": events, "touch_points": planned,
            "import_seconds": round(importing.seconds, 1),
            "plan_seconds": round(planning.seconds, 1),
            "total_seconds": round(total.seconds, 1),
            "touch_points_per_second": round(planned / planning.seconds)}


if __name__ == "__main__":
    print(run(sys.argv[1], *(int(a) for a in sys.argv[2:])))
