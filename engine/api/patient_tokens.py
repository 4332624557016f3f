"""GET who a patient token in a booking or intake link is for (scope read:patient-tokens).

The practice's booking page or intake form receives ``?patient=TOKEN``
(engine/patient_links.py) and asks here whose it is: a genuine token younger than
``links.max_age`` answers the patient's id (the EMR's ``patient_id``); a forged, altered
or expired one, or one of a patient no longer on file, is 404 — alike, so the answer
tells a guesser nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Request
from sqlalchemy import select

from engine import audit, clock, patient_links
from engine.api import keys
from engine.api.auth import Caller, requires
from engine.api.problems import Problem
from engine.store.schema import patients

router = APIRouter(tags=["patient tokens"])
READ = Depends(requires("read:patient-tokens"))


@router.get("/patient-tokens/{token}")
def patient_token(request: Request, token: str = Path(min_length=1, max_length=500),
                  caller: Caller = READ) -> dict[str, Any]:
    """The patient a link's token names: ``{"patient_id": …}``. Scope read:patient-tokens."""
    services = request.app.state.services
    now = clock.now()
    with services.db.transaction() as conn:
        serializer = patient_links.signer(conn, services.settings)
        max_age = int(services.settings.links.max_age.total_seconds())
        patient_id = patient_links.read_token(serializer, token, max_age)
        row = conn.execute(select(patients.c.external_id).where(
            patients.c.id == patient_id, patients.c.erased_at.is_(None),
            patients.c.removed_at.is_(None))).first() if patient_id is not None else None
        audit.record(conn, actor=caller.actor, action="api.patient_token.get", now=now,
                     target=f"patient:{row.external_id}" if row else "patient-token",
                     address=caller.address, detail={} if row else {"status": 404})
        keys.mark_used(conn, caller.key_id, now)
    if row is None:
        raise Problem(404, "not-found", "this token is not one Touchpoint made, was altered, "
                      "has expired (links.max_age), or its patient is no longer on file")
    return {"patient_id": row.external_id}
