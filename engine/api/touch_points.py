"""GET a patient's touch points, and one touch point with its ``why`` (scope read:log).

The rows are :func:`engine.touch_point_log.log_rows` and the story
:func:`engine.touch_point_log.why`, as ``touchpoint log --json`` and ``touchpoint why``
show them (recipients masked).
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy import select

from engine import audit, clock
from engine.api import keys
from engine.api.auth import Caller, requires
from engine.api.problems import Problem
from engine.errors import NotFound
from engine.store.schema import patients
from engine.touch_point_log import log_rows, why

router = APIRouter(tags=["touch points"])
READ = Depends(requires("read:log"))


@router.get("/patients/{patient_id}/touch-points")
def patient_touch_points(request: Request, patient_id: str = Path(min_length=1),
                         limit: int = Query(500, ge=1, le=5000),
                         caller: Caller = READ) -> dict[str, Any]:
    """A patient's touch points, oldest due first, each with why it was (not) sent.
    Scope read:log."""
    services = request.app.state.services
    now = clock.now()
    with services.db.transaction() as conn:
        known = conn.execute(select(patients.c.id)
                             .where(patients.c.external_id == patient_id)).first()
        missing = None
        if known is None:
            missing = Problem(404, "not-found", f"no patient {patient_id} — PUT it first")
        rows = [] if missing else list(log_rows(conn, patient=patient_id, limit=limit))
        for row in rows:
            row["why"] = why(conn, row["id"], services.definitions).explanation
        audit.record(conn, actor=caller.actor, action="api.touch_points.get", now=now,
                     target=f"patient:{patient_id}", address=caller.address,
                     detail={"status": 404} if missing else {"count": len(rows)})
        keys.mark_used(conn, caller.key_id, now)
    if missing:
        raise missing
    return {"patient_id": patient_id, "touch_points": rows}


@router.get("/touch-points/{touch_point_id}")
def touch_point(request: Request, touch_point_id: int, caller: Caller = READ,
                ) -> dict[str, Any]:
    """One touch point: its journey, step, status and reason, the event that planned it,
    its history, and the one-sentence answer to "why was this (not) sent?". Scope
    read:log."""
    services = request.app.state.services
    now = clock.now()
    story: dict[str, Any] | None = None
    with services.db.transaction() as conn:
        with contextlib.suppress(NotFound):
            story = why(conn, touch_point_id, services.definitions).as_dict()
        audit.record(conn, actor=caller.actor, action="api.touch_point.get", now=now,
                     target=f"touch_point:{touch_point_id}", address=caller.address,
                     detail={"patient": story["patient_id"]} if story else {"status": 404})
        keys.mark_used(conn, caller.key_id, now)
    if story is None:
        raise Problem(404, "not-found", f"no touch point {touch_point_id}")
    return story
