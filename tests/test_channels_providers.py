"""The Twilio SMS and SendGrid email channels, driven through the real SDKs.

Each channel talks to the local API servers of ``tests/provider_servers`` (no network).
For every outcome those servers can produce we pin what the dispatcher relies on: the
exact request sent, or the exact ChannelError subclass with its status, code, opted_out,
retry_after and a redacted excerpt (no unmasked phone number, address or secret).
"""

from __future__ import annotations

import base64
import email.utils
import logging
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine import clock
from engine.channels import build_channels
from engine.channels.base import OutboundMessage, SendResult
from engine.channels.sendgrid_email import SendGridEmail
from engine.channels.twilio_sms import TwilioSMS
from engine.errors import (
    AmbiguousChannelError,
    ChannelError,
    ConfigError,
    PermanentChannelError,
    TransientChannelError,
)
from engine.settings import load_settings
from tests.provider_servers import (
    ConnectTimeoutListener,
    Outcome,
    Reply,
    SendGridAPIServer,
    SendGridOutcome,
    TwilioAPIServer,
    TwilioOutcome,
)

NOW = datetime(2025, 3, 10, 14, 0, tzinfo=UTC)
TP = 42
PATIENT_PHONE = "+15035550142"
MASKED_PHONE = "+1••••••••42"
CLINIC_NUMBER = "+15005550006"
SERVICE_SID = "MG" + "ab" * 16
PATIENT_EMAIL = "maria.garcia@example.com"
MASKED_EMAIL = "m•••@example.com"
CLINIC_EMAIL = "frontdesk@riverside-pt.example"
SHORT_TIMEOUT = 0.5
UNSUBSCRIBE = "<https://tp.example/unsubscribe/tok123>, <mailto:unsub@tp.example?subject=tok123>"
ONE_CLICK = "List-Unsubscribe=One-Click"

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs")


def status_callback(touch_point_id: int) -> str:
    return f"https://tp.example/webhooks/twilio/status?tp={touch_point_id}"


@pytest.fixture(autouse=True)
def _pinned_clock() -> None:
    clock.set_now(NOW)  # conftest releases it after each test


@pytest.fixture
def twilio_server() -> Iterator[TwilioAPIServer]:
    with TwilioAPIServer() as server:
        yield server
        assert server.errors == []


@pytest.fixture
def sendgrid_server() -> Iterator[SendGridAPIServer]:
    with SendGridAPIServer() as server:
        yield server
        assert server.errors == []


def sms(body: str = "Hi Maria, see you tomorrow at 10:00. Reply STOP to opt out.",
        ) -> OutboundMessage:
    return OutboundMessage(touch_point_id=TP, kind="sms", to=PATIENT_PHONE, body=body,
                           journey="reminders", step="day_before")


def mail(**changes: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "touch_point_id": TP, "kind": "email", "to": PATIENT_EMAIL,
        "subject": "Your appointment tomorrow",
        "body": "Hi Maria, see you tomorrow at 10:00.",
        "html": "<p>Hi Maria, see you tomorrow at <b>10:00</b>.</p>",
        "headers": {"List-Unsubscribe": UNSUBSCRIBE, "List-Unsubscribe-Post": ONE_CLICK},
        "journey": "reminders", "step": "day_before",
    }
    fields.update(changes)
    return OutboundMessage(**fields)


def twilio(server: TwilioAPIServer | None = None, **overrides: Any) -> TwilioSMS:
    options: dict[str, Any] = {
        "account_sid": server.account_sid if server else "AC" + "0" * 32,
        "auth_token": server.auth_token if server else "token",
        "from_number": CLINIC_NUMBER,
        "api_url": server.url if server else None,
        "status_callback_url": status_callback,
        "timeout": 5.0,
    }
    options.update(overrides)
    return TwilioSMS(**options)


def sendgrid(server: SendGridAPIServer | None = None, **overrides: Any) -> SendGridEmail:
    options: dict[str, Any] = {
        "api_key": server.api_key if server else "SG.key.secret",
        "from_email": CLINIC_EMAIL,
        "from_name": "Riverside PT",
        "api_url": server.url if server else None,
        "timeout": 5.0,
    }
    options.update(overrides)
    return SendGridEmail(**options)


