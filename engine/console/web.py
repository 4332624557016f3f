"""The console's routes and the guards every one of them goes through.

==================  ===========================================================
GET  /login         the sign-in form (a login CSRF token in a cookie and the form)
POST /login         email + password → a session cookie, then the page asked for
POST /logout        ends the session (CSRF-checked)
GET  /              today at the practice: what needs a person
GET  /audit         the audit log, newest first (owners)
==================  ===========================================================

The session cookie ``tp_session`` is HttpOnly, SameSite=Lax, and Secure when
``webhooks.public_url`` is https. Without a live session a page request is redirected to
``/login?next=…`` and anything else (a fetch, a form post) gets 401. A state-changing
request must carry the session's CSRF token (the form field ``csrf_token`` or the header
``X-CSRF-Token``), else 403. Sign-in, sign-out, refused sign-ins and throttled ones are
written to the audit log with the address they came from; the email of a failed attempt
is masked there.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from engine import audit, clock, staff
from engine.cases import list_cases
from engine.console import (
    case_pages,
    editor_pages,
    inbox_pages,
    journey_pages,
    patient_pages,
    report_pages,
    sessions,
    waitlist_pages,
)
from engine.console.core import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Console,
    Denied,
    Guard,
    address_of,
    read_form,
    render,
    safe_next,
)
from engine.privacy import mask_email
from engine.reconcile import unknown_touch_points
from engine.replies import POSSIBLE_OPT_OUT
from engine.timing import zone
from engine.touch_point_log import inbox

AUDIT_PAGE = 500  # entries shown; `touchpoint audit` exports them all

# Sent with every console page. Scripts and styles come only from /static (inline styles
# are allowed for the email preview, whose sandboxed frame inherits this policy and whose
# HTML is the practice's own template); no page may be framed by another site.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data: https:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
                               "object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def mount(app: FastAPI, console: Console) -> None:
    """Add the console's routes to ``app`` (the `touchpoint serve` app)."""
    app.mount("/static", StaticFiles(packages=[("engine.console", "static")]), name="static")

    @app.exception_handler(Denied)
    async def denied(request: Request, exc: Denied) -> Response:
        return exc.response

    session_for = Guard(console)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        if not request.url.path.startswith("/api/"):  # the API's own docs page loads Swagger
            response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/") -> Response:
        return _login_form(console, safe_next(next))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await read_form(request)
        email = form.get("email", "").strip().lower()[:254]
        target = safe_next(form.get("next"))
        address, now = address_of(request), clock.now()
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(form.get("csrf_token", "").encode(),
                                                   expected.encode()):
            return _login_form(console, target, email=email, status=403,
                               error="The sign-in form expired. Please try again.")
        wait = console.limiter.retry_after(email, address, now)
        if wait:
            with console.db.transaction() as conn:
                audit.record(conn, actor=f"staff:{mask_email(email)}",
                             action="console.sign-in.throttled", now=now, address=address)
            response = _login_form(console, target, email=email, status=429,
                                   error=f"Too many attempts. Try again in "
                                         f"{max(1, round(wait / 60))} minute(s).")
            response.headers["Retry-After"] = str(wait)
            return response
        with console.db.transaction() as conn:
            user = staff.authenticate(conn, email, form.get("password", ""))
            if user is None:
                audit.record(conn, actor=f"staff:{mask_email(email)}",
                             action="console.sign-in.refused", now=now, address=address)
            else:
                token = sessions.start(conn, user, now=now, address=address)
                audit.record(conn, actor=f"staff:{user.email}", action="console.sign-in",
                             now=now, address=address)
        if user is None:
            console.limiter.failed(email, address, now)
            return _login_form(console, target, email=email, status=401,
                               error="That email and password do not match an active "
                                     "account.")
        console.limiter.succeeded(email)
        signed_in = RedirectResponse(target, 303)
        signed_in.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax",
                            secure=console.secure_cookies, path="/")
        signed_in.delete_cookie(LOGIN_COOKIE, path="/login")
        return signed_in

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        session = session_for(request, "read", await read_form(request))
        now = clock.now()
        with console.db.transaction() as conn:
            sessions.end(conn, session.id, now)
            audit.record(conn, actor=f"staff:{session.user.email}",
                         action="console.sign-out", now=now, address=address_of(request))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request) -> Response:
        session = session_for(request, "read")
        with console.db.transaction() as conn:
            today = _today(conn)
        return render("home.html", session=session, today=today,
                      practice=console.settings.practice.name)

    @app.get("/audit", response_class=HTMLResponse, include_in_schema=False)
    def audit_page(request: Request) -> Response:
        session = session_for(request, "audit")
        with console.db.transaction() as conn:
            found = list(audit.entries(conn, newest_first=True, limit=AUDIT_PAGE))
        return render("audit.html", session=session, practice=console.settings.practice.name,
                      entries=found, limit=AUDIT_PAGE,
                      tz=zone(console.settings.practice.timezone or "UTC"))

    patient_pages.add_routes(app, console, session_for)
    inbox_pages.add_routes(app, console, session_for)
    case_pages.add_routes(app, console, session_for)
    editor_pages.add_routes(app, console, session_for)
    journey_pages.add_routes(app, console, session_for)
    report_pages.add_routes(app, console, session_for)
    waitlist_pages.add_routes(app, console, session_for)


def _login_form(console: Console, target: str, *, email: str = "", status: int = 200,
                error: str | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render("login.html", status, csrf_token=token, next=target, email=email,
                      error=error, practice=console.settings.practice.name)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict",
                        secure=console.secure_cookies, path="/login", max_age=3600)
    return response


def _today(conn: Any) -> dict[str, Any]:
    """What needs a person today (counts only)."""
    replies = inbox(conn)
    cases = list_cases(conn, open_only=True)
    now = clock.now()
    return {
        "possible_opt_outs": sum(1 for r in replies if r["flag"] == POSSIBLE_OPT_OUT),
        "replies": len(replies),
        "open_cases": len(cases),
        "overdue_cases": sum(1 for c in cases if c.due_at < now),
        "unknown": len(unknown_touch_points(conn)),
    }
