"""Micro-batching (services.batching): concurrent callers' forward passes run as one model call, and each
caller gets exactly its own rows."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from reid.errors import ImageReadError
from services.batching import BatchingEmbedder


@pytest.fixture(scope="module")
def onnx_body(onnx_cache_dir: Path):
    from reid.embedder import load_embedder
    from services.settings import DEFAULT_BODY_CHECKPOINT

    return load_embedder(DEFAULT_BODY_CHECKPOINT, "onnx", threads=1, cache_dir=onnx_cache_dir)


def crops(cuhk03_root: Path, n: int) -> list[np.ndarray]:
    from PIL import Image

    paths = sorted((cuhk03_root / "bounding_box_test").glob("*.jpg"))[::97][:n]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


@pytest.mark.realdata
def test_concurrent_callers_share_model_calls_and_each_gets_its_own_rows(
    cuhk03_root: Path, onnx_body
) -> None:
    images = crops(cuhk03_root, 24)
    alone = onnx_body.embed(images, batch_size=1)
    sizes: list[int] = []
    # the batch is held open 300 ms so that callers released together land in one model call
    b = BatchingEmbedder(onnx_body, max_batch=8, max_wait_ms=300, on_batch=sizes.append)
    try:
        assert (b.model_id, b.dim, b.modality, b.input_size) == (
            onnx_body.model_id, onnx_body.dim, onnx_body.modality, onnx_body.input_size,
        )  # fmt: skip
        assert b.decision == onnx_body.decision
        start = threading.Barrier(12)

        def call(i: int) -> np.ndarray:
            start.wait()
            return b.embed(images[2 * i : 2 * i + 2])  # two images per caller: never split over batches

        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(call, range(12)))
        np.testing.assert_allclose(np.concatenate(got), alone, atol=1e-5)
        assert sum(sizes) == 24 and max(sizes) == 8 and len(sizes) == 3  # 12 calls, 3 model calls
        assert all(n % 2 == 0 for n in sizes)
        # more images than a batch: embedded directly, in order
        np.testing.assert_allclose(b.embed(images[:10]), alone[:10], atol=1e-5)
        assert sum(sizes) == 24
        # a bad image fails in the caller's thread, naming it, and the worker goes on
        with pytest.raises(ImageReadError, match=r"images\[1\]"):
            b.embed([images[0], np.zeros((5, 5, 2), dtype=np.uint8)])
        np.testing.assert_allclose(b.embed(images[3]), alone[3:4], atol=1e-5)
    finally:
        b.close()
    # closed: calls still answer, unbatched
    np.testing.assert_allclose(b.embed([images[5]]), alone[5:6], atol=1e-5)
    assert sum(sizes) == 25  # images[3] went through the worker; the call after close() did not


@pytest.mark.realdata
def test_a_failed_model_call_reaches_every_caller_of_its_batch(cuhk03_root: Path, onnx_body) -> None:
    class Failing(type(onnx_body)):
        def embed_resized(self, x, flip=None):
            raise RuntimeError("model run failed")

    failing = object.__new__(Failing)
    failing.__dict__.update(onnx_body.__dict__)
    b = BatchingEmbedder(failing, max_batch=4, max_wait_ms=200)
    try:
        start = threading.Barrier(3)

        def call(i: int) -> str:
            start.wait()
            try:
                b.embed(crops(cuhk03_root, 3)[i])
            except RuntimeError as e:
                return str(e)
            return "no error"

        with ThreadPoolExecutor(3) as pool:
            assert list(pool.map(call, range(3))) == ["model run failed"] * 3
    finally:
        b.close()


def test_bad_batching_settings_are_refused(onnx_body) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchingEmbedder(onnx_body, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        BatchingEmbedder(onnx_body, max_wait_ms=-1)
