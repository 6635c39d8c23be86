"""Scoring: today's history row is the current score row.

Before, every evaluation wrote its result twice: the current score
(``scoring_scores``) and the day's history row (``scoring_history``), the same
wide row. Now an evaluation writes the current row only, and the row of an
earlier day moves to ``scoring_history`` when the account's first evaluation of
a later day replaces it (``store.save_scores``; every account with activity is
evaluated at least once per UTC day, so a day's last evaluation is kept). Past
days re-evaluated by ``healthscore rescore`` are written to ``scoring_history``
directly.

``scoring_days`` is the one place the daily history is read from: one row per
(account, day), the later evaluation when a day is in both tables (a rescore of
the day the current row is still on, or rows written by earlier versions, which
wrote today's row to both).

Revision ID: scoring_0004
"""
from alembic import op

revision = "scoring_0004"
down_revision = "scoring_0003"
branch_labels = None
depends_on = None

_COLUMNS = "evaluated_at, score, band, coverage, model_version, in_grace_period, kpis, measures"


def upgrade() -> None:
    s = ", ".join(f"s.{c}" for c in _COLUMNS.split(", "))
    h = ", ".join(f"h.{c}" for c in _COLUMNS.split(", "))
    op.execute(
        f"""CREATE VIEW scoring_days AS
        SELECT s.account_id, s.as_of AS day, {s} FROM scoring_scores s
        WHERE NOT EXISTS (SELECT 1 FROM scoring_history h WHERE h.account_id = s.account_id
                          AND h.day = s.as_of AND h.evaluated_at > s.evaluated_at)
        UNION ALL
        SELECT h.account_id, h.day, {h} FROM scoring_history h
        WHERE NOT EXISTS (SELECT 1 FROM scoring_scores s WHERE s.account_id = h.account_id
                          AND s.as_of = h.day AND s.evaluated_at >= h.evaluated_at)"""
    )


def downgrade() -> None:
    # the earlier versions read history from scoring_history alone: give it the
    # current rows' days back
    op.execute(
        f"""INSERT INTO scoring_history AS t (account_id, day, {_COLUMNS})
        SELECT account_id, as_of, {_COLUMNS} FROM scoring_scores
        ON CONFLICT (account_id, day) DO UPDATE SET
          {", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS.split(", "))}
        WHERE t.evaluated_at < EXCLUDED.evaluated_at"""
    )
    op.execute("DROP VIEW scoring_days")