def failure(send: Callable[[], object]) -> ChannelError:
    with pytest.raises(ChannelError) as caught:
        send()
    return caught.value


def assert_leaks_nothing(exc: ChannelError, *secrets: str) -> None:
    for text in (str(exc), repr(exc), exc.excerpt, exc.describe()):
        for secret in (PATIENT_PHONE, PATIENT_EMAIL, *secrets):
            assert secret not in text, f"{secret!r} leaked in {text!r}"


# ============================================================================ Twilio


def test_twilio_sends_from_the_clinic_number_with_a_status_callback(
    twilio_server: TwilioAPIServer,
) -> None:
    result = twilio(twilio_server).send(sms())

    (created,) = twilio_server.messages
    assert result == SendResult("twilio", created["sid"], detail="twilio status queued")
    (request,) = twilio_server.requests
    assert (request.method, request.path) == ("POST", twilio_server.messages_path)
    assert request.form == {
        "To": [PATIENT_PHONE],
        "From": [CLINIC_NUMBER],
        "Body": ["Hi Maria, see you tomorrow at 10:00. Reply STOP to opt out."],
        "StatusCallback": ["https://tp.example/webhooks/twilio/status?tp=42"],
    }
    auth = base64.b64decode((request.header("Authorization") or "").removeprefix("Basic "))
    assert auth.decode() == f"{twilio_server.account_sid}:{twilio_server.auth_token}"


def test_twilio_sends_through_a_messaging_service_without_callback(
    twilio_server: TwilioAPIServer,
) -> None:
    channel = twilio(twilio_server, from_number=None, messaging_service_sid=SERVICE_SID,
                     status_callback_url=None)
    result = channel.send(sms("hi"))

    assert result == SendResult("twilio", twilio_server.messages[0]["sid"],
                                detail="twilio status accepted")
    (request,) = twilio_server.requests
    assert request.form == {"To": [PATIENT_PHONE], "MessagingServiceSid": [SERVICE_SID],
                            "Body": ["hi"]}


def test_twilio_ignores_region_and_edge_from_the_environment(
    twilio_server: TwilioAPIServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    assert twilio(twilio_server).send(sms()).detail == "twilio status queued"


def _twilio_error(status: int, code: int, message: str) -> Outcome:
    body = {"code": code, "message": message, "status": status,
            "more_info": f"https://www.twilio.com/docs/errors/{code}"}
    return Outcome("reply", reply=Reply.json(status, body), label=f"{status} {code}")


@pytest.mark.parametrize(
    ("outcome", "status", "code", "excerpt"),
    [
        pytest.param(
            TwilioOutcome.error(
                21211, message=f"The 'To' number {PATIENT_PHONE} is not a valid phone number."),
            400, "21211", f"The 'To' number {MASKED_PHONE} is not a valid phone number.",
            id="21211-invalid-to"),
        pytest.param(
            TwilioOutcome.error(
                21408, message="Permission to send an SMS has not been enabled for the region "
                               f"indicated by the 'To' number: {PATIENT_PHONE}"),
            400, "21408", "Permission to send an SMS has not been enabled for the region "
                          f"indicated by the 'To' number: {MASKED_PHONE}",
            id="21408-region"),
        pytest.param(
            _twilio_error(400, 21614, f"'To' number {PATIENT_PHONE} is not a mobile number"),
            400, "21614", f"'To' number {MASKED_PHONE} is not a mobile number",
            id="21614-not-mobile"),
        pytest.param(
            _twilio_error(404, 20404, "The requested resource was not found"),
            404, "20404", "The requested resource was not found", id="20404-not-found"),
    ],
)
def test_twilio_refusals_are_permanent_and_redacted(
    twilio_server: TwilioAPIServer, outcome: Outcome, status: int, code: str, excerpt: str,
) -> None:
    twilio_server.enqueue(outcome)
    exc = failure(lambda: twilio(twilio_server).send(sms()))

    assert type(exc) is PermanentChannelError
    assert (exc.provider, exc.status, exc.code, exc.touch_point_id) == ("twilio", status, code, TP)
    assert (exc.opted_out, exc.retry_after) == (False, None)
    assert exc.excerpt == excerpt
    assert exc.describe() == f"twilio HTTP {status} code {code}: {excerpt}"
    assert_leaks_nothing(exc, twilio_server.auth_token)


def test_twilio_unsubscribed_recipient_is_permanent_and_opted_out(
    twilio_server: TwilioAPIServer,
) -> None:
    twilio_server.enqueue("unsubscribed")
    exc = failure(lambda: twilio(twilio_server).send(sms()))

    assert type(exc) is PermanentChannelError
    assert (exc.status, exc.code, exc.opted_out) == (400, "21610", True)
    assert exc.excerpt == "Attempt to send to unsubscribed recipient"
    assert "unsubscribed" in exc.message


@pytest.mark.parametrize("how", ["wrong_token", "forbidden"])
def test_twilio_rejected_credentials_make_messages_wait_fifteen_minutes(
    twilio_server: TwilioAPIServer, how: str,
) -> None:
    if how == "wrong_token":
        channel = twilio(twilio_server, auth_token="not-the-token-0123456789")
        expected_status = 401
    else:
        twilio_server.enqueue(TwilioOutcome.error(20003, status=403))
        channel = twilio(twilio_server)
        expected_status = 403
    exc = failure(lambda: channel.send(sms()))

    assert type(exc) is TransientChannelError
    assert (exc.status, exc.code, exc.opted_out) == (expected_status, "20003", False)
    assert exc.retry_after == NOW + timedelta(minutes=15)
    assert "credentials" in exc.message
    assert exc.excerpt == "Authenticate"
    assert_leaks_nothing(exc, "not-the-token-0123456789", twilio_server.auth_token)
    assert twilio_server.messages == []


def _http_date_in(seconds: int) -> str:
    return email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=seconds),
                                       usegmt=True)


