"""Scoring: stored consumer offsets, event-id dedup, rolling windows, scores, history.

Revision ID: scoring_0001
"""
from alembic import op

revision = "scoring_0001"
down_revision = None
branch_labels = ("scoring",)
depends_on = None

_AS_OF = "timestamptz"

UPGRADE = f"""
CREATE TABLE scoring_consumer_offsets (
    topic text NOT NULL, partition integer NOT NULL, next_offset bigint NOT NULL,
    CONSTRAINT pk_scoring_consumer_offsets PRIMARY KEY (topic, partition));

CREATE TABLE scoring_processed_events (
    event_id text NOT NULL, received_at timestamptz NOT NULL,
    CONSTRAINT pk_scoring_processed_events PRIMARY KEY (event_id));
CREATE INDEX ix_scoring_processed_events_received_at ON scoring_processed_events (received_at);

CREATE TABLE scoring_accounts (
    account_id text NOT NULL,
    name text, name_as_of {_AS_OF},
    seats_purchased integer, seats_purchased_as_of {_AS_OF},
    lifecycle_stage text, lifecycle_stage_as_of {_AS_OF},
    onboarding_completed_at timestamptz, onboarding_completed_at_as_of {_AS_OF},
    plan text, plan_as_of {_AS_OF},
    arr double precision, arr_as_of {_AS_OF},
    renewal_date date, renewal_date_as_of {_AS_OF},
    csm text, csm_as_of {_AS_OF},
    first_event_day date NOT NULL,
    last_event_day date NOT NULL,
    CONSTRAINT pk_scoring_accounts PRIMARY KEY (account_id));

CREATE TABLE scoring_account_days (
    account_id text NOT NULL, day date NOT NULL,
    product_events integer NOT NULL DEFAULT 0,
    active_users integer NOT NULL DEFAULT 0,
    session_seconds double precision NOT NULL DEFAULT 0,
    touchpoints integer NOT NULL DEFAULT 0,
    inbound integer NOT NULL DEFAULT 0,
    support_tickets integer NOT NULL DEFAULT 0,
    escalations integer NOT NULL DEFAULT 0,
    sentiment_sum double precision NOT NULL DEFAULT 0,
    sentiment_count integer NOT NULL DEFAULT 0,
    nps_promoters integer NOT NULL DEFAULT 0,
    nps_detractors integer NOT NULL DEFAULT 0,
    nps_responses integer NOT NULL DEFAULT 0,
    CONSTRAINT pk_scoring_account_days PRIMARY KEY (account_id, day));

CREATE TABLE scoring_user_days (
    account_id text NOT NULL, day date NOT NULL, user_id text NOT NULL,
    CONSTRAINT pk_scoring_user_days PRIMARY KEY (account_id, day, user_id));

CREATE TABLE scoring_feature_days (
    account_id text NOT NULL, day date NOT NULL, feature text NOT NULL,
    uses bigint NOT NULL DEFAULT 0,
    CONSTRAINT pk_scoring_feature_days PRIMARY KEY (account_id, day, feature));

CREATE TABLE scoring_contacts (
    account_id text NOT NULL, contact_id text NOT NULL,
    role text, role_as_of {_AS_OF},
    name text, name_as_of {_AS_OF},
    email text, email_as_of {_AS_OF},
    left_company boolean NOT NULL DEFAULT false, left_company_as_of {_AS_OF},
    was_champion boolean NOT NULL DEFAULT false,
    became_champion_day date,
    CONSTRAINT pk_scoring_contacts PRIMARY KEY (account_id, contact_id));

CREATE TABLE scoring_contact_days (
    account_id text NOT NULL, day date NOT NULL, contact_id text NOT NULL,
    inbound integer NOT NULL DEFAULT 0, outbound integer NOT NULL DEFAULT 0,
    CONSTRAINT pk_scoring_contact_days PRIMARY KEY (account_id, day, contact_id));

CREATE TABLE scoring_scores (
    account_id text NOT NULL, as_of date NOT NULL, evaluated_at timestamptz NOT NULL,
    trigger text NOT NULL, score double precision, band text,
    score_delta_7d double precision, coverage double precision NOT NULL,
    model_version text NOT NULL, in_grace_period boolean NOT NULL,
    kpis json NOT NULL, measures json NOT NULL,
    revision bigint NOT NULL,
    CONSTRAINT pk_scoring_scores PRIMARY KEY (account_id));
CREATE INDEX ix_scoring_scores_score ON scoring_scores (score);
CREATE INDEX ix_scoring_scores_evaluated_at ON scoring_scores (evaluated_at);

-- kept apart from the wide scoring_scores row: marking a snapshot published
-- rewrites only this small row
CREATE TABLE scoring_published (
    account_id text NOT NULL, revision bigint NOT NULL,
    CONSTRAINT pk_scoring_published PRIMARY KEY (account_id));

CREATE TABLE scoring_history (
    account_id text NOT NULL, day date NOT NULL, evaluated_at timestamptz NOT NULL,
    score double precision, band text, coverage double precision NOT NULL,
    model_version text NOT NULL, in_grace_period boolean NOT NULL,
    kpis json NOT NULL, measures json NOT NULL,
    CONSTRAINT pk_scoring_history PRIMARY KEY (account_id, day));
"""

TABLES = [
    "scoring_history", "scoring_published", "scoring_scores", "scoring_contact_days", "scoring_contacts",
    "scoring_feature_days", "scoring_user_days", "scoring_account_days", "scoring_accounts",
    "scoring_processed_events", "scoring_consumer_offsets",
]


def upgrade() -> None:
    for stmt in UPGRADE.split(";"):
        if stmt.strip():
            op.execute(stmt)


def downgrade() -> None:
    for t in TABLES:
        op.execute(f"DROP TABLE IF EXISTS {t}")
