"""Initial schema: persons, templates, sightings, thresholds.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "persons",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("external_id", sa.String(200), nullable=True),
        sa.Column("display_name", sa.String(200), nullable=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consent", sa.JSON(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.UniqueConstraint("external_id"),
    )
    op.create_table(
        "templates",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("person_id", Id, sa.ForeignKey("persons.id", ondelete="CASCADE"), nullable=False),
        sa.Column("modality", sa.String(10), nullable=False),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("image_sha256", sa.String(64), nullable=True),
        sa.Column("source", sa.String(500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("modality", "model_id", "image_sha256", name="uq_template_image"),
    )
    op.create_index("ix_templates_person_id", "templates", ["person_id"])
    op.create_index("ix_templates_key_id", "templates", ["modality", "model_id", "id"])
    op.create_table(
        "sightings",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("person_id", Id, sa.ForeignKey("persons.id", ondelete="CASCADE"), nullable=False),
        sa.Column("camera_id", sa.String(100), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("modality", sa.String(10), nullable=True),
        sa.Column("track_id", sa.String(100), nullable=True),
    )
    op.create_index("ix_sightings_person_time", "sightings", ["person_id", "seen_at"])
    op.create_index("ix_sightings_camera_id", "sightings", ["camera_id"])
    op.create_index("ix_sightings_seen_at", "sightings", ["seen_at"])
    op.create_table(
        "thresholds",
        sa.Column("modality", sa.String(10), primary_key=True),
        sa.Column("model_id", sa.String(200), primary_key=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("target_far", sa.Float(), nullable=True),
        sa.Column("measured_far", sa.Float(), nullable=True),
        sa.Column("measured_tar", sa.Float(), nullable=True),
        sa.Column("n_genuine", sa.Integer(), nullable=True),
        sa.Column("n_impostor", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("thresholds")
    op.drop_table("sightings")
    op.drop_table("templates")
    op.drop_table("persons")
