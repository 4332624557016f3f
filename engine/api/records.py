"""PUT and DELETE of patients, appointments, contacts and referrers by their EMR ids.

A PUT body holds the CSV columns of engine/importer.py (``PATIENT_COLUMNS``, …; yes/no
columns may be JSON booleans) and is applied by the importer's own ``sync_*`` with that
one row: the same validation, the same events (``appointment.cancelled``, …), and a PUT
identical to what is stored changes nothing. One request is one transaction: a bad field
refuses it whole (422 naming every bad field), and nothing is half-applied.

``updated_at`` (optional, with a UTC offset) is the EMR's own time of the change. It is
kept as ``source_updated_at``; a PUT older than the one stored is refused with 409 and the
stored version, so an update that arrives late never undoes a newer one. An equal time
takes the ordinary path (identical → unchanged); without it, the PUT applies as an import.

After a change commits, :func:`engine.wake.notify` wakes the daemons, which plan its
events at once rather than at their next tick.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Table, select, update
from sqlalchemy.exc import IntegrityError

from engine import audit, clock, importer, removal, wake
from engine.api import keys
from engine.api.auth import Caller, requires
from engine.api.problems import Problem, invalid
from engine.importer import ImportSummary, RowProblem
from engine.privacy import mask_address
from engine.settings import Settings
from engine.store.records import append_events
from engine.store.schema import appointments, contacts, patients, referrers

Text = Annotated[str | None, Field(default=None)]
Flag = Annotated[bool | str | None, Field(default=None, description="yes/no, or a boolean")]


class RecordIn(BaseModel):
    """What every PUT body may carry besides its CSV columns."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    updated_at: AwareDatetime | None = Field(
        None, description="When the EMR changed this record (with a UTC offset). An "
        "update older than the one stored is refused with 409; equal is idempotent.")

    def cells(self) -> dict[str, str]:
        """The body as a CSV row: every column a string, as a cell would hold it."""
        row: dict[str, str] = {}
        for name, value in self:
            if name in ("updated_at", "custom"):
                continue
            if isinstance(value, bool):
                row[name] = "yes" if value else "no"
            else:
                row[name] = "" if value is None else str(value)
        return row


class PatientIn(RecordIn):
    patient_id: Text = Field(None, description="Optional; must match the path if given.")
    first_name: Text
    last_name: Text
    phone: Text
    email: Text
    language: Text
    timezone: Text
    sms_consent: Flag
    email_consent: Flag
    marketing_consent: Flag
    date_of_birth: Text
    referral_source: Text = Field(None, description="A referrer_id already stored.")
    discharged_on: Text
    plan_visits: Annotated[int | str | None, Field(
        default=None, description="The plan of care: visits prescribed (1-200).")]
    plan_visits_per_week: Annotated[int | str | None, Field(
        default=None, description="Visits a week the plan prescribes (1-7).")]
    plan_start: Text = Field(None, description="The plan's first day (YYYY-MM-DD).")
    plan_end: Text = Field(None, description="The plan's last day (optional).")
    intake_completed: Flag
    booking_url: Text = Field(None, description="The EMR's booking page for this patient.")
    custom: dict[str, str] = Field(default_factory=dict,
                                   description="Custom fields (extra CSV columns).")

    def cells(self) -> dict[str, str]:
        """As a CSV row; the plan of care, intake and booking fields left out of the body
        keep what is stored (null or ``""`` clears them; the plan's four fields go
        together: one given, the others left out are cleared)."""
        row = super().cells()
        given = self.model_fields_set
        plan = set(importer.PLAN_COLUMNS)
        for name in importer.PLAN_FIELDS:
            if name not in given and not (name in plan and plan & given):
                del row[name]
        return row


class AppointmentIn(RecordIn):
    appointment_id: Text = Field(None, description="Optional; must match the path if given.")
    patient_id: Text = Field(None, description="The patient's id (stored already).")
    start: Text = Field(None, description="ISO 8601, e.g. 2026-11-24T15:00-06:00; without "
                        "an offset, the practice's local time.")
    duration_minutes: Annotated[int | str | None, Field(default=None)]
    status: Text = Field(None, description="booked, cancelled, completed or no_show.")
    visit_type: Text
    therapist: Text
    location: Text


class ContactIn(RecordIn):
    contact_id: Text = Field(None, description="Optional; must match the path if given.")
    patient_id: Text = Field(None, description="Whose contact this is (stored already).")
    relationship: Text
    first_name: Text
    phone: Text
    email: Text
    language: Text
    timezone: Text
    sms_consent: Flag
    email_consent: Flag
    marketing_consent: Flag
    receives: Text


