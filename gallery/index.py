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
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from gallery.errors import EmbeddingError, GalleryError, IndexMismatchError
from gallery.rebuild import COPY_CHUNK, BackgroundRebuilds, _Built, _Rebuild

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


IVF_MIN = 1000  # fewer vectors than this do not train an IVF: exact search instead
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
    # (the database keeps them); scores are approximate, and persons rank by their best template (centroid and
    # mean aggregation need the vectors)
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


class VectorIndex(BackgroundRebuilds):
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

    # -- background rebuilds: gallery/rebuild.py (BackgroundRebuilds); their thread runs here --------------
    def _run(self, job: _Rebuild) -> None:
        with omp_threads(self.config.rebuild_threads or max(1, faiss.omp_get_max_threads() - 1)):
            self._rebuild_in_background(job)

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
            "persons rank by their best template here, and exports read the database"
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
