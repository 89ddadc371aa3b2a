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


def test_the_micro_batcher_groups_what_is_queued_and_answers_each_caller() -> None:
    from services.batching import MicroBatcher

    calls: list[list[int]] = []
    entered, gate = threading.Event(), threading.Event()

    def run(items: list[int]) -> list[int]:
        if not calls:
            entered.set()
            gate.wait(5)  # the first call holds the worker while the others queue
        calls.append(items)
        return [10 * i for i in items]

    b: MicroBatcher[int, int] = MicroBatcher(run, max_batch=4)
    first = b.submit(0)
    assert entered.wait(5)
    futures = [b.submit(i, size=1) for i in range(1, 7)]
    big = b.submit(7, size=9)  # larger than a batch: runs alone
    gate.set()
    assert first.result(5) == 0 and [f.result(5) for f in futures] == [10 * i for i in range(1, 7)]
    assert big.result(5) == 70
    assert calls == [[0], [1, 2, 3, 4], [5, 6], [7]]
    b.close()
    assert b(8) == 80 and calls[-1] == [8]  # after close: run at once in the caller's thread


def test_concurrent_requests_each_leave_one_audit_row_committed_before_the_answer(tmp_path: Path) -> None:
    """Audit rows are group-committed (one transaction for the rows queued together); every request still
    has its row in the database by the time it is answered."""
    import httpx

    from gallery.audit import AuditLog
    from services.api import create_app
    from services.settings import ApiKey, Settings
    from tests.servers import ColourEmbedder, running

    settings = Settings(
        database_url=str(tmp_path / "g.db"),
        api_keys=[ApiKey("admin-key-123", "admin", frozenset({"admin"}))],
        body_threshold=0.99,
    )
    app = create_app(settings, embedders={"body": ColourEmbedder()})
    img = np.zeros((40, 20, 3), np.uint8)
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    with running(app) as url:

        def ask(i: int) -> int:
            r = httpx.post(f"{url}/identify", headers={"X-API-Key": "admin-key-123"}, data={"modality": "body"},
                           files={"image": ("q.png", buf.getvalue(), "image/png")}, timeout=30)  # fmt: skip
            # committed before the answer: a reader on another connection sees the row now
            rows = AuditLog(app.state.svc.gallery.Session).read(action="identify")
            return r.status_code * 1000 + len(rows)

        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(ask, range(48)))
        assert all(g // 1000 == 200 for g in got)
        assert all(g % 1000 >= 1 for g in got)
        rows = AuditLog(app.state.svc.gallery.Session).read(action="identify")
        assert (
            len(rows) == 48 and {r.outcome for r in rows} == {"ok"} and {r.key_id for r in rows} == {"admin"}
        )
        assert len({r.id for r in rows}) == 48
