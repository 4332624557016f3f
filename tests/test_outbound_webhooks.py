"""Outbound webhooks (engine/outbound_webhooks/, `touchpoint webhooks`), on SQLite and
PostgreSQL, delivered to a local HTTP receiver on 127.0.0.1 that checks every request
with the ``standardwebhooks`` library's own ``Webhook.verify``.

The receiver's clock is the engine's: when a test pins ``engine.clock``, it verifies
under freezegun at that instant (the library checks the timestamp against its now).
Events are triggered for real: texts through the Twilio webhook app, status callbacks,
the dispatcher, cases opened by the engine and resolved with the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from freezegun import freeze_time
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from engine import cases, clock
from engine.errors import PermanentChannelError
from engine.outbound_webhooks import EVENT_TYPES, add_endpoint, emit
from engine.outbound_webhooks.delivery import (
    Deliverer,
    DeliveryRetryPolicy,
    claim_due,
)
from engine.store.database import Database, open_database
from engine.store.records import add_opt_out
from engine.store.schema import (
    audit_log,
    inbound_messages,
    patients,
    recovery_cases,
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_messages,
)
from tests.support import (
    LIBRARY_SCHEDULES,
    LIBRARY_TEMPLATES,
    daemon_config,
    patient,
    write_csv,
)
from tests.test_webhooks import MONDAY_9AM, NUMBER, Practice


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    payload: Any  # what Webhook.verify returned; None if it refused the request
    error: str | None
    at: float  # time.monotonic() when it arrived


class Receiver:
    """A practice system's endpoint: verifies each request, answers as scripted."""

    def __init__(self) -> None:
        self.secret = ""
        self.answers: deque[int] = deque()  # status codes to answer, in turn; then 200
        self.hang = 0.0  # seconds to wait before answering
        self.received: list[Received] = []
        self.lock = threading.Lock()
        rig = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                payload, error = rig.verify(body, headers)
                with rig.lock:
                    rig.received.append(Received(headers, body, payload, error, arrived))
                    code = 400 if error else rig.answers.popleft() if rig.answers else 200
                if rig.hang:
                    time.sleep(rig.hang)
                try:
                    self.send_response(code)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/touchpoint-events"

    def verify(self, body: bytes, headers: dict[str, str]) -> tuple[Any, str | None]:
        pinned = clock.pinned()
        try:
            if pinned is None:
                return Webhook(self.secret).verify(body, headers), None
            with freeze_time(pinned):
                return Webhook(self.secret).verify(body, headers), None
        except WebhookVerificationError as exc:
            return None, str(exc)

    def types(self) -> list[str]:
        return [r.payload["type"] for r in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rig = Receiver()
    yield rig
    rig.close()


@pytest.fixture
def practice(database_url: str, tmp_path: Path) -> Iterator[Practice]:
    rig = Practice(database_url, tmp_path)
    yield rig
    rig.close()


def add(practice: Practice, receiver: Receiver, events: str) -> int:
    """`touchpoint webhooks add` for the receiver; it keeps the secret printed."""
    result = cli(practice, "webhooks", "add", receiver.url, "--events", events, "--json")
    assert result.exit_code == 0, result.output
    endpoint = json.loads(result.stdout)
    assert endpoint["secret"].startswith("whsec_")
    receiver.secret = endpoint["secret"]
    return int(endpoint["id"])


def cli(practice: Practice, *args: str) -> Result:
    """A command at the test's clock, which stays pinned after it (the CLI lets go)."""
    pinned = clock.pinned()
    result = practice.cli(*args)
    clock.set_now(pinned)
    return result


def rows(db: Database, table: Any) -> list[Any]:
    with db.transaction() as conn:
        return list(conn.execute(select(table).order_by(*table.primary_key.columns)))


def deliver(practice: Practice, **kwargs: Any) -> None:
    deliverer = Deliverer(practice.clinic.db, timeout=kwargs.pop("timeout", 5.0), **kwargs)
    try:
        deliverer.run()
    finally:
        deliverer.close()


# --------------------------------------------------------------------------- the CLI


def test_add_list_remove_are_validated_audited_and_never_show_the_secret_again(
        practice: Practice, receiver: Receiver) -> None:
    practice.at(MONDAY_9AM)
    bad = cli(practice, "webhooks", "add", receiver.url, "--events",
                       "appointment.confirmed,appointment.cancelled")
    assert bad.exit_code == 1
    assert "'appointment.cancelled' is not an event type" in bad.output
    assert "Traceback" not in bad.output
    ftp = cli(practice, "webhooks", "add", "ftp://emr.example/x", "--events", "case.opened")
    assert ftp.exit_code == 1
    assert "is not an http(s) URL" in ftp.output

    added = cli(practice, "webhooks", "add", receiver.url, "--events",
                         "case.opened, case.resolved")
    assert added.exit_code == 0, added.output
    assert "warning: the URL is plain http" in added.output  # (stderr, mixed in here)
    assert "endpoint 1: " + receiver.url in added.stdout
    secret = added.stdout.split("signing secret (shown once; keep it with the receiver): ")[1]
    assert secret.strip().startswith("whsec_")

    listed = cli(practice, "webhooks", "list", "--json")
    assert json.loads(listed.stdout) == [{
        "id": 1, "url": receiver.url, "events": ["case.opened", "case.resolved"],
        "enabled": True, "disabled_reason": None, "created_at": "2026-11-02T15:00:00+00:00",
        "pending": 0}]
    assert "whsec_" not in listed.stdout
    assert "whsec_" not in cli(practice, "webhooks", "list").stdout

    removed = cli(practice, "webhooks", "remove", "1")
    assert removed.exit_code == 0, removed.output
    assert cli(practice, "webhooks", "list", "--json").stdout.strip() == "[]"
    again = cli(practice, "webhooks", "remove", "1")
    assert again.exit_code == 1
    assert "there is no webhook endpoint 1" in again.output
    actions = [(r.action, r.target, r.detail) for r in rows(practice.clinic.db, audit_log)]
    assert actions == [
        ("webhook.add", "webhook-endpoint:1",
         {"url": receiver.url, "events": ["case.opened", "case.resolved"]}),
        ("webhook.remove", "webhook-endpoint:1", {"url": receiver.url, "cancelled": 0})]
    assert all(r.actor.startswith("cli:") for r in rows(practice.clinic.db, audit_log))


# --------------------------------------------------------------------------- the events


def test_each_event_type_is_sent_from_its_real_trigger_signed_and_minimum_necessary(
        practice: Practice, receiver: Receiver) -> None:
    add(practice, receiver, ",".join(EVENT_TYPES))
    clinic = practice.clinic
    reminder = practice.reminded()  # P1's visit on Wed, reminded by text Mon 10:00 CST
    practice.at("2026-11-02T10:05:00-06:00")
    assert practice.status(reminder.id, "delivered",
                           reminder.provider_message_id or "SM1").status_code == 204
    assert practice.text_in("C", "SMc").status_code == 200
    assert practice.text_in("R", "SMr").status_code == 200
    assert practice.text_in("STOP", "SMstop").status_code == 200

    # P2's welcome fails for good on both channels: the dispatcher fails it, the next
    # tick opens a recovery case, staff resolve it
    clinic.sms.fail_when(lambda m: PermanentChannelError("invalid number", provider="fake"))
    clinic.email.fail_when(lambda m: PermanentChannelError("bad mailbox", provider="fake"))
    clinic.patients(patient("P2", phone="(312) 555-0101", first_name="Luz", last_name="Ortiz"))
    clinic.tick()
    clinic.tick()
    [case] = rows(clinic.db, recovery_cases)
    resolved = cli(practice, "case", str(case.id), "resolve", "--note", "called her")
    assert resolved.exit_code == 0, resolved.output

    assert rows(clinic.db, webhook_attempts) == []  # nothing goes out before delivery runs
    deliver(practice)
    assert [r.error for r in receiver.received] == [None] * len(receiver.received)
    # (slot.claimed comes from a yes to a waitlist offer: tests/test_waitlist.py)
    assert set(receiver.types()) == set(EVENT_TYPES) - {"slot.claimed"}
    by_type: dict[str, list[Any]] = {}
    for r in receiver.received:
        by_type.setdefault(r.payload["type"], []).append(r.payload)
    inbound = {m.provider_message_id: m.id for m in practice.rows(inbound_messages)}
    assert by_type["touch_point.delivered"] == [{
        "type": "touch_point.delivered", "timestamp": "2026-11-02T16:05:00Z",
        "data": {"patient_id": "P1", "appointment_id": "A1", "touch_point_id": reminder.id,
                 "journey": "pre-visit", "step": "three-days-before", "channel": "sms",
                 "recipient": "patient"}}]
    assert [p["data"] for p in by_type["appointment.confirmed"]] == [{
        "patient_id": "P1", "appointment_id": "A1", "touch_point_id": reminder.id,
        "channel": "sms", "inbound_message_id": inbound["SMc"]}]
    assert [p["data"] for p in by_type["reschedule.requested"]] == [{
        "patient_id": "P1", "appointment_id": "A1", "touch_point_id": reminder.id,
        "channel": "sms", "inbound_message_id": inbound["SMr"]}]
    assert [p["data"] for p in by_type["patient.opted_out"]] == [{
        "patient_id": "P1", "channel": "sms", "purpose": "all", "source": "sms reply"}]
    failed = [p["data"] for p in by_type["touch_point.failed"]]
    assert ("P2", "welcome", "provider_error") in {
        (d["patient_id"], d["journey"], d["reason"]) for d in failed}  # (and staff's alert)
    assert [(p["data"]["case_id"], p["data"]["patient_id"], p["data"]["cause"])
            for p in by_type["case.opened"]] == [(case.id, "P2", "failed_delivery")]
    assert [p["data"] for p in by_type["case.resolved"]] == [{
        "patient_id": "P2", "appointment_id": None, "case_id": case.id,
        "cause": "failed_delivery"}]
    for r in receiver.received:  # ids and codes only: no names, numbers, emails or text
        text = r.body.decode()
        for private in ("Ana", "Reyes", "Luz", "Ortiz", "555", "@", "called her", "STOP"):
            assert private not in text, (private, text)
        assert r.headers["webhook-id"].startswith("msg_")
        assert r.headers["webhook-signature"].startswith("v1,")
        assert r.headers["content-type"] == "application/json"
        assert int(r.headers["webhook-timestamp"]) == int(clock.now().timestamp())
    assert len({r.headers["webhook-id"] for r in receiver.received}) == len(receiver.received)
    deliver(practice)  # each once
    assert len(receiver.received) == len(by_type["touch_point.failed"]) + 6


def test_only_subscribed_types_are_written_and_sent(practice: Practice,
                                                   receiver: Receiver) -> None:
    add(practice, receiver, "case.opened")
    practice.reminded()
    practice.at("2026-11-02T10:30:00-06:00")
    assert practice.text_in("C", "SMc").status_code == 200
    assert practice.text_in("STOP", "SMstop").status_code == 200
    assert rows(practice.clinic.db, webhook_messages) == []  # nothing written at all
    deliver(practice)
    assert receiver.received == []


def test_opt_outs_from_every_source_go_through_one_hook(practice: Practice,
                                                        receiver: Receiver) -> None:
    add(practice, receiver, "patient.opted_out,touch_point.failed")
    [welcome] = practice.welcomed()
    practice.status(welcome.id, "undelivered", "SM21610", error="21610")  # Twilio 21610
    deliver(practice)
    opted, failed = receiver.received
    assert opted.payload["type"] == "patient.opted_out"  # (the opt-out is recorded first)
    assert failed.payload["data"] == {
        "patient_id": "P1", "appointment_id": None, "touch_point_id": welcome.id,
        "journey": "welcome", "step": "welcome", "channel": "sms", "recipient": "patient",
        "reason": "opted_out", "error_code": "21610"}
    receiver.received.remove(failed)
    with practice.clinic.db.transaction() as conn:  # an unsubscribe link, an unknown number
        add_opt_out(conn, "email", "P1@Example.com", "marketing", "unsubscribe link",
                    "clicked", clock.now())
        add_opt_out(conn, "sms", "+13125559999", "all", "sms reply", "STOP", clock.now())
        add_opt_out(conn, "sms", NUMBER, "all", "landline", "30006", clock.now())  # not asked
    deliver(practice)
    assert [(p.payload["data"]["patient_id"], p.payload["data"]["channel"],
             p.payload["data"]["purpose"], p.payload["data"]["source"])
            for p in receiver.received] == [("P1", "sms", "all", "twilio"),
                                            ("P1", "email", "marketing", "unsubscribe link")]


def test_a_change_that_rolls_back_sends_nothing(practice: Practice, receiver: Receiver) -> None:
    add(practice, receiver, "patient.opted_out,case.opened")
    practice.welcomed()

    def change() -> None:
        with practice.clinic.db.transaction() as conn:
            add_opt_out(conn, "sms", NUMBER, "all", "sms reply", "STOP", clock.now())
            cases.open_case(conn, practice.clinic.settings, patient_id=1, cause="complaint",
                            key="complaint:test", detail="test", now=clock.now())
            assert len(list(conn.execute(select(webhook_messages)))) == 2  # written with it
            raise RuntimeError("the change fails after the events were written")

    with pytest.raises(RuntimeError):
        change()
    assert rows(practice.clinic.db, webhook_messages) == []
    assert rows(practice.clinic.db, webhook_deliveries) == []
    deliver(practice)
    assert receiver.received == []


# --------------------------------------------------------------------------- delivery


def test_a_500_then_a_200_is_retried_on_schedule_and_the_log_shows_both(
        practice: Practice, receiver: Receiver) -> None:
    endpoint = add(practice, receiver, "case.opened")
    practice.welcomed()
    receiver.answers.extend([500])
    with practice.clinic.db.transaction() as conn:
        cases.open_case(conn, practice.clinic.settings, patient_id=1, cause="complaint",
                        key="complaint:1", detail="texted a complaint", now=clock.now())
    start = clock.now()
    deliver(practice)
    practice.at(start + timedelta(seconds=4))
    deliver(practice)  # not due yet
    assert len(receiver.received) == 1
    practice.at(start + timedelta(seconds=5))
    deliver(practice)
    first, second = receiver.received
    assert first.error is None and second.error is None  # both verify
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # one message
    assert int(second.headers["webhook-timestamp"]) == int(first.headers["webhook-timestamp"]) + 5
    assert first.body == second.body

    log = cli(practice, "webhooks", "log", "--endpoint", str(endpoint), "--json")
    assert log.exit_code == 0, log.output
    assert [(a["attempt"], a["outcome"], a["status_code"], a["next_attempt_at"],
             a["delivery_status"]) for a in json.loads(log.stdout)] == [
        (1, "retry", 500, "2026-11-02T15:00:05+00:00", "delivered"),
        (2, "delivered", 200, None, "delivered")]
    text = cli(practice, "webhooks", "log").stdout
    assert "attempt 1: retry (HTTP 500" in text
    assert "next attempt 2026-11-02T15:00:05+00:00" in text
    assert "attempt 2: delivered (HTTP 200" in text
    [delivery] = rows(practice.clinic.db, webhook_deliveries)
    assert (delivery.status, delivery.attempts) == ("delivered", 2)


def test_a_day_of_failures_ends_failed_after_the_last_attempt_at_24_h(
        practice: Practice, receiver: Receiver) -> None:
    add(practice, receiver, "case.opened")
    practice.welcomed()
    receiver.answers.extend([503] * 20)
    with practice.clinic.db.transaction() as conn:
        cases.open_case(conn, practice.clinic.settings, patient_id=1, cause="complaint",
                        key="complaint:1", detail="texted a complaint", now=clock.now())
    start = clock.now()
    tried_at: list[timedelta] = []
    for _ in range(20):
        before = len(receiver.received)
        deliver(practice)
        if len(receiver.received) > before:
            tried_at.append(clock.now() - start)
        [delivery] = rows(practice.clinic.db, webhook_deliveries)
        if delivery.next_attempt_at is None:
            break
        practice.at(delivery.next_attempt_at)
    assert tried_at == DeliveryRetryPolicy().schedule() == [
        timedelta(0), timedelta(seconds=5), timedelta(minutes=5, seconds=5),
        timedelta(minutes=35, seconds=5), timedelta(hours=2, minutes=35, seconds=5),
        timedelta(hours=7, minutes=35, seconds=5), timedelta(hours=17, minutes=35, seconds=5),
        timedelta(hours=24)]
    [delivery] = rows(practice.clinic.db, webhook_deliveries)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 8, 503)
    assert "gave up: failed for 24 h (8 attempts)" in delivery.last_error
    log = json.loads(cli(practice, "webhooks", "log", "--json").stdout)
    assert [a["outcome"] for a in log] == ["retry"] * 7 + ["failed"]
    practice.at(start + timedelta(days=3))
    deliver(practice)
    assert len(receiver.received) == 8