@pytest.mark.parametrize(
    ("retry_after_header", "low", "high"),
    [
        pytest.param("7", 7, 7, id="seconds"),
        pytest.param(None, None, None, id="absent"),
        pytest.param("http-date", 118, 120, id="http-date"),
        pytest.param("soon", None, None, id="garbage"),
    ],
)
def test_twilio_rate_limit_is_transient_with_retry_after(
    twilio_server: TwilioAPIServer, retry_after_header: str | None,
    low: int | None, high: int | None,
) -> None:
    headers = {} if retry_after_header is None else {
        "Retry-After": _http_date_in(120) if retry_after_header == "http-date"
        else retry_after_header}
    twilio_server.enqueue(TwilioOutcome.error(20429, headers=headers))
    exc = failure(lambda: twilio(twilio_server).send(sms()))

    assert type(exc) is TransientChannelError
    assert (exc.status, exc.code, exc.excerpt) == (429, "20429", "Too Many Requests")
    if low is None or high is None:
        assert exc.retry_after is None
    else:
        assert exc.retry_after is not None
        assert exc.retry_after.tzinfo is not None
        assert NOW + timedelta(seconds=low) <= exc.retry_after <= NOW + timedelta(seconds=high)


def test_twilio_retry_after_is_read_per_sending_thread(twilio_server: TwilioAPIServer) -> None:
    channel = twilio(twilio_server)
    twilio_server.enqueue(*(TwilioOutcome.rate_limited(retry_after=s) for s in range(1, 9)))

    def send(i: int) -> tuple[str, datetime | None]:
        exc = failure(lambda: channel.send(sms(f"message {i}")))
        return f"message {i}", exc.retry_after

    with ThreadPoolExecutor(max_workers=8) as pool:
        seen = dict(pool.map(send, range(8)))
    answered = {r.form_value("Body"): int(r.response.headers["Retry-After"])
                for r in twilio_server.requests if r.response is not None}
    assert len(answered) == 8
    assert seen == {body: NOW + timedelta(seconds=s) for body, s in answered.items()}


@pytest.mark.parametrize(("retry_after", "expected"),
                         [(None, None), (30, NOW + timedelta(seconds=30))])
def test_twilio_unavailable_is_transient(
    twilio_server: TwilioAPIServer, retry_after: int | None, expected: datetime | None,
) -> None:
    twilio_server.enqueue(TwilioOutcome.service_unavailable(retry_after=retry_after))
    exc = failure(lambda: twilio(twilio_server).send(sms()))

    assert type(exc) is TransientChannelError
    assert (exc.status, exc.code, exc.excerpt) == (503, "20503", "Service unavailable")
    assert exc.retry_after == expected


