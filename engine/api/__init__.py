"""The REST API for EMR integrations, served by ``touchpoint serve`` under ``/api/v1``.

=========================================  =============  =============================
PUT    /api/v1/patients/{patient_id}         write:records  create or update (CSV columns)
PUT    /api/v1/appointments/{appointment_id} write:records  status changes record events
PUT    /api/v1/contacts/{contact_id}         write:records  the body names patient_id
PUT    /api/v1/referrers/{referrer_id}       write:records
DELETE /api/v1/patients/{patient_id}         write:records  removal (engine/removal.py)
DELETE /api/v1/appointments/{appointment_id} write:records  its touch points cancelled
DELETE /api/v1/contacts/{contact_id}         write:records  no longer a recipient
DELETE /api/v1/referrers/{referrer_id}       write:records  no longer sent updates
GET    /api/v1/patients/{patient_id}/touch-points  read:log  each with its why
GET    /api/v1/touch-points/{id}             read:log       one, with its story
GET    /api/v1/patient-tokens/{token}        read:patient-  whose a booking or intake
                                             tokens         link's token is
PUT    /api/v1/waitlist/{patient_id}         write:records  on the waitlist (preferences)
GET    /api/v1/waitlist/{patient_id}         write:records  the entry
DELETE /api/v1/waitlist/{patient_id}         write:records  withdrawn from the waitlist
POST   /api/v1/slots                         write:records  open a freed slot
GET    /api/v1/slots/{slot_id}               write:records  the slot, with its claimant
POST   /api/v1/slots/{slot_id}/confirm       write:records  claimed → booked
POST   /api/v1/slots/{slot_id}/withdraw      write:records  open or claimed → closed
=========================================  =============  =============================

OpenAPI: ``/api/openapi.json``, browsable at ``/api/docs``. Keys: engine/api/keys.py
(``touchpoint api-keys``); authentication, scopes and the rate limit: engine/api/auth.py;
errors (RFC 9457 problem+json): engine/api/problems.py; records: engine/api/records.py;
the waitlist and slots: engine/api/waitlist.py.
Each request is audited (``api-key:<name>``, e.g. ``api.patient.put patient:P1``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from engine.api import patient_tokens, problems, records, touch_points, waitlist
from engine.api.auth import RateLimiter

PREFIX = "/api/v1"


def mount(app: FastAPI, services: Any) -> None:
    """Add the API's routes, its problem+json errors and its rate limiter to ``app``."""
    count, period = services.settings.api.rate
    app.state.api_limiter = RateLimiter(count, period)
    problems.install(app)
    app.include_router(records.router, prefix=PREFIX)
    app.include_router(touch_points.router, prefix=PREFIX)
    app.include_router(patient_tokens.router, prefix=PREFIX)
    app.include_router(waitlist.router, prefix=PREFIX)
