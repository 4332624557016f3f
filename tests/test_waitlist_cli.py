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
from engine.store.schema import patients, slots, waitlist_entries
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


# --------------------------------------------------------------------------- waitlist …


def open_slot(clinic: Clinic, claimant: str | None = None, hours: int = 24) -> int:
    from datetime import timedelta

    from engine import waitlist

    with clinic.db.transaction() as conn:
        slot_id = waitlist.open_slot(conn, waitlist.NewSlot(
            MONDAY_9AM + timedelta(hours=hours), 45, therapist="Maya Chen, DPT"),
            source="console", now=clock.now())
        assert slot_id is not None
        if claimant is not None:
            who = conn.execute(select(patients.c.id)
                               .where(patients.c.external_id == claimant)).scalar_one()
            conn.execute(slots.update().where(slots.c.id == slot_id).values(
                status="claimed", claimed_by_patient_id=who, claimed_at=clock.now()))
    return slot_id


def test_list_shows_who_waits_with_their_preferences(clinic: Clinic) -> None:
    assert "Nobody is on the waitlist" in run(clinic, "waitlist", "list").output
    run(clinic, "import", "waitlist", csv_file(clinic, "P1,mon-wed,08:00,12:00,Dr. Lee,,,,\n"
                                                       "P2,,,,,,,,\n"))
    run(clinic, "waitlist", "withdraw", "P2")
    listed = json.loads(run(clinic, "waitlist", "list", "--json").stdout)
    assert listed == [{"patient_id": "P1", "days": ["mon", "tue", "wed"],
                       "time_from": "08:00", "time_until": "12:00", "therapist": "Dr. Lee",
                       "location": "", "visit_type": "", "earliest": None, "latest": None,
                       "since": "2026-11-02T15:00:00+00:00"}]
    table = run(clinic, "waitlist", "list")
    assert table.exit_code == 0
    assert "P1" in table.output and "mon, tue, wed · 08:00–12:00 · Dr. Lee" in table.output
    assert "P2" not in table.output


def test_slots_show_status_local_start_waves_and_claimant(clinic: Clinic) -> None:
    assert "No open or claimed slots." in run(clinic, "waitlist", "slots").output
    open_id = open_slot(clinic)
    claimed_id = open_slot(clinic, claimant="P2", hours=48)
    shown = json.loads(run(clinic, "waitlist", "slots", "--json").stdout)
    assert [(s["id"], s["status"], s["start_at"], s["waves"], s["claimed_by_patient_id"])
            for s in shown] == [
        (open_id, "open", "2026-11-03T09:00:00-06:00", 0, None),
        (claimed_id, "claimed", "2026-11-04T09:00:00-06:00", 0, "P2")]
    table = run(clinic, "waitlist", "slots").output
    assert "Tue 03 Nov 09:00" in table and "claimed" in table and "P2" in table
    run(clinic, "waitlist", "confirm", str(claimed_id))
    assert [s["id"] for s in json.loads(run(clinic, "waitlist", "slots", "--json").stdout)] \
        == [open_id]
    every = json.loads(run(clinic, "waitlist", "slots", "--all", "--json").stdout)
    assert [s["status"] for s in every] == ["open", "booked"]


def test_confirm_books_a_claimed_slot_and_refuses_others_in_one_line(clinic: Clinic) -> None:
    open_id = open_slot(clinic)
    claimed_id = open_slot(clinic, claimant="P1", hours=48)
    refused = run(clinic, "waitlist", "confirm", str(open_id))
    assert refused.exit_code == 1
    assert f"slot {open_id} is open: only a claimed slot can be confirmed" in refused.output
    assert "Traceback" not in refused.output
    missing = run(clinic, "waitlist", "confirm", "9999")
    assert missing.exit_code == 1 and "no slot 9999" in missing.output
    done = run(clinic, "waitlist", "confirm", str(claimed_id))
    assert done.exit_code == 0 and f"Slot {claimed_id} is booked." in done.output
    assert "booked already" in run(clinic, "waitlist", "confirm", str(claimed_id)).output
    with clinic.db.transaction() as conn:
        found = [(e.actor, e.action, e.target, e.detail) for e in entries(conn)
                 if e.action == "waitlist.confirm"]
    assert found == [("cli:al", "waitlist.confirm", f"slot:{claimed_id}",
                      {"result": "changed"}),
                     ("cli:al", "waitlist.confirm", f"slot:{claimed_id}",
                      {"result": "unchanged"})]


def test_withdraw_takes_a_patient_off_and_is_audited(clinic: Clinic) -> None:
    run(clinic, "import", "waitlist", csv_file(clinic, "P1,,,,,,,,\n"))
    gone = run(clinic, "waitlist", "withdraw", "P1")
    assert gone.exit_code == 0 and "P1 is off the waitlist." in gone.output
    assert entries_by_patient(clinic)["P1"][0] == "withdrawn"
    assert "was not waiting (withdrawn)" in run(clinic, "waitlist", "withdraw", "P1").output
    unknown = run(clinic, "waitlist", "withdraw", "P3")
    assert unknown.exit_code == 1 and "P3 is not on the waitlist" in unknown.output
    with clinic.db.transaction() as conn:
        assert [(e.action, e.target, e.detail) for e in entries(conn)
                if e.action == "waitlist.withdraw"] == [
            ("waitlist.withdraw", "patient:P1", {"result": "withdrawn"}),
            ("waitlist.withdraw", "patient:P1", {"result": "unchanged"})]


def test_a_claimed_patient_still_in_the_file_stays_claimed(clinic: Clinic) -> None:
    """A nightly export that still lists a patient who just won a slot must not put them
    back in line; a changed row does (they want another visit)."""
    file = csv_file(clinic, "P1,tue,,,,,,,\n")
    run(clinic, "import", "waitlist", file)
    with clinic.db.transaction() as conn:
        conn.execute(waitlist_entries.update().values(status="claimed"))
    again = json.loads(run(clinic, "import", "waitlist", file, "--json").stdout)
    assert (again["unchanged"], again["updated"]) == (1, 0)
    assert entries_by_patient(clinic)["P1"][0] == "claimed"
    changed = json.loads(run(clinic, "import", "waitlist",
                             csv_file(clinic, "P1,thu,,,,,,,\n"), "--json").stdout)
    assert changed["updated"] == 1
    assert entries_by_patient(clinic)["P1"] == ("waiting", ["thu"], "")