@pytest.mark.parametrize(
    ("outcome", "status", "code"),
    [
        pytest.param("server_error", 500, "20500", id="500"),
        pytest.param(Outcome("reply", reply=Reply(502, b"<html>Bad Gateway</html>",
                                                  {"Content-Type": "text/html"})),
                     502, None, id="502-html"),
        pytest.param(_twilio_error(504, 20504, "Gateway timeout"), 504, "20504", id="504"),
    ],
)
def test_twilio_server_errors_are_ambiguous(
    twilio_server: TwilioAPIServer, outcome: Outcome | str, status: int, code: str | None,
) -> None:
    twilio_server.enqueue(outcome)
    exc = failure(lambda: twilio(twilio_server).send(sms()))

    assert type(exc) is AmbiguousChannelError
    assert (exc.provider, exc.status, exc.code, exc.retry_after) == ("twilio", status, code, None)
    assert exc.touch_point_id == TP
    assert len(twilio_server.requests) == 1  # never re-sent


def test_twilio_hung_request_is_ambiguous_after_the_timeout(
    twilio_server: TwilioAPIServer,
) -> None:
    twilio_server.enqueue("hang")
    channel = twilio(twilio_server, timeout=SHORT_TIMEOUT)
    started = time.monotonic()
    exc = failure(lambda: channel.send(sms()))
    elapsed = time.monotonic() - started

    assert type(exc) is AmbiguousChannelError
    assert SHORT_TIMEOUT * 0.9 <= elapsed < 2.0
    assert (exc.status, exc.code, exc.touch_point_id) == (None, None, TP)
    assert "ReadTimeout" in exc.message
    assert [r.outcome for r in twilio_server.requests] == ["hang"]


def test_twilio_dropped_connection_is_ambiguous(twilio_server: TwilioAPIServer) -> None:
    twilio_server.enqueue("disconnect")
    exc = failure(lambda: twilio(twilio_server).send(sms()))

    assert type(exc) is AmbiguousChannelError
    assert "RemoteDisconnected" in exc.message
    assert len(twilio_server.requests) == 1


def test_twilio_refused_connection_is_transient() -> None:
    server = TwilioAPIServer().start()
    channel = twilio(server)
    server.stop()
    exc = failure(lambda: channel.send(sms()))

    assert type(exc) is TransientChannelError
    assert (exc.status, exc.retry_after, exc.touch_point_id) == (None, None, TP)
    assert exc.excerpt.startswith("ConnectionRefusedError: ")


@linux_only
def test_twilio_connect_timeout_is_transient() -> None:
    with ConnectTimeoutListener() as listener:
        channel = twilio(api_url=listener.url, timeout=SHORT_TIMEOUT)
        started = time.monotonic()
        exc = failure(lambda: channel.send(sms()))
    assert time.monotonic() - started < 2.0
    assert type(exc) is TransientChannelError
    assert "ConnectTimeout" in exc.message


@pytest.mark.parametrize(
    "options",
    [
        {"from_number": None, "messaging_service_sid": None},
        {"from_number": CLINIC_NUMBER, "messaging_service_sid": SERVICE_SID},
        {"auth_token": ""},
        {"timeout": 0},
        {"api_url": "127.0.0.1:8080"},
    ],
)
def test_twilio_rejects_invalid_configuration(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="twilio: "):
        twilio(**options)


def test_twilio_repr_and_logs_hide_the_token_and_numbers(
    twilio_server: TwilioAPIServer, caplog: pytest.LogCaptureFixture,
) -> None:
    channel = twilio(twilio_server)
    assert repr(channel) == (
        "TwilioSMS(account_sid='AC0123…', auth_token='•••', from_number='+1••••••••06', "
        f"api_url='{twilio_server.url}', timeout=5.0)")
    caplog.set_level(logging.DEBUG)
    channel.send(sms())
    assert caplog.records  # the SDK does log each request...
    assert twilio_server.auth_token not in caplog.text  # ...but not the token
    assert PATIENT_PHONE not in caplog.text


# ============================================================================ SendGrid


