"""`touchpoint import waitlist` and `touchpoint waitlist …` on SQLite and PostgreSQL: the
CSV's preferences checked as the API checks them (line and field named, good rows kept),
--full withdrawing who left the file, each run audited.

Practice timezone: America/Chicago; the clock is pinned on Monday 2026-11-02 09:00 CST.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from engine import clock
from engine.audit import entries
from engine.cli import cli
from engine.store.schema import patients, waitlist_entries
from tests.support import LIBRARY_SCHEDULES, LIBRARY_TEMPLATES, Clinic, patient

MONDAY_9AM = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
HEADER = "patient_id,days,time_from,time_until,therapist,location,visit_type,earliest,latest\n"


@pytest.fixture
def clinic(database_url: str, tmp_path: Path) -> Iterator[Clinic]:
    clock.set_now(MONDAY_9AM)
    practice = Clinic(database_url, tmp_path)
    practice.patients(patient("P1"), patient("P2"), patient("P3"))
    yield practice
    practice.close()


def run(clinic: Clinic, *args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200", "TOUCHPOINT_USER": "al"}).invoke(cli, [
        "--config", str(clinic.config), "--db", clinic.settings.database_url,
        "--schedules", str(LIBRARY_SCHEDULES), "--templates", str(LIBRARY_TEMPLATES),
        "--now", clock.now().isoformat(), *args])


def csv_file(clinic: Clinic, body: str, name: str = "waitlist.csv") -> str:
    path = clinic.folder / name
    path.write_text(HEADER + body, encoding="utf-8")
    return str(path)


def entries_by_patient(clinic: Clinic) -> dict[str, tuple[str, list[str], str]]:
    with clinic.db.transaction() as conn:
        rows = conn.execute(select(patients.c.external_id, waitlist_entries.c.status,
                                   waitlist_entries.c.days, waitlist_entries.c.therapist)
                            .join(patients, patients.c.id == waitlist_entries.c.patient_id))
        return {r.external_id: (r.status, list(r.days), r.therapist) for r in rows}


def test_import_keeps_good_rows_and_names_the_line_and_field_of_bad_ones(clinic: Clinic,
                                                                         ) -> None:
    file = csv_file(clinic, "P1,mon-wed,8:00 am,12:00,Dr. Lee,,,,\n"
                            "P2,funday,,,,,,,\n"
                            "P9,,,,,,,,\n"
                            "P3,,13:00,09:00,,,,soon,\n")
    result = run(clinic, "import", "waitlist", file, "--json")
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert (summary["kind"], summary["rows"], summary["created"], summary["rejected"]) == (
        "waitlist", 4, 1, 3)
    problems = {p["line"]: p["message"] for p in summary["problems"]}
    assert problems[3].startswith("days 'funday' is not a weekday")
    assert problems[4] == "patient_id is not a known patient — import patients first"
    assert "time_until must be later than time_from" in problems[5]
    assert "earliest is not a date" in problems[5]
    assert entries_by_patient(clinic) == {"P1": ("waiting", ["mon", "tue", "wed"], "Dr. Lee")}


def test_the_same_file_again_changes_nothing_and_a_change_updates(clinic: Clinic) -> None:
    file = csv_file(clinic, "P1,tue,,,,,,,\nP2,,,,,,,,\n")
    first = run(clinic, "import", "waitlist", file)
    assert first.exit_code == 0, first.output
    assert "2 new, 0 updated, 0 unchanged, 0 rejected" in first.output
    again = run(clinic, "import", "waitlist", file, "--json")
    assert json.loads(again.stdout)["unchanged"] == 2
    changed = run(clinic, "import", "waitlist",
                  csv_file(clinic, "P1,thu,,,,,,,\nP2,,,,,,,,\n"), "--json")
    assert (json.loads(changed.stdout)["updated"], json.loads(changed.stdout)["unchanged"]) \
        == (1, 1)
    assert entries_by_patient(clinic)["P1"][1] == ["thu"]


def test_full_withdraws_who_left_the_file_and_refuses_a_file_with_no_good_row(
        clinic: Clinic) -> None:
    assert run(clinic, "import", "waitlist",
               csv_file(clinic, "P1,,,,,,,,\nP2,,,,,,,,\nP3,,,,,,,,\n")).exit_code == 0
    # P2's row is bad (a bad cell does not mean they left the list): kept waiting
    full = run(clinic, "import", "waitlist",
               csv_file(clinic, "P1,,,,,,,,\nP2,someday,,,,,,,\n"), "--full", "--json")
    assert full.exit_code == 3
    assert json.loads(full.stdout)["removed"] == 1
    assert {k: v[0] for k, v in entries_by_patient(clinic).items()} == {
        "P1": "waiting", "P2": "waiting", "P3": "withdrawn"}
    told = run(clinic, "import", "waitlist", csv_file(clinic, "P1,,,,,,,,\n"), "--full")
    assert "1 withdrawn (not in the file)" in told.output
    empty = run(clinic, "import", "waitlist", csv_file(clinic, "P2,someday,,,,,,,\n"),
                "--full")
    assert empty.exit_code == 1
    assert "a full sync needs at least one good row" in empty.output
    assert "Traceback" not in empty.output
    assert entries_by_patient(clinic)["P1"][0] == "waiting"
    assert entries_by_patient(clinic)["P2"][0] == "withdrawn"


def test_a_missing_column_or_file_is_one_clear_line(clinic: Clinic) -> None:
    path = clinic.folder / "bad.csv"
    path.write_text("days,therapist\nmon,Lee\n", encoding="utf-8")
    missing = run(clinic, "import", "waitlist", str(path))
    assert missing.exit_code == 1 and "missing column patient_id" in missing.output
    gone = run(clinic, "import", "waitlist", str(clinic.folder / "nope.csv"))
    assert gone.exit_code == 1 and "file not found" in gone.output
    assert "Traceback" not in missing.output + gone.output


def test_each_import_is_audited_with_its_counts(clinic: Clinic) -> None:
    run(clinic, "import", "waitlist", csv_file(clinic, "P1,,,,,,,,\nP9,,,,,,,,\n"))
    with clinic.db.transaction() as conn:
        [entry] = [e for e in entries(conn) if e.action == "import.waitlist"]
    assert (entry.actor, entry.target) == ("cli:al", "file:waitlist.csv")
    assert entry.detail == {"rows": 2, "created": 1, "updated": 0, "unchanged": 0,
                            "rejected": 1, "removed": 0}
