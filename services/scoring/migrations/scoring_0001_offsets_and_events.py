"""Scoring: stored consumer offsets, walking-skeleton event table.

Revision ID: scoring_0001
"""
import sqlalchemy as sa
from alembic import op

revision = "scoring_0001"
down_revision = None
branch_labels = ("scoring",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scoring_consumer_offsets",
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("topic", "partition", name="pk_scoring_consumer_offsets"),
    )
    op.create_table(
        "scoring_events_seen",
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_scoring_events_seen"),
    )


def downgrade() -> None:
    op.drop_table("scoring_events_seen")
    op.drop_table("scoring_consumer_offsets")
