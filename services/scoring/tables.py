"""Tables owned by the scoring service (schema changes: services/scoring/migrations)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Integer, Table, Text

from shared.db import new_metadata

metadata = new_metadata()

# Kafka offsets stored with the state they produced (same transaction): on
# assignment the consumer seeks here, so a redelivered batch is never applied twice.
consumer_offsets = Table(
    "scoring_consumer_offsets",
    metadata,
    Column("topic", Text, primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
)

# Walking skeleton: every consumed event, by id (the scoring issue replaces this
# with the rolling windows).
events_seen = Table(
    "scoring_events_seen",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("account_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)
