"""The dispatcher (engine/dispatcher.py), the retry policy (engine/retry.py) and the
ledger's recovery of interrupted sends (engine/store/ledger.py), on SQLite and PostgreSQL.

Practice timezone: America/Chicago (CST, UTC-6 after 2026-11-01). The default patient's
number is +13125550100. Times are moved with freezegun.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from freezegun import freeze_time
from sqlalchemy import select, update

from engine.channels.base import OutboundMessage
from engine.cli import cli
from engine.errors import AmbiguousChannelError, PermanentChannelError, TransientChannelError
from engine.outcomes import Status
from engine.runner import Runner
from engine.store.database import open_database
from engine.store.schema import opt_outs, touch_points
from tests.support import LIBRARY_TEMPLATES, Clinic, appointment, patient

NUMBER = "+13125550100"


@pytest.fixture
def clinic(database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    practice = Clinic(database_url, tmp_path)
    yield practice
    practice.close()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def moves(clinic: Clinic, tp_id: int) -> list[tuple[str | None, str | None, str | None, str]]:
    """(previous status, status, reason, source) of each history entry."""
    tp = next(t for t in clinic.touch_points() if t.id == tp_id)
    return [(h.previous_status, h.status, h.reason, h.source) for h in clinic.history(tp)]


class Crash(BaseException):
    """The process dies inside the provider call (like SIGKILL: nothing gets recorded)."""


def crash(message: OutboundMessage) -> None:
    raise Crash(f"died while sending touch point {message.touch_point_id}")


# --------------------------------------------------------------------------- the happy path


def test_a_sent_touch_point_has_the_history_planned_sending_sent(clinic: Clinic) -> None:
    with freeze_time("2026-11-02T15:00:00Z"):  # Mon 09:00 CST
        clinic.patients(patient("P1"))
        report = clinic.tick()
    welcome = clinic.one("welcome", "welcome")
    assert (welcome.status, welcome.channel, welcome.attempts) == (Status.SENT, "sms", 1)
    assert welcome.sent_at == utc("2026-11-02T15:00:00Z")
    assert welcome.claimed_by is None and welcome.claim_expires_at is None
    assert (welcome.provider_message_id or "").startswith("fake-sms-")
    assert [m.touch_point_id for m in clinic.sms.sent] == [welcome.id]
    assert moves(clinic, welcome.id) == [
        (None, "planned", None, "planner"),
        ("planned", "sending", None, "dispatcher"),
        ("sending", "sent", None, "dispatcher"),
    ]
    assert report.dispatch.sent == 1 and report.dispatch.claimed == 1


# --------------------------------------------------------------------------- transient errors


def test_transient_errors_back_off_1_2_4_minutes_then_fail_after_max_attempts(
        database_url: str, tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path, config_extra="\n[dispatch]\nmax_attempts = 4\n")
    busy = [TransientChannelError("service unavailable", provider="fake", status=503)
            for _ in range(4)]
    clinic.sms.script(*busy)
    start = utc("2026-11-02T15:00:00Z")
    with freeze_time(start) as frozen:
        clinic.patients(patient("P1", email_consent="no"))  # texts only: no channel after
        clinic.tick()
        welcome = clinic.one("welcome", "welcome")
        assert (welcome.status, welcome.attempts) == (Status.PLANNED, 1)
        assert welcome.due_at == start + timedelta(minutes=1)

        frozen.move_to(start + timedelta(seconds=59))  # not due yet: no provider call
        clinic.tick()
        assert len(clinic.sms.attempts) == 1

        frozen.move_to(start + timedelta(minutes=1))
        clinic.tick()
        welcome = clinic.one("welcome", "welcome")
        assert (welcome.status, welcome.attempts) == (Status.PLANNED, 2)
        assert welcome.due_at == start + timedelta(minutes=1 + 2)

        frozen.move_to(start + timedelta(minutes=3))
        clinic.tick()
        welcome = clinic.one("welcome", "welcome")
        assert (welcome.status, welcome.attempts) == (Status.PLANNED, 3)
        assert welcome.due_at == start + timedelta(minutes=3 + 4)

        frozen.move_to(start + timedelta(minutes=7))
        clinic.tick()
        frozen.move_to(start + timedelta(hours=2))
        clinic.tick()  # a failed touch point is never picked up again
    welcome = clinic.one("welcome", "welcome")
    assert (welcome.status, welcome.reason, welcome.attempts) == (
        Status.FAILED, "provider_error", 4)
    assert "HTTP 503" in (welcome.detail or "") and "gave up after 4 attempts" in welcome.detail
    assert len(clinic.sms.attempts) == 4 and clinic.sms.sent == []
    assert [h.reason for h in clinic.history(welcome) if h.kind == "deferred"] == ["retry"] * 3
    clinic.close()


def test_when_transient_retries_run_out_the_steps_next_channel_is_tried(
        database_url: str, tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path, config_extra="\n[dispatch]\nmax_attempts = 2\n")
    clinic.sms.script(*[TransientChannelError("service unavailable", provider="fake",
                                              status=503) for _ in range(2)])
    start = utc("2026-11-02T15:00:00Z")
    with freeze_time(start) as frozen:
        clinic.patients(patient("P1"))  # welcome: [sms, email]
        clinic.tick()
        assert clinic.one("welcome", "welcome").status == Status.PLANNED  # retried
        frozen.move_to(start + timedelta(minutes=1))
        report = clinic.tick()  # the 2nd attempt fails too: no retry left, so email
    welcome = clinic.one("welcome", "welcome")
    assert (welcome.status, welcome.channel, welcome.attempts) == (Status.SENT, "email", 3)
    assert [m.kind for m in clinic.sms.attempts] == ["sms", "sms"]
    assert [m.to for m in clinic.email.sent] == ["p1@example.com"]
    assert (report.dispatch.sent, report.dispatch.failed) == (1, 0)
    assert moves(clinic, welcome.id)[-3:] == [
        ("sending", "planned", "fallback", "dispatcher"),
        ("planned", "sending", None, "dispatcher"),
        ("sending", "sent", None, "dispatcher")]
    fallback = clinic.history(welcome)[-3].detail or ""
    assert fallback.startswith("sms: fake HTTP 503: service unavailable; gave up after 2 "
                               "attempts; trying the next channel"), fallback
    clinic.close()


def test_a_retry_that_would_pass_the_deadline_falls_back_while_there_is_time(
        clinic: Clinic) -> None:
    start = utc("2026-11-02T15:00:00Z")
    with freeze_time(start) as frozen:
        clinic.patients(patient("P1"))  # welcome: [sms, email], expires after a day
        clinic.runner.plan_pending()
        deadline = clinic.one("welcome", "welcome").expires_at
        assert deadline is not None
        clinic.sms.script(TransientChannelError("slow down", provider="fake", status=429,
                                                retry_after=deadline - timedelta(minutes=1)))
        clinic.tick()
        clinic.sms.script(TransientChannelError("slow down", provider="fake", status=429,
                                                retry_after=deadline + timedelta(minutes=1)))
        frozen.move_to(deadline - timedelta(minutes=1))
        clinic.tick()  # before the deadline: the next channel
        assert clinic.one("welcome", "welcome").channel == "email"
    assert clinic.one("welcome", "welcome").status == Status.SENT


def test_a_retry_after_later_than_the_backoff_wins_an_earlier_one_does_not(
        clinic: Clinic) -> None:
    start = utc("2026-11-02T15:00:00Z")
    clinic.sms.script(
        TransientChannelError("slow down", provider="fake", status=429,
                              retry_after=start + timedelta(minutes=10)),
        TransientChannelError("slow down", provider="fake", status=429,
                              retry_after=start + timedelta(minutes=10, seconds=5)),
    )
    with freeze_time(start) as frozen:
        clinic.patients(patient("P1"))
        clinic.tick()
        assert clinic.one("welcome", "welcome").due_at == start + timedelta(minutes=10)
        frozen.move_to(start + timedelta(minutes=10))
        clinic.tick()  # asks for 5 s; the backoff (2 min for the 2nd attempt) is later
        assert clinic.one("welcome", "welcome").due_at == start + timedelta(minutes=12)
        frozen.move_to(start + timedelta(minutes=12))
        clinic.tick()
    welcome = clinic.one("welcome", "welcome")
    assert (welcome.status, welcome.attempts) == (Status.SENT, 3)
    assert len(clinic.sms.attempts) == 3 and len(clinic.sms.sent) == 1


def test_a_retry_after_past_the_deadline_fails_at_once(clinic: Clinic) -> None:
    start = utc("2026-11-02T15:00:00Z")
    with freeze_time(start) as frozen:
        clinic.patients(patient("P1", email_consent="no"))  # texts only: no channel after
        clinic.runner.plan_pending()
        deadline = clinic.one("welcome", "welcome").expires_at
        assert deadline == start + timedelta(days=1)
        clinic.sms.script(TransientChannelError("slow down", provider="fake", status=429,
                                                retry_after=deadline + timedelta(minutes=1)))
        clinic.tick()
        frozen.move_to(deadline + timedelta(hours=1))
        clinic.tick()
    welcome = clinic.one("welcome", "welcome")
    assert (welcome.status, welcome.reason, welcome.attempts) == (
        Status.FAILED, "provider_error", 1)
    assert "past its deadline" in (welcome.detail or "")
    assert len(clinic.sms.attempts) == 1


def test_the_backoff_never_schedules_a_retry_past_the_deadline(
        database_url: str, tmp_path: Path) -> None:
    """The 2-hour reminder is due 08:00 CST and worthless after the 10:00 visit."""
    clinic = Clinic(database_url, tmp_path, config_extra='\n[dispatch]\nretry_backoff = "1h"\n')
    with freeze_time("2026-11-02T14:00:00Z") as frozen:
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
        reminder = clinic.one("pre-visit", "two-hours-before")
        assert reminder.due_at == utc("2026-11-05T08:00:00-06:00")
        assert reminder.expires_at == utc("2026-11-05T10:00:00-06:00")
        frozen.move_to("2026-11-02T16:00:00Z")
        clinic.tick()  # the three-days-before reminder goes out on its day
        clinic.sms.fail_when(lambda m: TransientChannelError("down", provider="fake", status=500)
                             if m.step == "two-hours-before" else None)
        frozen.move_to("2026-11-05T14:00:00Z")
        clinic.tick()
        assert clinic.one("pre-visit", "two-hours-before").due_at == \
            utc("2026-11-05T09:00:00-06:00")
        frozen.move_to("2026-11-05T15:00:00Z")
        clinic.tick()  # the next retry (10:00 or later) would be at the visit itself
    reminder = clinic.one("pre-visit", "two-hours-before")
    assert (reminder.status, reminder.reason, reminder.attempts) == (
        Status.FAILED, "provider_error", 2)
    assert "past its deadline" in (reminder.detail or "")
    assert len([m for m in clinic.sms.attempts if m.step == "two-hours-before"]) == 2
    clinic.close()


def test_a_retried_touch_point_history_shows_it_left_sending(clinic: Clinic) -> None:
    clinic.sms.script(TransientChannelError("busy", provider="fake", status=503))
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.patients(patient("P1"))
        clinic.tick()
    welcome = clinic.one("welcome", "welcome")
    assert moves(clinic, welcome.id)[-1] == ("sending", "planned", "retry", "dispatcher")


# --------------------------------------------------------------------------- permanent errors


def test_a_permanent_sms_error_falls_through_to_email(clinic: Clinic) -> None:
    clinic.sms.script(PermanentChannelError("not a mobile number", provider="fake",
                                            code="21614", status=400))
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.patients(patient("P1"))
        clinic.tick()
    welcome = clinic.one("welcome", "welcome")
    assert (welcome.status, welcome.channel, welcome.address, welcome.attempts) == (
        Status.SENT, "email", "p1@example.com", 2)
    assert [m.touch_point_id for m in clinic.email.sent] == [welcome.id]
    assert clinic.sms.sent == [] and len(clinic.sms.attempts) == 1
    history = clinic.history(welcome)
    assert [(h.previous_status, h.status, h.reason) for h in history] == [
        (None, "planned", None),
        ("planned", "sending", None),
        ("sending", "planned", "provider_error"),
        ("planned", "sending", None),
        ("sending", "sent", None),
    ]
    assert history[1].detail is not None and history[1].detail.startswith("sms via fake")
    assert "code 21614" in (history[2].detail or "")
    assert "trying the next channel" in (history[2].detail or "")
    assert history[3].detail is not None and history[3].detail.startswith("email via fake")


def test_a_retry_after_a_fallthrough_does_not_go_back_to_the_refused_channel(
        clinic: Clinic) -> None:
    clinic.sms.fail_when(lambda m: PermanentChannelError(
        "invalid 'To' phone number", provider="fake", code="21211", status=400))
    clinic.email.script(TransientChannelError("busy", provider="fake", status=503))
    with freeze_time("2026-11-02T15:00:00Z") as frozen:
        clinic.patients(patient("P1"))
        clinic.tick()  # sms refused for good; email busy: retried later
        assert clinic.one("welcome", "welcome").status == Status.PLANNED
        frozen.move_to("2026-11-02T16:00:00Z")
        clinic.tick()
    welcome = clinic.one("welcome", "welcome")
    assert (welcome.status, welcome.channel) == (Status.SENT, "email")
    assert [m.step for m in clinic.sms.attempts] == ["welcome"]  # refused once, not re-asked
    assert welcome.attempts == 3  # sms, email (busy), email


def test_a_permanent_error_on_the_last_channel_fails_with_the_providers_code(
        clinic: Clinic) -> None:
    with freeze_time("2026-11-02T14:00:00Z") as frozen:
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        frozen.move_to("2026-11-02T16:00:00Z")
        clinic.tick()  # the three-days-before reminder goes out by sms
        clinic.sms.script(PermanentChannelError("invalid 'To' phone number", provider="fake",
                                                code="21211", status=400))
        frozen.move_to("2026-11-05T14:00:00Z")  # the sms-only 2-hour reminder
        clinic.tick()
        frozen.move_to("2026-11-05T15:00:00Z")
        clinic.tick()
    reminder = clinic.one("pre-visit", "two-hours-before")
    assert (reminder.status, reminder.reason, reminder.attempts) == (
        Status.FAILED, "provider_error", 1)
    assert reminder.detail == "sms: fake HTTP 400 code 21211: invalid 'To' phone number"
    assert reminder.claimed_by is None
    assert [m.step for m in clinic.sms.attempts] == ["three-days-before", "two-hours-before"]
    assert moves(clinic, reminder.id)[-1] == ("sending", "failed", "provider_error",
                                              "dispatcher")


def test_a_provider_opt_out_blocks_the_number_for_the_next_touch_point(
        clinic: Clinic) -> None:
    """Twilio 21610: the recipient texted STOP to the provider; we must not try again."""
    with freeze_time("2026-11-02T14:00:00Z") as frozen:
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        clinic.tick()
        clinic.sms.script(PermanentChannelError(
            "Attempt to send to unsubscribed recipient", provider="fake", code="21610",
            status=400, opted_out=True))
        frozen.move_to("2026-11-02T16:00:00Z")  # three days before, 10:00 CST
        clinic.tick()
        three_days = clinic.one("pre-visit", "three-days-before")
        assert (three_days.status, three_days.channel) == (Status.SENT, "email")
        with clinic.db.transaction() as conn:
            blocked = conn.execute(select(opt_outs.c.channel, opt_outs.c.address,
                                          opt_outs.c.purpose, opt_outs.c.source)).all()
        assert [tuple(row) for row in blocked] == [("sms", NUMBER, "all", "provider")]
        frozen.move_to("2026-11-05T14:00:00Z")  # the sms-only 2-hour reminder
        clinic.tick()
    two_hours = clinic.one("pre-visit", "two-hours-before")
    assert (two_hours.status, two_hours.reason) == (Status.SKIPPED, "opted_out")
    assert two_hours.attempts == 0
    assert len(clinic.sms.attempts) == 1  # only the one that was refused


def test_a_21610_refusal_on_the_last_channel_fails_as_opted_out(clinic: Clinic) -> None:
    with freeze_time("2026-11-02T14:00:00Z") as frozen:
        clinic.patients(patient("P1"), baseline=True)
        clinic.appointments(appointment("A1", "P1", "2026-11-05T10:00:00-06:00"))
        frozen.move_to("2026-11-02T16:00:00Z")
        clinic.tick()  # the three-days-before reminder goes out by sms
        clinic.sms.script(PermanentChannelError(
            "Attempt to send to unsubscribed recipient", provider="fake", code="21610",
            status=400, opted_out=True))
        frozen.move_to("2026-11-05T14:00:00Z")  # the sms-only 2-hour reminder
        clinic.tick()
    reminder = clinic.one("pre-visit", "two-hours-before")
    assert (reminder.status, reminder.reason) == (Status.FAILED, "opted_out")
    assert reminder.detail == ("sms: fake HTTP 400 code 21610: Attempt to send to "
                               "unsubscribed recipient")
    assert moves(clinic, reminder.id)[-1] == ("sending", "failed", "opted_out", "dispatcher")


# --------------------------------------------------------------------------- ambiguity


def test_an_ambiguous_error_is_unknown_and_never_resent(clinic: Clinic) -> None:
    clinic.sms.script(AmbiguousChannelError("read timed out", provider="fake"))
    with freeze_time("2026-11-02T15:00:00Z") as frozen:
        clinic.patients(patient("P1"))
        report = clinic.tick()
        assert report.dispatch.unknown == 1
        for later in ("2026-11-02T15:10:00Z", "2026-11-02T16:00:00Z", "2026-11-03T15:00:00Z"):
            frozen.move_to(later)
            clinic.tick()
    welcome = clinic.one("welcome", "welcome")
    assert (welcome.status, welcome.reason, welcome.channel) == (Status.UNKNOWN, "ambiguous",
                                                                 "sms")
    assert "not re-sent" in (welcome.detail or "")
    assert len(clinic.sms.attempts) == 1
    assert [m.step for m in clinic.email.attempts] == ["what-to-expect"]  # no fallback
    assert [m.touch_point_id for m in clinic.sms.attempts] == [welcome.id]
    assert moves(clinic, welcome.id)[-1] == ("sending", "unknown", "ambiguous", "dispatcher")


# --------------------------------------------------------------------------- crash recovery


def test_a_crash_mid_send_is_not_resent_and_becomes_unknown_after_the_send_timeout(
        clinic: Clinic) -> None:
    start = utc("2026-11-02T15:00:00Z")
    clinic.sms.script(crash)
    with freeze_time(start) as frozen:
        clinic.patients(patient("P1"))
        with pytest.raises(Crash):
            clinic.tick()
        welcome = clinic.one("welcome", "welcome")
        assert (welcome.status, welcome.attempts) == (Status.SENDING, 1)
        assert welcome.sending_at == start
        assert len(clinic.sms.attempts) == 1 and clinic.sms.sent == []

        # the process restarts: a new worker, same database
        restarted = Runner(clinic.db, clinic.settings, clinic.definitions,
                           {"sms": clinic.sms, "email": clinic.email})
        frozen.move_to(start + timedelta(minutes=1))
        assert restarted.tick().recovered == 0
        frozen.move_to(start + timedelta(minutes=5))  # send_timeout (5m) not yet exceeded
        assert restarted.tick().recovered == 0
        assert clinic.one("welcome", "welcome").status == Status.SENDING
        assert len(clinic.sms.attempts) == 1

        frozen.move_to(start + timedelta(minutes=5, seconds=1))
        assert restarted.tick().recovered == 1
        frozen.move_to(start + timedelta(hours=3))
        assert restarted.tick().recovered == 0
    welcome = clinic.one("welcome", "welcome")
    assert (welcome.status, welcome.reason) == (Status.UNKNOWN, "interrupted")
    assert welcome.claimed_by is None
    assert [m.touch_point_id for m in clinic.sms.attempts] == [welcome.id]  # never re-sent
    assert moves(clinic, welcome.id) == [
        (None, "planned", None, "planner"),
        ("planned", "sending", None, "dispatcher"),
        ("sending", "unknown", "interrupted", "recovery"),
    ]
    result = CliRunner().invoke(cli, ["--db", clinic.settings.database_url, "log",
                                      "--status", "unknown", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["id"], r["step"], r["status"], r["reason"]) for r in rows] == [
        (welcome.id, "welcome", "unknown", "interrupted")]


# --------------------------------------------------------------------------- templates


def _templates_with(tmp_path: Path, broken: dict[str, str]) -> Path:
    folder = tmp_path / "templates"
    shutil.copytree(LIBRARY_TEMPLATES, folder)
    for name, text in broken.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_a_template_that_fails_to_render_falls_through_to_the_next_channel(
        database_url: str, tmp_path: Path) -> None:
    templates = _templates_with(tmp_path, {
        "welcome/welcome.sms.j2": "Hi {{ patient.first_name }}: {{ practice.links.missing }}"})
    clinic = Clinic(database_url, tmp_path, templates=templates)
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.patients(patient("P1"))
        clinic.tick()
    welcome = clinic.one("welcome", "welcome")
    assert (welcome.status, welcome.channel, welcome.attempts) == (Status.SENT, "email", 1)
    assert welcome.template_file == "welcome/welcome.email.j2"
    assert clinic.sms.attempts == []
    assert [m.touch_point_id for m in clinic.email.sent] == [welcome.id]
    clinic.close()


def test_a_template_that_fails_on_the_only_channel_is_a_template_error(
        database_url: str, tmp_path: Path) -> None:
    templates = _templates_with(tmp_path, {
        "welcome/what-to-expect.email.j2":
            "{% block subject %}Hi {{ practice.links.missing }}{% endblock %}\n"
            "{% block text %}Hello{% endblock %}\n"})
    clinic = Clinic(database_url, tmp_path, templates=templates)
    with freeze_time("2026-11-02T15:10:00Z"):
        clinic.patients(patient("P1"))
        clinic.runner.plan_pending()
    with freeze_time("2026-11-02T15:20:00Z"):
        clinic.tick()
    expect = clinic.one("welcome", "what-to-expect")
    assert (expect.status, expect.reason, expect.attempts) == (
        Status.FAILED, "template_error", 0)
    assert "welcome/what-to-expect.email.j2" in (expect.detail or "")
    assert "missing" in (expect.detail or "")
    assert all(m.step != "what-to-expect" for m in clinic.email.attempts)
    assert clinic.one("welcome", "welcome").status == Status.SENT  # the others still go
    clinic.close()


# --------------------------------------------------------------------------- claims


def test_rows_claimed_by_another_worker_are_left_alone_until_the_lease_expires(
        clinic: Clinic) -> None:
    start = utc("2026-11-02T15:00:00Z")
    with freeze_time(start) as frozen:
        clinic.patients(patient("P1"))
        clinic.runner.plan_pending()
        welcome = clinic.one("welcome", "welcome")
        with clinic.db.transaction() as conn:
            conn.execute(update(touch_points).where(touch_points.c.id == welcome.id).values(
                claimed_by="other-host:123:abcd", claim_expires_at=start + timedelta(minutes=2)))
        dispatcher = clinic.runner.dispatcher
        assert dispatcher is not None
        assert dispatcher.run().claimed == 0
        left = clinic.one("welcome", "welcome")
        assert (left.status, left.claimed_by) == (Status.PLANNED, "other-host:123:abcd")
        assert clinic.sms.attempts == []

        frozen.move_to(start + timedelta(minutes=2))  # lease ends at this instant: still held
        assert dispatcher.run().claimed == 0
        frozen.move_to(start + timedelta(minutes=2, seconds=1))  # expired: taken over
        stats = dispatcher.run()
    assert (stats.claimed, stats.sent) == (1, 1)
    welcome = clinic.one("welcome", "welcome")
    assert (welcome.status, welcome.claimed_by) == (Status.SENT, None)
    assert [m.touch_point_id for m in clinic.sms.sent] == [welcome.id]


# --------------------------------------------------------------------------- WAL checkpoints


def _checkpoint_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "wal-checkpoint"]


def test_a_backlog_is_drained_with_wal_checkpoints_in_the_background_on_sqlite_only(
        database_url: str, tmp_path: Path) -> None:
    clinic = Clinic(database_url, tmp_path, config_extra="[dispatch]\nbatch_size = 2\n")
    seen: list[list[str]] = []
    clinic.sms.fail_when(lambda message: seen.append(_checkpoint_threads()))  # type: ignore[func-returns-value]
    with freeze_time("2026-11-02T15:00:00Z"):  # Mon 09:00 CST
        clinic.patients(patient("P1"), patient("P2", phone="+13125550101"),
                        patient("P3", phone="+13125550102"))
        report = clinic.tick()
    assert report.dispatch.sent == 3
    sqlite = clinic.db.dialect == "sqlite"
    # claimed 2 (a full batch: a backlog), then 1: the thread ran while they were sent
    assert seen == [["wal-checkpoint"]] * 3 if sqlite else [[]] * 3
    assert _checkpoint_threads() == []  # and stopped with the run
    clinic.close()


def test_a_small_run_starts_no_checkpoint_thread(clinic: Clinic) -> None:
    seen: list[list[str]] = []
    clinic.sms.fail_when(lambda message: seen.append(_checkpoint_threads()))  # type: ignore[func-returns-value]
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.patients(patient("P1"))
        assert clinic.tick().dispatch.sent == 1
    assert seen == [[]]


def test_background_checkpoints_copy_the_wal_into_the_database(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    with db.transaction() as conn:
        conn.exec_driver_sql("CREATE TABLE filler (id INTEGER PRIMARY KEY, body TEXT)")
        conn.exec_driver_sql("INSERT INTO filler (body) SELECT printf('%.500c', 'x') "
                             "FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
                             "FROM n WHERE i < 2000) SELECT i FROM n)")
    before = path.stat().st_size  # the rows are in the WAL only (autocheckpoint: 10,000 pages)
    with db.checkpointing(interval=0.01):
        deadline = time.monotonic() + 10
        while path.stat().st_size == before and time.monotonic() < deadline:
            time.sleep(0.01)
    assert path.stat().st_size > before + 2000 * 500
    with db.transaction() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM filler").scalar() == 2000
    db.dispose()
