"""Scoring: storage settings for the small, update-heavy tables.

``scoring_accounts`` and ``scoring_published`` take an update per batch or
evaluation of each account, ``scoring_scores`` one per evaluation,
``scoring_consumer_offsets`` one per batch. Free space in each page (fillfactor)
lets PostgreSQL update a row in place (a HOT update, no new index entries) and
autovacuum after 2 % of dead rows instead of 20 % keeps them from bloating under
sustained load.

Revision ID: scoring_0003
"""
from alembic import op

revision = "scoring_0003"
down_revision = "scoring_0002"
branch_labels = None
depends_on = None

TABLES = {
    "scoring_accounts": 70,
    "scoring_scores": 70,
    "scoring_published": 50,
    "scoring_consumer_offsets": 50,
}


def upgrade() -> None:
    for table, fillfactor in TABLES.items():
        op.execute(
            f"ALTER TABLE {table} SET (fillfactor = {fillfactor},"
            " autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02,"
            " autovacuum_vacuum_cost_delay = 0)"
        )


def downgrade() -> None:
    for table in TABLES:
        op.execute(
            f"ALTER TABLE {table} RESET (fillfactor, autovacuum_vacuum_scale_factor,"
            " autovacuum_analyze_scale_factor, autovacuum_vacuum_cost_delay)"
        )
