"""Scoring: one row per (account, user) with a bitmap of its active days, instead
of one row per (account, day, user).

An evaluation counted DAU, WAU, MAU, the users of days 28–34 and Σ daily distinct
users over every (day, user) row of its 35-day window: an account with 300 daily
users read ~7,000 rows each time it was scored (5.9 ms; 12 ms with 1,000 users).
``scoring_account_users`` holds each user's last active day and a 448-bit map of
its active days back from it (bit 0 = that day; 448 > the 400 days retained + the
34 days a window reaches back, so ``healthscore rescore`` of any retained day reads
it too). An evaluation reads one row per user active in its window, and the
counts come from the bits (docs/scoring.md, "Storage"). Σ daily distinct users
(stickiness) comes from the same bits, so ``scoring_account_days.active_users``
is no longer kept up to date by this release.

Backwards compatible for one release (``shared.migrate.check_migrated``): the old
table and column stay for scoring processes of the previous release that still run
during a rolling upgrade, and a trigger copies every row they add to
``scoring_user_days`` into the bitmaps, so no activity they apply is lost. Their own
evaluations meanwhile read the old table, which this release no longer writes:
scores they publish during the rollout may miss this release's activity until the
account is scored again by the new release (its next event, or the sweep). The next
schema change that needs it drops the old table, the trigger and the column.

Needs PostgreSQL 14 or later (``bit_count``).

Revision ID: scoring_0007
"""

from alembic import op

revision = "scoring_0007"
down_revision = "scoring_0006"
branch_labels = None
depends_on = None

BITS = 448
_MERGE = """
    days = CASE WHEN EXCLUDED.last_day >= t.last_day
                THEN (t.days >> (EXCLUDED.last_day - t.last_day)) | EXCLUDED.days
                ELSE t.days | (EXCLUDED.days >> (t.last_day - EXCLUDED.last_day)) END,
    last_day = GREATEST(t.last_day, EXCLUDED.last_day)"""


def upgrade() -> None:
    op.execute(
        f"""CREATE TABLE scoring_account_users (
              account_id text NOT NULL,
              user_id text NOT NULL,
              last_day date NOT NULL,
              days bit({BITS}) NOT NULL,
              CONSTRAINT pk_scoring_account_users PRIMARY KEY (account_id, user_id))
            WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,
                  autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0)"""
    )
    op.execute(
        f"""INSERT INTO scoring_account_users (account_id, user_id, last_day, days)
            SELECT u.account_id, u.user_id, m.last_day,
                   bit_or(B'1'::varbit::bit({BITS}) >> (m.last_day - u.day))
            FROM scoring_user_days u
            JOIN (SELECT account_id, user_id, max(day) AS last_day FROM scoring_user_days
                  GROUP BY account_id, user_id) m
              ON m.account_id = u.account_id AND m.user_id = u.user_id
            WHERE m.last_day - u.day < {BITS}
            GROUP BY u.account_id, u.user_id, m.last_day"""
    )
    op.execute(
        f"""CREATE FUNCTION scoring_user_days_to_bits() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
              INSERT INTO scoring_account_users AS t (account_id, user_id, last_day, days)
              VALUES (NEW.account_id, NEW.user_id, NEW.day, B'1'::varbit::bit({BITS}))
              ON CONFLICT (account_id, user_id) DO UPDATE SET {_MERGE};
              RETURN NULL;
            END $$"""
    )
    op.execute(
        "CREATE TRIGGER scoring_user_days_to_bits AFTER INSERT ON scoring_user_days"
        " FOR EACH ROW EXECUTE FUNCTION scoring_user_days_to_bits()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER scoring_user_days_to_bits ON scoring_user_days")
    op.execute("DROP FUNCTION scoring_user_days_to_bits()")
    # what this release applied, back as (account, day, user) rows and daily counts
    op.execute(
        f"""INSERT INTO scoring_user_days (account_id, day, user_id)
            SELECT account_id, last_day - p, user_id
            FROM scoring_account_users, generate_series(0, {BITS - 1}) AS p
            WHERE get_bit(days, p) = 1
            ON CONFLICT DO NOTHING"""
    )
    op.execute(
        """UPDATE scoring_account_days d SET active_users = c.users
           FROM (SELECT account_id, day, count(*)::int AS users FROM scoring_user_days
                 GROUP BY account_id, day) c
           WHERE d.account_id = c.account_id AND d.day = c.day
             AND d.active_users IS DISTINCT FROM c.users"""
    )
    op.execute("DROP TABLE scoring_account_users")
