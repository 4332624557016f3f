"""The ASGI app `touchpoint serve` runs: provider webhooks, one-click unsubscribe, and
the practice console (:mod:`engine.console`, at ``/`` and ``/login``).

==================================  ====================================================
GET  /healthz                       database reachable, last tick, backlog (503 if no recent tick)
GET  /metrics                       Prometheus metrics (see engine/health.py)
POST /webhooks/twilio/status        Twilio status callbacks (``?tp=`` names the touch point)
POST /webhooks/twilio/inbound       inbound SMS: STOP, START, HELP, C, R, free text
POST /webhooks/sendgrid/events      SendGrid's signed Event Webhook
POST /webhooks/sendgrid/inbound     Inbound Parse: mailto: unsubscribes
GET  /unsubscribe/{token}           a page with one button
POST /unsubscribe/{token}           RFC 8058 one-click unsubscribe (and the button)
/api/v1/…                           the REST API for EMR integrations (engine/api/)
GET  /api/docs                      the API's OpenAPI docs (schema: /api/openapi.json)
==================================  ====================================================

Every webhook is verified first — a missing or bad signature gets 403 and changes
nothing — then recorded in one transaction and answered at once; replies to a text are
sent after the answer (a background task). A request body over :data:`MAX_BODY` (1 MiB)
is refused with 413 before it is read whole: by its ``Content-Length``, or, without one,
as soon as the bytes received pass the limit (:class:`BodyLimit`); under ``/api/`` the
413 is problem+json, as every API error is.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl

from fastapi import BackgroundTasks, FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import api, clock
from engine.api import problems
from engine.channels.base import Channel
from engine.console import web as console
from engine.console.core import Console
from engine.console.limits import SignInLimiter
from engine.definitions import Definitions
from engine.health import LedgerCollector, health
from engine.live_definitions import LiveDefinitions
from engine.replies import Handled, record_inbound, send_outgoing
from engine.retry import RetryPolicy
from engine.settings import Settings
from engine.store import ledger
from engine.store.database import Database
from engine.store.records import add_opt_out
from engine.unsubscribe import read_token, secret_key
from engine.webhooks import sendgrid, twilio
from engine.webhooks.record import Redelivery, record_event

log = logging.getLogger("touchpoint.webhooks")

#: The largest request body a webhook takes (bytes).
MAX_BODY = 1024 * 1024


class BodyLimit:
    """ASGI middleware: refuse (413) a request whose body is over ``limit`` bytes before
    the app reads it — at once when ``Content-Length`` says so, else while it streams in
    (at most ``limit`` bytes are held, then handed to the app as received)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.strip().isdigit()
                                     or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        received: list[Message] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return received.pop(0) if received else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        api_request = path.startswith(problems.API_PREFIX)
        # (an API path names a record: log the part before it)
        log.warning("refused a request to %s: body over %d bytes",
                    "/".join(path.split("/")[:4]) + "/…" if api_request else path, self.limit)
        response = problems.too_large(self.limit).response() if api_request else Response(
            f"request body too large (limit {self.limit} bytes)", status_code=413,
            media_type="text/plain")
        await response(scope, receive, send)


class FollowEdits:
    """ASGI middleware: before a request, the definitions follow hand edits of the files
    (:meth:`LiveDefinitions.follow`, read in a worker thread at most every few seconds)."""

    def __init__(self, app: ASGIApp, live: LiveDefinitions) -> None:
        self.app = app
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.live.due():
            await run_in_threadpool(self.live.follow)
        await self.app(scope, receive, send)


class Services:
    """What the routes use. ``definitions``: fixed ones, or :class:`LiveDefinitions` that
    follow the files (``touchpoint serve``)."""

    def __init__(self, settings: Settings, db: Database,
                 definitions: Definitions | LiveDefinitions,
                 channels: Mapping[str, Channel]) -> None:
        self.settings = settings
        self.db = db
        self.live = definitions if isinstance(definitions, LiveDefinitions) \
            else LiveDefinitions(settings, db, definitions)
        self.channels = channels

    @property
    def definitions(self) -> Definitions:
        """The definitions that run now (the last good ones if an edit is invalid)."""
        return self.live.definitions


def _public_url(services: Services, request: Request) -> str:
    """The URL the provider called, as it signed it (behind a proxy: the public URL)."""
    base = services.settings.webhooks.public_url
    if not base:
        return str(request.url)
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{base}{request.url.path}{query}"


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", errors="replace")
    return dict(parse_qsl(body, keep_blank_values=True))


