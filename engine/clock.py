"""The one clock seam.

Every piece of Touchpoint asks :func:`now` for the current instant; nothing calls
``datetime.now()`` or relies on the database's ``CURRENT_TIMESTAMP``. Tests move time
with freezegun (which this function honours) and the simulator moves it with
:func:`travel_to` / :func:`set_now`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

_fixed: datetime | None = None


def now() -> datetime:
    """The current instant, timezone-aware, in UTC."""
    if _fixed is not None:
        return _fixed
    return datetime.now(UTC)


def pinned() -> datetime | None:
    """The instant the clock is pinned at, if any."""
    return _fixed


def set_now(instant: datetime | None) -> None:
    """Pin the clock at ``instant`` (aware), or release it with ``None``."""
    global _fixed
    if instant is not None and instant.tzinfo is None:
        raise ValueError("the clock only accepts timezone-aware instants")
    _fixed = instant.astimezone(UTC) if instant is not None else None


@contextmanager
def travel_to(instant: datetime) -> Iterator[None]:
    """Pin the clock at ``instant`` for the duration of a ``with`` block."""
    previous = _fixed
    set_now(instant)
    try:
        yield
    finally:
        set_now(previous)
