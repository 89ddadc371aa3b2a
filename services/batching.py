"""Micro-batching: the forward passes of concurrent requests run as one model call.

Each API request embeds one image. Run one by one, N concurrent requests make N calls of batch 1, each
competing for the same two cores (every ONNX Runtime call wants all its intra-op threads), and the model's
cost per image is highest at batch 1. ``BatchingEmbedder`` wraps an :class:`reid.embedder.Embedder`: a
caller resizes its own images in its own thread (OpenCV releases the GIL, so that part runs in parallel), then
hands the resized pixels to one worker thread, which runs everything waiting as a single forward pass and
gives each caller its rows back.

The worker never waits for a batch to fill: it takes what is queued when it becomes free. At low load a
request is alone and pays nothing extra; under load the requests that arrived during one forward pass make
the next batch, so the batch grows with the load and the model's throughput with it. ``max_wait_ms`` (default
0) can hold a batch open a little longer to gather more.

Vectors are the wrapped embedder's (same ``model_id``, ``dim``, decision card): a row's embedding does not
depend on the other rows of its batch beyond float rounding (tests check 1e-5).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

from reid.embedder import BaseEmbedder, Embedder
from reid.images import ImageLike

logger = logging.getLogger(__name__)

_STOP = object()  # queued by close(): the worker stops when it reaches it


class BatchingEmbedder(BaseEmbedder):
    """``inner``'s embeddings, with concurrent callers' forward passes merged into batches of at most
    ``max_batch`` images (a caller's own images are never split across batches unless they alone pass it).

    ``on_batch(n)`` is called with each batch's size (for metrics). ``close()`` stops the worker; later calls
    embed directly, unbatched.
    """

    def __init__(
        self,
        inner: Embedder,
        max_batch: int = 32,
        max_wait_ms: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.inner, self.max_batch, self.max_wait = inner, max_batch, max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="embed-batcher", daemon=True)
        self._worker.start()

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

    def __getattr__(self, name: str):
        # anything else (input_size, meta, flip, runtime, ...) is the wrapped embedder's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def embed(self, images: Sequence[ImageLike] | ImageLike, batch_size: int = 64) -> np.ndarray:
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            return np.empty((0, self.inner.dim), dtype=np.float32)
        if len(images) > self.max_batch:
            return self.inner.embed(images, batch_size=batch_size)
        x = self.inner.resized(images)  # in the caller's thread: bad images fail here, naming the index
        done: Future = Future()
        with self._lock:  # nothing is queued after close()'s stop mark, so no caller waits forever
            if self._closed:
                return self.inner.embed_resized(x)
            self._queue.put((x, done))
        return done.result()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join(timeout=30)

    def _take(self, carry: tuple | None) -> tuple[list[tuple[np.ndarray, Future]], tuple | None, bool]:
        """(a batch, the job that did not fit in it, whether the stop mark was reached). Blocks for the first
        job, then takes what else is queued (waiting up to ``max_wait`` for more) while the batch has room."""
        first = carry if carry is not None else self._queue.get()
        if first is _STOP:
            return [], None, True
        jobs, n = [first], len(first[0])
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            try:
                timeout = deadline - time.monotonic()
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or n + len(job[0]) > self.max_batch:
                return jobs, job, False  # the stop mark or an overflowing job leads the next round
            jobs.append(job)
            n += len(job[0])
        return jobs, None, False

    def _run(self) -> None:
        carry = None
        while True:
            jobs, carry, stop = self._take(carry)
            if stop:
                return
            sizes = [len(x) for x, _ in jobs]
            try:
                out = self.inner.embed_resized(np.concatenate([x for x, _ in jobs]))
            except Exception as e:  # a fault of the model run reaches every caller of the batch
                logger.exception("batched forward pass of %d images failed", sum(sizes))
                for _, done in jobs:
                    done.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(len(out))
            start = 0
            for (_, done), n in zip(jobs, sizes):
                done.set_result(out[start : start + n])
                start += n
