"""Erased ids are never handed out again: persons, templates and sightings become AUTOINCREMENT on SQLite.

A plain SQLite ``INTEGER PRIMARY KEY`` gives a new row the highest id + 1, so erasing the newest person made
the next person inherit its id (and with it the erased person's audit rows in a subject-access export), and a
replica could map an old index entry to a new template. ``AUTOINCREMENT`` needs a new table definition, so the
three tables are rebuilt (rows copied with their ids). The ``sqlite_sequence`` high-water marks are then raised
to the highest id the gallery ever handed out as far as it still knows: erasures in the change feed and
"person:N" subjects in the audit log count too, so ids erased before this upgrade are not reused either.

On PostgreSQL this is a no-op: ``BIGSERIAL``/identity sequences never go back.

The rebuild drops and recreates ``persons`` while ``templates`` references it: ``gallery.db.migrate`` runs the
migrations with SQLite foreign keys off (a DROP TABLE with them on would cascade-delete every template).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = ("persons", "templates", "sightings")


def _max(conn: sa.Connection, sql: str) -> int:
    return int(conn.exec_driver_sql(sql).scalar() or 0)


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return
    if conn.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError(
            "migration 0005 rebuilds the persons table and must run with SQLite foreign keys off (dropping it "
            "with them on deletes every template); upgrade through gallery.db.migrate"
        )
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass
    high = {
        "persons": max(
            _max(conn, "SELECT max(id) FROM persons"),
            _max(conn, "SELECT max(max(person_id), coalesce(max(other_person_id), 0)) FROM changes"),
            _max(
                conn,
                "SELECT max(CAST(substr(subject, 8) AS INTEGER)) FROM audit_log WHERE subject LIKE 'person:%'",
            ),
        ),
        "templates": max(
            _max(conn, "SELECT max(id) FROM templates"),
            _max(
                conn, "SELECT max(CAST(j.value AS INTEGER)) FROM changes, json_each(changes.template_ids) j"
            ),
        ),
        "sightings": _max(conn, "SELECT max(id) FROM sightings"),
    }
    for table, seq in high.items():
        # sqlite_sequence has one row per AUTOINCREMENT table that ever received a row (none if empty)
        if conn.exec_driver_sql("SELECT count(*) FROM sqlite_sequence WHERE name = ?", (table,)).scalar():
            conn.exec_driver_sql("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (seq, table))
        elif seq:
            conn.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, seq))
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"migration 0005: foreign keys broken after rebuilding the tables: {broken[:5]}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in reversed(TABLES):
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": False}):
            pass
