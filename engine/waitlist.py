"""The waitlist: patients who want an earlier visit, and the freed slots offered to them.

A **waitlist entry** (one per patient) says which freed visit times suit the patient:
local weekdays (``days``), a time-of-day window (``time_from`` inclusive, ``time_until``
exclusive: the visit starts in it), a therapist, a location and a visit type (empty:
any), and the first and last local day (``earliest``, ``latest``). The same fields, with
the same checks (:func:`parse_preferences`), come from ``touchpoint import waitlist``'s
CSV columns, the API's ``PUT /api/v1/waitlist/{patient_id}`` and the console.

A **slot** is a freed visit time: a cancelled appointment's, or one opened through the
API (``POST /api/v1/slots``) or the console. It is ``open`` while it is offered in waves,
``claimed`` once a patient's yes wins it, ``booked`` once staff (or, with
``waitlist.auto_confirm``, the EMR integration) confirm it, ``expired`` when it started
unclaimed and ``closed`` when staff or the EMR withdrew it.

This module holds the records and their rules; offering slots in waves and answering
replies live beside the dispatcher (see docs/waitlist.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select, update

from engine.store.schema import slot_offers, slots, waitlist_entries

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # Monday = 0, as date.weekday()
FIELDS = ("days", "time_from", "time_until", "therapist", "location", "visit_type",
          "earliest", "latest")
ENTRY_STATUSES = ("waiting", "claimed", "withdrawn")
SLOT_STATUSES = ("open", "claimed", "booked", "expired", "closed")
SLOT_SOURCES = ("cancellation", "api", "console")
TEXT_LIMITS = {"therapist": 100, "location": 200, "visit_type": 100}
_DAY_NAMES = {name: index for index, name in enumerate(DAYS)} | {
    full: index for index, full in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))}
LONGEST_VISIT = 24 * 60  # minutes


class PreferenceError(ValueError):
    """Bad waitlist fields: ``errors`` maps each bad field to what is wrong with it."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {detail}" for name, detail in errors.items()))
        self.errors = dict(errors)


@dataclass(frozen=True)
class Preferences:
    """Which freed slots suit a waiting patient. Empty fields match anything."""

    days: tuple[str, ...] = ()
    time_from: time | None = None
    time_until: time | None = None
    therapist: str = ""
    location: str = ""
    visit_type: str = ""
    earliest: date | None = None
    latest: date | None = None

    def values(self) -> dict[str, Any]:
        """The entry's columns."""
        return {"days": list(self.days), "time_from": self.time_from,
                "time_until": self.time_until, "therapist": self.therapist,
                "location": self.location, "visit_type": self.visit_type,
                "earliest": self.earliest, "latest": self.latest}

    def as_json(self) -> dict[str, Any]:
        """The preferences as the API and ``--json`` show them."""
        return {"days": list(self.days),
                "time_from": self.time_from.strftime("%H:%M") if self.time_from else None,
                "time_until": self.time_until.strftime("%H:%M") if self.time_until else None,
                "therapist": self.therapist, "location": self.location,
                "visit_type": self.visit_type,
                "earliest": self.earliest.isoformat() if self.earliest else None,
                "latest": self.latest.isoformat() if self.latest else None}

    @classmethod
    def from_row(cls, row: Any) -> Preferences:
        """The preferences of a ``waitlist_entries`` row."""
        return cls(tuple(row.days or ()), row.time_from, row.time_until, row.therapist,
                   row.location, row.visit_type, row.earliest, row.latest)

    def matches(self, start: datetime, tz: ZoneInfo, *, therapist: str = "",
                location: str = "", visit_type: str = "") -> bool:
        """Whether a slot starting at ``start`` (aware), with this therapist, location and
        visit type, suits these preferences (days and times in the practice's ``tz``)."""
        local = start.astimezone(tz)
        if self.days and DAYS[local.weekday()] not in self.days:
            return False
        if self.time_from is not None and local.time() < self.time_from:
            return False
        if self.time_until is not None and local.time() >= self.time_until:
            return False
        if self.earliest is not None and local.date() < self.earliest:
            return False
        if self.latest is not None and local.date() > self.latest:
            return False
        return all(not wanted or _same(wanted, offered) for wanted, offered in (
            (self.therapist, therapist), (self.location, location),
            (self.visit_type, visit_type)))


def _same(wanted: str, offered: str) -> bool:
    return wanted.strip().casefold() == offered.strip().casefold()


