"""Provider webhooks (engine/webhooks/), replies to texts (engine/replies.py), one-click
unsubscribe (engine/unsubscribe.py) and the frequency caps (engine/guards.py), through the
real ASGI app (``create_app``) and fastapi's TestClient, on SQLite and PostgreSQL.

Twilio requests are signed with twilio's own ``RequestValidator`` over the PUBLIC url
(``webhooks.public_url`` + path + query), as Twilio signs them behind a proxy; SendGrid's
Event Webhook is signed with a P-256 key made here, whose base64 DER SubjectPublicKeyInfo
is the configured ``sendgrid.webhook_public_key``.

Practice timezone: America/Chicago (CST, UTC-6 after 2026-11-01); 2026-11-02 is a Monday.
The clock is pinned with ``engine.clock`` (the app, the runner and the CLI all read it).
The default patient's number is +13125550100.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from sqlalchemy import select
from starlette.types import Message, Receive, Scope, Send
from twilio.request_validator import RequestValidator

from engine import clock
from engine.channels.base import OutboundMessage
from engine.cli import cli
from engine.errors import AmbiguousChannelError, PermanentChannelError
from engine.outcomes import Status
from engine.runner import Runner
from engine.settings import load_settings
from engine.store.ledger import TouchPoint
from engine.store.schema import (
    appointments,
    engine_state,
    history,
    inbound_messages,
    opt_outs,
    provider_events,
    touch_points,
)
from engine.webhooks.app import BodyLimit, Services, create_app
from tests.provider_servers._base import load_payload
from tests.support import LIBRARY_SCHEDULES, LIBRARY_TEMPLATES, Clinic, appointment, patient

Reply = Any  # a TestClient response (httpx's or httpx2's, by starlette version)

PUBLIC_URL = "https://tp.riversidept.example"
AUTH_TOKEN = "0123456789abcdef0123456789abcdef"
STAFF = "frontdesk@riversidept.example"
MAILTO = "unsubscribe@riversidept.example"
NUMBER = "+13125550100"
PRACTICE_NUMBER = "+13125550199"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

MONDAY_9AM = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)  # Mon 09:00 CST

SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC_KEY = base64.b64encode(SENDGRID_KEY.public_key().public_bytes(
    Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode()



MAILTO_SETTING = f'unsubscribe_mailto = "{MAILTO}"'


def webhook_toml(email: str = MAILTO_SETTING, public_url: str = f"{PUBLIC_URL}/") -> str:
    """Settings for the webhooks; ``email`` is the body of the [email] table."""
    return f"""
[twilio]
auth_token = "{AUTH_TOKEN}"

[sendgrid]
webhook_public_key = "{SENDGRID_PUBLIC_KEY}"

[webhooks]
public_url = "{public_url}"

[email]
{email}
"""


# --------------------------------------------------------------------------- the rig


class Practice:
    """A Clinic (tests/support.py) with webhook settings, a staff email and the ASGI app."""

    def __init__(self, database_url: str, folder: Path, *, email: str = MAILTO_SETTING,
                 extra: str = "", schedules: Path = LIBRARY_SCHEDULES,
                 public_url: str = f"{PUBLIC_URL}/") -> None:
        self.clinic = clinic = Clinic(database_url, folder,
                                      config_extra=webhook_toml(email, public_url) + extra,
                                      schedules=schedules)
        # practice.staff_email belongs in [practice], which the harness already wrote.
        text = clinic.config.read_text(encoding="utf-8").replace(
            "[practice.links]", f'staff_email = "{STAFF}"\n\n[practice.links]', 1)
        clinic.config.write_text(text, encoding="utf-8")
        clinic.settings = load_settings(clinic.config, {
            "database.url": database_url, "paths.schedules": str(schedules),
            "paths.templates": str(LIBRARY_TEMPLATES)})
        channels = {"sms": clinic.sms, "email": clinic.email}
        clinic.runner = Runner(clinic.db, clinic.settings, clinic.definitions, channels)
        self.schedules = schedules
        self.client = TestClient(create_app(Services(clinic.settings, clinic.db,
                                                     clinic.definitions, channels)))

    def close(self) -> None:
        self.client.close()
        self.clinic.close()

    # ------------------------------------------------------------------ Twilio

    def twilio(self, path: str, params: Mapping[str, str], *, signed_url: str | None = None,
               token: str = AUTH_TOKEN, signature: str | None = None) -> Reply:
        """POST a form as Twilio does, signed over ``signed_url`` (default: the public URL)."""
        if signature is None:
            signature = RequestValidator(token).compute_signature(
                signed_url or PUBLIC_URL + path, dict(params))
        sent = {"X-Twilio-Signature": signature} if signature else {}
        return self.client.post(path, data=dict(params), headers=sent)

    def status(self, tp_id: int, status: str, sid: str = "SM0001", error: str | None = None,
               **kwargs: Any) -> Reply:
        params = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status,
                  "SmsStatus": status, "AccountSid": "AC0001", "From": PRACTICE_NUMBER,
                  "To": NUMBER, "ApiVersion": "2010-04-01"}
        if error is not None:
            params["ErrorCode"] = error
        return self.twilio(f"/webhooks/twilio/status?tp={tp_id}", params, **kwargs)

    def text_in(self, body: str, sid: str, sender: str = NUMBER, **kwargs: Any,
                ) -> Reply:
        """A patient's text arriving at the practice's number."""
        params = {"MessageSid": sid, "SmsSid": sid, "AccountSid": "AC0001", "From": sender,
                  "To": PRACTICE_NUMBER, "Body": body, "NumMedia": "0"}
        response = self.twilio("/webhooks/twilio/inbound", params, **kwargs)
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("text/xml")
            assert response.text == EMPTY_TWIML
        return response

    # ------------------------------------------------------------------ SendGrid

    def sendgrid(self, events: Sequence[Mapping[str, Any]], *, timestamp: str | None = None,
                 body: bytes | None = None, key: ec.EllipticCurvePrivateKey = SENDGRID_KEY,
                 headers: Mapping[str, str] | None = None) -> Reply:
        """POST a signed event batch, signed now (``timestamp``: another time); ``body``
        replaces what is sent after signing."""
        if timestamp is None:
            timestamp = str(int(clock.now().timestamp()))
        signed = json.dumps(list(events)).encode()
        signature = base64.b64encode(key.sign(timestamp.encode() + signed,
                                              ec.ECDSA(hashes.SHA256()))).decode()
        sent = {"X-Twilio-Email-Event-Webhook-Signature": signature,
                "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
                "Content-Type": "application/json"} if headers is None else dict(headers)
        return self.client.post("/webhooks/sendgrid/events",
                                content=signed if body is None else body, headers=sent)

    # ------------------------------------------------------------------ looking

    def tp(self, tp_id: int) -> TouchPoint:
        return next(t for t in self.clinic.touch_points() if t.id == tp_id)

    def rows(self, table: Any, **where: Any) -> list[Any]:
        query = select(table).order_by(table.c[next(iter(table.primary_key.columns)).name])
        for column, value in where.items():
            query = query.where(table.c[column] == value)
        with self.clinic.db.transaction() as conn:
            return list(conn.execute(query))

    def opt_outs(self) -> set[tuple[str, str, str, str]]:
        return {(r.channel, r.address, r.purpose, r.source) for r in self.rows(opt_outs)}

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row a webhook could change."""
        return {t.name: [tuple(r) for r in self.rows(t)]
                for t in (touch_points, history, provider_events, opt_outs, inbound_messages,
                          appointments, engine_state)}

    def moves(self, tp_id: int) -> list[tuple[str, str | None, str | None, str | None, str]]:
        """(kind, previous status, status, reason, source) of each history entry."""
        return [(h.kind, h.previous_status, h.status, h.reason, h.source)
                for h in self.clinic.history(self.tp(tp_id))]

    def texts(self) -> list[OutboundMessage]:
        return list(self.clinic.sms.sent)

    def emails(self) -> list[OutboundMessage]:
        return list(self.clinic.email.sent)

    def cli(self, *args: str) -> Result:
        return CliRunner(env={"COLUMNS": "200"}).invoke(cli, [
            "--config", str(self.clinic.config), "--db", self.clinic.settings.database_url,
            "--schedules", str(self.schedules), "--templates", str(LIBRARY_TEMPLATES),
            "--now", clock.now().isoformat(), *args])

    # ------------------------------------------------------------------ scenes

    def at(self, instant: datetime | str) -> None:
        clock.set_now(instant if isinstance(instant, datetime) else utc(instant))

    def welcomed(self, *rows: Mapping[str, str]) -> list[TouchPoint]:
        """Import patients on Monday 09:00 CST and send their welcome (a text if they may)."""
        self.at(MONDAY_9AM)
        self.clinic.patients(*(rows or (patient("P1"),)))
        self.clinic.tick()
        return self.clinic.touch_points(journey="welcome", step="welcome")

    def reminded(self, **fields: str) -> TouchPoint:
        """P1 (no welcome) with a visit Thu 05 Nov 15:00 CST, reminded by text Mon 10:00."""
        self.at(MONDAY_9AM)
        self.clinic.patients(patient("P1", **fields), baseline=True)
        self.clinic.appointments(appointment("A1", "P1", "2026-11-05T15:00:00-06:00"))
        self.clinic.tick()
        self.at("2026-11-02T10:00:00-06:00")
        self.clinic.tick()
        reminder = self.clinic.one("pre-visit", "three-days-before")
        assert (reminder.status, reminder.channel) == (Status.SENT, "sms")
        return reminder


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.fixture
def practice(database_url: str, tmp_path: Path) -> Iterator[Practice]:
    rig = Practice(database_url, tmp_path)
    yield rig
    rig.close()


@pytest.fixture
def sqlite_practice(sqlite_url: str, tmp_path: Path) -> Iterator[Practice]:
    rig = Practice(sqlite_url, tmp_path)
    yield rig
    rig.close()


def schedules(folder: Path, *journeys: str) -> Path:
    """A schedules/ folder holding only ``journeys`` (YAML texts)."""
    target = folder / "schedules"
    target.mkdir()
    for index, text in enumerate(journeys):
        (target / f"journey-{index}.yaml").write_text(text, encoding="utf-8")
    return target


