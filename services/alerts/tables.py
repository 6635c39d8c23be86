"""Tables owned by the alerts service (schema changes: services/alerts/migrations)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from shared.db import new_metadata

metadata = new_metadata()

# Kafka offsets of the health topic, stored in the transaction that applied them.
consumer_offsets = Table(
    "alerts_consumer_offsets",
    metadata,
    Column("topic", Text, primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
)

# Last snapshot revision (and band) seen per account: older or repeated snapshots are skipped.
accounts_seen = Table(
    "alerts_accounts_seen",
    metadata,
    Column("account_id", Text, primary_key=True),
    Column("last_revision", BigInteger, nullable=False),
    Column("last_band", Text, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

rules = Table(
    "alert_rules",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("kpi", Text, nullable=False),
    Column("op", Text, nullable=False),
    Column("threshold", JSONB, nullable=False),
    Column("resolve_threshold", JSONB, nullable=True),
    Column("for_evaluations", Integer, nullable=False),
    Column("cooldown_seconds", Float, nullable=False),
    Column("lifecycle_stages", ARRAY(Text), nullable=True),
    Column("respect_grace", Boolean, nullable=False),
    Column("severity", Text, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("description", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Per (account, rule) state machine (see state_machine.RuleState).
alert_state = Table(
    "alert_state",
    metadata,
    Column("account_id", Text, primary_key=True),
    Column("rule_id", Text, primary_key=True),
    Column("consecutive", Integer, nullable=False),
    Column("open_alert_id", Text, nullable=True),
    Column("fired_at", DateTime(timezone=True), nullable=True),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
)

# History: one row per alert (fired, later resolved).
alerts = Table(
    "alerts",
    metadata,
    Column("id", Text, primary_key=True),
    Column("account_id", Text, nullable=False),
    Column("account_name", Text, nullable=True),
    Column("rule_id", Text, nullable=False),
    Column("rule_name", Text, nullable=False),
    Column("severity", Text, nullable=False),
    Column("kpi", Text, nullable=False),
    Column("status", Text, nullable=False),  # open | resolved
    Column("value", JSONB, nullable=True),
    Column("threshold", JSONB, nullable=False),
    Column("fired_at", DateTime(timezone=True), nullable=False),
    Column("fired_revision", BigInteger, nullable=False),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("resolved_value", JSONB, nullable=True),
    Column("snapshot", JSONB, nullable=False),  # excerpt: score, band, stage, KPIs
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_alerts_account_fired", "account_id", "fired_at"),
)

subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", Text, primary_key=True),
    Column("url", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("event_types", ARRAY(Text), nullable=False),
    Column("filter_severities", ARRAY(Text), nullable=True),
    Column("filter_rule_ids", ARRAY(Text), nullable=True),
    Column("filter_account_ids", ARRAY(Text), nullable=True),
    Column("format", Text, nullable=False),  # standard | slack
    Column("enabled", Boolean, nullable=False),
    Column("disabled_reason", Text, nullable=True),
    Column("secret", Text, nullable=False),
    Column("previous_secret", Text, nullable=True),
    Column("previous_secret_expires_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The outbox: written in the transaction that records the alert. ``id`` is the
# webhook-id (stable across retries and replays).
deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Text, primary_key=True),
    Column("subscription_id", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("alert_id", Text, nullable=True),
    Column("payload", LargeBinary, nullable=False),
    Column("status", Text, nullable=False),  # pending | delivered | failed | disabled
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_subscription_id", "subscription_id"),
)

delivery_attempts = Table(
    "webhook_delivery_attempts",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("delivery_id", Text, nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("attempted_at", DateTime(timezone=True), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("duration_seconds", Float, nullable=False),
)