def test_410_gone_disables_the_endpoint_and_cancels_what_waits(
        practice: Practice, receiver: Receiver) -> None:
    endpoint = add(practice, receiver, "case.opened")
    practice.welcomed()
    receiver.answers.extend([410])
    with practice.clinic.db.transaction() as conn:
        for n in range(3):
            cases.open_case(conn, practice.clinic.settings, patient_id=1, cause="no_show",
                            key=f"no_show:{n}", detail="missed", now=clock.now())
    deliver(practice)
    assert len(receiver.received) == 1
    statuses = [d.status for d in rows(practice.clinic.db, webhook_deliveries)]
    assert statuses == ["failed", "cancelled", "cancelled"]
    [row] = rows(practice.clinic.db, webhook_endpoints)
    assert (row.enabled, row.disabled_reason) == (False, "410 Gone from the endpoint")
    assert "DISABLED (410 Gone from the endpoint)" in cli(practice, "webhooks", "list").stdout
    with practice.clinic.db.transaction() as conn:  # nothing more is written for it
        cases.open_case(conn, practice.clinic.settings, patient_id=1, cause="no_show",
                        key="no_show:9", detail="missed", now=clock.now())
    assert len(rows(practice.clinic.db, webhook_deliveries)) == 3
    assert cli(practice, "webhooks", "enable", str(endpoint)).exit_code == 0
    with practice.clinic.db.transaction() as conn:
        cases.open_case(conn, practice.clinic.settings, patient_id=1, cause="late_cancellation",
                        key="late:1", detail="late", now=clock.now())
    deliver(practice)
    assert [r.payload["data"]["cause"] for r in receiver.received[1:]] == ["late_cancellation"]


