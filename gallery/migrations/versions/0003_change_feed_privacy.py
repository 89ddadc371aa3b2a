"""Change feed, append-only audit log, privacy columns (store, purpose, last seen), idempotent sightings.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_PG_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
"""


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("seq", Id, primary_key=True, autoincrement=True),
        sa.Column("op", sa.String(20), nullable=False),
        sa.Column("person_id", Id, nullable=False),
        sa.Column("other_person_id", Id),
        sa.Column("template_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_changes_created_at", "changes", ["created_at"])
    op.create_table(
        "audit_log",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(100)),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("subject", sa.String(200)),
        sa.Column("outcome", sa.String(50), nullable=False),
        sa.Column("detail", sa.JSON()),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_subject", "audit_log", ["subject"])
    with op.batch_alter_table("persons") as b:
        b.add_column(sa.Column("store_id", sa.String(100)))
        b.add_column(sa.Column("purpose", sa.String(200)))
        b.add_column(sa.Column("last_seen_at", sa.DateTime(timezone=True)))
        b.create_index("ix_persons_store_id", ["store_id"])
        b.create_index("ix_persons_last_seen_at", ["last_seen_at"])
    with op.batch_alter_table("sightings") as b:
        b.add_column(sa.Column("event_id", sa.String(200)))
        b.create_unique_constraint("uq_sightings_event_id", ["event_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_APPEND_ONLY)
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    with op.batch_alter_table("sightings") as b:
        b.drop_constraint("uq_sightings_event_id", type_="unique")
        b.drop_column("event_id")
    with op.batch_alter_table("persons") as b:
        b.drop_index("ix_persons_last_seen_at")
        b.drop_index("ix_persons_store_id")
        b.drop_column("last_seen_at")
        b.drop_column("purpose")
        b.drop_column("store_id")
    op.drop_table("audit_log")
    op.drop_table("changes")
