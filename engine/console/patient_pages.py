"""Patients: search by name, id or phone; one patient's timeline; reveal a number.

==========================  =======================================================
GET  /patients?q=…          search (masked numbers and emails)
GET  /patients/{id}         the timeline (engine.patient_view), masked
POST /patients/{id}/reveal  the same page with full numbers and emails (audited)
==========================  =======================================================
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse

from engine import audit, clock, patient_view
from engine.console.core import Console, Guard, address_of, read_form, render
from engine.console.sessions import Session
from engine.timing import zone


def add_routes(app: FastAPI, console: Console, guard: Guard) -> None:
    practice = console.settings.practice.name

    @app.get("/patients", response_class=HTMLResponse, include_in_schema=False)
    def patients(request: Request, q: str = "") -> Response:
        session = guard(request, "read")
        query = q.strip()[:100]
        with console.db.transaction() as conn:
            found = patient_view.search(conn, query) if query else []
        return render("patients.html", session=session, practice=practice, q=query,
                      found=found, limit=patient_view.SEARCH_LIMIT)

    def _timeline(session: Session, patient_id: str, *, reveal: bool) -> Response:
        with console.db.transaction() as conn:
            view = patient_view.timeline(conn, patient_id, reveal=reveal)
        if view is None:
            return render("not_found.html", 404, session=session, practice=practice,
                          what=f"patient {patient_id}")
        tz = zone(console.settings.practice.timezone or "UTC")
        return render("patient.html", session=session, practice=practice, view=view,
                      revealed=reveal, today=clock.now().astimezone(tz).date(), tz=tz)

    @app.get("/patients/{patient_id}", response_class=HTMLResponse, include_in_schema=False)
    def patient(request: Request, patient_id: str) -> Response:
        return _timeline(guard(request, "read"), patient_id, reveal=False)

    @app.post("/patients/{patient_id}/reveal", response_class=HTMLResponse,
              include_in_schema=False)
    async def reveal(request: Request, patient_id: str) -> Response:
        session = guard(request, "reveal", await read_form(request))
        with console.db.transaction() as conn:
            audit.record(conn, actor=f"staff:{session.user.email}", action="patient.reveal",
                         now=clock.now(), target=f"patient:{patient_id}",
                         address=address_of(request))
        return _timeline(session, patient_id, reveal=True)
