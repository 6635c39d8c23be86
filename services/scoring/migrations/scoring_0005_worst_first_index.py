"""Scoring: the accounts list's default order (worst first) read from an index.

``GET /v1/accounts`` and the dashboard list accounts by ``COALESCE(score, 1e9)``
then ``account_id`` (``read_model.SORTS["score"]``; unscored accounts last) and
page by that key. The plain index on ``score`` served neither that expression
nor the tie-break, so every page sorted every account (118 ms per page with 63,000
accounts, on disk); this index returns a page by reading it (under 1 ms). It
replaces the ``score`` index, which no query used, so a score write maintains as
many indexes as before.

Revision ID: scoring_0005
"""
from alembic import op

revision = "scoring_0005"
down_revision = "scoring_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX ix_scoring_scores_score")
    op.execute(
        "CREATE INDEX ix_scoring_scores_worst_first"
        " ON scoring_scores ((COALESCE(score, 1e9)), account_id)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_scoring_scores_worst_first")
    op.execute("CREATE INDEX ix_scoring_scores_score ON scoring_scores (score)")
