"""The waitlist and freed slots over the API (scope ``write:records``; engine/waitlist.py).

==============================================  =========================================
PUT    /api/v1/waitlist/{patient_id}             put on the list, or change preferences
GET    /api/v1/waitlist/{patient_id}             the entry (404: none)
DELETE /api/v1/waitlist/{patient_id}             withdraw (no more offers)
POST   /api/v1/slots                             open a freed slot (201, Location)
GET    /api/v1/slots/{slot_id}                   the slot, with its claimant
POST   /api/v1/slots/{slot_id}/confirm           claimed → booked
POST   /api/v1/slots/{slot_id}/withdraw          open or claimed → closed
==============================================  =========================================

Each request is one transaction and one audit row (``api.waitlist.put``,
``api.slot.open``, …; a refusal too). The preferences are checked by
:func:`engine.waitlist.parse_preferences`, as ``touchpoint import waitlist`` checks its CSV
cells: a 422 names every bad field. A claimed entry PUT again with the same preferences
stays claimed (:func:`engine.importer.put_waitlist_entry`). A PUT's optional
``updated_at`` (stored as ``source_updated_at``) makes an older update a 409 no-op, as for
the records.

A slot's ``external_id`` makes opening it idempotent: the same ``external_id`` with the
same time, length, therapist, location and visit type answers **200** with the slot
already open (nothing new); with different ones, **409** ``slot-exists``. A refused
transition (confirming an open slot, withdrawing a booked one) is **409**
``slot-transition-refused`` with ``slot_status``. A committed change wakes the daemons
(:func:`engine.wake.notify`), so a new slot's first wave goes at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from engine import audit, clock, importer, waitlist, wake
from engine.api import keys
from engine.api.auth import Caller, requires
from engine.api.problems import Problem, invalid
from engine.api.records import audit_refusal
from engine.store.schema import patients, slots, waitlist_entries
from engine.timing import zone

router = APIRouter(tags=["waitlist"])
WRITE = Depends(requires("write:records"))
PatientId = Annotated[str, Path(min_length=1, max_length=200)]
Text = Annotated[str | None, Field(default=None)]


class EntryIn(BaseModel):
    """Which freed slots suit the patient; every field optional (empty: any)."""

    model_config = ConfigDict(extra="forbid")

    patient_id: Text = Field(None, description="Optional; must match the path if given.")
    days: Annotated[list[str] | str | None, Field(
        default=None, description='Local weekdays: ["mon", "wed"] or "mon-fri".')]
    time_from: Text = Field(None, description="The visit starts at or after (08:00).")
    time_until: Text = Field(None, description="The visit starts before (12:00).")
    therapist: Text
    location: Text
    visit_type: Text
    earliest: Text = Field(None, description="First local day (YYYY-MM-DD).")
    latest: Text = Field(None, description="Last local day (YYYY-MM-DD).")
    updated_at: AwareDatetime | None = Field(
        None, description="When the EMR changed this entry (with a UTC offset). An update "
        "older than the one stored is refused with 409.")


class SlotIn(BaseModel):
    """A freed visit time to offer to the waitlist."""

    model_config = ConfigDict(extra="forbid")

    start_at: AwareDatetime = Field(description="ISO 8601 with its offset, e.g. "
                                    "2026-11-03T09:00:00-06:00; must be ahead.")
    duration_minutes: int = Field(ge=1, le=waitlist.LONGEST_VISIT)
    therapist: str = Field("", max_length=waitlist.TEXT_LIMITS["therapist"])
    location: str = Field("", max_length=waitlist.TEXT_LIMITS["location"])
    visit_type: str = Field("", max_length=waitlist.TEXT_LIMITS["visit_type"])
    external_id: str | None = Field(None, min_length=1, max_length=64, description=(
        "The EMR's id of the slot: opening it again is idempotent."))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def entry_as_json(row: Any, external_id: str) -> dict[str, Any]:
    """A ``waitlist_entries`` row as the API shows it."""
    return {"patient_id": external_id, "status": row.status,
            **waitlist.Preferences.from_row(row).as_json(),
            "since": row.created_at.isoformat(), "updated_at": _iso(row.source_updated_at),
            "stored_at": row.updated_at.isoformat()}


def slot_view(conn: Connection, row: Any, tz: Any) -> dict[str, Any]:
    """A slot as the API shows it, with its claimant's patient_id (external id)."""
    claimant = None
    if row.claimed_by_patient_id is not None:
        claimant = conn.execute(select(patients.c.external_id).where(
            patients.c.id == row.claimed_by_patient_id)).scalar()
    return {**waitlist.slot_as_json(row, tz), "claimed_by_patient_id": claimant}


