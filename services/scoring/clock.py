"""The one clock of the scoring service.

Everything that asks "what time is it?" (the day KPIs are computed as of, the
sweep's staleness test, evaluation timestamps) asks a :class:`Clock`. Tests
control it: in-process by passing a :class:`FixedClock`, across processes with
the test-only settings ``HEALTHSCORE_NOW`` (a fixed instant) or
``HEALTHSCORE_CLOCK_OFFSET_SECONDS`` (real time shifted).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...


class SystemClock:
    """Real time, optionally shifted by ``offset`` (test-only)."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


class FixedClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, at: datetime) -> None:
        self.at = at.astimezone(UTC)

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> None:
        self.at += delta


def today(clock: Clock) -> date:
    return clock.now().astimezone(UTC).date()