class ReferrerIn(RecordIn):
    referrer_id: Text = Field(None, description="Optional; must match the path if given.")
    name: Text
    contact_name: Text
    email: Text
    fax: Text


MODELS: dict[str, type[RecordIn]] = {"patient": PatientIn, "appointment": AppointmentIn,
                                     "contact": ContactIn, "referrer": ReferrerIn}


class Applied(BaseModel):
    """What a PUT did."""

    kind: str
    id: str
    result: Literal["created", "updated", "unchanged", "reactivated"] = Field(
        description="reactivated: the record had been DELETEd and is back.")
    events: list[str] = Field(description="Events recorded (each starts or ends journeys).")
    version: int | None = Field(None, description="Appointments: bumped by a booking or move.")
    updated_at: datetime | None = Field(None, description="The EMR's time stored.")
    stored_at: datetime = Field(description="When Touchpoint last changed the record.")


class Removed(BaseModel):
    """What a DELETE did."""

    kind: str
    id: str
    result: Literal["removed", "unchanged"] = Field(
        description="unchanged: it had been removed already.")
    touch_points_cancelled: int = Field(description="Pending touch points cancelled "
                                        "(reason patient_removed).")
    updated_at: datetime | None = Field(None, description="The EMR's time stored.")


Sync = Callable[[Connection, importer.Rows, str, Settings, datetime], ImportSummary]


@dataclass(frozen=True)
class Kind:
    """One kind of record the API writes, and how the importer syncs it."""

    name: str
    table: Table
    id_column: str
    sync: Sync
    # Values the importer accepts, put in place of a bad field to find the next bad one
    # (any other column: empty); ``fixed`` are fields no stand-in can make good.
    stand_ins: Mapping[str, str] = field(default_factory=dict)
    fixed: frozenset[str] = frozenset()


KINDS = {
    "patient": Kind(
        "patient", patients, "patient_id",
        lambda conn, rows, source, settings, now: importer.sync_patients(
            conn, rows, source, region=settings.phone_region, now=now),
        {"first_name": "x", "plan_visits": "1", "plan_visits_per_week": "1"},
        frozenset({"patient_id"})),
    "appointment": Kind(
        "appointment", appointments, "appointment_id",
        lambda conn, rows, source, settings, now: importer.sync_appointments(
            conn, rows, source, practice_tz=settings.require("practice.timezone"), now=now),
        {"start": "2000-01-01T00:00:00+00:00", "duration_minutes": "60", "status": "booked"},
        frozenset({"appointment_id", "patient_id"})),
    "contact": Kind(
        "contact", contacts, "contact_id",
        lambda conn, rows, source, settings, now: importer.sync_contacts(
            conn, rows, source, region=settings.phone_region, now=now),
        {"relationship": "parent", "receives": "transactional"},
        frozenset({"contact_id", "patient_id"})),
    "referrer": Kind(
        "referrer", referrers, "referrer_id",
        lambda conn, rows, source, settings, now: importer.sync_referrers(
            conn, rows, source, region=settings.phone_region, now=now),
        {"name": "x"}, frozenset({"referrer_id"})),
}


def _row(kind: Kind, external_id: str, body: RecordIn) -> dict[str, str]:
    external_id = external_id.strip()
    if not external_id:
        raise invalid([{"field": kind.id_column, "detail": f"{kind.id_column} is empty"}])
    row = body.cells()
    given = row.pop(kind.id_column, "")
    if given and given != external_id:
        raise invalid([{"field": kind.id_column, "detail": f"{kind.id_column} in the body "
                        "differs from the one in the path — send one record per request"}])
    custom = {k.strip().lower(): v.strip() for k, v in getattr(body, "custom", {}).items()}
    clash = sorted(k for k in custom if k in row or k == kind.id_column or not k)
    if clash:
        raise invalid([{"field": f"custom.{k}", "detail": "a custom field cannot have the "
                        "name of a column (or none)"} for k in clash])
    return {**custom, **row, kind.id_column: external_id}


def _field_of(problem: RowProblem, row: Mapping[str, str], kind: Kind) -> str:
    """The column a row problem is about (the importer's messages start with it)."""
    if problem.message.startswith("this appointment belongs to another patient"):
        return "patient_id"
    for name in sorted(row, key=len, reverse=True):
        if problem.message.startswith(f"{name} "):
            return name if name in kind_columns(kind) else f"custom.{name}"
    return "body"


