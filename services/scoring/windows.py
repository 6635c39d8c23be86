"""Window maths over per-day buckets (SPEC §4): pure functions.

A window of ``W`` days as of day ``D`` is the closed range ``D−W+1 … D``. The
storage keeps one bucket per day, so a window aggregate is a sum (or a distinct
count) over the buckets whose day falls in the range. The SQL adapter pushes
the same ranges into its queries (``window_bounds``); these functions are the
reference the property tests check the SQL-shaped maths against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, timedelta


def window_bounds(as_of: date, days: int) -> tuple[date, date]:
    """First and last day (inclusive) of the ``days``-day window ending on ``as_of``."""
    if days < 1:
        raise ValueError("a window has at least one day")
    return as_of - timedelta(days=days - 1), as_of


def in_window(day: date, as_of: date, days: int) -> bool:
    first, last = window_bounds(as_of, days)
    return first <= day <= last


def window_sum(buckets: Mapping[date, float], as_of: date, days: int) -> float:
    """Sum of the buckets of the window (days without a bucket count 0)."""
    return sum(v for d, v in buckets.items() if in_window(d, as_of, days))


def distinct_in_window(activity: Iterable[tuple[str, date]], as_of: date, days: int) -> int:
    """Distinct keys (users, features, contacts) with at least one day in the window."""
    return len({key for key, d in activity if in_window(d, as_of, days)})


def distinct_in_range(activity: Iterable[tuple[str, date]], first: date, last: date) -> int:
    """Distinct keys with a day in ``first … last`` (inclusive)."""
    return len({key for key, d in activity if first <= d <= last})


def daily_distinct_sum(activity: Iterable[tuple[str, date]], as_of: date, days: int) -> int:
    """Σ over the window's days of that day's distinct keys (= distinct (key, day) pairs)."""
    return len({(key, d) for key, d in activity if in_window(d, as_of, days)})


def last_day_on_or_before(days_seen: Iterable[date], as_of: date) -> date | None:
    """The latest day ≤ ``as_of`` (events later than the evaluation day are not yet 'seen')."""
    past = [d for d in days_seen if d <= as_of]
    return max(past) if past else None


def days_since(as_of: date, day: date | None) -> int | None:
    return None if day is None else (as_of - day).days
