"""The index kind follows the gallery while it runs: real SQLite, real FAISS, real background threads.

A gallery that grows past the threshold gets the large kind without a restart; searches keep answering from
the old index until the new one, caught up with the adds and removals made while it was built, is swapped in.
``VectorIndex.holding_swaps`` keeps a finished build waiting, so the tests change the gallery while a rebuild
is certainly in flight instead of hoping to catch one.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gallery import Gallery, IndexConfig, VectorIndex

DIM = 32
KEY = ("body", "m")


def unit(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def near(v: np.ndarray, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    w = v + noise * rng.normal(size=v.shape).astype(np.float32)
    return (w / np.linalg.norm(w, axis=-1, keepdims=True)).astype(np.float32)


class People:
    """Persons enrolled with ``per`` photos each around their own random centre."""

    def __init__(self, g: Gallery, seed: int, per: int = 5) -> None:
        self.g, self.per = g, per
        self.rng = np.random.default_rng(seed)
        self.centre: dict[int, np.ndarray] = {}

    def enroll(self, n: int) -> list[int]:
        made = []
        for c in unit(self.rng, n):
            photos = near(np.repeat(c[None], self.per, 0), self.rng)
            pid = self.g.enroll(embeddings=photos, modality=KEY[0], model_id=KEY[1]).person_id
            self.centre[pid] = c
            made.append(pid)
        return made

    def top(self, pid: int) -> int | None:
        res = self.g.identify(embedding=near(self.centre[pid], self.rng), modality=KEY[0], model_id=KEY[1])
        return res.matches[0].person_id if res.matches else None

    def wrong(self, pids) -> list[int]:
        return [p for p in pids if self.top(p) != p]


def wait_copied(index: VectorIndex, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = index.rebuilding
        assert status is not None, "no background rebuild in flight"
        if status["copied"]:
            return status
        time.sleep(0.01)
    raise AssertionError("the background rebuild never copied the vectors")


@pytest.mark.parametrize(("large", "threshold"), [("hnsw", 200), ("ivf", 1000)])
def test_auto_index_switches_kind_while_the_gallery_grows(tmp_path: Path, large: str, threshold: int) -> None:
    cfg = IndexConfig(auto_threshold=threshold, large_kind=large, ivf_nprobe=32)
    g = Gallery(str(tmp_path / "g.db"), index_config=cfg)
    people = People(g, seed=21)
    first = people.enroll((threshold - 1) // people.per)  # just under the threshold
    index = g.indexes[KEY]
    assert index.kind == "flat" and index.rebuilding is None
    assert people.wrong(first) == []

    # a reader identifies the first persons all along, in its own thread, as a request would
    stop, reader_errors, reader_wrong, reader_calls = threading.Event(), [], [], [0]

    def reader() -> None:
        rng = np.random.default_rng(5)
        while not stop.is_set():
            pid = first[int(rng.integers(len(first)))]
            try:
                res = g.identify(embedding=near(people.centre[pid], rng), modality=KEY[0], model_id=KEY[1])
                if res.matches[0].person_id != pid:
                    reader_wrong.append(pid)
            except Exception as e:  # any failure of a concurrent identify is the finding
                reader_errors.append(repr(e))
            reader_calls[0] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        with index.holding_swaps():
            crossing = people.enroll(1)  # past the threshold: the switch starts in the background
            status = wait_copied(index)
            assert status["kind"] == large and "flat -> " + large in status["reason"]
            # meanwhile: more than a catch-up batch of adds (replayed outside the lock, then the rest under
            # it), a deletion, and answers from the exact index
            during = people.enroll(60)
            gone = during.pop(3)
            g.delete_person(gone)
            assert index.kind == "flat" and index.rebuilding["pending"] >= 61
            assert people.wrong(first[:10] + during[-5:]) == []
        assert index.wait_rebuilt(120)
    finally:
        stop.set()
        t.join(30)
    assert index.kind == large and index.rebuilds == 1 and index.rebuilding is None
    assert reader_errors == [] and reader_wrong == [] and reader_calls[0] > 0
    everyone = first + crossing + during
    assert people.wrong(everyone) == []
    assert gone not in {m.person_id for m in g.identify(
        embedding=people.centre[gone], modality=KEY[0], model_id=KEY[1], k=5).matches}  # fmt: skip
    counts = g.check_consistency()["body/m"]
    assert counts["database"] == counts["index"] == index.ntotal == len(everyone) * people.per
    assert sorted(index.live_ids().tolist()) == sorted(t for p in everyone for t in g.template_ids(p))
    g.close()

    # the switch outlives a restart: the snapshot holds the large kind
    g = Gallery(str(tmp_path / "g.db"), index_config=cfg)
    people.g = g
    assert g.indexes[KEY].kind == large and g.indexes[KEY].rebuilding is None
    assert people.wrong(everyone[::7]) == []

    # and shrinking far enough (below half the threshold) goes back to exact search
    for pid in everyone[: len(everyone) - threshold // (2 * people.per) + 1]:
        g.delete_person(pid)
    index = g.indexes[KEY]
    assert index.wait_rebuilt(120) and index.kind == "flat"
    left = everyone[len(everyone) - threshold // (2 * people.per) + 1 :]
    assert people.wrong(left) == [] and index.ntotal == len(left) * people.per
    g.close()


def test_a_snapshot_of_the_old_kind_switches_after_start(tmp_path: Path) -> None:
    g = Gallery(str(tmp_path / "g.db"))  # default threshold: stays exact
    people = People(g, seed=22)
    pids = people.enroll(50)
    assert g.indexes[KEY].kind == "flat"
    g.close()
    g = Gallery(str(tmp_path / "g.db"), index_config=IndexConfig(auto_threshold=200, large_kind="hnsw"))
    people.g = g
    index = g.indexes[KEY]
    assert index.wait_rebuilt(60) and index.kind == "hnsw" and index.rebuilds == 1
    assert people.wrong(pids) == []
    g.close()


def test_ivfpq_grows_out_of_exact_search_then_retrains_from_the_database(tmp_path: Path) -> None:
    cfg = IndexConfig(kind="ivfpq", pq_m=8, ivf_nprobe=64)
    g = Gallery(str(tmp_path / "g.db"), index_config=cfg)
    people = People(g, seed=23, per=10)
    pids = people.enroll(99)
    index = g.indexes[KEY]
    assert index.kind == "flat"  # too few vectors to train an IVF
    pids += people.enroll(2)  # 1,000 train an ivfpq from the flat index's vectors; 10 more are replayed
    assert index.wait_rebuilt(120) and index.kind == "ivfpq" and index.planned == 1000
    with index.holding_swaps():
        pids += people.enroll(101)  # 2,010 > 2 x 1,000: retrained on the database's vectors (codes give none)
        status = wait_copied(index)
        assert status["kind"] == "ivfpq" and "retraining" in status["reason"]
        pids += people.enroll(3)  # the database read may or may not see these: replayed once either way
        g.delete_person(pids.pop(0))
    assert index.wait_rebuilt(120) and index.kind == "ivfpq" and index.planned >= 2010
    assert index.ntotal == len(pids) * people.per
    assert sorted(index.live_ids().tolist()) == sorted(t for p in pids for t in g.template_ids(p))
    assert len(people.wrong(pids[::10])) <= 1  # PQ codes: approximate scores
    g.close()


def test_hnsw_compacts_its_tombstones_in_the_background() -> None:
    rng = np.random.default_rng(24)
    vecs, ids = unit(rng, 1000), np.arange(1, 1001)
    index = VectorIndex("face", "m", DIM, IndexConfig(kind="hnsw"))
    index.build(ids, vecs)
    with index.holding_swaps():
        index.remove(ids[:150])
        assert index.rebuilding is None  # 15 % deleted: tombstones are filtered at search
        index.remove(ids[150:250])
        assert wait_copied(index)["kind"] == "hnsw"
        index.remove(ids[250:260])  # while it builds: replayed as tombstones of the new index
        _, got = index.search(vecs[:300], 3)
        assert not np.isin(got, ids[:260]).any()
    assert index.wait_rebuilt(60) and index.rebuilds == 1
    assert index.tombstones == set(range(251, 261))  # the removals made while it built
    assert index.ntotal == 740 and sorted(index.live_ids().tolist()) == ids[260:].tolist()
    _, got = index.search(vecs[260:300], 1)
    assert (got[:, 0] == ids[260:300]).all()


def test_a_full_build_drops_a_background_rebuild_in_flight() -> None:
    rng = np.random.default_rng(25)
    index = VectorIndex("face", "m", DIM, IndexConfig(auto_threshold=200, large_kind="hnsw"))
    index.build(np.arange(1, 151), unit(rng, 150))
    with index.holding_swaps():
        index.add(np.arange(151, 251), unit(rng, 100))
        wait_copied(index)
        fresh = unit(rng, 120)
        index.build(np.arange(1000, 1120), fresh)  # e.g. an operator's rebuild from the database
        assert index.rebuilding is None
    assert index.wait_rebuilt(30) and index.rebuilds == 0
    assert index.kind == "flat" and sorted(index.live_ids().tolist()) == list(range(1000, 1120))
    _, got = index.search(fresh[:20], 1)
    assert (got[:, 0] == np.arange(1000, 1020)).all()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_changes_between_chunks_of_the_copy_are_neither_lost_nor_doubled(kind: str) -> None:
    """A background rebuild copies a few vectors at a time while another thread keeps adding and removing;
    afterwards the index holds exactly what the changes left, each vector once."""
    rng = np.random.default_rng(26)
    pool = unit(rng, 12_000)
    cfg = IndexConfig(kind=kind, ivf_nprobe=1000)  # every list read: answers exact, so checkable
    index = VectorIndex("face", "m", DIM, cfg)
    index.copy_chunk = 1  # an IVF list or an HNSW row per hold of the lock, released between them
    index.build(np.arange(1, 1001), pool[:1000])
    live, next_id, lock = set(range(1, 1001)), [1001], threading.Lock()
    stop, errors = threading.Event(), []

    def changer() -> None:
        r = np.random.default_rng(27)
        while not stop.is_set() and next_id[0] < 11_980:
            try:
                with lock:
                    new = np.arange(next_id[0], next_id[0] + 20)
                    next_id[0] += 20
                    gone = r.choice(sorted(live), 5, replace=False)
                    live.update(new.tolist())
                    live.difference_update(gone.tolist())
                index.add(new, pool[new - 1])
                index.remove(gone)
            except Exception as e:  # any failure is the finding
                errors.append(repr(e))
                return

    # ivf: past a few times the 1,000 its lists were sized for it retrains; hnsw: a fifth tombstones compacts
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads take turns often: changes land between chunks
    t = threading.Thread(target=changer)
    try:
        t.start()
        deadline = time.monotonic() + 120
        while index.rebuilds == 0 and not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        t.join(30)
    finally:
        sys.setswitchinterval(switch)
    assert errors == [] and index.rebuilds >= 1 and index.wait_rebuilt(120)
    assert index.history[0]["changes_during_copy"] > 0, index.history[0]
    got = index.live_ids()
    assert len(got) == len(set(got.tolist())) == index.ntotal  # no template twice
    assert set(got.tolist()) == live
    sample = np.array(sorted(live))[:: max(1, len(live) // 200)]
    _, found = index.search(pool[sample - 1], 1)
    assert (found[:, 0] == sample).mean() >= 0.98
