"""The ``Gallery`` facade: enroll, identify, identify-or-enroll, merge, delete, calibrate.

Write path: validate -> one database transaction (the truth) -> commit -> add to the in-memory FAISS index.
A crash between commit and index update loses nothing: at start-up the index is checked against the database
and rebuilt when it does not match. Read path: FAISS search over templates -> aggregate per person -> decide
known/unknown against the threshold of that (modality, model_id).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gallery.audit import AuditLog
from gallery.db import make_engine, make_sessionmaker, migrate
from gallery.decision import RULES, Decision, Verdict, decode_cohort, encode_cohort, size_table
from gallery.errors import (
    DuplicatePersonError,
    EmbeddingError,
    GalleryError,
    IndexMismatchError,
    NoEmbedderError,
    UnknownPersonError,
)
from gallery.feed import ChangeFollower, last_seq, pending_changes, record_change
from gallery.index import DBState, IndexConfig, VectorIndex, check_vectors
from gallery.models import MODALITIES, Person, Sighting, Template, Threshold, Thumbnail, to_utc, utcnow
from gallery.results import (
    CalibrationResult,
    Duplicate,
    EnrollResult,
    IdentifyOrEnrollResult,
    IdentifyResult,
    PersonInfo,
    PersonMatch,
    SightingInfo,
)
from reid.embedder import BaseEmbedder
from reid.images import ImageLike
from reid.metrics.rank import EvaluationError

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (modality, model_id)


def image_hash(image: ImageLike) -> str:
    """SHA-256 of the file bytes for paths, of the pixels (with shape) for arrays and PIL images."""
    if isinstance(image, (str, os.PathLike)):
        return hashlib.sha256(Path(image).read_bytes()).hexdigest()
    arr = np.ascontiguousarray(np.asarray(image))
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _lock_key(key: Key) -> int:
    return int.from_bytes(hashlib.sha256(f"{key[0]}/{key[1]}".encode()).digest()[:8], "big", signed=True)


class Gallery:
    """Identity store over SQL (truth) and FAISS (derived).

    Args:
        url: SQLAlchemy URL or a file path for SQLite (``"gallery.db"``), or ``postgresql://...``.
        index_dir: folder for index snapshots (default: beside an SQLite file, else no snapshots).
        embedders: ``{"face": BaseEmbedder, "body": BaseEmbedder}`` used when images are given.
        aggregation: ``"max"`` or ``"mean"`` of a person's template similarities.
        thresholds: raw-score thresholds per modality set by the operator: used when none is calibrated in the
            database for a model, before the model card's decision.
        media_dir: per-person files (cached crops), removed on erasure (default: beside an SQLite file).
        store_id: the store this process serves (new persons belong to it; retention is per store).
        clock: returns the current UTC time (tests inject a controlled clock).
    """

    THRESHOLD_TTL = (
        5.0  # seconds a threshold read from the database is reused (other processes may change it)
    )

    def __init__(
        self,
        url: str,
        index_dir: str | os.PathLike | None = None,
        embedders: dict[str, BaseEmbedder] | None = None,
        index_config: IndexConfig | None = None,
        aggregation: str = "max",
        thresholds: dict[str, float] | None = None,
        media_dir: str | os.PathLike | None = None,
        store_id: str | None = None,
        clock=utcnow,
    ) -> None:
        if aggregation not in ("max", "mean"):
            raise GalleryError(f"aggregation must be 'max' or 'mean', got {aggregation!r}")
        self.engine = make_engine(url)
        migrate(self.engine)
        self.Session = make_sessionmaker(self.engine)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if index_dir is None and self.is_sqlite and self.engine.url.database not in (None, "", ":memory:"):
            index_dir = Path(self.engine.url.database).with_suffix(".indexes")
        self.index_dir = Path(index_dir) if index_dir else None
        if media_dir is None and self.is_sqlite and self.engine.url.database not in (None, "", ":memory:"):
            media_dir = Path(self.engine.url.database).with_suffix(".media")
        # per-person files (cached crops, exports): erased with the person
        self.media_dir = Path(media_dir) if media_dir else None
        self.store_id = store_id  # default store of people created by this process
        self.clock = clock  # injectable for retention tests
        self.embedders = dict(embedders or {})
        self.index_config = index_config or IndexConfig()
        self.aggregation = aggregation
        self.default_thresholds = dict(thresholds or {})
        # model cards' calibrated decisions, by (modality, model_id): the default when nothing is calibrated here
        self.cards: dict[Key, Decision] = {}
        for e in self.embedders.values():
            self.register_card(e.modality, e.model_id, getattr(e, "decision", None))
        self.indexes: dict[Key, VectorIndex] = {}
        self.person_of: dict[int, int] = {}  # template id -> person id
        self.key_of: dict[int, Key] = {}  # template id -> (modality, model_id)
        self.templates_of: dict[int, set[int]] = defaultdict(set)  # person id -> template ids
        # (modality, model_id) -> person id -> templates: how many persons a size-aware threshold is read at
        self._key_persons: dict[Key, Counter[int]] = defaultdict(Counter)
        self._lock = threading.RLock()
        self._key_locks: dict[Key, threading.Lock] = defaultdict(threading.Lock)
        self._threshold_cache: dict[Key, tuple[Decision | None, float]] = {}
        self.applied_seq = 0  # every change-feed row up to this one is reflected in the indexes
        self._follower: ChangeFollower | None = None
        self._load_indexes()

    @classmethod
    def open(cls, url: str, **kwargs: Any) -> Gallery:
        return cls(url, **kwargs)

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def follow(self, poll_interval: float = 0.5) -> ChangeFollower:
        """Follow the change feed in a background thread (for several processes on one database)."""
        if self._follower is None:
            self._follower = ChangeFollower(self, poll_interval).start()
        return self._follower

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        self.snapshot()
        self.engine.dispose()

    # ------------------------------------------------------------------------------------------------ index
    @staticmethod
    def _key_name(key: Key) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key[1])
        return f"{key[0]}__{safe}__{hashlib.sha256(key[1].encode()).hexdigest()[:8]}"

    def _db_state(self, s: Session, key: Key) -> DBState:
        row = s.execute(
            select(func.count(Template.id), func.max(Template.id), func.sum(Template.id)).where(
                Template.modality == key[0], Template.model_id == key[1]
            )
        ).one()
        return DBState(int(row[0] or 0), int(row[1] or 0), int(row[2] or 0))

    def _load_indexes(self) -> None:
        with self.Session() as s:
            # read before the templates: changes committed while loading are replayed (idempotently) by sync()
            self.applied_seq = last_seq(s)
            keys = s.execute(select(Template.modality, Template.model_id, Template.dim).distinct()).all()
            for tid, pid, modality, model_id in s.execute(
                select(Template.id, Template.person_id, Template.modality, Template.model_id)
            ):
                self._track(tid, pid, (modality, model_id))
            for modality, model_id, dim in keys:
                key = (modality, model_id)
                index = VectorIndex(modality, model_id, dim, self.index_config)
                expected = self._db_state(s, key)
                loaded = self.index_dir is not None and index.load(
                    self.index_dir, self._key_name(key), expected
                )
                if not loaded:
                    self._rebuild(s, index)
                self.indexes[key] = index
                logger.info(
                    "index %s/%s: %d templates (%s, %s)",
                    modality,
                    model_id,
                    index.ntotal,
                    index.kind,
                    "snapshot" if loaded else "rebuilt from database",
                )

    def _rebuild(self, s: Session, index: VectorIndex) -> None:
        ids, vecs = [], []
        q = (
            select(Template.id, Template.vector)
            .where(Template.modality == index.modality, Template.model_id == index.model_id)
            .order_by(Template.id)
            .execution_options(yield_per=10_000)
        )
        for tid, blob in s.execute(q):
            ids.append(tid)
            vecs.append(np.frombuffer(blob, dtype=np.float32))
        index.build(
            np.array(ids, dtype=np.int64), np.stack(vecs) if vecs else np.zeros((0, index.dim), np.float32)
        )

    def _track(self, tid: int, pid: int, key: Key) -> None:
        old = self.person_of.get(tid)
        if old is not None:
            if old == pid and self.key_of.get(tid) == key:
                return  # a replayed change: nothing moves
            self._count_out(tid, old)
            if old != pid:
                self.templates_of[old].discard(tid)
        self.person_of[tid] = pid
        self.key_of[tid] = key
        self.templates_of[pid].add(tid)
        self._key_persons[key][pid] += 1

    def _untrack(self, tid: int) -> None:
        pid = self.person_of.get(tid)
        if pid is not None:
            self._count_out(tid, pid)
            self.templates_of[pid].discard(tid)
        self.person_of.pop(tid, None)
        self.key_of.pop(tid, None)

    def _count_out(self, tid: int, pid: int) -> None:
        persons = self._key_persons[self.key_of[tid]]
        persons[pid] -= 1
        if persons[pid] <= 0:
            del persons[pid]

    def rebuild_index(self, modality: str | None = None, model_id: str | None = None) -> list[Key]:
        """Rebuild indexes from the database (all, or those matching the filters)."""
        done = []
        with self.Session() as s:
            for key, index in list(self.indexes.items()):
                if (modality is None or key[0] == modality) and (model_id is None or key[1] == model_id):
                    self._rebuild(s, index)
                    done.append(key)
        return done

    def snapshot(self) -> None:
        """Write every index to ``index_dir`` (atomic, with a manifest checked at the next start)."""
        if self.index_dir is None:
            return
        for key, index in list(self.indexes.items()):
            index.save(self.index_dir, self._key_name(key))

    def _index_for(self, key: Key, dim: int, create: bool) -> VectorIndex | None:
        with self._lock:
            index = self.indexes.get(key)
            if index is None:
                if not create:
                    return None
                index = VectorIndex(key[0], key[1], dim, self.index_config)
                self.indexes[key] = index
            elif index.dim != dim:
                raise IndexMismatchError(
                    f"model {key[1]!r} ({key[0]}) has {index.dim}-d templates; refusing a {dim}-d embedding"
                )
            return index

    def sync(self) -> int:
        """Apply the change-feed rows committed since the last call (by any process); returns how many.

        Idempotent: templates already in the index are skipped, removals of absent templates are no-ops, so
        this process's own changes (applied locally right after their commit) replay harmlessly.
        """
        with self._lock:
            applied = 0
            while True:
                with self.Session() as s:
                    changes = pending_changes(s, self.applied_seq)
                    if not changes:
                        return applied
                    need = sorted(
                        {t for c in changes if c.op == "enroll" for t in c.template_ids}
                        - self.person_of.keys()
                    )
                    rows = {}
                    for i in range(0, len(need), 5000):
                        q = select(
                            Template.id,
                            Template.person_id,
                            Template.modality,
                            Template.model_id,
                            Template.dim,
                            Template.vector,
                        ).where(Template.id.in_(need[i : i + 5000]))
                        rows.update({r[0]: r for r in s.execute(q)})
                for c in changes:
                    self._apply_change(c, rows)
                self.applied_seq = int(changes[-1].seq)
                applied += len(changes)

    def _apply_change(self, c, rows: dict) -> None:
        if c.op == "enroll":
            by_key: dict[tuple[Key, int], list] = defaultdict(list)
            for t in c.template_ids:
                # absent rows were deleted by a later change (which then removes nothing)
                if t in rows:
                    r = rows[t]
                    by_key[((r[2], r[3]), r[4])].append(r)
            for (key, dim), rs in by_key.items():
                self._add_templates(
                    self._index_for(key, dim, create=True),
                    [r[0] for r in rs],
                    [r[1] for r in rs],
                    np.stack([np.frombuffer(r[5], dtype=np.float32) for r in rs]),
                )
        elif c.op == "merge":
            for t in c.template_ids:
                if t in self.person_of:
                    self._track(t, c.person_id, self.key_of[t])
            self.templates_of.pop(c.other_person_id, None)
        elif c.op == "delete":
            self._remove_templates(c.template_ids)
            self.templates_of.pop(c.person_id, None)
        else:
            logger.warning("change feed: unknown op %r at seq %d ignored", c.op, c.seq)

    def _remove_templates(self, tids) -> None:
        """Drop templates from the indexes (only those present: removal is replayed by the change feed)."""
        with self._lock:
            by_key = defaultdict(list)
            for t in tids:
                key = self.key_of.get(t)
                if key is not None:
                    by_key[key].append(t)
                    self._untrack(t)
            for key, ts in by_key.items():
                if key in self.indexes:
                    self.indexes[key].remove(ts)

    # -------------------------------------------------------------------------------------------- embedding
    def _check_modality(self, modality: str) -> None:
        if modality not in MODALITIES:
            raise GalleryError(f"modality must be one of {MODALITIES}, got {modality!r}")

    def _vectors(
        self,
        modality: str,
        images: Sequence[ImageLike] | None,
        embeddings: np.ndarray | None,
        model_id: str | None,
        where: str,
    ) -> tuple[np.ndarray, str, list[str | None]]:
        """(unit vectors, model_id, image hashes) from either images (embedded here) or embeddings."""
        self._check_modality(modality)
        if (images is None) == (embeddings is None):
            raise GalleryError(f"{where}: give either images or embeddings (exactly one)")
        if images is not None:
            if isinstance(images, (str, os.PathLike, np.ndarray)) and not (
                isinstance(images, np.ndarray) and images.ndim == 4
            ):
                images = [images]
            images = list(images)
            if not images:
                raise GalleryError(f"{where}: the image list is empty")
            embedder = self.embedders.get(modality)
            if embedder is None:
                raise NoEmbedderError(
                    f"{where}: no {modality} embedder is configured; pass embeddings instead"
                )
            if model_id is not None and model_id != embedder.model_id:
                raise IndexMismatchError(
                    f"{where}: model_id {model_id!r} differs from the {modality} embedder's {embedder.model_id!r}"
                )
            vecs = embedder.embed(images)
            hashes: list[str | None] = [image_hash(im) for im in images]
            return check_vectors(vecs, embedder.dim, where), embedder.model_id, hashes
        if model_id is None:
            embedder = self.embedders.get(modality)
            if embedder is None:
                raise GalleryError(
                    f"{where}: model_id is required with raw embeddings (which model made them?)"
                )
            model_id = embedder.model_id
        vecs = check_vectors(embeddings, None, where)
        return vecs, model_id, [None] * len(vecs)

    # ------------------------------------------------------------------------------------------------ persons
    def create_person(
        self,
        display_name: str | None = None,
        external_id: str | None = None,
        kind: str = "enrolled",
        consent: dict | None = None,
        metadata: dict | None = None,
        store_id: str | None = None,
        purpose: str | None = None,
    ) -> int:
        """A person without templates. ``consent`` is the consent record (who agreed, when, to what),
        ``purpose`` why they are held, ``store_id`` the store whose retention applies to anonymous people."""
        with self.Session.begin() as s:
            return self._create_person(
                s, display_name, external_id, kind, consent, metadata, store_id, purpose
            )

    def _create_person(
        self, s, display_name, external_id, kind, consent=None, metadata=None, store_id=None, purpose=None
    ) -> int:
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

    def _require_person(self, s: Session, person_id: int) -> Person:
        if not isinstance(person_id, int) or not 0 < person_id < 2**63:  # beyond BIGINT: cannot exist
            raise UnknownPersonError(person_id)
        p = s.get(Person, person_id)
        if p is None:
            raise UnknownPersonError(person_id)
        return p

    def get_person(self, person_id: int) -> PersonInfo:
        with self.Session() as s:
            p = self._require_person(s, person_id)
            return self._info(s, p)

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

    def count_persons(self) -> int:
        with self.Session() as s:
            return int(s.scalar(select(func.count()).select_from(Person)) or 0)

    # ------------------------------------------------------------------------------------------------- enroll
    def enroll(
        self,
        person_id: int | None = None,
        *,
        images: Sequence[ImageLike] | None = None,
        embeddings: np.ndarray | None = None,
        modality: str = "face",
        model_id: str | None = None,
        display_name: str | None = None,
        external_id: str | None = None,
        kind: str = "enrolled",
        quality: Sequence[float] | None = None,
        sources: Sequence[str] | None = None,
        image_hashes: Sequence[str | None] | None = None,
    ) -> EnrollResult:
        """Add templates to a person (a new one when ``person_id`` is None). Images already stored for this
        model (same SHA-256) are not stored twice: they come back in ``duplicates``."""
        vecs, model_id, hashes = self._vectors(modality, images, embeddings, model_id, "enroll")
        if image_hashes is not None:
            if len(image_hashes) != len(vecs):
                raise GalleryError(f"enroll: {len(image_hashes)} image_hashes for {len(vecs)} embeddings")
            hashes = list(image_hashes)
        for name, seq in (("quality", quality), ("sources", sources)):
            if seq is not None and len(seq) != len(vecs):
                raise GalleryError(f"enroll: {len(seq)} {name} values for {len(vecs)} embeddings")
        key = (modality, model_id)
        index = self._index_for(key, vecs.shape[1], create=True)
        for attempt in range(3):
            try:
                with self.Session.begin() as s:
                    result, stored = self._enroll_tx(
                        s, person_id, vecs, key, hashes, quality, sources, display_name, external_id, kind
                    )
                break
            except IntegrityError:  # a concurrent enroll stored the same image first: recompute duplicates
                if attempt == 2:
                    raise
        self._index_add(index, result, vecs[stored])
        return result

    def _enroll_tx(self, s, person_id, vecs, key, hashes, quality, sources, display_name, external_id, kind):
        """Insert the new templates; returns the result and the batch positions of the stored rows."""
        created = False
        if person_id is None:
            person_id = self._create_person(s, display_name, external_id, kind)
            created = True
        else:
            self._require_person(s, person_id)
        result = EnrollResult(person_id, key[0], key[1], created_person=created)
        known = {h for h in hashes if h}
        existing = {}
        if known:
            existing = {
                h: (tid, pid)
                for h, tid, pid in s.execute(
                    select(Template.image_sha256, Template.id, Template.person_id).where(
                        Template.modality == key[0],
                        Template.model_id == key[1],
                        Template.image_sha256.in_(known),
                    )
                )
            }
        rows, seen = [], {}
        for i, v in enumerate(vecs):
            h = hashes[i]
            if h and h in existing:
                result.duplicates.append(Duplicate(i, existing[h][0], existing[h][1]))
                continue
            if h and h in seen:
                continue  # repeated inside this batch: resolved after insert
            t = Template(
                person_id=person_id,
                modality=key[0],
                model_id=key[1],
                dim=int(v.shape[0]),
                vector=v.astype("<f4").tobytes(),
                image_sha256=h,
                quality=None if quality is None else float(quality[i]),
                source=None if sources is None else str(sources[i])[:500],
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
        for i, h in enumerate(hashes):
            if h and h in seen and i not in stored_set:
                result.duplicates.append(Duplicate(i, seen[h].id, person_id))
        return result, stored

    def _index_add(self, index: VectorIndex, result: EnrollResult, vecs: np.ndarray) -> None:
        """After the commit: the stored templates (``vecs``, in ``result.template_ids`` order) become searchable."""
        ids = result.template_ids
        self._add_templates(index, ids, [result.person_id] * len(ids), vecs)

    def _add_templates(self, index: VectorIndex, tids: list[int], pids: list[int], vecs: np.ndarray) -> None:
        """Index and track templates, skipping those already there: a commit reaches this process both
        directly (its own writes) and through the change feed, in either order."""
        with self._lock:
            new = [i for i, t in enumerate(tids) if t not in self.person_of]
            if not new:
                return
            index.add(np.array([tids[i] for i in new], dtype=np.int64), vecs[new])
            key = (index.modality, index.model_id)
            for i in new:
                self._track(tids[i], pids[i], key)

    # ----------------------------------------------------------------------------------------------- identify
    def register_card(self, modality: str, model_id: str, card: dict | None) -> None:
        """Use a model card's calibrated decision for this model when the database holds none."""
        if card:
            self.cards[(modality, model_id)] = Decision.from_card(card)

    def decision_for(self, modality: str, model_id: str) -> Decision | None:
        """The decision of this model: calibrated in the database (cached for a few seconds; other processes
        may change it) > the operator's per-modality setting (``thresholds``, a raw score) > the model card's
        (calibrated on validation identities when the model was made) > None."""
        key = (modality, model_id)
        cached = self._threshold_cache.get(key)
        now = time.monotonic()
        if cached is None or now - cached[1] > self.THRESHOLD_TTL:
            with self.Session() as s:
                t = s.get(Threshold, key)
                stored = None if t is None else self._decision_of(t)
            cached = (stored, now)
            self._threshold_cache[key] = cached
        if cached[0] is not None:
            return cached[0]
        if self.default_thresholds.get(modality) is not None:  # the operator's explicit setting
            return Decision(float(self.default_thresholds[modality]), source="setting")
        return self.cards.get(key)

    @staticmethod
    def _decision_of(t: Threshold) -> Decision:
        return Decision(
            float(t.value), t.rule or "raw", 1.0 if t.beta is None else float(t.beta), decode_cohort(t.cohort),
            "calibrated", size_table(t.by_size),
        )  # fmt: skip

    def threshold_for(self, modality: str, model_id: str) -> float | None:
        """The threshold value of this model's decision (see ``decision_for``), or None."""
        d = self.decision_for(modality, model_id)
        return None if d is None else d.threshold

    def _rank_persons(self, index: VectorIndex, q: np.ndarray, k: int) -> list[tuple[int, float, int]]:
        """[(person_id, score, best template id)] best first."""
        n = index.ntotal
        if n == 0:
            return []
        kk = min(n, max(k * 10, 64))
        sims, ids = index.search(q, kk)
        best: dict[int, tuple[float, int]] = {}
        for sim, tid in zip(sims[0].tolist(), ids[0].tolist()):
            if tid < 0:
                continue
            pid = self.person_of.get(tid)
            if pid is None:
                continue
            if pid not in best or sim > best[pid][0]:
                best[pid] = (sim, tid)
        if self.aggregation == "mean" and best:
            for pid in best:
                tids = [
                    t
                    for t in self.templates_of.get(pid, ())
                    if self.key_of.get(t) == (index.modality, index.model_id)
                ]
                tids = [t for t in tids if t not in index.tombstones]
                if tids:
                    best[pid] = (float((index.reconstruct(tids) @ q[0]).mean()), best[pid][1])
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
        return [(pid, float(score), tid) for pid, (score, tid) in ranked]

    def identify(
        self,
        image: ImageLike | None = None,
        *,
        embedding: np.ndarray | None = None,
        modality: str = "face",
        model_id: str | None = None,
        k: int = 5,
        threshold: float | None = None,
    ) -> IdentifyResult:
        """Ranked persons for one query, and known/unknown against the threshold of this model."""
        if k < 1:
            raise GalleryError(f"identify: k must be >= 1, got {k}")
        vecs, model_id, _ = self._vectors(
            modality, None if image is None else [image], embedding, model_id, "identify"
        )
        if len(vecs) != 1:
            raise EmbeddingError(f"identify: expected one embedding, got {len(vecs)}")
        return self._identify_vec(vecs, modality, model_id, k, threshold)

    def template_ids(self, person_id: int) -> set[int]:
        """Ids of the person's templates in the indexes (a copy, read under the index lock)."""
        with self._lock:
            return set(self.templates_of.get(person_id, ()))

    def _decision(self, modality: str, model_id: str, threshold: float | None) -> Decision | None:
        return Decision(float(threshold)) if threshold is not None else self.decision_for(modality, model_id)

    def decide(
        self,
        modality: str,
        model_id: str,
        query: np.ndarray,
        person_scores: Sequence[float],
        threshold: float | None = None,
    ) -> Verdict | None:
        """This model's decision on candidate persons' scores (best first) for ``query``; e.g. to ask whether a
        track is person B once its own person A is left out. None without a decision or candidates."""
        decision = self._decision(modality, model_id, threshold)
        if decision is None:
            return None
        persons = self.persons_count(modality, model_id)
        return decision.verdict(np.asarray(query, np.float32).reshape(-1), list(person_scores), persons)

    def persons_count(self, modality: str, model_id: str) -> int:
        """Persons with templates of this model (what a size-aware threshold is read at)."""
        return len(self._key_persons.get((modality, model_id), ()))

    def _identify_vec(self, q, modality, model_id, k, threshold) -> IdentifyResult:
        key = (modality, model_id)
        index = self._index_for(key, q.shape[1], create=False)
        # the runner-up person is evidence of the decision, so at least two are ranked
        ranked = self._rank_persons(index, q, max(k, 2)) if index is not None else []
        decision = self._decision(modality, model_id, threshold)
        matches = []
        if ranked:
            with self.Session() as s:
                persons = {
                    p.id: p for p in s.scalars(select(Person).where(Person.id.in_([r[0] for r in ranked])))
                }
            for pid, score, tid in ranked:
                p = persons.get(pid)
                if p is None:  # deleted by another process meanwhile
                    continue
                matches.append(PersonMatch(pid, score, tid, p.display_name, p.external_id))
        persons = self.persons_count(modality, model_id)
        verdict = None if decision is None else decision.verdict(q[0], [m.score for m in matches], persons)
        return IdentifyResult(
            modality,
            model_id,
            matches[:k],
            None if decision is None else verdict.threshold if verdict else decision.threshold_at(persons),
            None if decision is None else bool(verdict and verdict.known),
            decision=None if decision is None else decision.describe(),
            score=None if verdict is None else verdict.score,
            runner_up=None if verdict is None else verdict.runner_up,
            normalised_score=None if verdict is None else verdict.normalised,
        )

    @contextmanager
    def _key_transaction(self, key: Key):
        """A write transaction that holds the (modality, model_id) lock across threads and processes."""
        with self._key_locks[key], self.engine.connect() as conn:
            if self.is_sqlite:
                conn.info["begin_statement"] = "BEGIN IMMEDIATE"  # take SQLite's write lock up front
            with conn.begin():
                if self.engine.dialect.name == "postgresql":
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (_lock_key(key),))
                with Session(bind=conn, expire_on_commit=False) as s:
                    yield s
                    s.flush()

    def identify_or_enroll(
        self,
        image: ImageLike | None = None,
        *,
        embedding: np.ndarray | None = None,
        modality: str = "face",
        model_id: str | None = None,
        threshold: float | None = None,
        display_name: str | None = None,
        kind: str = "anonymous",
        k: int = 5,
    ) -> IdentifyOrEnrollResult:
        """Return the known person, or create one with the query as its first template. The search is redone
        under a per-model lock, so concurrent calls with the same new face create one person only."""
        vecs, model_id, hashes = self._vectors(
            modality, None if image is None else [image], embedding, model_id, "identify_or_enroll"
        )
        if self._decision(modality, model_id, threshold) is None:
            raise GalleryError(
                f"identify_or_enroll: no threshold for {modality}/{model_id} (no calibration in this gallery, "
                "no setting, no model card); calibrate one or pass threshold="
            )
        first = self._identify_vec(vecs, modality, model_id, k, threshold)
        if first.known:
            return IdentifyOrEnrollResult(first.best.person_id, False, first.best.score, first)
        key = (modality, model_id)
        index = self._index_for(key, vecs.shape[1], create=True)
        with self._key_transaction(key) as s:
            self.sync()  # everything committed before this lock was granted, by any process
            again = self._identify_vec(vecs, modality, model_id, k, threshold)
            if again.known:
                return IdentifyOrEnrollResult(again.best.person_id, False, again.best.score, again)
            result, stored = self._enroll_tx(s, None, vecs, key, hashes, None, None, display_name, None, kind)
        self._index_add(index, result, vecs[stored])
        score = again.best.score if again.best else None
        return IdentifyOrEnrollResult(result.person_id, True, score, again, result)

    # ----------------------------------------------------------------------------------------- merge, delete
    def merge(self, keep: int, remove: int) -> PersonInfo:
        """Move ``remove``'s templates and sightings to ``keep`` and delete ``remove``."""
        if keep == remove:
            raise GalleryError(f"merge: cannot merge person {keep} into itself")
        with self.Session.begin() as s:
            self._require_person(s, keep)
            self._require_person(s, remove)
            moved = list(s.scalars(select(Template.id).where(Template.person_id == remove)))
            s.execute(update(Template).where(Template.person_id == remove).values(person_id=keep))
            s.execute(update(Sighting).where(Sighting.person_id == remove).values(person_id=keep))
            if s.get(Thumbnail, keep) is None:
                s.execute(update(Thumbnail).where(Thumbnail.person_id == remove).values(person_id=keep))
            s.execute(delete(Thumbnail).where(Thumbnail.person_id == remove))
            s.execute(delete(Person).where(Person.id == remove))
            record_change(s, "merge", keep, moved, other_person_id=remove)
        src, dst = self.person_media_dir(remove), self.person_media_dir(keep)
        if src is not None and src.exists():
            dst.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                f.replace(dst / f"{remove}_{f.name}")
            shutil.rmtree(src)
        with self._lock:
            for tid in moved:
                if tid in self.key_of:
                    self._track(tid, keep, self.key_of[tid])
            self.templates_of.pop(remove, None)
        return self.get_person(keep)

    def delete_person(self, person_id: int) -> int:
        """Erase a person: templates, sightings and index entries. Returns the number of templates removed."""
        with self.Session.begin() as s:
            self._require_person(s, person_id)
            rows = s.execute(
                select(Template.id, Template.modality, Template.model_id).where(
                    Template.person_id == person_id
                )
            ).all()
            s.execute(delete(Sighting).where(Sighting.person_id == person_id))
            s.execute(delete(Template).where(Template.person_id == person_id))
            s.execute(delete(Thumbnail).where(Thumbnail.person_id == person_id))
            s.execute(delete(Person).where(Person.id == person_id))
            record_change(s, "delete", person_id, [r[0] for r in rows])
        self._remove_templates([r[0] for r in rows])
        with self._lock:
            self.templates_of.pop(person_id, None)
        folder = self.person_media_dir(person_id)
        if folder is not None and folder.exists():
            shutil.rmtree(folder)
        return len(rows)

    def person_media_dir(self, person_id: int) -> Path | None:
        """The folder for this person's files (crops); erased with the person, moved by merge."""
        return None if self.media_dir is None else self.media_dir / str(int(person_id))

    # ------------------------------------------------------------------------------------------- thumbnails
    def set_thumbnail(self, person_id: int, image: ImageLike, size: int = 128, replace: bool = True) -> bool:
        """Store a JPEG thumbnail (longest side ``size``) of ``image`` for the person; False if one exists and
        ``replace`` is off."""
        from io import BytesIO

        from PIL import Image

        from reid.images import to_rgb_array

        im = Image.fromarray(to_rgb_array(image, where="thumbnail"))
        im.thumbnail((size, size))
        buf = BytesIO()
        im.save(buf, format="JPEG", quality=85)
        with self.Session.begin() as s:
            self._require_person(s, person_id)
            row = s.get(Thumbnail, person_id)
            if row is not None and not replace:
                return False
            row = row or Thumbnail(person_id=person_id)
            row.jpeg = buf.getvalue()
            row.updated_at = utcnow()
            s.add(row)
        return True

    def get_thumbnail(self, person_id: int) -> bytes | None:
        with self.Session() as s:
            self._require_person(s, person_id)
            row = s.get(Thumbnail, person_id)
            return None if row is None else bytes(row.jpeg)

    # --------------------------------------------------------------------------------------------- sightings
    def record_sighting(
        self,
        person_id: int,
        camera_id: str,
        score: float | None = None,
        modality: str | None = None,
        seen_at: datetime | None = None,
        track_id: str | None = None,
        event_id: str | None = None,
    ) -> int:
        """Store a sighting (and move the person's ``last_seen_at``). With an ``event_id`` it is idempotent:
        a redelivered event returns the id of the sighting already stored."""
        if not camera_id:
            raise GalleryError("record_sighting: camera_id is required")
        seen_at = to_utc(seen_at or self.clock())  # compared below with the stored (aware UTC) last_seen_at
        try:
            with self.Session.begin() as s:
                p = self._require_person(s, person_id)
                row = Sighting(
                    person_id=person_id,
                    camera_id=camera_id,
                    score=score,
                    modality=modality,
                    seen_at=seen_at,
                    track_id=track_id,
                    event_id=event_id,
                )
                s.add(row)
                last = p.last_seen_at
                if last is None or last < seen_at:
                    p.last_seen_at = seen_at
                s.flush()
                return row.id
        except IntegrityError:
            if event_id is None:
                raise
            with self.Session() as s:
                existing = s.scalar(select(Sighting.id).where(Sighting.event_id == event_id))
            if existing is None:
                raise
            return int(existing)

    def sightings(
        self,
        person_id: int | None = None,
        camera_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[SightingInfo]:
        with self.Session() as s:
            q = select(Sighting).order_by(Sighting.seen_at, Sighting.id).limit(limit)
            if person_id is not None:
                q = q.where(Sighting.person_id == person_id)
            if camera_id is not None:
                q = q.where(Sighting.camera_id == camera_id)
            if since is not None:
                q = q.where(Sighting.seen_at >= since)
            if until is not None:
                q = q.where(Sighting.seen_at < until)
            return [
                SightingInfo(r.id, r.person_id, r.camera_id, r.seen_at, r.score, r.modality, r.track_id)
                for r in s.scalars(q)
            ]

    # -------------------------------------------------------------------------------------------- thresholds
    def set_threshold(
        self,
        modality: str,
        model_id: str,
        value: float,
        actor: str = "local",
        rule: str = "raw",
        beta: float | None = None,
        cohort: np.ndarray | None = None,
        by_size: dict[int, float] | None = None,
        **measured: Any,
    ) -> None:
        """Store the decision of a model (a configuration change: audited, with ``actor``). It overrides the
        model card's. ``rule="raw"`` compares ``value`` with the best score; ``"margin"`` with
        best - ``beta`` * runner-up (the second person, or the best of ``cohort``)."""
        self._check_modality(modality)
        table = {str(int(k)): float(v) for k, v in (by_size or {}).items()} or None
        decision = Decision(
            float(value), rule, 1.0 if beta is None else float(beta), cohort, "calibrated", size_table(table)
        )
        with self.Session.begin() as s:
            AuditLog(self.Session, self.clock).write(
                "set-threshold",
                "ok",
                key_id=actor,
                subject=f"threshold:{modality}/{model_id}",
                detail={
                    "value": float(value),
                    "rule": rule,
                    "beta": beta,
                    **{k: v for k, v in measured.items() if v is None or isinstance(v, (int, float, str))},
                },
                session=s,
            )
            t = s.get(Threshold, (modality, model_id)) or Threshold(modality=modality, model_id=model_id)
            t.value = float(value)
            t.rule, t.beta, t.cohort, t.by_size = rule, beta, encode_cohort(cohort), table
            for k, v in measured.items():
                setattr(t, k, v)
            s.add(t)
        self._threshold_cache[(modality, model_id)] = (decision, time.monotonic())

    def calibrate_threshold(
        self,
        modality: str,
        model_id: str,
        embeddings: np.ndarray,
        labels: Sequence[int | str],
        target_far: float = 1e-2,
        store: bool = True,
        rule: str = "margin",
        enroll_per_id: int = 1,
        cohort: np.ndarray | None = None,
        cohort_fraction: float = 1 / 3,
        seed: int = 0,
    ) -> CalibrationResult:
        """Calibrate this model's open-set decision on labelled embeddings of people who are *not* enrolled.

        The gallery is simulated as it is used (``reid.metrics.open_set_decision.calibrate_decision``): each
        identity enrolled with ``enroll_per_id`` images, its other images asked, and other identities asking as
        strangers. ``rule="margin"`` weighs the best score against the runner-up (second person or a cohort of
        never-enrolled people: ``cohort``, else ``cohort_fraction`` of the identities given, one image each) and
        chooses beta; ``rule="raw"`` thresholds the best score alone. The threshold is the smallest value at
        which at most ``target_far`` of the strangers are accepted.
        """
        from reid.metrics.open_set_decision import calibrate_decision, calibrate_with_cohort

        if rule not in RULES:
            raise GalleryError(f"calibrate: rule must be one of {RULES}, got {rule!r}")
        vecs = check_vectors(embeddings, None, "calibrate")
        labels = np.asarray(labels)
        if len(labels) != len(vecs):
            raise GalleryError(f"calibrate: {len(vecs)} embeddings but {len(labels)} labels")
        try:
            if rule == "margin" and cohort is None:  # carved out of the identities given, as a model card's
                cal, cohort = calibrate_with_cohort(
                    vecs, labels, target_far, enroll_per_id, cohort_fraction, seed
                )
            else:
                if cohort is not None:
                    cohort = check_vectors(cohort, vecs.shape[1], "calibrate cohort")
                cal = calibrate_decision(
                    vecs, labels, target_far, enroll_per_id, cohort if rule == "margin" else None,
                    betas=(0.0, 0.25, 0.5, 0.75, 1.0) if rule == "margin" else (0.0,), seed=seed,
                )  # fmt: skip
        except EvaluationError as e:
            raise GalleryError(str(e)) from e
        rule = cal.rule  # "raw" when beta 0 named the most
        result = CalibrationResult(
            modality, model_id, cal.threshold, target_far, cal.measured_far, cal.measured_dir,
            cal.n_mated, cal.n_strangers, rule, cal.beta if rule == "margin" else None, cal.measured_dir,
            0 if rule == "raw" or cohort is None else len(cohort), cal.by_size,
        )  # fmt: skip
        if store:
            self.set_threshold(
                modality,
                model_id,
                cal.threshold,
                rule=rule,
                beta=result.beta,
                cohort=cohort if rule == "margin" else None,
                by_size=cal.by_size,
                target_far=target_far,
                measured_far=cal.measured_far,
                measured_tar=cal.measured_dir,
                measured_dir=cal.measured_dir,
                n_genuine=cal.n_mated,
                n_impostor=cal.n_strangers,
                source=f"calibrate_threshold ({cal.n_identities} identities, {enroll_per_id} enrolled each)",
            )
        return result

    # ------------------------------------------------------------------------------------------- consistency
    def check_consistency(self) -> dict[str, dict[str, int]]:
        """Database vs index template counts per key (they must agree)."""
        out = {}
        with self.Session() as s:
            for key, index in self.indexes.items():
                out[f"{key[0]}/{key[1]}"] = {"database": self._db_state(s, key).count, "index": index.ntotal}
        return out
