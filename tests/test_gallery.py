"""gallery: real SQLite and PostgreSQL, real FAISS; durability with a real SIGKILLed subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from gallery import (
    DuplicatePersonError,
    EmbeddingError,
    Gallery,
    GalleryError,
    IndexConfig,
    IndexMismatchError,
    NoEmbedderError,
    UnknownPersonError,
    VectorIndex,
)
from tests.servers import ColourEmbedder

REPO = Path(__file__).resolve().parents[1]
# a script run by path has its own folder first on sys.path: point it at this checkout's packages (not at
# whichever checkout the environment's editable install names)
SCRIPT_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
}


def unit(rng: np.random.Generator, n: int, d: int = 32) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def near(v: np.ndarray, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    w = v + noise * rng.normal(size=v.shape).astype(np.float32)
    return (w / np.linalg.norm(w, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def gallery(db_url: str, tmp_path: Path):
    g = Gallery(db_url, index_dir=tmp_path / "idx")
    yield g
    g.close()


def test_enroll_identify_ranks_persons_not_templates(gallery: Gallery) -> None:
    rng = np.random.default_rng(0)
    people = unit(rng, 5)
    ids = []
    for i, p in enumerate(people):
        r = gallery.enroll(
            embeddings=np.stack([near(p, rng), near(p, rng), near(p, rng)]),
            modality="face",
            model_id="m",
            display_name=f"p{i}",
        )
        assert r.created_person and len(r.template_ids) == 3
        ids.append(r.person_id)
    res = gallery.identify(embedding=near(people[2], rng), modality="face", model_id="m", k=3)
    assert next(m.person_id for m in res.matches) == ids[2]
    assert len({m.person_id for m in res.matches}) == 3  # three different persons, not three templates
    assert res.matches[0].display_name == "p2" and res.known is None  # no threshold yet
    gallery.set_threshold("face", "m", 0.8)
    assert gallery.identify(embedding=near(people[2], rng), modality="face", model_id="m").known is True
    assert gallery.identify(embedding=unit(rng, 1)[0], modality="face", model_id="m").known is False


def test_duplicate_images_are_stored_once(gallery: Gallery) -> None:
    rng = np.random.default_rng(1)
    v = unit(rng, 3)
    r = gallery.enroll(embeddings=v, modality="body", model_id="m", image_hashes=["h1", "h2", "h1"])
    assert len(r.template_ids) == 2 and [d.index for d in r.duplicates] == [2]
    again = gallery.enroll(r.person_id, embeddings=v[:1], modality="body", model_id="m", image_hashes=["h2"])
    assert again.template_ids == [] and again.duplicates[0].template_id == r.template_ids[1]
    assert gallery.check_consistency() == {"body/m": {"database": 2, "index": 2}}


def test_mixing_models_or_dimensions_is_refused(gallery: Gallery) -> None:
    rng = np.random.default_rng(2)
    gallery.enroll(embeddings=unit(rng, 2, 32), modality="face", model_id="m")
    with pytest.raises(IndexMismatchError, match="has 32-d templates; refusing a 16-d"):
        gallery.enroll(embeddings=unit(rng, 1, 16), modality="face", model_id="m")
    with pytest.raises(IndexMismatchError):
        gallery.identify(embedding=unit(rng, 1, 16)[0], modality="face", model_id="m")
    # another model is another index: its vectors never meet model m's
    gallery.enroll(embeddings=unit(rng, 1, 16), modality="face", model_id="other")
    assert gallery.identify(embedding=unit(rng, 1, 16)[0], modality="face", model_id="m2").matches == []


def test_bad_inputs_name_the_problem(gallery: Gallery) -> None:
    rng = np.random.default_rng(3)
    with pytest.raises(EmbeddingError, match="L2-normalised; row 0"):
        gallery.enroll(embeddings=np.ones((1, 8), np.float32), modality="face", model_id="m")
    bad = unit(rng, 2)
    bad[1, 0] = np.nan
    with pytest.raises(EmbeddingError, match="NaN"):
        gallery.enroll(embeddings=bad, modality="face", model_id="m")
    with pytest.raises(UnknownPersonError, match="person 999 does not exist"):
        gallery.enroll(999, embeddings=unit(rng, 1), modality="face", model_id="m")
    with pytest.raises(GalleryError, match="model_id is required"):
        gallery.enroll(embeddings=unit(rng, 1), modality="face")
    with pytest.raises(NoEmbedderError, match="no face embedder"):
        gallery.enroll(images=[np.zeros((8, 8, 3), np.uint8)], modality="face")
    with pytest.raises(GalleryError, match="modality must be one of"):
        gallery.enroll(embeddings=unit(rng, 1), modality="iris", model_id="m")
    gallery.create_person("a", external_id="E1")
    with pytest.raises(DuplicatePersonError, match="E1"):
        gallery.create_person("b", external_id="E1")
    with pytest.raises(UnknownPersonError):
        gallery.delete_person(12345)
    # nothing half-stored: the failed enrolls left no templates
    assert gallery.check_consistency().get("face/m", {"database": 0})["database"] == 0


def test_merge_and_delete(gallery: Gallery) -> None:
    rng = np.random.default_rng(4)
    a, b = unit(rng, 2)
    pa = gallery.enroll(embeddings=near(a, rng)[None], modality="face", model_id="m").person_id
    pb = gallery.enroll(embeddings=np.stack([b, near(b, rng)]), modality="face", model_id="m").person_id
    gallery.record_sighting(pb, "cam1", 0.9, "face")
    assert gallery.persons_count("face", "m") == 2
    info = gallery.merge(pa, pb)
    assert info.templates == {"face/m": 3} and info.sightings == 1
    assert gallery.persons_count("face", "m") == 1 and gallery.persons_count("body", "m") == 0
    with pytest.raises(UnknownPersonError):
        gallery.get_person(pb)
    assert gallery.identify(embedding=b, modality="face", model_id="m").matches[0].person_id == pa
    removed = gallery.delete_person(pa)
    assert removed == 3
    assert gallery.identify(embedding=b, modality="face", model_id="m").matches == []
    assert gallery.sightings(person_id=pa) == []
    assert gallery.persons_count("face", "m") == 0
    assert gallery.check_consistency() == {"face/m": {"database": 0, "index": 0}}


def test_identify_or_enroll(gallery: Gallery) -> None:
    rng = np.random.default_rng(5)
    face = unit(rng, 1)[0]
    with pytest.raises(GalleryError, match="no threshold"):
        gallery.identify_or_enroll(embedding=face, modality="face", model_id="m")
    first = gallery.identify_or_enroll(embedding=face, modality="face", model_id="m", threshold=0.7)
    assert first.created and gallery.get_person(first.person_id).kind == "anonymous"
    second = gallery.identify_or_enroll(
        embedding=near(face, rng), modality="face", model_id="m", threshold=0.7
    )
    assert not second.created and second.person_id == first.person_id and second.score > 0.7


def test_concurrent_identify_or_enroll_creates_one_person(gallery: Gallery) -> None:
    rng = np.random.default_rng(6)
    face = unit(rng, 1)[0]
    queries = [near(face, rng, 0.02) for _ in range(12)]
    results, errors = [], []
    barrier = threading.Barrier(len(queries))

    def race(q):
        try:
            barrier.wait()
            results.append(
                gallery.identify_or_enroll(embedding=q, modality="face", model_id="m", threshold=0.8)
            )
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=race, args=(q,)) for q in queries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r.person_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert gallery.count_persons() == 1


RACER = """
import sys, numpy as np
from gallery import Gallery
url, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
face = np.load(sys.argv[3])
g = Gallery(url, index_dir=None)
q = face + 0.02 * rng.normal(size=face.shape).astype(np.float32)
q /= np.linalg.norm(q)
r = g.identify_or_enroll(embedding=q.astype(np.float32), modality="face", model_id="m", threshold=0.8)
print(r.person_id, r.created)
"""


def test_concurrent_processes_create_one_person(db_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    np.save(tmp_path / "face.npy", unit(rng, 1)[0])
    Gallery(db_url, index_dir=None).close()  # migrate once before the race
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), db_url, str(i), str(tmp_path / "face.npy")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=SCRIPT_ENV,
        )
        for i in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    pids = {o[0].split()[0] for o in outs}
    created = [o[0].split()[1] for o in outs]
    assert len(pids) == 1 and created.count("True") == 1


def test_calibration_stores_the_decision_and_identify_shows_its_evidence(gallery: Gallery) -> None:
    from reid.metrics.open_set_decision import calibrate_decision, split_cohort

    rng = np.random.default_rng(8)
    centers = unit(rng, 60)
    labels = np.repeat(np.arange(60), 4)
    # images differ in how much they look like "everyone" (a shared direction): the raw best score mixes
    # such hubs up with strangers, the margin over the runner-up does not
    hub = unit(rng, 1)[0] * rng.uniform(0, 1.2, size=(len(labels), 1)).astype(np.float32)
    emb = near(
        centers[labels] * rng.uniform(0.5, 1.0, size=(len(labels), 1)).astype(np.float32) + hub, rng, 0.12
    )
    res = gallery.calibrate_threshold("face", "m", emb, labels, target_far=0.05, cohort_fraction=0.25)
    # the gallery stores what the library computes on the same split (the library is tested against a slow
    # reference in test_metrics)
    cohort, keep = split_cohort(emb, labels, 0.25, 0)
    ref = calibrate_decision(emb[keep], labels[keep], 0.05, 1, cohort)
    assert (res.rule, res.beta, res.cohort_size) == ("margin", ref.beta, 15)
    assert res.threshold == pytest.approx(ref.threshold) and res.measured_dir == pytest.approx(
        ref.measured_dir
    )
    assert res.measured_far <= 0.05 and res.measured_dir > 0.3
    # the table and its own check, reported (float32 vectors here, so equal to about 1e-6)
    assert res.by_size == pytest.approx(ref.by_size, abs=1e-5)
    assert res.size_check == pytest.approx(ref.size_check, abs=1e-5)
    # 45 identities after the cohort, each asked against the other 44; the check builds on 22, reads at 44
    assert res.size_check["read_persons"] == 44 and res.size_check["fitted_persons"] == 22
    d = gallery.decision_for("face", "m")
    assert (d.rule, d.source, d.beta, len(d.cohort)) == ("margin", "calibrated", ref.beta, 15)
    assert np.allclose(d.cohort, cohort)
    # a new gallery object reads it back from the database, cohort included
    again = Gallery(str(gallery.engine.url.render_as_string(hide_password=False)), index_dir=None)
    try:
        d2 = again.decision_for("face", "m")
        assert (d2.threshold, d2.rule, d2.beta) == (d.threshold, d.rule, d.beta)
        assert np.array_equal(d2.cohort, d.cohort)
    finally:
        again.close()
    ann = gallery.enroll(embeddings=centers[40:41], modality="face", model_id="m").person_id
    bob = gallery.enroll(embeddings=unit(rng, 1), modality="face", model_id="m").person_id
    q = near(centers[40:41], rng, 0.02)[0]
    r = gallery.identify(embedding=q, modality="face", model_id="m")
    assert r.best.person_id == ann and r.known is True
    assert r.score == pytest.approx(r.best.score)
    assert r.runner_up == pytest.approx(max(r.matches[1].score, float((cohort @ q).max())), abs=1e-5)
    assert r.normalised_score == pytest.approx(r.score - d.beta * r.runner_up)
    assert r.decision == {"rule": "margin", "threshold": d.threshold, "beta": d.beta, "cohort_size": 15,
                          "source": "calibrated", "size_aware": True}  # fmt: skip
    # a margin's thresholds come by gallery size too (they fall past the validation galleries' size)
    assert res.by_size[100] > res.by_size[10_000] and r.threshold == pytest.approx(d.threshold_at(2))
    stranger = gallery.identify(embedding=unit(rng, 1)[0], modality="face", model_id="m")
    assert stranger.known is False and stranger.normalised_score < stranger.threshold
    assert {m.person_id for m in stranger.matches} == {ann, bob}
    # a raw-rule calibration carries thresholds by gallery size; identify applies the one for its size
    raw_cal = gallery.calibrate_threshold("face", "m", emb, labels, target_far=0.05, rule="raw")
    assert raw_cal.rule == "raw" and raw_cal.by_size[1] < raw_cal.by_size[100] < raw_cal.by_size[10_000]
    dr = gallery.decision_for("face", "m")
    assert dr.rule == "raw" and dr.threshold_at(2) == pytest.approx(np.interp(np.log(2), np.log([1, 2, 5]),
                                                                          [raw_cal.by_size[n] for n in (1, 2, 5)]))  # fmt: skip
    r2 = gallery.identify(embedding=q, modality="face", model_id="m")
    assert gallery.persons_count("face", "m") == 2 and r2.threshold == pytest.approx(dr.threshold_at(2))
    assert r2.decision["size_aware"] is True and r2.known is (r2.score >= r2.threshold)
    # an explicit threshold is a raw-score threshold for that call
    raw = gallery.identify(embedding=unit(rng, 1)[0], modality="face", model_id="m", threshold=-1.0)
    assert raw.known is True and raw.decision["rule"] == "raw" and raw.normalised_score == raw.score


def test_decision_sources_calibrated_over_setting_over_model_card(db_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    card = {"rule": "margin", "beta": 1.0, "threshold": 0.2, "cohort": unit(rng, 5, 24)}
    emb = ColourEmbedder()
    emb.decision = card
    g = Gallery(db_url, index_dir=None, embedders={"body": emb})
    try:
        d = g.decision_for("body", emb.model_id)
        assert (d.source, d.rule, d.threshold, len(d.cohort)) == ("model card", "margin", 0.2, 5)
        assert g.decision_for("body", "another-model") is None
        g.default_thresholds["body"] = 0.7
        assert (g.decision_for("body", emb.model_id).source, g.threshold_for("body", emb.model_id)) == (
            "setting",
            0.7,
        )
        g.set_threshold("body", emb.model_id, 0.5)
        d = g.decision_for("body", emb.model_id)
        assert (d.source, d.rule, d.threshold) == ("calibrated", "raw", 0.5)
    finally:
        g.close()
    with pytest.raises(GalleryError, match="rule must be one of"):
        Gallery(db_url, index_dir=None).set_threshold("body", "m", 0.5, rule="zscore")


def test_sightings_query(gallery: Gallery) -> None:
    from datetime import UTC, datetime, timedelta

    rng = np.random.default_rng(9)
    pid = gallery.enroll(embeddings=unit(rng, 1), modality="body", model_id="m").person_id
    t0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
    for i, cam in enumerate(["c1", "c2", "c1"]):
        gallery.record_sighting(pid, cam, 0.9, "body", seen_at=t0 + timedelta(minutes=i))
    assert [s.camera_id for s in gallery.sightings(person_id=pid)] == ["c1", "c2", "c1"]
    assert len(gallery.sightings(camera_id="c1")) == 2
    assert len(gallery.sightings(since=t0 + timedelta(seconds=30), until=t0 + timedelta(minutes=2))) == 1
    with pytest.raises(UnknownPersonError):
        gallery.record_sighting(pid + 100, "c1")


def test_track_person_names_the_person_a_track_was_seen_as(gallery: Gallery) -> None:
    """What the NATS matcher asks after a restart, through the gallery's API rather than its tables."""
    from services.matcher import Matcher

    rng = np.random.default_rng(10)
    pid = gallery.enroll(embeddings=unit(rng, 1), modality="body", model_id="m").person_id
    assert gallery.track_person("cam1:7") is None
    gallery.record_sighting(pid, "cam1", 0.9, "body", track_id="cam1:7")
    assert gallery.track_person("cam1:7") == pid
    assert gallery.track_person("cam1:8") is None
    assert Matcher(gallery)._known_track("cam1:7") == pid


