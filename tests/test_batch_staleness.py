"""Never stale, inside a batch too: a cancellation, a move or an opt-out committed while a
batch is being sent stops every message of it not yet handed to the provider
(engine/dispatcher.py, the conditional ``sending`` mark of engine/store/ledger.py).

The changes are committed from another connection (another engine), through the code
that makes them in production (the appointment import, an inbound STOP, Twilio's 21610
and SendGrid's unsubscribe events), while the fake provider is taking message N of a
batch of 500. On SQLite and PostgreSQL.

Practice timezone: America/Chicago (CST, UTC-6). Every visit is Thu 2026-11-05 10:00; its
three-days-before reminder is due Tue 2026-11-03 10:00 CST (16:00 UTC).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlalchemy import Connection, update

from engine import clock
from engine.cases import open_case, resolve
from engine.channels.base import OutboundMessage
from engine.definitions.journeys import Journey, Step
from engine.dispatcher import RECHECKS, Snapshot
from engine.errors import ChannelError
from engine.importer import APPOINTMENT_COLUMNS, import_appointments
from engine.outcomes import Status
from engine.replies import record_inbound
from engine.store.database import Database, open_database
from engine.store.ledger import Recheck, SendPath, TouchPoint, claim_due
from engine.store.records import (
    add_opt_out,
    append_events,
    load_appointments,
    patient_by_external_id,
)
from engine.store.schema import appointments, touch_points
from engine.webhooks import Kind, ProviderEvent
from engine.webhooks.record import record_event
from tests.support import Clinic, appointment, patient, write_csv

VISIT = "2026-11-05T10:00:00-06:00"
MOVED_TO = "2026-11-12T10:00:00-06:00"
PLANNING = "2026-11-02T14:00:00Z"
REMINDERS_DUE = "2026-11-02T16:00:00Z"
COUNT = 500

# Patients by index (the batch goes in this order). Each group's change is committed
# while the provider takes the message at the position given; every group comes later.
CANCELLED = range(300, 320)        # appointment cancelled (import), at message 100
MOVED = range(320, 340)            # appointment moved (import), at message 150
STOPPED = range(340, 360)          # STOP by text, no email consent, at message 200
STOPPED_HAS_EMAIL = range(360, 370)  # STOP by text, the reminder may go by email instead
CARRIER_21610 = range(370, 390)    # Twilio error 21610 reported, at message 250
EMAIL_ONLY = range(450, 500)       # texted STOP before: their reminder goes by email
UNSUBSCRIBED = range(460, 480)     # SendGrid unsubscribe (all), at message 300
MARKETING_ONLY = range(480, 490)   # a marketing-group unsubscribe: reminders still go


def number(i: int) -> str:
    return f"+1312200{i:04d}"


def email(i: int) -> str:
    return f"p{i:03d}@example.com"


def external(i: int) -> str:
    return f"P{i:03d}"


@dataclass
class Provider:
    """Both fake channels' messages in the order the provider took them, and at which
    message each change was committed (from another connection)."""

    handed: list[OutboundMessage] = field(default_factory=list)
    committed_at: dict[str, int] = field(default_factory=dict)
    changes: dict[int, tuple[str, Callable[[], None]]] = field(default_factory=dict)

    def rule(self, message: OutboundMessage) -> ChannelError | None:
        self.handed.append(message)
        due = self.changes.pop(len(self.handed), None)
        if due is not None:  # while the provider has message N: commit, then answer
            name, commit = due
            commit()
            self.committed_at[name] = len(self.handed)
        return None

    def next_batch(self, changes: dict[int, tuple[str, Callable[[], None]]]) -> None:
        self.handed, self.committed_at, self.changes = [], {}, changes

    def after(self, name: str) -> list[OutboundMessage]:
        """What the provider was handed after the change ``name`` was committed."""
        return self.handed[self.committed_at[name]:]


@pytest.fixture
def clinic(database_url: str, tmp_path: Path) -> Iterator[Clinic]:
    practice = Clinic(database_url, tmp_path)
    yield practice
    practice.close()


@pytest.fixture
def elsewhere(database_url: str) -> Iterator[Database]:
    """Another engine on the same database: another process, as far as the dispatcher
    can tell."""
    other = open_database(database_url)
    yield other
    other.dispose()


def book_500(clinic: Clinic) -> dict[int, int]:
    """500 patients with a visit each, planned; {patient index: reminder touch point id}."""
    rows = [patient(external(i), phone=number(i), email=email(i),
                    email_consent="no" if i in STOPPED or i in CARRIER_21610 else "yes")
            for i in range(COUNT)]
    with freeze_time(PLANNING):
        clinic.patients(*rows, baseline=True)
        with clinic.db.transaction() as conn:
            for i in EMAIL_ONLY:
                add_opt_out(conn, "sms", number(i), "all", "sms reply", "replied 'STOP'",
                            clock.now())
        clinic.appointments(*(appointment(f"A{i:03d}", external(i), VISIT)
                              for i in range(COUNT)))
        clinic.tick()
    reminders = {i: clinic.one("pre-visit", "three-days-before", patient=external(i)).id
                 for i in range(COUNT)}
    due = [tp.id for tp in clinic.touch_points(status=Status.PLANNED)
           if tp.due_at <= datetime.fromisoformat(REMINDERS_DUE)]
    assert due == [reminders[i] for i in range(COUNT)], \
        "the batch should take the reminders in patient order"
    return reminders


def import_appointments_elsewhere(other: Database, folder: Path, name: str,
                                  rows: list[dict[str, str]]) -> None:
    path = write_csv(folder / f"{name}.csv", rows, APPOINTMENT_COLUMNS)
    with other.transaction() as conn:
        import_appointments(conn, path, practice_tz="America/Chicago", now=clock.now())


def test_changes_committed_mid_batch_stop_every_message_not_yet_handed_over(
        clinic: Clinic, elsewhere: Database, tmp_path: Path) -> None:
    reminders = book_500(clinic)
    provider = Provider()

    def cancel() -> None:
        import_appointments_elsewhere(elsewhere, tmp_path, "cancel", [
            appointment(f"A{i:03d}", external(i), VISIT, status="cancelled")
            for i in CANCELLED])

    def move() -> None:
        import_appointments_elsewhere(elsewhere, tmp_path, "move", [
            appointment(f"A{i:03d}", external(i), MOVED_TO) for i in MOVED])

    def stop() -> None:
        with elsewhere.transaction() as conn:
            for i in (*STOPPED, *STOPPED_HAS_EMAIL):
                handled = record_inbound(
                    conn, clinic.settings, provider="twilio", message_id=f"SM-stop-{i}",
                    from_number=number(i), to_number="+13125550199", body="STOP",
                    now=clock.now())
                assert handled.intent == "stop"

    def carrier_21610() -> None:
        with elsewhere.transaction() as conn:
            for i in CARRIER_21610:
                record_event(conn, ProviderEvent(
                    provider="twilio", event_id=f"21610-{i}", kind=Kind.FAILED,
                    status="undelivered", occurred_at=clock.now(), address=number(i),
                    error_code="21610"), clock.now())

    def unsubscribe() -> None:
        with elsewhere.transaction() as conn:
            for i in UNSUBSCRIBED:
                record_event(conn, ProviderEvent(
                    provider="sendgrid", event_id=f"unsub-{i}", kind=Kind.UNSUBSCRIBED,
                    status="unsubscribe", occurred_at=clock.now(), address=email(i)),
                    clock.now())
            for i in MARKETING_ONLY:
                record_event(conn, ProviderEvent(
                    provider="sendgrid", event_id=f"group-unsub-{i}", kind=Kind.UNSUBSCRIBED,
                    status="group_unsubscribe", occurred_at=clock.now(), address=email(i),
                    purpose="marketing"), clock.now())

    provider.changes = {100: ("cancel", cancel), 150: ("move", move), 200: ("stop", stop),
                        250: ("21610", carrier_21610), 300: ("unsubscribe", unsubscribe)}
    clinic.sms.fail_when(provider.rule)
    clinic.email.fail_when(provider.rule)

    with freeze_time(REMINDERS_DUE):
        report = clinic.tick()

    assert set(provider.committed_at) == {"cancel", "move", "stop", "21610", "unsubscribe"}
    assert report.dispatch.claimed == COUNT  # one batch of 500

    def ids(group: range) -> set[int]:
        return {reminders[i] for i in group}

    # Nothing planned for them was handed to the provider after each commit …
    assert [m for m in provider.after("cancel") if m.touch_point_id in ids(CANCELLED)] == []
    assert [m for m in provider.after("move") if m.touch_point_id in ids(MOVED)] == []
    assert [m for m in provider.after("stop") if m.kind == "sms"
            and m.touch_point_id in ids(STOPPED) | ids(STOPPED_HAS_EMAIL)] == []
    assert [m for m in provider.after("21610")
            if m.touch_point_id in ids(CARRIER_21610)] == []
    assert [m for m in provider.after("unsubscribe")
            if m.touch_point_id in ids(UNSUBSCRIBED)] == []

    # … and each ends as the send-time guards say.
    by_id = {tp.id: tp for tp in clinic.touch_points(journey="pre-visit",
                                                     step="three-days-before")}

    def outcomes(group: range) -> set[tuple[str, str | None, str | None]]:
        return {(by_id[reminders[i]].status, by_id[reminders[i]].reason,
                 by_id[reminders[i]].channel) for i in group}

    assert outcomes(CANCELLED) == {(Status.CANCELLED, "appointment_cancelled", None)}
    assert outcomes(MOVED) == {(Status.CANCELLED, "anchor_changed", None)}
    assert outcomes(STOPPED) == {(Status.SKIPPED, "opted_out", None)}
    assert outcomes(CARRIER_21610) == {(Status.SKIPPED, "opted_out", None)}
    assert outcomes(UNSUBSCRIBED) == {(Status.SKIPPED, "opted_out", None)}
    # a text refused now: the step's next channel takes it, as the guards would have chosen
    assert outcomes(STOPPED_HAS_EMAIL) == {(Status.SENT, None, "email")}
    # a marketing unsubscribe does not stop a reminder
    assert outcomes(MARKETING_ONLY) == {(Status.SENT, None, "email")}

    stopped = len(CANCELLED) + len(MOVED) + len(STOPPED) + len(CARRIER_21610) \
        + len(UNSUBSCRIBED)
    assert len(provider.handed) == COUNT - stopped
    assert len(clinic.sms.sent) == COUNT - len(EMAIL_ONLY) - len(CANCELLED) - len(MOVED) \
        - len(STOPPED) - len(STOPPED_HAS_EMAIL) - len(CARRIER_21610)
    assert len(clinic.email.sent) == len(EMAIL_ONLY) - len(UNSUBSCRIBED) \
        + len(STOPPED_HAS_EMAIL)
    assert report.dispatch.sent == COUNT - stopped
    assert report.dispatch.cancelled == {"appointment_cancelled": len(CANCELLED),
                                         "anchor_changed": len(MOVED)}
    assert report.dispatch.skipped == {"opted_out": len(STOPPED) + len(CARRIER_21610)
                                       + len(UNSUBSCRIBED)}


def test_an_exit_event_or_a_resolved_case_committed_mid_batch_ends_the_journey(
        clinic: Clinic, elsewhere: Database, tmp_path: Path) -> None:
    """The re-check covers the patient's exit events (booking the next visit ends the
    follow-up nudges) and the recovery case a note is anchored on (resolving it)."""
    count, booking, resolved = 40, range(20, 30), range(30, 40)
    with freeze_time("2026-11-02T18:00:00Z"):  # Mon 12:00 CST, after each one's visit
        clinic.patients(*(patient(f"Q{i:02d}", phone=number(i), email=email(i))
                          for i in range(count)), baseline=True)
        clinic.appointments(*(appointment(f"V{i:02d}", f"Q{i:02d}", "2026-11-02T10:00-06:00",
                                          status="completed") for i in range(count)))
        clinic.tick()
    with freeze_time("2026-11-03T15:00:00Z"):  # staff hear of two dozen complaints
        with clinic.db.transaction() as conn:
            case_of = {i: open_case(
                conn, clinic.settings, key=f"complaint:{i}", cause="complaint",
                patient_id=patient_id(conn, f"Q{i:02d}"), now=clock.now(),
                detail="texted that nobody called back") for i in range(20, count)}
        clinic.tick()
    nudges = {i: clinic.one("follow-up", "home-exercise-nudge", patient=f"Q{i:02d}").id
              for i in range(count)}
    notes = {i: clinic.one("recovery", "personal-note", patient=f"Q{i:02d}").id
             for i in range(20, count)}

    provider = Provider()
    clinic.sms.fail_when(provider.rule)
    clinic.email.fail_when(provider.rule)

    def resolve_cases() -> None:
        with elsewhere.transaction() as conn:
            for i in resolved:
                case_id = case_of[i]
                assert case_id is not None
                resolve(conn, case_id, "called her, all sorted", "Dana", clock.now())

    provider.changes = {5: ("resolve", resolve_cases)}
    with freeze_time("2026-11-04T16:30:00Z"):  # Wed 10:30 CST: the personal notes
        report = clinic.tick()
    assert report.dispatch.claimed == len(notes)
    assert [m for m in provider.after("resolve")
            if m.touch_point_id in {notes[i] for i in resolved}] == []
    assert {(tp.status, tp.reason) for tp in clinic.touch_points(journey="recovery")
            if tp.id in {notes[i] for i in resolved}} == {(Status.CANCELLED, "journey_exited")}
    assert len(provider.handed) == len(notes) - len(resolved)

    def book_next_visits() -> None:
        import_appointments_elsewhere(elsewhere, tmp_path, "next-visits", [
            appointment(f"W{i:02d}", f"Q{i:02d}", "2026-11-10T10:00:00-06:00")
            for i in booking])

    provider.next_batch({5: ("book", book_next_visits)})
    with freeze_time("2026-11-04T23:00:00Z"):  # Wed 17:00 CST: the home-exercise nudges
        report = clinic.tick()
    assert report.dispatch.claimed == count
    assert [m for m in provider.after("book")
            if m.touch_point_id in {nudges[i] for i in booking}] == []
    outcomes = {tp.id: (tp.status, tp.reason)
                for tp in clinic.touch_points(journey="follow-up", step="home-exercise-nudge")}
    assert {outcomes[nudges[i]] for i in booking} == {(Status.CANCELLED, "journey_exited")}
    assert {outcomes[nudges[i]] for i in range(count) if i not in booking} == {
        (Status.SENT, None)}
    assert len(provider.handed) == count - len(booking)


def patient_id(conn: Connection, external_id: str) -> int:
    found = patient_by_external_id(conn, external_id)
    assert found is not None
    return found.id


def test_a_touch_point_whose_anchor_keeps_changing_is_left_to_the_next_run(
        clinic: Clinic, elsewhere: Database, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A change the guards do not mind (a completed visit's version, for its follow-up)
    still fails the conditional mark; the guards run again, at most RECHECKS times, then
    the touch point keeps its claim (claimed again at once, it would loop) and is sent once
    the claim has expired."""
    with freeze_time("2026-11-02T18:00:00Z"):
        clinic.patients(patient("Q00", phone=number(0), email=email(0)), baseline=True)
        clinic.appointments(appointment("V00", "Q00", "2026-11-02T10:00-06:00",
                                        status="completed"))
        clinic.tick()
    nudge = clinic.one("follow-up", "home-exercise-nudge")
    rechecks: list[int] = []
    recheck = Snapshot.recheck

    def recheck_then_change(snapshot: Snapshot, tp: TouchPoint, journey: Journey,
                            step: Step) -> Recheck:
        found = recheck(snapshot, tp, journey, step)
        rechecks.append(tp.id)
        with elsewhere.transaction() as other:  # right after the guards read it
            other.execute(update(appointments).values(version=appointments.c.version + 1))
        return found

    monkeypatch.setattr(Snapshot, "recheck", recheck_then_change)
    with freeze_time("2026-11-04T23:00:00Z"):
        report = clinic.tick()
    assert rechecks == [nudge.id] * RECHECKS
    assert report.dispatch.sent == 0 and clinic.sms.sent == []
    left = clinic.one("follow-up", "home-exercise-nudge")
    assert (left.status, left.attempts) == (Status.PLANNED, 0)
    assert left.claimed_by is not None
    assert f"touch point {nudge.id}: what its guards read kept changing" in caplog.text
    monkeypatch.undo()
    with freeze_time("2026-11-04T23:04:00Z"):  # still claimed (dispatch.send_timeout: 5m)
        assert clinic.tick().dispatch.claimed == 0
    with freeze_time("2026-11-04T23:05:01Z"):
        assert clinic.tick().dispatch.sent == 1
    assert [m.touch_point_id for m in clinic.sms.sent] == [nudge.id]


