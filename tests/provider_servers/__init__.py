"""Local HTTP servers that answer like Twilio's and SendGrid's REST APIs.

The test suite never reaches the network: the real ``twilio`` (9.x) and
``sendgrid`` (6.12) SDKs are pointed at these servers on ``127.0.0.1``
(standard library only: ``ThreadingHTTPServer`` in a background thread, port
0). Bodies come from ``tests/payloads/`` (see its README for provenance).
``tests/test_provider_servers.py`` checks everything stated here against the
installed SDKs.

Servers
=======
``TwilioAPIServer(account_sid=..., auth_token=...)`` and
``SendGridAPIServer(api_key=...)`` (defaults: ``DEFAULT_ACCOUNT_SID``,
``DEFAULT_AUTH_TOKEN``, ``DEFAULT_API_KEY`` in their modules) share:

* ``start()`` (returns the server), ``stop()`` (idempotent; releases hanging
  requests, closes sockets, joins all threads), ``with Server() as s:``;
* ``.url``: ``http://127.0.0.1:PORT`` (no trailing slash); ``.port``, ``.running``;
* ``.requests``: thread-safe snapshot ``list[RecordedRequest]`` with
  ``method``, ``path``, ``query``, ``headers`` (dict), ``body`` (raw bytes),
  ``form`` (``parse_qs`` dict of lists, for form bodies), ``json`` (parsed JSON
  bodies), ``outcome`` (label such as ``"201"``, ``"400 21211"``, ``"hang"``),
  ``response`` (the ``Reply`` sent, ``None`` for hang/disconnect) and helpers
  ``header(name)`` (case-insensitive) and ``form_value(name)``;
* ``wait_for_requests(n, timeout=2.0)``; ``reset()``; ``errors`` (exceptions
  raised inside the fake itself: should stay empty);
* ``enqueue(*outcomes)``: appends to a FIFO script; each authenticated request
  to the right endpoint consumes one outcome; when the script is empty the
  answer is success. ``pending`` lists what has not been consumed yet.
  Requests with bad credentials get a 401 *without* consuming the script.
* ``ConnectTimeoutListener()`` (same ``start``/``stop``/``with``/``.url``) is a
  port that never completes the TCP handshake, for connect-timeout tests.
* Twilio only: ``.messages`` (Message JSON returned with 201),
  ``.messages_path``. SendGrid only: ``.message_ids`` (X-Message-Id values sent).

Outcomes are ``Outcome`` objects or names:

=====================  ===============================  =====================================
name                   Twilio                           SendGrid
=====================  ===============================  =====================================
``"success"``          201 Message (queued)             202, empty body, X-Message-Id
``"invalid_to"``       400, code 21211                  (n/a)
``"unsubscribed"``     400, code 21610                  (n/a)
``"region_disabled"``  400, code 21408                  (n/a)
``"bad_request"``      (n/a)                            400, ``from.email`` error
``"unauthorized"``     401, code 20003                  401 errors JSON
``"forbidden"``        (n/a)                            403, unverified Sender Identity
``"rate_limited"``     429, code 20429                  429 + X-RateLimit-Limit/Remaining/Reset
``"server_error"``     500, code 20500                  500 errors JSON
``"unavailable"``      503, code 20503                  503 errors JSON
``"hang"``             reads the request, never answers until ``stop()``
``"disconnect"``       reads the request, closes the socket without answering
=====================  ===============================  =====================================

With parameters, use the factories: ``TwilioOutcome.rate_limited(retry_after=7)``,
``TwilioOutcome.error(21211, message=...)``, ``TwilioOutcome.success(status="sent")``,
``SendGridOutcome.rate_limited(retry_after=3)``, ``SendGridOutcome.error(403, payload={...})``,
``SendGridOutcome.success(message_id="...")``, ``TwilioOutcome.HANG``,
``SendGridOutcome.DISCONNECT``; or any raw ``Outcome("reply", reply=Reply(502, b"<html>", {...}))``.

On the success path each fake also runs the provider's basic request
validation (Twilio 21604/21603/21602 for missing To/From/Body; SendGrid 400
for missing personalizations/subject/content or a bad ``from.email``).

Pointing the SDKs at the servers (no monkeypatching)
====================================================
Twilio (``twilio_api.make_client(server, timeout=...)`` does this)::

    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    client = Client(account_sid, auth_token, http_client=TwilioHttpClient(timeout=5.0))
    client.region = None        # TWILIO_REGION / TWILIO_EDGE env vars would make
    client.edge = None          # get_hostname() mangle "127.0.0.1:PORT"
    client.api.base_url = server.url   # Domain.base_url, read on every request
    client.messages.create(to=..., from_=..., body=..., status_callback=...)

``edge``/``region`` only rewrite ``*.twilio.com`` host names, so they cannot
target a local server; ``Domain.base_url`` is the one public knob. The timeout
(connect and read, seconds) is ``TwilioHttpClient(timeout=...)``; the default is
``None`` = wait forever.

SendGrid (``sendgrid_api.make_client(server, timeout=...)`` does this)::

    from sendgrid import SendGridAPIClient

    sg = SendGridAPIClient(api_key=api_key, host=server.url)   # -> host + "/v3/mail/send"
    sg.client.timeout = 5.0     # python_http_client.Client; default None = forever
    response = sg.send(mail)    # mail: sendgrid.helpers.mail.Mail or a dict

or per call: ``sg.client.mail.send.post(request_body=mail.get(), timeout=5.0)``.

Both SDKs honour ``HTTP(S)_PROXY``; ``NO_PROXY`` must cover ``127.0.0.1`` if a
proxy is configured (the tests set ``NO_PROXY=127.0.0.1,localhost``).

What each SDK raises (twilio 9.13.0 / sendgrid 6.12.5 + python-http-client 3.3.7)
=================================================================================
Twilio, ``client.messages.create(...)``:

=======================  =====================================================================
outcome                  result
=======================  =====================================================================
201                      ``MessageInstance``: ``.sid`` ``SM…``, ``.status`` ``"queued"``,
                         ``.date_created`` aware UTC ``datetime``, ``.num_segments`` str
400 / 401 / 404 / 429 /  ``twilio.base.exceptions.TwilioRestException`` with ``.status`` (HTTP
500 / 503 (JSON body)    int), ``.code`` (Twilio int: 21211, 21610, 21408, 20003, 20404,
                         20429, 20500, 20503), ``.msg`` = ``"Unable to create record: "`` +
                         body ``message``, ``.method`` ``"POST"``, ``.uri``
                         ``"/Accounts/AC…/Messages.json"``, ``.details`` ``None``.
                         ``more_info`` and response headers are NOT kept.
non-JSON error body      ``TwilioRestException`` with ``.code == .status`` and
                         ``.msg == "Unable to create record"``
Retry-After              not on the exception: pass
                         ``TwilioHttpClient(request_hooks={"response": [hook]})`` and read
                         ``response.headers`` in ``hook(response, *a, **kw)``
hang (read timeout)      ``requests.exceptions.ReadTimeout`` (⊂ ``requests.exceptions.Timeout``
                         ⊂ ``RequestException`` ⊂ ``OSError``), after ~``timeout`` s, unwrapped
connect timeout          ``requests.exceptions.ConnectTimeout``: subclass of BOTH
                         ``requests.exceptions.ConnectionError`` and ``Timeout``
disconnect               ``requests.exceptions.ConnectionError`` (wraps ``RemoteDisconnected``)
refused                  ``requests.exceptions.ConnectionError``
=======================  =====================================================================

``TwilioRestException`` is not an ``OSError``; every ``requests`` error is.
``requests.exceptions.ConnectionError`` is NOT the builtin ``ConnectionError``.
The SDK never retries (one request per ``create``).

SendGrid, ``sg.send(mail)``:

=======================  =====================================================================
outcome                  result
=======================  =====================================================================
202                      ``python_http_client.client.Response``: ``.status_code`` 202, ``.body``
                         ``b""``, ``.headers`` (``http.client.HTTPMessage``)
                         ``["X-Message-Id"]``
400                      ``python_http_client.exceptions.BadRequestsError``
401                      ``…UnauthorizedError``  (403 ``ForbiddenError``, 404 ``NotFoundError``,
                         413 ``PayloadTooLargeError``)
429                      ``…TooManyRequestsError``; ``.headers["X-RateLimit-Reset"]`` (epoch s),
                         ``.headers.get("Retry-After")`` (only if the server sent it)
500 / 503                ``…InternalServerError`` / ``…ServiceUnavailableError``
                         (504 ``GatewayTimeoutError``; other statuses the base ``HTTPError``)
(all of the above)       ⊂ ``python_http_client.exceptions.HTTPError`` with ``.status_code``,
                         ``.reason`` (HTTP phrase), ``.body`` (bytes), ``.headers``
                         (``HTTPMessage``), ``.to_dict`` (parsed body). Not an ``OSError``,
                         not ``urllib.error.HTTPError``.
hang (read timeout)      builtin ``TimeoutError`` (``socket.timeout`` is the same class),
                         raised raw from ``http.client``, after ~``timeout`` s
connect timeout          ``urllib.error.URLError`` with ``.reason`` a ``TimeoutError``
disconnect               ``http.client.RemoteDisconnected`` (⊂ builtin ``ConnectionError``
                         ⊂ ``OSError``), raw
refused                  ``urllib.error.URLError``, ``.reason`` ``ConnectionRefusedError``
=======================  =====================================================================

Delivery certainty for the channels: 4xx/429 and connection refused mean "not
sent" (Twilio: a 429 "is never processed and is always safe to retry"); a
timeout, a disconnect or a 5xx on the send POST mean "unknown": Twilio warns
that retrying a 500 on message creation can send the message twice.
"""

from . import sendgrid_api, twilio_api
from ._base import (
    DISCONNECT,
    HANG,
    ConnectTimeoutListener,
    Outcome,
    RecordedRequest,
    Reply,
    load_payload,
)
from .sendgrid_api import SendGridAPIServer, SendGridOutcome
from .twilio_api import TwilioAPIServer, TwilioOutcome

__all__ = [
    "DISCONNECT",
    "HANG",
    "ConnectTimeoutListener",
    "Outcome",
    "RecordedRequest",
    "Reply",
    "SendGridAPIServer",
    "SendGridOutcome",
    "TwilioAPIServer",
    "TwilioOutcome",
    "load_payload",
    "sendgrid_api",
    "twilio_api",
]
