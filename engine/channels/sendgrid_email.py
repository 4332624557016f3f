"""Email through SendGrid's v3 Mail Send API (``POST /v3/mail/send``).

One ``SendGridAPIClient.send`` per :meth:`~engine.channels.base.Channel.send`, built with
the SDK's ``Mail`` helper: from (address + optional name), one recipient, subject, a
``text/plain`` part and, when the template has one, a ``text/html`` part; every header of
:attr:`OutboundMessage.headers` (``List-Unsubscribe``, ``List-Unsubscribe-Post``, …); the
custom arg ``touch_point_id`` (echoed in SendGrid's event webhooks) and the constant
category ``touchpoint``. No patient data goes into custom args or categories. The socket
timeout is always set (the SDK default is to wait forever); nothing is retried here.

What a failure becomes (every error carries ``provider="sendgrid"``, the HTTP ``status``,
a short :func:`~engine.privacy.redact`-ed ``excerpt`` of SendGrid's ``errors`` array and
the ``touch_point_id``; SendGrid has no error codes, so ``code`` is ``None``)::

    SendGrid answer / failure                        raised                 note
    ───────────────────────────────────────────────  ─────────────────────  ─────────────────
    400, 413, any other 4xx (404, …)                 PermanentChannelError
    401 / 403 key rejected, no permission,           TransientChannelError  retry_after =
      unverified Sender Identity (the account is                            now + 15 min
      misconfigured: wait, don't fail every message)
    429 too many requests                            TransientChannelError  Retry-After, else
                                                                            X-RateLimit-Reset
    503 service unavailable                          TransientChannelError  Retry-After, if any
    3xx (redirects are not followed)                 TransientChannelError
    500, 502, 504, any other 5xx                     AmbiguousChannelError
    ``urllib.error.URLError`` (connect timeout,      TransientChannelError  never sent
      refused, DNS, TLS handshake, failed write)
    builtin ``TimeoutError`` / ``RemoteDisconnected``  AmbiguousChannelError  raised raw by
      / other ``OSError`` / ``http.client.HTTPException``                   http.client after
      while waiting for or reading the answer                               the request left
    no subject, no content, content refused by the   PermanentChannelError  before any request
      SDK's API-key check

``urllib`` wraps every error of *connecting and writing the request* in ``URLError``;
errors while reading the answer come out raw, which is what tells the two apart.

Waits are added to :func:`engine.clock.now`; absolute instants (an HTTP-date
``Retry-After``, the epoch-seconds ``X-RateLimit-Reset``) are first turned into a delay
against the wall clock, so a pinned clock (the simulator) still waits as long as asked.

Secrets and patient data: the API key lives only inside the SDK client (never on this
object, in a message or in ``repr``); addresses in SendGrid's messages are masked; the
SDK's exception is not chained (``from None``); and the DEBUG records of
``python_http_client`` — which print the ``Authorization: Bearer`` header and the whole
payload — are dropped by a filter installed on that logger.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import re
import time
import urllib.error
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from python_http_client.exceptions import HTTPError as SendGridHTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Category,
    Content,
    CustomArg,
    From,
    Header,
    Mail,
    Subject,
    To,
)
from sendgrid.helpers.mail.exceptions import SendGridException

from engine import clock
from engine.channels.base import Channel, OutboundMessage, SendResult
from engine.errors import (
    AmbiguousChannelError,
    ChannelError,
    PermanentChannelError,
    TransientChannelError,
)
from engine.privacy import mask_email, redact

PROVIDER = "sendgrid"
DEFAULT_API_URL = "https://api.sendgrid.com"
#: How long messages wait when SendGrid rejects the key or the sender (401/403).
CREDENTIALS_WAIT = timedelta(minutes=15)
EXCERPT_LENGTH = 200
SDK_LOGGER = "python_http_client.client"


class SendGridEmail(Channel):
    """Sends email through SendGrid's Mail Send API."""

    provider = PROVIDER
    #: The one category set on every message (constant: never patient data). None: none.
    category: ClassVar[str | None] = "touchpoint"

    def __init__(
        self,
        *,
        api_key: str,
        from_email: str,
        from_name: str | None = None,
        api_url: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__("email")
        if not api_key:  # the SDK would silently fall back to $SENDGRID_API_KEY
            raise ValueError("sendgrid: api_key is required")
        if not from_email or "@" not in from_email:
            raise ValueError("sendgrid: from_email must be an email address")
        if not timeout > 0:
            raise ValueError("sendgrid: timeout must be a positive number of seconds")
        if api_url is not None and not api_url.startswith(("http://", "https://")):
            raise ValueError("sendgrid: api_url must start with http:// or https://")
        self.from_email = from_email
        self.from_name = from_name or None
        self.api_url = api_url.rstrip("/") if api_url else None
        self.timeout = float(timeout)
        _drop_sdk_debug_records()
        # The key is handed to the SDK client and not kept anywhere else.
        self._client: Any = SendGridAPIClient(api_key=api_key,
                                              host=self.api_url or DEFAULT_API_URL)
        self._client.client.timeout = self.timeout

    def __repr__(self) -> str:
        return (f"SendGridEmail(api_key='•••', from_email={mask_email(self.from_email)!r}, "
                f"from_name={self.from_name!r}, api_url={self.api_url!r}, "
                f"timeout={self.timeout})")

    # ------------------------------------------------------------------ the three hooks
    def build_payload(self, message: OutboundMessage) -> dict[str, Any]:
        """The Mail Send JSON body (``Mail.get()``)."""
        common: dict[str, Any] = {"provider": PROVIDER, "touch_point_id": message.touch_point_id}
        if not message.subject:
            raise PermanentChannelError("the email has no subject; not sent", **common)
        if not message.body and not message.html:
            raise PermanentChannelError("the email has no content; not sent", **common)
        try:
            recipient = To()
            recipient.email = message.to  # set as is: no "Name <address>" parsing
            mail = Mail(from_email=From(self.from_email, self.from_name),
                        to_emails=recipient, subject=Subject(message.subject))
            if message.body:
                mail.add_content(Content("text/plain", message.body))
            if message.html:
                mail.add_content(Content("text/html", message.html))
            for name, value in message.headers.items():
                mail.add_header(Header(name, value))
            mail.add_custom_arg(CustomArg("touch_point_id", str(message.touch_point_id)))
            if self.category:
                mail.add_category(Category(self.category))
            body: dict[str, Any] = mail.get()
        except (SendGridException, ValueError, TypeError) as exc:
            # e.g. ApiKeyIncludedException: the content starts with something like a key.
            raise PermanentChannelError(
                f"the SendGrid SDK refused the email ({type(exc).__name__}); not sent",
                **common) from None
        return body

    def call(self, payload: Any, message: OutboundMessage) -> Any:
        try:
            return self._client.send(payload)
        except SendGridHTTPError as exc:
            raise self._http_error(exc, message) from None
        except urllib.error.URLError as exc:  # before OSError: URLError is one
            reason = exc.reason
            what = type(reason).__name__ if isinstance(reason, BaseException) else "URLError"
            raise TransientChannelError(
                f"could not reach SendGrid ({what}); the message was not sent",
                provider=PROVIDER, touch_point_id=message.touch_point_id,
                excerpt=_excerpt(f"{what}: {reason}"),
            ) from None
        except TimeoutError as exc:
            raise AmbiguousChannelError(
                f"no answer from SendGrid within {self.timeout:g}s ({type(exc).__name__}); "
                "the message may have been sent",
                provider=PROVIDER, touch_point_id=message.touch_point_id,
                excerpt=_excerpt(f"{type(exc).__name__}: {exc}"),
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise AmbiguousChannelError(
                f"the connection to SendGrid broke after the request was sent "
                f"({type(exc).__name__}); the message may have been sent",
                provider=PROVIDER, touch_point_id=message.touch_point_id,
                excerpt=_excerpt(f"{type(exc).__name__}: {exc}"),
            ) from None

    def parse_reply(self, reply: Any, message: OutboundMessage) -> SendResult:
        headers = getattr(reply, "headers", None)
        message_id = headers.get("X-Message-Id") if headers is not None else None
        return SendResult(PROVIDER, str(message_id) if message_id else None)

    # ------------------------------------------------------------------ classification
    def _http_error(self, exc: SendGridHTTPError, message: OutboundMessage) -> ChannelError:
        status = exc.status_code if isinstance(exc.status_code, int) else None
        headers: Mapping[str, str] = exc.headers if exc.headers is not None else {}
        excerpt = _excerpt(_sendgrid_text(exc.body))
        common: dict[str, Any] = {"provider": PROVIDER, "status": status, "excerpt": excerpt,
                                  "touch_point_id": message.touch_point_id}
        said = f": {excerpt}" if excerpt else ""
        if status is None or (status >= 500 and status != 503):
            return AmbiguousChannelError(
                f"SendGrid answered HTTP {status}; the message may or may not have been "
                f"accepted{said}", **common)
        if status in (401, 403):
            return TransientChannelError(
                f"SendGrid rejected the request (HTTP {status}): check the API key, its "
                "permissions and that the from address is a verified Sender Identity; "
                f"messages wait {int(CREDENTIALS_WAIT.total_seconds() // 60)} minutes "
                f"instead of failing{said}",
                retry_after=clock.now() + CREDENTIALS_WAIT, **common)
        if status == 429:
            return TransientChannelError(
                f"SendGrid rate limit reached; the message was not accepted{said}",
                retry_after=retry_after_from(headers) or _rate_limit_reset(headers), **common)
        if status == 503:
            return TransientChannelError(
                f"SendGrid is unavailable; the message was not accepted{said}",
                retry_after=retry_after_from(headers), **common)
        if status < 400:
            return TransientChannelError(
                f"SendGrid answered a redirect (HTTP {status}); the message was not sent",
                **common)
        return PermanentChannelError(
            excerpt or f"SendGrid refused the message (HTTP {status})", **common)


# ---------------------------------------------------------------------- helpers
class _DropDebug(logging.Filter):
    """Drops python_http_client's DEBUG records (API key header, full payload)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


def _drop_sdk_debug_records() -> None:
    logger = logging.getLogger(SDK_LOGGER)
    if not any(isinstance(f, _DropDebug) for f in logger.filters):
        logger.addFilter(_DropDebug())


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
    return _after(when.timestamp())


def _rate_limit_reset(headers: Mapping[str, str]) -> datetime | None:
    """``X-RateLimit-Reset`` (epoch seconds) as an aware UTC instant."""
    value = (headers.get("X-RateLimit-Reset") or "").strip()
    if not re.fullmatch(r"\d+(\.\d+)?", value):
        return None
    return _after(float(value))


def _after(epoch: float) -> datetime:
    """The provider's absolute instant as a wait from now (never in the past)."""
    return clock.now() + timedelta(seconds=max(epoch - time.time(), 0.0))


def _sendgrid_text(body: Any) -> str:
    """SendGrid's ``errors`` messages (with their field), or the raw body."""
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        parsed = json.loads(raw)
    except ValueError:
        return raw
    errors = parsed.get("errors") if isinstance(parsed, dict) else None
    if not isinstance(errors, list):
        return raw
    parts = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        text = str(error.get("message") or "").strip()
        field = error.get("field")
        parts.append(f"{text} ({field})" if field else text)
    return "; ".join(p for p in parts if p)


def _excerpt(text: str) -> str:
    """Redact first (a cut could leave a partial address unmatched), then shorten."""
    flat = " ".join(redact(text).split())
    return flat if len(flat) <= EXCERPT_LENGTH else flat[: EXCERPT_LENGTH - 1] + "…"
