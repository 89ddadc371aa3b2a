"""Change feed between gallery processes, retention, erasure, subject access export, audit log, idempotent
sightings: on SQLite and on a fresh PostgreSQL database."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import DatabaseError

from gallery import Gallery
from gallery.audit import AuditLog
from gallery.feed import last_seq
from gallery.models import Change, Person, Sighting, Template, Thumbnail
from gallery.privacy import RetentionPolicy, export_person, sweep_expired
from tests.test_gallery import unit


def wait_for(cond, timeout: float = 1.0) -> float:
    """Seconds until ``cond()`` holds; fails after ``timeout``."""
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.005)
    return time.perf_counter() - t0


# max aggregation throughout: these tests follow templates between processes, and a stored template asked
# again then scores 1 whatever else its person holds
def best(g: Gallery, v: np.ndarray) -> int | None:
    r = g.identify(embedding=v, modality="body", model_id="m", k=1, threshold=0.9)
    return r.best.person_id if r.known else None


def test_change_feed_reaches_another_process_within_a_second(db_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = Gallery(db_url, aggregation="max", index_dir=tmp_path / "a")
    b = Gallery(db_url, aggregation="max", index_dir=tmp_path / "b")
    b.follow(poll_interval=0.1)
    try:
        v = unit(rng, 3)
        p1 = a.enroll(embeddings=v[:1], modality="body", model_id="m").person_id
        lag = wait_for(lambda: best(b, v[0]) == p1)
        assert lag < 1.0
        p2 = a.enroll(embeddings=v[1:2], modality="body", model_id="m").person_id
        wait_for(lambda: best(b, v[1]) == p2)
        a.merge(p1, p2)  # p2's template now belongs to p1 everywhere
        wait_for(lambda: best(b, v[1]) == p1)
        a.delete_person(p1)
        wait_for(lambda: best(b, v[0]) is None and best(b, v[1]) is None)
        # replaying its own changes does not duplicate anything in the writer's index
        a.sync()
        b.sync()
        assert a.check_consistency() == b.check_consistency() == {"body/m": {"database": 0, "index": 0}}
    finally:
        b.close()
        a.close()


def test_a_restarted_process_catches_up_from_the_sequence(db_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    v = unit(rng, 20)
    a = Gallery(db_url, aggregation="max", index_dir=tmp_path / "a")
    b = Gallery(db_url, aggregation="max", index_dir=tmp_path / "b")
    first = a.enroll(embeddings=v[:5], modality="body", model_id="m").person_id
    b.close()  # b is down while a keeps writing
    gone = a.enroll(embeddings=v[5:10], modality="body", model_id="m").person_id
    kept = a.enroll(embeddings=v[10:20], modality="body", model_id="m").person_id
    a.delete_person(gone)
    b = Gallery(
        db_url, aggregation="max", index_dir=tmp_path / "b"
    )  # its snapshot is stale: rebuilt, then follows
    try:
        assert best(b, v[12]) == kept and best(b, v[0]) == first and best(b, v[7]) is None
        # a process that missed notifications: sync() alone brings it up to date
        w = unit(rng, 1)
        late = a.enroll(embeddings=w, modality="body", model_id="m").person_id
        assert best(b, w[0]) is None  # not following, no notification: not there yet
        assert b.sync() == 1 and best(b, w[0]) == late
        with b.Session() as s:
            assert b.applied_seq == last_seq(s)
        assert b.check_consistency() == a.check_consistency()
    finally:
        b.close()
        a.close()


def test_change_rows_are_written_with_every_index_change(db_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    with Gallery(db_url, aggregation="max", index_dir=tmp_path / "a") as g:
        p = g.enroll(embeddings=unit(rng, 2), modality="body", model_id="m").person_id
        q = g.enroll(embeddings=unit(rng, 1), modality="body", model_id="m").person_id
        g.merge(p, q)
        g.delete_person(p)
        with g.Session() as s:
            ops = [
                (c.op, c.person_id, len(c.template_ids))
                for c in s.scalars(select(Change).order_by(Change.seq))
            ]
        assert ops == [("enroll", p, 2), ("enroll", q, 1), ("merge", p, 1), ("delete", p, 3)]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_retention_sweep_erases_expired_anonymous_people_everywhere(db_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    clock = Clock()
    a = Gallery(
        db_url,
        aggregation="max",
        index_dir=tmp_path / "a",
        media_dir=tmp_path / "media",
        clock=clock,
        store_id="s1",
    )
    b = Gallery(
        db_url, aggregation="max", index_dir=tmp_path / "b", media_dir=tmp_path / "media", clock=clock
    )
    try:
        v = unit(rng, 4)
        old = a.identify_or_enroll(embedding=v[0], modality="body", model_id="m", threshold=0.9).person_id
        seen = a.identify_or_enroll(embedding=v[1], modality="body", model_id="m", threshold=0.9).person_id
        staff = a.enroll(embeddings=v[2:3], modality="body", model_id="m", kind="enrolled").person_id
        short = a.create_person(kind="anonymous", store_id="s2")
        a.enroll(short, embeddings=v[3:4], modality="body", model_id="m")
        a.set_thumbnail(old, np.full((40, 20, 3), 90, np.uint8))
        a.person_media_dir(old).mkdir(parents=True)
        (a.person_media_dir(old) / "crop.jpg").write_bytes(b"jpeg")
        b.sync()
        assert best(b, v[0]) == old
        clock.now += timedelta(days=20)
        a.record_sighting(seen, "cam1")  # seen again: its 30 days restart
        clock.now += timedelta(days=10, seconds=1)
        policy = RetentionPolicy(default_days=30, per_store={"s2": 7})
        r = sweep_expired(a, policy)
        assert r.deleted == sorted([old, short])
        b.sync()
        assert best(b, v[0]) is None and best(b, v[3]) is None  # gone from the other process's index
        assert best(b, v[1]) == seen and best(b, v[2]) == staff
        assert not (tmp_path / "media" / str(old)).exists()
        with a.Session() as s:
            assert s.scalar(select(func.count()).select_from(Person).where(Person.id.in_([old, short]))) == 0
            assert (
                s.scalar(select(func.count()).select_from(Thumbnail).where(Thumbnail.person_id == old)) == 0
            )
        entries = AuditLog(a.Session).read(action="retention-erase")
        assert sorted(e.subject for e in entries) == sorted([f"person:{old}", f"person:{short}"])
        assert all(e.key_id == "system" for e in entries)
        clock.now += timedelta(days=31)
        assert sweep_expired(a, policy).deleted == [seen]  # staff-enrolled people are never swept
    finally:
        b.close()
        a.close()


def test_erasure_leaves_nothing(db_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    a = Gallery(db_url, aggregation="max", index_dir=tmp_path / "a", media_dir=tmp_path / "media")
    b = Gallery(db_url, aggregation="max", index_dir=tmp_path / "b", media_dir=tmp_path / "media")
    try:
        v = unit(rng, 3)
        pid = a.enroll(embeddings=v, modality="body", model_id="m", display_name="Ann").person_id
        other = a.enroll(embeddings=unit(rng, 1), modality="body", model_id="m").person_id
        a.record_sighting(pid, "cam1", event_id="cam1:1:1")
        a.set_thumbnail(pid, np.full((40, 20, 3), 120, np.uint8))
        a.person_media_dir(pid).mkdir(parents=True)
        (a.person_media_dir(pid) / "crop_1.jpg").write_bytes(b"jpeg bytes")
        b.sync()
        assert best(b, v[0]) == pid
        tids = [t for t in a.templates_of[pid]]
        assert a.delete_person(pid) == 3
        b.sync()
        with a.Session() as s:
            for model, col in [
                (Template, Template.person_id),
                (Sighting, Sighting.person_id),
                (Thumbnail, Thumbnail.person_id),
                (Person, Person.id),
            ]:
                assert s.scalar(select(func.count()).select_from(model).where(col == pid)) == 0, model
        for g in (a, b):
            _, ids = g.indexes[("body", "m")].search(v, 10)
            assert not set(ids.ravel().tolist()) & set(tids)
            assert best(g, v[0]) is None
        assert not (tmp_path / "media" / str(pid)).exists()
        assert best(a, a.indexes[("body", "m")].reconstruct([next(iter(a.templates_of[other]))])[0]) == other
    finally:
        b.close()
        a.close()


def test_subject_access_export_holds_everything(db_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    with Gallery(db_url, aggregation="max", index_dir=tmp_path / "a", media_dir=tmp_path / "media") as g:
        v = unit(rng, 2)
        pid = g.create_person(
            "Bea", consent={"given_by": "Bea", "at": "2026-11-24", "scope": "entry"}, purpose="staff entry"
        )
        g.enroll(pid, embeddings=v, modality="body", model_id="m", sources=["a.jpg", "b.jpg"])
        g.record_sighting(pid, "cam2", score=0.93)
        g.set_thumbnail(pid, np.full((40, 20, 3), 10, np.uint8))
        g.person_media_dir(pid).mkdir(parents=True)
        (g.person_media_dir(pid) / "crop.jpg").write_bytes(b"x")
        AuditLog(g.Session).write("identify", "ok", key_id="k1", subject=f"person:{pid}")
        record, files = export_person(g, pid)
        assert (
            record["person"]["consent"]["scope"] == "entry" and record["person"]["purpose"] == "staff entry"
        )
        assert [t["source"] for t in record["templates"]] == ["a.jpg", "b.jpg"]
        import base64

        got = np.frombuffer(base64.b64decode(record["templates"][0]["embedding_float32_base64"]), np.float32)
        np.testing.assert_array_equal(got, v[0])
        assert [s["camera_id"] for s in record["sightings"]] == ["cam2"]
        assert [a["action"] for a in record["audit"]] == ["identify"]
        assert (
            sorted(files) == ["media/crop.jpg", "thumbnail.jpg"] and files["thumbnail.jpg"][:2] == b"\xff\xd8"
        )


def test_audit_log_is_append_only(db_url: str, tmp_path: Path) -> None:
    with Gallery(db_url, aggregation="max", index_dir=tmp_path / "a") as g:
        log = AuditLog(g.Session)
        log.write("delete", "ok", key_id="admin", subject="person:1")
        url = g.engine.url
    engine = create_engine(url)
    try:
        for sql in ("UPDATE audit_log SET outcome = 'forged'", "DELETE FROM audit_log"):
            with pytest.raises(DatabaseError, match="append-only"), engine.begin() as c:
                c.execute(text(sql))
        with engine.connect() as c:
            assert c.execute(text("SELECT outcome FROM audit_log")).scalars().all() == ["ok"]
    finally:
        engine.dispose()


def test_sightings_with_an_event_id_are_stored_once(db_url: str, tmp_path: Path) -> None:
    with Gallery(db_url, aggregation="max", index_dir=tmp_path / "a") as g:
        pid = g.create_person("C")
        first = g.record_sighting(pid, "cam1", event_id="cam1:10:3")
        assert g.record_sighting(pid, "cam1", event_id="cam1:10:3") == first
        g.record_sighting(pid, "cam1", event_id="cam1:11:3")
        assert len(g.sightings(person_id=pid)) == 2


def test_retention_policy_rejects_bad_days() -> None:
    from gallery import GalleryError

    with pytest.raises(GalleryError, match="s9"):
        RetentionPolicy(per_store={"s9": 0})


def test_erased_ids_are_never_handed_out_again(db_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    g = Gallery(db_url, aggregation="max", index_dir=tmp_path / "a")
    try:
        p1, p2 = g.create_person("one"), g.create_person("two")
        r3 = g.enroll(embeddings=unit(rng, 2), modality="body", model_id="m", display_name="three")
        p3 = r3.person_id
        s3 = g.record_sighting(p3, "cam1", 0.9, "body")
        AuditLog(g.Session).write("delete-person", "ok", key_id="admin", subject=f"person:{p3}")
        g.delete_person(p3)  # the newest person, template and sighting: what SQLite used to hand out again
    finally:
        g.close()
    g = Gallery(
        db_url, aggregation="max", index_dir=tmp_path / "a"
    )  # a restart: nothing is remembered in memory
    try:
        r4 = g.enroll(embeddings=unit(rng, 1), modality="body", model_id="m", display_name="four")
        assert r4.person_id > max(p1, p2, p3) and min(r4.template_ids) > max(r3.template_ids)
        assert g.record_sighting(r4.person_id, "cam1", 0.8, "body") > s3
        assert g.create_person("five") > r4.person_id
        record, _ = export_person(g, r4.person_id)
        assert record["audit"] == []  # the erased person's audit rows stay with the erased id
        assert [t["id"] for t in record["templates"]] == r4.template_ids
    finally:
        g.close()


def test_review_queue_offers_once_counts_and_outlives_erasure(db_url: str, tmp_path: Path) -> None:
    from gallery.review import ReviewDecidedError, ReviewQueue, UnknownReviewError

    with Gallery(db_url, aggregation="max", index_dir=tmp_path / "i") as g:
        a, b, c = (g.create_person(n) for n in ("a", "b", "c"))
        q = ReviewQueue(g.Session)
        nums = {"score": 0.66, "normalised": 0.66, "threshold": 0.7, "modality": "body", "model_id": "m"}
        first = q.offer(b, a, **nums, source="camera:cam1")
        assert first is not None and q.offer(a, b, **nums) is None  # open already (either order)
        assert q.offer(a, a, **nums) is None
        second = q.offer(c, a, **nums)
        assert [r.id for r in q.list()] == [second, first]  # newest first
        assert q.close(first, "rejected", "ops").status == "rejected"
        assert q.offer(b, a, **nums) is None  # rejected: never offered again
        with pytest.raises(ReviewDecidedError, match="already rejected"):
            q.close(first, "confirmed", "ops")
        with pytest.raises(UnknownReviewError, match="review pair 999"):
            q.close(999, "confirmed", "ops")
        g.merge(a, c)  # what a confirmation does
        assert q.close(second, "confirmed", "ops").decided_by == "ops"
        assert q.counts() == {"open": 0, "confirmed": 1, "rejected": 1}
        # an open pair whose person is erased can no longer be judged: not listed, not counted, not rejectable
        # (a rejection would count as "the system was right" about it)
        d = g.create_person("d")
        gone = q.offer(d, b, **nums)
        assert q.counts()["open"] == 1
        g.delete_person(d)
        assert q.list() == [] and q.counts() == {"open": 0, "confirmed": 1, "rejected": 1}
        with pytest.raises(ReviewDecidedError, match="erased or merged away"):
            q.close(gone, "rejected", "ops")
        g.delete_person(b)  # erasure: the pair keeps its outcome, not the person
        kept = q.get(first)
        assert kept.person_id is None and kept.candidate_id == a and kept.status == "rejected"
        assert q.counts() == {"open": 0, "confirmed": 1, "rejected": 1}


def test_audit_rows_held_through_an_outage_are_written_in_order_and_one_refused_row_blocks_none(
    db_url: str, tmp_path: Path, monkeypatch
) -> None:
    """The database goes away (its sessions raise OperationalError, as a refused connection does): rows are
    held, with their own time, up to the cap (the rest counted lost). Once it is back the held rows are
    written first, in order, in chunks, and a held row the database refuses (no action: NOT NULL) is dropped
    and counted without keeping the rows behind it out."""
    from sqlalchemy.exc import OperationalError

    import gallery.audit as audit

    monkeypatch.setattr(audit, "HOLD_AT_MOST", 4)
    monkeypatch.setattr(audit, "DRAIN_CHUNK", 2)

    class Flaky:  # the gallery's session factory, unavailable while ``down``
        down = False

        def __init__(self, real) -> None:
            self.real = real

        def begin(self):
            if self.down:
                raise OperationalError("connect", {}, ConnectionRefusedError("refused"))
            return self.real.begin()

        def __call__(self):
            return self.real()

    with Gallery(db_url, aggregation="max", index_dir=tmp_path / "a") as g:
        sessions = Flaky(g.Session)
        log = AuditLog(sessions)
        assert log.write_or_hold([{"action": "enroll", "outcome": "ok"}]) == [1]
        sessions.down = True
        assert log.write_or_hold([{"action": "a1", "outcome": "error 503"}, {"action": None, "outcome": "x"}]) == [
            None, None,
        ]  # fmt: skip
        assert log.write_or_hold([{"action": "a3", "outcome": "ok"}]) == [None]
        assert log.flush_held() == 3  # still down: nothing written, nothing new held
        assert log.write_or_hold([{"action": f"b{i}", "outcome": "ok"} for i in range(3)]) == [None] * 3
        assert (log.held, log.lost) == (4, 2)  # the cap: b1 and b2 are lost
        sessions.down = False
        ids = log.write_or_hold([{"action": "c", "outcome": "ok"}])
        assert (log.held, log.lost) == (0, 3)  # the row without an action refused and counted
        rows = log.read(limit=100)[::-1]  # oldest first
        assert [r.action for r in rows] == ["enroll", "a1", "a3", "b0", "c"]
        assert ids == [rows[-1].id]
        assert [r.at for r in rows] == sorted(r.at for r in rows)  # each row keeps the time of its event