def test_datetimes_come_back_aware_in_utc(gallery: Gallery) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from gallery.audit import AuditLog
    from gallery.privacy import export_person

    pid = gallery.create_person("ann")
    berlin = timezone(timedelta(hours=2))
    local = datetime(2030, 6, 1, 14, 0, tzinfo=berlin)  # 12:00 UTC
    gallery.record_sighting(pid, "c1", seen_at=local)
    gallery.record_sighting(pid, "c2", seen_at=datetime(2030, 6, 1, 12, 30))  # naive: taken as UTC
    AuditLog(gallery.Session).write("export", "ok", subject=f"person:{pid}")
    person = gallery.get_person(pid)
    seen = gallery.sightings(person_id=pid)
    audit = AuditLog(gallery.Session).read(subject=f"person:{pid}")
    for t in [person.created_at, person.last_seen_at, *(s.seen_at for s in seen), *(a.at for a in audit)]:
        assert t.tzinfo is UTC, t
    assert seen[0].seen_at == local and seen[0].seen_at.hour == 12  # the same instant, stated in UTC
    assert person.last_seen_at == datetime(2030, 6, 1, 12, 30, tzinfo=UTC)  # the later one
    # a bound given in another zone selects by instant (SQLite compares stored text: it must be UTC too)
    assert [s.camera_id for s in gallery.sightings(since=local + timedelta(minutes=10))] == ["c2"]
    assert export_person(gallery, pid)[0]["person"]["created_at"].endswith("+00:00")