def test_sendgrid_sends_the_exact_mail(sendgrid_server: SendGridAPIServer) -> None:
    result = sendgrid(sendgrid_server).send(mail())

    assert result == SendResult("sendgrid", sendgrid_server.message_ids[0])
    (request,) = sendgrid_server.requests
    assert (request.method, request.path) == ("POST", "/v3/mail/send")
    assert request.header("Authorization") == f"Bearer {sendgrid_server.api_key}"
    # The whole body: nothing else (no categories or custom args with patient data).
    assert request.json == {
        "personalizations": [{"to": [{"email": PATIENT_EMAIL}]}],
        "from": {"email": CLINIC_EMAIL, "name": "Riverside PT"},
        "subject": "Your appointment tomorrow",
        "content": [
            {"type": "text/plain", "value": "Hi Maria, see you tomorrow at 10:00."},
            {"type": "text/html", "value": "<p>Hi Maria, see you tomorrow at <b>10:00</b>.</p>"},
        ],
        "headers": {"List-Unsubscribe": UNSUBSCRIBE, "List-Unsubscribe-Post": ONE_CLICK},
        "custom_args": {"touch_point_id": "42"},
        "categories": ["touchpoint"],
    }


def test_sendgrid_text_only_mail_without_sender_name(sendgrid_server: SendGridAPIServer) -> None:
    sendgrid(sendgrid_server, from_name=None).send(mail(html=None, headers={}))

    (request,) = sendgrid_server.requests
    body = request.json
    assert body["from"] == {"email": CLINIC_EMAIL}
    assert body["content"] == [{"type": "text/plain",
                                "value": "Hi Maria, see you tomorrow at 10:00."}]
    assert "headers" not in body


@pytest.mark.parametrize(
    ("message", "why"),
    [
        pytest.param(mail(subject=None), "no subject", id="no-subject"),
        pytest.param(mail(body="", html=None), "no content", id="no-content"),
        pytest.param(mail(body="SG.abcdef.ghijkl is your code", html=None),
                     "ApiKeyIncludedException", id="sdk-api-key-check"),
    ],
)
def test_sendgrid_unsendable_mail_fails_before_any_request(
    sendgrid_server: SendGridAPIServer, message: OutboundMessage, why: str,
) -> None:
    exc = failure(lambda: sendgrid(sendgrid_server).send(message))

    assert type(exc) is PermanentChannelError
    assert why in exc.message
    assert (exc.provider, exc.touch_point_id) == ("sendgrid", TP)
    assert sendgrid_server.requests == []


@pytest.mark.parametrize(
    ("outcome", "status", "excerpt"),
    [
        pytest.param("bad_request", 400,
                     "The from email does not contain a valid address. (from.email)",
                     id="400"),
        pytest.param(SendGridOutcome.error(400, payload={"errors": [
            {"message": f"Does not contain a valid address: {PATIENT_EMAIL}",
             "field": "personalizations.0.to.0.email"}]}), 400,
            f"Does not contain a valid address: {MASKED_EMAIL} "
            "(personalizations.0.to.0.email)", id="400-address-masked"),
        pytest.param(SendGridOutcome.error(413, payload={"errors": [
            {"message": "The JSON payload you have included in your request is too large.",
             "field": None}]}), 413,
            "The JSON payload you have included in your request is too large.", id="413"),
    ],
)
def test_sendgrid_refusals_are_permanent_and_redacted(
    sendgrid_server: SendGridAPIServer, outcome: Outcome | str, status: int, excerpt: str,
) -> None:
    sendgrid_server.enqueue(outcome)
    exc = failure(lambda: sendgrid(sendgrid_server).send(mail()))

    assert type(exc) is PermanentChannelError
    assert (exc.provider, exc.status, exc.code, exc.touch_point_id) == (
        "sendgrid", status, None, TP)
    assert (exc.opted_out, exc.retry_after) == (False, None)
    assert exc.excerpt == excerpt
    assert exc.describe() == f"sendgrid HTTP {status}: {excerpt}"
    assert_leaks_nothing(exc, sendgrid_server.api_key)


