"""Durations, local wall-clock times and quiet hours.

Rules written in local time ("10:00 two days before") are evaluated in the recipient's
timezone. All instants leave this module as aware UTC datetimes. Daylight-saving
transitions follow :mod:`zoneinfo`: a wall-clock time that does not exist (the skipped
hour in spring) resolves to the same offset later, a repeated one (autumn) to its first
occurrence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|min|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "min": "minutes", "h": "hours", "d": "days",
          "w": "weeks"}
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_duration(text: str) -> timedelta:
    """``30s``, ``90m``, ``2h``, ``3d``, ``1w`` → timedelta. Raises ValueError with a hint."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration — write a number and a unit, "
                         "e.g. 90m, 2h, 3d or 1w")
    amount, unit = match.groups()
    return timedelta(**{_UNITS[unit]: int(amount)})


def format_duration(delta: timedelta) -> str:
    """The inverse of :func:`parse_duration`."""
    seconds = int(delta.total_seconds())
    if seconds % 60:
        return f"{seconds}s"
    minutes = seconds // 60
    for unit, size in (("w", 7 * 24 * 60), ("d", 24 * 60), ("h", 60)):
        if minutes and minutes % size == 0:
            return f"{minutes // size}{unit}"
    return f"{minutes}m"


def parse_clock(text: str) -> time:
    """``"10:00"`` → time(10, 0). Raises ValueError with a hint."""
    match = _CLOCK.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a time of day — write it as HH:MM, e.g. \"10:00\"")
    return time(int(match.group(1)), int(match.group(2)))


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The IANA timezone ``name``. Raises ValueError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{name!r} is not a known timezone — use an IANA name such as America/New_York"
        ) from None


def at_local(day: date, clock: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock ``clock`` on ``day`` in ``tz``."""
    return datetime.combine(day, clock, tzinfo=tz).astimezone(UTC)


def local(instant: datetime, tz: ZoneInfo) -> datetime:
    """``instant`` as wall-clock time in ``tz``."""
    return instant.astimezone(tz)


@dataclass(frozen=True)
class QuietHours:
    """Messages may be delivered from ``send_from`` until ``send_until``, recipient's local time."""

    send_from: time = time(8, 0)
    send_until: time = time(21, 0)

    def __post_init__(self) -> None:
        if self.send_from >= self.send_until:
            raise ValueError(
                f"quiet hours: send_from {self.send_from:%H:%M} must be before "
                f"send_until {self.send_until:%H:%M}"
            )

    def allows(self, instant: datetime, tz: ZoneInfo) -> bool:
        wall = instant.astimezone(tz).time()
        return self.send_from <= wall < self.send_until

    def next_allowed(self, instant: datetime, tz: ZoneInfo) -> datetime:
        """``instant`` if it is inside the sending window, else the window's next opening."""
        wall = instant.astimezone(tz)
        if self.send_from <= wall.time() < self.send_until:
            return instant
        day = wall.date() if wall.time() < self.send_from else wall.date() + timedelta(days=1)
        return at_local(day, self.send_from, tz)

    def describe(self) -> str:
        return f"{self.send_from:%H:%M}–{self.send_until:%H:%M}"