def test_a_dead_endpoint_costs_one_timeout_a_run_and_others_still_get_theirs(
        practice: Practice, receiver: Receiver) -> None:
    add(practice, receiver, "case.opened")
    dead = Receiver()
    dead.hang = 3.0
    try:
        result = cli(practice, "webhooks", "add", dead.url, "--events", "case.opened", "--json")
        assert result.exit_code == 0, result.output
        dead.secret = json.loads(result.stdout)["secret"]
        practice.welcomed()
        with practice.clinic.db.transaction() as conn:
            for n in range(3):
                cases.open_case(conn, practice.clinic.settings, patient_id=1, cause="no_show",
                                key=f"no_show:{n}", detail="missed", now=clock.now())
        started = time.monotonic()
        deliver(practice, timeout=1.0)
        assert time.monotonic() - started < 2.9  # one timeout, not three
        assert len(receiver.received) == 3
        assert len(dead.received) == 1
        tried = [d for d in rows(practice.clinic.db, webhook_deliveries) if d.endpoint_id == 2]
        assert sorted(d.attempts for d in tried) == [0, 0, 1]
        assert {d.status for d in tried} == {"pending"}
        [attempt] = [a for a in rows(practice.clinic.db, webhook_attempts) if a.status_code is None]
        assert (attempt.outcome, attempt.error) == ("retry", "timed out after 1 s")
    finally:
        dead.close()