@pytest.mark.parametrize("how", ["wrong_key", "forbidden"])
def test_sendgrid_rejected_key_or_sender_makes_messages_wait_fifteen_minutes(
    sendgrid_server: SendGridAPIServer, how: str,
) -> None:
    wrong_key = "SG.wrong-key.0123456789abcdef"
    if how == "wrong_key":
        channel, expected_status = sendgrid(sendgrid_server, api_key=wrong_key), 401
        excerpt = "The provided authorization grant is invalid, expired, or revoked"
    else:
        sendgrid_server.enqueue("forbidden")
        channel, expected_status = sendgrid(sendgrid_server), 403
        excerpt = "The from address does not match a verified Sender Identity."
    exc = failure(lambda: channel.send(mail()))

    assert type(exc) is TransientChannelError
    assert exc.status == expected_status
    assert exc.retry_after == NOW + timedelta(minutes=15)
    assert exc.excerpt.startswith(excerpt)
    assert len(exc.excerpt) <= 200
    assert "API key" in exc.message
    assert_leaks_nothing(exc, wrong_key, sendgrid_server.api_key)
    assert sendgrid_server.message_ids == []


def test_sendgrid_rate_limit_prefers_retry_after_then_the_reset_header(
    sendgrid_server: SendGridAPIServer,
) -> None:
    sendgrid_server.enqueue(SendGridOutcome.rate_limited(retry_after=3, reset_in=600),
                            SendGridOutcome.rate_limited(reset_in=60))
    channel = sendgrid(sendgrid_server)

    first = failure(lambda: channel.send(mail()))
    assert type(first) is TransientChannelError
    assert (first.status, first.excerpt) == (429, "too many requests")
    assert first.retry_after == NOW + timedelta(seconds=3)

    second = failure(lambda: channel.send(mail()))
    assert type(second) is TransientChannelError
    assert second.retry_after is not None  # X-RateLimit-Reset: epoch seconds, ~60 s away
    assert NOW + timedelta(seconds=58) <= second.retry_after <= NOW + timedelta(seconds=60)


@pytest.mark.parametrize(("retry_after", "expected"),
                         [(None, None), (20, NOW + timedelta(seconds=20))])
def test_sendgrid_unavailable_is_transient(
    sendgrid_server: SendGridAPIServer, retry_after: int | None, expected: datetime | None,
) -> None:
    sendgrid_server.enqueue(SendGridOutcome.service_unavailable(retry_after=retry_after))
    exc = failure(lambda: sendgrid(sendgrid_server).send(mail()))

    assert type(exc) is TransientChannelError
    assert (exc.status, exc.excerpt, exc.retry_after) == (503, "service unavailable", expected)


@pytest.mark.parametrize("status", [500, 502, 504])
def test_sendgrid_server_errors_are_ambiguous(
    sendgrid_server: SendGridAPIServer, status: int,
) -> None:
    sendgrid_server.enqueue(SendGridOutcome.error(
        status, payload={"errors": [{"field": None, "message": "internal error"}]}))
    exc = failure(lambda: sendgrid(sendgrid_server).send(mail()))

    assert type(exc) is AmbiguousChannelError
    assert (exc.status, exc.excerpt, exc.retry_after, exc.touch_point_id) == (
        status, "internal error", None, TP)
    assert len(sendgrid_server.requests) == 1


def test_sendgrid_hung_request_is_ambiguous_after_the_timeout(
    sendgrid_server: SendGridAPIServer,
) -> None:
    sendgrid_server.enqueue("hang")
    channel = sendgrid(sendgrid_server, timeout=SHORT_TIMEOUT)
    started = time.monotonic()
    exc = failure(lambda: channel.send(mail()))
    elapsed = time.monotonic() - started

    assert type(exc) is AmbiguousChannelError
    assert SHORT_TIMEOUT * 0.9 <= elapsed < 2.0
    assert "TimeoutError" in exc.message
    assert [r.outcome for r in sendgrid_server.requests] == ["hang"]


def test_sendgrid_dropped_connection_is_ambiguous(sendgrid_server: SendGridAPIServer) -> None:
    sendgrid_server.enqueue("disconnect")
    exc = failure(lambda: sendgrid(sendgrid_server).send(mail()))

    assert type(exc) is AmbiguousChannelError
    assert "RemoteDisconnected" in exc.message
    assert len(sendgrid_server.requests) == 1


def test_sendgrid_refused_connection_is_transient() -> None:
    server = SendGridAPIServer().start()
    channel = sendgrid(server)
    server.stop()
    exc = failure(lambda: channel.send(mail()))

    assert type(exc) is TransientChannelError
    assert (exc.status, exc.retry_after, exc.touch_point_id) == (None, None, TP)
    assert exc.excerpt.startswith("ConnectionRefusedError: ")


