"""The inbox: replies to read as conversations per patient; reply, mark done, opt out.

=============================  ====================================================
GET  /inbox                    conversations, "possible opt-out" ones first
POST /inbox/{id}/reply         send a text back (engine.conversations.staff_reply)
POST /inbox/{id}/done          mark a reply read and handled
POST /inbox/{id}/opt-out       read it as "stop texting me": opt out, confirm once
=============================  ====================================================

Every action is CSRF-checked, needs its permission (front desk and above) and is
written to the audit log; the page is then shown again with what happened.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse

from engine import clock
from engine.console.core import Console, Guard, read_form, record_action, render
from engine.console.sessions import Session
from engine.conversations import conversations, staff_opt_out, staff_reply
from engine.errors import UserError
from engine.replies import POSSIBLE_OPT_OUT
from engine.timing import zone
from engine.touch_point_log import mark_done


def add_routes(app: FastAPI, console: Console, guard: Guard) -> None:
    practice = console.settings.practice.name

    def page(session: Session, *, notice: str = "", error: str = "",
             status: int = 200) -> Response:
        now = clock.now()
        with console.db.transaction() as conn:
            found = conversations(conn, now)
        return render("inbox.html", status, session=session, practice=practice,
                      conversations=found, notice=notice, error=error,
                      flag=POSSIBLE_OPT_OUT,
                      tz=zone(console.settings.practice.timezone or "UTC"))

    def record(session: Session, request: Request, action: str, message_id: int,
               **detail: object) -> None:
        record_action(console, session, request, action, f"inbound:{message_id}", **detail)

    @app.get("/inbox", response_class=HTMLResponse, include_in_schema=False)
    def inbox_page(request: Request) -> Response:
        return page(guard(request, "read"))

    @app.post("/inbox/{message_id}/reply", response_class=HTMLResponse,
              include_in_schema=False)
    async def reply(request: Request, message_id: int) -> Response:
        form = await read_form(request)
        session = guard(request, "reply", form)
        try:
            sent = staff_reply(console.db, console.definitions, console.settings,
                               console.channels, message_id, form.get("text", ""),
                               clock.now())
        except UserError as exc:
            return page(session, error=exc.message, status=422)
        record(session, request, "inbox.reply", message_id, touch_point=sent.id,
               status=sent.status)
        if sent.status in ("sent", "delivered"):
            return page(session, notice=f"Reply sent (touch point {sent.id}, in the log).")
        return page(session, status=502, error=f"The reply could not be sent ({sent.status}: "
                    f"{sent.reason or 'see the log'}); touch point {sent.id} has the details.")

    @app.post("/inbox/{message_id}/done", response_class=HTMLResponse,
              include_in_schema=False)
    async def done(request: Request, message_id: int) -> Response:
        session = guard(request, "inbox.done", await read_form(request))
        with console.db.transaction() as conn:
            changed = mark_done(conn, message_id)
        if not changed:
            return page(session, error=f"There is no reply {message_id} to mark done.",
                        status=404)
        record(session, request, "inbox.done", message_id)
        return page(session, notice="Marked done.")

    @app.post("/inbox/{message_id}/opt-out", response_class=HTMLResponse,
              include_in_schema=False)
    async def opt_out(request: Request, message_id: int) -> Response:
        session = guard(request, "opt-out", await read_form(request))
        try:
            result = staff_opt_out(console.db, console.definitions, console.settings,
                                   console.channels, message_id, clock.now())
        except UserError as exc:
            return page(session, error=exc.message, status=404)
        record(session, request, "inbox.opt-out", message_id, already=result.already,
               confirmed=result.confirmed)
        if result.already:
            return page(session, notice=f"{result.number} had already opted out; marked done.")
        return page(session, notice=f"{result.number} is opted out of every text"
                    + ("; the confirmation was sent." if result.confirmed else
                       "; the confirmation could not be sent (see the log)."))
