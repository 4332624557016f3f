"""Recovery cases and messages whose delivery is unknown: the safety net's work list.

================================  =================================================
GET  /cases                       open cases: patient, cause, owner, age, due
GET  /cases/{id}                  one case and its history
POST /cases/{id}/note             add to its history
POST /cases/{id}/assign           give it to someone
POST /cases/{id}/resolve          close it with what was done
GET  /unknown                     messages whose delivery is unknown
POST /unknown/{id}/settle         staff's decision: sent, resend or drop, with a note
================================  =================================================

The same functions as `touchpoint case` and `touchpoint settle` (engine.cases,
engine.reconcile); every action CSRF-checked, front desk and above, audited.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import Connection, select

from engine import cases, clock
from engine.console.core import Console, Guard, read_form, record_action, render
from engine.console.sessions import Session
from engine.errors import UserError
from engine.reconcile import SETTLE_ACTIONS, settle, unknown_touch_points
from engine.store.records import patient_names
from engine.store.schema import patients
from engine.timing import zone


def add_routes(app: FastAPI, console: Console, guard: Guard) -> None:
    practice = console.settings.practice.name
    tz = zone(console.settings.practice.timezone or "UTC")

    def record(session: Session, request: Request, action: str, target: str = "",
               **detail: object) -> None:
        record_action(console, session, request, action, target, **detail)

    @app.get("/cases", response_class=HTMLResponse, include_in_schema=False)
    def cases_page(request: Request) -> Response:
        session = guard(request, "read")
        now = clock.now()
        with console.db.transaction() as conn:
            found = cases.list_cases(conn, open_only=True)
            names = patient_names(conn, {c.patient_id for c in found})
        found.sort(key=lambda c: (c.due_at >= now, c.due_at))  # overdue first
        rows = [{"case": c, "patient": names.get(c.patient_id, ""),
                 "age": _age(now - c.opened_at), "overdue": c.due_at < now} for c in found]
        return render("cases.html", session=session, practice=practice, rows=rows, tz=tz)

    def case_page(session: Session, case_id: int, *, notice: str = "", error: str = "",
                  status: int = 200) -> Response:
        with console.db.transaction() as conn:
            case = cases.get_case(conn, case_id)
            if case is None:
                return render("not_found.html", 404, session=session, practice=practice,
                              what=f"case {case_id}")
            steps = cases.history(conn, case_id)
            name = patient_names(conn, {case.patient_id}).get(case.patient_id, "")
            patient_id = _external_id(conn, case.patient_id)
        return render("case.html", status, session=session, practice=practice, case=case,
                      steps=steps, patient=name, patient_id=patient_id, tz=tz,
                      age=_age((case.resolved_at or clock.now()) - case.opened_at),
                      notice=notice, error=error)

    @app.get("/cases/{case_id}", response_class=HTMLResponse, include_in_schema=False)
    def case_detail(request: Request, case_id: int) -> Response:
        return case_page(guard(request, "read"), case_id)

    @app.post("/cases/{case_id}/{action}", response_class=HTMLResponse,
              include_in_schema=False)
    async def case_action(request: Request, case_id: int, action: str) -> Response:
        form = await read_form(request)
        session = guard(request, "cases.change", form)
        now, by = clock.now(), session.user.email
        try:
            with console.db.transaction() as conn:
                if action == "note":
                    cases.note(conn, case_id, form.get("text", ""), by, now)
                    done = "Note added."
                elif action == "assign":
                    owner = cases.assign(conn, case_id, form.get("owner", ""), by, now).owner
                    done = f"Assigned to {owner}."
                elif action == "resolve":
                    cases.resolve(conn, case_id, form.get("text", ""), by, now)
                    done = "Resolved; its pending recovery messages are cancelled."
                else:
                    return render("not_found.html", 404, session=session, practice=practice,
                                  what=f"action {action!r} for a case")
        except UserError as exc:
            return case_page(session, case_id, error=exc.message, status=422)
        record(session, request, f"case.{action}", f"case:{case_id}")
        return case_page(session, case_id, notice=done)

    def unknown_page(session: Session, *, notice: str = "", error: str = "",
                     status: int = 200) -> Response:
        with console.db.transaction() as conn:
            rows = unknown_touch_points(conn)
        return render("unknown.html", status, session=session, practice=practice, rows=rows,
                      notice=notice, error=error, actions=SETTLE_ACTIONS)

    @app.get("/unknown", response_class=HTMLResponse, include_in_schema=False)
    def unknown(request: Request) -> Response:
        return unknown_page(guard(request, "read"))

    @app.post("/unknown/{tp_id}/settle", response_class=HTMLResponse, include_in_schema=False)
    async def settle_one(request: Request, tp_id: int) -> Response:
        form = await read_form(request)
        session = guard(request, "settle", form)
        action = form.get("action", "")
        try:
            settled = settle(console.db, tp_id, action, form.get("note", ""), clock.now())
        except UserError as exc:
            return unknown_page(session, error=exc.message, status=422)
        record(session, request, "touch_point.settle", f"touch_point:{tp_id}", decision=action)
        return unknown_page(session, notice=f"Touch point {tp_id} is now {settled.status} "
                            f"({settled.reason}); the note is in its history.")


def _external_id(conn: Connection, patient_id: int) -> str:
    return str(conn.execute(select(patients.c.external_id)
                            .where(patients.c.id == patient_id)).scalar() or "")


def _age(delta: timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    return f"{hours // 24} d {hours % 24} h" if hours >= 24 else f"{hours} h"
