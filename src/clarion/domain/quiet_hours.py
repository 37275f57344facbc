"""Quiet hours: a daily window of local wall-clock time in which non-critical push and email
wait.

A window is `start` to `end` in the user's own time zone, `start` inclusive and `end`
exclusive; a window whose end is earlier than its start crosses midnight (22:00 to 07:00), and
one whose start equals its end is no window at all (so a user can switch off the tenant's
default). What is routed inside the window is held until its end, computed on the real calendar
of the zone: across a daylight-saving change the window's end is the next instant the wall
clock shows `end` (or, when a spring-forward gap swallows that time, the instant the gap ends,
as `zoneinfo` reads a time in a gap with the offset before it).

Pure: the caller passes the current instant.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily window of local time: `start` inclusive, `end` exclusive."""

    start: time
    end: time

    @classmethod
    def parse(cls, start: str, end: str) -> QuietHours:
        """A window from two ``HH:MM`` strings (24-hour clock).

        Raises:
            ValueError: either is not ``HH:MM``.
        """
        return cls(_hhmm(start), _hhmm(end))

    @property
    def empty(self) -> bool:
        """True when start equals end: no time is quiet."""
        return self.start == self.end

    def contains(self, local: time) -> bool:
        """Whether a local wall-clock time falls inside the window."""
        if self.empty:
            return False
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def to_json(self) -> dict[str, str]:
        """As the API shows it: ``{"start": "22:00", "end": "07:00"}``."""
        return {"start": format_hhmm(self.start), "end": format_hhmm(self.end)}


def format_hhmm(value: time) -> str:
    """``HH:MM``."""
    return f"{value.hour:02d}:{value.minute:02d}"


def _hhmm(value: str) -> time:
    found = _HHMM.match(value)
    if found is None:
        raise ValueError(f"{value!r} is not a time of day as HH:MM")
    return time(int(found.group(1)), int(found.group(2)))


def zone_of(*names: str | None) -> tzinfo:
    """The first of `names` that is a known IANA time zone; UTC when none is."""
    for name in names:
        if not name:
            continue
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            continue
    return UTC


def held_until(now: datetime, window: QuietHours | None, zone: tzinfo) -> datetime | None:
    """When what is routed at `now` may go out: the end of the window (aware, UTC) if `now` is
    inside it in `zone`, else None (send at once).

    Args:
        now: an aware instant.
        window: the quiet hours, or None for none.
        zone: the recipient's time zone.
    """
    if window is None or window.empty:
        return None
    local = now.astimezone(zone)
    wall = local.time().replace(tzinfo=None)
    if not window.contains(wall):
        return None
    day = local.date()
    if window.start > window.end and wall >= window.start:
        day += timedelta(days=1)  # crossing midnight, before it: the window ends tomorrow
    end = datetime.combine(day, window.end, tzinfo=zone)
    first = end.replace(fold=0).astimezone(UTC)
    second = end.replace(fold=1).astimezone(UTC)
    if second < first:
        # A spring-forward gap swallowed the end: the window ends when the gap does.
        return _transition(second, first, zone)
    # An autumn end occurs twice: the earlier reading unless `now` is already past it.
    later = [c for c in (first, second) if c > now]
    return min(later) if later else None


def _transition(after: datetime, until: datetime, zone: tzinfo) -> datetime:
    """The first instant in (`after`, `until`] whose UTC offset in `zone` differs from
    `after`'s, to the second (zone transitions fall on whole seconds)."""
    before = after.astimezone(zone).utcoffset()
    low, high = 0, int((until - after).total_seconds())
    while low + 1 < high:
        middle = (low + high) // 2
        if (after + timedelta(seconds=middle)).astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return after + timedelta(seconds=high)
