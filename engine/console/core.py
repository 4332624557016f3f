"""What every console route shares: the console's services, the page renderer and the
guard that checks a request's session, CSRF token and role (see :mod:`engine.console`)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, Template, select_autoescape

from engine import audit, clock
from engine.channels.base import Channel
from engine.console import sessions
from engine.console.limits import SignInLimiter
from engine.definitions import Definitions
from engine.live_definitions import LiveDefinitions
from engine.settings import Settings
from engine.store.database import Database

log = logging.getLogger("touchpoint.console")

SESSION_COOKIE = "tp_session"
LOGIN_COOKIE = "tp_login"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_templates = Environment(loader=PackageLoader("engine.console", "templates"),
                         autoescape=select_autoescape(default=True), auto_reload=False)


@dataclass
class Console:
    """What the console's routes use: the serve process's settings, database,
    definitions (following the files, :mod:`engine.live_definitions`) and channels, and
    the sign-in limiter."""

    settings: Settings
    db: Database
    live: LiveDefinitions
    channels: Mapping[str, Channel]
    limiter: SignInLimiter

    @property
    def definitions(self) -> Definitions:
        """The definitions that run now (the last good ones if an edit is invalid)."""
        return self.live.definitions

    @property
    def secure_cookies(self) -> bool:
        return self.settings.webhooks.public_url.startswith("https://")


def address_of(request: Request) -> str:
    return request.client.host if request.client else ""


def _wants_page(request: Request) -> bool:
    return request.method in SAFE_METHODS and "text/html" in request.headers.get("accept", "") \
        and "hx-request" not in request.headers


def safe_next(target: str | None) -> str:
    """Only a path on this site (never //host or a scheme): no open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") \
            or urlsplit(target).scheme or "\\" in target:
        return "/"
    return target


def record_action(console: Console, session: sessions.Session, request: Request, action: str,
                  target: str = "", **detail: object) -> None:
    """Write a staff member's action to the audit log (who, what, on what, from where)."""
    with console.db.transaction() as conn:
        audit.record(conn, actor=f"staff:{session.user.email}", action=action,
                     now=clock.now(), target=target, address=address_of(request),
                     detail=detail)


def template(name: str) -> Template:
    return _templates.get_template(name)


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(name).render(**context), status_code=status)


async def read_form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", errors="replace")
    return dict(parse_qsl(body, keep_blank_values=True))


class Denied(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class Guard:
    """Checks a request: ``guard(request, permission, form)`` returns its live session or
    raises :class:`Denied` with the answer (redirect to sign-in, 401, 403)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, request: Request, permission: str,
                 form: dict[str, str] | None = None) -> sessions.Session:
        console, now = self.console, clock.now()
        with console.db.transaction() as conn:
            found = sessions.find(conn, request.cookies.get(SESSION_COOKIE), now=now,
                                  idle=console.settings.console.session_idle,
                                  longest=console.settings.console.session_max)
        if found is None:
            if _wants_page(request):
                target = request.url.path + (f"?{request.url.query}" if request.url.query
                                             else "")
                raise Denied(RedirectResponse(f"/login?next={quote(target)}", 303))
            raise Denied(JSONResponse({"detail": "sign in first"}, 401))
        if request.method not in SAFE_METHODS:
            sent = (form or {}).get("csrf_token") or request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(sent.encode(), found.csrf_token.encode()):
                raise Denied(JSONResponse({"detail": "missing or wrong CSRF token — reload "
                                           "the page and try again"}, 403))
        if not found.user.may(permission):
            raise Denied(render("denied.html", 403, session=found, permission=permission,
                                practice=console.settings.practice.name))
        return found