def _patient(conn: Connection, patient_id: str) -> Any:
    row = conn.execute(select(patients.c.id, patients.c.removed_at, patients.c.erased_at)
                       .where(patients.c.external_id == patient_id)).first()
    if row is None or row.removed_at is not None or row.erased_at is not None:
        raise Problem(404, "not-found", f"no patient {patient_id} — PUT "
                      f"/api/v1/patients/{patient_id} first")
    return row


def _entry(conn: Connection, patient_row_id: int) -> Any:
    return conn.execute(select(waitlist_entries)
                        .where(waitlist_entries.c.patient_id == patient_row_id)).first()


def _done(conn: Connection, caller: Caller, action: str, target: str, now: datetime,
          **detail: Any) -> None:
    audit.record(conn, actor=caller.actor, action=action, now=now, target=target,
                 address=caller.address, detail=detail)
    keys.mark_used(conn, caller.key_id, now)


# --------------------------------------------------------------------------- entries


@router.put("/waitlist/{patient_id}", status_code=200,
            responses={201: {"description": "Put on the waitlist"}})
def put_entry(request: Request, response: Response, body: EntryIn, patient_id: PatientId,
              caller: Caller = WRITE) -> dict[str, Any]:
    """Put a patient on the waitlist, or change their preferences (a withdrawn patient is
    waiting again). The same PUT twice changes nothing. Scope write:records."""
    services = request.app.state.services
    target, action = f"patient:{patient_id}", "api.waitlist.put"
    now = clock.now()
    try:
        if body.patient_id not in (None, patient_id):
            raise invalid([{"field": "patient_id", "detail": "patient_id in the body differs "
                            "from the one in the path — send one entry per request"}])
        try:
            preferences = waitlist.parse_preferences(body.model_dump(
                exclude={"patient_id", "updated_at"}))
        except waitlist.PreferenceError as exc:
            raise invalid([{"field": name, "detail": f"{name} {detail}"}
                           for name, detail in exc.errors.items()]) from None
        with services.db.transaction() as conn:
            person = _patient(conn, patient_id)
            current = _entry(conn, person.id)
            stored_at = current.source_updated_at if current is not None else None
            if body.updated_at is not None and stored_at is not None \
                    and body.updated_at < stored_at:
                raise Problem(409, "stale-update", f"a newer waitlist entry of {target} is "
                              f"stored (updated_at {_iso(stored_at)}); this update is older "
                              "and was not applied", title="A newer version is stored",
                              current=entry_as_json(current, patient_id))
            result = importer.put_waitlist_entry(conn, person.id, preferences,
                                                 source=f"api:{caller.name}", now=now,
                                                 source_updated_at=body.updated_at)
            if body.updated_at is not None and current is not None \
                    and body.updated_at != stored_at:
                conn.execute(waitlist_entries.update()
                             .where(waitlist_entries.c.id == current.id)
                             .values(source_updated_at=body.updated_at))
            shown = {**entry_as_json(_entry(conn, person.id), patient_id), "result": result}
            _done(conn, caller, action, target, now, result=result)
    except Problem as problem:
        audit_refusal(services, caller, action, target, problem)
        raise
    if result != "unchanged":
        wake.notify(services.db)
    if result == "created":
        response.status_code = 201
    return shown


