"""FAISS indexes derived from the templates table: one per (modality, model_id), ids = template ids.

Kinds: ``flat`` (exact inner product), ``hnsw`` (graph, approximate; deletions are tombstones filtered at search
and dropped by a rebuild once they are a fifth of the index), ``ivf`` (inverted lists of float32 vectors,
about 2 sqrt(n) lists trained on the vectors present when built, ``ivf_nprobe`` lists read per query) and
``ivfpq`` (the same lists holding PQ codes; for 10M-template galleries). IVF indexes keep the template ids in
their lists (not in an ``IndexIDMap``: removing from an id map over IVF renumbers the map but not the lists, so
every later answer would name the wrong templates). Vectors are unit length, so inner product is cosine
similarity.

``auto`` (the default) keeps exact search below ``auto_threshold`` (20k) vectors and ``large_kind`` (``ivf``,
64 of about 2 sqrt(n) lists per query) from there on. Chosen with ``benchmarks/index_million.py`` on synthetic
body templates fitted to real embeddings (identities placed like cuhk03-np's training identities, photos
scattered like the shipped model's held-out validation identities; no test split chose anything): at 1M
templates IVF built in about 2 minutes where HNSW (M=32) took 12 to 18 on the shared 2-core machine, answers
one query in ~3 ms (p50) with person recall@1 >= 0.99 against exact search (32 lists gave 0.978), and deletes
for real (the retention sweeps delete every day; HNSW would carry tombstones); exact search at 50k already
cost ~10 ms per query (docs/DEPLOYMENT.md, "Large galleries", has the table).

The kind follows the size while the gallery runs, not only at start-up: when adds or removals make another
shape right (``auto`` crossing its threshold upwards, or falling below half of it; an IVF holding twice the
vectors its lists were sized for; an HNSW a fifth tombstones), a background thread (all cores but one) copies
the vectors 32k at a time under the lock, builds the new index outside it while searches keep answering from
the current one, replays the adds and removals recorded since the copy began, and swaps the new index in under
the lock together with the last few hundred changes. Searches wait at most for one chunk of the copy or the
swap, never for the build. ``ivfpq`` codes cannot give vectors back: its rebuilds read them from the
database (``source``). A full ``build`` (start-up, ``Gallery.rebuild_index``) drops a rebuild in flight.

Searches of fewer than ``IndexConfig.small_batch`` queries (one identify) run with ``search_threads`` OpenMP
threads (default 1, env ``REID_FAISS_THREADS``; 0 = OpenMP's default, all cores): splitting one query's scan
over every core costs more in wake-ups and waiting than it saves, most of all when other processes (a second
replica, the camera pipeline) want the cores too. Larger batches and index builds keep all threads.

Snapshots (``save``) are written atomically with a manifest: the DB state they reflect (count, max and sum of
template ids) and the SHA-256 of the index file. ``load`` refuses a file whose checksum or state does not match
the database, so a stale or corrupt snapshot is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from gallery.errors import EmbeddingError, GalleryError, IndexMismatchError

logger = logging.getLogger(__name__)

THREADS_ENV = "REID_FAISS_THREADS"


def search_threads_from_env() -> int:
    """OpenMP threads for small searches from ``REID_FAISS_THREADS`` (default 1; 0 = all)."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return 1
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise GalleryError(f"{THREADS_ENV} must be a whole number >= 0 (0 = all OpenMP threads), got {raw!r}")
    return n


@contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Run the body with ``n`` OpenMP threads in the calling thread, then restore its setting (``n`` <= 0:
    leave it alone).

    No lock is needed although FAISS calls the setting global: in OpenMP the thread count (nthreads-var) is
    an ICV of the calling thread's data environment, so a request thread that limits its own search does not
    change the threads of a batch search or build running in another thread (tests/test_gallery.py checks
    this on the bundled runtime). A lock would instead serialise every search of every index.
    """
    before = faiss.omp_get_max_threads()
    if n <= 0 or n == before:
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


# A background rebuild replays the changes made while it built: outside the lock while more than this many
# templates are pending, then the rest under the lock together with the swap (so the swap stalls searches for
# about as long as adding this many templates takes); after CATCH_UP_ROUNDS rounds it swaps regardless.
CATCH_UP_UNDER_LOCK = 256
CATCH_UP_ROUNDS = 8
# ...and copies the vectors this many at a time under the lock: memory is slow on a busy small machine (a
# plain copy of 1 GB took ~2 s on the 2-core build machine), and searches wait only for one chunk
COPY_CHUNK = 32_768
IVF_MIN = 1000  # fewer vectors than this do not train an IVF: exact search instead
# an IVF is retrained once it holds this many times the vectors its lists were sized for (lists that long)
IVF_REGROW = 2
AUTO_SHRINK = 0.5  # auto returns to exact search below half its threshold: no flapping at the threshold
HNSW_COMPACT = 0.2  # an HNSW is rebuilt without its tombstones once they are this share of its vectors
KINDS = ("flat", "hnsw", "ivf", "ivfpq")


@dataclass
class IndexConfig:
    kind: str = "auto"  # auto | flat | hnsw | ivf | ivfpq
    # auto: exact search below auto_threshold vectors, large_kind from there on (switched while running)
    auto_threshold: int = 20_000
    large_kind: str = "ivf"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    ivf_nlist: int = 0  # 0: about 2 * sqrt(n)
    ivf_nprobe: int = 64
    # ivfpq (very large galleries): pq_m bytes of code + 8 bytes of id per template, no raw vectors in memory
    # (the database keeps them); scores are approximate and mean aggregation is unavailable
    pq_m: int = 64
    # OpenMP threads for a search of fewer than ``small_batch`` queries (0: all); see the module docstring
    search_threads: int = field(default_factory=search_threads_from_env)
    small_batch: int = 16
    # OpenMP threads of a background rebuild (0: all cores but one, at least one): the searches it runs
    # beside keep a core (start-up builds, with no searches yet, use all)
    rebuild_threads: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("auto", *KINDS):
            raise GalleryError(
                f"IndexConfig.kind must be auto or one of {', '.join(KINDS)}, got {self.kind!r}"
            )
        if self.large_kind not in KINDS:
            raise GalleryError(
                f"IndexConfig.large_kind must be one of {', '.join(KINDS)}, got {self.large_kind!r}"
            )
        if not isinstance(self.search_threads, int) or self.search_threads < 0:
            raise GalleryError(f"IndexConfig.search_threads must be an int >= 0, got {self.search_threads!r}")


@dataclass(frozen=True)
class DBState:
    """What the database holds for one key; a snapshot is valid only for exactly this state."""

    count: int
    max_id: int
    id_sum: int


def check_vectors(vectors: np.ndarray, dim: int | None, where: str) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[0] == 0:
        raise EmbeddingError(
            f"{where}: expected an (N, D) array of embeddings, got shape {np.shape(vectors)}"
        )
    if dim is not None and v.shape[1] != dim:
        raise IndexMismatchError(
            f"{where}: embeddings have dimension {v.shape[1]}, this model's index has {dim}"
        )
    if not np.isfinite(v).all():
        raise EmbeddingError(f"{where}: embeddings contain NaN or infinity")
    norms = np.linalg.norm(v, axis=1)
    bad = np.where(np.abs(norms - 1.0) > 1e-3)[0]
    if bad.size:
        raise EmbeddingError(
            f"{where}: embeddings must be L2-normalised; row {int(bad[0])} has norm {norms[bad[0]]:.4f}"
        )
    return np.ascontiguousarray(v)


@dataclass
class _Rebuild:
    """A background rebuild in flight: what it builds, why, and the changes made since it read the vectors."""

    kind: str
    reason: str
    journal: list[tuple[str, np.ndarray, np.ndarray | None]] = field(default_factory=list)
    recording: bool = False
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Built:
    """A FAISS index not yet in use, with what ``VectorIndex`` keeps beside it."""

    index: faiss.Index
    kind: str
    planned: int
    tombstones: set[int] = field(default_factory=set)
    # ids in ``index`` while changes are replayed onto it: adds of ids it holds and removals of ids it does
    # not are skipped (its copy was taken piecewise, or read from the database, while changes were recorded)
    present: set[int] | None = None


class VectorIndex:
    """Thread-safe FAISS index of one (modality, model_id).

    Its kind follows its size while running: once adds or removals make another shape right (``auto`` past
    its threshold, an IVF outgrowing its lists, an HNSW full of tombstones), a background thread builds the
    new index from a copy of the vectors while searches keep using the current one, then swaps it in under the
    lock after replaying the adds and removals made meanwhile.

    Args:
        source: returns every (template ids, vectors) of this model from the database; used by background
            rebuilds of an ``ivfpq`` index, whose compressed codes cannot give the vectors back.
    """

    def __init__(
        self,
        modality: str,
        model_id: str,
        dim: int,
        config: IndexConfig | None = None,
        source: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self.modality, self.model_id, self.dim = modality, model_id, dim
        self.config = config or IndexConfig()
        self.source = source
        self.lock = threading.RLock()
        self.kind = "flat"
        self.index = self._new_flat()
        self.tombstones: set[int] = set()
        self.max_id = 0
        self.planned = 0  # the vector count the index was shaped for (an IVF's number of lists)
        self.rebuilds = 0  # background rebuilds swapped in
        self._job: _Rebuild | None = None
        self._swaps = threading.Event()  # cleared while ``holding_swaps``
        self._swaps.set()
        self._retry_at = 0  # after a failed background rebuild: not tried again below this many vectors
        self.copy_chunk = COPY_CHUNK
        self.history: deque[dict[str, object]] = deque(maxlen=32)  # the background rebuilds swapped in

    # -- construction -------------------------------------------------------------------------------------
    def _new_flat(self) -> faiss.Index:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _choose_kind(self, n: int) -> str:
        """The kind an index of ``n`` vectors should have under this configuration."""
        kind = self.config.kind
        if kind == "auto":
            kind = self.config.large_kind if n >= self.config.auto_threshold else "flat"
        if kind not in KINDS:
            raise EmbeddingError(f"index kind must be auto, {', '.join(KINDS)}, got {kind!r}")
        if kind == "ivfpq" and self.dim % self.config.pq_m:
            raise EmbeddingError(f"ivfpq: pq_m={self.config.pq_m} must divide the dimension {self.dim}")
        if kind in ("ivf", "ivfpq") and n < IVF_MIN:
            return "flat"
        return kind

    def _make(self, kind: str, ids: np.ndarray, vectors: np.ndarray) -> _Built:
        """A new index of ``kind`` holding these vectors; touches nothing in use (runs outside the lock)."""
        if kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = self.config.ef_construction
            base.hnsw.efSearch = self.config.ef_search
            index = faiss.IndexIDMap2(base)
        elif kind in ("ivf", "ivfpq"):
            index = self.trained_ivf(kind, vectors, len(ids))
        else:
            index = self._new_flat()
        if len(ids):
            index.add_with_ids(vectors, ids)
        return _Built(index, kind, len(ids))

    def _install(self, built: _Built) -> None:
        self.index, self.kind, self.planned = built.index, built.kind, built.planned
        self.tombstones = built.tombstones

    def build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the content with exactly these vectors (used at start-up and by rebuild)."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        built = self._make(self._choose_kind(len(ids)), ids, vectors)
        with self.lock:
            # a background rebuild of the content before this one is dropped at its next step
            self._job = None
            self._retry_at = 0
            self._install(built)
            self.max_id = int(ids.max()) if len(ids) else 0

    def trained_ivf(self, kind: str, sample: np.ndarray, n_expected: int) -> faiss.Index:
        """An empty, trained IVF with the template ids in its lists (``ivf``: float32 vectors, read back through
        a hash-table direct map; ``ivfpq``: PQ codes).

        ``n_expected`` sizes the coarse quantiser (about 2 * sqrt(n) lists unless ``ivf_nlist`` is set)."""
        nlist = self.config.ivf_nlist or max(16, int(2 * np.sqrt(n_expected)))
        quantizer = faiss.IndexFlatIP(self.dim)
        if kind == "ivfpq":
            ivf = faiss.IndexIVFPQ(
                quantizer, self.dim, nlist, self.config.pq_m, 8, faiss.METRIC_INNER_PRODUCT
            )
        else:
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        want = 50 * nlist if kind == "ivf" else max(50 * nlist, 40 * 256)  # PQ: 256 centroids per sub-space
        ivf.train(sample[rng.choice(len(sample), min(len(sample), want), replace=False)])
        ivf.nprobe = self.config.ivf_nprobe
        if kind == "ivf":  # reconstruct by template id; a hash table (unlike an array) allows removals
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return ivf

    # -- mutation -----------------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = check_vectors(vectors, self.dim, f"index {self.modality}/{self.model_id}")
        with self.lock:
            self.index.add_with_ids(vectors, ids)
            if len(ids):
                self.max_id = max(self.max_id, int(ids.max()))
            self._record("add", ids, vectors)
            self._maybe_rebuild()

    def remove(self, ids) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        if ids.size == 0:
            return
        with self.lock:
            if self.kind == "hnsw":
                self.tombstones.update(int(i) for i in ids)
            else:
                self.index.remove_ids(ids)
            self._record("remove", ids, None)
            self._maybe_rebuild()

    # -- background rebuilds --------------------------------------------------------------------------------
    @property
    def rebuilding(self) -> dict[str, object] | None:
        """The background rebuild in flight, if any: the ``kind`` it builds, the ``reason``, whether it has
        ``copied`` the vectors (changes since are replayed onto it) and how many changes are ``pending``."""
        job = self._job
        if job is None:
            return None
        return {"kind": job.kind, "reason": job.reason, "copied": job.recording, "pending": len(job.journal)}

    def wait_rebuilt(self, timeout: float | None = None) -> bool:
        """Wait until no background rebuild is in flight (False: still one after ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.lock:
                job = self._job
            if job is None:
                return True
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not job.done.wait(left) and left is not None:
                return False

    @contextmanager
    def holding_swaps(self) -> Iterator[None]:
        """Background rebuilds copy, build and record changes as usual while the body runs, but do not swap
        in: the current index answers until the body ends (tests use this to change the gallery while a
        rebuild is in flight; an operator could to postpone a switch)."""
        self._swaps.clear()
        try:
            yield
        finally:
            self._swaps.set()

    def cancel_rebuild(self) -> None:
        """Drop a background rebuild in flight (its thread stops at its next step; the index is unchanged)."""
        with self.lock:
            self._job = None

    def _record(self, op: str, ids: np.ndarray, vectors: np.ndarray | None) -> None:
        job = self._job
        if job is not None and job.recording:  # copies: the caller may reuse its arrays
            job.journal.append((op, ids.copy(), None if vectors is None else vectors.copy()))

    def _wanted(self) -> tuple[str, str] | None:
        """(kind, reason) when the index should be rebuilt in another shape, else None."""
        n = self.ntotal
        want = self._choose_kind(n)
        if self.config.kind == "auto" and want == "flat" and n >= AUTO_SHRINK * self.config.auto_threshold:
            want = self.kind  # shrinking, but not far enough to go back
        if want != self.kind:
            return want, f"{n} templates: {self.kind} -> {want}"
        if want in ("ivf", "ivfpq") and not self.config.ivf_nlist and n > IVF_REGROW * max(self.planned, 1):
            return want, f"{n} templates in lists sized for {self.planned}: retraining"
        if want == "hnsw" and len(self.tombstones) > HNSW_COMPACT * max(int(self.index.ntotal), 1):
            return want, f"{len(self.tombstones)} of {int(self.index.ntotal)} deleted: compacting"
        return None

    def _maybe_rebuild(self) -> None:
        """Start a background rebuild when the index wants another shape (called under the lock)."""
        if self._job is not None or self.ntotal < self._retry_at:
            return
        try:
            wanted = self._wanted()
        except EmbeddingError as e:  # e.g. pq_m does not divide this model's dimension: the add stands
            self._retry_at = 2 * max(self.ntotal, 1)
            logger.warning("index %s/%s cannot change kind: %s", self.modality, self.model_id, e)
            return
        if wanted is None:
            return
        if self.kind == "ivfpq" and self.source is None:
            self._retry_at = 2 * self.ntotal  # codes cannot give vectors back; the next start-up rebuilds
            logger.warning(
                "index %s/%s wants a rebuild (%s) but has no database source: not rebuilt until restart",
                self.modality, self.model_id, wanted[1],
            )  # fmt: skip
            return
        job = _Rebuild(*wanted)
        self._job = job
        logger.info(
            "index %s/%s: %s; building a %s index in the background (searches use the %s index meanwhile)",
            self.modality, self.model_id, job.reason, job.kind, self.kind,
        )  # fmt: skip
        name = f"index-rebuild-{self.modality}-{self.model_id}"
        threading.Thread(target=self._run, args=(job,), name=name, daemon=True).start()

    def _run(self, job: _Rebuild) -> None:
        with omp_threads(self.config.rebuild_threads or max(1, faiss.omp_get_max_threads() - 1)):
            self._rebuild_in_background(job)

    def _rebuild_in_background(self, job: _Rebuild) -> None:
        """Copy, build outside the lock, catch up, swap under the lock."""
        t0 = time.perf_counter()
        try:
            with self.lock:
                if job is not self._job:
                    return
                from_db = self.kind == "ivfpq"
                # from here on every change is also replayed onto the new index, so the copy may be taken
                # piecewise: the replay skips adds of ids it has and removals of ids it has not
                job.recording = True
            if from_db:
                ids, vectors = self.source()
                copy_hold = 0.0
                during_copy = len(job.journal)
            else:
                copied = self._copy_in_chunks(job)
                if copied is None:
                    return
                ids, vectors, copy_hold = copied
            during_copy = len(job.journal)
            built = self._make(job.kind, ids, vectors)
            built.present = set(ids.tolist())
            copied_n = len(ids)
            del ids, vectors
            while not self._swaps.wait(0.05):
                if job is not self._job:
                    return
            replayed = 0
            for round_ in range(CATCH_UP_ROUNDS + 1):
                with self.lock:
                    if job is not self._job:
                        return
                    pending, job.journal = job.journal, []
                    replayed += len(pending)
                    if round_ == CATCH_UP_ROUNDS or sum(len(op[1]) for op in pending) <= CATCH_UP_UNDER_LOCK:
                        t_swap = time.perf_counter()
                        self._replay(built, pending)
                        built.present = None
                        done = {
                            "from": self.kind, "to": built.kind, "reason": job.reason, "copied": copied_n,
                            "changes_replayed": replayed, "changes_during_copy": during_copy, "seconds": 0.0, "copy_chunk_hold_s": copy_hold,
                        }  # fmt: skip
                        self._install(built)
                        self._job = None
                        self.rebuilds += 1
                        done["templates"] = self.ntotal
                        done["swap_hold_s"] = time.perf_counter() - t_swap
                        done["seconds"] = time.perf_counter() - t0
                        self.history.append(done)
                        logger.info(
                            "index %s/%s: %s -> %s with %d templates after %.1f s in the background (%s; %d "
                            "changes replayed); longest holds of the lock: a chunk of the copy %.3f s, the swap "
                            "%.3f s",
                            self.modality, self.model_id, done["from"], done["to"], done["templates"],
                            done["seconds"], job.reason, replayed, copy_hold, done["swap_hold_s"],
                        )  # fmt: skip
                        self._maybe_rebuild()  # it may have grown past the next step meanwhile
                        return
                self._replay(built, pending)  # only this thread sees ``built``: no lock needed
        except Exception:
            logger.exception(
                "index %s/%s: background rebuild to %s failed (%s); the %s index keeps answering",
                self.modality, self.model_id, job.kind, job.reason, self.kind,
            )  # fmt: skip
            with self.lock:
                if self._job is job:
                    self._job = None
                    self._retry_at = 2 * max(self.ntotal, 1)
        finally:
            job.done.set()

    def _copy_in_chunks(self, job: _Rebuild) -> tuple[np.ndarray, np.ndarray, float] | None:
        """The live (ids, vectors, longest lock hold in s) for a background rebuild, copied ``copy_chunk``
        vectors at a time under the lock (None: the rebuild was dropped meanwhile). Rows an HNSW gains
        meanwhile are appended and copied too (removals are tombstones: rows never move); an IVF is copied
        list by list (a removal moves rows within one list only). A flat index, whose removals shift every
        later row, is copied in one go: it is the small one (below the auto threshold)."""
        ids_parts, vec_parts, pos, longest = [], [], 0, 0.0
        while True:
            with self.lock:
                t = time.perf_counter()
                if job is not self._job:
                    return None
                if self.kind == "flat":
                    ids, vectors = self.export()
                    ids_parts.append(ids)
                    vec_parts.append(vectors)
                    longest = max(longest, time.perf_counter() - t)
                    break
                if self.kind == "hnsw":
                    n = int(self.index.ntotal)
                    if pos >= n:
                        break
                    end = min(n, pos + self.copy_chunk)
                    storage = faiss.downcast_index(faiss.downcast_index(self.index.index).storage)
                    rows = faiss.rev_swig_ptr(storage.get_xb(), n * self.dim).reshape(n, self.dim)
                    ids = faiss.rev_swig_ptr(self.index.id_map.data(), n)[pos:end].astype(np.int64)
                    vectors = rows[pos:end].copy()
                    if self.tombstones:
                        live = ~np.isin(ids, np.fromiter(self.tombstones, dtype=np.int64))
                        ids, vectors = ids[live], vectors[live]
                    ids_parts.append(ids)
                    vec_parts.append(vectors)
                    pos = end
                else:  # ivf
                    inv = self.index.invlists
                    if pos >= inv.nlist:
                        break
                    got = 0
                    while pos < inv.nlist and got < self.copy_chunk:
                        size = inv.list_size(pos)
                        if size:
                            ids_parts.append(faiss.rev_swig_ptr(inv.get_ids(pos), size).astype(np.int64))
                            codes = faiss.rev_swig_ptr(inv.get_codes(pos), size * inv.code_size)
                            vec_parts.append(codes.view(np.float32).reshape(size, self.dim).copy())
                            got += size
                        pos += 1
                longest = max(longest, time.perf_counter() - t)
            # a thread released from waiting on the lock still needs the GIL, which this one holds: without a
            # pause it would take the lock straight back and the searches would wait for the whole copy
            time.sleep(0.001)
        if not ids_parts:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32), longest
        return np.concatenate(ids_parts), np.concatenate(vec_parts), longest

    @staticmethod
    def _replay(built: _Built, ops: list[tuple[str, np.ndarray, np.ndarray | None]]) -> None:
        """Apply recorded adds and removals, in order, to an index not yet in use."""
        present = built.present
        for op, ids, vectors in ops:
            if op == "add":
                if present is not None:
                    keep = np.fromiter((int(i) not in present for i in ids), bool, len(ids))
                    ids, vectors = ids[keep], vectors[keep]
                    present.update(ids.tolist())
                if len(ids):
                    built.index.add_with_ids(vectors, ids)
            else:
                if present is not None:
                    ids = np.array([i for i in ids.tolist() if i in present], np.int64)
                    present.difference_update(ids.tolist())
                if built.kind == "hnsw":  # only ids it holds: ntotal counts tombstones out
                    built.tombstones.update(ids.tolist())
                elif len(ids):
                    built.index.remove_ids(ids)

    # -- queries --------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) - len(self.tombstones)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, template ids) of shape (Q, k'), best first; missing entries have id -1."""
        q = check_vectors(queries, self.dim, f"query for {self.modality}/{self.model_id}")
        with self.lock:
            n = int(self.index.ntotal)
            if n == 0:
                return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
            extra = len(self.tombstones)
            kk = min(k + extra, n)
            with omp_threads(self.config.search_threads if len(q) < self.config.small_batch else 0):
                sims, ids = self.index.search(q, kk)
            if extra:
                dead = np.isin(ids, np.fromiter(self.tombstones, dtype=np.int64))
                ids = np.where(dead, -1, ids)
                sims = np.where(dead, -np.inf, sims)
                order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
                sims, ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
            return sims[:, :k], ids[:, :k]

    def _no_vectors(self) -> EmbeddingError:
        return EmbeddingError(
            f"index {self.modality}/{self.model_id} is ivfpq (compressed codes): vectors cannot be read back; "
            "use max aggregation, and the database for exports"
        )

    def reconstruct(self, ids) -> np.ndarray:
        if self.kind == "ivfpq":
            raise self._no_vectors()
        with self.lock:
            return (
                np.stack([self.index.reconstruct(int(i)) for i in ids])
                if len(ids)
                else np.zeros((0, self.dim))
            )

    def _lists(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, codes as bytes) of each non-empty inverted list of an IVF index."""
        inv = self.index.invlists
        for i in range(inv.nlist):
            size = inv.list_size(i)
            if size:
                ids = faiss.rev_swig_ptr(inv.get_ids(i), size).astype(np.int64)
                codes = faiss.rev_swig_ptr(inv.get_codes(i), size * inv.code_size).copy()
                yield ids, codes.reshape(size, inv.code_size)

    def live_ids(self) -> np.ndarray:
        """Template ids in the index, without tombstoned ones."""
        with self.lock:
            n = int(self.index.ntotal)
            if not n:
                ids = np.zeros(0, np.int64)
            elif self.kind in ("ivf", "ivfpq"):  # ids live in the inverted lists
                inv = self.index.invlists
                parts = [
                    faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy()
                    for i in range(inv.nlist)
                    if inv.list_size(i)
                ]
                ids = np.concatenate(parts).astype(np.int64)
            else:
                ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            if self.tombstones:
                ids = ids[~np.isin(ids, np.fromiter(self.tombstones, dtype=np.int64))]
            return ids

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """All live (ids, vectors), copied out of the index's storage in bulk (no per-vector calls: a
        background rebuild copies under the lock, so this bounds how long it holds searches up)."""
        with self.lock:
            n = int(self.index.ntotal)
            if n == 0:
                return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
            if self.kind == "ivfpq":
                raise self._no_vectors()
            if self.kind == "ivf":
                parts = list(self._lists())
                ids = np.concatenate([p[0] for p in parts])
                vectors = np.concatenate([p[1] for p in parts]).view(np.float32).reshape(n, self.dim)
            else:
                base = faiss.downcast_index(self.index.index)
                flat = faiss.downcast_index(base.storage) if self.kind == "hnsw" else base
                vectors = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim).copy()
                ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            if self.tombstones:
                live = ~np.isin(ids, np.fromiter(self.tombstones, dtype=np.int64))
                ids, vectors = ids[live], vectors[live]
            return ids, vectors

    # -- snapshots ------------------------------------------------------------------------------------------
    def state(self) -> DBState:
        ids = self.live_ids()
        return DBState(len(ids), int(ids.max()) if len(ids) else 0, int(ids.sum()) if len(ids) else 0)

    def save(self, folder: Path, key: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        with self.lock:
            state, kind, planned = self.state(), self.kind, self.planned
            data = faiss.serialize_index(self.index).tobytes() if not self.tombstones else None
            if data is None:
                ids, vecs = self.export()
        if data is None:  # the same kind without the tombstones, built outside the lock (minutes at 1M)
            data = faiss.serialize_index(self._make(kind, ids, vecs).index).tobytes()
            planned = len(ids)
        path = folder / f"{key}.faiss"
        manifest = {
            "modality": self.modality,
            "model_id": self.model_id,
            "dim": self.dim,
            "kind": kind,
            "planned": planned,
            "state": asdict(state),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        _atomic_write(path, data)
        _atomic_write(folder / f"{key}.json", json.dumps(manifest).encode())
        return path

    def load(self, folder: Path, key: str, expected: DBState) -> bool:
        """Load a snapshot if, and only if, it is intact and reflects ``expected``; else return False.

        A snapshot whose kind no longer fits (the configuration changed, or it was saved before a switch
        finished) is used, and the switch is started in the background."""
        path, mpath = folder / f"{key}.faiss", folder / f"{key}.json"
        if not path.is_file() or not mpath.is_file():
            return False
        try:
            manifest = json.loads(mpath.read_text())
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
                logger.warning("index snapshot %s is corrupt (checksum mismatch): rebuilding", path)
                return False
            if DBState(**manifest["state"]) != expected or manifest["dim"] != self.dim:
                logger.info(
                    "index snapshot %s is stale (%s, database has %s): rebuilding",
                    path,
                    manifest["state"],
                    asdict(expected),
                )
                return False
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
            if manifest["kind"] == "ivf" and isinstance(index, faiss.IndexIDMap):
                logger.info("index snapshot %s is an IVF inside an id map (older format): rebuilding", path)
                return False
        except Exception as e:  # any unreadable snapshot is rebuilt from the database
            logger.warning("index snapshot %s unreadable (%s): rebuilding", path, e)
            return False
        with self.lock:
            self._job = None
            self.index, self.kind, self.tombstones = index, manifest["kind"], set()
            self.planned = int(manifest.get("planned", expected.count))
            if self.kind == "hnsw":
                faiss.downcast_index(index.index).hnsw.efSearch = self.config.ef_search
            elif self.kind in ("ivf", "ivfpq"):
                faiss.extract_index_ivf(index).nprobe = self.config.ivf_nprobe
            self.max_id = expected.max_id
            if self.state() != expected:
                return False
            self._maybe_rebuild()
            return True


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
