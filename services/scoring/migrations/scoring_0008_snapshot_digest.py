"""Scoring: each current score remembers a digest of the snapshot it published.

An evaluation publishes a new snapshot (a new revision) when what the snapshot
says changed. Only the score, band and KPIs were compared, so a 7-day delta that
moved on its own (the score of 7 days ago changed, not today's), a grace period
that ended, a new model version, or an account renamed or moved to another
lifecycle stage by an ``account_updated`` reached neither the stored revision nor
the alerts service: a "score dropped 15 points in 7 days" rule did not fire, and
stage filters used the old stage. ``snapshot_digest`` is a 64-bit digest of every
field of the snapshot but its time stamps and revision (``evaluation.digest``);
rows written before it (NULL) are compared as before, once.

Adding a nullable column rewrites nothing; the previous release ignores it (a
score it writes keeps an old digest, which at worst publishes one snapshot more).

Revision ID: scoring_0008
"""

from alembic import op

revision = "scoring_0008"
down_revision = "scoring_0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE scoring_scores ADD COLUMN snapshot_digest bigint")


def downgrade() -> None:
    op.execute("ALTER TABLE scoring_scores DROP COLUMN snapshot_digest")
