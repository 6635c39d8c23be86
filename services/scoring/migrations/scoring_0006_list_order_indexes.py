"""Scoring: every order of the accounts list, and its filter menus, read from indexes.

``GET /v1/accounts`` and the dashboard sort by score, by 7-day delta or by name,
each either way, nulls last. Only worst first had an index (scoring_0005); the
others sorted every matching account for each page: 80–330 ms a page with 63,000
accounts (two runs), growing with the account count. With these indexes (a
descending order reads one backwards) a page of any order reads about a page of
index entries: 1.1–2.3 ms (page 1 and page 202, any filter but one at the far
end of the order: docs/scoring.md).

The score and delta indexes are partial — the valued rows by (value, account_id),
the null ones by account_id — for two reasons: the nulls come last in either
direction from an index of their own, and no query that does not ask for those
rows can use them. An index whose second column is account_id can otherwise be
chosen for a lookup by ``account_id = ANY(...)``, which then scans all of it: the
evaluation's window read did, on the delta index, while every delta was still null
(a new deployment's first week): 16 instead of 5 ms for 1,000 accounts. The
scoring_0005 index is replaced by the score pair for the same reason.

The indexes on ``csm`` and ``lifecycle_stage`` give the dashboard's filter menus
their distinct values by one index probe each (``read_model.choices``) instead of
reading every account (40 ms with 63,000).

The indexes on scoring_accounts cost score writes nothing: a name, CSM or stage
changes on an ``account_updated`` only, so a batch's update of an account stays a
HOT update. A score write updates one index of each pair, one entry more than
before (every write already updates ``evaluated_at``, which is indexed, so none
is a HOT update either way).

Revision ID: scoring_0006
"""

from alembic import op

revision = "scoring_0006"
down_revision = "scoring_0005"
branch_labels = None
depends_on = None

_INDEXES = (
    "ix_scoring_scores_by_score ON scoring_scores (score, account_id) WHERE score IS NOT NULL",
    "ix_scoring_scores_no_score ON scoring_scores (account_id) WHERE score IS NULL",
    "ix_scoring_scores_by_delta ON scoring_scores (score_delta_7d, account_id)"
    " WHERE score_delta_7d IS NOT NULL",
    "ix_scoring_scores_no_delta ON scoring_scores (account_id) WHERE score_delta_7d IS NULL",
    "ix_scoring_accounts_name ON scoring_accounts ((COALESCE(name, account_id)), account_id)",
    "ix_scoring_accounts_csm ON scoring_accounts (csm)",
    "ix_scoring_accounts_stage ON scoring_accounts (lifecycle_stage)",
)


def upgrade() -> None:
    op.execute("DROP INDEX ix_scoring_scores_worst_first")
    for index in _INDEXES:
        op.execute(f"CREATE INDEX {index}")


def downgrade() -> None:
    for index in _INDEXES:
        op.execute(f"DROP INDEX {index.split()[0]}")
    op.execute(
        "CREATE INDEX ix_scoring_scores_worst_first"
        " ON scoring_scores ((COALESCE(score, 1e9)), account_id)"
    )
