"""Tables owned by the ingest service (schema changes: services/ingest/migrations)."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Table, Text, func

from shared.db import new_metadata

metadata = new_metadata()

# The account a (Segment) user was last linked to by a group or identify call;
# used to attribute that user's later track/page/screen calls (SPEC §3.2).
user_accounts = Table(
    "ingest_user_accounts",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("account_id", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