@router.get("/waitlist/{patient_id}")
def get_entry(request: Request, patient_id: PatientId,
              caller: Caller = WRITE) -> dict[str, Any]:
    """A patient's waitlist entry (waiting, claimed or withdrawn); 404 if they have none.
    Scope write:records."""
    services = request.app.state.services
    target, action = f"patient:{patient_id}", "api.waitlist.get"
    try:
        with services.db.transaction() as conn:
            current = _entry(conn, _patient(conn, patient_id).id)
            if current is None:
                raise Problem(404, "not-found", f"patient {patient_id} is not on the waitlist")
            _done(conn, caller, action, target, clock.now(), status=current.status)
            return entry_as_json(current, patient_id)
    except Problem as problem:
        audit_refusal(services, caller, action, target, problem)
        raise


@router.delete("/waitlist/{patient_id}")
def delete_entry(request: Request, patient_id: PatientId,
                 caller: Caller = WRITE) -> dict[str, Any]:
    """Withdraw a patient from the waitlist (no more offers; a PUT puts them back).
    ``result``: withdrawn, or unchanged (not waiting). Scope write:records."""
    services = request.app.state.services
    target, action = f"patient:{patient_id}", "api.waitlist.delete"
    now = clock.now()
    try:
        with services.db.transaction() as conn:
            person = _patient(conn, patient_id)
            if _entry(conn, person.id) is None:
                raise Problem(404, "not-found", f"patient {patient_id} is not on the waitlist")
            result: Literal["withdrawn", "unchanged"] = (
                "withdrawn" if waitlist.withdraw_entry(conn, person.id, now=now)
                else "unchanged")
            shown = {**entry_as_json(_entry(conn, person.id), patient_id), "result": result}
            _done(conn, caller, action, target, now, result=result)
    except Problem as problem:
        audit_refusal(services, caller, action, target, problem)
        raise
    return shown


# --------------------------------------------------------------------------- slots


def _slot(conn: Connection, slot_id: int) -> Any:
    row = conn.execute(select(slots).where(slots.c.id == slot_id)).first()
    if row is None:
        raise Problem(404, "not-found", f"no slot {slot_id}")
    return row


_SAME = ("start_at", "duration_minutes", "therapist", "location", "visit_type")


@router.post("/slots", status_code=201,
             responses={200: {"description": "Opened already (same external_id and fields)"},
                        409: {"description": "slot-exists: the external_id names another "
                              "slot"}})
def open_slot(request: Request, response: Response, body: SlotIn,
              caller: Caller = WRITE) -> dict[str, Any]:
    """Open a freed slot to the waitlist: offered in waves from now. 201 with Location;
    the same external_id again: 200 (same slot) or 409 (different). Scope write:records."""
    services = request.app.state.services
    target = f"slot:{body.external_id}" if body.external_id else "slot"
    action = "api.slot.open"
    tz = zone(services.settings.require("practice.timezone"))
    try:
        try:
            shown, created = _open(services, body, caller, tz, target, action)
        except IntegrityError:  # the same external_id opened at the same time
            shown, created = _open(services, body, caller, tz, target, action)
    except Problem as problem:
        audit_refusal(services, caller, action, target, problem)
        raise
    if created:
        response.headers["Location"] = f"/api/v1/slots/{shown['id']}"
        wake.notify(services.db)
    else:
        response.status_code = 200
    return shown


