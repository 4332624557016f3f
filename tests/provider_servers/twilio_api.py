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
* scripted errors (see :class:`TwilioOutcome`); ``TwilioOutcome.created_then_error()``
  creates the message and still answers ``500`` (a Twilio 5xx may follow a create);
* ``GET /2010-04-01/Accounts/{AccountSid}/Messages.json``: the account's messages,
  newest ``date_sent`` first, in Twilio's list envelope
  (``tests/payloads/twilio_messages_list.json``: ``messages``, ``page``,
  ``page_size``, ``start``, ``end``, ``uri``, ``first_page_uri``, ``next_page_uri``,
  ``previous_page_uri``), filtered by ``To``, ``From``, ``DateSent`` (that day),
  ``DateSent<`` / ``DateSent>`` (on or before / on or after; a date ``YYYY-MM-DD``
  or, as twilio-python sends a ``datetime``, ``YYYY-MM-DDTHH:MM:SSZ``) and paged by
  ``PageSize`` (default 50, at most 1000) and ``Page`` (+ the ``PageToken`` Twilio puts
  in ``next_page_uri``). A message is listed as it is a moment after it was created:
  ``status`` ``sent`` (if it was ``queued``/``accepted``) and ``date_sent`` =
  ``date_created`` unless the script overrode them — or unless it was created with
  ``TwilioOutcome.success(still_queued=True)``: it is still waiting in Twilio's queue,
  listed ``queued`` with no ``date_sent``, so no ``DateSent`` filter matches it (Twilio
  filters on the date it was sent). An unknown query parameter gets
  ``400`` (Twilio rejects what it does not accept). Listing consumes no scripted outcome.

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
import urllib.parse
from collections.abc import Mapping
from datetime import UTC, date, datetime
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

    @staticmethod
    def created_then_error(**overrides: Any) -> Outcome:
        """The message is created (it is in the account's list) but the answer is a 500."""
        return Outcome("success", label="created, then 500", overrides=overrides)

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
        if request.method == "GET" and match and match["account"] == self.account_sid:
            return self._list_messages(request)
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
        created = self._create_message(request, outcome.overrides)
        if outcome.label == "created, then 500" and created.status == 201:
            request.outcome = outcome.label
            reply = TwilioOutcome.server_error().reply
            assert reply is not None
            return reply
        return created

    _LIST_FILTERS = frozenset({"To", "From", "DateSent", "DateSent<", "DateSent>", "PageSize",
                               "Page", "PageToken"})

    def _list_messages(self, request: RecordedRequest) -> Reply:
        query = {name: values[0] for name, values in request.query.items() if values}
        unknown = sorted(set(query) - self._LIST_FILTERS)
        try:
            if unknown:
                raise ValueError(f"unknown parameter {unknown[0]}")
            page_size = int(query.get("PageSize", "50"))
            page = int(query.get("Page", "0"))
            if not 1 <= page_size <= 1000 or page < 0:
                raise ValueError("PageSize must be 1-1000 and Page 0 or more")
            on = _date_filter(query.get("DateSent"))
            before = _date_filter(query.get("DateSent<"))
            after = _date_filter(query.get("DateSent>"))
        except ValueError as exc:
            request.outcome = "400 (list)"
            return Reply.json(400, {"code": 20001, "message": f"Invalid request: {exc}",
                                    "more_info": "https://www.twilio.com/docs/errors/20001",
                                    "status": 400}, _response_headers())
        listed = []
        for message in self.messages:
            view = dict(message)
            queued = bool(view.pop("still_queued", False))
            if view["status"] in ("queued", "accepted") and not queued:
                view["status"] = "sent"
            if not queued:
                view["date_sent"] = view["date_sent"] or view["date_created"]
            # (a message still queued sorts as of its creation, and no DateSent filter
            # matches its missing date_sent)
            sent = email.utils.parsedate_to_datetime(view["date_sent"] or view["date_created"])
            dated = view["date_sent"] is not None
            if query.get("To") not in (None, view["to"]) \
                    or query.get("From") not in (None, view["from"]) \
                    or (on is not None and (not dated or sent.date() != _day(on))) \
                    or (before is not None and (not dated or not _compare(sent, before) <= 0)) \
                    or (after is not None and (not dated or not _compare(sent, after) >= 0)):
                continue
            listed.append((sent, view))
        listed.sort(key=lambda item: item[0], reverse=True)
        chosen = [view for _, view in listed[page * page_size:(page + 1) * page_size]]
        kept = [(name, value) for name, value in query.items()
                if name not in ("Page", "PageSize", "PageToken")]

        def uri(number: int, token: str | None = None) -> str:
            params = [*kept, ("PageSize", str(page_size)), ("Page", str(number))]
            if token:
                params.append(("PageToken", token))
            return f"{self.messages_path}?{urllib.parse.urlencode(params)}"

        more = len(listed) > (page + 1) * page_size
        envelope: dict[str, Any] = load_payload("twilio_messages_list.json")
        envelope.update({
            "messages": chosen, "page": page, "page_size": page_size,
            "start": page * page_size, "end": page * page_size + max(len(chosen) - 1, 0),
            "uri": uri(page, query.get("PageToken")), "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1, "PA" + secrets.token_hex(16)) if more else None,
            "previous_page_uri": uri(page - 1, "PB" + secrets.token_hex(16)) if page else None,
        })
        request.outcome = "200 (list)"
        return Reply.json(200, envelope, _response_headers())

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
        return Reply.json(201, {k: v for k, v in message.items() if k != "still_queued"},
                          _response_headers())


def _date_filter(value: str | None) -> date | datetime | None:
    """A ``DateSent`` filter value: ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM:SSZ``."""
    if value is None:
        return None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return date.fromisoformat(value)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", value):
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    raise ValueError(f"DateSent must be YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, not {value!r}")


def _day(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


def _compare(sent: datetime, bound: date | datetime) -> int:
    """-1, 0 or 1 as ``sent`` is before, at or after ``bound`` (a date: that whole day)."""
    if isinstance(bound, datetime):
        return (sent > bound) - (sent < bound)
    return (sent.date() > bound) - (sent.date() < bound)


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