def kind_columns(kind: Kind) -> set[str]:
    return set(MODELS[kind.name].model_fields) - {"updated_at", "custom"}


def _every_problem(conn: Connection, kind: Kind, row: Mapping[str, str], first: RowProblem,
                   settings: Settings, now: datetime) -> list[dict[str, str]]:
    """Every bad field of ``row``, not only the first the importer stops at: the bad field
    is replaced by a value the importer takes and the row synced again, until it passes
    (in a savepoint rolled back: the importer alone decides what is valid)."""
    errors: list[dict[str, str]] = []
    probe = dict(row)
    problem: RowProblem | None = first
    savepoint = conn.begin_nested()
    try:
        while problem is not None and len(errors) <= len(row):
            name = _field_of(problem, row, kind)
            if any(e["field"] == name for e in errors):
                break
            errors.append({"field": name, "detail": problem.message})
            column = name.removeprefix("custom.")
            if name == "body" or column in kind.fixed:
                break
            probe[column] = kind.stand_ins.get(column, "")
            problems = kind.sync(conn, [(1, probe)], "api-check", settings, now).problems
            problem = problems[0] if problems else None
    finally:
        savepoint.rollback()
    return errors


def _stored(conn: Connection, kind: Kind, external_id: str, lock: bool = False) -> Any:
    query = select(kind.table).where(kind.table.c.external_id == external_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).first()


