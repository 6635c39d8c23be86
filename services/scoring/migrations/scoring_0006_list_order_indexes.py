"""Scoring: every order of the accounts list, and its filter menus, read from indexes.

``GET /v1/accounts`` and the dashboard sort by score (either way), by 7-day delta
(either way) or by name (either way). Only worst first had an index
(scoring_0005); the others sorted every matching account for each page: 80–330 ms
a page with 63,000 accounts (two runs), growing with the account count. With the
delta and name indexes (and ``read_model``'s descending reads, which walk an
ascending index backwards) a page of any order reads about a page of index
entries: 1.0–2.8 ms. The indexes on ``csm`` and ``lifecycle_stage`` give the
dashboard's filter menus their distinct values by one index probe each
(``read_model.choices``) instead of reading every account (40 ms with 63,000).

The indexes on scoring_accounts cost score writes nothing: a name, CSM or stage
changes on an ``account_updated`` only, so a batch's update of an account stays a
HOT update. ``ix_scoring_scores_delta`` is one more entry per score write (every
write already updates ``evaluated_at``, which is indexed, so none is a HOT update
either way).

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


    op.execute("CREATE INDEX ix_scoring_accounts_csm ON scoring_accounts (csm)")
    op.execute("CREATE INDEX ix_scoring_accounts_stage ON scoring_accounts (lifecycle_stage)")


def downgrade() -> None:
    op.execute("DROP INDEX ix_scoring_accounts_stage")
    op.execute("DROP INDEX ix_scoring_accounts_csm")
    op.execute("DROP INDEX ix_scoring_accounts_name")
    op.execute("DROP INDEX ix_scoring_scores_delta")
