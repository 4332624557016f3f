"""engine/timing.py: durations, clock times, timezones and quiet hours (incl. DST days)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from engine.timing import (
    QuietHours,
    at_local,
    format_duration,
    parse_clock,
    parse_duration,
    zone,
)

CHICAGO = ZoneInfo("America/Chicago")
MADRID = ZoneInfo("Europe/Madrid")
KOLKATA = ZoneInfo("Asia/Kolkata")  # UTC+05:30, no DST


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(("text", "expected"), [
    ("90m", timedelta(minutes=90)),
    ("15min", timedelta(minutes=15)),
    (" 15 min ", timedelta(minutes=15)),
    ("2h", timedelta(hours=2)),
    ("3d", timedelta(days=3)),
    ("1w", timedelta(weeks=1)),
    ("0m", timedelta(0)),
])
def test_parse_duration_reads_a_number_and_a_unit(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "2", "h", "2 hours", "1.5h", "-1h", "2H", "2h30m", "3 days"])
def test_parse_duration_refuses_anything_else_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration") as caught:
        parse_duration(text)
    assert str(caught.value) == (f"{text!r} is not a duration — write a number and a unit, "
                                 "e.g. 90m, 2h, 3d or 1w")


@pytest.mark.parametrize(("delta", "text"), [
    (timedelta(minutes=90), "90m"),
    (timedelta(hours=2), "2h"),
    (timedelta(hours=25), "25h"),
    (timedelta(days=3), "3d"),
    (timedelta(days=14), "2w"),
    (timedelta(weeks=1), "1w"),
    (timedelta(0), "0m"),
    (timedelta(days=30), "30d"),
])
def test_format_duration_writes_the_largest_whole_unit(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text
    assert parse_duration(text) == delta


@pytest.mark.parametrize("text", ["90m", "2h", "36h", "3d", "30d", "1w", "52w", "1m", "0m"])
def test_what_format_duration_writes_parses_back_to_the_same_text(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


def test_equal_durations_written_differently_format_the_same() -> None:
    assert {format_duration(parse_duration(t)) for t in ("720h", "30d", "43200m")} == {"30d"}
    assert {format_duration(parse_duration(t)) for t in ("7d", "168h", "1w")} == {"1w"}


# --------------------------------------------------------------------------- clock times


@pytest.mark.parametrize(("text", "expected"), [
    ("10:00", time(10, 0)),
    ("7:05", time(7, 5)),
    ("07:05", time(7, 5)),
    ("00:00", time(0, 0)),
    ("23:59", time(23, 59)),
    (" 18:30 ", time(18, 30)),
])
def test_parse_clock_reads_hh_mm(text: str, expected: time) -> None:
    assert parse_clock(text) == expected


@pytest.mark.parametrize("text", ["24:00", "10:60", "10", "10:0", "10.00", "10am", "ten", "",
                                  "10:00:00", "-1:00"])
def test_parse_clock_refuses_anything_else_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="is not a time of day") as caught:
        parse_clock(text)
    assert str(caught.value) == (f"{text!r} is not a time of day — write it as HH:MM, "
                                 'e.g. "10:00"')


# --------------------------------------------------------------------------- timezones


def test_zone_returns_the_iana_zone() -> None:
    assert zone("America/Chicago") == CHICAGO
    assert zone("Europe/Madrid").key == "Europe/Madrid"


@pytest.mark.parametrize("name", ["Mars/Olympus", "america/chicago", "CST6", "", "../etc/passwd"])
def test_zone_names_an_unknown_timezone_and_suggests_the_form(name: str) -> None:
    with pytest.raises(ValueError, match="is not a known timezone") as caught:
        zone(name)
    assert str(caught.value) == (f"{name!r} is not a known timezone — use an IANA name such "
                                 "as America/New_York")


@pytest.mark.parametrize(("day", "clock", "tz", "expected"), [
    (date(2026, 10, 31), time(10, 0), CHICAGO, "2026-10-31T15:00:00Z"),  # CDT
    (date(2026, 11, 1), time(10, 0), CHICAGO, "2026-11-01T16:00:00Z"),  # CST, the day itself
    (date(2026, 3, 8), time(10, 0), CHICAGO, "2026-03-08T15:00:00Z"),  # CDT, the day itself
    (date(2026, 10, 25), time(10, 0), MADRID, "2026-10-25T09:00:00Z"),  # CET
    (date(2026, 10, 24), time(10, 0), MADRID, "2026-10-24T08:00:00Z"),  # CEST
    (date(2026, 3, 8), time(2, 30), CHICAGO, "2026-03-08T08:30:00Z"),  # does not exist: 03:30
    (date(2026, 11, 1), time(1, 30), CHICAGO, "2026-11-01T06:30:00Z"),  # twice: the first
])
def test_at_local_is_the_wall_clock_time_in_that_zone(day: date, clock: time, tz: ZoneInfo,
                                                      expected: str) -> None:
    instant = at_local(day, clock, tz)
    assert instant == utc(expected)
    assert instant.tzinfo is UTC


# --------------------------------------------------------------------------- quiet hours


@pytest.mark.parametrize(("instant", "tz", "allowed", "next_open"), [
    # Chicago, an ordinary day (CDT)
    ("2026-10-14T07:59:59-05:00", CHICAGO, False, "2026-10-14T08:00:00-05:00"),
    ("2026-10-14T08:00:00-05:00", CHICAGO, True, "2026-10-14T08:00:00-05:00"),  # from: inclusive
    ("2026-10-14T13:00:00-05:00", CHICAGO, True, "2026-10-14T13:00:00-05:00"),
    ("2026-10-14T20:59:59-05:00", CHICAGO, True, "2026-10-14T20:59:59-05:00"),
    ("2026-10-14T21:00:00-05:00", CHICAGO, False, "2026-10-15T08:00:00-05:00"),  # until: excl.
    ("2026-10-14T23:30:00-05:00", CHICAGO, False, "2026-10-15T08:00:00-05:00"),
    ("2026-10-15T00:30:00-05:00", CHICAGO, False, "2026-10-15T08:00:00-05:00"),
    # the night DST ends in Chicago: the morning opens at 08:00 CST, 25 hours later
    ("2026-10-31T22:00:00-05:00", CHICAGO, False, "2026-11-01T08:00:00-06:00"),
    ("2026-11-01T01:30:00-05:00", CHICAGO, False, "2026-11-01T08:00:00-06:00"),  # 1st 01:30
    ("2026-11-01T01:30:00-06:00", CHICAGO, False, "2026-11-01T08:00:00-06:00"),  # 2nd 01:30
    ("2026-11-01T08:00:00-06:00", CHICAGO, True, "2026-11-01T08:00:00-06:00"),
    ("2026-11-01T21:00:00-06:00", CHICAGO, False, "2026-11-02T08:00:00-06:00"),
    # the night DST starts: 02:00–03:00 does not exist
    ("2026-03-08T01:30:00-06:00", CHICAGO, False, "2026-03-08T08:00:00-05:00"),
    ("2026-03-08T03:30:00-05:00", CHICAGO, False, "2026-03-08T08:00:00-05:00"),
    ("2026-03-08T07:59:00-05:00", CHICAGO, False, "2026-03-08T08:00:00-05:00"),
    # Madrid ends DST a week before Chicago
    ("2026-10-25T02:30:00+02:00", MADRID, False, "2026-10-25T08:00:00+01:00"),
    ("2026-10-25T08:00:00+01:00", MADRID, True, "2026-10-25T08:00:00+01:00"),
    ("2026-10-25T21:00:00+01:00", MADRID, False, "2026-10-26T08:00:00+01:00"),
    # a half-hour offset: 02:00 UTC is 07:30 in Kolkata
    ("2026-10-14T02:00:00Z", KOLKATA, False, "2026-10-14T08:00:00+05:30"),
    ("2026-10-14T02:30:00Z", KOLKATA, True, "2026-10-14T02:30:00Z"),
    ("2026-10-14T15:30:00Z", KOLKATA, False, "2026-10-15T08:00:00+05:30"),  # 21:00 there
])
def test_quiet_hours_allow_eight_to_nine_in_the_recipients_timezone(
        instant: str, tz: ZoneInfo, allowed: bool, next_open: str) -> None:
    hours = QuietHours()
    moment = utc(instant)
    assert hours.allows(moment, tz) is allowed
    assert hours.next_allowed(moment, tz) == utc(next_open)
    assert hours.allows(hours.next_allowed(moment, tz), tz)


def test_the_same_instant_is_night_for_one_recipient_and_day_for_another() -> None:
    moment = utc("2026-10-14T13:30:00Z")  # 08:30 in Chicago, 15:30 in Madrid, 19:00 in Kolkata
    hours = QuietHours(time(9, 0), time(18, 0))
    assert hours.allows(moment, MADRID)
    assert not hours.allows(moment, CHICAGO)
    assert not hours.allows(moment, KOLKATA)
    assert hours.next_allowed(moment, CHICAGO) == utc("2026-10-14T09:00:00-05:00")
    assert hours.next_allowed(moment, KOLKATA) == utc("2026-10-15T09:00:00+05:30")
    assert hours.next_allowed(moment, MADRID) == moment


def test_next_allowed_returns_utc() -> None:
    opened = QuietHours().next_allowed(utc("2026-10-14T02:00:00Z"), CHICAGO)
    assert opened.tzinfo is UTC
    assert opened == utc("2026-10-14T13:00:00Z")


@pytest.mark.parametrize(("send_from", "send_until"), [
    (time(21, 0), time(8, 0)),
    (time(9, 0), time(9, 0)),
    (time(22, 0), time(21, 0)),
])
def test_quiet_hours_refuse_a_window_that_ends_before_it_starts(send_from: time,
                                                               send_until: time) -> None:
    with pytest.raises(ValueError, match="must be before") as caught:
        QuietHours(send_from, send_until)
    assert str(caught.value) == (f"quiet hours: send_from {send_from:%H:%M} must be before "
                                 f"send_until {send_until:%H:%M}")


def test_quiet_hours_default_to_eight_until_nine_and_describe_themselves() -> None:
    assert QuietHours() == QuietHours(time(8, 0), time(21, 0))
    assert QuietHours().describe() == "08:00–21:00"
    assert QuietHours(time(9, 30), time(20, 0)).describe() == "09:30–20:00"
