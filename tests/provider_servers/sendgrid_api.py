"""Local stand-in for SendGrid's v3 Mail Send API.

Serves ``POST /v3/mail/send`` (JSON body, ``Authorization: Bearer <API key>``)
the way api.sendgrid.com does, with bodies from ``tests/payloads/sendgrid_*.json``:

* success: ``202 Accepted``, empty body, ``Content-Length: 0`` and an
  ``X-Message-Id`` header (22 url-safe base64 chars, e.g. ``OgOotlHIR0yiF-16baPbAg``);
* missing/wrong key: ``401`` ``{"errors": [{"message": "The provided
  authorization grant is invalid, expired, or revoked", "field": null,
  "help": null}]}`` (checked before the script is consumed);
* unknown path: ``404``;
* on the success path only, the real API's basic validation: ``400`` for a
  missing ``personalizations``, an invalid ``from.email``, a missing ``subject``
  (unless ``template_id`` or every personalization has one) or missing
  ``content`` (unless ``template_id``);
* scripted outcomes (see :class:`SendGridOutcome`).

Error bodies are ``{"errors": [{"message", "field", "help"}]}``. A ``429``
carries ``X-RateLimit-Limit`` / ``X-RateLimit-Remaining: 0`` /
``X-RateLimit-Reset`` (epoch seconds), as SendGrid documents; SendGrid does
not document ``Retry-After``, so it is only sent when asked for.

Pointing the official SDK (sendgrid 6.12) at this server
--------------------------------------------------------
``SendGridAPIClient`` takes the base URL as ``host`` and builds
``host + "/v3/mail/send"``; the timeout lives on the underlying
``python_http_client.Client`` (``sg.client``), which copies it into every
child client it builds, so set it once after construction::

    from sendgrid import SendGridAPIClient
    from sendgrid.helpers.mail import Mail

    sg = SendGridAPIClient(api_key=server.api_key, host=server.url)
    sg.client.timeout = 5.0          # seconds; None (the default) = wait forever
    response = sg.send(Mail(...))    # python_http_client.client.Response
    response.status_code             # 202
    response.headers["X-Message-Id"]

(:func:`make_client` does exactly this.) Per call, the low-level form
``sg.client.mail.send.post(request_body=mail.get(), timeout=5.0)`` also works
(``timeout=0`` means "use the client's"). Requests go through ``urllib``, which
honours ``HTTP(S)_PROXY``/``NO_PROXY``; keep ``127.0.0.1`` out of any proxy.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ._base import (
    DISCONNECT,
    HANG,
    Outcome,
    ProviderServer,
    RecordedRequest,
    Reply,
    load_payload,
)

if TYPE_CHECKING:
    from sendgrid import SendGridAPIClient

DEFAULT_API_KEY = "SG.touchpoint-test-key.0123456789abcdefghijklmnopqrstuvwxyzABCDEF"
MAIL_SEND_PATH = "/v3/mail/send"

# Headers captured from a real api.sendgrid.com /v3/mail/send exchange.
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "https://sendgrid.api-docs.io",
    "Access-Control-Allow-Methods": "POST",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, On-behalf-of, x-sg-elas-acl",
    "Access-Control-Max-Age": "600",
    "X-No-CORS-Reason": "https://sendgrid.com/docs/Classroom/Basics/API/cors.html",
}


def new_message_id() -> str:
    """An X-Message-Id like SendGrid's: 16 random bytes, url-safe base64, unpadded."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii").rstrip("=")


def _error_reply(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Reply:
    all_headers = {"Content-Type": "application/json", **_CORS_HEADERS, **(headers or {})}
    return Reply.json(status, payload, all_headers)


class SendGridOutcome:
    """Factories for scripted SendGrid outcomes (pass them to ``server.enqueue``).

    String names accepted by :meth:`SendGridAPIServer.enqueue` are listed in
    :data:`OUTCOME_NAMES`.
    """

    HANG: ClassVar[Outcome] = HANG
    DISCONNECT: ClassVar[Outcome] = DISCONNECT

    @staticmethod
    def success(message_id: str | None = None) -> Outcome:
        """202 with an ``X-Message-Id`` (random unless given)."""
        overrides = {"message_id": message_id} if message_id else {}
        return Outcome("success", label="success", overrides=overrides)

    @staticmethod
    def error(
        status: int,
        payload_file: str | None = None,
        *,
        payload: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Outcome:
        """Error reply; body from ``payload`` or ``tests/payloads/<payload_file>``
        (default ``sendgrid_error_<status>.json``)."""
        body = (
            payload
            if payload is not None
            else load_payload(payload_file or f"sendgrid_error_{status}.json")
        )
        return Outcome("reply", reply=_error_reply(status, body, headers), label=str(status))

    @classmethod
    def bad_request(cls, payload_file: str = "sendgrid_error_400.json") -> Outcome:
        return cls.error(400, payload_file)

    @classmethod
    def unauthorized(cls) -> Outcome:
        return cls.error(401)

    @classmethod
    def forbidden(cls) -> Outcome:
        """403: the from address is not a verified Sender Identity."""
        return cls.error(403)

    @classmethod
    def rate_limited(
        cls, retry_after: int | None = None, *, limit: int = 600, reset_in: int = 60
    ) -> Outcome:
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(time.time()) + reset_in),
        }
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return cls.error(429, headers=headers)

    @classmethod
    def server_error(cls) -> Outcome:
        return cls.error(500)

    @classmethod
    def service_unavailable(cls, retry_after: int | None = None) -> Outcome:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return cls.error(503, headers=headers)


