"""What staff see of the waitlist (``touchpoint waitlist list|slots`` and the console's
/waitlist page): the waiting patients with their preferences, and the slots with their
status, waves and claimant. Read-only views over engine/waitlist.py's records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select
from sqlalchemy.orm import aliased

from engine.store.schema import patients, slots, waitlist_entries
from engine.waitlist import Preferences, slot_as_json


@dataclass(frozen=True)
class WaitingPatient:
    patient_id: str  # the EMR's id
    name: str
    preferences: Preferences
    since: datetime

    def as_json(self) -> dict[str, Any]:
        return {"patient_id": self.patient_id, **self.preferences.as_json(),
                "since": self.since.isoformat()}

    def described(self) -> str:
        """The preferences in a few words ("mon, wed · 08:00–12:00 · Maya Chen")."""
        prefs = self.preferences
        parts = [", ".join(prefs.days) if prefs.days else "any day"]
        if prefs.time_from and prefs.time_until:
            parts.append(f"{prefs.time_from:%H:%M}–{prefs.time_until:%H:%M}")
        elif prefs.time_from:
            parts.append(f"from {prefs.time_from:%H:%M}")
        elif prefs.time_until:
            parts.append(f"before {prefs.time_until:%H:%M}")
        parts += [text for text in (prefs.therapist, prefs.location, prefs.visit_type) if text]
        if prefs.earliest or prefs.latest:
            parts.append(f"{prefs.earliest or '…'} to {prefs.latest or '…'}")
        return " · ".join(parts)


def waiting(conn: Connection) -> list[WaitingPatient]:
    """The patients waiting for a slot, longest waiting first."""
    rows = conn.execute(
        select(waitlist_entries, patients.c.external_id, patients.c.first_name,
               patients.c.last_name)
        .join(patients, patients.c.id == waitlist_entries.c.patient_id)
        .where(waitlist_entries.c.status == "waiting", patients.c.removed_at.is_(None))
        .order_by(waitlist_entries.c.created_at, waitlist_entries.c.id))
    return [WaitingPatient(row.external_id, f"{row.first_name} {row.last_name}".strip(),
                           Preferences.from_row(row), row.created_at) for row in rows]


def slot_list(conn: Connection, tz: ZoneInfo, *, every: bool = False,
              ) -> list[dict[str, Any]]:
    """Slots as ``slot_as_json`` shows them plus ``claimed_by_patient_id``, ``claimed_by``
    (the claimant's name) and ``starts`` (practice time, "Tue Dec 08 09:00"): the open
    and claimed ones (``every``: all), soonest first."""
    claimant = aliased(patients)
    query = (select(slots, claimant.c.external_id.label("claimant_id"),
                    claimant.c.first_name.label("claimant_first"),
                    claimant.c.last_name.label("claimant_last"))
             .outerjoin(claimant, claimant.c.id == slots.c.claimed_by_patient_id)
             .order_by(slots.c.start_at, slots.c.id))
    if not every:
        query = query.where(slots.c.status.in_(("open", "claimed")))
    return [{**slot_as_json(row, tz), "claimed_by_patient_id": row.claimant_id,
             "starts": f"{row.start_at.astimezone(tz):%a %b %d %H:%M}",
             "claimed_by": f"{row.claimant_first} {row.claimant_last}".strip()
             if row.claimant_id else None} for row in conn.execute(query)]