# --------------------------------------------------------------------------- Twilio status


def test_a_status_callback_is_verified_against_the_public_url_not_the_host_seen(
        practice: Practice) -> None:
    [welcome] = practice.welcomed()
    path = f"/webhooks/twilio/status?tp={welcome.id}"
    before = practice.snapshot()
    refused = {
        "no signature": practice.status(welcome.id, "delivered", signature=""),
        "garbage signature": practice.status(welcome.id, "delivered", signature="bm9wZQ=="),
        "another account's token": practice.status(welcome.id, "delivered",
                                                   token="f" * 32),
        # what the app sees behind the proxy: Twilio never signed this URL
        "the Host it sees": practice.status(welcome.id, "delivered",
                                            signed_url=f"http://testserver{path}"),
        # the query is signed too: a callback cannot be pointed at another touch point
        "another ?tp=": practice.status(welcome.id, "delivered",
                                        signed_url=f"{PUBLIC_URL}/webhooks/twilio/status?tp=99"),
        "no query": practice.status(welcome.id, "delivered",
                                    signed_url=f"{PUBLIC_URL}/webhooks/twilio/status"),
    }
    assert {name: r.status_code for name, r in refused.items()} == dict.fromkeys(refused, 403)
    assert practice.snapshot() == before

    accepted = practice.status(welcome.id, "delivered",
                               signed_url=f"{PUBLIC_URL}{path}")
    assert accepted.status_code == 204
    assert practice.tp(welcome.id).status == Status.DELIVERED


def test_without_a_public_url_the_url_as_received_is_verified(sqlite_url: str,
                                                              tmp_path: Path) -> None:
    practice = Practice(sqlite_url, tmp_path, public_url="")
    try:
        [welcome] = practice.welcomed()
        path = f"/webhooks/twilio/status?tp={welcome.id}"
        assert practice.status(welcome.id, "delivered",
                               signed_url=f"{PUBLIC_URL}{path}").status_code == 403
        assert practice.tp(welcome.id).status == Status.SENT
        assert practice.status(welcome.id, "delivered",
                               signed_url=f"http://testserver{path}").status_code == 204
        assert practice.tp(welcome.id).status == Status.DELIVERED
    finally:
        practice.close()


def test_status_callbacks_arrive_in_any_order_once_each_and_never_move_backwards(
        practice: Practice) -> None:
    [welcome] = practice.welcomed()
    sid = welcome.provider_message_id
    assert welcome.status == Status.SENT and sid
    practice.at(MONDAY_9AM + timedelta(seconds=5))
    assert practice.status(welcome.id, "delivered", sid).status_code == 204
    practice.at(MONDAY_9AM + timedelta(seconds=6))
    assert practice.status(welcome.id, "sent", sid).status_code == 204  # late: kept, ignored
    assert practice.status(welcome.id, "sent", sid).status_code == 204  # Twilio retried it
    assert practice.status(welcome.id, "delivered", sid).status_code == 204

    done = practice.tp(welcome.id)
    assert (done.status, done.reason, done.provider_message_id) == (Status.DELIVERED, None, sid)
    assert done.finished_at == MONDAY_9AM + timedelta(seconds=5)
    events = practice.rows(provider_events, touch_point_id=welcome.id)
    assert [(e.provider, e.kind, e.status, e.provider_message_id) for e in events] == [
        ("twilio", "delivered", "delivered", sid), ("twilio", "sent", "sent", sid)]
    assert practice.moves(welcome.id)[-2:] == [
        ("delivery", "sent", "delivered", "delivered", "twilio"),
        ("delivery", None, None, "sent", "twilio"),  # noted, not applied
    ]
    assert len(practice.moves(welcome.id)) == 5  # planned, sending, sent + the two above


def test_a_callback_that_beats_the_senders_own_bookkeeping_settles_the_touch_point(
        practice: Practice) -> None:
    """Twilio's callback can arrive while the dispatcher still waits for the API's answer."""
    answers: list[int] = []
    practice.clinic.sms.script(lambda message: answers.append(
        practice.status(message.touch_point_id, "delivered", "SMfast").status_code))
    [welcome] = practice.welcomed()
    assert answers == [204]
    assert (welcome.status, welcome.reason, welcome.provider_message_id) == (
        Status.DELIVERED, None, "SMfast")
    assert practice.moves(welcome.id)[1:] == [
        ("transition", "planned", "sending", None, "dispatcher"),
        ("delivery", "sending", "delivered", "delivered", "twilio")]


def texted_only(practice: Practice) -> TouchPoint:
    """P1's two-hours-before reminder (a step with no channel but sms), sent Mon 11:00."""
    practice.at(MONDAY_9AM)
    practice.clinic.patients(patient("P1"), baseline=True)  # no welcome (the daily cap)
    practice.clinic.appointments(appointment("A1", "P1", "2026-11-02T13:00:00-06:00"))
    practice.at("2026-11-02T11:00:00-06:00")
    practice.clinic.tick()
    reminder = practice.clinic.one("pre-visit", "two-hours-before")
    assert (reminder.status, reminder.channel) == (Status.SENT, "sms")
    return reminder


def test_a_failed_text_stays_failed_and_carries_the_error_code(practice: Practice) -> None:
    reminder = texted_only(practice)  # no channel after sms: nothing to fall back to
    sid = reminder.provider_message_id
    assert sid is not None
    assert practice.status(reminder.id, "undelivered", sid, error="30003").status_code == 204
    failed = practice.tp(reminder.id)
    assert (failed.status, failed.reason) == (Status.FAILED, "provider_error")
    assert failed.detail == "twilio status undelivered, error 30003"
    # a delivery report that arrives late (or lies) does not resurrect it
    assert practice.status(reminder.id, "delivered", sid).status_code == 204
    assert practice.status(reminder.id, "sent", sid).status_code == 204
    assert (practice.tp(reminder.id).status, practice.tp(reminder.id).reason) == (
        Status.FAILED, "provider_error")
    assert [m[2:4] for m in practice.moves(reminder.id)[-3:]] == [
        ("failed", "failed"), (None, "delivered"), (None, "sent")]
    assert practice.opt_outs() == set()  # 30003 (unreachable) is not an opt-out


def test_a_carrier_failure_falls_back_to_the_steps_next_channel_once(
        practice: Practice) -> None:
    [welcome] = practice.welcomed()  # welcome: channels [sms, email]
    sid = welcome.provider_message_id
    assert sid is not None
    practice.at(MONDAY_9AM + timedelta(minutes=1))
    assert practice.status(welcome.id, "undelivered", sid, error="30003").status_code == 204
    back = practice.tp(welcome.id)
    assert (back.status, back.reason, back.due_at) == (
        Status.PLANNED, "fallback", MONDAY_9AM + timedelta(minutes=1))
    assert back.detail == "twilio status undelivered, error 30003"
    assert practice.moves(welcome.id)[-1] == ("delivery", "sent", "planned", "failed", "twilio")
    assert practice.clinic.history(back)[-1].detail == \
        "twilio status undelivered, error 30003; trying email next"

    practice.clinic.tick()
    emailed = practice.tp(welcome.id)
    assert (emailed.status, emailed.channel, emailed.address) == (
        Status.SENT, "email", "p1@example.com")
    assert [m.to for m in practice.texts()] == [NUMBER]  # the text was not sent again
    assert [m.to for m in practice.emails()] == ["p1@example.com"]
    # a late report about the text does not settle the email
    assert practice.status(welcome.id, "delivered", sid).status_code == 204
    assert practice.tp(welcome.id).status == Status.SENT
    # and a failure of the email has no channel after it: it fails
    practice.at(MONDAY_9AM + timedelta(minutes=2))
    assert practice.sendgrid([sg_event(emailed, "bounce", 1, type="bounce", status="5.1.1",
                                       reason="mailbox does not exist")]).status_code == 204
    assert (practice.tp(welcome.id).status, practice.tp(welcome.id).reason) == (
        Status.FAILED, "provider_error")
    why = practice.cli("why", str(welcome.id))
    assert "trying email next" in why.output


def test_a_fallback_deferred_by_quiet_hours_still_goes_by_the_next_channel(
        practice: Practice) -> None:
    """The carrier turns the welcome text away just before 21:00: the email waits for the
    morning, and the morning sends the email — not the text again."""
    [welcome] = practice.welcomed()  # welcome: channels [sms, email]
    sid = welcome.provider_message_id
    assert sid is not None
    practice.at(utc("2026-11-02T20:59:30-06:00"))
    assert practice.status(welcome.id, "undelivered", sid, error="30003").status_code == 204
    practice.at(utc("2026-11-02T21:01:00-06:00"))
    practice.clinic.tick()
    waiting = practice.tp(welcome.id)
    assert (waiting.status, waiting.reason) == (Status.PLANNED, "fallback")
    assert waiting.due_at == utc("2026-11-03T08:00:00-06:00")
    assert "quiet hours" in (waiting.detail or "")
    practice.at(utc("2026-11-03T08:01:00-06:00"))
    practice.clinic.tick()
    emailed = practice.tp(welcome.id)
    assert (emailed.status, emailed.channel) == (Status.SENT, "email")
    assert [m.to for m in practice.texts()] == [NUMBER]  # the text was not sent again
    assert [m.touch_point_id for m in practice.emails()].count(welcome.id) == 1


def test_a_fallback_with_no_usable_channel_left_fails_with_both_reasons(
        practice: Practice) -> None:
    [welcome] = practice.welcomed(patient("P1", email=""))  # [sms, email]; no email on file
    practice.at(MONDAY_9AM + timedelta(minutes=1))
    response = practice.status(welcome.id, "undelivered", welcome.provider_message_id or "",
                               error="30006")
    assert response.status_code == 204
    assert practice.tp(welcome.id).reason == "fallback"  # the step has an email channel
    practice.clinic.tick()
    failed = practice.tp(welcome.id)
    assert (failed.status, failed.reason) == (Status.FAILED, "provider_error")
    assert (failed.detail or "").startswith(
        "twilio status undelivered, error 30006; no channel left to try (")
    assert "email" in (failed.detail or "").split("no channel left to try")[1]
    assert practice.emails() == [] and len(practice.texts()) == 1


