"""The local Twilio / SendGrid API servers, driven by the real SDKs.

These tests pin the behaviour documented in ``tests/provider_servers/__init__.py``
(SDK pointing recipes and the exception table): if an SDK upgrade changes what
is raised, a test here fails.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import sys
import threading
import time
import urllib.error
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from python_http_client.exceptions import (
    BadRequestsError,
    ForbiddenError,
    GatewayTimeoutError,
    HTTPError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    TooManyRequestsError,
    UnauthorizedError,
)
from sendgrid.helpers.mail import Content, CustomArg, Header, Mail
from twilio.base.exceptions import TwilioException, TwilioRestException

from tests.provider_servers import (
    ConnectTimeoutListener,
    SendGridAPIServer,
    SendGridOutcome,
    TwilioAPIServer,
    TwilioOutcome,
    load_payload,
    sendgrid_api,
    twilio_api,
)
from tests.provider_servers._base import Outcome, Reply

TO = "+15558675310"
FROM = "+15005550006"
CALLBACK = "https://touchpoint.example/webhooks/twilio/status"
SHORT_TIMEOUT = 0.5


@pytest.fixture(autouse=True)
def _no_proxy_for_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests (Twilio) and urllib (SendGrid) both honour *_PROXY env vars.
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")


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


def _send_sms(client: Any, **kwargs: Any) -> Any:
    params = {"to": TO, "from_": FROM, "body": "Your appointment is tomorrow at 10:00."}
    params.update(kwargs)
    return client.messages.create(**params)


def _mail() -> Mail:
    mail = Mail(
        from_email=("clinic@touchpoint.example", "Touchpoint Clinic"),
        to_emails="patient@example.com",
        subject="Appointment reminder",
        plain_text_content="See you tomorrow at 10:00.",
    )
    mail.add_content(Content("text/html", "<p>See you tomorrow at <b>10:00</b>.</p>"))
    mail.add_custom_arg(CustomArg("touchpoint_message_id", "msg-123"))
    mail.add_header(Header("X-Touchpoint-Campaign", "reminders"))
    return mail


# ============================================================================ server API


def test_server_lifecycle_and_url() -> None:
    server = TwilioAPIServer()
    assert not server.running
    with pytest.raises(RuntimeError):
        _ = server.url
    server.start()
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
        assert server.port > 0
    finally:
        server.stop()
    assert not server.running
    server.stop()  # idempotent


def test_unknown_outcome_name_is_rejected(
    twilio_server: TwilioAPIServer, sendgrid_server: SendGridAPIServer
) -> None:
    with pytest.raises(KeyError, match="unknown Twilio outcome"):
        twilio_server.enqueue("nope")
    with pytest.raises(KeyError, match="unknown SendGrid outcome"):
        sendgrid_server.enqueue("bad_reqest")


def test_script_is_consumed_in_order_then_falls_back_to_success(
    twilio_server: TwilioAPIServer,
) -> None:
    client = twilio_api.make_client(twilio_server)
    twilio_server.enqueue("server_error", TwilioOutcome.invalid_to_number())
    assert len(twilio_server.pending) == 2
    codes = []
    for _ in range(4):
        try:
            codes.append(_send_sms(client).status)
        except TwilioRestException as exc:
            codes.append(exc.code)
    assert codes == [20500, 21211, "queued", "queued"]
    assert twilio_server.pending == []
    assert [r.outcome for r in twilio_server.requests] == ["500 20500", "400 21211", "201", "201"]
    twilio_server.reset()
    assert twilio_server.requests == []
    assert twilio_server.messages == []


def test_concurrent_requests_are_all_recorded(twilio_server: TwilioAPIServer) -> None:
    client = twilio_api.make_client(twilio_server)
    with ThreadPoolExecutor(max_workers=8) as pool:
        sids = list(pool.map(lambda i: _send_sms(client, body=f"msg {i}").sid, range(16)))
    assert len(set(sids)) == 16
    assert sorted(r.form_value("Body") or "" for r in twilio_server.requests) == sorted(
        f"msg {i}" for i in range(16)
    )
    assert {m["sid"] for m in twilio_server.messages} == set(sids)


# ============================================================================ Twilio


def test_twilio_success(twilio_server: TwilioAPIServer) -> None:
    client = twilio_api.make_client(twilio_server)
    message = _send_sms(client, status_callback=CALLBACK)

    assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
    assert message.status == "queued"
    assert (message.to, message.from_) == (TO, FROM)
    assert message.body == "Your appointment is tomorrow at 10:00."
    assert message.account_sid == twilio_server.account_sid
    assert message.messaging_service_sid is None
    assert message.num_segments == "1"
    assert message.direction == "outbound-api"
    assert message.error_code is None
    assert message.date_sent is None
    assert isinstance(message.date_created, datetime)
    assert message.date_created.tzinfo is not None
    assert abs((datetime.now(UTC) - message.date_created).total_seconds()) < 60
    assert (
        message.uri
        == f"/2010-04-01/Accounts/{twilio_server.account_sid}/Messages/{message.sid}.json"
    )

    (request,) = twilio_server.requests
    assert request.method == "POST"
    assert request.path == twilio_server.messages_path
    assert request.header("Content-Type") == "application/x-www-form-urlencoded"
    assert (request.header("User-Agent") or "").startswith("twilio-python/9.")
    auth = base64.b64decode((request.header("Authorization") or "").removeprefix("Basic "))
    assert auth.decode() == f"{twilio_server.account_sid}:{twilio_server.auth_token}"
    assert request.form == {
        "To": [TO],
        "From": [FROM],
        "Body": ["Your appointment is tomorrow at 10:00."],
        "StatusCallback": [CALLBACK],
    }
    assert request.response is not None
    assert request.response.status == 201
    assert request.response.json_body()["sid"] == message.sid
    # The raw JSON keeps Twilio's RFC 2822 date format.
    raw_date = request.response.json_body()["date_created"]
    assert re.fullmatch(
        r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000", raw_date
    )


def test_twilio_success_payload_has_the_captured_shape(twilio_server: TwilioAPIServer) -> None:
    _send_sms(twilio_api.make_client(twilio_server))
    (sent,) = twilio_server.messages
    assert set(sent) == set(load_payload("twilio_message_201.json"))


def test_twilio_messaging_service_send_is_accepted(twilio_server: TwilioAPIServer) -> None:
    service = "MG" + "ab" * 16
    message = twilio_api.make_client(twilio_server).messages.create(
        to=TO, messaging_service_sid=service, body="hi"
    )
    assert (message.status, message.from_, message.messaging_service_sid) == (
        "accepted",
        None,
        service,
    )
    assert message.num_segments == "0"


@pytest.mark.parametrize(
    ("body", "segments"),
    [("a" * 160, "1"), ("a" * 161, "2"), ("é" * 70, "1"), ("Привет" * 12, "2"), ("😀" * 35, "1")],
)
def test_twilio_num_segments(twilio_server: TwilioAPIServer, body: str, segments: str) -> None:
    assert _send_sms(twilio_api.make_client(twilio_server), body=body).num_segments == segments


def test_twilio_scheduled_send(twilio_server: TwilioAPIServer) -> None:
    send_at = datetime(2030, 1, 2, 15, 0, tzinfo=UTC)
    message = _send_sms(
        twilio_api.make_client(twilio_server),
        messaging_service_sid="MG" + "cd" * 16,
        schedule_type="fixed",
        send_at=send_at,
    )
    assert message.status == "scheduled"
    (request,) = twilio_server.requests
    assert request.form_value("SendAt") == "2030-01-02T15:00:00Z"


def test_twilio_success_overrides(twilio_server: TwilioAPIServer) -> None:
    twilio_server.enqueue(TwilioOutcome.success(status="sent", price="-0.00790"))
    message = _send_sms(twilio_api.make_client(twilio_server))
    assert (message.status, message.price) == ("sent", "-0.00790")


TWILIO_ERRORS = [
    ("invalid_to", 400, 21211, "twilio_error_21211.json"),
    ("unsubscribed", 400, 21610, "twilio_error_21610.json"),
    ("region_disabled", 400, 21408, "twilio_error_21408.json"),
    ("unauthorized", 401, 20003, "twilio_error_20003.json"),
    ("rate_limited", 429, 20429, "twilio_error_20429.json"),
    ("server_error", 500, 20500, "twilio_error_20500.json"),
    ("unavailable", 503, 20503, "twilio_error_20503.json"),
]


@pytest.mark.parametrize(("name", "status", "code", "payload"), TWILIO_ERRORS)
def test_twilio_error_outcomes(
    twilio_server: TwilioAPIServer, name: str, status: int, code: int, payload: str
) -> None:
    twilio_server.enqueue(name)
    with pytest.raises(TwilioRestException) as caught:
        _send_sms(twilio_api.make_client(twilio_server))
    exc = caught.value
    expected = load_payload(payload)
    assert (exc.status, exc.code) == (status, code)
    assert exc.msg == f"Unable to create record: {expected['message']}"
    assert exc.method == "POST"
    assert exc.uri == f"/Accounts/{twilio_server.account_sid}/Messages.json"
    assert exc.details is None
    # Wire shape is Twilio's legacy error JSON.
    (request,) = twilio_server.requests
    assert request.response is not None
    body = request.response.json_body()
    assert body == expected
    assert {"code", "message", "more_info", "status"} <= set(body)
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    assert body["status"] == status == request.response.status


def test_twilio_bad_credentials_get_401_without_consuming_the_script(
    twilio_server: TwilioAPIServer,
) -> None:
    twilio_server.enqueue("server_error")
    client = twilio_api.make_client(twilio_server, auth_token="wrong-token")
    with pytest.raises(TwilioRestException) as caught:
        _send_sms(client)
    assert (caught.value.status, caught.value.code) == (401, 20003)
    assert caught.value.msg == "Unable to create record: Authenticate"
    (request,) = twilio_server.requests
    assert request.response is not None
    assert request.response.headers["WWW-Authenticate"] == 'Basic realm="Twilio API"'
    assert request.response.json_body()["detail"] == "Your AccountSid or AuthToken was incorrect."
    assert len(twilio_server.pending) == 1  # the scripted 500 is still queued


def test_twilio_wrong_account_in_path_is_404(twilio_server: TwilioAPIServer) -> None:
    client = twilio_api.make_client(twilio_server)
    other = "AC" + "f" * 32
    with pytest.raises(TwilioRestException) as caught:
        client.api.v2010.accounts(other).messages.create(to=TO, from_=FROM, body="x")
    assert (caught.value.status, caught.value.code) == (404, 20404)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"to": ""}, 21604),
        ({"from_": None}, 21603),
        ({"body": None}, 21602),
    ],
)
def test_twilio_request_validation(
    twilio_server: TwilioAPIServer, kwargs: dict[str, Any], code: int
) -> None:
    params: dict[str, Any] = {"to": TO, "from_": FROM, "body": "hi"}
    params.update(kwargs)
    params = {k: v for k, v in params.items() if v is not None}
    with pytest.raises(TwilioRestException) as caught:
        twilio_api.make_client(twilio_server).messages.create(**params)
    assert (caught.value.status, caught.value.code) == (400, code)


def test_twilio_hang_raises_read_timeout(twilio_server: TwilioAPIServer) -> None:
    twilio_server.enqueue("hang")
    client = twilio_api.make_client(twilio_server, timeout=SHORT_TIMEOUT)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout) as caught:
        _send_sms(client)
    elapsed = time.monotonic() - started
    assert SHORT_TIMEOUT * 0.9 <= elapsed < 2.0
    assert isinstance(caught.value, requests.exceptions.Timeout)
    assert not isinstance(caught.value, requests.exceptions.ConnectionError)
    (request,) = twilio_server.requests
    assert request.outcome == "hang"
    assert request.response is None
    assert request.form_value("To") == TO  # the request did reach "Twilio"
    # The server stays usable for the next request.
    assert _send_sms(client).status == "queued"


def test_twilio_disconnect_raises_connection_error(twilio_server: TwilioAPIServer) -> None:
    twilio_server.enqueue(TwilioOutcome.DISCONNECT)
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        _send_sms(twilio_api.make_client(twilio_server))
    assert not isinstance(caught.value, requests.exceptions.Timeout)
    assert "RemoteDisconnected" in repr(caught.value)
    assert len(twilio_server.requests) == 1  # no silent retry by the SDK


def test_twilio_connection_refused() -> None:
    server = TwilioAPIServer().start()
    client = twilio_api.make_client(server)
    server.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        _send_sms(client)


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs")
def test_twilio_connect_timeout(twilio_server: TwilioAPIServer) -> None:
    client = twilio_api.make_client(twilio_server, timeout=SHORT_TIMEOUT)
    with ConnectTimeoutListener() as listener:
        client.api.base_url = listener.url
        started = time.monotonic()
        with pytest.raises(requests.exceptions.ConnectTimeout) as caught:
            _send_sms(client)
    assert time.monotonic() - started < 2.0
    # ConnectTimeout is both a ConnectionError and a Timeout: order your excepts.
    assert isinstance(caught.value, requests.exceptions.ConnectionError)
    assert isinstance(caught.value, requests.exceptions.Timeout)


def test_twilio_retry_after_via_response_hook(twilio_server: TwilioAPIServer) -> None:
    seen = threading.local()

    def keep_headers(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        seen.headers = response.headers

    twilio_server.enqueue(TwilioOutcome.rate_limited(retry_after=7))
    client = twilio_api.make_client(twilio_server, request_hooks={"response": [keep_headers]})
    with pytest.raises(TwilioRestException) as caught:
        _send_sms(client)
    assert (caught.value.status, caught.value.code) == (429, 20429)
    assert not hasattr(caught.value, "headers")  # the SDK drops response headers...
    assert seen.headers["Retry-After"] == "7"  # ...but the hook sees them
    assert seen.headers["Twilio-Request-Id"].startswith("RQ")


def test_twilio_non_json_error_body_falls_back_to_status_as_code(
    twilio_server: TwilioAPIServer,
) -> None:
    twilio_server.enqueue(
        Outcome(
            "reply", reply=Reply(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"})
        )
    )
    with pytest.raises(TwilioRestException) as caught:
        _send_sms(twilio_api.make_client(twilio_server))
    assert (caught.value.status, caught.value.code) == (502, 502)
    assert caught.value.msg == "Unable to create record"


def test_twilio_helper_ignores_region_and_edge_env(
    twilio_server: TwilioAPIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    assert _send_sms(twilio_api.make_client(twilio_server)).status == "queued"


# ============================================================================ SendGrid


def test_sendgrid_success(sendgrid_server: SendGridAPIServer) -> None:
    sg = sendgrid_api.make_client(sendgrid_server)
    response = sg.send(_mail())

    assert response.status_code == 202
    assert response.body == b""
    message_id = response.headers["X-Message-Id"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", message_id)
    assert sendgrid_server.message_ids == [message_id]

    (request,) = sendgrid_server.requests
    assert (request.method, request.path) == ("POST", "/v3/mail/send")
    assert request.header("Authorization") == f"Bearer {sendgrid_server.api_key}"
    assert request.header("Content-Type") == "application/json"
    assert (request.header("User-Agent") or "").startswith("sendgrid/6.")
    assert json.loads(request.body) == request.json
    mail = request.json
    assert mail["personalizations"] == [{"to": [{"email": "patient@example.com"}]}]
    assert mail["from"] == {"email": "clinic@touchpoint.example", "name": "Touchpoint Clinic"}
    assert mail["subject"] == "Appointment reminder"
    assert mail["content"] == [
        {"type": "text/plain", "value": "See you tomorrow at 10:00."},
        {"type": "text/html", "value": "<p>See you tomorrow at <b>10:00</b>.</p>"},
    ]
    assert mail["custom_args"] == {"touchpoint_message_id": "msg-123"}
    assert mail["headers"] == {"X-Touchpoint-Campaign": "reminders"}


def test_sendgrid_scripted_message_id(sendgrid_server: SendGridAPIServer) -> None:
    sendgrid_server.enqueue(SendGridOutcome.success(message_id="OgOotlHIR0yiF-16baPbAg"))
    response = sendgrid_api.make_client(sendgrid_server).send(_mail())
    assert response.headers["X-Message-Id"] == "OgOotlHIR0yiF-16baPbAg"


SENDGRID_ERRORS = [
    ("bad_request", BadRequestsError, 400, "Bad Request", "sendgrid_error_400.json"),
    ("unauthorized", UnauthorizedError, 401, "Unauthorized", "sendgrid_error_401.json"),
    ("forbidden", ForbiddenError, 403, "Forbidden", "sendgrid_error_403.json"),
    ("rate_limited", TooManyRequestsError, 429, "Too Many Requests", "sendgrid_error_429.json"),
    ("server_error", InternalServerError, 500, "Internal Server Error", "sendgrid_error_500.json"),
    ("unavailable", ServiceUnavailableError, 503, "Service Unavailable", "sendgrid_error_503.json"),
]


@pytest.mark.parametrize(("name", "exc_type", "status", "reason", "payload"), SENDGRID_ERRORS)
def test_sendgrid_error_outcomes(
    sendgrid_server: SendGridAPIServer,
    name: str,
    exc_type: type[HTTPError],
    status: int,
    reason: str,
    payload: str,
) -> None:
    sendgrid_server.enqueue(name)
    with pytest.raises(exc_type) as caught:
        sendgrid_api.make_client(sendgrid_server).send(_mail())
    exc = caught.value
    assert type(exc) is exc_type
    assert isinstance(exc, HTTPError)
    assert exc.status_code == status
    assert exc.reason == reason
    assert isinstance(exc.body, bytes)
    assert exc.to_dict == load_payload(payload)
    assert exc.headers["Content-Type"] == "application/json"
    for error in exc.to_dict["errors"]:
        assert {"message", "field"} <= set(error)


@pytest.mark.parametrize(
    ("status", "exc_type"),
    [
        (404, NotFoundError),
        (413, PayloadTooLargeError),
        (502, HTTPError),
        (504, GatewayTimeoutError),
    ],
)
def test_sendgrid_other_statuses_map_to_http_error_classes(
    sendgrid_server: SendGridAPIServer, status: int, exc_type: type[HTTPError]
) -> None:
    body = {"errors": [{"field": None, "message": f"status {status}"}]}
    sendgrid_server.enqueue(SendGridOutcome.error(status, payload=body))
    with pytest.raises(exc_type) as caught:
        sendgrid_api.make_client(sendgrid_server).send(_mail())
    assert type(caught.value) is exc_type
    assert caught.value.status_code == status
    assert caught.value.to_dict == body


def test_sendgrid_rate_limit_headers_and_retry_after(sendgrid_server: SendGridAPIServer) -> None:
    sendgrid_server.enqueue(SendGridOutcome.rate_limited(retry_after=3), "rate_limited")
    sg = sendgrid_api.make_client(sendgrid_server)
    with pytest.raises(TooManyRequestsError) as caught:
        sg.send(_mail())
    headers = caught.value.headers
    assert headers["Retry-After"] == "3"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert headers["X-RateLimit-Limit"].isdigit()
    assert int(headers["X-RateLimit-Reset"]) > time.time()
    with pytest.raises(TooManyRequestsError) as caught:
        sg.send(_mail())
    assert caught.value.headers.get("Retry-After") is None  # not sent unless scripted


def test_sendgrid_wrong_key_gets_401_without_consuming_the_script(
    sendgrid_server: SendGridAPIServer,
) -> None:
    sendgrid_server.enqueue("server_error")
    sg = sendgrid_api.make_client(sendgrid_server, api_key="SG.wrong")
    with pytest.raises(UnauthorizedError) as caught:
        sg.send(_mail())
    assert caught.value.status_code == 401
    assert caught.value.to_dict == {
        "errors": [
            {
                "message": "The provided authorization grant is invalid, expired, or revoked",
                "field": None,
                "help": None,
            }
        ]
    }
    assert len(sendgrid_server.pending) == 1


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: m.pop("subject"), "subject"),
        (lambda m: m.pop("content"), "content"),
        (lambda m: m.update({"from": {"email": "not-an-address"}}), "from.email"),
        (lambda m: m.update({"personalizations": []}), "personalizations"),
    ],
)
def test_sendgrid_request_validation(
    sendgrid_server: SendGridAPIServer, mutate: Any, field: str
) -> None:
    body = _mail().get()
    mutate(body)
    with pytest.raises(BadRequestsError) as caught:
        sendgrid_api.make_client(sendgrid_server).send(body)
    assert caught.value.to_dict["errors"][0]["field"] == field


def test_sendgrid_hang_raises_timeout_error(sendgrid_server: SendGridAPIServer) -> None:
    sendgrid_server.enqueue(SendGridOutcome.HANG)
    sg = sendgrid_api.make_client(sendgrid_server, timeout=SHORT_TIMEOUT)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        sg.send(_mail())
    elapsed = time.monotonic() - started
    assert SHORT_TIMEOUT * 0.9 <= elapsed < 2.0
    (request,) = sendgrid_server.requests
    assert request.outcome == "hang"
    assert sg.send(_mail()).status_code == 202


def test_sendgrid_per_call_timeout(sendgrid_server: SendGridAPIServer) -> None:
    from sendgrid import SendGridAPIClient

    sendgrid_server.enqueue("hang")
    sg = SendGridAPIClient(api_key=sendgrid_server.api_key, host=sendgrid_server.url)
    assert sg.client.timeout is None  # the SDK default: no timeout at all
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        sg.client.mail.send.post(request_body=_mail().get(), timeout=SHORT_TIMEOUT)
    assert time.monotonic() - started < 2.0


def test_sendgrid_disconnect_raises_remote_disconnected(
    sendgrid_server: SendGridAPIServer,
) -> None:
    sendgrid_server.enqueue("disconnect")
    with pytest.raises(http.client.RemoteDisconnected) as caught:
        sendgrid_api.make_client(sendgrid_server).send(_mail())
    assert isinstance(caught.value, ConnectionError)
    assert len(sendgrid_server.requests) == 1


def test_sendgrid_connection_refused() -> None:
    server = SendGridAPIServer().start()
    sg = sendgrid_api.make_client(server)
    server.stop()
    with pytest.raises(urllib.error.URLError) as caught:
        sg.send(_mail())
    assert isinstance(caught.value.reason, ConnectionRefusedError)
    assert not isinstance(caught.value, HTTPError)


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs")
def test_sendgrid_connect_timeout() -> None:
    from sendgrid import SendGridAPIClient

    with ConnectTimeoutListener() as listener:
        sg = SendGridAPIClient(api_key="SG.x", host=listener.url)
        sg.client.timeout = SHORT_TIMEOUT
        started = time.monotonic()
        with pytest.raises(urllib.error.URLError) as caught:
            sg.send(_mail())
    assert time.monotonic() - started < 2.0
    assert isinstance(caught.value.reason, TimeoutError)


def test_twilio_lists_messages_by_recipient_and_date_sent_with_paging(
    twilio_server: TwilioAPIServer,
) -> None:
    client = twilio_api.make_client(twilio_server)
    sent_at = {
        "old": "Sun, 01 Nov 2026 15:00:00 +0000",
        "a": "Mon, 02 Nov 2026 15:00:00 +0000",
        "b": "Mon, 02 Nov 2026 15:05:00 +0000",
        "c": "Mon, 02 Nov 2026 15:10:00 +0000",
    }
    for body, when in sent_at.items():
        twilio_server.enqueue(TwilioOutcome.success(date_sent=when, date_created=when))
        _send_sms(client, to="+15558675310", body=body)
    _send_sms(client, to="+15558675311", body="someone else")

    since = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
    found = client.messages.list(to="+15558675310", date_sent_after=since, page_size=2)
    assert [m.body for m in found] == ["c", "b", "a"]  # newest first, across two pages
    assert {m.status for m in found} == {"sent"}
    assert found[0].date_sent == datetime(2026, 11, 2, 15, 10, tzinfo=UTC)

    lists = [r for r in twilio_server.requests if r.method == "GET"]
    assert len(lists) == 2
    assert lists[0].query == {"To": ["+15558675310"], "DateSent>": ["2026-11-02T15:00:00Z"],
                              "PageSize": ["2"]}
    assert lists[1].query["Page"] == ["1"] and lists[1].query["PageToken"][0].startswith("PA")
    first = lists[0].response
    assert first is not None
    envelope = first.json_body()
    assert set(envelope) == set(load_payload("twilio_messages_list.json"))
    assert (envelope["page"], envelope["page_size"], envelope["start"], envelope["end"]) == (
        0, 2, 0, 1)
    assert envelope["previous_page_uri"] is None

    # a whole day, "on or before", and what Twilio does not accept
    assert [m.body for m in client.messages.list(to="+15558675310",
                                                 date_sent_before="2026-11-01")] == ["old"]
    assert len(client.messages.list(date_sent="2026-11-02")) == 3
    with pytest.raises(TwilioException, match="Unable to fetch page") as refused:
        client.messages.list(date_sent_after="yesterday")
    assert refused.value.args[1].status_code == 400  # (a list failure carries the response)
    # listing consumes no scripted outcome
    twilio_server.enqueue("server_error")
    client.messages.list(to="+15558675310")
    assert len(twilio_server.pending) == 1


def test_twilio_created_then_error_creates_the_message_and_answers_500(
    twilio_server: TwilioAPIServer,
) -> None:
    client = twilio_api.make_client(twilio_server)
    twilio_server.enqueue(TwilioOutcome.created_then_error())
    with pytest.raises(TwilioRestException) as failed:
        _send_sms(client, to="+15558675310", body="maybe")
    assert failed.value.status == 500
    [message] = twilio_server.messages
    assert (message["to"], message["body"]) == ("+15558675310", "maybe")
    assert [m.body for m in client.messages.list(to="+15558675310")] == ["maybe"]
