"""The in-memory side of the gallery: one FAISS index per (modality, model_id) and the template -> person maps.

It is derived from the database (``gallery.store``): loaded (or rebuilt) at start-up, then kept equal by this
process's own writes (after their commit) and by the change feed (``sync``, other processes' writes). One lock
(``IndexCache.lock``) guards the maps; every read of them (ranking, counts, copies) happens under it, so a
change-feed thread can apply changes while request threads identify. The FAISS indexes have their own locks.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from gallery.errors import EmbeddingError, GalleryError, IndexMismatchError
from gallery.index import IndexConfig, VectorIndex
from gallery.models import Change
from gallery.store import GalleryStore, Key
from reid.metrics.aggregation import AGGREGATIONS, DEFAULT_AGGREGATION, aggregate

logger = logging.getLogger(__name__)


def key_name(key: Key) -> str:
    """The file name of a (modality, model_id) index snapshot."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key[1])
    return f"{key[0]}__{safe}__{hashlib.sha256(key[1].encode()).hexdigest()[:8]}"


def aggregation_by_modality(aggregation: str | Mapping[str, str] | None) -> dict[str, str]:
    """``aggregation`` for every modality: one name for all, a mapping over the defaults
    (``reid.metrics.aggregation.DEFAULT_AGGREGATION``), or None (the defaults)."""
    if aggregation is None:
        return dict(DEFAULT_AGGREGATION)
    if isinstance(aggregation, str):
        if aggregation not in AGGREGATIONS:
            raise GalleryError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
        return dict.fromkeys(DEFAULT_AGGREGATION, aggregation)
    if not isinstance(aggregation, Mapping):
        raise GalleryError(
            f"aggregation must be a name ({', '.join(AGGREGATIONS)}) or {{modality: name}}, got {aggregation!r}"
        )
    unknown = set(aggregation) - set(DEFAULT_AGGREGATION)
    if unknown:
        raise GalleryError(
            f"aggregation: unknown modality {sorted(unknown)}; known: {', '.join(DEFAULT_AGGREGATION)}"
        )
    chosen = {**DEFAULT_AGGREGATION, **aggregation}
    for modality, how in chosen.items():
        if how not in AGGREGATIONS:
            raise GalleryError(
                f"aggregation for {modality} must be one of {', '.join(AGGREGATIONS)}, got {how!r}"
            )
    return chosen


