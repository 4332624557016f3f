"""Records that left the practice's records: removing and reactivating them.

A full sync (``touchpoint import … --full``), an HL7 ``S17`` or an API ``DELETE`` says a
patient, an appointment or a contact is no longer in the source. Touchpoint does not
delete the row (its touch points and their history must still answer "why?"): it sets
``removed_at`` and cancels what was still to be sent, with reason ``patient_removed``.

* :func:`remove_patient` — the patient and their appointments still active are marked
  removed (at the same instant), and every pending (``planned``) touch point of the
  patient — theirs, their contacts', their referrer's — is cancelled.
* :func:`remove_appointment` — the appointment is marked removed and the pending touch
  points anchored on it (``touch_points.appointment_id``) are cancelled.
* :func:`remove_contact` — the contact is marked removed (no longer a recipient) and the
  pending touch points addressed to them are cancelled.
* :func:`remove_referrer` — the referral source is marked removed (its office no longer
  gets referral-loop updates or digests) and the pending touch points addressed to it are
  cancelled; its patients keep the link.

What a removed record means elsewhere (decided here, relied on there):

* **Planning** (engine.runner): an event of a removed patient, or about a removed
  appointment, plans nothing — it is marked processed, as if it had been planned, so a
  removed patient gets no new touch points. The lapse sweep ignores removed patients
  and removed appointments.
* **Sending** (engine.guards / engine.dispatcher): a touch point of a removed patient or
  anchored on a removed appointment is cancelled ``patient_removed`` if it ever comes
  due. A touch point already claimed by a running batch is stopped at its ``sending``
  mark: the removal moved it to ``cancelled`` (so the mark, which expects ``planned``,
  matches nothing and the dispatcher leaves it), and the mark's re-check also requires
  the anchor appointment not to be removed.
* **A removed appointment is not booked**: it is not "the next appointment", does not
  keep a patient from lapsing, and its exits are not applied — its own touch points were
  cancelled at removal, with this reason rather than ``appointment_cancelled``. No event
  is recorded: the cancelled touch points carry the reason and a detail naming the
  source, and the record keeps ``removed_at``; ``touchpoint why`` shows both.
* **Contacts**: removed contacts are left out of :func:`engine.store.records.load_contacts`,
  so they are no longer recipients.

A record the source sends again is **reactivated** (``removed_at`` cleared) by the
importer, which counts it as ``reactivated``: see :func:`reactivate_patient` and
:func:`reactivate_appointment`. Because removal cancelled its reminders, a future booked
appointment that comes back is re-booked (its version goes up, and an
``appointment.booked`` event plans its touch points again).

Removing twice changes nothing the second time (the functions return 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from engine.outcomes import Reason
from engine.store import ledger
from engine.store.schema import appointments, contacts, patients, referrers, touch_points

SOURCE = "removal"  # touch_point_history.source of the cancellations


def remove_patient(conn: Connection, patient_id: int, *, now: datetime, source: str) -> int:
    """Mark patient ``patient_id`` (database id) removed, with their active appointments,
    and cancel every pending touch point of theirs (``patient_removed``). ``source`` says
    where the removal came from (``"patients.csv --full"``, ``"hl7"``, ``"api"``).

    Returns the number of touch points cancelled; 0 if the patient was already removed.
    Raises :class:`LookupError` if there is no such patient.
    """
    row = conn.execute(select(patients.c.external_id, patients.c.removed_at)
                       .where(patients.c.id == patient_id)).first()
    if row is None:
        raise LookupError(f"no patient with id {patient_id}")
    if row.removed_at is not None:
        return 0
    conn.execute(update(patients).where(patients.c.id == patient_id)
                 .values(removed_at=now, updated_at=now))
    conn.execute(update(appointments)
                 .where(appointments.c.patient_id == patient_id,
                        appointments.c.removed_at.is_(None))
                 .values(removed_at=now, updated_at=now))
    return len(_cancel(conn, [touch_points.c.patient_id == patient_id], now,
                       f"patient {row.external_id} left the practice's records ({source})"))


def remove_appointment(conn: Connection, appointment_id: int, *, now: datetime,
                       source: str) -> int:
    """Mark appointment ``appointment_id`` (database id) removed and cancel the pending
    touch points anchored on it (``patient_removed``).

    Returns the number of touch points cancelled; 0 if it was already removed.
    Raises :class:`LookupError` if there is no such appointment.
    """
    row = conn.execute(select(appointments.c.external_id, appointments.c.removed_at)
                       .where(appointments.c.id == appointment_id)).first()
    if row is None:
        raise LookupError(f"no appointment with id {appointment_id}")
    if row.removed_at is not None:
        return 0
    conn.execute(update(appointments).where(appointments.c.id == appointment_id)
                 .values(removed_at=now, updated_at=now))
    return len(_cancel(conn, [touch_points.c.appointment_id == appointment_id], now,
                       f"appointment {row.external_id} left the practice's records ({source})"))


def remove_contact(conn: Connection, contact_id: int, *, now: datetime, source: str) -> int:
    """Mark contact ``contact_id`` (database id) removed: no longer a recipient. Their
    pending touch points are cancelled (``patient_removed``). Returns how many; 0 if the
    contact was already removed. Raises :class:`LookupError` if there is no such contact.
    """
    row = conn.execute(select(contacts.c.external_id, contacts.c.patient_id,
                              contacts.c.removed_at)
                       .where(contacts.c.id == contact_id)).first()
    if row is None:
        raise LookupError(f"no contact with id {contact_id}")
    if row.removed_at is not None:
        return 0
    conn.execute(update(contacts).where(contacts.c.id == contact_id)
                 .values(removed_at=now, updated_at=now))
    return len(_cancel(conn, [touch_points.c.patient_id == row.patient_id,
                              touch_points.c.recipient == f"contact:{contact_id}"], now,
                       f"contact {row.external_id} left the practice's records ({source})"))


def remove_referrer(conn: Connection, referrer_id: int, *, now: datetime, source: str) -> int:
    """Mark referral source ``referrer_id`` (database id) removed: its office is no longer
    a recipient (referral-loop updates, monthly digests) and the pending touch points
    addressed to it are cancelled (``patient_removed``); its patients keep the link, so
    reports still count where they came from. Returns how many were cancelled; 0 if it was
    already removed. Raises :class:`LookupError` if there is no such referrer."""
    row = conn.execute(select(referrers.c.external_id, referrers.c.removed_at)
                       .where(referrers.c.id == referrer_id)).first()
    if row is None:
        raise LookupError(f"no referrer with id {referrer_id}")
    if row.removed_at is not None:
        return 0
    conn.execute(update(referrers).where(referrers.c.id == referrer_id)
                 .values(removed_at=now, updated_at=now))
    return len(_cancel(conn, [touch_points.c.recipient == f"referrer:{referrer_id}"], now,
                       f"referrer {row.external_id} left the practice's records ({source})"))


def reactivate_referrer(conn: Connection, referrer_id: int, *, now: datetime) -> bool:
    """Bring back a removed referrer; False if it was not removed."""
    return bool(conn.execute(update(referrers)
                             .where(referrers.c.id == referrer_id,
                                    referrers.c.removed_at.is_not(None))
                             .values(removed_at=None, updated_at=now)).rowcount)


def reactivate_patient(conn: Connection, patient_id: int, *, now: datetime,
                       ) -> list[dict[str, Any]]:
    """Bring back a removed patient (``removed_at`` cleared) and the appointments removed
    with them; re-book their future booked appointments, whose touch points the removal
    cancelled. Returns the ``appointment.booked`` events to append (as
    :func:`engine.store.records.append_events` rows); nothing if the patient was active.
    """
    removed_at = conn.execute(select(patients.c.removed_at)
                              .where(patients.c.id == patient_id)).scalar()
    if removed_at is None:
        return []
    conn.execute(update(patients).where(patients.c.id == patient_id)
                 .values(removed_at=None, updated_at=now))
    conn.execute(update(appointments)
                 .where(appointments.c.patient_id == patient_id,
                        appointments.c.removed_at == removed_at)
                 .values(removed_at=None, updated_at=now))
    future = conn.execute(select(appointments.c.id)
                          .where(appointments.c.patient_id == patient_id,
                                 appointments.c.removed_at.is_(None),
                                 appointments.c.status == "booked",
                                 appointments.c.start_at > now)).scalars().all()
    return [_rebook(conn, appointment_id, now, "reactivated with its patient")
            for appointment_id in future]


def reactivate_appointment(conn: Connection, appointment_id: int, *, now: datetime,
                           ) -> dict[str, Any] | None:
    """Bring back a removed appointment. If it is booked and ahead, it is re-booked and
    the ``appointment.booked`` event to append is returned (None otherwise, and if it was
    not removed)."""
    row = conn.execute(select(appointments.c.removed_at, appointments.c.status,
                              appointments.c.start_at)
                       .where(appointments.c.id == appointment_id)).first()
    if row is None or row.removed_at is None:
        return None
    conn.execute(update(appointments).where(appointments.c.id == appointment_id)
                 .values(removed_at=None, updated_at=now))
    if row.status == "booked" and row.start_at > now:
        return _rebook(conn, appointment_id, now, "reactivated")
    return None


def reactivate_contact(conn: Connection, contact_id: int, *, now: datetime) -> bool:
    """Bring back a removed contact; False if they were not removed."""
    return bool(conn.execute(update(contacts)
                             .where(contacts.c.id == contact_id,
                                    contacts.c.removed_at.is_not(None))
                             .values(removed_at=None, updated_at=now)).rowcount)


def _rebook(conn: Connection, appointment_id: int, now: datetime, why: str) -> dict[str, Any]:
    """A new version of a booked appointment (touch points anchor on the version) and its
    ``appointment.booked`` event."""
    conn.execute(update(appointments).where(appointments.c.id == appointment_id)
                 .values(version=appointments.c.version + 1, confirmed_at=None,
                         updated_at=now))
    row = conn.execute(select(appointments).where(appointments.c.id == appointment_id)).one()
    return {"kind": "appointment.booked", "patient_id": row.patient_id,
            "appointment_id": appointment_id, "occurred_at": now,
            "data": {"appointment": row.external_id, "start": row.start_at.isoformat(),
                     "duration_minutes": row.duration_minutes, "version": row.version,
                     "status": row.status, "reactivated": why},
            "source": row.source, "dedupe_key": None, "processed_at": None}


def _cancel(conn: Connection, where: Sequence[Any], now: datetime, detail: str) -> list[int]:
    return ledger.cancel_matching(conn, where, Reason.PATIENT_REMOVED, detail, now, SOURCE)
