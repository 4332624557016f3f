"""The waitlist page: who waits for an earlier visit, and the freed slots offered to them.

================================================  =====================================
GET  /waitlist                                    waiting patients, open and claimed slots
POST /waitlist/entries                            add or change a patient's entry
POST /waitlist/entries/{patient_id}/withdraw      take a patient off the waitlist
POST /waitlist/slots                              open a freed slot (offered in waves)
POST /waitlist/slots/{slot_id}/confirm            a claimed slot is booked
POST /waitlist/slots/{slot_id}/withdraw           stop offering a slot (closed)
================================================  =====================================

The same records and checks as ``touchpoint import waitlist``, the API and ``touchpoint
waitlist`` (engine/waitlist.py: :func:`~engine.waitlist.parse_preferences`); every change
CSRF-checked, front desk and above (``waitlist.change``), audited. A viewer sees the page
without its buttons and forms.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from engine import clock, importer, waitlist, waitlist_board, wake
from engine.console.core import Console, Guard, read_form, record_action, render
from engine.console.sessions import Session
from engine.store.schema import patients, slots
from engine.timing import zone

CHANGE = "waitlist.change"


def add_routes(app: FastAPI, console: Console, guard: Guard) -> None:
    practice = console.settings.practice.name
    tz_name = console.settings.practice.timezone or "UTC"
    tz = zone(tz_name)

    def page(session: Session, *, notice: str = "", error: str = "", status: int = 200,
             entry_form: dict[str, str] | None = None, entry_errors: dict[str, str] | None = None,
             slot_form: dict[str, str] | None = None,
             slot_errors: dict[str, str] | None = None) -> Response:
        with console.db.transaction() as conn:
            entries = waitlist_board.waiting(conn)
            found = waitlist_board.slot_list(conn, tz)
        return render("waitlist.html", status, session=session, practice=practice,
                      entries=entries, slots=found, tz=tz, notice=notice, error=error,
                      days=waitlist.DAYS, entry_form=entry_form or {},
                      entry_errors=entry_errors or {}, slot_form=slot_form or {},
                      slot_errors=slot_errors or {}, may_change=session.user.may(CHANGE))

    def record(session: Session, request: Request, action: str, target: str,
               **detail: object) -> None:
        record_action(console, session, request, action, target, **detail)

    @app.get("/waitlist", response_class=HTMLResponse, include_in_schema=False)
    def waitlist_page(request: Request) -> Response:
        return page(guard(request, "read"))

    @app.post("/waitlist/entries", response_class=HTMLResponse, include_in_schema=False)
    async def put_entry(request: Request) -> Response:
        form = await read_form(request)
        session = guard(request, CHANGE, form)
        patient_id = form.get("patient_id", "").strip()
        raw: dict[str, Any] = {name: form.get(name, "") for name in waitlist.FIELDS}
        picked = [day for day in waitlist.DAYS if form.get(f"day_{day}")]
        raw["days"] = ",".join(picked)
        errors: dict[str, str] = {}
        preferences = None
        try:
            preferences = waitlist.parse_preferences(raw)
        except waitlist.PreferenceError as exc:
            errors.update({name: f"{name} {detail}" for name, detail in exc.errors.items()})
        now = clock.now()
        with console.db.transaction() as conn:
            person = conn.execute(select(patients.c.id).where(
                patients.c.external_id == patient_id, patients.c.removed_at.is_(None),
                patients.c.erased_at.is_(None))).first() if patient_id else None
            if person is None:
                errors["patient_id"] = ("patient_id is empty" if not patient_id else
                                        f"no patient {patient_id} — check the id, or import "
                                        "the patient first")
            if errors or preferences is None or person is None:
                result = None
            else:
                result = waitlist.put_entry(conn, person.id, preferences,
                                            source=f"console:{session.user.email}", now=now)
        if result is None:
            return page(session, status=422, error="Nothing was changed — correct the "
                        "fields marked below.", entry_form=form, entry_errors=errors)
        record(session, request, "waitlist.put", f"patient:{patient_id}", result=result)
        if result != "unchanged":
            wake.notify(console.db)
        said = {"created": "is on the waitlist", "updated": "has new preferences",
                "unchanged": "was on the waitlist with these preferences already"}[result]
        return page(session, notice=f"{patient_id} {said}.")

    @app.post("/waitlist/entries/{patient_id}/withdraw", response_class=HTMLResponse,
              include_in_schema=False)
    async def withdraw_entry(request: Request, patient_id: str) -> Response:
        form = await read_form(request)
        session = guard(request, CHANGE, form)
        with console.db.transaction() as conn:
            person = conn.execute(select(patients.c.id).where(
                patients.c.external_id == patient_id)).scalar()
            withdrawn = person is not None and waitlist.withdraw_entry(
                conn, person, now=clock.now())
        if not withdrawn:
            return page(session, status=409, error=f"{patient_id} is not waiting; nothing "
                        "was changed.")
        record(session, request, "waitlist.withdraw", f"patient:{patient_id}")
        return page(session, notice=f"{patient_id} is off the waitlist.")

    @app.post("/waitlist/slots", response_class=HTMLResponse, include_in_schema=False)
    async def open_slot(request: Request) -> Response:
        form = await read_form(request)
        session = guard(request, CHANGE, form)
        now = clock.now()
        errors: dict[str, str] = {}
        start = None
        try:
            start = importer.parse_start(form.get("start", "").strip(), tz_name)
        except ValueError as exc:
            errors["start"] = str(exc)
        if start is not None and start <= now:
            errors["start"] = "start is in the past — only a slot ahead can be offered"
        minutes = form.get("duration_minutes", "").strip()
        if not minutes.isdigit() or not 1 <= int(minutes) <= waitlist.LONGEST_VISIT:
            errors["duration_minutes"] = ("duration_minutes must be a whole number of "
                                          f"minutes from 1 to {waitlist.LONGEST_VISIT}")
        texts = {name: form.get(name, "").strip() for name in waitlist.TEXT_LIMITS}
        for name, most in waitlist.TEXT_LIMITS.items():
            if len(texts[name]) > most:
                errors[name] = f"{name} is longer than {most} characters"
        if errors or start is None:
            return page(session, status=422, error="No slot was opened — correct the fields "
                        "marked below.", slot_form=form, slot_errors=errors)
        with console.db.transaction() as conn:
            slot_id = waitlist.open_slot(conn, waitlist.NewSlot(
                start, int(minutes), therapist=texts["therapist"], location=texts["location"],
                visit_type=texts["visit_type"]), source="console", now=now)
        record(session, request, "slot.open", f"slot:{slot_id}")
        wake.notify(console.db)
        return page(session, notice=f"Slot {slot_id} is open: the waitlist is offered it "
                    "in waves.")

    @app.post("/waitlist/slots/{slot_id}/{verb}", response_class=HTMLResponse,
              include_in_schema=False)
    async def change_slot(request: Request, slot_id: int, verb: str) -> Response:
        form = await read_form(request)
        session = guard(request, CHANGE, form)
        if verb not in ("confirm", "withdraw"):
            return render("not_found.html", 404, session=session, practice=practice,
                          what=f"action {verb!r} for a slot")
        now = clock.now()
        with console.db.transaction() as conn:
            status = conn.execute(select(slots.c.status).where(slots.c.id == slot_id)).scalar()
            if status is None:
                return render("not_found.html", 404, session=session, practice=practice,
                              what=f"slot {slot_id}")
            change = (waitlist.confirm_slot(conn, slot_id, now=now) if verb == "confirm"
                      else waitlist.close_slot(conn, slot_id, now=now))
        if change == "refused":
            return page(session, status=409, error=f"Slot {slot_id} is {status}: it cannot be "
                        f"{'confirmed' if verb == 'confirm' else 'withdrawn'}.")
        record(session, request, f"slot.{verb}", f"slot:{slot_id}", result=change)
        if change == "changed":
            wake.notify(console.db)
        done = "booked — book it in the EMR too" if verb == "confirm" else \
            "withdrawn: no more offers"
        return page(session, notice=f"Slot {slot_id} is {done}.")
