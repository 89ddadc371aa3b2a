"""The review queue: near misses (a new person whose best candidate scored just under the threshold) for an
operator to confirm (merge) or reject (keep apart, never offered again).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_pairs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("person_id", Id, sa.ForeignKey("persons.id", ondelete="SET NULL"), nullable=True),
        sa.Column("candidate_id", Id, sa.ForeignKey("persons.id", ondelete="SET NULL"), nullable=True),
        sa.Column("modality", sa.String(10), nullable=False),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("source", sa.String(200), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("normalised", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(100), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_review_pairs_status", "review_pairs", ["status", "id"])
    op.create_index("ix_review_pairs_person_id", "review_pairs", ["person_id"])
    op.create_index("ix_review_pairs_candidate_id", "review_pairs", ["candidate_id"])


def downgrade() -> None:
    op.drop_table("review_pairs")
