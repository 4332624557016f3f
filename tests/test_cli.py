"""The `touchpoint` command (engine/cli/), through click's CliRunner on ``engine.cli.cli``
and, for the real console entry point, ``python -m engine`` in a subprocess.

Each test runs in its own folder (conftest's ``_isolated_cwd``) holding the practice's
touchpoint.toml (America/Chicago, fake channels). Practice clock: CST, UTC-6.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, select, text
from sqlalchemy.pool import NullPool

from engine.cli import cli
from engine.csv_export import neutralise
from engine.errors import DatabaseNotReady
from engine.store.database import head_revision, open_database
from engine.store.schema import Base, events
from tests.support import (
    LIBRARY_SCHEDULES,
    LIBRARY_TEMPLATES,
    appointment,
    patient,
    write_config,
    write_csv,
)

IMPORTED_AT = "2026-11-02T15:00:00Z"  # Mon 09:00 CST
LOG_FIELDS = ("id", "patient_id", "appointment_id", "journey", "step", "channel", "recipient",
              "due_at", "sent_at", "status", "reason", "attempts", "provider_message_id")
MASKED_P1 = "+1••••••••00"


def invoke(*args: str, env: Mapping[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=dict(env or {}))


def practice(folder: Path, database_url: str) -> list[str]:
    """Write the practice's settings and its EMR export; return the global options."""
    write_config(folder)
    write_csv(folder / "patients.csv",
              [patient("P1"), patient("P2", first_name="Ben", phone="(312) 555-0102")],
              patient().keys())
    write_csv(folder / "appointments.csv",
              [appointment("A1", "P1", "2026-11-05T10:00:00-06:00")], appointment().keys())
    return ["--db", database_url, "--schedules", str(LIBRARY_SCHEDULES),
            "--templates", str(LIBRARY_TEMPLATES)]


def imported(folder: Path, database_url: str) -> list[str]:
    """The practice with both files imported at IMPORTED_AT (events not yet planned)."""
    options = practice(folder, database_url)
    for kind in ("patients", "appointments"):
        result = invoke(*options, "--now", IMPORTED_AT, "import", kind, f"{kind}.csv")
        assert result.exit_code == 0, result.output
    return options


def dump(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every Touchpoint table."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return {table.name: sorted((tuple(row) for row in conn.execute(select(table))),
                                       key=repr)
                    for table in Base.metadata.sorted_tables}
    finally:
        engine.dispose()


