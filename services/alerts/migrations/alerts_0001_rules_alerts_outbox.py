"""Alerts: rules, per (account, rule) state, alert history, revisions and offsets,
webhook subscriptions, the delivery outbox and every attempt.

Revision ID: alerts_0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "alerts_0001"
down_revision = None
branch_labels = ("alerts",)
depends_on = None

NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "alerts_consumer_offsets",
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("topic", "partition", name="pk_alerts_consumer_offsets"),
    )
    op.create_table(
        "alerts_accounts_seen",
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("last_revision", sa.BigInteger, nullable=False),
        sa.Column("last_band", sa.Text, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("account_id", name="pk_alerts_accounts_seen"),
    )
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kpi", sa.Text, nullable=False),
        sa.Column("op", sa.Text, nullable=False),
        sa.Column("threshold", JSONB, nullable=False),
        sa.Column("resolve_threshold", JSONB, nullable=True),
        sa.Column("for_evaluations", sa.Integer, nullable=False),
        sa.Column("cooldown_seconds", sa.Float, nullable=False),
        sa.Column("lifecycle_stages", ARRAY(sa.Text), nullable=True),
        sa.Column("respect_grace", sa.Boolean, nullable=False),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_alert_rules"),
    )
    op.create_table(
        "alert_state",
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("rule_id", sa.Text, nullable=False),
        sa.Column("consecutive", sa.Integer, nullable=False),
        sa.Column("open_alert_id", sa.Text, nullable=True),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("account_id", "rule_id", name="pk_alert_state"),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("account_name", sa.Text, nullable=True),
        sa.Column("rule_id", sa.Text, nullable=False),
        sa.Column("rule_name", sa.Text, nullable=False),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Column("kpi", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("value", JSONB, nullable=True),
        sa.Column("threshold", JSONB, nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fired_revision", sa.BigInteger, nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_value", JSONB, nullable=True),
        sa.Column("snapshot", JSONB, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
    )
    op.create_index("ix_alerts_account_fired", "alerts", ["account_id", "fired_at"])
    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("event_types", ARRAY(sa.Text), nullable=False),
        sa.Column("filter_severities", ARRAY(sa.Text), nullable=True),
        sa.Column("filter_rule_ids", ARRAY(sa.Text), nullable=True),
        sa.Column("filter_account_ids", ARRAY(sa.Text), nullable=True),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("disabled_reason", sa.Text, nullable=True),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("previous_secret", sa.Text, nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_subscriptions"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("subscription_id", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("alert_id", sa.Text, nullable=True),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"])
    op.create_index(
        "ix_webhook_deliveries_subscription_id", "webhook_deliveries", ["subscription_id"]
    )
    op.create_table(
        "webhook_delivery_attempts",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("delivery_id", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("duration_seconds", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_delivery_attempts"),
    )
    op.create_index(
        "ix_webhook_delivery_attempts_delivery_id", "webhook_delivery_attempts", ["delivery_id"]
    )


def downgrade() -> None:
    for t in (
        "webhook_delivery_attempts",
        "webhook_deliveries",
        "webhook_subscriptions",
        "alerts",
        "alert_state",
        "alert_rules",
        "alerts_accounts_seen",
        "alerts_consumer_offsets",
    ):
        op.drop_table(t)