def test_restart_uses_snapshot_and_detects_stale_or_corrupt_files(tmp_path: Path, caplog) -> None:
    # max aggregation: a stored template asked again scores exactly 1 (the rebuilt index holds it)
    rng = np.random.default_rng(10)
    db = str(tmp_path / "g.db")
    idx = tmp_path / "idx"
    with Gallery(db, index_dir=idx, aggregation="max") as g:
        pid = g.enroll(embeddings=unit(rng, 5), modality="face", model_id="m").person_id
    caplog.set_level("INFO")
    with Gallery(db, index_dir=idx, aggregation="max") as g:
        assert "snapshot" in caplog.text and g.check_consistency()["face/m"] == {"database": 5, "index": 5}
        # a change the snapshot does not know: enroll with index snapshots disabled
    with Gallery(db, index_dir=None) as g2:
        extra = unit(rng, 1)
        g2.enroll(pid, embeddings=extra, modality="face", model_id="m")
    caplog.clear()
    with Gallery(db, index_dir=idx, aggregation="max") as g:
        assert "stale" in caplog.text
        assert g.identify(embedding=extra[0], modality="face", model_id="m").matches[
            0
        ].score == pytest.approx(1.0)
    snap = next(idx.glob("*.faiss"))
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap.write_bytes(bytes(data))
    caplog.clear()
    with Gallery(db, index_dir=idx, aggregation="max") as g:
        assert "corrupt" in caplog.text and g.check_consistency()["face/m"] == {"database": 6, "index": 6}