def one_line_error(result: Result) -> str:
    """Exit 1, nothing on stdout, one line on stderr starting with 'Error: '."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# --------------------------------------------------------------------------- run


def test_run_without_once_is_a_usage_error_and_touches_nothing(tmp_path: Path) -> None:
    write_config(tmp_path)
    result = invoke("run")
    assert result.exit_code == 2
    assert "Error: run needs --once (to keep running, use `touchpoint daemon`)" in result.stderr
    assert not (tmp_path / "touchpoint.db").exists()


def test_a_dry_run_prints_the_messages_and_leaves_the_database_as_it_was(
        database_url: str, tmp_path: Path) -> None:
    options = imported(tmp_path, database_url)
    before = dump(database_url)
    assert len(before["events"]) == 3 and before["touch_points"] == []
    outbox = tmp_path / "outbox.jsonl"

    result = invoke(*options, "--now", IMPORTED_AT, "run", "--once", "--dry-run",
                    env={"TOUCHPOINT_FAKE_OUTBOX": str(outbox)})

    assert result.exit_code == 0, result.output
    assert f"── sms to {MASKED_P1} · welcome/welcome · touch point " in result.stdout
    assert "\nWelcome to Riverside Physical Therapy, Ana!" in result.stdout
    assert "── sms to +1••••••••02 · welcome/welcome" in result.stdout
    assert result.stdout.rstrip().endswith(
        "dry run (nothing recorded): 3 event(s) planned into 7 touch point(s); 2 sent.")
    assert "+13125550100" not in result.stdout
    assert dump(database_url) == before  # events still unprocessed, no touch point, no history
    assert not outbox.exists()  # the fake provider was never called

    real = invoke(*options, "--now", IMPORTED_AT, "run", "--once", "--json",
                  env={"TOUCHPOINT_FAKE_OUTBOX": str(outbox)})
    assert real.exit_code == 0, real.output
    report = json.loads(real.stdout)
    assert (report["events"], report["planned"], report["dispatch"]["sent"]) == (3, 7, 2)
    assert len(outbox.read_text().splitlines()) == 2


def test_run_once_json_reports_the_tick(sqlite_url: str, tmp_path: Path) -> None:
    options = imported(tmp_path, sqlite_url)
    result = invoke(*options, "--now", IMPORTED_AT, "run", "--once", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    expected = {
        "at": "2026-11-02T15:00:00Z", "recovered": 0, "lapses": 0, "events": 3,
        "planned": 7, "exited": 0, "dry_run": False,
        "dispatch": {"claimed": 2, "sent": 2, "failed": 0, "unknown": 0, "deferred": 0,
                     "retried": 0, "skipped": {}, "cancelled": {}}}
    assert {k: report.get(k) for k in expected if k != "dispatch"} == \
        {k: v for k, v in expected.items() if k != "dispatch"}
    assert {k: report["dispatch"].get(k) for k in expected["dispatch"]} == expected["dispatch"]


def test_now_with_an_offset_runs_the_engine_at_that_instant(
        sqlite_url: str, tmp_path: Path) -> None:
    options = imported(tmp_path, sqlite_url)
    result = invoke(*options, "--now", "2026-11-04T10:00-06:00", "run", "--once", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["at"] == "2026-11-04T16:00:00Z"
    # the welcomes and the 3-day reminder are past their deadline; the day-before one is due
    assert report["dispatch"]["sent"] == 1
    assert report["dispatch"]["skipped"] == {"too_late": 5}
    rows = json.loads(invoke(*options, "log", "--status", "sent", "--json").stdout)
    assert [(r["patient_id"], r["journey"], r["step"], r["sent_at"]) for r in rows] == [
        ("P1", "pre-visit", "one-day-before", "2026-11-04T16:00:00Z")]


def test_now_without_an_offset_is_a_usage_error(tmp_path: Path) -> None:
    write_config(tmp_path)
    result = invoke("--now", "2026-11-03T10:00", "run", "--once")
    assert result.exit_code == 2
    assert "give a UTC offset" in result.stderr
    assert not (tmp_path / "touchpoint.db").exists()


# --------------------------------------------------------------------------- log


@pytest.fixture
def ran(database_url: str, tmp_path: Path) -> list[str]:
    """Imported and run once at IMPORTED_AT: both welcome texts sent, the rest planned."""
    options = imported(tmp_path, database_url)
    result = invoke(*options, "--now", IMPORTED_AT, "run", "--once")
    assert result.exit_code == 0, result.output
    return options


def test_log_json_rows_carry_imported_ids_utc_times_and_masked_recipients(
        ran: list[str]) -> None:
    result = invoke(*ran, "log", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert all(set(LOG_FIELDS) <= set(row) for row in rows)
    assert [(r["patient_id"], r["appointment_id"], r["journey"], r["step"], r["status"])
            for r in rows] == [
        ("P1", None, "welcome", "welcome", "sent"),
        ("P2", None, "welcome", "welcome", "sent"),
        ("P1", None, "welcome", "what-to-expect", "planned"),
        ("P2", None, "welcome", "what-to-expect", "planned"),
        ("P1", "A1", "pre-visit", "three-days-before", "planned"),
        ("P1", "A1", "pre-visit", "one-day-before", "planned"),
        ("P1", "A1", "pre-visit", "two-hours-before", "planned"),
    ]
    sent = rows[0]
    assert {k: sent[k] for k in LOG_FIELDS if k not in ("id", "provider_message_id")} == {
        "patient_id": "P1", "appointment_id": None, "journey": "welcome", "step": "welcome",
        "channel": "sms", "recipient": MASKED_P1, "due_at": "2026-11-02T15:00:00Z",
        "sent_at": "2026-11-02T15:00:00Z", "status": "sent", "reason": None, "attempts": 1}
    assert isinstance(sent["id"], int) and sent["provider_message_id"].startswith("fake-sms-")
    assert [r["due_at"] for r in rows[2:]] == ["2026-11-02T15:10:00Z", "2026-11-02T15:10:00Z",
                                               "2026-11-02T16:00:00Z", "2026-11-04T16:00:00Z",
                                               "2026-11-05T14:00:00Z"]
    assert "+13125550100" not in result.stdout and "p1@example.com" not in result.stdout

    revealed = json.loads(invoke(*ran, "log", "--json", "--reveal").stdout)
    assert [r["recipient"] for r in revealed[:2]] == ["+13125550100", "+13125550102"]


def test_log_filters_by_patient_journey_and_status(ran: list[str]) -> None:
    cases: list[tuple[tuple[str, ...], set[tuple[str, str, str]]]] = [
        (("--patient", "P2"), {("P2", "welcome", "welcome"),
                               ("P2", "welcome", "what-to-expect")}),
        (("--journey", "pre-visit"), {("P1", "pre-visit", "three-days-before"),
                                      ("P1", "pre-visit", "one-day-before"),
                                      ("P1", "pre-visit", "two-hours-before")}),
        (("--status", "sent"), {("P1", "welcome", "welcome"), ("P2", "welcome", "welcome")}),
        (("--patient", "P1", "--status", "planned", "--journey", "welcome"),
         {("P1", "welcome", "what-to-expect")}),
        (("--patient", "P9"), set()),
    ]
    for flags, expected in cases:
        result = invoke(*ran, "log", *flags, "--json")
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        assert len(rows) == len(expected), flags
        assert {(r["patient_id"], r["journey"], r["step"]) for r in rows} == expected, flags


def test_log_csv_has_a_header_and_the_same_rows_as_json(ran: list[str]) -> None:
    as_json = json.loads(invoke(*ran, "log", "--json").stdout)
    result = invoke(*ran, "log", "--csv")
    assert result.exit_code == 0, result.output
    reader = csv.DictReader(io.StringIO(result.stdout))
    assert reader.fieldnames is not None
    assert list(reader.fieldnames[:len(LOG_FIELDS)]) == list(LOG_FIELDS)
    assert list(reader.fieldnames) == list(as_json[0])
    rows = list(reader)
    assert [(r["id"], r["patient_id"], r["step"], r["status"], r["recipient"]) for r in rows] == [
        (str(j["id"]), j["patient_id"], j["step"], j["status"], neutralise(j["recipient"] or ""))
        for j in as_json]  # (a phone number begins with +: the CSV quotes it)
    assert rows[0]["sent_at"] == "2026-11-02T15:00:00Z"


def test_log_csv_neutralises_cells_a_spreadsheet_would_read_as_formulas(
        tmp_path: Path, sqlite_url: str) -> None:
    options = practice(tmp_path, sqlite_url)
    ids = ["=HYPERLINK(\"http://x.example\")", "-2+3", "@SUM", "P4"]
    write_csv(tmp_path / "patients.csv",
              [patient(pid, phone=f"+1312555010{i}", email="") for i, pid in enumerate(ids)],
              patient().keys())
    result = invoke(*options, "--now", IMPORTED_AT, "import", "patients", "patients.csv")
    assert result.exit_code == 0, result.output
    assert invoke(*options, "--now", IMPORTED_AT, "run", "--once").exit_code == 0
    result = invoke(*options, "log", "--csv", "--reveal", "--journey", "welcome")
    assert result.exit_code == 0, result.output
    rows = [r for r in csv.DictReader(io.StringIO(result.stdout)) if r["step"] == "welcome"]
    assert sorted(r["patient_id"] for r in rows) == sorted(
        ["'=HYPERLINK(\"http://x.example\")", "'-2+3", "'@SUM", "P4"])
    assert sorted(r["recipient"] for r in rows) == [  # phone numbers, revealed
        f"'+1312555010{i}" for i in range(4)]
    assert all(r["attempts"] == "1" for r in rows)  # numbers are left as they are


def test_log_json_and_csv_together_is_a_usage_error(ran: list[str]) -> None:
    result = invoke(*ran, "log", "--json", "--csv")
    assert result.exit_code == 2
    assert "Error: choose one of --json and --csv" in result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------- why


def _welcome_id(options: list[str]) -> int:
    rows = json.loads(invoke(*options, "log", "--patient", "P1", "--status", "sent",
                             "--json").stdout)
    assert len(rows) == 1
    return int(rows[0]["id"])


def test_why_tells_the_story_of_a_sent_touch_point_as_text_and_json(ran: list[str]) -> None:
    tp_id = _welcome_id(ran)
    result = invoke(*ran, "why", str(tp_id))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"Touch point {tp_id} — welcome / welcome\n")
    assert "  patient     P1 Ana Reyes\n" in out
    assert "  why         It was handed to the provider by sms (fake) at " \
           "2026-11-02T15:00:00Z.\n" in out
    assert "  planned by  patient.created at 2026-11-02T15:00:00Z (patients.csv:2)\n" in out
    assert "step 'welcome' — immediately, channels sms, email, template welcome/welcome" in out
    assert "  message     Welcome to Riverside Physical Therapy, Ana!" in out
    history = out.split("  history\n", 1)[1].splitlines()
    assert [line.split() for line in history] == [
        ["2026-11-02T15:00:00Z", "planned", "planner"],
        ["2026-11-02T15:00:00Z", "planned", "→", "sending", "dispatcher", "sms", "via", "fake",
         "to", MASKED_P1],
        ["2026-11-02T15:00:00Z", "sending", "→", "sent", "dispatcher"],
    ]

    result = invoke(*ran, "why", str(tp_id), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["id"], data["patient_id"], data["journey"], data["step"], data["status"],
            data["recipient"]) == (tp_id, "P1", "welcome", "welcome", "sent", MASKED_P1)
    assert data["explanation"] == \
        "It was handed to the provider by sms (fake) at 2026-11-02T15:00:00Z."
    assert data["event"] == {"kind": "patient.created", "occurred_at": "2026-11-02T15:00:00Z",
                             "source": "patients.csv:2"}
    assert [(h["previous_status"], h["status"], h["source"]) for h in data["history"]] == [
        (None, "planned", "planner"), ("planned", "sending", "dispatcher"),
        ("sending", "sent", "dispatcher")]


# --------------------------------------------------------------------------- db


def test_db_upgrade_creates_the_schema_then_says_it_is_up_to_date(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    first = invoke("--db", url, "db", "upgrade")
    assert first.exit_code == 0, first.output
    assert first.stdout == f"{url}: schema upgraded from empty to {head_revision()}.\n"
    again = invoke("--db", url, "db", "upgrade")
    assert again.exit_code == 0, again.output
    assert again.stdout == f"{url} is up to date (schema revision {head_revision()}).\n"
    current = invoke("--db", url, "db", "current")
    assert current.stdout == f"database: {head_revision()}; this Touchpoint: {head_revision()}\n"


def _set_revision(url: str, revision: str | None) -> None:
    open_database(url).dispose()
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        if revision is None:
            conn.execute(text("DROP TABLE alembic_version"))
        else:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    engine.dispose()


def test_a_database_written_by_a_newer_touchpoint_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    _set_revision(url, "ffff")
    message = ("the database is at schema revision ffff, which this Touchpoint does not know "
               "— it was written by a newer version; upgrade Touchpoint")
    with pytest.raises(DatabaseNotReady) as raised:
        open_database(url)
    assert raised.value.message == message
    assert one_line_error(invoke("--db", url, "log")) == f"Error: {message}"


def test_db_upgrade_on_a_newer_database_says_to_upgrade_touchpoint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    _set_revision(url, "ffff")
    line = one_line_error(invoke("--db", url, "db", "upgrade"))
    assert "written by a newer version; upgrade Touchpoint" in line


def test_a_database_at_an_older_revision_asks_for_db_upgrade_which_upgrades_it(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'older.db'}"
    database = open_database(url, check=False)
    database.upgrade("0001")  # as an older Touchpoint left it
    database.dispose()
    head = head_revision()
    assert head != "0001"
    line = one_line_error(invoke("--db", url, "log"))
    assert line == (f"Error: the database is at schema revision 0001, this Touchpoint needs "
                    f"{head} — back it up, then run `touchpoint db upgrade`")
    upgraded = invoke("--db", url, "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.stdout == f"{url}: schema upgraded from 0001 to {head}.\n"
    listed = invoke("--db", url, "log", "--json")
    assert (listed.exit_code, json.loads(listed.stdout)) == (0, [])


def test_touchpoint_tables_without_a_revision_are_refused_not_recreated(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'untracked.db'}"
    _set_revision(url, None)
    line = one_line_error(invoke("--db", url, "log"))
    assert "has Touchpoint tables but no schema revision" in line


# --------------------------------------------------------------------------- simulate


def test_simulate_needs_now(sqlite_url: str, tmp_path: Path) -> None:
    options = practice(tmp_path, sqlite_url)
    result = invoke(*options, "simulate", "--until", "2026-11-04T08:00-06:00")
    assert result.exit_code == 2
    assert "simulate needs a start: give --now before the command" in result.stderr


def test_simulate_until_before_now_is_an_error(sqlite_url: str, tmp_path: Path) -> None:
    options = practice(tmp_path, sqlite_url)
    result = invoke(*options, "--now", "2026-11-04T08:00-06:00", "simulate",
                    "--until", "2026-11-03T08:00-06:00")
    assert one_line_error(result) == "Error: --until must be after the start time (--now)"


def test_simulate_replays_a_feed_and_sends_the_reminders_due(
        sqlite_url: str, tmp_path: Path) -> None:
    options = practice(tmp_path, sqlite_url)
    feed = tmp_path / "feed"
    feed.mkdir()
    write_csv(feed / "feed_patients.csv", [{"at": "2026-11-02T15:02:00Z", **patient("P1")}],
              ["at", *patient().keys()])
    write_csv(feed / "feed_appointments.csv",
              [{"at": "2026-11-02T15:20:00Z",
                **appointment("A1", "P1", "2026-11-05T10:00:00-06:00")}],
              ["at", *appointment().keys()])
    outbox = tmp_path / "outbox.jsonl"
    result = invoke(*options, "--now", "2026-11-02T08:00-06:00", "simulate",
                    "--until", "2026-11-04T08:00-06:00", "--feed", str(feed), "--json",
                    env={"TOUCHPOINT_FAKE_OUTBOX": str(outbox)})
    assert result.exit_code == 0, result.output
    totals = json.loads(result.stdout)
    assert {k: totals[k] for k in ("planned", "sent", "failed")} == {
        "planned": 5, "sent": 3, "failed": 0}
    sent = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert [(m["journey"], m["step"], m["kind"], m["to"]) for m in sent] == [
        ("welcome", "welcome", "sms", "+13125550100"),
        ("welcome", "what-to-expect", "email", "p1@example.com"),
        ("pre-visit", "three-days-before", "sms", "+13125550100"),
    ]
    rows = json.loads(invoke(*options, "log", "--json").stdout)
    assert [(r["step"], r["status"], r["sent_at"]) for r in rows] == [
        ("welcome", "sent", "2026-11-02T15:05:00Z"),  # the first 5-minute tick after 15:02
        ("what-to-expect", "sent", "2026-11-02T15:15:00Z"),
        ("three-days-before", "sent", "2026-11-02T16:00:00Z"),
        ("one-day-before", "planned", None),
        ("two-hours-before", "planned", None),
    ]


def test_simulate_replays_patients_text_replies_as_the_webhook_would(
        sqlite_url: str, tmp_path: Path) -> None:
    options = practice(tmp_path, sqlite_url)
    feed = tmp_path / "feed"
    feed.mkdir()
    write_csv(feed / "feed_patients.csv", [{"at": "2026-11-02T15:02:00Z", **patient("P1")}],
              ["at", *patient().keys()])
    write_csv(feed / "feed_appointments.csv",
              [{"at": "2026-11-02T15:20:00Z",
                **appointment("A1", "P1", "2026-11-05T10:00:00-06:00")}],
              ["at", *appointment().keys()])
    # C after the reminder of Mon 10:00 CST, then STOP
    write_csv(feed / "feed_replies.csv",
              [{"at": "2026-11-03T16:30:00Z", "from": "(312) 555-0100", "body": "C"},
               {"at": "2026-11-03T17:00:00Z", "from": "(312) 555-0100", "body": "stop"}],
              ["at", "from", "body"])
    result = invoke(*options, "--now", "2026-11-02T08:00-06:00", "simulate",
                    "--until", "2026-11-05T12:00-06:00", "--feed", str(feed))
    assert result.exit_code == 0, result.output
    rows = json.loads(invoke(*options, "log", "--json").stdout)
    assert [(r["journey"], r["step"], r["status"], r["reason"]) for r in rows] == [
        ("welcome", "welcome", "sent", None),
        ("welcome", "what-to-expect", "sent", None),
        ("pre-visit", "three-days-before", "sent", None),
        ("replies", "confirmed", "sent", None),  # "C": confirmed, and told so
        ("replies", "stop", "sent", None),  # STOP: confirmed once
        ("pre-visit", "one-day-before", "sent", None),  # by email: texts are stopped
        ("pre-visit", "two-hours-before", "skipped", "opted_out"),
    ]
    with open_database(sqlite_url).transaction() as conn:
        confirmed = conn.execute(text("SELECT confirmed_at FROM appointments")).scalar()
    assert confirmed is not None


def test_the_replies_of_a_second_feed_are_recorded_and_the_same_feed_again_is_not(
        sqlite_url: str, tmp_path: Path) -> None:
    """Reply ids are not line numbers: line 2 of another feed is another message."""
    options = practice(tmp_path, sqlite_url)
    assert invoke(*options, "--now", "2026-11-02T08:00-06:00", "import", "patients",
                  str(write_csv(tmp_path / "p.csv", [patient("P1")], list(patient())))
                  ).exit_code == 0
    bodies = []
    for body, at in (("Hello?", "2026-11-02T15:30:00Z"), ("Anyone there?",
                                                        "2026-11-02T16:30:00Z"),
                     ("Anyone there?", "2026-11-02T16:30:00Z")):  # the last feed again
        feed = tmp_path / f"feed-{len(bodies)}"
        feed.mkdir()
        write_csv(feed / "feed_replies.csv", [{"at": at, "from": "(312) 555-0100",
                                               "body": body}], ["at", "from", "body"])
        result = invoke(*options, "--now", "2026-11-02T09:00-06:00", "simulate",
                        "--until", "2026-11-02T11:00-06:00", "--feed", str(feed))
        assert result.exit_code == 0, result.output
        with open_database(sqlite_url).transaction() as conn:
            bodies = list(conn.execute(text(
                "SELECT body FROM inbound_messages ORDER BY id")).scalars())
    assert bodies == ["Hello?", "Anyone there?"]


def test_a_feed_reply_from_a_number_that_is_not_one_names_its_line(
        sqlite_url: str, tmp_path: Path) -> None:
    options = practice(tmp_path, sqlite_url)
    feed = tmp_path / "feed"
    feed.mkdir()
    write_csv(feed / "feed_replies.csv",
              [{"at": "2026-11-02T15:30:00Z", "from": "not a number", "body": "hi"}],
              ["at", "from", "body"])
    result = invoke(*options, "--now", "2026-11-02T08:00-06:00", "simulate",
                    "--until", "2026-11-03T08:00-06:00", "--feed", str(feed))
    assert one_line_error(result).startswith(
        "Error: feed_replies.csv:2: phone is not a phone number")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("args", "expected"), [
    (("--db", "nonsense", "log"),
     "Error: setting database.url: 'nonsense' is not a database URL — use e.g. "
     "sqlite:///touchpoint.db or postgresql://user@host/db"),
    (("import", "patients", "missing.csv"), "Error: missing.csv: file not found"),
    (("why", "999"), "Error: no touch point 999 — list them with `touchpoint log`"),
])
def test_a_user_error_is_one_line_and_exit_1(tmp_path: Path, args: tuple[str, ...],
                                            expected: str) -> None:
    write_config(tmp_path)
    assert one_line_error(invoke(*args)) == expected


def test_an_unexpected_error_shows_no_traceback_unless_debugging(
        sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path)

    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("lost the cursor while reading +13125550100")

    monkeypatch.setattr("engine.cli.touch_points.log_rows", explode)
    line = one_line_error(invoke("--db", sqlite_url, "log"))
    assert line == ("Error: unexpected error: RuntimeError: lost the cursor while reading "
                    f"{MASKED_P1} — run again with TOUCHPOINT_DEBUG=1 for the details, and "
                    "please report it")

    debugging = invoke("--db", sqlite_url, "log", env={"TOUCHPOINT_DEBUG": "1"})
    assert isinstance(debugging.exception, RuntimeError)  # raised, so Python prints it


@pytest.mark.slow
def test_the_console_script_reports_errors_on_one_line_and_dry_runs(
        sqlite_url: str, tmp_path: Path) -> None:
    options = practice(tmp_path, sqlite_url)
    command = [sys.executable, "-m", "engine", *options, "--now", IMPORTED_AT]
    env = {k: v for k, v in os.environ.items() if k != "TOUCHPOINT_DEBUG"}
    env["PYTHONPATH"] = str(LIBRARY_SCHEDULES.parent)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60, check=False)

    missing = run("why", "999")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "Error: no touch point 999 — list them with `touchpoint log`\n"

    assert run("import", "patients", "patients.csv").returncode == 0
    dry = run("run", "--once", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"── sms to {MASKED_P1} · welcome/welcome" in dry.stdout
    assert "dry run (nothing recorded): 2 event(s) planned into 4 touch point(s); 2 sent." \
        in dry.stdout
    engine = create_engine(sqlite_url, poolclass=NullPool)
    with engine.connect() as conn:
        assert conn.execute(select(events.c.processed_at)).scalars().all() == [None, None]
    engine.dispose()


def test_import_referrers_and_contacts_report_bad_rows_by_line_and_keep_the_rest(
        sqlite_url: str, tmp_path: Path) -> None:
    options = [*practice(tmp_path, sqlite_url), "--now", IMPORTED_AT]
    write_csv(tmp_path / "referrers.csv",
              [{"referrer_id": "DR1", "name": "Lakeside Orthopedics",
                "contact_name": "Dana Whitfield", "email": "dana@lakeside.example"},
               {"referrer_id": "DR2", "name": "", "contact_name": "", "email": ""}],
              ("referrer_id", "name", "contact_name", "email"))
    write_csv(tmp_path / "contacts.csv",
              [{"patient_id": "P1", "contact_id": "C1", "relationship": "Parent",
                "first_name": "Rachel", "phone": "(312) 555-0190", "email": "",
                "language": "", "timezone": "America/Denver", "sms_consent": "yes",
                "email_consent": "no", "receives": "transactional"},
               {"patient_id": "P9", "contact_id": "C2", "relationship": "spouse",
                "first_name": "Sam", "phone": "", "email": "sam@example.com", "language": "",
                "timezone": "", "sms_consent": "no", "email_consent": "yes",
                "receives": "all"}],
              ("patient_id", "contact_id", "relationship", "first_name", "phone", "email",
               "language", "timezone", "sms_consent", "email_consent", "receives"))

    referrers = invoke(*options, "import", "referrers", str(tmp_path / "referrers.csv"))
    assert referrers.exit_code == 3
    assert referrers.stdout == "referrers.csv: 2 rows, 1 new, 0 updated, 0 unchanged, " \
                               "1 rejected.\n"
    assert referrers.stderr.strip() == ("referrers.csv: line 3: name is empty — write the "
                                        "practice or physician's name")
    assert invoke(*options, "import", "patients", str(tmp_path / "patients.csv")).exit_code == 0
    contacts = invoke(*options, "import", "contacts", str(tmp_path / "contacts.csv"), "--json")
    assert contacts.exit_code == 3
    summary = json.loads(contacts.stdout)
    assert (summary["created"], summary["rejected"]) == (1, 1)
    assert [(p["line"], p["message"]) for p in summary["problems"]] == [
        (3, "patient_id is not a known patient — import patients first")]
    again = invoke(*options, "import", "contacts", str(tmp_path / "contacts.csv"))
    assert again.stdout.startswith("contacts.csv: 2 rows, 0 new, 0 updated, 1 unchanged")
