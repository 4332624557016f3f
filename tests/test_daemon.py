"""`touchpoint daemon`: graceful stop, reloads, dry run, logs; health and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time
from sqlalchemy import event, func, select

from engine import clock
from engine.daemon import Daemon
from engine.health import HEARTBEAT_PREFIX
from engine.outcomes import Status
from engine.store.records import put_state
from engine.store.schema import touch_points
from engine.validate import check_definitions
from engine.webhooks.app import Services, create_app
from tests.support import (
    LIBRARY_SCHEDULES,
    LIBRARY_TEMPLATES,
    Clinic,
    daemon_config,
    patient,
    write_csv,
)

ENGINE = [sys.executable, "-m", "engine"]


@pytest.fixture
def practice(sqlite_url: str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder with its own schedules and templates, patients due now, and the env."""
    daemon_config(tmp_path)
    for folder, source in (("schedules", LIBRARY_SCHEDULES),
                           ("message_templates", LIBRARY_TEMPLATES)):
        subprocess.run(["cp", "-r", str(source), str(tmp_path / folder)], check=True)
    env = {**os.environ, "TOUCHPOINT_DATABASE_URL": sqlite_url, "TOUCHPOINT_TICK": "1s",
           "TOUCHPOINT_FAKE_OUTBOX": str(tmp_path / "outbox.jsonl")}
    people = [patient(f"P{i}", phone=f"+1312555{i:04d}", email="") for i in range(30)]
    write_csv(tmp_path / "patients.csv", people, people[0].keys())
    subprocess.run([*ENGINE, "import", "patients", "patients.csv"], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=60)
    return tmp_path, env


def start(folder: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = folder / f"daemon-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        process = subprocess.Popen([*ENGINE, "daemon", *args], cwd=folder, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    return process, log


def wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def sent_lines(folder: Path) -> list[dict[str, str]]:
    outbox = folder / "outbox.jsonl"
    return [json.loads(line) for line in outbox.read_text().splitlines()] \
        if outbox.exists() else []


@pytest.mark.slow
def test_sigterm_finishes_the_message_in_flight_and_exits_0(
        practice: tuple[Path, dict[str, str]], sqlite_url: str) -> None:
    folder, env = practice
    daemon, log = start(folder, {**env, "TOUCHPOINT_FAKE_LATENCY": "300ms"})
    wait_for(lambda: len(sent_lines(folder)) >= 2)
    daemon.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert daemon.wait(timeout=10) == 0
    assert time.monotonic() - stopped_at < 3  # "within a few seconds"
    (folder / "check").mkdir()
    clinic = Clinic(sqlite_url, folder / "check")
    rows = clinic.touch_points(journey="welcome", step="welcome")
    clinic.close()
    statuses = {tp.status for tp in rows}
    assert Status.SENDING not in statuses  # the one in flight was recorded
    sent = [tp for tp in rows if tp.status == Status.SENT]
    assert sorted(tp.id for tp in sent) == sorted(int(m["touch_point_id"])
                                                  for m in sent_lines(folder))
    assert all(tp.claimed_by is None for tp in rows if tp.status == Status.PLANNED)
    assert len(sent) < len(rows)  # it really stopped early
    assert "daemon stopped" in log.read_text()


@pytest.mark.slow
def test_a_second_signal_exits_at_once(practice: tuple[Path, dict[str, str]]) -> None:
    folder, env = practice
    daemon, log = start(folder, {**env, "TOUCHPOINT_FAKE_LATENCY": "5s"})
    # its signal handlers are in place once it says it started (a signal before that
    # is Python's default: a plain SIGTERM exit, which says nothing about the daemon);
    # its first tick starts then, with welcome texts due: in a 5 s send a second later
    wait_for(lambda: "daemon started" in log.read_text())
    time.sleep(1)
    daemon.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=3) == 128 + signal.SIGTERM


@pytest.mark.slow
def test_sighup_and_file_changes_reload_and_a_broken_edit_keeps_the_last_good(
        practice: tuple[Path, dict[str, str]]) -> None:
    folder, env = practice
    daemon, log = start(folder, env)
    try:
        wait_for(lambda: "daemon started" in log.read_text()
                 and "for edits" in log.read_text())  # the watcher is in place
        template = folder / "message_templates" / "welcome" / "welcome.sms.j2"
        template.write_text(template.read_text().replace("Welcome to", "A warm welcome to"))
        wait_for(lambda: "files changed: reloaded" in log.read_text())
        schedule = folder / "schedules" / "welcome.yaml"
        good = schedule.read_text()
        schedule.write_text(good.replace("trigger: patient.created", "trigger: patient.creatd"))
        # (a write may be seen half-done first — an empty file — and rejected as such)
        wait_for(lambda: "the new definitions are invalid" in log.read_text()
                 and "did you mean 'patient.created'?" in log.read_text())
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: the new definitions are invalid" in log.read_text())
        assert daemon.poll() is None  # still running, on the last good definitions
        ticks = log.read_text().count("daemon started")
        assert ticks == 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0


