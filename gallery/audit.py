"""The append-only audit log: every identify, enroll, merge, delete, export and configuration change.

Rows are only ever inserted; the migration installs a trigger that refuses UPDATE and DELETE, so even an
erasure request leaves the record that it happened (the subject is an id, never a face or a name).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gallery.models import AuditEntry, utcnow


@dataclass
class AuditRecord:
    id: int
    at: datetime
    key_id: str | None
    action: str
    subject: str | None
    outcome: str
    detail: dict | None


class AuditLog:
    """Writes and reads ``audit_log`` rows through a session factory (the gallery's)."""

    def __init__(self, session_factory: sessionmaker, clock=utcnow) -> None:
        self.Session = session_factory
        self.clock = clock

    def write(
        self,
        action: str,
        outcome: str,
        key_id: str | None = None,
        subject: str | None = None,
        detail: dict[str, Any] | None = None,
        session: Session | None = None,
    ) -> None:
        """Append one entry; inside ``session`` when given (then it commits or rolls back with that work)."""
        row = AuditEntry(
            at=self.clock(), key_id=key_id, action=action, subject=subject, outcome=outcome, detail=detail
        )
        if session is not None:
            session.add(row)
            return
        with self.Session.begin() as s:
            s.add(row)

    def write_many(self, entries: list[dict[str, Any]]) -> list[int]:
        """Append several entries (each the keyword arguments of :meth:`write` but ``session``) in one
        transaction, one commit; their row ids, in order."""
        rows = [AuditEntry(at=self.clock(), **e) for e in entries]
        with self.Session.begin() as s:
            s.add_all(rows)
            s.flush()
            return [r.id for r in rows]

    def read(
        self,
        subject: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        with self.Session() as s:
            q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            if subject is not None:
                q = q.where(AuditEntry.subject == subject)
            if action is not None:
                q = q.where(AuditEntry.action == action)
            if since is not None:
                q = q.where(AuditEntry.at >= since)
            return [
                AuditRecord(r.id, r.at, r.key_id, r.action, r.subject, r.outcome, r.detail)
                for r in s.scalars(q)
            ]