def create_app(services: Services) -> FastAPI:
    # (the OpenAPI schema and its docs page show the REST API; webhooks are for providers)
    app = FastAPI(title="Touchpoint", version="1", docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="The REST API for EMR integrations: see docs/api.md.")
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    if services.live.follows:
        app.add_middleware(FollowEdits, live=services.live)
    app.state.services = services
    api.mount(app, services)
    settings = services.settings
    retry = RetryPolicy(settings.dispatch.max_attempts, settings.dispatch.retry_backoff)

    def redelivery() -> Redelivery:
        return Redelivery(services.definitions, retry)  # (the definitions that run now)

    def twilio_ok(request: Request, params: Mapping[str, str]) -> bool:
        token = settings.twilio.auth_token or ""
        return twilio.verify(token, _public_url(services, request), params,
                             request.headers.get("X-Twilio-Signature"))

    registry = CollectorRegistry()
    registry.register(LedgerCollector(services.db))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        healthy, details = health(services.db, settings)
        return Response(json.dumps(details), status_code=200 if healthy else 503,
                        media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/webhooks/twilio/status", include_in_schema=False)
    async def twilio_status(request: Request) -> Response:
        params = await _form(request)
        if not twilio_ok(request, params):
            return Response("bad signature", status_code=403)
        tp = request.query_params.get("tp", "")
        event = twilio.status_event(params, int(tp) if tp.isdigit() else None, clock.now(),
                                    request.headers.get("I-Twilio-Idempotency-Token"))
        with services.db.transaction() as conn:
            outcome = record_event(conn, event, clock.now(), redelivery())
        log.info("twilio status %s for touch point %s: %s", event.status,
                 outcome.touch_point_id, outcome.outcome)
        return Response(status_code=204)

    @app.post("/webhooks/twilio/inbound", include_in_schema=False)
    async def twilio_inbound(request: Request, background: BackgroundTasks) -> Response:
        params = await _form(request)
        if not twilio_ok(request, params):
            return Response("bad signature", status_code=403)
        sms = twilio.inbound_sms(params)
        with services.db.transaction() as conn:
            handled = record_inbound(conn, settings, provider="twilio",
                                     message_id=sms.message_sid, from_number=sms.from_number,
                                     to_number=sms.to_number, body=sms.body, now=clock.now(),
                                     asks_score=services.definitions.score_steps)
        log.info("inbound sms %s: %s%s", handled.inbound_id, handled.intent,
                 " (duplicate)" if handled.duplicate else "")
        if handled.outgoing:
            background.add_task(_reply, services, handled, sms.body, sms.from_number)
        return Response(twilio.EMPTY_TWIML, media_type="text/xml")

    @app.post("/webhooks/sendgrid/events", include_in_schema=False)
    async def sendgrid_events(request: Request) -> Response:
        body = await request.body()
        if not sendgrid.verify(settings.sendgrid.webhook_public_key or "", body,
                               request.headers.get(sendgrid.SIGNATURE_HEADER),
                               request.headers.get(sendgrid.TIMESTAMP_HEADER)):
            return Response("bad signature", status_code=403)
        if not sendgrid.fresh(request.headers.get(sendgrid.TIMESTAMP_HEADER), clock.now()):
            log.warning("refused a SendGrid event batch signed more than %s ago (or ahead)",
                        sendgrid.MAX_SIGNATURE_AGE)
            return Response("signature too old (or dated in the future)", status_code=403)
        try:
            payload = json.loads(body)
        except ValueError:
            return Response("not JSON", status_code=400)
        now = clock.now()
        counts: dict[str, int] = {}
        with services.db.transaction() as conn:
            for event in sendgrid.events(payload, now):
                outcome = record_event(conn, event, now, redelivery()).outcome
                counts[outcome] = counts.get(outcome, 0) + 1
        log.info("sendgrid events: %s", counts)
        return Response(status_code=204)

    @app.post("/webhooks/sendgrid/inbound", include_in_schema=False)
    async def sendgrid_inbound(request: Request) -> Response:
        form = await request.form()
        match = re.search(r"unsubscribe\s+(\S+)", str(form.get("subject") or ""))
        if match:
            _unsubscribe(services, match.group(1), "mailto")
        return Response(status_code=204)  # also for mail we cannot use: never make it retry

    @app.get("/unsubscribe/{token}", response_class=HTMLResponse, include_in_schema=False)
    def unsubscribe_page(token: str) -> HTMLResponse:
        if _target(services, token) is None:
            return HTMLResponse(_page("This link is not valid", "<p>It may have been "
                                      "copied incompletely.</p>"), status_code=404)
        name = html.escape(settings.practice.name or "us")
        return HTMLResponse(_page(
            f"Unsubscribe from {name}'s emails",
            '<form method="post"><button type="submit">Unsubscribe</button></form>'))

    @app.post("/unsubscribe/{token}", response_class=HTMLResponse, include_in_schema=False)
    def unsubscribe(token: str) -> HTMLResponse:
        done = _unsubscribe(services, token, "one-click")
        if done is None:
            return HTMLResponse(_page("This link is not valid", ""), status_code=404)
        what = "marketing emails" if done == "marketing" else "emails"
        return HTMLResponse(_page("You are unsubscribed",
                                  f"<p>You will get no more {what} from "
                                  f"{html.escape(settings.practice.name or 'us')}.</p>"))

    console.mount(app, Console(settings, services.db, services.live, services.channels,
                               SignInLimiter()))
    return app


def _reply(services: Services, handled: Handled, body: str, from_number: str) -> None:
    try:
        send_outgoing(services.db, services.definitions, services.settings, services.channels,
                      handled, body, from_number)
    except Exception:  # a reply must never take the server down; the ledger shows it
        log.exception("could not send the reply to inbound message %s", handled.inbound_id)


def _target(services: Services, token: str) -> tuple[ledger.TouchPoint, str] | None:
    with services.db.transaction() as conn:
        parsed = read_token(secret_key(conn, services.settings), token)
        if parsed is None:
            return None
        tp = ledger.get(conn, parsed[0])
    if tp is None or not tp.address:
        return None
    return tp, parsed[1]


def _unsubscribe(services: Services, token: str, source: str) -> str | None:
    """Opt the address of the token's touch point out of its purpose; the purpose."""
    target = _target(services, token)
    if target is None:
        return None
    tp, purpose = target
    assert tp.address is not None
    # A marketing link stops marketing; a link in a transactional email stops everything
    # (the page says "no more emails").
    scope = "marketing" if purpose == "marketing" else "all"
    with services.db.transaction() as conn:
        add_opt_out(conn, "email", tp.address, scope, source,
                    f"unsubscribe link of touch point {tp.id}", clock.now())
    return scope


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width'><title>{title}</title>"
            f"<body style='font-family:sans-serif;max-width:32em;margin:3em auto'>"
            f"<h1>{title}</h1>{body}</body>")