def test_a_delivery_is_claimed_by_one_worker_at_a_time(database_url: str,
                                                       practice: Practice) -> None:
    practice.at(MONDAY_9AM)
    other = open_database(database_url)
    try:
        with practice.clinic.db.transaction() as conn:
            endpoint = add_endpoint(conn, "https://emr.example/hook", ["case.opened"],
                                    clock.now())
            for n in range(5):
                emit(conn, "case.opened", clock.now(), {"case_id": n}, endpoints=[endpoint.id])
        lease = timedelta(minutes=5)
        racing: list[Any] = []
        if database_url.startswith("postgresql"):  # B claims while A's claim is uncommitted
            with practice.clinic.db.transaction() as a, other.transaction() as b:
                mine = claim_due(a, "worker-a", clock.now(), 3, lease)
                racing = claim_due(b, "worker-b", clock.now(), 10, lease)
                assert len(racing) == 2  # SKIP LOCKED: the other two, without waiting
        else:  # SQLite: one writer at a time
            with practice.clinic.db.transaction() as a:
                mine = claim_due(a, "worker-a", clock.now(), 3, lease)
        with other.transaction() as b:
            theirs = racing + claim_due(b, "worker-b", clock.now(), 10, lease)
        assert len(mine) == 3
        assert {d.id for d in theirs} & {d.id for d in mine} == set()
        assert len(mine) + len(theirs) == 5
        practice.at(clock.now() + lease + timedelta(seconds=1))  # a vanished worker's lease
        with other.transaction() as b:
            assert len(claim_due(b, "worker-b", clock.now(), 10, lease)) == 5
    finally:
        other.dispose()