def _open(services: Any, body: SlotIn, caller: Caller, tz: Any, target: str,
          action: str) -> tuple[dict[str, Any], bool]:
    now = clock.now()
    with services.db.transaction() as conn:
        if body.external_id is not None:
            current = conn.execute(select(slots).where(
                slots.c.external_id == body.external_id)).first()
            if current is not None:
                wanted = body.model_dump()
                if all(getattr(current, name) == wanted[name] for name in _SAME):
                    _done(conn, caller, action, target, now, result="unchanged",
                          slot=current.id)
                    return slot_view(conn, current, tz), False
                raise Problem(409, "slot-exists", f"slot {body.external_id} is open already "
                              "with another time or place — withdraw it and open a new one",
                              title="Another slot has this external_id",
                              current=slot_view(conn, current, tz))
        if body.start_at <= now:
            raise invalid([{"field": "start_at", "detail": "start_at is in the past — only "
                            "a slot ahead can be offered"}])
        slot_id = waitlist.open_slot(conn, waitlist.NewSlot(
            body.start_at, body.duration_minutes, therapist=body.therapist.strip(),
            location=body.location.strip(), visit_type=body.visit_type.strip(),
            external_id=body.external_id), source="api", now=now)
        assert slot_id is not None
        _done(conn, caller, action, f"slot:{slot_id}", now, result="created",
              external_id=body.external_id)
        return slot_view(conn, _slot(conn, slot_id), tz), True


@router.get("/slots/{slot_id}")
def get_slot(request: Request, slot_id: int, caller: Caller = WRITE) -> dict[str, Any]:
    """A slot: its status, waves so far and, once claimed, the claimant's patient_id.
    Scope write:records."""
    services = request.app.state.services
    tz = zone(services.settings.require("practice.timezone"))
    target, action = f"slot:{slot_id}", "api.slot.get"
    try:
        with services.db.transaction() as conn:
            shown = slot_view(conn, _slot(conn, slot_id), tz)
            _done(conn, caller, action, target, clock.now(), status=shown["status"])
            return shown
    except Problem as problem:
        audit_refusal(services, caller, action, target, problem)
        raise


def _transition(request: Request, slot_id: int, caller: Caller,
                verb: Literal["confirm", "withdraw"]) -> dict[str, Any]:
    services = request.app.state.services
    tz = zone(services.settings.require("practice.timezone"))
    target, action = f"slot:{slot_id}", f"api.slot.{verb}"
    now = clock.now()
    try:
        with services.db.transaction() as conn:
            before = _slot(conn, slot_id)
            change = (waitlist.confirm_slot(conn, slot_id, now=now) if verb == "confirm"
                      else waitlist.close_slot(conn, slot_id, now=now))
            if change == "refused":
                allowed = "a claimed" if verb == "confirm" else "an open or claimed"
                raise Problem(409, "slot-transition-refused",
                              f"slot {slot_id} is {before.status}: only {allowed} slot "
                              f"can be {'confirmed' if verb == 'confirm' else 'withdrawn'}",
                              title="The slot cannot make this change",
                              slot_status=before.status)
            shown = {**slot_view(conn, _slot(conn, slot_id), tz), "result": change}
            _done(conn, caller, action, target, now, result=change)
    except Problem as problem:
        audit_refusal(services, caller, action, target, problem)
        raise
    if change == "changed":
        wake.notify(services.db)
    return shown


@router.post("/slots/{slot_id}/confirm")
def confirm_slot(request: Request, slot_id: int, caller: Caller = WRITE) -> dict[str, Any]:
    """A claimed slot is booked (the EMR booked the claimant). Again: unchanged; any other
    status: 409 slot-transition-refused with slot_status. Scope write:records."""
    return _transition(request, slot_id, caller, "confirm")


@router.post("/slots/{slot_id}/withdraw")
def withdraw_slot(request: Request, slot_id: int, caller: Caller = WRITE) -> dict[str, Any]:
    """Stop offering an open or claimed slot (closed; standing offers withdrawn). Again:
    unchanged; a booked or expired slot: 409 slot-transition-refused with slot_status.
    Scope write:records."""
    return _transition(request, slot_id, caller, "withdraw")
