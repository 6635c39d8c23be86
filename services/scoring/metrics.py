"""Scoring metrics (SPEC §9)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS

EVENTS = Counter(
    "healthscore_scoring_events",
    "Events consumed by scoring, by topic and outcome (applied, duplicate, dead_lettered).",
    ["topic", "outcome"],
)
BATCH_DURATION = Histogram(
    "healthscore_scoring_batch_duration_seconds",
    "Time from decoding one consumed batch to its windows and offsets committed.",
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "healthscore_scoring_batch_size_events",
    "Events per consumed batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
CONSUMER_LAG = Gauge(
    "healthscore_scoring_consumer_lag_events",
    "Events on the broker not yet applied, per partition (highwater − position).",
    ["topic", "partition"],
)
EVENT_TO_SCORE = Histogram(
    "healthscore_scoring_event_to_score_seconds",
    "From event accepted at ingest to its account's score committed.",
    buckets=LATENCY_BUCKETS,
)
ACCOUNTS_SCORED = Counter(
    "healthscore_scoring_accounts_scored",
    "Account evaluations committed, by trigger (events, sweep, rescore).",
    ["trigger"],
)
REBALANCES = Counter(
    "healthscore_scoring_rebalances",
    "Consumer group partition assignments received.",
)
PENDING_ACCOUNTS = Gauge(
    "healthscore_scoring_pending_accounts",
    "Accounts whose windows took events that their score does not show yet.",
)