def test_no_fallback_after_the_deadline(practice: Practice) -> None:
    reminder = practice.reminded()  # three-days-before: [sms, email], expires after 1 day
    assert reminder.expires_at is not None
    practice.at(reminder.expires_at + timedelta(minutes=1))
    response = practice.status(reminder.id, "failed", reminder.provider_message_id or "",
                               error="30005")
    assert response.status_code == 204
    failed = practice.tp(reminder.id)
    assert (failed.status, failed.reason, failed.detail) == (
        Status.FAILED, "provider_error", "twilio status failed, error 30005")
    practice.clinic.tick()
    assert [m.to for m in practice.emails()] == [STAFF]  # only the recovery case's alert


def test_a_landline_30006_is_not_textable_later_steps_go_straight_to_email(
        practice: Practice) -> None:
    [welcome] = practice.welcomed()
    callback = load_payload("twilio_status_callback_30006.json")
    callback.update(MessageSid="SM30006", SmsSid="SM30006", To=NUMBER)
    practice.at(MONDAY_9AM + timedelta(minutes=1))
    response = practice.twilio(f"/webhooks/twilio/status?tp={welcome.id}", callback)
    assert response.status_code == 204
    assert practice.opt_outs() == {("sms", NUMBER, "all", "landline")}
    assert practice.tp(welcome.id).reason == "fallback"
    practice.clinic.tick()
    assert (practice.tp(welcome.id).status, practice.tp(welcome.id).channel) == (
        Status.SENT, "email")

    # the next text-or-email step goes by email without trying the number
    practice.clinic.appointments(appointment("A1", "P1", "2026-11-05T15:00:00-06:00"))
    practice.at("2026-11-02T10:00:00-06:00")
    practice.clinic.tick()
    reminder = practice.clinic.one("pre-visit", "three-days-before")
    assert (reminder.status, reminder.channel) == (Status.SENT, "email")
    assert "sms: the address opted out" in (practice.clinic.history(reminder)[1].detail or "")
    assert [m.to for m in practice.texts()] == [NUMBER]  # only the welcome was ever texted


def test_error_21610_in_a_status_callback_opts_the_number_out_of_texts(
        practice: Practice) -> None:
    [welcome] = practice.welcomed()
    response = practice.status(welcome.id, "undelivered", "SM21610", error="21610")
    assert response.status_code == 204
    failed = practice.tp(welcome.id)
    assert (failed.status, failed.reason) == (Status.FAILED, "opted_out")  # no fallback
    assert "21610" in (failed.detail or "")
    assert practice.opt_outs() == {("sms", NUMBER, "all", "twilio")}
    # the next text-only message to that number is skipped, not sent
    practice.clinic.appointments(appointment("A1", "P1", "2026-11-02T13:00:00-06:00"))
    practice.at("2026-11-02T11:00:00-06:00")
    practice.clinic.tick()
    reminder = practice.clinic.one("pre-visit", "two-hours-before")
    assert (reminder.status, reminder.reason) == (Status.SKIPPED, "opted_out")
    assert len(practice.texts()) == 1


def test_an_unknown_status_is_recorded_and_noted_not_crashed_on(practice: Practice) -> None:
    [welcome] = practice.welcomed()
    response = practice.status(welcome.id, "foo", welcome.provider_message_id or "")
    assert response.status_code == 204
    [event] = practice.rows(provider_events)
    assert (event.kind, event.status, event.touch_point_id) == ("unknown", "foo", welcome.id)
    assert practice.tp(welcome.id).status == Status.SENT
    assert practice.moves(welcome.id)[-1] == ("delivery", None, None, "unknown", "twilio")
    assert practice.clinic.history(welcome)[-1].detail == "twilio status foo"
    # a callback for a touch point we do not have is kept too, matched to nothing
    assert practice.status(999, "delivered", "SMnobody").status_code == 204
    orphan = practice.rows(provider_events, provider_message_id="SMnobody")
    assert [(e.kind, e.touch_point_id) for e in orphan] == [("delivered", None)]


def test_an_interrupted_send_is_reconciled_by_a_later_callback(practice: Practice) -> None:
    practice.clinic.sms.script(AmbiguousChannelError("read timeout", provider="fake"))
    [welcome] = practice.welcomed()
    assert (welcome.status, welcome.provider_message_id) == (Status.UNKNOWN, None)

    practice.at(MONDAY_9AM + timedelta(minutes=1))
    assert practice.status(welcome.id, "sent", "SMreconciled").status_code == 204
    settled = practice.tp(welcome.id)
    assert (settled.status, settled.reason) == (Status.SENT, None)
    assert settled.provider_message_id == "SMreconciled"
    assert practice.moves(welcome.id)[-1] == ("delivery", "unknown", "sent", "sent", "twilio")

    # a later callback finds it by its SID alone, too (a callback URL without ?tp=)
    practice.at(MONDAY_9AM + timedelta(minutes=2))
    response = practice.twilio("/webhooks/twilio/status", {
        "MessageSid": "SMreconciled", "MessageStatus": "delivered", "To": NUMBER})
    assert response.status_code == 204
    assert practice.tp(welcome.id).status == Status.DELIVERED
    assert "  why         It was delivered by sms (fake) at 2026-11-02T15:01:00Z." in \
        practice.cli("why", str(welcome.id)).output.splitlines()


# --------------------------------------------------------------------------- staff settle


def test_staff_list_unknown_touch_points_and_settle_them_with_a_note(
        practice: Practice) -> None:
    practice.clinic.sms.script(AmbiguousChannelError("read timeout", provider="fake"),
                               AmbiguousChannelError("read timeout", provider="fake"))
    practice.clinic.email.script(AmbiguousChannelError("read timeout", provider="fake"))
    texted, mailed, resent = practice.welcomed(
        patient("P1"), patient("P2", **EMAIL_ONLY, phone="(312) 555-0102"),
        patient("P3", phone="(312) 555-0103"))
    assert [t.status for t in (texted, mailed, resent)] == [Status.UNKNOWN] * 3
    assert practice.cli("unknown").output.splitlines()[0].split() == [
        "id", "patient", "journey", "/", "step", "channel", "to", "attempted", "deadline",
        "waiting", "for"]

    listed = practice.cli("unknown", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["patient_id"], r["channel"], r["address"], r["waiting_for"])
            for r in rows] == [
        (texted.id, "P1", "sms", "+1••••••••00", "staff"),  # the fake cannot look up
        (mailed.id, "P2", "email", "p•••@example.com", "staff"),
        (resent.id, "P3", "sms", "+1••••••••03", "staff")]
    assert rows[0]["attempted_at"] == "2026-11-02T15:00:00Z"
    assert rows[0]["reason"] == "ambiguous"

    practice.at(MONDAY_9AM + timedelta(minutes=30))
    sent = practice.cli("settle", str(texted.id), "--sent", "--note",
                        "Twilio console shows it delivered")
    assert sent.exit_code == 0, sent.output
    assert sent.output == (f"Touch point {texted.id}: unknown → sent (reconciled); the note "
                           f"is in its history (touchpoint why {texted.id}).\n")
    assert practice.moves(texted.id)[-1] == ("transition", "unknown", "sent", "reconciled",
                                             "staff")
    assert practice.clinic.history(practice.tp(texted.id))[-1].detail == \
        "staff: Twilio console shows it delivered"
    dropped = practice.cli("settle", str(mailed.id), "--drop", "--note", "patient called")
    assert dropped.exit_code == 0, dropped.output
    assert (practice.tp(mailed.id).status, practice.tp(mailed.id).reason) == (
        Status.CANCELLED, "dropped")
    again = practice.cli("settle", str(resent.id), "--resend", "--note", "not in Twilio")
    assert again.exit_code == 0, again.output
    assert (practice.tp(resent.id).status, practice.tp(resent.id).reason) == (
        Status.PLANNED, "resend")
    practice.clinic.tick()
    assert practice.tp(resent.id).status == Status.SENT
    assert [m.to for m in practice.texts()] == ["+13125550103"]  # only the one re-sent

    assert practice.cli("unknown").output == "No touch point is unknown.\n"
    assert json.loads(practice.cli("unknown", "--json").stdout) == []
    # one line for what cannot be done
    refused = {
        "settled already": practice.cli("settle", str(texted.id), "--drop", "--note", "x"),
        "no such": practice.cli("settle", "999", "--sent", "--note", "x"),
        "empty note": practice.cli("settle", str(texted.id), "--sent", "--note", " "),
    }
    assert {name: r.exit_code for name, r in refused.items()} == dict.fromkeys(refused, 1)
    assert refused["settled already"].output == (
        f"Error: touch point {texted.id} is sent, not unknown: only unknown touch points "
        "are settled by staff\n")
    assert refused["no such"].output == "Error: no touch point 999\n"
    for flags in ([], ["--sent", "--drop"]):
        unclear = practice.cli("settle", str(texted.id), *flags, "--note", "x")
        assert unclear.exit_code == 2
        assert "say what happened: one of --sent, --resend or --drop" in unclear.output
    assert practice.tp(texted.id).status == Status.SENT


# --------------------------------------------------------------------------- SendGrid events

EMAIL_ONLY = {"sms_consent": "no"}  # their welcome goes by email


def sg_event(tp: TouchPoint, event: str, number: int, **fields: Any) -> dict[str, Any]:
    """One event as SendGrid's Event Webhook posts it (custom args are top-level keys)."""
    return {"email": tp.address, "timestamp": int(MONDAY_9AM.timestamp()) + number,
            "smtp-id": f"<tp{tp.id}@riversidept.example>", "event": event, "category": [],
            "sg_event_id": f"ev-{tp.id}-{number}-{event}",
            "sg_message_id": f"{tp.provider_message_id}.filterdrecv-5645d9c87f-6r2ch-1-0",
            "touch_point_id": str(tp.id), **fields}