def test_run_once_delivers_after_sending_and_webhooks_test_pings(
        practice: Practice, receiver: Receiver) -> None:
    endpoint = add(practice, receiver, "case.opened")
    practice.at(MONDAY_9AM)
    patient_id = _patient(practice)
    with practice.clinic.db.transaction() as conn:
        cases.open_case(conn, practice.clinic.settings, patient_id=patient_id,
                        cause="complaint", key="complaint:1", detail="x", now=clock.now())
    result = cli(practice, "run", "--once")
    assert result.exit_code == 0, result.output
    assert "Webhooks: 1 delivered, 0 to retry, 0 failed." in result.stdout
    assert receiver.types() == ["case.opened"]
    ping = cli(practice, "webhooks", "test", str(endpoint))
    assert ping.exit_code == 0, ping.output
    assert "delivered: HTTP 200" in ping.stdout
    assert receiver.types() == ["case.opened", "webhook.test"]
    assert receiver.received[-1].payload["data"] == {"endpoint_id": endpoint}
    receiver.answers.append(500)
    failing = cli(practice, "webhooks", "test", str(endpoint))
    assert failing.exit_code == 1
    assert "not delivered: HTTP 500: ok; retried at 2026-11-02T15:00:05+00:00" in failing.output


def _patient(practice: Practice) -> int:
    practice.clinic.patients(patient("P1"), baseline=True)
    with practice.clinic.db.transaction() as conn:
        return int(conn.execute(select(patients.c.id)).scalar_one())


