"""SMS through Twilio's Programmable Messaging API (``POST …/Messages.json``).

One ``client.messages.create`` per :meth:`~engine.channels.base.Channel.send`, with the
official SDK (``twilio.rest.Client``) on a ``TwilioHttpClient`` whose connect/read
timeout is always set (the SDK default is to wait forever). The SDK never retries and
neither does this adapter: failures are classified and raised for the dispatcher.

What a failure becomes (every error carries ``provider="twilio"``, the HTTP ``status``,
Twilio's ``code`` as a string, a short :func:`~engine.privacy.redact`-ed ``excerpt`` of
Twilio's message and the ``touch_point_id``)::

    Twilio answer / failure                          raised                 note
    ───────────────────────────────────────────────  ─────────────────────  ─────────────────
    4xx (400, 404, …: 21211 invalid To, 21408        PermanentChannelError
      region not enabled, 21614 not a mobile number)
    400 / 21610 recipient unsubscribed (STOP)        PermanentChannelError  opted_out=True
    401 / 403 credentials or permissions rejected    TransientChannelError  retry_after =
      (the whole account is misconfigured: wait,                            now + 15 min
      don't fail every message)
    429 too many requests (never processed)          TransientChannelError  retry_after from
    503 service unavailable (not processed)          TransientChannelError  Retry-After, if any
    3xx (redirects are not followed: not created)    TransientChannelError
    500, 502, 504, any other 5xx                     AmbiguousChannelError  Twilio: a retried
                                                                            500 can send twice
    ConnectTimeout; ConnectionError while            TransientChannelError  the request never
      connecting (refused, DNS, NewConnectionError,                         left
      proxy, TLS handshake)
    ReadTimeout; ConnectionError after the request   AmbiguousChannelError  it may have been
      was sent (RemoteDisconnected, ProtocolError,                          taken
      reset); any other requests error; a 2xx whose
      body cannot be read

``Retry-After`` (seconds or an HTTP date) is not kept on ``TwilioRestException``: a
requests *response hook* records each response's headers in a ``threading.local`` so
concurrent sends never see each other's headers. Waits are added to
:func:`engine.clock.now`; an absolute HTTP date is first turned into a delay against the
wall clock, so a pinned clock (the simulator) still waits as long as Twilio asked.

Reconciliation (:meth:`TwilioSMS.find_sent`): ``client.messages.stream(to=…,
date_sent_after=…)`` pages through the account's messages to that number since the
attempt (less :data:`LOOKUP_SLACK` for clock skew), newest first, and returns the SID of
the first outbound one whose body is the same; at most :data:`LOOKUP_LIMIT` are read. A
message still waiting in Twilio's queue has no ``date_sent`` yet, so that filter cannot
see it: when it finds nothing, the newest :data:`QUEUE_LOOKUP_LIMIT` messages to the
number are read without it, and one still queued (``queued``, ``accepted``,
``scheduled``, ``sending``) that was created since the attempt and has the same body is
found too — it was taken, and sending it again would send it twice. One Twilio lists as
``failed``, ``undelivered`` or ``canceled`` never reached the number: it does not count
(the text is sent again once, and that message's own callback tells). A failure to list
raises :class:`TransientChannelError` (ask again on the next tick).

Secrets and patient data: the auth token lives only inside the SDK client (never on this
object, in a message or in ``repr``); phone numbers in Twilio's messages are masked; the
SDK's own exception is not chained (``from None``): its text carries the unmasked number.
"""

from __future__ import annotations

import email.utils
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from engine import clock
from engine.channels.base import Channel, OutboundMessage, SendResult
from engine.errors import (
    AmbiguousChannelError,
    ChannelError,
    PermanentChannelError,
    TransientChannelError,
)
from engine.privacy import mask_phone, redact