def _iso(value: date | datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _external(conn: Connection, table: Table, id_: int | None) -> str | None:
    if id_ is None:
        return None
    return conn.execute(select(table.c.external_id).where(table.c.id == id_)).scalar()


def record_view(conn: Connection, kind: Kind, row: Any) -> dict[str, Any]:
    """A stored record in the shape of its PUT body, with patient data masked (phone,
    email, names, birth date, custom values): errors never show it whole."""
    view: dict[str, Any] = {kind.id_column: row.external_id}
    for name in sorted(kind_columns(kind) - {kind.id_column}):
        if name in ("phone", "email", "fax"):
            view[name] = mask_address(getattr(row, name)) or None
        elif name in _PERSONAL:  # (a patient's or a contact's name, birth date)
            value = getattr(row, name)
            view[name] = f"{str(value)[:1]}•••" if value else value
        elif name == "start":
            view[name] = _iso(row.start_at)
        elif name == "patient_id":
            view[name] = _external(conn, patients, row.patient_id)
        elif name == "referral_source":
            view[name] = _external(conn, referrers, row.referrer_id)
        elif name in row._fields:
            value = getattr(row, name)
            view[name] = _iso(value) if isinstance(value, date) else value
    if kind.name == "patient":
        view["custom"] = dict.fromkeys(row.custom or {}, "•••")
    return view


_PERSONAL = {"first_name", "last_name", "date_of_birth"}


def _current(row: Any, kind: Kind) -> dict[str, Any]:
    return {"updated_at": _iso(row.source_updated_at), "stored_at": _iso(row.updated_at),
            "version": row.version if kind.name == "appointment" else None}


def put(request: Request, kind: Kind, external_id: str, body: RecordIn, caller: Caller,
        response: Response) -> Applied:
    """Apply one PUT (see the module's docstring); retried once if a concurrent request
    created the same record first."""
    services = request.app.state.services
    target = f"{kind.name}:{external_id.strip()}"
    try:
        row = _row(kind, external_id, body)
        try:
            applied = _apply(services, kind, row, body, caller, target)
        except IntegrityError:
            applied = _apply(services, kind, row, body, caller, target)
    except Problem as problem:
        audit_refusal(services, caller, f"api.{kind.name}.put", target, problem)
        raise
    if applied.result != "unchanged":
        wake.notify(services.db)
    if applied.result == "created":
        response.status_code = 201
    return applied


def _apply(services: Any, kind: Kind, row: dict[str, str], body: RecordIn, caller: Caller,
           target: str) -> Applied:
    now = clock.now()
    settings: Settings = services.settings
    external_id = row[kind.id_column]
    with services.db.transaction() as conn:
        current = _stored(conn, kind, external_id, lock=True)
        stored_at = current.source_updated_at if current is not None else None
        if body.updated_at is not None and stored_at is not None and body.updated_at < stored_at:
            raise Problem(
                409, "stale-update", f"a newer version of {target} is stored (updated_at "
                f"{_iso(stored_at)}); this update is older and was not applied",
                title="A newer version is stored",
                current={**_current(current, kind), "record": record_view(conn, kind, current)})
        back = _reactivate(conn, kind, current, now)
        summary = kind.sync(conn, [(1, row)], f"api:{caller.name}", settings, now)
        if summary.problems:
            raise invalid(_every_problem(conn, kind, row, summary.problems[0], settings, now))
        if body.updated_at is not None and body.updated_at != stored_at:
            conn.execute(update(kind.table).where(kind.table.c.external_id == external_id)
                         .values(source_updated_at=body.updated_at))
        stored = _stored(conn, kind, external_id)
        result: Literal["created", "updated", "unchanged", "reactivated"] = (
            "created" if summary.created else "reactivated" if back is not None
            else "updated" if summary.updated else "unchanged")
        events = sorted([*summary.events.elements(), *(back or [])])
        audit.record(conn, actor=caller.actor, action=f"api.{kind.name}.put", now=now,
                     target=target, address=caller.address,
                     detail={"result": result, "events": events})
        keys.mark_used(conn, caller.key_id, now)
    return Applied(kind=kind.name, id=external_id, result=result, events=events,
                   version=stored.version if kind.name == "appointment" else None,
                   updated_at=stored.source_updated_at, stored_at=stored.updated_at)


def _reactivate(conn: Connection, kind: Kind, current: Any, now: datetime) -> list[str] | None:
    """Bring back a record a DELETE removed (engine.removal); the kinds of the events
    recorded, or None if it was not removed."""
    if current is None or getattr(current, "removed_at", None) is None:
        return None
    if kind.name == "patient":
        events = removal.reactivate_patient(conn, current.id, now=now)
    elif kind.name == "appointment":
        event = removal.reactivate_appointment(conn, current.id, now=now)
        events = [event] if event is not None else []
    elif kind.name == "contact":
        removal.reactivate_contact(conn, current.id, now=now)
        events = []
    else:
        removal.reactivate_referrer(conn, current.id, now=now)
        events = []
    append_events(conn, events)
    return [e["kind"] for e in events]


#: How a DELETE removes each kind.
REMOVE = {"patient": removal.remove_patient, "appointment": removal.remove_appointment,
          "contact": removal.remove_contact, "referrer": removal.remove_referrer}


def delete(request: Request, kind: Kind, external_id: str, updated_at: datetime | None,
           caller: Caller) -> Removed:
    """Remove a record (engine.removal): it stays for the history, its pending touch
    points are cancelled ``patient_removed``, and a later PUT brings it back."""
    services = request.app.state.services
    target = f"{kind.name}:{external_id}"
    action = f"api.{kind.name}.delete"
    now = clock.now()
    try:
        with services.db.transaction() as conn:
            current = _stored(conn, kind, external_id, lock=True)
            if current is None:
                raise Problem(404, "not-found", f"no {kind.name} {external_id}")
            stored_at = current.source_updated_at
            if updated_at is not None and stored_at is not None and updated_at < stored_at:
                raise Problem(
                    409, "stale-update", f"a newer version of {target} is stored (updated_at "
                    f"{_iso(stored_at)}); this delete is older and was not applied",
                    title="A newer version is stored",
                    current={**_current(current, kind),
                             "record": record_view(conn, kind, current)})
            removed_before = current.removed_at is not None
            cancelled = REMOVE[kind.name](conn, current.id, now=now,
                                          source=f"api:{caller.name}")
            if updated_at is not None and updated_at != stored_at:
                conn.execute(update(kind.table).where(kind.table.c.id == current.id)
                             .values(source_updated_at=updated_at))
            result: Literal["removed", "unchanged"] = (
                "unchanged" if removed_before else "removed")
            audit.record(conn, actor=caller.actor, action=action, now=now, target=target,
                         address=caller.address,
                         detail={"result": result, "touch_points_cancelled": cancelled})
            keys.mark_used(conn, caller.key_id, now)
    except Problem as problem:
        audit_refusal(services, caller, action, target, problem)
        raise
    if result == "removed":
        wake.notify(services.db)
    return Removed(kind=kind.name, id=external_id, result=result,
                   touch_points_cancelled=cancelled,
                   updated_at=updated_at if updated_at is not None and (
                       stored_at is None or updated_at > stored_at) else stored_at)


def audit_refusal(services: Any, caller: Caller, action: str, target: str,
                   problem: Problem) -> None:
    """A refused request changed nothing, but the key's use is still on record."""
    detail: dict[str, Any] = {"status": problem.status, "refused": problem.kind}
    if "errors" in problem.extra:
        detail["fields"] = [e["field"] for e in problem.extra["errors"]]
    with services.db.transaction() as conn:
        audit.record(conn, actor=caller.actor, action=action, now=clock.now(), target=target,
                     address=caller.address, detail=detail)
        keys.mark_used(conn, caller.key_id, clock.now())


# --------------------------------------------------------------------------- routes

router = APIRouter(tags=["records"])
WRITE = Depends(requires("write:records"))
ExternalId = Annotated[str, Path(min_length=1, max_length=200)]


@router.put("/patients/{patient_id}", response_model=Applied, status_code=200,
            responses={201: {"model": Applied, "description": "Created"}})
def put_patient(request: Request, response: Response, body: PatientIn,
                patient_id: ExternalId, caller: Caller = WRITE) -> Applied:
    """Create or update a patient (the columns of patients.csv). Scope write:records."""
    return put(request, KINDS["patient"], patient_id, body, caller, response)


@router.put("/appointments/{appointment_id}", response_model=Applied, status_code=200,
            responses={201: {"model": Applied, "description": "Created"}})
def put_appointment(request: Request, response: Response, body: AppointmentIn,
                    appointment_id: ExternalId, caller: Caller = WRITE) -> Applied:
    """Create or update an appointment (the columns of appointments.csv): a status change
    records the import's event (cancelled, rescheduled, completed, no-show). Scope
    write:records."""
    return put(request, KINDS["appointment"], appointment_id, body, caller, response)


@router.put("/contacts/{contact_id}", response_model=Applied, status_code=200,
            responses={201: {"model": Applied, "description": "Created"}})
def put_contact(request: Request, response: Response, body: ContactIn,
                contact_id: ExternalId, caller: Caller = WRITE) -> Applied:
    """Create or update a patient's contact (parent, guardian, caregiver); the body names
    the patient_id. Scope write:records."""
    return put(request, KINDS["contact"], contact_id, body, caller, response)


@router.put("/referrers/{referrer_id}", response_model=Applied, status_code=200,
            responses={201: {"model": Applied, "description": "Created"}})
def put_referrer(request: Request, response: Response, body: ReferrerIn,
                 referrer_id: ExternalId, caller: Caller = WRITE) -> Applied:
    """Create or update a referral source. Scope write:records."""
    return put(request, KINDS["referrer"], referrer_id, body, caller, response)


UpdatedAt = Annotated[AwareDatetime | None, Query(
    description="When the EMR deleted it (with a UTC offset); older than the stored "
    "updated_at → 409.")]


@router.delete("/patients/{patient_id}", response_model=Removed)
def delete_patient(request: Request, patient_id: ExternalId, updated_at: UpdatedAt = None,
                   caller: Caller = WRITE) -> Removed:
    """Remove a patient who left the practice's records: their appointments with them,
    every pending touch point cancelled (patient_removed). A PUT brings them back. Scope
    write:records."""
    return delete(request, KINDS["patient"], patient_id, updated_at, caller)


@router.delete("/appointments/{appointment_id}", response_model=Removed)
def delete_appointment(request: Request, appointment_id: ExternalId,
                       updated_at: UpdatedAt = None, caller: Caller = WRITE) -> Removed:
    """Remove an appointment (not a cancellation: it left the records); its pending touch
    points are cancelled. Scope write:records."""
    return delete(request, KINDS["appointment"], appointment_id, updated_at, caller)


@router.delete("/contacts/{contact_id}", response_model=Removed)
def delete_contact(request: Request, contact_id: ExternalId, updated_at: UpdatedAt = None,
                   caller: Caller = WRITE) -> Removed:
    """Remove a contact: no longer a recipient; their pending touch points are cancelled.
    Scope write:records."""
    return delete(request, KINDS["contact"], contact_id, updated_at, caller)


@router.delete("/referrers/{referrer_id}", response_model=Removed)
def delete_referrer(request: Request, referrer_id: ExternalId, updated_at: UpdatedAt = None,
                    caller: Caller = WRITE) -> Removed:
    """Remove a referral source: its office no longer gets updates or digests; pending ones
    are cancelled; its patients keep the link. Scope write:records."""
    return delete(request, KINDS["referrer"], referrer_id, updated_at, caller)
