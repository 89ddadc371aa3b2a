"""The rows of the gallery and their transactions (the truth): persons, templates, thumbnails, thresholds.

Every write that changes what the FAISS indexes should hold (enroll, merge, delete) also appends its change-feed
row in the same transaction (``gallery.feed.record_change``), so replicas see it in commit order. The in-memory
indexes are not touched here: that is ``gallery.cache.IndexCache``'s job, after the commit. Sightings live in
``gallery.sightings``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gallery.audit import AuditLog
from gallery.db import make_engine, make_sessionmaker, migrate
from gallery.errors import DuplicatePersonError, GalleryError, UnknownPersonError
from gallery.feed import last_seq, pending_changes, record_change
from gallery.index import DBState
from gallery.models import Change, Person, Sighting, Template, Threshold, Thumbnail, utcnow
from gallery.results import Duplicate, EnrollResult, PersonInfo

Key = tuple[str, str]  # (modality, model_id)

# the columns a replica needs to index a template; rows are read by these names
TEMPLATE_COLUMNS = (
    Template.id,
    Template.person_id,
    Template.modality,
    Template.model_id,
    Template.dim,
    Template.vector,
)


@dataclass(frozen=True)
class EnrollRequest:
    """What one enroll stores: ``vectors`` (N, D) unit rows of model ``key``, with their image hashes."""

    key: Key
    vectors: np.ndarray
    hashes: Sequence[str | None]
    person_id: int | None = None  # None: a new person
    quality: Sequence[float] | None = None
    sources: Sequence[str] | None = None
    display_name: str | None = None  # of a new person
    external_id: str | None = None
    kind: str = "enrolled"


def lock_key(key: Key) -> int:
    """The PostgreSQL advisory lock of one (modality, model_id)."""
    return int.from_bytes(hashlib.sha256(f"{key[0]}/{key[1]}".encode()).digest()[:8], "big", signed=True)


def require_person(s: Session, person_id: int) -> Person:
    if not isinstance(person_id, int) or not 0 < person_id < 2**63:  # beyond BIGINT: cannot exist
        raise UnknownPersonError(person_id)
    p = s.get(Person, person_id)
    if p is None:
        raise UnknownPersonError(person_id)
    return p


class GalleryStore:
    """The database of one gallery: engine, sessions, and the transactions the gallery makes."""

    def __init__(self, url: str, clock=utcnow, store_id: str | None = None) -> None:
        self.engine = make_engine(url)
        migrate(self.engine)
        self.Session = make_sessionmaker(self.engine)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.clock = clock
        self.store_id = store_id  # default store of people created by this process

    @property
    def file_path(self) -> Path | None:
        """The SQLite database file (files beside it are the default for indexes and media), else None."""
        if self.is_sqlite and self.engine.url.database not in (None, "", ":memory:"):
            return Path(self.engine.url.database)
        return None

    def dispose(self) -> None:
        self.engine.dispose()

    # -------------------------------------------------------------------------------------------- persons
    def create_person(
        self,
        s: Session,
        display_name: str | None = None,
        external_id: str | None = None,
        kind: str = "enrolled",
        *,
        consent: dict | None = None,
        metadata: dict | None = None,
        store_id: str | None = None,
        purpose: str | None = None,
    ) -> int:
        """A person row inside ``s`` (in this process's store unless ``store_id`` is given)."""
        if kind not in ("enrolled", "anonymous"):
            raise GalleryError(f"person kind must be 'enrolled' or 'anonymous', got {kind!r}")
        if external_id is not None and s.scalar(select(Person.id).where(Person.external_id == external_id)):
            raise DuplicatePersonError(f"external id {external_id!r} is already used by another person")
        p = Person(
            display_name=display_name,
            external_id=external_id,
            kind=kind,
            consent=consent,
            meta=metadata,
            store_id=store_id or self.store_id,
            purpose=purpose,
            created_at=self.clock(),
            last_seen_at=self.clock(),
        )
        s.add(p)
        s.flush()
        return p.id

    def get_person(self, person_id: int) -> PersonInfo:
        with self.Session() as s:
            return self._info(s, require_person(s, person_id))

    def _info(self, s: Session, p: Person) -> PersonInfo:
        counts = s.execute(
            select(Template.modality, Template.model_id, func.count())
            .where(Template.person_id == p.id)
            .group_by(Template.modality, Template.model_id)
        ).all()
        n_sight = s.scalar(select(func.count()).select_from(Sighting).where(Sighting.person_id == p.id)) or 0
        return PersonInfo(
            p.id,
            p.external_id,
            p.display_name,
            p.kind,
            p.created_at,
            p.consent,
            p.meta,
            {f"{m}/{mid}": int(c) for m, mid, c in counts},
            int(n_sight),
            p.store_id,
            p.purpose,
            p.last_seen_at,
        )

    def list_persons(self, offset: int = 0, limit: int = 100, kind: str | None = None) -> list[PersonInfo]:
        with self.Session() as s:
            q = select(Person).order_by(Person.id).offset(offset).limit(limit)
            if kind:
                q = q.where(Person.kind == kind)
            return [self._info(s, p) for p in s.scalars(q)]

    def update_person(self, person_id: int, fields: dict[str, Any]) -> None:
        """Set ``display_name``, ``consent`` and/or ``purpose`` (the keys given) of an existing person."""
        unknown = set(fields) - {"display_name", "consent", "purpose"}
        if unknown:
            raise GalleryError(f"update_person: cannot set {sorted(unknown)}")
        with self.Session.begin() as s:
            p = require_person(s, person_id)
            for k, v in fields.items():
                setattr(p, k, v)

    def templates(self, person_id: int) -> list[Template]:
        """The person's templates, oldest first (detached rows without their vectors loaded)."""
        with self.Session() as s:
            require_person(s, person_id)
            rows = s.execute(
                select(
                    Template.id, Template.modality, Template.model_id, Template.source, Template.created_at
                )
                .where(Template.person_id == person_id)
                .order_by(Template.id)
            ).all()
            return list(rows)

    def count_persons(self) -> int:
        with self.Session() as s:
            return int(s.scalar(select(func.count()).select_from(Person)) or 0)

    def persons_by_id(self, person_ids: Collection[int]) -> dict[int, Person]:
        """The persons that exist among ``person_ids`` (detached rows, their columns loaded)."""
        with self.Session() as s:
            return {p.id: p for p in s.scalars(select(Person).where(Person.id.in_(list(person_ids))))}

    # --------------------------------------------------------------------------------------------- enroll
    def enroll(self, req: EnrollRequest) -> tuple[EnrollResult, list[int]]:
        """Store the templates in one transaction; retried when a concurrent enroll stored the same image
        first (the duplicates are then recomputed)."""
        for attempt in range(3):
            try:
                with self.Session.begin() as s:
                    return self.enroll_tx(s, req)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def enroll_tx(self, s: Session, req: EnrollRequest) -> tuple[EnrollResult, list[int]]:
        """Insert the new templates inside ``s``; returns the result and the batch positions of the stored
        rows (images already stored for this model come back in ``duplicates``)."""
        person_id, created = req.person_id, False
        if person_id is None:
            person_id = self.create_person(s, req.display_name, req.external_id, req.kind)
            created = True
        else:
            require_person(s, person_id)
        modality, model_id = req.key
        result = EnrollResult(person_id, modality, model_id, created_person=created)
        existing = self._stored_hashes(s, req.key, {h for h in req.hashes if h})
        rows, seen = [], {}
        for i, v in enumerate(req.vectors):
            h = req.hashes[i]
            if h and h in existing:
                result.duplicates.append(Duplicate(i, existing[h][0], existing[h][1]))
                continue
            if h and h in seen:
                continue  # repeated inside this batch: resolved after insert
            t = Template(
                person_id=person_id,
                modality=modality,
                model_id=model_id,
                dim=int(v.shape[0]),
                vector=v.astype("<f4").tobytes(),
                image_sha256=h,
                quality=None if req.quality is None else float(req.quality[i]),
                source=None if req.sources is None else str(req.sources[i])[:500],
            )
            rows.append((i, t))
            if h:
                seen[h] = t
        s.add_all([t for _, t in rows])
        s.flush()
        result.template_ids = [t.id for _, t in rows]
        if result.template_ids:
            record_change(s, "enroll", person_id, result.template_ids)
        stored = [i for i, _ in rows]
        stored_set = set(stored)
        for i, h in enumerate(req.hashes):
            if h and h in seen and i not in stored_set:
                result.duplicates.append(Duplicate(i, seen[h].id, person_id))
        return result, stored

    @staticmethod
    def _stored_hashes(s: Session, key: Key, hashes: set[str]) -> dict[str, tuple[int, int]]:
        """image hash -> (template id, person id) of the templates of this model already stored."""
        if not hashes:
            return {}
        q = select(Template.image_sha256, Template.id, Template.person_id).where(
            Template.modality == key[0], Template.model_id == key[1], Template.image_sha256.in_(hashes)
        )
        return {r.image_sha256: (r.id, r.person_id) for r in s.execute(q)}

    @contextmanager
    def key_transaction(self, key: Key, thread_lock) -> Iterator[Session]:
        """A write transaction that holds the (modality, model_id) lock across threads (``thread_lock``) and
        processes (SQLite's write lock, a PostgreSQL advisory lock)."""
        with thread_lock, self.Session.begin() as s:  # SQLite's write lock is taken at BEGIN (WriteSessions)
            if self.engine.dialect.name == "postgresql":
                s.connection().exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (lock_key(key),))
            yield s

    # ------------------------------------------------------------------------------------- merge, delete
    def merge(self, keep: int, remove: int) -> list[int]:
        """Move ``remove``'s templates, sightings (and thumbnail when ``keep`` has none) to ``keep``, delete
        ``remove``; returns the moved template ids."""
        with self.Session.begin() as s:
            require_person(s, keep)
            require_person(s, remove)
            moved = list(s.scalars(select(Template.id).where(Template.person_id == remove)))
            s.execute(update(Template).where(Template.person_id == remove).values(person_id=keep))
            s.execute(update(Sighting).where(Sighting.person_id == remove).values(person_id=keep))
            if s.get(Thumbnail, keep) is None:
                s.execute(update(Thumbnail).where(Thumbnail.person_id == remove).values(person_id=keep))
            s.execute(delete(Thumbnail).where(Thumbnail.person_id == remove))
            s.execute(delete(Person).where(Person.id == remove))
            record_change(s, "merge", keep, moved, other_person_id=remove)
        return moved

    def delete_person(self, person_id: int) -> list[int]:
        """Erase the person's rows (templates, sightings, thumbnail, person); returns the template ids."""
        with self.Session.begin() as s:
            require_person(s, person_id)
            tids = list(s.scalars(select(Template.id).where(Template.person_id == person_id)))
            s.execute(delete(Sighting).where(Sighting.person_id == person_id))
            s.execute(delete(Template).where(Template.person_id == person_id))
            s.execute(delete(Thumbnail).where(Thumbnail.person_id == person_id))
            s.execute(delete(Person).where(Person.id == person_id))
            record_change(s, "delete", person_id, tids)
        return tids

    # ----------------------------------------------------------------------------------------- thumbnails
    def set_thumbnail(self, person_id: int, jpeg: bytes, replace: bool = True) -> bool:
        with self.Session.begin() as s:
            require_person(s, person_id)
            row = s.get(Thumbnail, person_id)
            if row is not None and not replace:
                return False
            row = row or Thumbnail(person_id=person_id)
            row.jpeg = jpeg
            row.updated_at = utcnow()
            s.add(row)
        return True

    def get_thumbnail(self, person_id: int) -> bytes | None:
        with self.Session() as s:
            require_person(s, person_id)
            row = s.get(Thumbnail, person_id)
            return None if row is None else bytes(row.jpeg)

    # ----------------------------------------------------------------------------------------- thresholds
    def read_threshold(self, key: Key) -> Threshold | None:
        """The stored decision row of this model (detached, its columns loaded), or None."""
        with self.Session() as s:
            return s.get(Threshold, key)

    def write_threshold(self, key: Key, fields: dict[str, Any], actor: str, detail: dict[str, Any]) -> None:
        """Store a model's decision row (``fields``: column -> value) and its audit entry, in one transaction."""
        with self.Session.begin() as s:
            AuditLog(self.Session, self.clock).write(
                "set-threshold",
                "ok",
                key_id=actor,
                subject=f"threshold:{key[0]}/{key[1]}",
                detail=detail,
                session=s,
            )
            t = s.get(Threshold, key) or Threshold(modality=key[0], model_id=key[1])
            for k, v in fields.items():
                setattr(t, k, v)
            s.add(t)

    # ------------------------------------------------------------------ what the index cache is derived from
    @staticmethod
    def db_state(s: Session, key: Key) -> DBState:
        """Count, max and sum of this model's template ids (what an index snapshot must match)."""
        row = s.execute(
            select(
                func.count(Template.id).label("n"),
                func.max(Template.id).label("max_id"),
                func.sum(Template.id).label("id_sum"),
            ).where(Template.modality == key[0], Template.model_id == key[1])
        ).one()
        return DBState(int(row.n or 0), int(row.max_id or 0), int(row.id_sum or 0))

    @staticmethod
    def template_keys(s: Session) -> list[tuple[Key, int]]:
        """((modality, model_id), dim) of every model with templates."""
        q = select(Template.modality, Template.model_id, Template.dim).distinct()
        return [((r.modality, r.model_id), r.dim) for r in s.execute(q)]

    @staticmethod
    def template_owners(s: Session) -> Iterator[Row]:
        """(id, person_id, modality, model_id) of every template."""
        yield from s.execute(select(Template.id, Template.person_id, Template.modality, Template.model_id))

    @staticmethod
    def template_vectors(s: Session, key: Key) -> tuple[np.ndarray, list[np.ndarray]]:
        """(ids, vectors) of this model's templates, by id."""
        q = (
            select(Template.id, Template.vector)
            .where(Template.modality == key[0], Template.model_id == key[1])
            .order_by(Template.id)
            .execution_options(yield_per=10_000)
        )
        ids, vecs = [], []
        for r in s.execute(q):
            ids.append(r.id)
            vecs.append(np.frombuffer(r.vector, dtype=np.float32))
        return np.array(ids, dtype=np.int64), vecs

    @staticmethod
    def last_seq(s: Session) -> int:
        return last_seq(s)

    def changes_since(self, after: int, known: Collection[int]) -> tuple[list[Change], dict[int, Row]]:
        """The change-feed rows after ``after`` and, read in the same session, the rows (``TEMPLATE_COLUMNS``)
        of the templates they enroll that are not ``known`` yet (absent: deleted by a later change)."""
        with self.Session() as s:
            changes = pending_changes(s, after)
            need = sorted({t for c in changes if c.op == "enroll" for t in c.template_ids} - set(known))
            rows: dict[int, Row] = {}
            for i in range(0, len(need), 5000):
                q = select(*TEMPLATE_COLUMNS).where(Template.id.in_(need[i : i + 5000]))
                rows.update({r.id: r for r in s.execute(q)})
            return changes, rows
