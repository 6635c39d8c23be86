"""Scoring: evaluation decoupled from event application.

``scoring_accounts.applied_seq`` counts the batches applied to an account (bumped
under the account's row lock, in the batch transaction); ``scoring_scores.
evaluated_seq`` is the ``applied_seq`` its evaluation read. An account whose
``applied_seq`` is ahead has events not yet reflected in its score: the evaluator
finds such accounts after a crash or a rebalance.

Revision ID: scoring_0002
"""
from alembic import op

revision = "scoring_0002"
down_revision = "scoring_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE scoring_accounts ADD COLUMN applied_seq bigint NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE scoring_scores ADD COLUMN evaluated_seq bigint NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE scoring_scores DROP COLUMN evaluated_seq")
    op.execute("ALTER TABLE scoring_accounts DROP COLUMN applied_seq")