OUTCOME_NAMES: dict[str, Any] = {
    "success": SendGridOutcome.success,
    "bad_request": SendGridOutcome.bad_request,  # 400 from.email
    "unauthorized": SendGridOutcome.unauthorized,  # 401
    "forbidden": SendGridOutcome.forbidden,  # 403 unverified sender identity
    "rate_limited": SendGridOutcome.rate_limited,  # 429 + X-RateLimit-*
    "server_error": SendGridOutcome.server_error,  # 500
    "unavailable": SendGridOutcome.service_unavailable,  # 503
    "hang": lambda: HANG,
    "disconnect": lambda: DISCONNECT,
}


class SendGridAPIServer(ProviderServer):
    """Fake ``api.sendgrid.com`` for ``/v3/mail/send``.

    ``server.message_ids`` lists the X-Message-Id values answered with 202.
    """

    name = "sendgrid"

    def __init__(
        self, api_key: str = DEFAULT_API_KEY, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(host, port)
        self.api_key = api_key
        self._message_ids: list[str] = []

    @property
    def message_ids(self) -> list[str]:
        with self._lock:
            return list(self._message_ids)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._message_ids.clear()

    def _resolve_name(self, name: str) -> Outcome:
        try:
            factory = OUTCOME_NAMES[name]
        except KeyError:
            raise KeyError(
                f"unknown SendGrid outcome {name!r}; known: {sorted(OUTCOME_NAMES)}"
            ) from None
        outcome: Outcome = factory()
        return outcome

    def _authorized(self, request: RecordedRequest) -> bool:
        scheme, _, key = (request.header("Authorization") or "").partition(" ")
        return scheme == "Bearer" and secrets.compare_digest(key.strip(), self.api_key)

    def _respond(self, request: RecordedRequest) -> Outcome | Reply:
        if not self._authorized(request):
            request.outcome = "401 (credentials)"
            return _error_reply(401, load_payload("sendgrid_error_401.json"))
        if request.method != "POST" or request.path != MAIL_SEND_PATH:
            request.outcome = "404"
            return _error_reply(404, {"errors": [{"field": None, "message": "resource not found"}]})
        outcome = self._next_outcome()
        if outcome.kind != "success":
            request.outcome = outcome.label or outcome.kind
            return outcome.reply if outcome.reply is not None else outcome
        problem = self._validate(request.json)
        if problem is not None:
            request.outcome = "400 (validation)"
            return problem
        message_id = str(outcome.overrides.get("message_id") or new_message_id())
        with self._lock:
            self._message_ids.append(message_id)
        request.outcome = "202"
        return Reply(202, b"", {**_CORS_HEADERS, "X-Message-Id": message_id})

    @staticmethod
    def _validate(mail: Any) -> Reply | None:
        if not isinstance(mail, dict):
            return _error_reply(
                400, {"errors": [{"field": None, "message": "Bad Request", "help": None}]}
            )
        personalizations = mail.get("personalizations")
        if not isinstance(personalizations, list) or not personalizations:
            return _error_reply(400, load_payload("sendgrid_error_400_personalizations.json"))
        sender = mail.get("from")
        if not isinstance(sender, dict) or "@" not in str(sender.get("email") or ""):
            return _error_reply(400, load_payload("sendgrid_error_400.json"))
        templated = bool(mail.get("template_id"))
        every_has_subject = all(isinstance(p, dict) and p.get("subject") for p in personalizations)
        if not templated and not mail.get("subject") and not every_has_subject:
            return _error_reply(400, load_payload("sendgrid_error_400_subject.json"))
        if not templated and not mail.get("content"):
            return _error_reply(400, load_payload("sendgrid_error_400_content.json"))
        return None


def make_client(
    server: SendGridAPIServer, *, timeout: float = 5.0, api_key: str | None = None
) -> SendGridAPIClient:
    """A real ``SendGridAPIClient`` pointed at ``server`` with a socket timeout."""
    from sendgrid import SendGridAPIClient

    sg = SendGridAPIClient(api_key=api_key or server.api_key, host=server.url)
    sg.client.timeout = timeout
    return sg