def test_sendgrid_events_are_verified_over_the_raw_body(practice: Practice) -> None:
    [welcome] = practice.welcomed(patient("P1", **EMAIL_ONLY))
    assert welcome.channel == "email"
    batch = [sg_event(welcome, "delivered", 1, response="250 OK")]
    signed = json.dumps(batch).encode()
    before = practice.snapshot()
    other_key = ec.generate_private_key(ec.SECP256R1())
    refused = {
        "a modified body": practice.sendgrid(batch, body=signed.replace(b"delivered",
                                                                        b"bounce")),
        "the same JSON, re-spaced": practice.sendgrid(batch, body=json.dumps(
            batch, indent=1).encode()),
        "no signature headers": practice.sendgrid(batch, headers={}),
        "another key": practice.sendgrid(batch, key=other_key),
    }
    good = practice.sendgrid(batch)
    assert good.status_code == 204
    after_good = practice.snapshot()
    assert practice.tp(welcome.id).status == Status.DELIVERED
    # the signature covers the timestamp too: a genuine signature with another timestamp
    replayed = {**good.request.headers,
                "x-twilio-email-event-webhook-timestamp": "1793718001"}
    refused["another timestamp"] = practice.client.post(
        "/webhooks/sendgrid/events", content=signed, headers=replayed)
    assert {n: r.status_code for n, r in refused.items()} == dict.fromkeys(refused, 403)
    assert before != after_good
    assert practice.snapshot() == after_good


def test_sendgrid_events_show_in_the_touch_point_history_log_and_why(
        practice: Practice) -> None:
    opened, bounced, dropped = practice.welcomed(
        patient("P1", **EMAIL_ONLY), patient("P2", **EMAIL_ONLY, phone="(312) 555-0102"),
        patient("P3", **EMAIL_ONLY, phone="(312) 555-0103"))
    assert [t.channel for t in (opened, bounced, dropped)] == ["email"] * 3
    batch = [
        sg_event(opened, "processed", 1),
        sg_event(opened, "deferred", 2, response="421 try again later", attempt="1"),
        sg_event(opened, "delivered", 3, response="250 OK"),
        sg_event(opened, "open", 4, useragent="Mozilla/5.0", ip="203.0.113.9"),
        sg_event(opened, "click", 5, url="https://riversidept.example/intake"),
        sg_event(opened, "machine_opened", 6),  # a name we do not map
        sg_event(bounced, "bounce", 1, type="bounce", status="5.1.1",
                 reason="mailbox does not exist"),
        sg_event(dropped, "dropped", 1, reason="Bounced Address"),
    ]
    practice.at(MONDAY_9AM + timedelta(minutes=1))
    assert practice.sendgrid(batch).status_code == 204
    assert practice.sendgrid(batch).status_code == 204  # SendGrid retries: nothing new

    assert [(e.kind, e.status) for e in practice.rows(provider_events,
                                                      touch_point_id=opened.id)] == [
        ("queued", "processed"), ("deferred", "deferred"), ("delivered", "delivered"),
        ("opened", "open"), ("clicked", "click"), ("unknown", "machine_opened")]
    assert len(practice.rows(provider_events)) == len(batch)
    assert practice.moves(opened.id)[3:] == [
        ("delivery", None, None, "queued", "sendgrid"),
        ("delivery", None, None, "deferred", "sendgrid"),
        ("delivery", "sent", "delivered", "delivered", "sendgrid"),
        ("delivery", None, None, "opened", "sendgrid"),
        ("delivery", None, None, "clicked", "sendgrid"),
        ("delivery", None, None, "unknown", "sendgrid"),
    ]
    states = {t.id: (t.status, t.reason, t.detail) for t in practice.clinic.touch_points()}
    assert states[opened.id][:2] == (Status.DELIVERED, None)
    assert states[bounced.id] == (Status.FAILED, "provider_error",
                                  "sendgrid bounce: bounce mailbox does not exist 5.1.1")
    assert states[dropped.id] == (Status.FAILED, "provider_error",
                                  "sendgrid dropped: Bounced Address")

    log = practice.cli("log", "--json", "--journey", "welcome")
    assert log.exit_code == 0, log.output
    assert {row["patient_id"]: (row["status"], row["reason"])
            for row in json.loads(log.stdout) if row["step"] == "welcome"} == {
        "P1": ("delivered", None), "P2": ("failed", "provider_error"),
        "P3": ("failed", "provider_error")}
    [row] = [r for r in json.loads(log.stdout) if r["id"] == opened.id]
    assert row["events"] == ["queued", "deferred", "delivered", "opened", "clicked", "unknown"]
    table = practice.cli("log", "--journey", "welcome")
    assert "queued, deferred, delivered, opened, clicked, unknown" in \
        " ".join(table.stdout.split())
    why = practice.cli("why", str(opened.id))
    assert why.exit_code == 0, why.output
    lines = [line.split("  ", 3)[-1].strip() for line in why.output.splitlines()
             if line.startswith("    2026-")]
    assert lines[3:] == [
        "delivery               sendgrid   queued, sendgrid processed",
        "delivery               sendgrid   deferred, sendgrid deferred: 421 try again later",
        "sent → delivered       sendgrid   delivered, sendgrid delivered: 250 OK",
        "delivery               sendgrid   opened, sendgrid open",
        "delivery               sendgrid   clicked, sendgrid click",
        "delivery               sendgrid   unknown, sendgrid machine_opened",
    ]
    bounced_why = practice.cli("why", str(bounced.id)).output
    assert "  status      failed (provider_error)" in bounced_why


def test_spam_reports_and_unsubscribes_opt_the_address_out(practice: Practice) -> None:
    spam, unsub, group, kept = practice.welcomed(*(
        patient(f"P{n}", **EMAIL_ONLY, phone=f"(312) 555-010{n}") for n in range(1, 5)))
    practice.at(MONDAY_9AM + timedelta(minutes=2))
    response = practice.sendgrid([
        sg_event(spam, "spamreport", 1),
        sg_event(unsub, "unsubscribe", 1),
        sg_event(group, "group_unsubscribe", 1, asm_group_id=42),
        sg_event(kept, "delivered", 1)])
    assert response.status_code == 204
    assert practice.opt_outs() == {
        ("email", "p1@example.com", "all", "sendgrid"),
        ("email", "p2@example.com", "all", "sendgrid"),
        ("email", "p3@example.com", "marketing", "sendgrid")}
    assert {practice.tp(t.id).status for t in (spam, unsub, group)} == {Status.SENT}

    practice.at(MONDAY_9AM + timedelta(minutes=10))
    practice.clinic.tick()
    after = {t.patient_id: (t.status, t.reason)
             for t in practice.clinic.touch_points(journey="welcome", step="what-to-expect")}
    assert sorted(after.values()) == [
        (Status.SENT, None), (Status.SENT, None),  # P3: only marketing; P4: nothing
        (Status.SKIPPED, "opted_out"), (Status.SKIPPED, "opted_out")]
    assert after[spam.patient_id] == after[unsub.patient_id] == (Status.SKIPPED, "opted_out")
    assert sorted(m.to for m in practice.emails()[4:]) == ["p3@example.com", "p4@example.com"]


def test_a_bounce_keeps_its_smtp_status_code_in_the_detail(sqlite_practice: Practice) -> None:
    [welcome] = sqlite_practice.welcomed(patient("P1", **EMAIL_ONLY))
    response = sqlite_practice.sendgrid([sg_event(
        welcome, "bounce", 1, type="bounce", status="5.1.1",
        reason="550 5.1.1 The email account that you tried to reach does not exist.")])
    assert response.status_code == 204
    failed = sqlite_practice.tp(welcome.id)
    assert failed.status == Status.FAILED
    assert failed.detail == ("sendgrid bounce: bounce 550 5.1.1 The email account that you "
                             "tried to reach does not exist. 5.1.1")


def blocked_bounce(tp: TouchPoint, number: int) -> dict[str, Any]:
    """tests/payloads' blocked bounce, about ``tp``."""
    [event] = load_payload("sendgrid_event_bounce_blocked.json")
    own = sg_event(tp, "bounce", number)
    event.update({key: own[key] for key in ("email", "timestamp", "sg_event_id",
                                            "sg_message_id", "touch_point_id")})
    return dict(event)


def test_a_blocked_bounce_is_temporary_the_email_is_retried(practice: Practice) -> None:
    [welcome] = practice.welcomed(patient("P1", **EMAIL_ONLY))  # email: its last channel
    assert welcome.channel == "email"
    practice.at(MONDAY_9AM + timedelta(minutes=1))
    assert practice.sendgrid([blocked_bounce(welcome, 1)]).status_code == 204
    retried = practice.tp(welcome.id)
    # the retry policy's first delay (dispatch.retry_backoff: 1 minute)
    assert (retried.status, retried.reason) == (Status.PLANNED, "retry")
    assert retried.due_at == MONDAY_9AM + timedelta(minutes=2)
    assert (retried.detail or "").startswith("sendgrid bounce: blocked 550 5.7.1")
    assert [e.kind for e in practice.rows(provider_events)] == ["bounced"]
    assert practice.opt_outs() == set()

    practice.at(MONDAY_9AM + timedelta(minutes=2))
    practice.clinic.tick()
    assert (practice.tp(welcome.id).status, practice.tp(welcome.id).attempts) == (
        Status.SENT, 2)
    assert [m.to for m in practice.emails()] == ["p1@example.com"] * 2
    # a real bounce (type bounce) is still final
    assert practice.sendgrid([sg_event(practice.tp(welcome.id), "bounce", 2, type="bounce",
                                       status="5.1.1")]).status_code == 204
    assert practice.tp(welcome.id).status == Status.FAILED