@linux_only
def test_sendgrid_connect_timeout_is_transient() -> None:
    with ConnectTimeoutListener() as listener:
        channel = sendgrid(api_url=listener.url, timeout=SHORT_TIMEOUT)
        started = time.monotonic()
        exc = failure(lambda: channel.send(mail()))
    assert time.monotonic() - started < 2.0
    assert type(exc) is TransientChannelError
    assert exc.excerpt == "TimeoutError: timed out"


@pytest.mark.parametrize(
    "options",
    [{"api_key": ""}, {"from_email": "front desk"}, {"timeout": -1}, {"api_url": "localhost"}],
)
def test_sendgrid_rejects_invalid_configuration(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="sendgrid: "):
        sendgrid(**options)


def test_sendgrid_repr_and_sdk_debug_log_hide_the_key_and_address(
    sendgrid_server: SendGridAPIServer, caplog: pytest.LogCaptureFixture,
) -> None:
    channel = sendgrid(sendgrid_server)
    assert repr(channel) == (
        "SendGridEmail(api_key='•••', from_email='f•••@riverside-pt.example', "
        f"from_name='Riverside PT', api_url='{sendgrid_server.url}', timeout=5.0)")
    caplog.set_level(logging.DEBUG)
    channel.send(mail())
    # python_http_client logs "HEADERS: {... 'Authorization': 'Bearer SG…'}" at DEBUG.
    assert sendgrid_server.api_key not in caplog.text
    assert PATIENT_EMAIL not in caplog.text


# --------------------------------------------------------------------------- start-up

_REAL = {"TOUCHPOINT_PRACTICE_NAME": "Riverside PT", "TOUCHPOINT_PRACTICE_TIMEZONE":
         "America/Chicago", "TOUCHPOINT_SMS_PROVIDER": "twilio",
         "TOUCHPOINT_EMAIL_PROVIDER": "sendgrid", "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
         "TWILIO_AUTH_TOKEN": "secret-token-123", "TWILIO_FROM_NUMBER": "+13125550100",
         "SENDGRID_API_KEY": "SG.secret-key", "TOUCHPOINT_EMAIL_FROM": "hello@pt.example",
         "TOUCHPOINT_PUBLIC_URL": "https://tp.example",
         "TOUCHPOINT_UNSUBSCRIBE_MAILTO": "unsubscribe@pt.example"}


@pytest.mark.parametrize(("missing", "named"), [
    ("TWILIO_ACCOUNT_SID", "TWILIO_ACCOUNT_SID"),
    ("TWILIO_FROM_NUMBER", "TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID"),
    ("SENDGRID_API_KEY", "SENDGRID_API_KEY"),
    ("TOUCHPOINT_EMAIL_FROM", "TOUCHPOINT_EMAIL_FROM"),
    ("TOUCHPOINT_PUBLIC_URL", "TOUCHPOINT_PUBLIC_URL"),
    ("TOUCHPOINT_UNSUBSCRIBE_MAILTO", "TOUCHPOINT_UNSUBSCRIBE_MAILTO"),
])
def test_a_missing_provider_setting_is_a_start_up_error_naming_it(missing: str,
                                                                  named: str) -> None:
    settings = load_settings(None, environ={k: v for k, v in _REAL.items() if k != missing})
    with pytest.raises(ConfigError) as caught:
        build_channels(settings)

    assert named in caught.value.message
    assert "secret" not in caught.value.message


def test_with_every_setting_the_real_channels_start() -> None:
    channels = build_channels(load_settings(None, environ=_REAL))

    assert (channels["sms"].provider, channels["email"].provider) == ("twilio", "sendgrid")


@pytest.mark.parametrize(("url", "accepted"), [
    ("https://tp.example", True), ("http://127.0.0.1:8000", True),
    ("http://localhost:8000", True), ("http://tp.example", False), ("tp.example", False)])
def test_the_public_url_is_https_except_on_this_machine(url: str, accepted: bool) -> None:
    environ = {**_REAL, "TOUCHPOINT_PUBLIC_URL": url}
    if accepted:
        assert load_settings(None, environ=environ).webhooks.public_url == url
    else:
        with pytest.raises(ConfigError) as caught:
            load_settings(None, environ=environ)
        assert "must start with https://" in caught.value.message


