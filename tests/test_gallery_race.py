"""The index maps are read under their lock: identify (mean aggregation walks a person's templates) while another
thread adds and removes templates of the persons it ranks, either this gallery's own writes or the change-feed
follower applying another process's writes. Before the cache read its maps under the lock, both variants
failed in every run ("Set changed size during iteration")."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gallery import Gallery

N = 300  # writes by the other thread


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("via", ["own writes", "change feed"])
def test_identify_while_templates_change_does_not_race(tmp_path: Path, via: str) -> None:
    rng = np.random.default_rng(0)
    d = 16
    q = _unit(rng.normal(size=d))
    near = lambda n: _unit(q + 0.3 * rng.normal(size=(n, d)))  # noqa: E731 - candidates of every query
    writer_g = Gallery(str(tmp_path / "g.db"), index_dir=None)
    reader_g = writer_g
    errors: list[BaseException] = []
    stop = threading.Event()
    try:
        big = writer_g.enroll(embeddings=near(400), modality="body", model_id="m").person_id
        writer_g.enroll(embeddings=near(50), modality="body", model_id="m")
        reader_g = Gallery(str(tmp_path / "g.db"), index_dir=None, aggregation="mean")
        if via == "own writes":
            writer_g.close()
            writer_g = reader_g
        else:
            reader_g.follow(poll_interval=0.002)
        more = [near(1) for _ in range(N)]
        others = [near(20) for _ in range(N // 10 + 1)]

        def writer() -> None:
            try:
                for i in range(N):
                    if stop.is_set():
                        return
                    writer_g.enroll(
                        big, embeddings=more[i], modality="body", model_id="m"
                    )  # a ranked person grows
                    if i % 10 == 0:  # a ranked person appears and is erased
                        pid = writer_g.enroll(
                            embeddings=others[i // 10], modality="body", model_id="m"
                        ).person_id
                        writer_g.delete_person(pid)
            except BaseException as e:
                errors.append(e)
            finally:
                time.sleep(0.2)  # the follower catches up with the last writes
                stop.set()

        def reader() -> None:
            try:
                while not stop.is_set():
                    res = reader_g.identify(embedding=q, modality="body", model_id="m", k=5)
                    assert res.matches
            except BaseException as e:
                errors.append(e)
                stop.set()

        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)  # switch threads often, inside the walks over the maps
        try:
            threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            stop.set()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(old)
        assert not errors, f"{type(errors[0]).__name__}: {errors[0]}"
        reader_g.sync()
        counts = reader_g.check_consistency()["body/m"]
        assert counts["database"] == counts["index"]
    finally:
        reader_g.close()
        if writer_g is not reader_g:
            writer_g.close()


def test_a_write_transaction_that_reads_first_waits_for_a_concurrent_writer_on_sqlite(tmp_path: Path) -> None:
    """A ``Session.begin()`` block reads, another connection writes meanwhile, then the block writes. On SQLite
    a deferred transaction fails at that write, at once (WAL's stale snapshot; the busy timeout does not
    apply): before ``gallery.db.WriteSessions`` that was a merge or a review decision answered 503 after
    another request's audit row, half done. Now the block holds the write lock from BEGIN, the other writer
    waits, and both land."""
    from gallery.models import Person

    g = Gallery(str(tmp_path / "g.db"), index_dir=None)
    try:
        pid = g.create_person(display_name="Ann")
        read, errors = threading.Event(), []

        def other_writer() -> None:
            read.wait(10)
            try:
                g.create_person(display_name="Bob")  # its own write transaction, committed as soon as it may
            except BaseException as e:  # reported by the assertion below
                errors.append(e)

        t = threading.Thread(target=other_writer)
        t.start()
        with g.store.Session.begin() as s:
            person = s.get(Person, pid)  # the read that fixes a deferred transaction's snapshot
            read.set()
            time.sleep(0.5)  # the other writer commits here unless this block holds the write lock
            person.display_name = "Ann B."
        t.join(10)
        assert not errors, errors
        assert sorted(p.display_name for p in g.list_persons()) == ["Ann B.", "Bob"]
    finally:
        g.close()