def test_sendgrid_event_names_are_matched_in_any_case(sqlite_practice: Practice) -> None:
    practice = sqlite_practice
    delivered, unsubscribed = practice.welcomed(
        patient("P1", **EMAIL_ONLY), patient("P2", **EMAIL_ONLY, phone="(312) 555-0102"))
    assert practice.sendgrid([sg_event(delivered, "Delivered", 1),
                              sg_event(unsubscribed, "UNSUBSCRIBE", 1)]).status_code == 204
    assert [(e.kind, e.status) for e in practice.rows(provider_events)] == [
        ("delivered", "Delivered"), ("unsubscribed", "UNSUBSCRIBE")]
    assert practice.tp(delivered.id).status == Status.DELIVERED
    assert practice.opt_outs() == {("email", "p2@example.com", "all", "sendgrid")}


def test_a_sendgrid_signature_older_than_ten_minutes_is_refused(
        sqlite_practice: Practice) -> None:
    practice = sqlite_practice
    [welcome] = practice.welcomed(patient("P1", **EMAIL_ONLY))
    signed_at = str(int(MONDAY_9AM.timestamp()))
    batch = [sg_event(welcome, "delivered", 1)]
    practice.at(MONDAY_9AM + timedelta(minutes=10, seconds=1))
    before = practice.snapshot()
    stale = practice.sendgrid(batch, timestamp=signed_at)
    assert (stale.status_code, stale.text) == (403, "signature too old (or dated in the future)")
    assert practice.snapshot() == before
    # nor one dated further ahead than that (a replay kept for later)
    practice.at(MONDAY_9AM - timedelta(minutes=10, seconds=1))
    assert practice.sendgrid(batch, timestamp=signed_at).status_code == 403
    assert practice.snapshot() == before
    practice.at(MONDAY_9AM - timedelta(minutes=10))  # a clock a little behind is fine
    assert practice.sendgrid(batch, timestamp=signed_at).status_code == 204
    assert practice.tp(welcome.id).status == Status.DELIVERED