def parse_preferences(raw: Mapping[str, Any]) -> Preferences:
    """Preferences from CSV cells, a JSON body or a form: every field optional. Raises
    :class:`PreferenceError` naming each bad field (all of them, not the first)."""
    errors: dict[str, str] = {}
    days = _checked(errors, "days", _days, raw.get("days"))
    time_from = _checked(errors, "time_from", _clock, raw.get("time_from"))
    time_until = _checked(errors, "time_until", _clock, raw.get("time_until"))
    earliest = _checked(errors, "earliest", _day, raw.get("earliest"))
    latest = _checked(errors, "latest", _day, raw.get("latest"))
    texts: dict[str, str] = {}
    for name, most in TEXT_LIMITS.items():
        value = raw.get(name)
        if value is None:
            texts[name] = ""
        elif not isinstance(value, str):
            errors[name] = "must be text"
        elif len(value.strip()) > most:
            errors[name] = f"is longer than {most} characters"
        else:
            texts[name] = value.strip()
    if time_from and time_until and time_until <= time_from:
        errors.setdefault("time_until", "must be later than time_from (e.g. 08:00 to 12:00)")
    if earliest and latest and latest < earliest:
        errors.setdefault("latest", "is before earliest — check the dates")
    if errors:
        raise PreferenceError(errors)
    return Preferences(days or (), time_from, time_until, texts["therapist"],
                       texts["location"], texts["visit_type"], earliest, latest)


def _checked(errors: dict[str, str], name: str, parse: Any, value: Any) -> Any:
    try:
        return parse(value)
    except ValueError as exc:
        errors[name] = str(exc)
        return None


