"""The wall clock, the one real `Clock`."""

from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    """UTC time from the operating system."""

    def now(self) -> datetime:
        """The current time, UTC."""
        return datetime.now(UTC)
