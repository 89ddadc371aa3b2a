"""The change feed: how several gallery processes (replicas) on one database keep their FAISS indexes equal.

Every enroll, merge and delete writes one ``changes`` row in its own transaction (:func:`record_change`).
Writers take a transaction-scoped lock just before inserting it, so ``seq`` order is commit order: a replica
that applied every change up to ``seq`` N misses exactly the rows with ``seq > N``, never an earlier row that
committed late. On PostgreSQL the row also fires ``NOTIFY gallery_changes`` (delivered at commit) to wake the
replicas at once; :class:`ChangeFollower` listens for it and also polls, so a lost notification or a restart
only delays catching up. SQLite (one machine) is polled; its single writer already orders commits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gallery.models import Change

logger = logging.getLogger(__name__)

CHANNEL = "gallery_changes"
_FEED_LOCK = 7343092  # pg_advisory_xact_lock key shared by all change writers


def record_change(
    s: Session,
    op: str,
    person_id: int,
    template_ids: Sequence[int] = (),
    other_person_id: int | None = None,
) -> int:
    """Append a change inside the caller's transaction (call it last: the lock is held until commit)."""
    if s.bind.dialect.name == "postgresql":
        s.connection().exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (_FEED_LOCK,))
    row = Change(
        op=op,
        person_id=int(person_id),
        other_person_id=None if other_person_id is None else int(other_person_id),
        template_ids=[int(t) for t in template_ids],
    )
    s.add(row)
    s.flush()
    if s.bind.dialect.name == "postgresql":
        s.connection().exec_driver_sql("SELECT pg_notify(%s, %s)", (CHANNEL, str(row.seq)))
    return int(row.seq)


def last_seq(s: Session) -> int:
    from sqlalchemy import func

    return int(s.scalar(select(func.max(Change.seq))) or 0)


def pending_changes(s: Session, after: int, limit: int = 10_000) -> list[Change]:
    return list(s.scalars(select(Change).where(Change.seq > after).order_by(Change.seq).limit(limit)))


class ChangeFollower:
    """A daemon thread that keeps one process's indexes up to date with changes made by other processes.

    Args:
        sync: applies the pending changes (``gallery.cache.IndexCache.sync``); called from this thread.
        engine: the database's engine (on PostgreSQL the thread listens for notifications on its URL).
        poll_interval: seconds between catch-up polls (also the wait for a notification on PostgreSQL).
    """

    def __init__(self, sync: Callable[[], object], engine: Engine, poll_interval: float = 0.5) -> None:
        self.sync = sync
        self.engine = engine
        self.poll_interval = float(poll_interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gallery-change-follower", daemon=True)
        self.wakeups = 0

    def start(self) -> ChangeFollower:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _sync(self) -> None:
        try:
            self.sync()
        except Exception:  # keep following: the next poll retries from the same sequence number
            logger.exception("change feed: applying changes failed; retrying at the next poll")

    def _run(self) -> None:
        if self.engine.dialect.name == "postgresql":
            self._run_listen()
        else:
            while not self._stop.wait(self.poll_interval):
                self._sync()

    def _run_listen(self) -> None:
        import psycopg

        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._sync()  # whatever committed before LISTEN took effect
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=self.poll_interval, stop_after=1):
                            self.wakeups += 1
                        self._sync()
            except psycopg.Error as e:
                logger.warning("change feed: connection lost (%s); reconnecting", e)
                self._stop.wait(min(5.0, self.poll_interval * 4))