def _days(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    parts: Sequence[Any]
    if isinstance(value, str):
        parts = [p for p in value.replace(";", ",").replace(" ", ",").split(",") if p]
    elif isinstance(value, list | tuple):
        parts = value
    else:
        raise ValueError("must be weekdays, e.g. mon,wed,fri")
    found: set[int] = set()
    for part in parts:
        if not isinstance(part, str):
            raise ValueError("must be weekdays, e.g. mon,wed,fri")
        first, _, last = part.strip().lower().partition("-")
        if first not in _DAY_NAMES or (last and last not in _DAY_NAMES):
            raise ValueError(f"{part.strip()[:20]!r} is not a weekday — write e.g. mon,wed,fri "
                             "or mon-fri")
        start, end = _DAY_NAMES[first], _DAY_NAMES[last or first]
        found.update(range(start, end + 1) if start <= end else
                     [*range(start, 7), *range(0, end + 1)])
    return tuple(DAYS[i] for i in sorted(found))


def _clock(value: Any) -> time | None:
    if value is None or value == "":
        return None
    if isinstance(value, time):
        return value
    if isinstance(value, str):
        text = value.strip()
        for pattern in ("%H:%M", "%I:%M %p", "%I:%M%p", "%I %p", "%I%p"):
            try:
                return datetime.strptime(text.upper(), pattern).time()  # noqa: DTZ007
            except ValueError:
                continue
    raise ValueError("is not a time of day — write it as 08:00 or 5:30 pm")


def _day(value: Any) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        for pattern in ("%Y-%m-%d", "%m/%d/%Y"):
            try:
                return datetime.strptime(value.strip(), pattern).date()  # noqa: DTZ007
            except ValueError:
                continue
    raise ValueError("is not a date — write it as 2027-01-31 (or 01/31/2027)")


# --------------------------------------------------------------------------- entries


Outcome = Literal["created", "updated", "unchanged"]


def put_entry(conn: Connection, patient_id: int, preferences: Preferences, *, source: str,
              now: datetime, source_updated_at: datetime | None = None) -> Outcome:
    """Put ``patient_id`` on the waitlist with ``preferences`` (or change them). Putting a
    withdrawn or claimed entry back makes it ``waiting`` again. The same call twice
    changes nothing."""
    values = preferences.values()
    current = conn.execute(select(waitlist_entries)
                           .where(waitlist_entries.c.patient_id == patient_id)).first()
    if current is None:
        conn.execute(waitlist_entries.insert().values(
            patient_id=patient_id, **values, status="waiting", source=source[:300],
            created_at=now, updated_at=now, source_updated_at=source_updated_at))
        return "created"
    if current.status == "waiting" and Preferences.from_row(current) == preferences:
        return "unchanged"
    conn.execute(update(waitlist_entries).where(waitlist_entries.c.id == current.id).values(
        **values, status="waiting", source=source[:300], updated_at=now,
        source_updated_at=source_updated_at or current.source_updated_at))
    return "updated"


def withdraw_entry(conn: Connection, patient_id: int, *, now: datetime) -> bool:
    """Take ``patient_id`` off the waitlist (no more offers); False if not waiting."""
    result = conn.execute(update(waitlist_entries)
                          .where(waitlist_entries.c.patient_id == patient_id,
                                 waitlist_entries.c.status == "waiting")
                          .values(status="withdrawn", updated_at=now))
    return result.rowcount == 1


# --------------------------------------------------------------------------- slots


@dataclass(frozen=True)
class NewSlot:
    """A freed visit time to offer."""

    start_at: datetime
    duration_minutes: int
    therapist: str = ""
    location: str = ""
    visit_type: str = ""
    external_id: str | None = None
    appointment_id: int | None = None
    freed_by_patient_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def open_slot(conn: Connection, slot: NewSlot, *, source: str, now: datetime) -> int | None:
    """Record a freed slot, open for offers from now; its id, or None when it starts
    before ``now`` (nothing to offer) or its appointment's slot is already recorded."""
    if source not in SLOT_SOURCES:
        raise ValueError(f"unknown slot source {source!r}")
    if slot.start_at <= now:
        return None
    if slot.appointment_id is not None and conn.execute(
            select(slots.c.id).where(slots.c.appointment_id == slot.appointment_id)).first():
        return None
    return int(conn.execute(slots.insert().values(
        external_id=slot.external_id, appointment_id=slot.appointment_id,
        freed_by_patient_id=slot.freed_by_patient_id, start_at=slot.start_at,
        duration_minutes=slot.duration_minutes,
        visit_type=slot.visit_type[:TEXT_LIMITS["visit_type"]],
        therapist=slot.therapist[:TEXT_LIMITS["therapist"]],
        location=slot.location[:TEXT_LIMITS["location"]], source=source,
        status="open", waves=0, next_wave_at=now, opened_at=now, updated_at=now,
    ).returning(slots.c.id)).scalar_one())


SlotChange = Literal["changed", "unchanged", "refused"]


def confirm_slot(conn: Connection, slot_id: int, *, now: datetime) -> SlotChange:
    """A claimed slot is booked (staff confirmed it, or the EMR booked it). Confirming a
    booked slot again changes nothing; any other status is refused."""
    result = conn.execute(update(slots).where(slots.c.id == slot_id,
                                              slots.c.status == "claimed")
                          .values(status="booked", booked_at=now, closed_at=now,
                                  next_wave_at=None, updated_at=now))
    if result.rowcount == 1:
        return "changed"
    status = conn.execute(select(slots.c.status).where(slots.c.id == slot_id)).scalar()
    return "unchanged" if status == "booked" else "refused"


def close_slot(conn: Connection, slot_id: int, *, now: datetime,
               status: Literal["closed", "expired"] = "closed") -> SlotChange:
    """Stop offering a slot: withdrawn (``closed``) by staff or the EMR, or ``expired``.
    Only an open or claimed slot can close; its standing offers are withdrawn."""
    result = conn.execute(update(slots).where(slots.c.id == slot_id,
                                              slots.c.status.in_(("open", "claimed")))
                          .values(status=status, closed_at=now, next_wave_at=None,
                                  updated_at=now))
    if result.rowcount != 1:
        current = conn.execute(select(slots.c.status).where(slots.c.id == slot_id)).scalar()
        return "unchanged" if current == status else "refused"
    conn.execute(update(slot_offers).where(slot_offers.c.slot_id == slot_id,
                                           slot_offers.c.status == "offered")
                 .values(status="withdrawn", answered_at=now))
    return "changed"


def slot_as_json(row: Any, tz: ZoneInfo) -> dict[str, Any]:
    """A ``slots`` row as the API and ``--json`` show it (start in the practice's zone)."""
    return {"id": row.id, "external_id": row.external_id, "status": row.status,
            "start_at": row.start_at.astimezone(tz).isoformat(),
            "duration_minutes": row.duration_minutes, "therapist": row.therapist,
            "location": row.location, "visit_type": row.visit_type, "source": row.source,
            "waves": row.waves, "opened_at": row.opened_at.isoformat(),
            "claimed_at": row.claimed_at.isoformat() if row.claimed_at else None,
            "booked_at": row.booked_at.isoformat() if row.booked_at else None,
            "closed_at": row.closed_at.isoformat() if row.closed_at else None}


def ends_offers(start_at: datetime, offered_at: datetime, expiry: timedelta) -> datetime:
    """When an offer made at ``offered_at`` for a slot starting at ``start_at`` ends:
    ``waitlist.offer_expiry`` later, or when the slot starts, whichever is first."""
    return min(offered_at + expiry, start_at)
