"""Background rebuilds of a ``gallery.index.VectorIndex``: the index's kind follows its size while it runs.

When adds or removals make another shape right (``auto`` crossing its threshold, an IVF outgrowing its
lists, an HNSW full of tombstones), a thread copies the vectors ``copy_chunk`` at a time under the index's
lock, builds the new index outside it while searches keep answering from the current one, replays the adds
and removals recorded since the copy began, and swaps the new index in under the lock. ``BackgroundRebuilds``
is the part of ``VectorIndex`` that does this; it works on the index's own state and lock (declared below),
so the two are one object with one lock, split only so each file reads as one job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import faiss
import numpy as np

from gallery.errors import EmbeddingError

if TYPE_CHECKING:
    from gallery.index import IndexConfig

logger = logging.getLogger("gallery.index")  # the index's log, as before the split

# A background rebuild replays the changes made while it built: outside the lock while more than this many
# templates are pending, then the rest under the lock together with the swap (so the swap stalls searches for
# about as long as adding this many templates takes); after CATCH_UP_ROUNDS rounds it swaps regardless.
CATCH_UP_UNDER_LOCK = 256
CATCH_UP_ROUNDS = 8
# ...and copies the vectors this many at a time under the lock: memory is slow on a busy small machine (a
# plain copy of 1 GB took ~2 s on the 2-core build machine), and searches wait only for one chunk
COPY_CHUNK = 32_768
# an IVF is retrained once it holds this many times the vectors its lists were sized for (lists that long)
IVF_REGROW = 2
AUTO_SHRINK = 0.5  # auto returns to exact search below half its threshold: no flapping at the threshold
HNSW_COMPACT = 0.2  # an HNSW is rebuilt without its tombstones once they are this share of its vectors


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


class BackgroundRebuilds:
    """Starts, runs and swaps in background rebuilds of a ``VectorIndex``, which provides what is declared
    here (its lock, FAISS index and shape) and ``_choose_kind``, ``_make``, ``_install``, ``export``,
    ``_run``."""

    lock: threading.RLock
    index: faiss.Index
    kind: str
    planned: int
    tombstones: set[int]
    config: IndexConfig
    source: Callable[[], tuple[np.ndarray, np.ndarray]] | None
    modality: str
    model_id: str
    dim: int
    rebuilds: int
    copy_chunk: int
    history: deque[dict[str, object]]
    _job: _Rebuild | None
    _swaps: threading.Event
    _retry_at: int

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