# --------------------------------------------------------------------------- reconciliation


def test_twilio_finds_a_sent_message_by_number_time_and_body(
        twilio_server: TwilioAPIServer) -> None:
    channel = twilio(twilio_server)
    assert channel.can_find_sent
    twilio_server.enqueue(TwilioOutcome.success(date_sent="Mon, 10 Mar 2025 13:00:00 +0000",
                                                date_created="Mon, 10 Mar 2025 13:00:00 +0000"))
    channel.send(sms())  # an hour before: not the attempt's
    twilio_server.enqueue(TwilioOutcome.success(date_sent="Mon, 10 Mar 2025 14:00:05 +0000",
                                                date_created="Mon, 10 Mar 2025 14:00:05 +0000"))
    taken = channel.send(sms())
    channel.send(sms("Another text to the same number"))
    assert channel.find_sent(PATIENT_PHONE, NOW, sms().body) == taken.provider_message_id
    # one Twilio could not hand over never reached the number: it does not count
    twilio_server.enqueue(TwilioOutcome.success(date_sent="Mon, 10 Mar 2025 14:30:00 +0000",
                                                date_created="Mon, 10 Mar 2025 14:30:00 +0000",
                                                status="undelivered", error_code=30003))
    channel.send(sms("Sent, then undelivered"))
    assert channel.find_sent(PATIENT_PHONE, NOW, "Sent, then undelivered") is None
    assert channel.find_sent(PATIENT_PHONE, NOW, "Never sent") is None
    assert channel.find_sent("+15035550199", NOW, sms().body) is None
    # an hour later, the one sent at 14:00:05 is before the window
    assert channel.find_sent(PATIENT_PHONE, NOW + timedelta(hours=1), sms().body) is None
    lists = [r for r in twilio_server.requests if r.method == "GET"]
    assert lists[0].query["DateSent>"] == ["2025-03-10T13:58:00Z"]  # less LOOKUP_SLACK
    assert lists[0].query["To"] == [PATIENT_PHONE]
    channel.close()


def test_twilio_finds_a_message_still_in_its_queue_which_no_date_sent_filter_sees(
        twilio_server: TwilioAPIServer) -> None:
    """A message Twilio took but has not sent yet has no date_sent: ``DateSent>`` cannot
    see it, and sending it again would send it twice."""
    channel = twilio(twilio_server)
    twilio_server.enqueue(TwilioOutcome.success(date_created="Mon, 10 Mar 2025 13:00:00 +0000",
                                                still_queued=True))
    channel.send(sms())  # queued an hour before the attempt: not the attempt's
    assert channel.find_sent(PATIENT_PHONE, NOW, sms().body) is None
    twilio_server.enqueue(TwilioOutcome.success(date_created="Mon, 10 Mar 2025 14:00:05 +0000",
                                                still_queued=True))
    taken = channel.send(sms())
    assert channel.find_sent(PATIENT_PHONE, NOW, sms().body) == taken.provider_message_id
    assert channel.find_sent(PATIENT_PHONE, NOW, "Never sent") is None
    lists = [r for r in twilio_server.requests if r.method == "GET"]
    assert "DateSent>" in lists[-2].query and "DateSent>" not in lists[-1].query
    assert all(r.query["To"] == [PATIENT_PHONE] for r in lists)
    # the fake lists it as Twilio would: queued, no date_sent, and the create's answer
    # carries nothing Twilio's does not
    listed = twilio_server.messages[-1]
    assert listed["date_sent"] is None
    channel.close()


def test_a_twilio_list_that_fails_is_transient_and_masks_the_number(
        twilio_server: TwilioAPIServer) -> None:
    refused = twilio(twilio_server, auth_token="wrong-token")
    with pytest.raises(TransientChannelError) as failed:
        refused.find_sent(PATIENT_PHONE, NOW, "hello")
    assert failed.value.message == "Twilio's message list could not be read (HTTP 401)"
    refused.close()
    gone = twilio(twilio_server)
    twilio_server.stop()
    with pytest.raises(TransientChannelError, match=r"could not be read \(ConnectionError\)"):
        gone.find_sent(PATIENT_PHONE, NOW, "hello")
    assert PATIENT_PHONE not in str(failed.value)
    gone.close()
