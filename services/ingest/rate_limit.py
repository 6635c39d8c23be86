"""Per-key request rate limits: a token bucket per API key (pure, no I/O).

A key with ``rate_limit_per_second = r`` may make ``r`` requests per second on
average, with bursts of up to ``max(1, r)`` requests. The buckets live in the
memory of one ingest process: with N processes behind a load balancer a key can
reach up to N × r. Keys without a limit are never tracked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens added per second
    capacity: float  # most tokens it can hold (the burst)
    tokens: float
    updated: float  # monotonic seconds of the last refill

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens at time ``now``; returns 0.0 when allowed, else the
        seconds to wait until they would be available (nothing is taken)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


@dataclass
class RateLimiter:
    """Buckets by key id. ``check`` answers how long a caller must wait (0 = go)."""

    max_keys: int = 100_000
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def check(self, key_id: str, rate: float | None, now: float) -> float:
        if rate is None or rate <= 0:
            return 0.0
        bucket = self._buckets.get(key_id)
        if bucket is None or bucket.rate != rate:
            if len(self._buckets) >= self.max_keys:
                self._buckets.clear()  # bounded memory; a reset only forgives
            capacity = max(1.0, rate)
            bucket = TokenBucket(rate, capacity, capacity, now)
            self._buckets[key_id] = bucket
        return bucket.take(now)


def retry_after_header(wait_seconds: float) -> str:
    """``Retry-After`` is whole seconds; never 0 for a refused request."""
    return str(max(1, math.ceil(wait_seconds)))