# --------------------------------------------------------------------------- the daemon


ENGINE = [sys.executable, "-m", "engine"]


@pytest.mark.slow
def test_a_hanging_endpoint_never_delays_the_texts_the_daemon_sends(
        sqlite_url: str, tmp_path: Path, receiver: Receiver) -> None:
    """The endpoint hangs past the 10 s timeout; a text that falls due meanwhile goes on
    time (the webhook job has its own thread)."""
    daemon_config(tmp_path)
    env = {**os.environ, "TOUCHPOINT_DATABASE_URL": sqlite_url, "TOUCHPOINT_TICK": "1s",
           "TOUCHPOINT_FAKE_OUTBOX": str(tmp_path / "outbox.jsonl"),
           "TOUCHPOINT_SCHEDULES": str(LIBRARY_SCHEDULES),
           "TOUCHPOINT_TEMPLATES": str(LIBRARY_TEMPLATES)}

    def engine(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ENGINE, *args], cwd=tmp_path, env=env, check=True,
                              capture_output=True, text=True, timeout=60)

    added = json.loads(engine("webhooks", "add", receiver.url, "--events",
                              "patient.opted_out", "--json").stdout)
    receiver.secret = added["secret"]
    receiver.hang = 15.0
    db = open_database(sqlite_url)
    try:
        with db.transaction() as conn:  # P0 is on file and opts out: an event waits
            engine_now = clock.now()
            conn.execute(patients.insert()
                         .values(external_id="P0", phone="+13125550000", row_hash="x",
                                 created_at=engine_now, updated_at=engine_now))
            add_opt_out(conn, "sms", "+13125550000", "all", "sms reply", "STOP", engine_now)
    finally:
        db.dispose()
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        daemon = subprocess.Popen([*ENGINE, "daemon", "--no-watch"], cwd=tmp_path, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert receiver.received, log.read_text()
        hung_at = receiver.received[0].at  # the webhook thread now waits for 10 s
        people = [patient("P1", phone="(312) 555-0101", email="")]
        write_csv(tmp_path / "patients.csv", people, people[0].keys())
        engine("import", "patients", "patients.csv")
        outbox = tmp_path / "outbox.jsonl"
        while not outbox.exists() and time.monotonic() < hung_at + 9:
            time.sleep(0.1)
        assert outbox.exists(), log.read_text()  # the welcome went while the hook hung
        assert time.monotonic() < hung_at + 9.5
        [sent] = [json.loads(line) for line in outbox.read_text().splitlines()]
        assert sent["journey"] == "welcome"
        assert receiver.received[0].error is None
        assert receiver.received[0].payload["data"]["patient_id"] == "P0"
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


# --------------------------------------------------------------------------- the docs


DOC = Path(__file__).resolve().parent.parent / "docs" / "webhooks-out.md"


def test_the_worked_example_in_the_docs_verifies_and_every_type_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    request = text.split("```http\n", 1)[1].split("```", 1)[0]
    head, body = request.split("\n\n", 1)
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    secret = text.split('SECRET = "', 1)[1].split('"', 1)[0]
    stamp = int(headers["webhook-timestamp"])
    with freeze_time(datetime.fromtimestamp(stamp, UTC)):
        event = Webhook(secret).verify(body.strip().encode(), headers)
    assert event["type"] == "appointment.confirmed"
    assert body.strip() == json.dumps(event, separators=(",", ":"))  # as Touchpoint writes it
    for event_type in (*EVENT_TYPES, "webhook.test"):
        assert f"| `{event_type}` |" in text
    schedule = DeliveryRetryPolicy().schedule()
    assert f"| {len(schedule)} | 24 h — the last attempt |" in text
