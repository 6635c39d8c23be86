"""Ingest: user → account links learnt from Segment group/identify calls.

Revision ID: ingest_0001
"""
import sqlalchemy as sa
from alembic import op

revision = "ingest_0001"
down_revision = None
branch_labels = ("ingest",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_user_accounts",
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("user_id", name="pk_ingest_user_accounts"),
    )


def downgrade() -> None:
    op.drop_table("ingest_user_accounts")
