"""Never stale, inside a batch too: a cancellation, a move or an opt-out committed while a
batch is being sent stops every message of it not yet handed to the provider
(engine/dispatcher.py, the conditional ``sending`` mark of engine/store/ledger.py).

The changes are committed from another connection (another engine), through the code
that makes them in production (the appointment import, an inbound STOP, Twilio's 21610
and SendGrid's unsubscribe events), while the fake provider is taking message N of a
batch of 500. On SQLite and PostgreSQL.

Practice timezone: America/Chicago (CST, UTC-6). Every visit is Thu 2026-11-05 10:00; its
two-days-before reminder is due Tue 2026-11-03 10:00 CST (16:00 UTC).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from freezegun import freeze_time

from engine import clock
from engine.channels.base import OutboundMessage
from engine.errors import ChannelError
from engine.importer import APPOINTMENT_COLUMNS, import_appointments
from engine.outcomes import Status
from engine.replies import record_inbound
from engine.store.database import Database, open_database
from engine.store.records import add_opt_out
from engine.webhooks import Kind, ProviderEvent
from engine.webhooks.record import record_event
from tests.support import Clinic, appointment, patient, write_csv

VISIT = "2026-11-05T10:00:00-06:00"
MOVED_TO = "2026-11-12T10:00:00-06:00"
PLANNING = "2026-11-02T14:00:00Z"
REMINDERS_DUE = "2026-11-03T16:00:00Z"
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
    reminders = {int(p.removeprefix("P")): tp.id for p, tp in (
        (external(i), clinic.one("pre-visit", "two-days-before", patient=external(i)))
        for i in range(COUNT))}
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
                                                     step="two-days-before")}

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
