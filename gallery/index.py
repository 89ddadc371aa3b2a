"""FAISS indexes derived from the templates table: one per (modality, model_id), ids = template ids.

Kinds: ``flat`` (exact inner product), ``hnsw`` (graph, approximate; deletions are tombstones filtered at search
and dropped at the next rebuild) and ``ivf`` (inverted lists; trained on the vectors present when built). IVF
indexes keep the template ids in their lists (not in an ``IndexIDMap``: removing from an id map over IVF
renumbers the map but not the lists, so every later answer would name the wrong templates).
``auto`` picks flat below ``hnsw_threshold`` vectors and HNSW above. Vectors are unit length, so inner product
is cosine similarity.

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
from collections.abc import Iterator
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


@dataclass
class IndexConfig:
    kind: str = "auto"  # auto | flat | hnsw | ivf | ivfpq
    hnsw_threshold: int = 50_000
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    ivf_nlist: int = 0  # 0: about 4 * sqrt(n)
    ivf_nprobe: int = 32
    # ivfpq (very large galleries): pq_m bytes of code + 8 bytes of id per template, no raw vectors in memory
    # (the database keeps them); scores are approximate and mean aggregation is unavailable
    pq_m: int = 64
    # OpenMP threads for a search of fewer than ``small_batch`` queries (0: all); see the module docstring
    search_threads: int = field(default_factory=search_threads_from_env)
    small_batch: int = 16

    def __post_init__(self) -> None:
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


class VectorIndex:
    """Thread-safe FAISS index of one (modality, model_id)."""

    def __init__(self, modality: str, model_id: str, dim: int, config: IndexConfig | None = None) -> None:
        self.modality, self.model_id, self.dim = modality, model_id, dim
        self.config = config or IndexConfig()
        self.lock = threading.RLock()
        self.kind = "flat"
        self.index = self._new_flat()
        self.tombstones: set[int] = set()
        self.max_id = 0

    # -- construction -------------------------------------------------------------------------------------
    def _new_flat(self) -> faiss.Index:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _choose_kind(self, n: int) -> str:
        kind = self.config.kind
        if kind == "auto":
            return "hnsw" if n >= self.config.hnsw_threshold else "flat"
        if kind not in ("flat", "hnsw", "ivf", "ivfpq"):
            raise EmbeddingError(f"index kind must be auto, flat, hnsw, ivf or ivfpq, got {kind!r}")
        if kind == "ivfpq" and self.dim % self.config.pq_m:
            raise EmbeddingError(f"ivfpq: pq_m={self.config.pq_m} must divide the dimension {self.dim}")
        return kind

    def build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the content with exactly these vectors (used at start-up and by rebuild)."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        kind = self._choose_kind(len(ids))
        if kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = self.config.ef_construction
            base.hnsw.efSearch = self.config.ef_search
            index = faiss.IndexIDMap2(base)
        elif kind in ("ivf", "ivfpq") and len(ids) >= 1000:
            index = self.trained_ivf(kind, vectors, len(ids))
        else:
            kind = "flat"
            index = self._new_flat()
        if len(ids):
            index.add_with_ids(vectors, ids)
        with self.lock:
            self.index, self.kind = index, kind
            self.tombstones = set()
            self.max_id = int(ids.max()) if len(ids) else 0

    def trained_ivf(self, kind: str, sample: np.ndarray, n_expected: int) -> faiss.Index:
        """An empty, trained IVF with the template ids in its lists (``ivf``: float32 vectors, read back through
        a hash-table direct map; ``ivfpq``: PQ codes).

        ``n_expected`` sizes the coarse quantiser (about 4 * sqrt(n) lists unless ``ivf_nlist`` is set)."""
        nlist = self.config.ivf_nlist or max(16, int(4 * np.sqrt(n_expected)))
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

    def remove(self, ids) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        if ids.size == 0:
            return
        with self.lock:
            if self.kind == "hnsw":
                self.tombstones.update(int(i) for i in ids)
                if len(self.tombstones) > 0.2 * max(self.index.ntotal, 1):
                    self._compact()
            else:
                self.index.remove_ids(ids)

    def _compact(self) -> None:
        ids, vecs = self.export()
        self.build(ids, vecs)

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

    def reconstruct(self, ids) -> np.ndarray:
        if self.kind == "ivfpq":
            raise EmbeddingError(
                f"index {self.modality}/{self.model_id} is ivfpq (compressed codes): vectors cannot be read back; "
                "use max aggregation, and the database for exports"
            )
        with self.lock:
            return (
                np.stack([self.index.reconstruct(int(i)) for i in ids])
                if len(ids)
                else np.zeros((0, self.dim))
            )

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
        """All live (ids, vectors)."""
        with self.lock:
            ids = self.live_ids()
            return ids, self.reconstruct(ids).astype(np.float32)

    # -- snapshots ------------------------------------------------------------------------------------------
    def state(self) -> DBState:
        ids = self.live_ids()
        return DBState(len(ids), int(ids.max()) if len(ids) else 0, int(ids.sum()) if len(ids) else 0)

    def save(self, folder: Path, key: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        with self.lock:
            state = self.state()
            data = faiss.serialize_index(self.index).tobytes() if not self.tombstones else None
            if data is None:
                ids, vecs = self.export()
                tmp = VectorIndex(self.modality, self.model_id, self.dim, self.config)
                tmp.build(ids, vecs)
                data = faiss.serialize_index(tmp.index).tobytes()
        path = folder / f"{key}.faiss"
        manifest = {
            "modality": self.modality,
            "model_id": self.model_id,
            "dim": self.dim,
            "kind": self.kind,
            "state": asdict(state),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        _atomic_write(path, data)
        _atomic_write(folder / f"{key}.json", json.dumps(manifest).encode())
        return path

    def load(self, folder: Path, key: str, expected: DBState) -> bool:
        """Load a snapshot if, and only if, it is intact and reflects ``expected``; else return False."""
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
            self.index, self.kind, self.tombstones = index, manifest["kind"], set()
            if self.kind == "hnsw":
                faiss.downcast_index(index.index).hnsw.efSearch = self.config.ef_search
            elif self.kind in ("ivf", "ivfpq"):
                faiss.extract_index_ivf(index).nprobe = self.config.ivf_nprobe
            self.max_id = expected.max_id
        return self.state() == expected


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