ENROLLER = """
import sys, numpy as np
from gallery import Gallery
g = Gallery(sys.argv[1], index_dir=sys.argv[2])
rng = np.random.default_rng(0)
pid = g.create_person("victim")
for i in range(100000):
    v = rng.normal(size=(4, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    r = g.enroll(pid, embeddings=v, modality="face", model_id="m")
    if i % 10 == 0:
        g.snapshot()
    np.save(sys.argv[3] + f"/{i}.npy", v)
    print(" ".join(map(str, r.template_ids)), flush=True)
"""


def test_sigkill_during_enrollment_loses_no_acknowledged_template(db_url: str, tmp_path: Path) -> None:
    script = tmp_path / "enroller.py"
    script.write_text(ENROLLER)
    vec_dir = tmp_path / "vecs"
    vec_dir.mkdir()
    idx = tmp_path / "idx"
    proc = subprocess.Popen(
        [sys.executable, str(script), db_url, str(idx), str(vec_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=SCRIPT_ENV,
    )
    acked: list[list[int]] = []
    for line in proc.stdout:
        acked.append([int(x) for x in line.split()])
        if len(acked) == 40:
            proc.send_signal(signal.SIGKILL)  # in the middle of the next batch
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with Gallery(db_url, index_dir=idx, aggregation="max") as g:  # max: each stored template found scores 1
        counts = g.check_consistency()["face/m"]
        assert counts["database"] == counts["index"] >= 40 * 4
        for i, tids in enumerate(acked):
            vecs = np.load(vec_dir / f"{i}.npy")
            for tid, v in zip(tids, vecs):
                res = g.identify(embedding=v, modality="face", model_id="m", k=1)
                assert res.matches[0].score == pytest.approx(1.0, abs=1e-5)
                assert g.person_of[tid] == res.matches[0].person_id


def test_alembic_schema_matches_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from gallery.db import make_engine, migrate
    from gallery.models import Base

    engine = make_engine(db_url)
    migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_from_0004_keeps_rows_and_stops_reusing_ids(db_url: str, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import delete, func, insert, select
    from sqlalchemy.exc import IntegrityError

    from gallery.db import make_engine, migrate
    from gallery.models import AuditEntry, Change, Person, Sighting, Template

    engine = make_engine(db_url)
    migrate(engine, "0004")  # a gallery made before ids were protected
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    vec = unit(np.random.default_rng(15), 1)[0].astype("<f4").tobytes()
    with engine.begin() as c:
        for i in range(4):
            c.execute(insert(Person).values(display_name=f"p{i}", kind="enrolled", created_at=t0))
        pids = list(c.scalars(select(Person.id).order_by(Person.id)))
        for pid in pids:
            c.execute(insert(Template).values(person_id=pid, modality="face", model_id="m", dim=32,
                                              vector=vec, created_at=t0, image_sha256=f"h{pid}"))  # fmt: skip
            c.execute(insert(Sighting).values(person_id=pid, camera_id="c", seen_at=t0))
        erased = pids[-1]  # erased before the upgrade: its ids are known from the change feed and audit log
        gone = list(c.scalars(select(Template.id).where(Template.person_id == erased)))
        c.execute(delete(Sighting).where(Sighting.person_id == erased))
        c.execute(delete(Template).where(Template.person_id == erased))
        c.execute(delete(Person).where(Person.id == erased))
        c.execute(insert(Change).values(op="delete", person_id=erased, template_ids=gone, created_at=t0))
        c.execute(insert(AuditEntry).values(at=t0, action="delete-person", subject=f"person:{erased}",
                                            outcome="ok"))  # fmt: skip

    def rows():
        with engine.connect() as c:
            return [
                sorted(
                    tuple(r) for r in c.execute(select(Person.id, Person.display_name, Person.created_at))
                ),
                sorted(tuple(r) for r in c.execute(select(Template.id, Template.person_id, Template.vector))),
                sorted(
                    tuple(r) for r in c.execute(select(Sighting.id, Sighting.person_id, Sighting.seen_at))
                ),
            ]

    before = rows()
    migrate(engine)
    assert rows() == before and len(before[1]) == 3  # nothing lost (nor cascaded away by the table rebuild)
    with engine.connect() as c:
        assert c.scalar(select(func.count()).select_from(AuditEntry)) == 1
        if engine.dialect.name == "sqlite":  # switched back on after the upgrade
            assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
    with Gallery(db_url, index_dir=tmp_path / "idx") as g:
        assert g.check_consistency() == {"face/m": {"database": 3, "index": 3}}
        new = g.enroll(embeddings=unit(np.random.default_rng(16), 1), modality="face", model_id="m")
        assert new.person_id > erased and new.template_ids[0] > max(gone)
        g.delete_person(new.person_id)
        again = g.enroll(embeddings=unit(np.random.default_rng(17), 1), modality="face", model_id="m")
        assert again.person_id > new.person_id and again.template_ids[0] > new.template_ids[0]
        with pytest.raises(IntegrityError), g.engine.begin() as c:  # foreign keys are still enforced
            c.execute(insert(Sighting).values(person_id=new.person_id, camera_id="c", seen_at=t0))


def test_enroll_and_identify_images_with_an_embedder(tmp_path: Path) -> None:
    from PIL import Image

    red = np.zeros((20, 10, 3), np.uint8)
    red[..., 0] = 200
    blue = np.zeros((20, 10, 3), np.uint8)
    blue[..., 2] = 220
    Image.fromarray(red).save(tmp_path / "red.png")
    with Gallery(str(tmp_path / "g.db"), embedders={"body": ColourEmbedder()}) as g:
        r = g.enroll(images=[str(tmp_path / "red.png"), str(tmp_path / "red.png")], modality="body")
        assert r.model_id == "colour-hist-8" and len(r.template_ids) == 1 and len(r.duplicates) == 1
        g.enroll(images=[blue], modality="body")
        assert g.identify(red, modality="body").matches[0].person_id == r.person_id


def test_hnsw_and_ivf_indexes_delete_and_recall() -> None:
    rng = np.random.default_rng(11)
    vecs = unit(rng, 3000, 32)
    ids = np.arange(1, 3001)
    for kind in ("hnsw", "ivf", "flat"):
        index = VectorIndex("face", "m", 32, IndexConfig(kind=kind, ivf_nprobe=64))
        index.build(ids, vecs)
        assert index.kind == kind
        _, got = index.search(vecs[:50], 1)
        assert (got[:, 0] == ids[:50]).mean() >= 0.96
        index.remove(ids[:10])
        _sims, got = index.search(vecs[:10], 5)
        assert not np.isin(got, ids[:10]).any() and index.ntotal == 2990
        # the others still answer with their own ids (an id map over IVF renumbered them after a removal)
        _, got = index.search(vecs[10:60], 1)
        assert (got[:, 0] == ids[10:60]).mean() >= 0.96
        np.testing.assert_allclose(index.reconstruct(ids[10:13]), vecs[10:13], atol=1e-6)
        assert sorted(index.live_ids().tolist()) == ids[10:].tolist()


def test_ivf_snapshot_of_the_older_id_map_format_is_rebuilt(tmp_path: Path) -> None:
    import hashlib

    import faiss

    from gallery.index import DBState

    rng = np.random.default_rng(16)
    vecs, ids = unit(rng, 2000, 32), np.arange(1, 2001)
    cfg = IndexConfig(kind="ivf", ivf_nprobe=64)
    index = VectorIndex("face", "m", 32, cfg)
    index.build(ids, vecs)
    index.save(tmp_path, "k")
    state = DBState(2000, 2000, int(ids.sum()))
    assert VectorIndex("face", "m", 32, cfg).load(tmp_path, "k", state)
    ivf = index.trained_ivf("ivf", vecs, len(vecs))
    old = faiss.IndexIDMap2(ivf)
    old.add_with_ids(vecs, ids)  # what earlier versions saved, with an intact manifest
    data = faiss.serialize_index(old).tobytes()
    (tmp_path / "k.faiss").write_bytes(data)
    manifest = json.loads((tmp_path / "k.json").read_text())
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    (tmp_path / "k.json").write_text(json.dumps(manifest))
    assert not VectorIndex("face", "m", 32, cfg).load(tmp_path, "k", state)


class _ThreadsSeen:
    """The real FAISS index, noting how many OpenMP threads each search call was given."""

    def __init__(self, index) -> None:
        self.index, self.threads = index, []

    def __getattr__(self, name: str):
        return getattr(self.index, name)

    def search(self, q, k):
        import faiss

        self.threads.append(faiss.omp_get_max_threads())
        return self.index.search(q, k)


def test_small_searches_use_one_openmp_thread(monkeypatch) -> None:
    import faiss

    from gallery.index import omp_threads

    rng = np.random.default_rng(15)
    vecs = unit(rng, 3000, 32)
    ids = np.arange(1, 3001)
    queries = near(vecs[:40], rng)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)  # "all threads" is 2 even on a one-core runner
    try:
        single = VectorIndex("face", "m", 32, IndexConfig(kind="flat"))
        single.build(ids, vecs)
        assert single.config.search_threads == 1 and single.config.small_batch == 16
        single.index = spy = _ThreadsSeen(single.index)
        one_by_one = [single.search(q, 5) for q in queries[:15]]
        batch = single.search(queries, 5)
        assert spy.threads == [1] * 15 + [2]  # < 16 queries: one thread; a batch of 40: all
        assert faiss.omp_get_max_threads() == 2  # restored after each search
        everything = VectorIndex("face", "m", 32, IndexConfig(kind="flat", search_threads=0))
        everything.build(ids, vecs)
        everything.index = spy_all = _ThreadsSeen(everything.index)
        for q, (sims, got) in zip(queries[:15], one_by_one):
            all_sims, all_got = everything.search(q, 5)
            np.testing.assert_array_equal(got, all_got)
            np.testing.assert_allclose(sims, all_sims, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(batch[1][:15, :], np.concatenate([g for _, g in one_by_one]))
        assert spy_all.threads == [2] * 15
        # the setting belongs to the calling thread: one request thread limiting itself leaves others alone
        inside, release, seen = threading.Event(), threading.Event(), []

        def limited() -> None:
            with omp_threads(1):
                seen.append(faiss.omp_get_max_threads())
                inside.set()
                release.wait(10)

        t = threading.Thread(target=limited)
        t.start()
        assert inside.wait(10)
        assert seen == [1] and faiss.omp_get_max_threads() == 2  # while the other thread is limited
        release.set()
        t.join()
    finally:
        faiss.omp_set_num_threads(before)
    monkeypatch.setenv("REID_FAISS_THREADS", "3")
    assert IndexConfig().search_threads == 3
    monkeypatch.setenv("REID_FAISS_THREADS", "two")
    with pytest.raises(GalleryError, match="REID_FAISS_THREADS must be a whole number >= 0.*'two'"):
        IndexConfig()


def test_ivfpq_index_compressed_codes(tmp_path: Path) -> None:
    from gallery import EmbeddingError
    from gallery.index import DBState

    rng = np.random.default_rng(14)
    vecs = unit(rng, 4000, 32)
    ids = np.arange(10, 4010)
    cfg = IndexConfig(kind="ivfpq", pq_m=16, ivf_nlist=32, ivf_nprobe=32)
    index = VectorIndex("body", "m", 32, cfg)
    index.build(ids, vecs)
    assert index.kind == "ivfpq"
    _, got = index.search(vecs[:200], 1)
    assert (got[:, 0] == ids[:200]).mean() >= 0.9  # approximate (codes), but close
    index.remove(ids[:5])
    assert index.ntotal == 3995 and not np.isin(index.search(vecs[:5], 3)[1], ids[:5]).any()
    assert sorted(index.live_ids().tolist()) == ids[5:].tolist()
    with pytest.raises(EmbeddingError, match="compressed"):
        index.reconstruct(ids[5:6])
    index.save(tmp_path, "k")
    again = VectorIndex("body", "m", 32, cfg)
    state = DBState(3995, int(ids[-1]), int(ids[5:].sum()))
    assert again.load(tmp_path, "k", state) and again.kind == "ivfpq"
    np.testing.assert_array_equal(again.search(vecs[5:50], 1)[1], index.search(vecs[5:50], 1)[1])
    with pytest.raises(EmbeddingError, match="pq_m"):
        VectorIndex("body", "m", 30, IndexConfig(kind="ivfpq", pq_m=16)).build(
            ids[:1000], unit(rng, 1000, 30)
        )


def test_mean_aggregation(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    a, _b = unit(rng, 2)
    with Gallery(str(tmp_path / "g.db"), aggregation="mean") as g:
        pa = g.enroll(embeddings=np.stack([a, -a]), modality="face", model_id="m").person_id
        pb = g.enroll(
            embeddings=np.stack([near(a, rng, 0.3), near(a, rng, 0.3)]), modality="face", model_id="m"
        ).person_id
        res = g.identify(embedding=a, modality="face", model_id="m")
        # max would rank pa first (exact copy); mean of (1, -1) = 0 puts pb first
        assert res.matches[0].person_id == pb and res.matches[1].person_id == pa
        assert res.matches[1].score == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("how", ["centroid", "max", "mean"])
def test_every_aggregation_scores_persons_as_its_definition(tmp_path: Path, how: str) -> None:
    """Persons with 1 to 4 templates: identify's per-person scores equal a brute-force oracle written from the
    definitions (centroid: cosine to the normalised mean template; max; mean), for every person."""
    rng = np.random.default_rng(5)
    with Gallery(str(tmp_path / "g.db"), aggregation=how) as g:
        persons = {}
        for n in (1, 2, 3, 4, 2, 1, 3):
            t = unit(rng, n)
            persons[g.enroll(embeddings=t, modality="face", model_id="m").person_id] = t
        for q in unit(rng, 5):
            res = g.identify(embedding=q, modality="face", model_id="m", k=len(persons))
            got = {m.person_id: m.score for m in res.matches}
            for pid, t in persons.items():
                if how == "centroid":
                    c = t.mean(axis=0)
                    want = float(c @ q / np.linalg.norm(c))
                else:
                    want = float(getattr(t @ q, how)())
                assert got[pid] == pytest.approx(want, abs=1e-5), (how, pid)
            assert [m.person_id for m in res.matches] == sorted(got, key=lambda p: -got[p])


def test_faces_aggregate_by_centroid_and_bodies_by_max_unless_told(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    a = unit(rng, 1)[0]
    with Gallery(str(tmp_path / "g.db")) as g:
        assert g.aggregation == {"face": "centroid", "body": "max"}
        # an exact copy among scattered photos vs two photos either side of the query: the centroid of the
        # second is the query itself
        side = np.stack([near(a, rng, 0.5), near(a, rng, 0.5)])
        side[1] = 2 * a * (side[0] @ a) - side[0]  # side[0] mirrored about a: their mean points along a
        side /= np.linalg.norm(side, axis=1, keepdims=True)
        pb = g.enroll(embeddings=side, modality="face", model_id="m").person_id
        res = g.identify(embedding=a, modality="face", model_id="m")
        assert res.matches[0].person_id == pb and res.matches[0].score == pytest.approx(1.0, abs=1e-5)
        # the same two photos as a body: max, so the closer one decides
        g.enroll(pb, embeddings=side, modality="body", model_id="b")
        body = g.identify(embedding=a, modality="body", model_id="b")
        assert body.matches[0].score == pytest.approx(float((side @ a).max()), abs=1e-5)
    with Gallery(str(tmp_path / "m.db"), aggregation={"body": "mean"}) as g:
        assert g.aggregation == {"face": "centroid", "body": "mean"}
    with pytest.raises(GalleryError, match="aggregation must be one of centroid, max, mean, got 'median'"):
        Gallery(str(tmp_path / "h.db"), aggregation="median")
    with pytest.raises(GalleryError, match="aggregation for body must be one of"):
        Gallery(str(tmp_path / "h.db"), aggregation={"body": "median"})
    with pytest.raises(
        GalleryError, match=r"must be a name \(centroid, max, mean\) or \{modality: name\}, got 3"
    ):
        Gallery(str(tmp_path / "h.db"), aggregation=3)
    with pytest.raises(GalleryError, match=r"unknown modality \['voice'\]"):
        Gallery(str(tmp_path / "h.db"), aggregation={"voice": "max"})
    assert not (tmp_path / "h.db").exists()  # refused before anything was opened


def test_calibrating_several_photos_per_person_scores_them_as_the_gallery_does(tmp_path: Path) -> None:
    """calibrate_threshold with 3 photos per identity: the simulated persons are scored by the gallery's
    aggregation for the modality (centroid for faces), so the stored threshold is the one identify meets."""
    from reid.metrics.open_set_decision import calibrate_with_cohort

    rng = np.random.default_rng(21)
    who = unit(rng, 60)
    photos = who[:, None, :] + 0.35 * rng.normal(size=(60, 6, 32)).astype(np.float32)
    emb = (photos / np.linalg.norm(photos, axis=2, keepdims=True)).reshape(-1, 32)
    labels = np.repeat(np.arange(60), 6)
    with Gallery(str(tmp_path / "g.db")) as g:
        got = g.calibrate_threshold("face", "m", emb, labels, target_far=0.05, enroll_per_id=3, store=False)
    for how, same in (("centroid", True), ("max", False)):
        cal, _ = calibrate_with_cohort(emb, labels, 0.05, 3, aggregation=how)
        assert (got.threshold == pytest.approx(cal.threshold)) is same, how


def test_cli_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    np.save(tmp_path / "e.npy", unit(rng, 3))
    np.save(tmp_path / "q.npy", unit(rng, 1)[0])
    db = str(tmp_path / "g.db")

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "gallery", "--db", db, *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )

    r = cli("enroll", "--name", "Ann", "--embeddings", str(tmp_path / "e.npy"), "--model-id", "m")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["template_ids"]) == 3
    r = cli("identify", "--embedding", str(tmp_path / "q.npy"), "--model-id", "m")
    assert r.returncode == 0 and json.loads(r.stdout)["matches"][0]["display_name"] == "Ann"
    r = cli("show", "42")
    assert r.returncode == 2 and "person 42 does not exist" in r.stderr and "Traceback" not in r.stderr
    r = cli("enroll", "--embeddings", str(tmp_path / "missing.npy"), "--model-id", "m")
    assert r.returncode == 2 and "missing.npy" in r.stderr
    assert "Examples" in cli("--help").stdout


def test_thumbnails_follow_merge_and_erasure(gallery: Gallery) -> None:
    from io import BytesIO

    from PIL import Image

    rng = np.random.default_rng(14)
    a = gallery.enroll(embeddings=unit(rng, 1), modality="face", model_id="m").person_id
    b = gallery.enroll(embeddings=unit(rng, 1), modality="face", model_id="m").person_id
    assert gallery.get_thumbnail(a) is None
    assert gallery.set_thumbnail(b, np.full((300, 150, 3), 200, np.uint8))
    assert not gallery.set_thumbnail(b, np.zeros((10, 10, 3), np.uint8), replace=False)
    assert Image.open(BytesIO(gallery.get_thumbnail(b))).size == (64, 128)
    gallery.merge(a, b)
    assert gallery.get_thumbnail(a) is not None
    gallery.delete_person(a)
    with pytest.raises(UnknownPersonError):
        gallery.get_thumbnail(a)
