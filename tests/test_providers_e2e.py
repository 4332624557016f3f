"""The engine end to end through the real Twilio and SendGrid SDKs, against local servers.

* what the dispatcher sends (the exact request), and how the provider's answer lands;
* crash safety: a sender killed after the provider took the message and before the
  ledger recorded it never re-sends it; the touch point becomes ``unknown`` and the
  provider's status callback settles it.
"""

from __future__ import annotations

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
from twilio.request_validator import RequestValidator

from engine.channels import build_channels
from engine.outcomes import Status
from engine.reconcile import unknown_touch_points
from engine.runner import Runner
from engine.webhooks.app import Services, create_app
from tests.provider_servers import SendGridAPIServer, TwilioAPIServer, TwilioOutcome
from tests.provider_servers.sendgrid_api import DEFAULT_API_KEY
from tests.provider_servers.twilio_api import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
from tests.support import LIBRARY_SCHEDULES, LIBRARY_TEMPLATES, Clinic, appointment, patient

PUBLIC_URL = "https://tp.example"


def provider_config(twilio_url: str, sendgrid_url: str) -> str:
    return f"""
[twilio]
account_sid = "{DEFAULT_ACCOUNT_SID}"
auth_token = "{DEFAULT_AUTH_TOKEN}"
from_number = "+13125550100"
api_url = "{twilio_url}"

[sendgrid]
api_key = "{DEFAULT_API_KEY}"
api_url = "{sendgrid_url}"

[email]
from_address = "Riverside PT <hello@riversidept.example>"
unsubscribe_mailto = "unsubscribe@riversidept.example"

[webhooks]
public_url = "{PUBLIC_URL}"
"""


@pytest.fixture
def servers():  # type: ignore[no-untyped-def]
    with TwilioAPIServer() as twilio, SendGridAPIServer() as sendgrid:
        yield twilio, sendgrid


def real_clinic(database_url: str, folder: Path, twilio: TwilioAPIServer,
                sendgrid: SendGridAPIServer) -> Clinic:
    clinic = Clinic(database_url, folder,
                    config_extra=provider_config(twilio.url, sendgrid.url))
    settings = clinic.settings.model_copy(update={"channels": clinic.settings.channels
                                                  .model_copy(update={
                                                      "sms_provider": "twilio",
                                                      "email_provider": "sendgrid"})})
    clinic.settings = settings
    clinic.runner = Runner(clinic.db, settings, clinic.definitions, build_channels(settings))
    return clinic


def signed_post(client: TestClient, path: str, params: dict[str, str]):  # type: ignore[no-untyped-def]
    signature = RequestValidator(DEFAULT_AUTH_TOKEN).compute_signature(PUBLIC_URL + path,
                                                                       params)
    return client.post(path, data=params, headers={"X-Twilio-Signature": signature})


def test_a_text_goes_through_twilio_with_its_status_callback_and_is_delivered(
        database_url: str, tmp_path: Path, servers) -> None:  # type: ignore[no-untyped-def]
    twilio, sendgrid = servers
    clinic = real_clinic(database_url, tmp_path, twilio, sendgrid)
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.patients(patient("P1"))
        clinic.tick()
    welcome = clinic.one("welcome", "welcome")
    assert welcome.status == Status.SENT and welcome.provider == "twilio"
    [request] = [r for r in twilio.requests if r.method == "POST"]
    assert request.form_value("To") == "+13125550100"
    assert request.form_value("From") == "+13125550100"
    assert request.form_value("Body").startswith("Welcome to Riverside Physical Therapy, Ana!")
    assert request.form_value("StatusCallback") == \
        f"{PUBLIC_URL}/webhooks/twilio/status?tp={welcome.id}"
    assert welcome.provider_message_id == twilio.messages[0]["sid"]

    client = TestClient(create_app(Services(clinic.settings, clinic.db, clinic.definitions,
                                            build_channels(clinic.settings))))
    params = {"MessageSid": welcome.provider_message_id or "", "MessageStatus": "delivered",
              "To": "+13125550100", "AccountSid": DEFAULT_ACCOUNT_SID}
    answer = signed_post(client, f"/webhooks/twilio/status?tp={welcome.id}", params)
    assert answer.status_code == 204
    assert clinic.one("welcome", "welcome").status == Status.DELIVERED
    clinic.close()


