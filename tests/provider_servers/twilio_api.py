"""Local stand-in for Twilio's Programmable Messaging REST API (2010-04-01).

Serves ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (form-encoded,
HTTP Basic auth ``AccountSid:AuthToken``) the way api.twilio.com does, with
bodies based on ``tests/payloads/twilio_*.json``:

* success: ``201`` + a Message resource (``sid`` ``SM`` + 32 hex, ``status``
  ``queued`` - or ``accepted`` when only ``MessagingServiceSid`` is given,
  ``scheduled`` for ``ScheduleType=fixed`` - ``to``/``from``/``body`` echoed,
  ``date_created`` in RFC 2822 ``Thu, 30 Jul 2015 20:12:31 +0000``, ``uri``,
  ``num_segments`` computed GSM-7/UCS-2 style, ...);
* wrong/missing credentials: ``401`` code 20003 (checked before the script is
  consumed, as Twilio rejects before any business logic);
* unknown path, or an AccountSid in the path that is not the server's: ``404``
  code 20404;
* missing ``To`` / ``From``+``MessagingServiceSid`` / ``Body``+``MediaUrl``+
  ``ContentSid``: ``400`` codes 21604 / 21603 / 21602 (only on the success path);
* scripted errors (see :class:`TwilioOutcome`).

Error bodies have Twilio's legacy shape
``{"code", "message", "more_info", "status"}`` (+ ``"detail"`` for 20003), so
the SDK raises :class:`twilio.base.exceptions.TwilioRestException` (not the
RFC-9457 ``TwilioServiceException``, which needs ``type``/``title`` keys).

Pointing the official SDK (twilio 9.x) at this server
-----------------------------------------------------
``twilio.rest.Client`` builds every Messages URL as
``client.api.base_url + "/2010-04-01/Accounts/{sid}/Messages.json"``
(``twilio/base/domain.py: Domain.absolute_url``; ``ApiBase`` sets
``base_url = "https://api.twilio.com"``), read at request time. So::

    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    client = Client(
        server.account_sid,
        server.auth_token,
        http_client=TwilioHttpClient(timeout=5.0),  # seconds, connect + read
    )
    client.region = None   # ignore TWILIO_REGION / TWILIO_EDGE from the env:
    client.edge = None     # get_hostname() would rewrite "127.0.0.1:PORT"
    client.api.base_url = server.url   # public attribute of twilio.base.domain.Domain
    client.messages.create(to=..., from_=..., body=..., status_callback=...)

(:func:`make_client` does exactly this.) No monkeypatching and no custom
HttpClient is needed. ``edge``/``region`` cannot be used for this: they only
rewrite ``*.twilio.com`` host names. ``TwilioHttpClient`` uses a
``requests.Session`` honouring ``HTTP(S)_PROXY``/``NO_PROXY``; if a proxy is set
in the environment, ``127.0.0.1`` must be in ``NO_PROXY``.

Response headers (``Retry-After``) are not on ``TwilioRestException``; read them
with a requests response hook::

    seen = threading.local()
    def keep(response, *args, **kwargs):
        seen.headers = response.headers
    TwilioHttpClient(timeout=5.0, request_hooks={"response": [keep]})
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import math
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
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
    from twilio.rest import Client

API_VERSION = "2010-04-01"
DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEFAULT_AUTH_TOKEN = "f00dfacef00dfacef00dfacef00dface"

_MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages\.json$")

_GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = set("^{}\\[~]|€\f")


def count_segments(body: str) -> int:
    """SMS segment count as Twilio bills it: GSM-7 160/153, otherwise UCS-2 70/67."""
    if all(ch in _GSM7_BASIC or ch in _GSM7_EXTENDED for ch in body):
        units = sum(2 if ch in _GSM7_EXTENDED else 1 for ch in body)
        single, multi = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, multi = 70, 67
    if units <= single:
        return 1
    return math.ceil(units / multi)


def rfc2822_now() -> str:
    """Current time the way Twilio renders date_created: ``Thu, 30 Jul 2015 20:12:31 +0000``."""
    return email.utils.format_datetime(datetime.now(UTC).replace(microsecond=0))


def _response_headers() -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=utf-8",
        "Twilio-Request-Id": "RQ" + secrets.token_hex(16),
        "Twilio-Concurrent-Requests": "1",
    }


class TwilioOutcome:
    """Factories for scripted Twilio outcomes (pass them to ``server.enqueue``).

    String names accepted by :meth:`TwilioAPIServer.enqueue` are listed in
    :data:`OUTCOME_NAMES`.
    """

    HANG: ClassVar[Outcome] = HANG
    DISCONNECT: ClassVar[Outcome] = DISCONNECT

    @staticmethod
    def success(**overrides: Any) -> Outcome:
        """201 Message; ``overrides`` replace fields of the Message JSON."""
        return Outcome("success", label="success", overrides=overrides)

    @staticmethod
    def error(
        code: int,
        *,
        status: int | None = None,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Outcome:
        """Twilio error JSON loaded from ``tests/payloads/twilio_error_<code>.json``."""
        payload = load_payload(f"twilio_error_{code}.json")
        if status is not None:
            payload["status"] = status
        if message is not None:
            payload["message"] = message
        all_headers = _response_headers()
        if int(payload["status"]) == 401:
            all_headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
        all_headers.update(headers or {})
        reply = Reply.json(int(payload["status"]), payload, all_headers)
        return Outcome("reply", reply=reply, label=f"{payload['status']} {code}")

    @classmethod
    def invalid_to_number(cls) -> Outcome:
        return cls.error(21211)

    @classmethod
    def unsubscribed_recipient(cls) -> Outcome:
        return cls.error(21610)

    @classmethod
    def region_not_enabled(cls) -> Outcome:
        return cls.error(21408)

    @classmethod
    def unauthorized(cls) -> Outcome:
        return cls.error(20003)

    @classmethod
    def rate_limited(cls, retry_after: int | None = None) -> Outcome:
        """429 / 20429. Twilio documents no Retry-After; add one only if asked."""
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return cls.error(20429, headers=headers)

    @classmethod
    def server_error(cls) -> Outcome:
        return cls.error(20500)

    @classmethod
    def service_unavailable(cls, retry_after: int | None = None) -> Outcome:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return cls.error(20503, headers=headers)


OUTCOME_NAMES: dict[str, Any] = {
    "success": TwilioOutcome.success,
    "invalid_to": TwilioOutcome.invalid_to_number,  # 400 / 21211
    "unsubscribed": TwilioOutcome.unsubscribed_recipient,  # 400 / 21610
    "region_disabled": TwilioOutcome.region_not_enabled,  # 400 / 21408
    "unauthorized": TwilioOutcome.unauthorized,  # 401 / 20003
    "rate_limited": TwilioOutcome.rate_limited,  # 429 / 20429
    "server_error": TwilioOutcome.server_error,  # 500 / 20500
    "unavailable": TwilioOutcome.service_unavailable,  # 503 / 20503
    "hang": lambda: HANG,
    "disconnect": lambda: DISCONNECT,
}


class TwilioAPIServer(ProviderServer):
    """Fake ``api.twilio.com`` for the Messages resource.

    ``server.messages`` lists the Message resources returned with 201.
    """

    name = "twilio"

    def __init__(
        self,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self._messages: list[dict[str, Any]] = []

    @property
    def messages_path(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"

    @property
    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._messages)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._messages.clear()

    def _resolve_name(self, name: str) -> Outcome:
        try:
            factory = OUTCOME_NAMES[name]
        except KeyError:
            raise KeyError(
                f"unknown Twilio outcome {name!r}; known: {sorted(OUTCOME_NAMES)}"
            ) from None
        outcome: Outcome = factory()
        return outcome

    # ------------------------------------------------------------------ behaviour
    def _authorized(self, request: RecordedRequest) -> bool:
        header = request.header("Authorization") or ""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        username, _, password = decoded.partition(":")
        return secrets.compare_digest(username, self.account_sid) and secrets.compare_digest(
            password, self.auth_token
        )

    def _respond(self, request: RecordedRequest) -> Outcome | Reply:
        if not self._authorized(request):
            request.outcome = "401 20003 (credentials)"
            reply = TwilioOutcome.unauthorized().reply
            assert reply is not None
            return reply
        match = _MESSAGES_PATH.match(request.path)
        if request.method != "POST" or not match or match["account"] != self.account_sid:
            request.outcome = "404 20404"
            message = f"The requested resource {request.path} was not found"
            reply = TwilioOutcome.error(20404, message=message).reply
            assert reply is not None
            return reply
        outcome = self._next_outcome()
        if outcome.kind != "success":
            request.outcome = outcome.label or outcome.kind
            return outcome.reply if outcome.reply is not None else outcome
        return self._create_message(request, outcome.overrides)

    def _create_message(self, request: RecordedRequest, overrides: Mapping[str, Any]) -> Reply:
        form = request.form or {}

        def first(name: str) -> str | None:
            values = form.get(name)
            return values[0] if values else None

        to, from_, service = first("To"), first("From"), first("MessagingServiceSid")
        body, media = first("Body"), form.get("MediaUrl", [])
        for code, missing in (
            (21604, not to),
            (21603, not from_ and not service),
            (21602, not body and not media and not first("ContentSid")),
        ):
            if missing:
                request.outcome = f"400 {code} (validation)"
                reply = TwilioOutcome.error(code).reply
                assert reply is not None
                return reply

        sid = "SM" + secrets.token_hex(16)
        now = rfc2822_now()
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}"
        if first("ScheduleType") == "fixed":
            status = "scheduled"
        elif service and not from_:
            status = "accepted"
        else:
            status = "queued"
        message: dict[str, Any] = load_payload("twilio_message_201.json")
        message.update(
            {
                "account_sid": self.account_sid,
                "api_version": API_VERSION,
                "body": body or "",
                "date_created": now,
                "date_sent": None,
                "date_updated": now,
                "direction": "outbound-api",
                "error_code": None,
                "error_message": None,
                "from": from_,
                "messaging_service_sid": service,
                "num_media": str(len(media)),
                # Twilio: "for messages sent via a Messaging Service, num_segments is initially 0"
                "num_segments": "0" if service and not from_ else str(count_segments(body or "")),
                "price": None,
                "price_unit": "USD",
                "sid": sid,
                "status": status,
                "subresource_uris": {"media": f"{base}/Media.json"},
                "to": to,
                "uri": f"{base}.json",
            }
        )
        message.update(overrides)
        with self._lock:
            self._messages.append(message)
        request.outcome = "201"
        return Reply.json(201, message, _response_headers())


def make_client(
    server: TwilioAPIServer,
    *,
    timeout: float = 5.0,
    request_hooks: dict[str, list[Any]] | None = None,
    account_sid: str | None = None,
    auth_token: str | None = None,
) -> Client:
    """A real ``twilio.rest.Client`` whose Api domain points at ``server``.

    ``account_sid``/``auth_token`` default to the server's (pass others to get 401s).
    """
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    client = Client(
        account_sid or server.account_sid,
        auth_token or server.auth_token,
        http_client=TwilioHttpClient(timeout=timeout, request_hooks=request_hooks),
    )
    client.region = None
    client.edge = None
    client.api.base_url = server.url
    return client
