"""Tables owned by the scoring service (schema: services/scoring/migrations).

The window tables are bucketed by day so the cost of applying an event never
depends on how much history exists (see docs/scoring.md, "Storage"):

- ``scoring_account_days``   one row per (account, day): counters and sums
- ``scoring_account_users``  one row per (account, user): last active day and a
                             bitmap of its active days back from it
- ``scoring_feature_days``   one row per (account, day, feature used)
- ``scoring_contacts``       one row per (account, contact): role, left_company, …
- ``scoring_contact_days``   one row per (account, day, contact): inbound/outbound touches
- ``scoring_accounts``       one row per account: attributes with their "as of" times
- ``scoring_processed_events`` event ids seen in the last 7 days (dedup)
- ``scoring_scores``         the current score (also the history row of its day)
- ``scoring_history``        one row per (account, earlier day): that day's last score
- ``scoring_days`` (a view)  the daily history: both of the above
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, Table, Text

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