def test_a_marketing_email_goes_through_sendgrid_with_custom_args_and_unsubscribe_headers(
        database_url: str, tmp_path: Path, servers) -> None:  # type: ignore[no-untyped-def]
    twilio, sendgrid = servers
    clinic = real_clinic(database_url, tmp_path, twilio, sendgrid)
    with freeze_time("2026-10-01T15:00:00Z") as frozen:
        clinic.patients(patient("P1", phone=""), baseline=True)
        clinic.appointments(appointment("A0", "P1", "2026-10-01T09:00:00-05:00",
                                        status="completed"))
        frozen.move_to("2026-10-31T16:00:00Z")  # 11:00 Chicago, 30 days later
        clinic.tick()
    day_30 = clinic.one("win-back", "day-30")
    assert (day_30.status, day_30.channel, day_30.provider) == (Status.SENT, "email",
                                                                 "sendgrid")
    [request] = sendgrid.requests
    body = request.json
    assert body["personalizations"][0]["to"] == [{"email": "p1@example.com"}]
    assert body["from"] == {"email": "hello@riversidept.example", "name": "Riverside PT"}
    assert body["custom_args"] == {"touch_point_id": str(day_30.id)}
    headers = body["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = headers["List-Unsubscribe"].split(", ")
    assert https.startswith(f"<{PUBLIC_URL}/unsubscribe/{day_30.id}.")
    assert mailto.startswith("<mailto:unsubscribe@riversidept.example?subject=unsubscribe%20")
    text = next(c["value"] for c in body["content"] if c["type"] == "text/plain")
    assert f"{PUBLIC_URL}/unsubscribe/{day_30.id}." in text  # the visible link
    assert "1200 W Riverside Ave" in text  # the physical address
    assert "Ana" not in str(body.get("categories", []))  # no patient data in categories
    assert day_30.provider_message_id == sendgrid.message_ids[0]
    clinic.close()


@pytest.mark.slow
def test_a_sender_killed_mid_send_never_resends_and_the_callback_settles_it(
        database_url: str, tmp_path: Path, servers) -> None:  # type: ignore[no-untyped-def]
    """Kill -9 the sender after Twilio received the message, before it was recorded."""
    twilio, sendgrid = servers
    twilio.enqueue("hang")  # Twilio takes the message; its answer never reaches us
    env = {**os.environ, "TOUCHPOINT_DATABASE_URL": database_url,
           "TOUCHPOINT_SMS_PROVIDER": "twilio", "TOUCHPOINT_EMAIL_PROVIDER": "sendgrid",
           "TOUCHPOINT_PROVIDER_TIMEOUT": "60", "TOUCHPOINT_SEND_TIMEOUT": "2m",
           "TOUCHPOINT_SCHEDULES": str(LIBRARY_SCHEDULES),
           "TOUCHPOINT_TEMPLATES": str(LIBRARY_TEMPLATES)}
    # writes ./touchpoint.toml, which the sender processes read too
    clinic = Clinic(database_url, tmp_path,
                    config_extra=provider_config(twilio.url, sendgrid.url))
    with freeze_time("2026-11-02T15:00:00Z"):
        clinic.patients(patient("P1", email=""))
    engine = [sys.executable, "-m", "engine"]
    log = (tmp_path / "sender.log").open("w")
    sender = subprocess.Popen([*engine, "--now", "2026-11-02T15:00:00Z", "run", "--once"],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        twilio.wait_for_requests(1, timeout=60)
        time.sleep(0.2)  # the request is at Twilio; the sender waits for the answer
    except TimeoutError:
        pytest.fail(f"the sender never reached Twilio: {(tmp_path / 'sender.log').read_text()}")
    finally:
        sender.send_signal(signal.SIGKILL)
        sender.wait(timeout=10)
        log.close()
    welcome = clinic.one("welcome", "welcome")
    assert welcome.status == Status.SENDING  # committed before the provider was called

    # The next runs: nothing is re-sent; after send_timeout the touch point is unknown.
    for now in ("2026-11-02T15:01:00Z", "2026-11-02T15:03:00Z"):
        result = subprocess.run([*engine, "--now", now, "run", "--once", "--json"],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=60, check=True)
        assert '"sent": 0' in result.stdout
    assert len([r for r in twilio.requests if r.method == "POST"]) == 1
    welcome = clinic.one("welcome", "welcome")
    assert (welcome.status, welcome.reason) == (Status.UNKNOWN, "interrupted")
    assert welcome.provider_message_id is None

    # Twilio's status callback names the touch point: it settles it.
    client = TestClient(create_app(Services(clinic.settings, clinic.db, clinic.definitions,
                                            {})))
    params = {"MessageSid": "SM" + "ab" * 16, "MessageStatus": "delivered",
              "To": "+13125550100", "AccountSid": DEFAULT_ACCOUNT_SID}
    answer = signed_post(client, f"/webhooks/twilio/status?tp={welcome.id}", params)
    assert answer.status_code == 204
    welcome = clinic.one("welcome", "welcome")
    assert welcome.status == Status.DELIVERED
    assert welcome.provider_message_id == params["MessageSid"]
    assert [h.status for h in clinic.history(welcome)][-2:] == [Status.UNKNOWN,
                                                                 Status.DELIVERED]
    clinic.close()


# --------------------------------------------------------------------------- reconciliation


def waiting_for(clinic: Clinic) -> list[str]:
    """What each unknown touch point waits for, as `touchpoint unknown` lists it."""
    with clinic.db.transaction() as conn:
        return [row["waiting_for"] for row in unknown_touch_points(conn)]


def test_an_unknown_text_found_in_twilios_list_is_sent_with_its_sid(
        database_url: str, tmp_path: Path, servers) -> None:  # type: ignore[no-untyped-def]
    twilio, sendgrid = servers
    clinic = real_clinic(database_url, tmp_path, twilio, sendgrid)
    twilio.enqueue(TwilioOutcome.created_then_error())  # Twilio took it, then answered 500
    start = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
    with freeze_time(start) as frozen:
        clinic.patients(patient("P1"))
        clinic.tick()
        assert clinic.one("welcome", "welcome").status == Status.UNKNOWN
        frozen.move_to(start + timedelta(minutes=9, seconds=59))
        clinic.tick()  # still within dispatch.reconcile_after: no look-up yet
        assert [r.method for r in twilio.requests] == ["POST"]
        frozen.move_to(start + timedelta(minutes=10))
        report = clinic.tick()
        frozen.move_to(start + timedelta(minutes=20))
        clinic.tick()  # settled: not looked up again
    welcome = clinic.one("welcome", "welcome")
    [message] = twilio.messages
    assert (welcome.status, welcome.reason, welcome.provider_message_id) == (
        Status.SENT, "reconciled", message["sid"])
    assert report.reconciled == {"found": 1, "resent": 0, "left": 0, "unreachable": 0}
    [listing] = [r for r in twilio.requests if r.method == "GET"]
    assert listing.query["To"] == ["+13125550100"]
    assert listing.query["DateSent>"] == ["2026-11-02T14:58:00Z"]  # the attempt, less slack
    assert [r.method for r in twilio.requests] == ["POST", "GET"]  # never sent twice
    last = clinic.history(welcome)[-1]
    assert (last.previous_status, last.status, last.reason, last.source) == (
        "unknown", "sent", "reconciled", "reconcile")
    assert last.detail == (f"found in twilio's list of messages sent to +1••••••••00: "
                           f"{message['sid']}")
    clinic.close()


def test_an_unknown_text_twilio_never_got_is_sent_again_once_then_left_for_staff(
        database_url: str, tmp_path: Path, servers) -> None:  # type: ignore[no-untyped-def]
    twilio, sendgrid = servers
    clinic = real_clinic(database_url, tmp_path, twilio, sendgrid)
    twilio.enqueue("server_error", "server_error")  # 500s that created nothing
    start = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
    with freeze_time(start) as frozen:
        clinic.patients(patient("P1"))
        clinic.tick()
        assert waiting_for(clinic) == ["reconciliation"]
        frozen.move_to(start + timedelta(minutes=10))
        first = clinic.tick()  # not in Twilio's list: sent again, in the same tick
        welcome = clinic.one("welcome", "welcome")
        assert welcome.status == Status.UNKNOWN  # the second 500
        frozen.move_to(start + timedelta(minutes=20))
        second = clinic.tick()  # not there either: already sent again once
        frozen.move_to(start + timedelta(minutes=30))
        third = clinic.tick()
    assert first.reconciled["resent"] == 1
    assert second.reconciled == {"found": 0, "resent": 0, "left": 1, "unreachable": 0}
    assert third.reconciled == {"found": 0, "resent": 0, "left": 0, "unreachable": 0}
    # each lookup reads the list twice: since the attempt, then what is still queued
    assert [r.method for r in twilio.requests] == ["POST", "GET", "GET", "POST", "GET", "GET"]
    assert twilio.messages == []
    welcome = clinic.one("welcome", "welcome")
    assert welcome.status == Status.UNKNOWN
    assert waiting_for(clinic) == ["staff"]
    trail = [(h.previous_status, h.status, h.reason, h.source)
             for h in clinic.history(welcome)]
    assert trail[2:] == [
        ("sending", "unknown", "ambiguous", "dispatcher"),
        ("unknown", "planned", "reconcile_resend", "reconcile"),
        ("planned", "sending", None, "dispatcher"),
        ("sending", "unknown", "ambiguous", "dispatcher"),
        (None, None, "needs_staff", "reconcile")]
    assert "it was already sent again once: left for staff" in \
        (clinic.history(welcome)[-1].detail or "")
    clinic.close()
