"""Waking the daemon (engine/wake.py): an event committed with ``wake.notify`` is planned
at once, not at the next ``daemon.tick``. A daemon subprocess runs with a 10-minute tick
on the real clock (daytime in the practice), on SQLite and PostgreSQL; the last tests PUT
the events over real HTTP to the `serve` app (uvicorn on 127.0.0.1), as an EMR does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine import clock, wake
from engine.api import keys
from engine.importer import sync_appointments, sync_patients
from engine.outcomes import Status
from engine.settings import load_settings
from engine.store.database import Database, make_engine, open_database
from engine.webhooks.app import Services, create_app
from tests.browser import serving
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


# --------------------------------------------------------------------------- over HTTP


class OverHttp:
    """The `serve` app (uvicorn on 127.0.0.1) beside the daemon, on the same database: an
    API key, and PUTs over real HTTP."""

    def __init__(self, daemon: Running, url: str, clinic: Clinic, key: str) -> None:
        self.daemon = daemon
        self.url = url
        self.clinic = clinic
        self.key = key

    def put(self, path: str, body: dict[str, object]) -> float:
        """PUT ``body``; returns when the answer came (time.monotonic())."""
        request = urllib.request.Request(
            f"{self.url}/api/v1{path}", data=json.dumps(body).encode(), method="PUT",
            headers={"Authorization": f"Bearer {self.key}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status in (200, 201), answer.read()
        return time.monotonic()

    def book(self, number: int, start: datetime, status: str = "booked") -> float:
        if status == "booked":
            self.put(f"/patients/P{number}", {
                "first_name": f"Pat{number}", "last_name": "Lee",
                "phone": f"+1312555{number:04d}", "sms_consent": True})
        return self.put(f"/appointments/AP{number}", {
            "patient_id": f"P{number}", "start": start.isoformat(), "duration_minutes": 60,
            "status": status, "visit_type": "Follow-up"})


@pytest.fixture
def over_http(daemon: Running) -> Iterator[OverHttp]:
    (daemon.folder / "api").mkdir()
    clinic = Clinic(daemon.db.url, daemon.folder / "api")
    with clinic.db.transaction() as conn:
        key = keys.create(conn, "emr", keys.parse_scopes("write:records"),
                          datetime.now(UTC))
    app = create_app(Services(clinic.settings, clinic.db, clinic.definitions,
                              {"sms": clinic.sms, "email": clinic.email}))
    try:
        with serving(app) as url:
            yield OverHttp(daemon, url, clinic, key)
    finally:
        clinic.close()


@pytest.mark.slow
def test_a_booking_put_over_http_sends_its_immediate_message_within_2_seconds(
        over_http: OverHttp) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    for number in (1, 2):
        answered = over_http.book(number, start)
        wait_for(lambda n=number: any(m["to"] == f"+1312555{n:04d}" for m in outbox(
            over_http.daemon.folder)), timeout=10)
        took = time.monotonic() - answered
        assert took < 2.0, f"the welcome took {took:.2f} s after the PUT"
    assert len(outbox(over_http.daemon.folder)) == 2


@pytest.mark.slow
def test_a_cancellation_put_over_http_stops_a_reminder_due_a_second_later(
        over_http: OverHttp) -> None:
    """As the in-process test above, but the booking and the cancellation are PUTs to
    the API (which wakes the daemon): the cancellation, a second before P1's reminder is
    due, stops it; P2's, due at the same time, goes."""
    folder, clinic = over_http.daemon.folder, over_http.clinic
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=6)
    visit = due + timedelta(hours=2)
    for number in (1, 2):
        over_http.book(number, visit)
    wait_for(lambda: len(outbox(folder)) == 2, timeout=5)  # the two welcomes
    reminders = {p: clinic.one("pre-visit", "two-hours-before", patient=p)
                 for p in ("P1", "P2")}
    assert {tp.due_at for tp in reminders.values()} == {due}
    assert {tp.status for tp in reminders.values()} == {Status.PLANNED}

    wait_for(lambda: datetime.now(UTC) >= due - timedelta(seconds=1), step=0.005)
    answered = over_http.book(1, visit, status="cancelled")
    wait_for(lambda: clinic.one("pre-visit", "two-hours-before",
                                patient="P1").status == Status.CANCELLED, timeout=5)
    assert time.monotonic() - answered < 1.0
    stopped = clinic.one("pre-visit", "two-hours-before", patient="P1")
    assert stopped.reason == "appointment_cancelled"

    wait_for(lambda: datetime.now(UTC) >= due + timedelta(milliseconds=200), step=0.005)
    over_http.book(3, visit + timedelta(days=2))  # (a wake after the reminders fell due)
    wait_for(lambda: clinic.one("pre-visit", "two-hours-before",
                                patient="P2").status == Status.SENT, timeout=5)
    assert "+13125550002" in {m["to"] for m in outbox(folder)}
    assert [m for m in outbox(folder) if int(m["touch_point_id"]) == stopped.id] == []
