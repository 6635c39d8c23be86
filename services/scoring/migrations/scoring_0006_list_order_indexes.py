"""Scoring: every order of the accounts list read from an index.

``GET /v1/accounts`` and the dashboard sort by score (either way), by 7-day delta
(either way) or by name (either way). Only worst first had an index
(scoring_0005); the others sorted every matching account for each page: 85–330 ms
a page with 63,000 accounts, growing with the account count. With these two
indexes (and ``read_model``'s descending reads, which walk an ascending index
backwards) a page of any order reads about a page of index entries.

``ix_scoring_accounts_name`` costs score writes nothing (a name changes on an
``identify`` only); ``ix_scoring_scores_delta`` is one more entry per score write
(every write already updates ``evaluated_at``, which is indexed, so none is a HOT
update either way).

Revision ID: scoring_0006
"""

from alembic import op

revision = "scoring_0006"
down_revision = "scoring_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX ix_scoring_scores_delta"
        " ON scoring_scores ((COALESCE(score_delta_7d, 1e9)), account_id)"
    )
    op.execute(
        "CREATE INDEX ix_scoring_accounts_name"
        " ON scoring_accounts ((COALESCE(name, account_id)), account_id)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_scoring_accounts_name")
    op.execute("DROP INDEX ix_scoring_scores_delta")
