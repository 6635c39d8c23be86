"""Ingest metrics (SPEC §9)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.metrics import LATENCY_BUCKETS

EVENTS = Counter(
    "healthscore_ingest_events",
    "Events received by ingest, by type and outcome (accepted, rejected, failed).",
    ["type", "outcome"],
)
PUBLISH_DURATION = Histogram(
    "healthscore_ingest_publish_duration_seconds",
    "Time from handing a request's events to Kafka to the last acks=all acknowledgement.",
    buckets=LATENCY_BUCKETS,
)
