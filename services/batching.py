"""Micro-batching: the work of concurrent requests runs as one call.

``MicroBatcher(run)`` owns one worker thread. Callers submit items (from any thread, or from the event loop
through the returned future); the worker takes whatever is queued when it becomes free and calls
``run(items)`` once for all of them, then hands each caller its own result. It never waits for a batch to
fill: at low load a request is alone and pays nothing extra; under load the requests that arrived during one
call make the next batch, so the batch grows with the load. ``max_wait_ms`` (default 0) can hold a batch open
a little longer to gather more.

Two uses in the API:

- ``BatchingEmbedder``: N concurrent requests would make N body-model calls of batch 1, each competing for
  the same cores (every ONNX Runtime call wants all its intra-op threads). A caller resizes its own image in
  its own thread (OpenCV releases the GIL), and the forward passes of everything queued run as one model call.
  Vectors are the wrapped embedder's (same ``model_id``, ``dim``, decision card): a row does not depend on the
  other rows of its batch beyond float rounding (tests check 1e-5).
- the audit log (``services.api.app``): one transaction, one commit for every audit row queued, instead of
  one commit per request each waiting for SQLite's single writer lock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

import numpy as np

from reid.embedder import BaseEmbedder, Embedder
from reid.images import ImageLike

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()  # queued by close(): the worker stops when it reaches it


class MicroBatcher(Generic[T, R]):
    """Runs ``run(items) -> results`` (one result per item, in order) on batches of submitted items whose
    total ``size`` is at most ``max_batch`` (an item larger than that runs alone).

    A failure of ``run`` reaches every caller of that batch; the worker goes on. ``on_batch(total_size)`` is
    called after each batch (for metrics). ``close()`` finishes what is queued and stops the worker; items
    submitted after it run at once in the caller's thread.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        max_batch: int = 32,
        max_wait_ms: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
        name: str = "micro-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    def submit(self, item: T, size: int = 1) -> Future:
        """A future of ``item``'s result (``asyncio.wrap_future`` awaits it on an event loop)."""
        done: Future = Future()
        with self._lock:  # nothing is queued after close()'s stop mark, so no future is left unresolved
            if not self._closed:
                self._queue.put((item, size, done))
                return done
        try:
            done.set_result(self.run([item])[0])
        except Exception as e:
            done.set_exception(e)
        return done

    def __call__(self, item: T, size: int = 1) -> R:
        return self.submit(item, size).result()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join(timeout=30)

    def _take(self, carry: object) -> tuple[list[tuple[T, int, Future]], object, bool]:
        """(a batch, the job that did not fit in it, whether the stop mark was reached). Blocks for the first
        job, then takes what else is queued (waiting up to ``max_wait`` for more) while the batch has room."""
        first = carry if carry is not None else self._queue.get()
        if first is _STOP:
            return [], None, True
        jobs, n = [first], first[1]
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            try:
                timeout = deadline - time.monotonic()
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or n + job[1] > self.max_batch:
                return jobs, job, False  # the stop mark or an overflowing job leads the next round
            jobs.append(job)
            n += job[1]
        return jobs, None, False

    def _loop(self) -> None:
        carry = None
        while True:
            jobs, carry, stop = self._take(carry)
            if stop:
                return
            try:
                results = self.run([item for item, _, _ in jobs])
                if len(results) != len(jobs):
                    raise RuntimeError(f"{len(results)} results for a batch of {len(jobs)}")
            except Exception as e:  # reaches every caller of the batch
                logger.exception("a batch of %d failed", len(jobs))
                for _, _, done in jobs:
                    done.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(sum(size for _, size, _ in jobs))
            for (_, _, done), r in zip(jobs, results):
                done.set_result(r)


class BatchingEmbedder(BaseEmbedder):
    """``inner``'s embeddings, with concurrent callers' forward passes merged into model calls of at most
    ``max_batch`` images (a caller's own images are never split; a call of more than ``max_batch`` images is
    embedded directly). ``on_batch(n)`` gets each model call's size. ``close()`` stops the worker."""

    def __init__(
        self,
        inner: Embedder,
        max_batch: int = 32,
        max_wait_ms: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.inner = inner
        self.batcher: MicroBatcher[np.ndarray, np.ndarray] = MicroBatcher(
            self._forward, max_batch, max_wait_ms, on_batch, name="embed-batcher"
        )

    def _forward(self, resized: list[np.ndarray]) -> list[np.ndarray]:
        out = self.inner.embed_resized(np.concatenate(resized))
        return np.split(out, np.cumsum([len(x) for x in resized])[:-1])

    # the wrapped embedder's identity: the vectors are its vectors
    @property
    def model_id(self) -> str:  # type: ignore[override]
        return self.inner.model_id

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.inner.dim

    @property
    def modality(self) -> str:  # type: ignore[override]
        return self.inner.modality

    @property
    def decision(self) -> dict | None:  # type: ignore[override]
        return self.inner.decision

    @property
    def on_batch(self) -> Callable[[int], None] | None:
        return self.batcher.on_batch

    @on_batch.setter
    def on_batch(self, fn: Callable[[int], None] | None) -> None:
        self.batcher.on_batch = fn

    def __getattr__(self, name: str):
        # anything else (input_size, meta, flip, runtime, ...) is the wrapped embedder's
        if name in ("inner", "batcher"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def embed(self, images: Sequence[ImageLike] | ImageLike, batch_size: int = 64) -> np.ndarray:
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            return np.empty((0, self.inner.dim), dtype=np.float32)
        if len(images) > self.batcher.max_batch:
            return self.inner.embed(images, batch_size=batch_size)
        x = self.inner.resized(images)  # in the caller's thread: bad images fail here, naming the index
        return self.batcher(x, size=len(x))

    def close(self) -> None:
        self.batcher.close()
