"""The open-set decision stored with each threshold: rule, beta, the never-enrolled cohort, and the raw rule's
thresholds by gallery size.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("thresholds") as b:
        # existing rows were raw-score thresholds: they keep meaning what they meant
        b.add_column(sa.Column("rule", sa.String(20), nullable=False, server_default="raw"))
        b.add_column(sa.Column("beta", sa.Float(), nullable=True))
        b.add_column(sa.Column("cohort", sa.LargeBinary(), nullable=True))
        b.add_column(sa.Column("measured_dir", sa.Float(), nullable=True))
        b.add_column(sa.Column("source", sa.String(200), nullable=True))
        b.add_column(sa.Column("by_size", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("thresholds") as b:
        for c in ("by_size", "source", "measured_dir", "cohort", "beta", "rule"):
            b.drop_column(c)
