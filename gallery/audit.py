"""The append-only audit log: every identify, enroll, merge, delete, export and configuration change.

Rows are only ever inserted; the migration installs a trigger that refuses UPDATE and DELETE, so even an
erasure request leaves the record that it happened (the subject is an id, never a face or a name).

While the database cannot be reached, ``write_or_hold`` keeps the rows it cannot write (with the time of the
event, up to ``HOLD_AT_MOST`` of them) and writes them first, in order, at the next write that gets through
(``flush_held`` retries without one): an outage does not erase the record of what was asked during it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gallery.db import UNAVAILABLE
from gallery.models import AuditEntry, utcnow

logger = logging.getLogger(__name__)

# rows kept through an outage (a few hundred bytes each); beyond it they are counted lost
HOLD_AT_MOST = 100_000
DRAIN_CHUNK = 1000  # held rows written per commit once the database is back


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
        self._held: list[dict[str, Any]] = []  # rows an outage kept from the database, oldest first
        self._lost = 0
        self._hold_lock = threading.Lock()

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
        """Append several entries (each the keyword arguments of :meth:`write` but ``session``; ``at``
        defaults to now) in one transaction, one commit; their row ids, in order."""
        rows = [AuditEntry(**{"at": self.clock(), **e}) for e in entries]
        with self.Session.begin() as s:
            s.add_all(rows)
            s.flush()
            return [r.id for r in rows]

    @property
    def held(self) -> int:
        """Rows waiting for the database (what an outage kept back)."""
        return len(self._held)

    @property
    def lost(self) -> int:
        """Rows given up: beyond ``HOLD_AT_MOST`` during an outage, or refused by the database once it was back."""
        return self._lost

    def write_or_hold(self, entries: list[dict[str, Any]]) -> list[int | None]:
        """:meth:`write_many`, after the rows held back by an earlier outage (written first, in order). While
        the database is unavailable the new rows are held too, stamped now, and their ids are None; any other
        failure of the new rows raises, and nothing is held for it. Rows can be written twice if the connection
        drops during a commit that went through (at least once, never silently none)."""
        stamped = [{"at": self.clock(), **e} for e in entries]
        with self._hold_lock:  # one writer at a time: held rows are written once, in order
            try:
                self._drain()
                return list(self.write_many(stamped)) if stamped else []
            except UNAVAILABLE as e:
                kept = stamped[: max(0, HOLD_AT_MOST - len(self._held))]
                self._held += kept
                self._lost += len(stamped) - len(kept)
                if stamped:  # a retry of the held rows alone says nothing new
                    logger.error("audit log: database unavailable (%s); %d rows held, %d lost in all",
                                 type(e).__name__, len(self._held), self._lost)  # fmt: skip
                return [None] * len(entries)

    def flush_held(self) -> int:
        """Try to write the held rows now (a periodic retry, and the last one at shutdown); how many are still
        held."""
        if self._held:
            self.write_or_hold([])
        return len(self._held)

    def _drain(self) -> None:
        """Write the held rows, oldest first, ``DRAIN_CHUNK`` per commit (a long outage's backlog is not one
        statement). A chunk the database refuses for another reason than availability is written row by row,
        and a row it refuses is logged and dropped: one bad row must not block the log behind it."""
        if not self._held:
            return
        backlog = len(self._held)
        while self._held:
            chunk = self._held[:DRAIN_CHUNK]
            try:
                self.write_many(chunk)
                del self._held[: len(chunk)]
                continue
            except UNAVAILABLE:
                raise
            except Exception:
                pass
            for row in chunk:
                try:
                    self.write_many([row])
                except UNAVAILABLE:
                    raise
                except Exception as e:
                    self._lost += 1
                    logger.error("audit log: a held row (%s, %s) refused by the database (%s); dropped",
                                 row.get("action"), row.get("subject"), type(e).__name__)  # fmt: skip
                del self._held[0]
        logger.warning("audit log: the database is back; %d held rows handled", backlog)

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