@pytest.mark.slow
def test_a_dry_run_daemon_prints_each_message_once_and_records_nothing(
        practice: tuple[Path, dict[str, str]], sqlite_url: str) -> None:
    folder, env = practice
    daemon, log = start(folder, env, "--dry-run")
    try:
        wait_for(lambda: log.read_text().count("daemon started") == 1
                 and log.read_text().count("── sms") >= 30, timeout=30)
        time.sleep(2.5)  # a few more ticks re-plan the same messages
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
    text = log.read_text()
    assert text.count("── sms") == 30  # once each, however many ticks
    assert sent_lines(folder) == []
    (folder / "check").mkdir()
    clinic = Clinic(sqlite_url, folder / "check")
    assert clinic.touch_points() == []  # nothing kept
    clinic.close()


@pytest.mark.slow
def test_json_logs_are_one_object_a_line_with_phone_numbers_masked(
        practice: tuple[Path, dict[str, str]]) -> None:
    folder, env = practice
    daemon, log = start(folder, env, "--log-format", "json", "--no-watch")
    try:
        wait_for(lambda: '"event": "tick"' in log.read_text())
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=10)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert {"ts", "level", "logger", "msg"} <= set(lines[0])
    assert "+13125550001" not in log.read_text()


# --------------------------------------------------------------------------- in process


def test_an_idle_tick_costs_a_handful_of_queries(sqlite_url: str, tmp_path: Path) -> None:
    clinic = Clinic(sqlite_url, tmp_path)
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.tick()  # the first tick also records the definitions it applied
        statements: list[str] = []
        event.listen(clinic.db.engine, "before_cursor_execute",
                     lambda *args: statements.append(args[2]))
        clinic.tick()
    selects = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "UPDATE"))]
    assert len(selects) <= 6, selects
    clinic.close()


def test_healthz_reports_the_last_tick_and_backlog_and_metrics_count_sends(
        database_url: str, tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path)
    client = TestClient(create_app(Services(clinic.settings, clinic.db, clinic.definitions,
                                            {})))
    with freeze_time("2026-11-02T15:00:00Z") as frozen:
        answer = client.get("/healthz")
        assert answer.status_code == 503  # nothing would send: no daemon has ever ticked
        assert answer.json()["daemon"] == "never ticked"
        clinic.patients(patient("P1"), patient("P2", sms_consent="no", email=""))
        daemon = Daemon(clinic.settings, clinic.db, clinic.definitions,
                        {"sms": clinic.sms, "email": clinic.email},
                        lambda: check_definitions(clinic.settings, clock.now()), watch=False)
        daemon.tick()
        health = client.get("/healthz").json()
        assert health == {"ok": True, "database": "ok", "daemon": "ok",
                          "last_tick": "2026-11-02T15:00:00Z", "workers": 1, "backlog": 0,
                          "set_aside": 0}
        metrics = client.get("/metrics").text
        assert 'touchpoint_sent_total{channel="sms",journey="welcome"} 1.0' in metrics
        assert 'touchpoint_skipped_total{journey="welcome",reason="no_consent"} 1.0' in metrics
        assert "touchpoint_tick_duration_seconds{worker=" in metrics
        frozen.tick(timedelta(minutes=30))  # the daemon went away; work piled up
        with clinic.db.transaction() as conn:
            planned = conn.execute(select(func.count()).select_from(touch_points)
                                   .where(touch_points.c.status == Status.PLANNED)).scalar()
        answer = client.get("/healthz")
        assert answer.status_code == 503
        assert answer.json()["daemon"] == "stale"
        assert answer.json()["workers"] == 0  # the one that ticked is no longer live
        assert answer.json()["backlog"] == planned  # the what-to-expect emails, overdue
    clinic.close()


def test_healthz_workers_counts_only_the_live_ones(database_url: str, tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path)
    client = TestClient(create_app(Services(clinic.settings, clinic.db, clinic.definitions,
                                            {})))
    now = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
    allowed = clinic.settings.daemon.tick * 4 + timedelta(minutes=1)
    with clinic.db.transaction() as conn:
        for worker, ago in (("a", timedelta(seconds=5)), ("b", allowed),
                            ("c", allowed + timedelta(seconds=1)), ("d", timedelta(hours=20))):
            put_state(conn, HEARTBEAT_PREFIX + worker,
                      {"last_tick": (now - ago).isoformat()}, now - ago)
    with freeze_time(now):
        answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json()["workers"] == 2  # a and b; c and d stopped ticking
    assert answer.json()["last_tick"] == "2026-11-02T14:59:55Z"
    clinic.close()
