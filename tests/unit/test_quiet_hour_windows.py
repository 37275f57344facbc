"""Quiet hours: the window arithmetic (domain/quiet_hours.py)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from clarion.domain.quiet_hours import QuietHours, held_until, zone_of

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
NIGHT = QuietHours.parse("22:00", "07:00")


def at(zone: ZoneInfo, *parts: int) -> datetime:
    return datetime(*parts, tzinfo=zone).astimezone(UTC)  # type: ignore[misc]


def test_a_time_inside_a_window_crossing_midnight_is_held_until_the_next_morning() -> None:
    assert held_until(at(BERLIN, 2026, 6, 1, 23, 30), NIGHT, BERLIN) == at(BERLIN, 2026, 6, 2, 7)


def test_after_midnight_the_window_ends_the_same_morning() -> None:
    assert held_until(at(BERLIN, 2026, 6, 2, 3, 0), NIGHT, BERLIN) == at(BERLIN, 2026, 6, 2, 7)


def test_outside_the_window_nothing_is_held() -> None:
    assert held_until(at(BERLIN, 2026, 6, 2, 12, 0), NIGHT, BERLIN) is None


def test_the_start_is_inside_and_the_end_is_outside() -> None:
    assert held_until(at(BERLIN, 2026, 6, 1, 22, 0), NIGHT, BERLIN) == at(BERLIN, 2026, 6, 2, 7)
    assert held_until(at(BERLIN, 2026, 6, 2, 7, 0), NIGHT, BERLIN) is None
    just_before = at(BERLIN, 2026, 6, 2, 7, 0) - timedelta(microseconds=1)
    assert held_until(just_before, NIGHT, BERLIN) == at(BERLIN, 2026, 6, 2, 7)


def test_a_window_within_one_day() -> None:
    lunch = QuietHours.parse("12:00", "13:30")
    assert held_until(at(NEW_YORK, 2026, 1, 5, 12, 10), lunch, NEW_YORK) == at(
        NEW_YORK, 2026, 1, 5, 13, 30
    )
    assert held_until(at(NEW_YORK, 2026, 1, 5, 11, 59), lunch, NEW_YORK) is None
    assert held_until(at(NEW_YORK, 2026, 1, 5, 23, 0), lunch, NEW_YORK) is None


def test_start_equal_to_end_is_no_window() -> None:
    never = QuietHours.parse("08:00", "08:00")
    assert never.empty
    assert held_until(at(BERLIN, 2026, 6, 1, 8, 0), never, BERLIN) is None
    assert held_until(at(BERLIN, 2026, 6, 1, 8, 0), None, BERLIN) is None


def test_the_window_is_read_in_the_users_zone() -> None:
    now = datetime(2026, 6, 1, 23, 0, tzinfo=UTC)  # 01:00 in Berlin, 19:00 in New York
    assert held_until(now, NIGHT, BERLIN) == at(BERLIN, 2026, 6, 2, 7)
    assert held_until(now, NIGHT, NEW_YORK) is None


def test_the_night_the_clocks_go_forward_is_an_hour_shorter() -> None:
    # Berlin, 29 March 2026: 02:00 CET becomes 03:00 CEST.
    until = held_until(at(BERLIN, 2026, 3, 28, 23, 0), NIGHT, BERLIN)
    assert until == datetime(2026, 3, 29, 5, 0, tzinfo=UTC)  # 07:00 CEST
    assert until - at(BERLIN, 2026, 3, 28, 23, 0) == timedelta(hours=7)


def test_the_night_the_clocks_go_back_is_an_hour_longer() -> None:
    # Berlin, 25 October 2026: 03:00 CEST becomes 02:00 CET.
    until = held_until(at(BERLIN, 2026, 10, 24, 23, 0), NIGHT, BERLIN)
    assert until == datetime(2026, 10, 25, 6, 0, tzinfo=UTC)  # 07:00 CET
    assert until - at(BERLIN, 2026, 10, 24, 23, 0) == timedelta(hours=9)


def test_an_end_the_spring_gap_swallows_ends_with_the_gap() -> None:
    window = QuietHours.parse("22:00", "02:30")
    now = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # 01:30 CET
    assert held_until(now, window, BERLIN) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_an_end_that_occurs_twice_ends_at_its_first_occurrence() -> None:
    window = QuietHours.parse("22:00", "02:30")
    first = datetime(2026, 10, 25, 0, 10, tzinfo=UTC)  # 02:10 CEST
    assert held_until(first, window, BERLIN) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    # 02:10 CET, the second time round, is inside again, until 02:30 CET.
    second = datetime(2026, 10, 25, 1, 10, tzinfo=UTC)
    assert held_until(second, window, BERLIN) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)


def test_unknown_zones_fall_back_in_order_then_to_utc() -> None:
    assert zone_of(None, "Europe/Berlin") == BERLIN
    assert zone_of("Not/AZone", "America/New_York") == NEW_YORK
    assert zone_of(None, None) is UTC
    assert zone_of("", "nonsense") is UTC


@pytest.mark.parametrize("value", ["7:00", "24:00", "12:60", "noon", "12:00:00", ""])
def test_a_time_that_is_not_hh_mm_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        QuietHours.parse(value, "08:00")


def test_a_window_shows_as_hh_mm() -> None:
    assert NIGHT.to_json() == {"start": "22:00", "end": "07:00"}


ZONES = [
    UTC,
    BERLIN,
    NEW_YORK,
    ZoneInfo("Australia/Lord_Howe"),  # a half-hour DST shift
    ZoneInfo("Asia/Kathmandu"),
    ZoneInfo("America/Santiago"),
]
instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)
times = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))


@settings(max_examples=400, deadline=None)
@given(now=instants, start=times, end=times, zone=st.sampled_from(ZONES))
def test_a_hold_ends_after_now_within_a_day_and_outside_the_window(
    now: datetime, start: time, end: time, zone: ZoneInfo
) -> None:
    window = QuietHours(start, end)
    until = held_until(now, window, zone)
    inside = window.contains(now.astimezone(zone).time().replace(tzinfo=None))
    assert (until is not None) == inside
    if until is None:
        return
    assert now < until <= now + timedelta(hours=25)
    assert until.tzinfo is UTC
    # At the end the user is out of the window, and just before it still in.
    assert not window.contains(until.astimezone(zone).time())
    before = (until - timedelta(seconds=1)).astimezone(zone).time()
    assert window.contains(before)