PROVIDER = "twilio"
#: How long messages wait when Twilio rejects the account's credentials (401/403).
CREDENTIALS_WAIT = timedelta(minutes=15)
#: Twilio error code: the recipient replied STOP (unsubscribed at the carrier/Twilio).
UNSUBSCRIBED_CODE = 21610
EXCERPT_LENGTH = 200
#: Reconciliation looks this much before the attempt (Twilio's clock and ours may differ).
LOOKUP_SLACK = timedelta(minutes=2)
#: The most messages to one number reconciliation reads before it says "not found".
LOOKUP_LIMIT = 1000
#: The newest messages to one number read for one still in Twilio's queue (no date_sent).
QUEUE_LOOKUP_LIMIT = 100
#: Statuses of a message Twilio has taken but not yet handed to the carrier.
_WAITING = frozenset({"queued", "accepted", "scheduled", "sending"})
#: Statuses of a message Twilio took but could not hand over: it never reached the number.
_NOT_DELIVERED = frozenset({"failed", "undelivered", "canceled"})

_CREATE_PREFIX = re.compile(r"^Unable to create record:?\s*")


class TwilioSMS(Channel):
    """Sends SMS through Twilio, from a number or a Messaging Service."""

    provider = PROVIDER
    can_find_sent = True

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        api_url: str | None = None,
        status_callback_url: Callable[[int], str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__("sms")
        if not account_sid:
            raise ValueError("twilio: account_sid is required")
        if not auth_token:
            raise ValueError("twilio: auth_token is required")
        if bool(from_number) == bool(messaging_service_sid):
            raise ValueError(
                "twilio: give exactly one of from_number or messaging_service_sid")
        if not timeout > 0:
            raise ValueError("twilio: timeout must be a positive number of seconds")
        if api_url is not None and not api_url.startswith(("http://", "https://")):
            raise ValueError("twilio: api_url must start with http:// or https://")
        self.account_sid = account_sid
        self.from_number = from_number or None
        self.messaging_service_sid = messaging_service_sid or None
        self.api_url = api_url.rstrip("/") if api_url else None
        self.status_callback_url = status_callback_url
        self.timeout = float(timeout)
        self._seen = threading.local()
        self._http = TwilioHttpClient(
            timeout=self.timeout, request_hooks={"response": [self._keep_headers]})
        # The token is handed to the SDK client and not kept anywhere else.
        self._client: Any = Client(account_sid, auth_token, http_client=self._http)
        # TWILIO_REGION / TWILIO_EDGE from the environment would rewrite the host name.
        self._client.region = None
        self._client.edge = None
        if self.api_url:
            self._client.api.base_url = self.api_url

    def __repr__(self) -> str:
        sender = (f"from_number={mask_phone(self.from_number)!r}" if self.from_number
                  else f"messaging_service_sid={_mask_sid(self.messaging_service_sid)!r}")
        return (f"TwilioSMS(account_sid={_mask_sid(self.account_sid)!r}, auth_token='•••', "
                f"{sender}, api_url={self.api_url!r}, timeout={self.timeout})")

    # ------------------------------------------------------------------ the three hooks
    def build_payload(self, message: OutboundMessage) -> dict[str, str]:
        payload = {"to": message.to, "body": message.body}
        if self.messaging_service_sid:
            payload["messaging_service_sid"] = self.messaging_service_sid
        else:
            assert self.from_number is not None
            payload["from_"] = self.from_number
        if self.status_callback_url is not None:
            payload["status_callback"] = self.status_callback_url(message.touch_point_id)
        return payload

    def call(self, payload: Any, message: OutboundMessage) -> Any:
        self._seen.headers = None
        try:
            return self._client.messages.create(**payload)
        except TwilioException as exc:
            raise self._http_error(exc, message) from None
        except requests.exceptions.RequestException as exc:
            raise self._transport_error(exc, message) from None
        except ValueError as exc:  # a 2xx whose JSON cannot be parsed: it was created
            raise AmbiguousChannelError(
                f"Twilio's reply could not be read ({type(exc).__name__}); the message may "
                "have been sent", provider=PROVIDER, touch_point_id=message.touch_point_id,
            ) from None

    def parse_reply(self, reply: Any, message: OutboundMessage) -> SendResult:
        sid = getattr(reply, "sid", None)
        status = getattr(reply, "status", None)
        return SendResult(PROVIDER, str(sid) if sid else None, detail=f"twilio status {status}")

    def find_sent(self, to: str, since: datetime, body: str) -> str | None:
        after = since.astimezone(UTC) - LOOKUP_SLACK
        def taken(found: Any) -> bool:
            # (one Twilio lists as failed or undelivered never reached the number: not
            # taken — it is sent again once, and that message's callback tells)
            direction = str(getattr(found, "direction", "") or "")
            return bool(found.body == body and direction.startswith("outbound") and found.sid
                        and str(found.status or "") not in _NOT_DELIVERED)

        try:
            for found in self._client.messages.stream(to=to, date_sent_after=after,
                                                      limit=LOOKUP_LIMIT, page_size=100):
                if taken(found):
                    return str(found.sid)
            # still in Twilio's queue: no date_sent yet, so the filter above missed it
            for found in self._client.messages.stream(to=to, limit=QUEUE_LOOKUP_LIMIT,
                                                      page_size=QUEUE_LOOKUP_LIMIT):
                created = getattr(found, "date_created", None)
                if taken(found) and str(found.status or "") in _WAITING \
                        and isinstance(created, datetime) and created >= after:
                    return str(found.sid)
        except TwilioException as exc:
            response = exc.args[1] if len(exc.args) > 1 else None
            status = getattr(response, "status_code", None) or getattr(exc, "status", None)
            raise TransientChannelError(
                f"Twilio's message list could not be read (HTTP {status})"
                if status else f"Twilio's message list could not be read: "
                               f"{_excerpt(_twilio_text(exc))}",
                provider=PROVIDER, status=_as_int(status)) from None
        except requests.exceptions.RequestException as exc:
            raise TransientChannelError(
                f"Twilio's message list could not be read ({type(exc).__name__})",
                provider=PROVIDER) from None
        return None

    def close(self) -> None:
        session = getattr(self._http, "session", None)
        if session is not None:
            session.close()

    # ------------------------------------------------------------------ classification
    def _keep_headers(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        # Runs in the sending thread; returning None keeps the response unchanged.
        self._seen.headers = response.headers

    def _last_headers(self) -> Mapping[str, str]:
        headers: Mapping[str, str] | None = getattr(self._seen, "headers", None)
        return headers if headers is not None else {}

    def _http_error(self, exc: TwilioException, message: OutboundMessage) -> ChannelError:
        status = _as_int(getattr(exc, "status", None))
        raw_code = getattr(exc, "code", None)
        # Without a JSON body the SDK reuses the HTTP status as the code: that is no code.
        code = str(raw_code) if raw_code is not None and raw_code != status else None
        excerpt = _excerpt(_twilio_text(exc))
        common: dict[str, Any] = {"provider": PROVIDER, "code": code, "status": status,
                                  "excerpt": excerpt, "touch_point_id": message.touch_point_id}
        said = f": {excerpt}" if excerpt else ""
        if status is None:
            return TransientChannelError(
                f"the Twilio SDK failed before sending ({type(exc).__name__}){said}", **common)
        if status in (401, 403):
            return TransientChannelError(
                f"Twilio rejected the credentials (HTTP {status}): check the account SID, "
                "the auth token and the account's permissions; messages wait "
                f"{_minutes(CREDENTIALS_WAIT)} minutes instead of failing{said}",
                retry_after=clock.now() + CREDENTIALS_WAIT, **common)
        if status == 429:
            return TransientChannelError(
                f"Twilio rate limit reached; the message was not processed{said}",
                retry_after=retry_after_from(self._last_headers()), **common)
        if status == 503:
            return TransientChannelError(
                f"Twilio is unavailable; the message was not processed{said}",
                retry_after=retry_after_from(self._last_headers()), **common)
        if 300 <= status < 400:
            return TransientChannelError(
                f"Twilio answered a redirect (HTTP {status}); the message was not created",
                **common)
        if 400 <= status < 500:
            if code == str(UNSUBSCRIBED_CODE):
                return PermanentChannelError(
                    f"the recipient unsubscribed at Twilio (replied STOP){said}",
                    opted_out=True, **common)
            return PermanentChannelError(
                excerpt or f"Twilio refused the message (HTTP {status})", **common)
        return AmbiguousChannelError(
            f"Twilio answered HTTP {status}; the message may or may not have been "
            f"created{said}", **common)

    def _transport_error(self, exc: requests.exceptions.RequestException,
                         message: OutboundMessage) -> ChannelError:
        root = _chain(exc)[-1]
        common: dict[str, Any] = {"provider": PROVIDER, "touch_point_id": message.touch_point_id,
                                  "excerpt": _excerpt(f"{type(root).__name__}: {root}")}
        # ConnectTimeout is also a ConnectionError: check it first.
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return TransientChannelError(
                f"could not connect to Twilio within {self.timeout:g}s (ConnectTimeout); "
                "the message was not sent", **common)
        if isinstance(exc, requests.exceptions.ReadTimeout):
            return AmbiguousChannelError(
                f"no answer from Twilio within {self.timeout:g}s (ReadTimeout); the message "
                "may have been sent", **common)
        if isinstance(exc, requests.exceptions.ConnectionError):
            cause = _connect_failure(exc)
            if cause is not None:
                return TransientChannelError(
                    f"could not connect to Twilio ({cause}); the message was not sent",
                    **common)
            return AmbiguousChannelError(
                f"the connection to Twilio broke after the request was sent "
                f"({type(root).__name__}); the message may have been sent", **common)
        return AmbiguousChannelError(
            f"the request to Twilio failed ({type(exc).__name__}); the message may have "
            "been sent", **common)


# ---------------------------------------------------------------------- helpers
def retry_after_from(headers: Mapping[str, str]) -> datetime | None:
    """``Retry-After`` (delay in seconds, or an HTTP date) as an aware UTC instant."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return clock.now() + timedelta(seconds=float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delay = max(when.timestamp() - time.time(), 0.0)
    return clock.now() + timedelta(seconds=delay)


def _excerpt(text: str) -> str:
    """Redact first (a cut could leave a partial number unmatched), then shorten."""
    flat = " ".join(redact(text).split())
    return flat if len(flat) <= EXCERPT_LENGTH else flat[: EXCERPT_LENGTH - 1] + "…"


def _twilio_text(exc: TwilioException) -> str:
    msg = getattr(exc, "msg", None)
    if isinstance(msg, str):
        return _CREATE_PREFIX.sub("", msg)
    # RFC 9457 errors (TwilioServiceException): title + detail.
    parts = [getattr(exc, "title", None), getattr(exc, "detail", None)]
    text = ": ".join(p for p in parts if isinstance(p, str) and p)
    return text or (str(exc.args[0]) if exc.args else "")


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps (args, urllib3 ``reason``), its causes; no cycles."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        linked = [*current.args, getattr(current, "reason", None),
                  current.__cause__, current.__context__]
        todo.extend(e for e in linked if isinstance(e, BaseException))
    return seen


def _connect_failure(exc: requests.exceptions.ConnectionError) -> str | None:
    """The name of what failed while connecting, or None if the request was sent."""
    import urllib3.exceptions as u3

    connect_errors: tuple[type[BaseException], ...] = (
        u3.NewConnectionError, u3.ConnectTimeoutError, u3.ProxyError, u3.SSLError,
        requests.exceptions.SSLError, requests.exceptions.ProxyError,
        ConnectionRefusedError,
    )
    for item in _chain(exc):
        if isinstance(item, u3.ProtocolError):
            return None  # "Connection aborted": the request had been written
        if isinstance(item, connect_errors):
            return type(item).__name__
    return None


def _as_int(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _mask_sid(sid: str | None) -> str:
    if not sid:
        return ""
    return sid[:6] + "…" if len(sid) > 6 else "…"


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)
