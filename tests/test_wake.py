"""Waking the daemon (engine/wake.py): an event committed with ``wake.notify`` is planned
at once, not at the next ``daemon.tick``. A daemon subprocess runs with a 10-minute tick
on the real clock (daytime in the practice), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine import clock, wake
from engine.importer import sync_appointments, sync_patients
from engine.outcomes import Status
from engine.settings import load_settings
from engine.store.database import Database, make_engine, open_database
from tests.support import (
    LIBRARY_SCHEDULES,
    LIBRARY_TEMPLATES,
    Clinic,
    appointment,
    daemon_config,
    patient,
)

ENGINE = [sys.executable, "-m", "engine"]


def outbox(folder: Path) -> list[dict[str, str]]:
    path = folder / "outbox.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] \
        if path.exists() else []


def wait_for(condition, timeout: float = 30.0, step: float = 0.02) -> float:  # type: ignore[no-untyped-def]
    """Wait until ``condition()``; returns how long it took (seconds)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(step)
    return time.monotonic() - started


class Running:
    def __init__(self, folder: Path, database_url: str) -> None:
        self.folder = folder
        self.log = folder / "daemon.log"
        env = {**os.environ, "TOUCHPOINT_DATABASE_URL": database_url,
               "TOUCHPOINT_TICK": "10m", "TOUCHPOINT_FAKE_OUTBOX": str(folder / "outbox.jsonl"),
               "TOUCHPOINT_SCHEDULES": str(LIBRARY_SCHEDULES),
               "TOUCHPOINT_TEMPLATES": str(LIBRARY_TEMPLATES)}
        with self.log.open("w") as out:
            self.process = subprocess.Popen([*ENGINE, "daemon", "--no-watch"], cwd=folder,
                                            env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "listening for wakes" in self.text())
        except AssertionError:
            self.process.kill()
            self.process.wait()
            raise AssertionError(self.text()) from None
        settings = load_settings(folder / "touchpoint.toml", {"database.url": database_url})
        self.timezone = settings.require("practice.timezone")
        self.db: Database = open_database(database_url)

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=15) == 0, self.text()
        self.db.dispose()


@pytest.fixture
def daemon(database_url: str, tmp_path: Path) -> Iterator[Running]:
    daemon_config(tmp_path)
    running = Running(tmp_path, database_url)
    time.sleep(1.0)  # its first tick (at start) is over: the next is 10 minutes away
    yield running
    running.stop()


def commit_booking(daemon: Running, patient_id: str, start: datetime,
                   status: str = "booked", *, new_patient: bool = True) -> None:
    now = clock.now()
    with daemon.db.transaction() as conn:
        if new_patient:
            row = patient(patient_id, phone=f"+1312555{int(patient_id[1:]):04d}", email="")
            sync_patients(conn, [(2, row)], "api", region="US", now=now)
        sync_appointments(conn, [(2, appointment(f"A{patient_id}", patient_id,
                                                 start.isoformat(), status=status))],
                          "api", practice_tz=daemon.timezone, now=now)


@pytest.mark.slow
def test_a_booking_by_api_sends_its_immediate_message_within_2_seconds(
        daemon: Running) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    for number in (1, 2, 3):
        commit_booking(daemon, f"P{number}", start)
        committed = time.monotonic()
        wake.notify(daemon.db)
        wait_for(lambda n=number: any(m["to"] == f"+1312555{n:04d}" for m in outbox(
            daemon.folder)), timeout=10)
        took = time.monotonic() - committed
        assert took < 2.0, f"the welcome took {took:.2f} s"
    assert len(outbox(daemon.folder)) == 3
    assert "tick:" in daemon.text()


@pytest.mark.slow
def test_without_a_wake_the_booking_waits_for_the_tick(daemon: Running) -> None:
    commit_booking(daemon, "P7", datetime.now(UTC) + timedelta(days=3))
    time.sleep(2.5)
    assert outbox(daemon.folder) == []  # the 10-minute tick has not come
    wake.notify(daemon.db)
    wait_for(lambda: len(outbox(daemon.folder)) == 1, timeout=5)


@pytest.mark.slow
def test_a_cancellation_a_second_before_the_reminder_is_due_stops_it(
        daemon: Running) -> None:
    """P1's and P2's two-hours-before reminders fall due at T. P1's visit is cancelled
    (and the daemon woken) at T - 1 s; a wake at T (another booking) sends what is due:
    P2's reminder goes, P1's was cancelled by planning the cancellation at once."""
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=6)
    visit = due + timedelta(hours=2)
    for number in (1, 2):
        commit_booking(daemon, f"P{number}", visit)
    wake.notify(daemon.db)
    wait_for(lambda: len(outbox(daemon.folder)) == 2, timeout=5)  # the two welcomes
    (daemon.folder / "look").mkdir()
    clinic = Clinic(daemon.db.url, daemon.folder / "look")
    try:
        reminders = {p: clinic.one("pre-visit", "two-hours-before", patient=p)
                     for p in ("P1", "P2")}
        assert {tp.due_at for tp in reminders.values()} == {due}
        assert {tp.status for tp in reminders.values()} == {Status.PLANNED}

        wait_for(lambda: datetime.now(UTC) >= due - timedelta(seconds=1), step=0.005)
        commit_booking(daemon, "P1", visit, status="cancelled", new_patient=False)
        cancelled_at = time.monotonic()
        wake.notify(daemon.db)
        wait_for(lambda: clinic.one("pre-visit", "two-hours-before",
                                    patient="P1").status == Status.CANCELLED, timeout=5)
        assert time.monotonic() - cancelled_at < 1.0
        stopped = clinic.one("pre-visit", "two-hours-before", patient="P1")
        assert stopped.reason == "appointment_cancelled"
        assert clinic.history(stopped)[-1].source == "planner"  # planned, not at send time

        wait_for(lambda: datetime.now(UTC) >= due + timedelta(milliseconds=200), step=0.005)
        commit_booking(daemon, "P3", visit + timedelta(days=2))
        wake.notify(daemon.db)
        wait_for(lambda: clinic.one("pre-visit", "two-hours-before",
                                    patient="P2").status == Status.SENT, timeout=5)
        sent_to = {m["to"] for m in outbox(daemon.folder)}
        assert "+13125550002" in sent_to
        assert [m for m in outbox(daemon.folder)
                if int(m["touch_point_id"]) == stopped.id] == []
    finally:
        clinic.close()


# --------------------------------------------------------------------------- in process


def test_notify_never_raises_and_a_listener_hears_it(database_url: str,
                                                     tmp_path: Path) -> None:
    db = open_database(database_url)
    stopping = threading.Event()
    heard = threading.Event()
    listener = wake.Listener(db, heard.set, stopping)
    listener.start()
    try:
        assert listener.ready.wait(10)
        wake.notify(db)
        assert heard.wait(2)
        heard.clear()
        if db.dialect == "sqlite":  # the wake file removed: it comes back, and works
            path = wake.wake_file(db)
            assert path is not None and path.name == "touchpoint.db.wake"
            path.unlink()
            wait_for(lambda: path.exists() and listener.ready.is_set(), timeout=10)
            heard.clear()
            wake.notify(db)
            assert heard.wait(2)
    finally:
        stopping.set()
        assert listener.thread is not None
        listener.thread.join(5)
        db.dispose()
    gone = "sqlite:////nonexistent/dir/x.db"
    broken = Database(make_engine(gone), gone)
    wake.notify(broken)  # logs, never raises
    broken.dispose()
