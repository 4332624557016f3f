"""Offering freed slots to the waitlist in waves, and the yes that claims one.

::

    appointment.cancelled (start in the future)        the runner's planning
        │  slot_for_cancellation(): a slots row, open, next_wave_at = now
        ▼
    open slot, next_wave_at come                        every runner tick (offer_waves)
        │  started?  → expired
        │  else the next waitlist.wave_size matching waiting patients (who waited
        │  longest first): a slot_offers row each + a ``waitlist.offered`` event
        │  (data.anchor ``slot:<id>``); next_wave_at = now + waitlist.wave_every
        ▼
    journey ``waitlist`` (schedules/waitlist.yaml)      the planner and the dispatcher
        │  the offer text; at send time the guard skips it (``slot_closed``) when the
        │  slot is no longer open or the offer no longer stands
        ▼
    a yes from the patient                               engine.replies → claim()
        │  UPDATE slots SET status='claimed' … WHERE id=? AND status='open'
        │  rowcount 1: the first committed yes wins; any later yes: ``taken``

Never offered: the patient who freed the slot, one already offered it, one with a visit
(booked or completed) the same local day, removed or erased patients, patients with no
phone, no SMS consent or an SMS opt-out — and no one while it is quiet hours where they
are (a later wave reaches them). See docs/waitlist.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, and_, func, or_, select, update

from engine.domain import Event
from engine.outcomes import Reason, Status
from engine.settings import Settings
from engine.store import ledger
from engine.store.records import append_events, as_utc
from engine.store.schema import (
    appointments,
    opt_outs,
    patients,
    slot_offers,
    slots,
    touch_points,
    waitlist_entries,
)
from engine.timing import QuietHours, at_local, zone
from engine.waitlist import (
    NewSlot,
    Preferences,
    close_slot,
    confirm_slot,
    ends_offers,
    open_slot,
)

log = logging.getLogger("touchpoint.waitlist")

OFFERED = "waitlist.offered"  # the event the shipped journey `waitlist` turns into a text
JOURNEY = "waitlist"


def slot_anchor(slot_id: int) -> str:
    return f"slot:{slot_id}"


def slot_id_of(anchor: str) -> int | None:
    """The slot of a ``slot:<id>`` anchor, else None."""
    kind, _, ident = anchor.partition(":")
    return int(ident) if kind == "slot" and ident.isdigit() else None


# --------------------------------------------------------------------------- freed slots


def slot_for_cancellation(conn: Connection, event: Event, now: datetime) -> int | None:
    """Open a slot for the visit an ``appointment.cancelled`` event freed, if it starts in
    the future (and has no slot yet); its id, else None."""
    if event.kind != "appointment.cancelled" or event.appointment_id is None:
        return None
    row = conn.execute(select(appointments).where(
        appointments.c.id == event.appointment_id)).first()
    if row is None or row.removed_at is not None:
        return None
    return open_slot(conn, NewSlot(
        start_at=as_utc(row.start_at), duration_minutes=row.duration_minutes,
        therapist=row.therapist or "", location=row.location or "",
        visit_type=row.visit_type or "", appointment_id=row.id,
        freed_by_patient_id=row.patient_id), source="cancellation", now=now)


# --------------------------------------------------------------------------- waves


@dataclass
class WaveReport:
    offered: int = 0
    expired_slots: int = 0
    expired_offers: int = 0


def offer_waves(conn: Connection, settings: Settings, now: datetime) -> WaveReport:
    """Expire stale offers, expire slots that started, and send the next wave of every
    open slot whose ``next_wave_at`` has come."""
    report = WaveReport()
    # one query on an idle tick: is any offer to expire, or any slot's wave, due?
    soonest = conn.execute(select(
        select(func.min(slot_offers.c.expires_at))
        .where(slot_offers.c.status == "offered").scalar_subquery(),
        select(func.min(slots.c.next_wave_at))
        .where(slots.c.status == "open").scalar_subquery())).one()
    if not any(at is not None and as_utc(at) <= now for at in soonest):
        return report
    report.expired_offers = conn.execute(
        update(slot_offers).where(slot_offers.c.status == "offered",
                                  slot_offers.c.expires_at <= now)
        .values(status="expired", answered_at=now)).rowcount
    practice_tz = settings.require("practice.timezone")
    due = conn.execute(select(slots).where(slots.c.status == "open",
                                           slots.c.next_wave_at <= now)
                       .order_by(slots.c.start_at, slots.c.id)).all()
    for slot in due:
        if as_utc(slot.start_at) <= now:
            if close_slot(conn, slot.id, now=now, status="expired") == "changed":
                report.expired_slots += 1
            continue
        report.offered += _wave(conn, settings, slot, practice_tz, now)
    return report


def _wave(conn: Connection, settings: Settings, slot: Any, practice_tz: str,
          now: datetime) -> int:
    config = settings.waitlist
    start = as_utc(slot.start_at)
    chosen = candidates(conn, slot, practice_tz, settings.quiet_hours, now)[:config.wave_size]
    wave = slot.waves + 1
    expires = ends_offers(start, now, config.offer_expiry)
    new_events = []
    for patient_id in chosen:
        conn.execute(slot_offers.insert().values(
            slot_id=slot.id, patient_id=patient_id, wave=wave, status="offered",
            offered_at=now, expires_at=expires))
        new_events.append({
            "kind": OFFERED, "patient_id": patient_id, "appointment_id": None,
            "occurred_at": now,
            "data": {"anchor": slot_anchor(slot.id), "slot_id": slot.id, "wave": wave,
                     "expires_at": expires.isoformat()},
            "source": "waitlist", "dedupe_key": f"{OFFERED}:{slot.id}:{patient_id}",
            "processed_at": None})
    append_events(conn, new_events)
    conn.execute(update(slots).where(slots.c.id == slot.id).values(
        waves=wave if chosen else slot.waves, next_wave_at=now + config.wave_every,
        updated_at=now))
    if chosen:
        log.info("slot %d: wave %d offered to %d patient(s)", slot.id, wave, len(chosen))
    return len(chosen)


def candidates(conn: Connection, slot: Any, practice_tz: str, quiet: QuietHours,
               now: datetime) -> list[int]:
    """The waiting patients a wave of ``slot`` may go to, who waited longest first."""
    tz = zone(practice_tz)
    start = as_utc(slot.start_at)
    day = start.astimezone(tz).date()
    day_start = at_local(day, time(0, 0), tz)
    day_end = at_local(day + timedelta(days=1), time(0, 0), tz)
    offered = select(slot_offers.c.id).where(slot_offers.c.slot_id == slot.id,
                                             slot_offers.c.patient_id == patients.c.id)
    same_day = select(appointments.c.id).where(
        appointments.c.patient_id == patients.c.id,
        appointments.c.status.in_(("booked", "completed")),
        appointments.c.removed_at.is_(None),
        appointments.c.start_at >= day_start, appointments.c.start_at < day_end)
    opted = select(opt_outs.c.id).where(
        opt_outs.c.channel == "sms", opt_outs.c.address == patients.c.phone,
        opt_outs.c.purpose.in_(("all", "transactional")))
    query = (select(waitlist_entries, patients.c.timezone.label("patient_timezone"))
             .join(patients, patients.c.id == waitlist_entries.c.patient_id)
             .where(waitlist_entries.c.status == "waiting",
                    patients.c.removed_at.is_(None), patients.c.erased_at.is_(None),
                    patients.c.sms_consent.is_(True), patients.c.phone.is_not(None),
                    patients.c.phone != "", ~offered.exists(), ~same_day.exists(),
                    ~opted.exists())
             .order_by(waitlist_entries.c.created_at, waitlist_entries.c.id))
    if slot.freed_by_patient_id is not None:
        query = query.where(patients.c.id != slot.freed_by_patient_id)
    found = []
    for row in conn.execute(query):
        if not Preferences.from_row(row).matches(start, tz, therapist=slot.therapist,
                                                 location=slot.location,
                                                 visit_type=slot.visit_type):
            continue
        if not quiet.allows(now, zone(row.patient_timezone or practice_tz)):
            continue  # night where they are: a later wave may reach them
        found.append(row.patient_id)
    return found


# --------------------------------------------------------------------------- send time


def standing_offers(conn: Connection, pairs: set[tuple[int, int]], now: datetime,
                    ) -> dict[tuple[int, int], tuple[Any, datetime]]:
    """Of the (slot id, patient id) ``pairs``, those whose offer still stands — the slot
    open, the offer ``offered`` and not expired — with the slot row and when it ends."""
    slot_ids = sorted({s for s, _ in pairs})
    rows = conn.execute(
        select(slots, slot_offers.c.patient_id.label("offered_to"),
               slot_offers.c.expires_at.label("offer_expires_at"))
        .join(slot_offers, slot_offers.c.slot_id == slots.c.id)
        .where(slots.c.id.in_(slot_ids), slots.c.status == "open",
               slot_offers.c.status == "offered", slot_offers.c.expires_at > now)).all()
    return {(row.id, row.offered_to): (row, as_utc(row.offer_expires_at)) for row in rows
            if (row.id, row.offered_to) in pairs}


# --------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Claim:
    """What a yes to a standing offer did: ``won`` (the slot is the patient's, ``booked``
    with waitlist.auto_confirm) or ``taken`` (another yes came first)."""

    outcome: Literal["won", "taken"]
    slot_id: int
    offer_id: int
    booked: bool = False


def standing_offer(conn: Connection, patient_ids: list[int], now: datetime) -> Any | None:
    """The latest offer to one of ``patient_ids`` that a yes would answer: ``offered``,
    not expired, its slot open — or, to tell a late yes that it was taken, the latest
    unexpired ``offered`` one whose slot was claimed or booked meanwhile."""
    if not patient_ids:
        return None
    return conn.execute(
        select(slot_offers, slots.c.status.label("slot_status"))
        .join(slots, slots.c.id == slot_offers.c.slot_id)
        .where(slot_offers.c.patient_id.in_(patient_ids),
               or_(slot_offers.c.status == "offered", slot_offers.c.status == "withdrawn"),
               slot_offers.c.expires_at > now,
               or_(slots.c.status == "open",
                   and_(slots.c.status.in_(("claimed", "booked")),
                        slots.c.claimed_by_patient_id != slot_offers.c.patient_id)))
        .order_by(slot_offers.c.offered_at.desc(), slot_offers.c.id.desc())).first()


def claim(conn: Connection, settings: Settings, offer: Any, now: datetime) -> Claim:
    """A yes to ``offer``: the first committed one wins the slot (a conditional UPDATE,
    so two workers at once get exactly one winner); the others are told it was taken."""
    won = conn.execute(update(slots).where(slots.c.id == offer.slot_id,
                                           slots.c.status == "open")
                       .values(status="claimed", claimed_by_patient_id=offer.patient_id,
                               claimed_at=now, next_wave_at=None, updated_at=now)).rowcount
    if won != 1:
        conn.execute(update(slot_offers).where(slot_offers.c.id == offer.id)
                     .values(status="taken", answered_at=now))
        return Claim("taken", offer.slot_id, offer.id)
    conn.execute(update(slot_offers).where(slot_offers.c.id == offer.id)
                 .values(status="claimed", answered_at=now))
    conn.execute(update(waitlist_entries)
                 .where(waitlist_entries.c.patient_id == offer.patient_id)
                 .values(status="claimed", updated_at=now))
    conn.execute(update(slot_offers).where(slot_offers.c.slot_id == offer.slot_id,
                                           slot_offers.c.status == "offered")
                 .values(status="withdrawn", answered_at=now))
    cancel_unsent_offers(conn, offer.slot_id, now)
    booked = False
    if settings.waitlist.auto_confirm:
        booked = confirm_slot(conn, offer.slot_id, now=now) == "changed"
    return Claim("won", offer.slot_id, offer.id, booked)


def cancel_unsent_offers(conn: Connection, slot_id: int, now: datetime) -> int:
    """Cancel the offer texts of ``slot_id`` not sent yet (``slot_closed``)."""
    ids = list(conn.execute(select(touch_points.c.id).where(
        touch_points.c.status == Status.PLANNED, touch_points.c.journey == JOURNEY,
        touch_points.c.anchor == slot_anchor(slot_id))).scalars())
    return sum(ledger.transition(conn, tp_id, expect=Status.PLANNED, to=Status.CANCELLED,
                                 now=now, source="waitlist", reason=Reason.SLOT_CLOSED,
                                 detail=f"slot {slot_id} was claimed",
                                 values={"claimed_by": None, "claim_expires_at": None})
               for tp_id in ids)