class IndexCache:
    """FAISS indexes plus ``person_of`` (template -> person), ``key_of`` (template -> model), ``templates_of``
    (person -> templates) and the persons per model, all guarded by ``lock``.

    Args:
        store: the database the cache is derived from.
        config: how indexes are built.
        index_dir: folder of index snapshots (None: always rebuilt from the database).
        aggregation: per modality, how a person's templates of one model score a query (``aggregate``):
            ``"centroid"``, ``"max"`` or ``"mean"``. Indexes that cannot read vectors back (ivfpq) rank by max.
    """

    def __init__(
        self,
        store: GalleryStore,
        config: IndexConfig,
        index_dir: Path | None,
        aggregation: str | Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.index_dir = index_dir
        self.aggregation = aggregation_by_modality(aggregation)
        self.lock = threading.RLock()
        self.indexes: dict[Key, VectorIndex] = {}
        self.person_of: dict[int, int] = {}  # template id -> person id
        self.key_of: dict[int, Key] = {}  # template id -> (modality, model_id)
        self.templates_of: dict[int, set[int]] = defaultdict(set)  # person id -> template ids
        # (modality, model_id) -> person id -> templates: how many persons a size-aware threshold is read at
        self.key_persons: dict[Key, Counter[int]] = defaultdict(Counter)
        self.applied_seq = 0  # every change-feed row up to this one is reflected in the indexes

    # ----------------------------------------------------------------------------------------- load, save
    def load(self) -> None:
        """Load the indexes from their snapshots when they match the database, else rebuild them."""
        with self.lock, self.store.Session() as s:
            # read before the templates: changes committed while loading are replayed (idempotently) by sync()
            self.applied_seq = self.store.last_seq(s)
            keys = self.store.template_keys(s)
            for r in self.store.template_owners(s):
                self._track(r.id, r.person_id, (r.modality, r.model_id))
            for key, dim in keys:
                index = self._new_index(key, dim)
                loaded = self.index_dir is not None and index.load(
                    self.index_dir, key_name(key), self.store.db_state(s, key)
                )
                if not loaded:
                    self._rebuild(s, index)
                self.indexes[key] = index
                logger.info(
                    "index %s/%s: %d templates (%s, %s)",
                    key[0],
                    key[1],
                    index.ntotal,
                    index.kind,
                    "snapshot" if loaded else "rebuilt from database",
                )

    def _new_index(self, key: Key, dim: int) -> VectorIndex:
        return VectorIndex(key[0], key[1], dim, self.config, source=lambda: self._vectors(key, dim))

    def _vectors(self, key: Key, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Every (template ids, vectors) of one model, read from the database (background rebuilds of ivfpq
        indexes, whose codes cannot give the vectors back, read them here)."""
        with self.store.Session() as s:
            ids, vecs = self.store.template_vectors(s, key)
        return ids, np.stack(vecs) if vecs else np.zeros((0, dim), np.float32)

    def _rebuild(self, s: Session, index: VectorIndex) -> None:
        ids, vecs = self.store.template_vectors(s, (index.modality, index.model_id))
        index.build(ids, np.stack(vecs) if vecs else np.zeros((0, index.dim), np.float32))

    def wait_rebuilt(self, timeout: float | None = None) -> bool:
        """Wait until no index has a background rebuild in flight (False: one still runs after ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for index in list(self.indexes.values()):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not index.wait_rebuilt(left):
                return False
        return True

    def close(self) -> None:
        """Drop background rebuilds in flight (their threads stop at their next step; nothing changes)."""
        for index in list(self.indexes.values()):
            index.cancel_rebuild()

    def rebuild(self, modality: str | None = None, model_id: str | None = None) -> list[Key]:
        """Rebuild indexes from the database (all, or those matching the filters)."""
        done = []
        with self.store.Session() as s:
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
            index.save(self.index_dir, key_name(key))

    def check_consistency(self) -> dict[str, dict[str, int]]:
        """Database vs index template counts per key (they must agree). Asks the database even when no index
        exists yet, so a database that cannot be reached raises (what readiness reports)."""
        out = {}
        with self.store.Session() as s:
            s.execute(text("SELECT 1"))
            for key, index in list(self.indexes.items()):
                out[f"{key[0]}/{key[1]}"] = {
                    "database": self.store.db_state(s, key).count,
                    "index": index.ntotal,
                }
        return out

    def index_for(self, key: Key, dim: int, create: bool) -> VectorIndex | None:
        """The index of this model (created empty when ``create``); refuses an embedding of another size."""
        with self.lock:
            index = self.indexes.get(key)
            if index is None:
                if not create:
                    return None
                index = self._new_index(key, dim)
                self.indexes[key] = index
            elif index.dim != dim:
                raise IndexMismatchError(
                    f"model {key[1]!r} ({key[0]}) has {index.dim}-d templates; refusing a {dim}-d embedding"
                )
            return index

    # ------------------------------------------------------------------------------------------------ maps
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
        self.key_persons[key][pid] += 1

    def _untrack(self, tid: int) -> None:
        pid = self.person_of.get(tid)
        if pid is not None:
            self._count_out(tid, pid)
            self.templates_of[pid].discard(tid)
        self.person_of.pop(tid, None)
        self.key_of.pop(tid, None)

    def _count_out(self, tid: int, pid: int) -> None:
        persons = self.key_persons[self.key_of[tid]]
        persons[pid] -= 1
        if persons[pid] <= 0:
            del persons[pid]

    def template_ids(self, person_id: int) -> set[int]:
        """Ids of the person's templates in the indexes (a copy)."""
        with self.lock:
            return set(self.templates_of.get(person_id, ()))

    def persons_count(self, key: Key) -> int:
        """Persons with templates of this model."""
        with self.lock:
            return len(self.key_persons.get(key, ()))

    # ------------------------------------------------------------------------------------------- mutation
    def add(self, index: VectorIndex, tids: list[int], pids: list[int], vecs: np.ndarray) -> None:
        """Index and track templates, skipping those already there: a commit reaches this process both
        directly (its own writes) and through the change feed, in either order."""
        with self.lock:
            new = [i for i, t in enumerate(tids) if t not in self.person_of]
            if not new:
                return
            index.add(np.array([tids[i] for i in new], dtype=np.int64), vecs[new])
            key = (index.modality, index.model_id)
            for i in new:
                self._track(tids[i], pids[i], key)

    def remove(self, tids: Iterable[int]) -> None:
        """Drop templates from the indexes (only those present: removal is replayed by the change feed)."""
        with self.lock:
            by_key = defaultdict(list)
            for t in tids:
                key = self.key_of.get(t)
                if key is not None:
                    by_key[key].append(t)
                    self._untrack(t)
            for key, ts in by_key.items():
                if key in self.indexes:
                    self.indexes[key].remove(ts)

    def move(self, tids: Iterable[int], keep: int, remove: int) -> None:
        """A merge: the templates now belong to ``keep``; ``remove`` is gone."""
        with self.lock:
            for tid in tids:
                if tid in self.key_of:
                    self._track(tid, keep, self.key_of[tid])
            self.templates_of.pop(remove, None)

    def forget_person(self, person_id: int, tids: Iterable[int]) -> None:
        """An erasure: the person's templates leave the indexes."""
        with self.lock:
            self.remove(tids)
            self.templates_of.pop(person_id, None)

    # --------------------------------------------------------------------------------------- change feed
    def sync(self) -> int:
        """Apply the change-feed rows committed since the last call (by any process); returns how many.

        Idempotent: templates already in the index are skipped, removals of absent templates are no-ops, so
        this process's own changes (applied locally right after their commit) replay harmlessly.
        """
        with self.lock:
            applied = 0
            while True:
                changes, rows = self.store.changes_since(self.applied_seq, self.person_of.keys())
                if not changes:
                    return applied
                for c in changes:
                    self.apply(c, rows)
                self.applied_seq = int(changes[-1].seq)
                applied += len(changes)

    def apply(self, c: Change, rows: Mapping[int, object]) -> None:
        """Apply one change; ``rows``: template id -> row with the ``gallery.store.TEMPLATE_COLUMNS``."""
        with self.lock:
            if c.op == "enroll":
                by_key: dict[tuple[Key, int], list] = defaultdict(list)
                for t in c.template_ids:
                    r = rows.get(t)  # absent rows were deleted by a later change (which then removes nothing)
                    if r is not None:
                        by_key[((r.modality, r.model_id), r.dim)].append(r)
                for (key, dim), rs in by_key.items():
                    self.add(
                        self.index_for(key, dim, create=True),
                        [r.id for r in rs],
                        [r.person_id for r in rs],
                        np.stack([np.frombuffer(r.vector, dtype=np.float32) for r in rs]),
                    )
            elif c.op == "merge":
                self.move([t for t in c.template_ids if t in self.person_of], c.person_id, c.other_person_id)
            elif c.op == "delete":
                self.forget_person(c.person_id, c.template_ids)
            else:
                logger.warning("change feed: unknown op %r at seq %d ignored", c.op, c.seq)

    # ---------------------------------------------------------------------------------------------- rank
    def how(self, index: VectorIndex) -> str:
        """The aggregation this index's persons are ranked by (ivfpq keeps no vectors to aggregate: max)."""
        return "max" if index.kind == "ivfpq" else self.aggregation[index.modality]

    def rank_persons(
        self, index: VectorIndex, q: np.ndarray, k: int, exclude: int | None = None
    ) -> list[tuple[int, float, int]]:
        """[(person_id, score, best template id)] best first, for one query ``q`` (1, D); template
        ``exclude`` is left out (a stored template asked as if it were a new photo of its person).

        The FAISS search runs outside the maps' lock (the index has its own); the maps are read, and the
        vectors of persons with several templates read back (``centroid`` and ``mean``), under it, so no
        template moves or leaves meanwhile. The candidates are the persons of the best ``max(10 k, 64)``
        templates: a person none of whose templates is among them is not ranked."""
        n = index.ntotal
        if n == 0:
            return []
        sims, ids = index.search(q, min(n, max(k * 10, 64)))
        key = (index.modality, index.model_id)
        best: dict[int, tuple[float, int]] = {}
        with self.lock:
            for sim, tid in zip(sims[0].tolist(), ids[0].tolist()):
                pid = self.person_of.get(tid) if tid >= 0 and tid != exclude else None
                if pid is not None and (pid not in best or sim > best[pid][0]):
                    best[pid] = (sim, tid)
            how = self.how(index)
            if how != "max":
                by_max = dict(best)
                counts = self.key_persons.get(key, {})
                for pid in best:
                    if counts.get(pid, 0) < 2:
                        continue  # one template: every aggregation is its similarity
                    tids = [
                        t
                        for t in self.templates_of.get(pid, ())
                        if self.key_of.get(t) == key and t not in index.tombstones and t != exclude
                    ]
                    if not tids:
                        continue
                    try:
                        vectors = index.reconstruct(tids)
                    except EmbeddingError:  # swapped to ivfpq since ``how`` was read: no vectors, so max
                        best = by_max
                        break
                    best[pid] = (aggregate(vectors, q[0], how), best[pid][1])
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
        return [(pid, float(score), tid) for pid, (score, tid) in ranked]
