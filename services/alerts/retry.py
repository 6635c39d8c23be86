"""When to try a webhook delivery again (SPEC §7). Pure.

The schedule is a list of delays in seconds, one per attempt: the first entry is
the delay before the first attempt (normally 0), so ``len(schedule)`` attempts are
made in all. Delays get ±``jitter`` (a fraction) so a receiver coming back is not
hit by every retry at once. A ``Retry-After`` from the receiver is honoured — the
next attempt is not earlier than it asks — but clamped to ``retry_after_max``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

DEFAULT_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


def parse_schedule(text: str) -> tuple[float, ...]:
    """``"0,5,300"`` → (0.0, 5.0, 300.0). Raises ValueError on bad input."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("the retry schedule needs at least one delay")
    delays = tuple(float(p) for p in parts)
    if any(d < 0 for d in delays):
        raise ValueError("retry delays cannot be negative")
    return delays


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.1
    retry_after_max: float = 3600.0

    @property
    def max_attempts(self) -> int:
        return len(self.schedule)

    def next_delay(
        self, attempts_made: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float | None:
        """Seconds until the next attempt after ``attempts_made`` failed ones, or
        None when there is none left (the delivery is then ``failed``)."""
        if attempts_made >= len(self.schedule):
            return None
        base = self.schedule[attempts_made]
        r = rng or random
        delay = base * (1 + r.uniform(-self.jitter, self.jitter)) if base > 0 else 0.0
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max))
        return delay
