"""Alerts metrics (SPEC §9). The ``rule`` label is the rule id (bounded: rules are
configuration, not data)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS

ALERTS = Counter(
    "healthscore_alerts",
    "Alert transitions, by rule id and transition (fired, resolved, band_changed).",
    ["rule", "transition"],
)
DELIVERIES = Counter(
    "healthscore_webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, failed_retrying, failed, gone, refused).",
    ["outcome"],
)
ATTEMPT_DURATION = Histogram(
    "healthscore_webhook_attempt_duration_seconds",
    "Duration of one webhook HTTP attempt.",
    buckets=LATENCY_BUCKETS,
)
OUTBOX_PENDING = Gauge(
    "healthscore_webhook_outbox_pending",
    "Deliveries in the outbox not yet delivered or given up.",
)
ALERT_TO_DELIVERY = Histogram(
    "healthscore_alert_to_delivery_seconds",
    "From an alert recorded to its webhook delivered (first success).",
    buckets=LATENCY_BUCKETS,
)
DEAD_LETTERED = Counter(
    "healthscore_alerts_dead_lettered",
    "Health-topic messages that could not be decoded and went to the dead-letter topic.",
)