@pytest.mark.parametrize("change", ["none", "cancelled", "moved", "opted_out",
                                    "opted_out_of_marketing", "email_opted_out_in_capitals",
                                    "exit_event", "taken"])
def test_the_conditional_sending_mark(clinic: Clinic, elsewhere: Database,
                                      change: str) -> None:
    """SendPath.mark_sending with a Recheck matches only while what the guards read holds;
    ``held`` tells a failed recheck (still this worker's) from a row taken by another."""
    with freeze_time(PLANNING):
        clinic.patients(patient("P000", phone=number(0), email=email(0)), baseline=True)
        clinic.appointments(appointment("A000", "P000", VISIT))
        clinic.runner.plan_pending()
    with freeze_time(REMINDERS_DUE), clinic.db.transaction() as conn:
        [tp] = [t for t in claim_due(conn, "me", clock.now(), 10, timedelta(minutes=5))
                if t.step == "three-days-before"]
        [booked] = load_appointments(conn, [tp.appointment_id or 0]).values()
    assert tp.patient_id is not None
    recheck = Recheck(tp.purpose, tp.patient_id, tp.planned_at,
                      appointment=(booked.id, booked.status, booked.version),
                      exits=("appointment.cancelled", "patient.discharged"))
    with freeze_time(REMINDERS_DUE), elsewhere.transaction() as conn:
        if change == "cancelled":
            conn.execute(update(appointments).values(status="cancelled"))
        elif change == "moved":
            conn.execute(update(appointments).values(version=booked.version + 1))
        elif change == "email_opted_out_in_capitals":  # one inbox, whatever the case
            add_opt_out(conn, "email", email(0).upper(), "all", "sendgrid", "unsubscribe",
                        clock.now())
        elif change.startswith("opted_out"):
            add_opt_out(conn, "sms", number(0), "marketing" if "marketing" in change else "all",
                        "sms reply", "replied 'STOP'", clock.now())
        elif change == "exit_event":
            append_events(conn, [{"kind": "patient.discharged", "patient_id": tp.patient_id,
                                  "appointment_id": None, "occurred_at": clock.now(),
                                  "data": {}, "source": "test", "dedupe_key": None,
                                  "processed_at": None}])
        elif change == "taken":
            conn.execute(update(touch_points).where(touch_points.c.id == tp.id)
                         .values(claimed_by="another worker"))
    path = SendPath(clinic.db.dialect)
    by_email = change.startswith("email")
    with freeze_time(REMINDERS_DUE), clinic.db.transaction() as conn:
        marked = path.mark_sending(
            conn, tp.id, worker="me", now=clock.now(), detail="via fake",
            channel="email" if by_email else "sms",
            address=email(0).title() if by_email else number(0), provider="fake",
            attempts=1, template_file="t", content="Hi", recheck=recheck)
        held = path.held(conn, tp.id, "me")
    # a marketing opt-out does not cover a reminder
    assert marked == (change in ("none", "opted_out_of_marketing"))
    assert held == (change not in ("none", "opted_out_of_marketing", "taken"))