def test_a_webhook_body_over_one_mib_is_refused_before_it_is_read(
        sqlite_practice: Practice) -> None:
    practice = sqlite_practice
    [welcome] = practice.welcomed()
    before = practice.snapshot()
    big = b"[" + b" " * (1024 * 1024) + b"]"
    declared = practice.client.post("/webhooks/sendgrid/events", content=big,
                                    headers={"Content-Type": "application/json"})
    assert declared.status_code == 413

    def stream() -> Iterator[bytes]:  # no Content-Length
        for _ in range(64):
            yield b"MessageStatus=delivered&" + b"x" * 65536

    streamed = practice.client.post(f"/webhooks/twilio/status?tp={welcome.id}",
                                    content=stream(),
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert streamed.status_code == 413
    assert practice.snapshot() == before
    # 1 MiB exactly is still taken (and refused for its signature, as any unsigned body)
    exact = practice.client.post("/webhooks/sendgrid/events",
                                 content=b"[" + b" " * (1024 * 1024 - 2) + b"]",
                                 headers={"Content-Type": "application/json"})
    assert exact.status_code == 403


def test_the_body_limit_stops_reading_a_stream_once_it_passes_one_mib() -> None:
    """The middleware itself, with an ASGI stream of 64 KiB chunks and no Content-Length
    (the test client would buffer a stream before the app saw it)."""
    pulled: list[int] = []
    sent: list[Message] = []
    reached: list[bool] = []

    async def receive() -> Message:
        pulled.append(len(pulled))
        return {"type": "http.request", "body": b"x" * 65536, "more_body": len(pulled) < 64}

    async def send(message: Message) -> None:
        sent.append(message)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(True)

    scope: Scope = {"type": "http", "method": "POST", "path": "/webhooks/sendgrid/events",
                    "headers": [(b"content-type", b"application/json")]}
    asyncio.run(BodyLimit(app)(scope, receive, send))
    assert reached == []
    assert len(pulled) == 17  # 16 chunks are 1 MiB; the 17th passes it, and reading stops
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 413

    # under the limit, the app gets every chunk, in order
    pulled.clear()
    got: list[bytes] = []

    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            got.append(message["body"])
            if not message["more_body"]:
                break

    async def small() -> Message:
        pulled.append(len(pulled))
        return {"type": "http.request", "body": bytes([len(pulled)]) * 10,
                "more_body": len(pulled) < 3}

    asyncio.run(BodyLimit(reader)(scope, small, send))
    assert got == [b"\x01" * 10, b"\x02" * 10, b"\x03" * 10]


# --------------------------------------------------------------------------- inbound texts

STOP_TEXT = ("Riverside Physical Therapy: you're unsubscribed and will get no more texts from "
             "us. Reply START to resubscribe. Questions: (312) 555-0199")
START_TEXT = ("Riverside Physical Therapy: you're subscribed to texts about your care again. "
              "Msg&data rates may apply. Reply STOP to opt out. Questions: (312) 555-0199")


def replies(practice: Practice) -> list[tuple[str, str, str, str]]:
    """(journey, step, status, address) of the replies and staff alerts, in order."""
    return [(t.journey, t.step, t.status, t.address or "")
            for t in sorted(practice.clinic.touch_points(), key=lambda t: t.id)
            if t.journey in ("replies", "staff-alerts")]


def inbound(practice: Practice) -> list[tuple[str, str, str]]:
    return [(r.body, r.intent, r.staff_status) for r in practice.rows(inbound_messages)]


STOP_WORDS = ["STOP", "stop", "Quit", "END", "revoke", "Opt out", "cancel", "UNSUBSCRIBE",
              "Stop!", "  unsubscribe.  ", "opt out!!", "End."]
NOT_STOP = ["Can I stop by tomorrow?", "please stop texting me at 7am", "stopp", "ended up ok"]


def test_each_stop_word_as_the_whole_message_opts_the_number_out(
        sqlite_practice: Practice) -> None:
    words = STOP_WORDS + NOT_STOP
    numbers = [f"+1312555{n:04d}" for n in range(200, 200 + len(words))]
    sqlite_practice.welcomed(*(patient(f"P{n}", phone=number)
                               for n, number in enumerate(numbers)))
    for n, (body, number) in enumerate(zip(words, numbers, strict=True)):
        assert sqlite_practice.text_in(body, f"SM{n}", sender=number).status_code == 200
    stopped = numbers[:len(STOP_WORDS)]
    assert sqlite_practice.opt_outs() == {("sms", number, "all", "sms reply")
                                          for number in stopped}
    confirmations = [(m.to, m.body) for m in sqlite_practice.texts()[len(numbers):]]
    assert confirmations == [(number, STOP_TEXT) for number in stopped]
    assert inbound(sqlite_practice) == [(body, "stop", "") for body in STOP_WORDS] + [
        (body, "other", "new") for body in NOT_STOP]  # the rest is for staff to read


def test_stop_takes_effect_at_once_for_every_purpose_and_is_confirmed_once(
        practice: Practice) -> None:
    [welcome] = practice.welcomed()
    practice.clinic.appointments(appointment("A1", "P1", "2026-11-02T13:00:00-06:00"))
    practice.clinic.tick()
    practice.at("2026-11-02T09:30:00-06:00")
    assert practice.text_in("STOP", "SMstop1").status_code == 200
    assert practice.opt_outs() == {("sms", NUMBER, "all", "sms reply")}
    assert [(m.to, m.body, m.journey, m.step) for m in practice.texts()[1:]] == [
        (NUMBER, STOP_TEXT, "replies", "stop")]
    assert replies(practice) == [("replies", "stop", "sent", NUMBER)]

    practice.at("2026-11-02T09:31:00-06:00")
    assert practice.text_in("stop", "SMstop2").status_code == 200  # a second STOP
    assert practice.text_in("STOP", "SMstop1").status_code == 200  # Twilio retried the first
    assert len(practice.texts()) == 2  # the welcome and one confirmation
    assert inbound(practice) == [("STOP", "stop", ""), ("stop", "stop", "")]
    assert replies(practice) == [("replies", "stop", "sent", NUMBER)]
    # each reply is in the history of the text it answers (the retry is not a new one)
    assert [m for m in practice.moves(welcome.id) if m[3] == "inbound"] == [
        ("delivery", None, None, "inbound", "sms reply")] * 2

    # pending texts of every journey are skipped; email is not a text
    practice.at("2026-11-02T11:00:00-06:00")
    practice.clinic.tick()
    reminder = practice.clinic.one("pre-visit", "two-hours-before")
    assert (reminder.status, reminder.reason) == (Status.SKIPPED, "opted_out")
    assert practice.clinic.one("welcome", "what-to-expect").status == Status.SENT
    assert len(practice.texts()) == 2
    assert practice.tp(welcome.id).status == Status.SENT


def test_start_unstop_and_yes_opt_back_in_with_a_confirmation(practice: Practice) -> None:
    practice.welcomed()
    conversation = [("STOP", STOP_TEXT), ("Start", START_TEXT), ("stop.", STOP_TEXT),
                    ("UNSTOP", START_TEXT), ("end", STOP_TEXT), ("Yes", START_TEXT)]
    opted_out_after = []
    for number, (body, _) in enumerate(conversation):
        practice.at(MONDAY_9AM + timedelta(minutes=number + 1))
        assert practice.text_in(body, f"SM{number}").status_code == 200
        opted_out_after.append(bool(practice.opt_outs()))
    assert opted_out_after == [True, False, True, False, True, False]
    assert [m.body for m in practice.texts()[1:]] == [text for _, text in conversation]
    assert [intent for _, intent, _ in inbound(practice)] == [
        "stop", "start", "stop", "start", "stop", "start"]


def test_help_answers_with_the_practice_frequency_rates_and_how_to_stop(
        sqlite_practice: Practice) -> None:
    sqlite_practice.welcomed()
    assert sqlite_practice.text_in("help", "SMhelp").status_code == 200
    [answer] = sqlite_practice.texts()[1:]
    assert (answer.to, answer.body) == (NUMBER, (
        "Riverside Physical Therapy: appointment reminders & care msgs, 1-3/week. Msg&data "
        "rates may apply. Call (312) 555-0199. Reply STOP to opt out."))
    assert sqlite_practice.opt_outs() == set()
    assert inbound(sqlite_practice) == [("help", "help", "")]
    assert replies(sqlite_practice) == [("replies", "help", "sent", NUMBER)]


def test_c_confirms_the_visit_of_the_reminder(practice: Practice) -> None:
    reminder = practice.reminded()
    practice.at("2026-11-02T10:30:00-06:00")
    assert practice.text_in("C", "SMc").status_code == 200

    [visit] = practice.rows(appointments)
    assert visit.confirmed_at == utc("2026-11-02T10:30:00-06:00")
    assert [m.body for m in practice.texts()[1:]] == [
        "Riverside Physical Therapy: thanks, you're confirmed for Thu, Nov 5 at 3:00 PM. See "
        "you then! (312) 555-0199. STOP to opt out"]
    assert replies(practice) == [("replies", "confirmed", "sent", NUMBER)]
    assert practice.moves(reminder.id)[-1] == ("note", None, None, "confirmed", "sms reply")
    [message] = practice.rows(inbound_messages)
    assert (message.intent, message.touch_point_id, message.appointment_id,
            message.staff_status) == ("confirm", reminder.id, visit.id, "")
    assert practice.emails() == []  # nothing for staff to do
    # the day before, a confirmed visit is not asked to confirm again
    practice.at("2026-11-04T10:00:00-06:00")
    practice.clinic.tick()
    assert practice.texts()[-1].body == (
        "Riverside Physical Therapy: Ana, see you tomorrow, Thu, Nov 5 at 3:00 PM. Need to "
        "change it? Reply R. (312) 555-0199. STOP to opt out")

    log = practice.cli("log", "--json", "--journey", "pre-visit")
    assert log.exit_code == 0, log.output
    assert {row["step"]: row["appointment_confirmed"] for row in json.loads(log.stdout)} == {
        "three-days-before": True, "one-day-before": True, "two-hours-before": True}
    table = practice.cli("log", "--journey", "pre-visit").stdout.splitlines()
    assert [line.split()[-1] for line in table if "-before" in line] == ["confirmed"] * 3


def test_confirm_and_reschedule_words(sqlite_practice: Practice) -> None:
    words = [("c", "confirm"), ("Confirm.", "confirm"), ("YES", "confirm"),
             ("R", "reschedule"), ("reschedule!", "reschedule")]
    numbers = [f"+1312555{n:04d}" for n in range(300, 300 + len(words))]
    sqlite_practice.at(MONDAY_9AM)
    sqlite_practice.clinic.patients(*(patient(f"P{n}", phone=number)
                                      for n, number in enumerate(numbers)), baseline=True)
    sqlite_practice.clinic.appointments(*(appointment(f"A{n}", f"P{n}", "2026-11-05T15:00-06:00")
                                          for n in range(len(numbers))))
    sqlite_practice.clinic.tick()
    sqlite_practice.at("2026-11-02T10:00:00-06:00")
    sqlite_practice.clinic.tick()  # a reminder to each
    for n, ((body, _), number) in enumerate(zip(words, numbers, strict=True)):
        assert sqlite_practice.text_in(body, f"SM{n}", sender=number).status_code == 200
    assert inbound(sqlite_practice) == [
        (body, intent, "new" if intent == "reschedule" else "") for body, intent in words]
    confirmed = {row.external_id: row.confirmed_at is not None
                 for row in sqlite_practice.rows(appointments)}
    assert confirmed == {"A0": True, "A1": True, "A2": True, "A3": False, "A4": False}
    assert [(m.to, m.step) for m in sqlite_practice.texts()[len(numbers):]] == [
        (number, "confirmed" if intent == "confirm" else "reschedule")
        for (_, intent), number in zip(words, numbers, strict=True)]


def test_r_asks_to_reschedule_tells_the_patient_and_alerts_staff(practice: Practice) -> None:
    reminder = practice.reminded()
    practice.at("2026-11-02T10:30:00-06:00")
    assert practice.text_in("R", "SMr").status_code == 200

    assert [m.body for m in practice.texts()[1:]] == [
        "Riverside Physical Therapy: got it - our team will contact you to find a new time. "
        "You can also call us at (312) 555-0199. STOP to opt out"]
    [alert] = practice.emails()
    assert (alert.to, alert.subject, alert.journey, alert.step) == (
        STAFF, "Reschedule request from Ana Reyes", "staff-alerts", "reschedule-request")
    assert ("Ana Reyes (patient P1) asked to reschedule the visit on Thursday, November 5 at "
            "3:00 PM with Maya Chen, DPT.") in alert.body
    assert 'Their text: "R"' in alert.body
    assert replies(practice) == [("replies", "reschedule", "sent", NUMBER),
                                 ("staff-alerts", "reschedule-request", "sent", STAFF)]
    staff_tp = practice.clinic.one("staff-alerts", "reschedule-request")
    assert (staff_tp.recipient, staff_tp.channel, staff_tp.purpose) == (
        "staff", "email", "transactional")
    assert practice.moves(reminder.id)[-1] == (
        "note", None, None, "reschedule_requested", "sms reply")
    [visit] = practice.rows(appointments)
    assert visit.confirmed_at is None
    listed = practice.cli("inbox", "--json")
    assert [(m["intent"], m["patient_id"], m["body"]) for m in json.loads(listed.stdout)] == [
        ("reschedule", "P1", "R")]


def test_any_other_reply_waits_in_the_inbox_and_alerts_staff_until_done(
        practice: Practice) -> None:
    practice.welcomed()
    practice.at("2026-11-02T09:20:00-06:00")
    assert practice.text_in("Can I bring my dog?", "SMdog").status_code == 200
    practice.at("2026-11-02T09:25:00-06:00")
    assert practice.text_in("who is this", "SMstranger", sender="+13125550177"
                            ).status_code == 200

    assert practice.texts()[1:] == []  # the patient gets no automatic answer
    alerts = {m.subject: m for m in practice.emails()}
    assert set(alerts) == {"A patient replied: Ana Reyes", "A patient replied"}
    assert alerts["A patient replied: Ana Reyes"].to == STAFF
    assert 'Ana Reyes (patient P1) texted:\n\n"Can I bring my dog?"' in \
        alerts["A patient replied: Ana Reyes"].body
    assert 'A number we do not know (+1••••••••77) texted:\n\n"who is this"' in \
        alerts["A patient replied"].body
    assert [row[1:] for row in inbound(practice)] == [("other", "new"), ("other", "new")]
    # the patient's reply shows on the text it answers; the stranger's on nothing
    [welcome] = practice.clinic.touch_points(journey="welcome", step="welcome")
    assert [m[3] for m in practice.moves(welcome.id)].count("inbound") == 1
    # and counts as a reply to that step in the report
    assert [row.touch_point_id for row in practice.rows(inbound_messages)] == [welcome.id, None]

    listed = practice.cli("inbox")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines == [
        "#2  Mon 02 Nov 09:25  unknown number +1••••••••77  [other]",
        '      "who is this"',
        "#1  Mon 02 Nov 09:20  P1 Ana Reyes  [other]",
        '      "Can I bring my dog?"']
    done = practice.cli("inbox", "done", "1")
    assert (done.exit_code, done.output) == (0, "message 1 marked done.\n")
    left = json.loads(practice.cli("inbox", "--json").stdout)
    assert [m["id"] for m in left] == [2]
    everything = json.loads(practice.cli("inbox", "--all", "--json").stdout)
    assert {m["id"]: m["staff_status"] for m in everything} == {1: "done", 2: "new"}
    again = practice.cli("inbox", "done", "99")
    assert again.exit_code == 1
    assert "no inbox message 99" in again.output


def test_a_spanish_speaking_patient_is_answered_in_spanish(sqlite_practice: Practice) -> None:
    sqlite_practice.reminded(language="es")
    assert sqlite_practice.text_in("c", "SMes").status_code == 200
    assert [m.body for m in sqlite_practice.texts()[1:]] == [
        "Riverside Physical Therapy: gracias, su cita queda confirmada para el jue, 5 nov a "
        "las 15:00. (312) 555-0199. STOP para salir"]


def test_an_unsigned_text_changes_nothing_and_answers_nothing(practice: Practice) -> None:
    practice.welcomed()
    before = practice.snapshot()
    assert practice.text_in("STOP", "SMforged", signature="").status_code == 403
    assert practice.text_in("STOP", "SMforged", token="f" * 32).status_code == 403
    assert practice.text_in("STOP", "SMforged",
                            signed_url="http://testserver/webhooks/twilio/inbound"
                            ).status_code == 403
    assert practice.snapshot() == before
    assert len(practice.texts()) == 1


def test_replies_go_after_the_text_is_recorded_and_a_failed_reply_is_in_the_ledger(
        practice: Practice) -> None:
    practice.welcomed()
    seen_while_replying: list[set[tuple[str, str, str, str]]] = []
    practice.clinic.sms.script(lambda message: seen_while_replying.append(practice.opt_outs()))
    assert practice.text_in("STOP", "SMstop").status_code == 200
    assert seen_while_replying == [{("sms", NUMBER, "all", "sms reply")}]  # committed first

    practice.at(MONDAY_9AM + timedelta(minutes=1))
    practice.clinic.sms.script(PermanentChannelError("Invalid 'To' number", provider="fake",
                                                     code="21211", status=400))
    response = practice.text_in("START", "SMstart")
    assert (response.status_code, response.text) == (200, EMPTY_TWIML)
    assert practice.opt_outs() == set()  # the opt-in stands though its answer failed
    failed = practice.clinic.one("replies", "start")
    assert (failed.status, failed.reason, failed.address) == (
        Status.FAILED, "provider_error", NUMBER)
    assert inbound(practice) == [("STOP", "stop", ""), ("START", "start", "")]


def test_c_after_help_is_noted_on_the_reminder_not_on_the_help_answer(
        sqlite_practice: Practice) -> None:
    reminder = sqlite_practice.reminded()
    sqlite_practice.at("2026-11-02T10:20:00-06:00")
    sqlite_practice.text_in("HELP", "SMhelp")
    sqlite_practice.at("2026-11-02T10:30:00-06:00")
    sqlite_practice.text_in("C", "SMc")
    confirm = sqlite_practice.rows(inbound_messages, intent="confirm")
    assert [m.touch_point_id for m in confirm] == [reminder.id]
    assert sqlite_practice.moves(reminder.id)[-1] == (
        "note", None, None, "confirmed", "sms reply")


# --------------------------------------------------------------------------- unsubscribe

OFFERS = """
version: 1
journey: offers
purpose: marketing
trigger: patient.created
steps:
  - id: first
    when: immediately
    channels: [email]
    template: win-back/day-30
  - id: second
    when: {after: 1h}
    channels: [email]
    template: win-back/day-60
"""
CHECK_IN_EMAIL = """
version: 1
journey: check-in
purpose: transactional
trigger: patient.created
steps:
  - id: email
    when: {after: 2h}
    channels: [email]
    template: welcome/what-to-expect
"""
TOKEN = r"(\d+)\.(marketing|transactional)\.([A-Za-z0-9_-]{22})"


def unsubscribe_token(message: OutboundMessage, mailto: bool = True) -> str:
    """The token of an email's List-Unsubscribe header (checked whole)."""
    also = rf", <mailto:{re.escape(MAILTO)}\?subject=unsubscribe%20\1>" if mailto else ""
    match = re.fullmatch(rf"<{re.escape(PUBLIC_URL)}/unsubscribe/({TOKEN})>{also}",
                         message.headers["List-Unsubscribe"])
    assert match, message.headers
    assert message.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert int(match.group(2)) == message.touch_point_id
    return match.group(1)


@pytest.fixture
def newsletter(database_url: str, tmp_path: Path) -> Iterator[Practice]:
    rig = Practice(database_url, tmp_path, schedules=schedules(tmp_path, OFFERS,
                                                                CHECK_IN_EMAIL))
    yield rig
    rig.close()


def test_one_click_unsubscribe_opts_the_address_out_of_marketing_only(
        newsletter: Practice) -> None:
    practice = newsletter
    practice.at(MONDAY_9AM)
    practice.clinic.patients(patient("P1"))
    practice.clinic.tick()
    [offer] = practice.emails()
    token = unsubscribe_token(offer)
    assert token.split(".")[1] == "marketing"
    link = f"{PUBLIC_URL}/unsubscribe/{token}"
    assert f"Unsubscribe: {link}" in offer.body
    assert "1200 W Riverside Ave, Chicago, IL 60607" in offer.body

    before = practice.snapshot()
    page = practice.client.get(f"/unsubscribe/{token}")
    assert page.status_code == 200
    assert "<h1>Unsubscribe from Riverside Physical Therapy's emails</h1>" in page.text
    assert '<form method="post"><button type="submit">Unsubscribe</button></form>' in page.text
    tp_id, purpose, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for forged in (f"{tp_id}.{purpose}.{flipped}", f"{int(tp_id) + 1}.{purpose}.{signature}",
                   f"{tp_id}.all.{signature}", f"{tp_id}.{purpose}", "nonsense"):
        assert practice.client.get(f"/unsubscribe/{forged}").status_code == 404, forged
        assert practice.client.post(f"/unsubscribe/{forged}").status_code == 404, forged
    assert practice.snapshot() == before  # looking, and forged links, change nothing

    # RFC 8058: the mail client POSTs this body to the https link, no login, no cookies
    practice.at(MONDAY_9AM + timedelta(minutes=5))
    done = practice.client.post(f"/unsubscribe/{token}",
                                content=b"List-Unsubscribe=One-Click",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert done.status_code == 200
    assert "<h1>You are unsubscribed</h1><p>You will get no more marketing emails from " \
           "Riverside Physical Therapy.</p>" in done.text
    assert practice.opt_outs() == {("email", "p1@example.com", "marketing", "one-click")}
    assert practice.client.post(f"/unsubscribe/{token}").status_code == 200  # clicked twice
    assert len(practice.rows(opt_outs)) == 1

    practice.at(MONDAY_9AM + timedelta(hours=1))
    practice.clinic.tick()
    second = practice.clinic.one("offers", "second")
    assert (second.status, second.reason) == (Status.SKIPPED, "opted_out")
    practice.at(MONDAY_9AM + timedelta(hours=2))
    practice.clinic.tick()
    assert practice.clinic.one("check-in", "email").status == Status.SENT
    [_, check_in] = practice.emails()
    assert check_in.headers == {}  # transactional: no List-Unsubscribe by default
    assert "/unsubscribe/" not in check_in.body


def test_a_mailto_unsubscribe_arrives_through_inbound_parse(newsletter: Practice) -> None:
    practice = newsletter
    practice.at(MONDAY_9AM)
    practice.clinic.patients(patient("P1"))
    practice.clinic.tick()
    token = unsubscribe_token(practice.emails()[0])
    mail = {"from": "Ana Reyes <p1@example.com>", "to": MAILTO, "text": "",
            "subject": "unsubscribe 1.marketing.AAAAAAAAAAAAAAAAAAAAAA"}
    blank = {"attachment-info": ("", b"{}", "application/json")}
    forged = practice.client.post("/webhooks/sendgrid/inbound", data=mail, files=blank)
    assert forged.status_code == 204
    assert practice.opt_outs() == set()
    mail["subject"] = f"unsubscribe {token}"
    genuine = practice.client.post("/webhooks/sendgrid/inbound", data=mail, files=blank)
    assert genuine.status_code == 204
    assert practice.opt_outs() == {("email", "p1@example.com", "marketing", "mailto")}


TRANSACTIONAL_THEN_OFFER = """
version: 1
journey: check-in
purpose: transactional
trigger: patient.created
steps:
  - id: email
    when: immediately
    channels: [email]
    template: welcome/what-to-expect
""", """
version: 1
journey: offers
purpose: marketing
trigger: patient.created
steps:
  - id: later
    when: {after: 1h}
    channels: [email]
    template: win-back/day-30
"""


@pytest.mark.parametrize("email", [
    MAILTO_SETTING,
    f"{MAILTO_SETTING}\nunsubscribe_transactional = true",
    "unsubscribe_transactional = true",  # no mailbox: the https link alone
])
def test_transactional_emails_carry_the_headers_and_link_only_when_configured(
        sqlite_url: str, tmp_path: Path, email: str) -> None:
    practice = Practice(sqlite_url, tmp_path, email=email,
                        schedules=schedules(tmp_path, *TRANSACTIONAL_THEN_OFFER))
    try:
        practice.at(MONDAY_9AM)
        practice.clinic.patients(patient("P1"))
        practice.clinic.tick()
        [reminder] = practice.emails()
        assert reminder.purpose == "transactional"
        link = "Don't want these emails? Unsubscribe: "
        if "unsubscribe_transactional" in email:
            token = unsubscribe_token(reminder, mailto=MAILTO in email)
            assert token.split(".")[1] == "transactional"
            # and the visible link, in the text and the HTML (the shipped template)
            assert f"{link}{PUBLIC_URL}/unsubscribe/{token}" in reminder.body
            assert f'<a href="{PUBLIC_URL}/unsubscribe/{token}">Unsubscribe</a>' in \
                (reminder.html or "")
        else:
            assert reminder.headers == {}
            assert link not in reminder.body and "unsubscribe" not in (reminder.html or "")
    finally:
        practice.close()


def test_unsubscribing_from_a_transactional_email_stops_every_email(
        sqlite_url: str, tmp_path: Path) -> None:
    practice = Practice(sqlite_url, tmp_path,
                        email=f"{MAILTO_SETTING}\nunsubscribe_transactional = true",
                        schedules=schedules(tmp_path, *TRANSACTIONAL_THEN_OFFER))
    try:
        practice.at(MONDAY_9AM)
        practice.clinic.patients(patient("P1"))
        practice.clinic.tick()
        token = unsubscribe_token(practice.emails()[0])
        done = practice.client.post(f"/unsubscribe/{token}")
        assert "You will get no more emails from Riverside Physical Therapy." in done.text
        practice.at(MONDAY_9AM + timedelta(hours=1))
        practice.clinic.tick()
        later = practice.clinic.one("offers", "later")
        assert (later.status, later.reason) == (Status.SKIPPED, "opted_out")
    finally:
        practice.close()


# --------------------------------------------------------------------------- frequency caps

CHECK_INS = """
version: 1
journey: check-in
purpose: transactional
trigger: patient.created
steps:
  - id: first
    when: immediately
    channels: [sms]
    template: welcome/welcome
  - id: same-day
    when: {after: 2h}
    channels: [sms, email]
    template: welcome/welcome
  - id: same-evening
    when: {after: 3h}
    channels: [sms]
    template: welcome/welcome
""" + "".join(f"""  - id: day-{n}
    when: {{days_after: {n}, at: "10:00"}}
    channels: [sms]
    template: welcome/welcome
""" for n in (1, 2, 3, 8))
CHECK_IN_MOMENTS = ["2026-11-02T09:00:00-06:00", "2026-11-02T11:00:00-06:00",
                    "2026-11-02T12:00:00-06:00", "2026-11-03T10:00:00-06:00",
                    "2026-11-04T10:00:00-06:00", "2026-11-05T10:00:00-06:00",
                    "2026-11-10T10:00:00-06:00"]
MARKETING_TEXT_THEN_EMAILS = """
version: 1
journey: offers
purpose: marketing
trigger: patient.created
steps:
  - id: text
    when: immediately
    channels: [sms]
    template: win-back/day-30
  - id: email-1
    when: {after: 1h}
    channels: [email]
    template: win-back/day-30
  - id: email-2
    when: {after: 2h}
    channels: [email, sms]
    template: win-back/day-60
"""


def run_check_ins(practice: Practice, moments: Sequence[str] = CHECK_IN_MOMENTS,
                  ) -> dict[str, tuple[str, str | None, str | None]]:
    """Create P1 on Monday 09:00 CST and tick at each step's moment (or at ``moments``):
    step → outcome."""
    practice.at(moments[0])
    practice.clinic.patients(patient("P1"))
    for moment in moments:
        practice.at(moment)
        practice.clinic.tick()
    return {t.step: (t.status, t.reason, t.channel)
            for t in practice.clinic.touch_points(journey="check-in")}


EXEMPTION = '\n[caps]\nmode = "exemption"\n'


def test_exemption_mode_allows_one_text_a_day_and_three_a_week_deferring_what_it_can(
        database_url: str, tmp_path: Path) -> None:
    practice = Practice(database_url, tmp_path, extra=EXEMPTION,
                        schedules=schedules(tmp_path, CHECK_INS))
    try:
        # (the daemon ticks every few seconds; here also at 08:00, when deferred texts are due)
        outcomes = run_check_ins(practice, sorted(
            [*CHECK_IN_MOMENTS, "2026-11-03T08:00:00-06:00", "2026-11-04T08:00:00-06:00",
             "2026-11-05T08:00:00-06:00"]))
        assert outcomes == {
            "first": (Status.SENT, None, "sms"),
            "same-day": (Status.SENT, None, "email"),  # the text was capped: email instead
            "same-evening": (Status.SENT, None, "sms"),  # text only: waited for Tuesday
            "day-1": (Status.SENT, None, "sms"),  # ...so this one waited for Wednesday
            "day-2": (Status.SKIPPED, "frequency_cap", None),  # the 4th text in 7 days
            "day-3": (Status.SKIPPED, "frequency_cap", None),
            "day-8": (Status.SENT, None, "sms"),  # Tuesday's fell out of the week
        }
        rows = {t.step: t for t in practice.clinic.touch_points(journey="check-in")}
        assert rows["same-evening"].sending_at == datetime.fromisoformat(
            "2026-11-03T08:00:00-06:00")
        assert [(h.reason, h.detail) for h in practice.clinic.history(rows["same-evening"])
                if h.kind == "deferred"] == [
            ("frequency_cap", "sms: 1 text(s) today (cap 1 a day); deferred")]
        # (on Wednesday at 10:00 both limits are reached, and the week has room again
        # only after its deadline: skipped then, not deferred to Thursday first)
        assert rows["day-2"].detail == (
            "sms: 1 text(s) today (cap 1 a day); 3 texts in the last 7 days (cap 3 a week); "
            "the next allowed time 2026-11-09T15:00:00+00:00 is past its deadline "
            "2026-11-05T16:00:00+00:00")
        assert rows["day-2"].finished_at == datetime.fromisoformat(
            "2026-11-04T10:00:00-06:00")
        same_day = practice.clinic.one("check-in", "same-day")
        assert [h.detail for h in practice.clinic.history(same_day)
                if h.status == Status.SENDING] == [
            "email via fake to p•••@example.com (passed over sms: 1 text(s) today "
            "(cap 1 a day))"]
        why = practice.cli("why", str(rows["day-3"].id))
        assert "  status      skipped (frequency_cap)" in why.output
        assert [m.step for m in practice.texts()] == ["first", "same-evening", "day-1", "day-8"]
    finally:
        practice.close()


def test_consent_mode_sends_two_texts_a_day_and_defers_the_third_to_the_next_morning(
        database_url: str, tmp_path: Path) -> None:
    """The default: with consent on file the exemption's 1/3 limits do not apply."""
    practice = Practice(database_url, tmp_path, schedules=schedules(tmp_path, CHECK_INS))
    try:
        outcomes = run_check_ins(practice)
        assert outcomes == {step: (Status.SENT, None, "sms") for step in (
            "first", "same-day", "same-evening", "day-1", "day-2", "day-3", "day-8")}
        evening = practice.clinic.one("check-in", "same-evening")
        assert [(h.reason, h.detail) for h in practice.clinic.history(evening)
                if h.kind == "deferred"] == [
            ("frequency_cap", "sms: 2 text(s) of the same or a higher priority today "
                              "(courtesy limit 2 a day); deferred")]
        assert evening.sending_at == datetime.fromisoformat("2026-11-03T10:00:00-06:00")
    finally:
        practice.close()


def test_frequency_caps_are_configurable_and_zero_means_no_cap(
        sqlite_url: str, tmp_path: Path) -> None:
    caps = ('\n[caps]\nmode = "exemption"\ntransactional_sms_per_day = 2\n'
            "transactional_sms_per_week = 0\nmarketing_per_week = 0\n")
    practice = Practice(sqlite_url, tmp_path, extra=caps,
                        schedules=schedules(tmp_path, CHECK_INS, MARKETING_TEXT_THEN_EMAILS))
    try:
        outcomes = run_check_ins(practice)
        assert outcomes == {step: (Status.SENT, None, "sms") for step in (
            "first", "same-day", "same-evening", "day-1", "day-2", "day-3", "day-8")}
        assert practice.clinic.one("check-in", "same-evening").sending_at == \
            datetime.fromisoformat("2026-11-03T10:00:00-06:00")  # the 3rd text of Monday
        # exemption mode texts nothing that is not exempt: the offers go by email
        assert {t.step: (t.status, t.reason, t.channel)
                for t in practice.clinic.touch_points(journey="offers")} == {
            "text": (Status.SKIPPED, "no_consent", None), "email-1": (Status.SENT, None, "email"),
            "email-2": (Status.SENT, None, "email")}
        assert practice.clinic.one("offers", "text").detail == (
            "sms: exemption mode texts exempt (transactional) messages only; marketing is not "
            "exempt")
    finally:
        practice.close()


def test_marketing_is_capped_at_two_a_week_and_never_blocks_a_transactional_text(
        database_url: str, tmp_path: Path) -> None:
    reminder = """
version: 1
journey: check-in
purpose: transactional
trigger: patient.created
steps:
  - id: reminder
    when: {after: 3h}
    channels: [sms]
    template: welcome/welcome
"""
    practice = Practice(database_url, tmp_path,
                        schedules=schedules(tmp_path, MARKETING_TEXT_THEN_EMAILS, reminder))
    try:
        practice.at(MONDAY_9AM)
        practice.clinic.patients(patient("P1"))
        for hours in range(4):
            practice.at(MONDAY_9AM + timedelta(hours=hours))
            practice.clinic.tick()
        offers = {t.step: (t.status, t.reason, t.channel)
                  for t in practice.clinic.touch_points(journey="offers")}
        assert offers == {"text": (Status.SENT, None, "sms"),
                          "email-1": (Status.SENT, None, "email"),
                          "email-2": (Status.SKIPPED, "frequency_cap", None)}
        assert practice.clinic.one("offers", "email-2").detail == (
            "email: 2 marketing messages in the last 7 days (cap 2); "
            "sms: 2 marketing messages in the last 7 days (cap 2); the next allowed time "
            "2026-11-09T15:00:00+00:00 is past its deadline 2026-11-03T17:00:00+00:00")
        sent = practice.clinic.one("check-in", "reminder")
        assert (sent.status, sent.channel) == (Status.SENT, "sms")
        assert [m.step for m in practice.texts()] == ["text", "reminder"]
    finally:
        practice.close()


def test_the_daily_cap_counts_the_recipients_own_day(database_url: str, tmp_path: Path,
                                                      ) -> None:
    """Honolulu is UTC-10, four hours behind the practice: two texts on the same Chicago
    (and UTC) day are on two Honolulu days, and the other way round."""
    two_texts = """
version: 1
journey: check-in
purpose: transactional
trigger: patient.created
steps:
  - id: first
    when: immediately
    channels: [sms]
    template: welcome/welcome
  - id: second
    when: {after: 690m}
    channels: [sms]
    template: welcome/welcome
"""
    practice = Practice(database_url, tmp_path, extra=EXEMPTION,
                        schedules=schedules(tmp_path, two_texts))
    hawaii = {"timezone": "Pacific/Honolulu"}
    try:
        # P1: 08:30 and 20:00 HST Monday — one local day, but Mon/Tue in Chicago and UTC
        practice.at("2026-11-02T08:30:00-10:00")
        practice.clinic.patients(patient("P1", phone="(312) 555-0101", **hawaii))
        practice.clinic.tick()
        practice.at("2026-11-02T20:00:00-10:00")
        practice.clinic.tick()
        # P2: 20:30 HST Monday and 08:00 HST Tuesday — two local days, one Chicago/UTC day
        practice.at("2026-11-02T20:30:00-10:00")
        practice.clinic.patients(patient("P2", phone="(312) 555-0102", **hawaii))
        practice.clinic.tick()
        practice.at("2026-11-03T08:00:00-10:00")
        practice.clinic.tick()
        outcomes = {(t.patient_id, t.step): (t.status, t.reason)
                    for t in practice.clinic.touch_points()}
        assert sorted(outcomes.items()) == [
            ((1, "first"), (Status.SENT, None)),
            ((1, "second"), (Status.SENT, None)),
            ((2, "first"), (Status.SENT, None)),
            ((2, "second"), (Status.SENT, None)),
        ]
        # P1's second waited for the next day, which starts at 08:00 in Honolulu
        second = practice.clinic.one("check-in", "second", patient_id=1)
        assert [h.reason for h in practice.clinic.history(second) if h.kind == "deferred"] \
            == ["frequency_cap"]
        assert second.sending_at == datetime.fromisoformat("2026-11-03T08:00:00-10:00")
        p2 = practice.clinic.one("check-in", "second", patient_id=2)
        assert p2.sending_at == datetime.fromisoformat("2026-11-03T08:00:00-10:00")
        assert not [h for h in practice.clinic.history(p2) if h.kind == "deferred"]
    finally:
        practice.close()


def test_answers_to_a_patients_own_texts_do_not_use_up_the_caps(
        sqlite_practice: Practice) -> None:
    practice = sqlite_practice
    practice.at(MONDAY_9AM)
    practice.clinic.patients(patient("P1"), baseline=True)
    practice.clinic.appointments(appointment("A1", "P1", "2026-11-02T13:00:00-06:00"))
    practice.clinic.tick()
    assert practice.text_in("HELP", "SMhelp").status_code == 200
    practice.at("2026-11-02T11:00:00-06:00")
    practice.clinic.tick()
    reminder = practice.clinic.one("pre-visit", "two-hours-before")
    assert (reminder.status, reminder.channel) == (Status.SENT, "sms")
    assert [m.step for m in practice.texts()] == ["help", "two-hours-before"]
