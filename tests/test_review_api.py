"""The review queue through the REST API on a real server, without a browser (issue 15 part 2; the page's
Playwright test in test_web.py does the same on LFW faces): near misses of identify-or-enroll are queued with
their numbers, a confirmation merges the two persons and changes the identify answer, a rejection keeps them
apart for good; every decision is audited and counted. SQLite and PostgreSQL."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from services.api import create_app
from services.settings import ApiKey, Settings
from tests.servers import ColourEmbedder, running

ADMIN, READ = {"X-API-Key": "admin-key"}, {"X-API-Key": "read-key"}
RED, BLUE, GREEN = (200, 30, 30), (30, 30, 200), (30, 200, 30)


def photo(main: tuple[int, int, int], other: tuple[int, int, int] | None = None, share: float = 1.0) -> bytes:
    """A body-sized PNG: the top ``share`` of its rows in ``main``, the rest in ``other``. With colour
    histograms as embeddings, 70% of one colour is a near miss of that colour at a 0.99 threshold."""
    a = np.zeros((60, 20, 3), np.uint8)
    a[...] = other if other is not None else main
    a[: round(share * 60)] = main
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


NEAR_RED = photo(RED, (100, 30, 30), 0.7)  # only the red channel differs, in 30% of the rows
NEAR_BLUE = photo(BLUE, (30, 30, 100), 0.7)


def review_app(db_url: str, tmp_path: Path, *keys: ApiKey):
    """The API with colour-histogram bodies, a 0.99 threshold and a 0.05 review band below it."""
    settings = Settings(
        database_url=db_url,
        media_dir=str(tmp_path / "media"),  # on PostgreSQL there is no SQLite file to keep crops beside
        api_keys=list(keys),
        body_threshold=0.99,
        review_band=0.05,
        retention_sweep_every=None,
    )
    return create_app(settings, embedders={"body": ColourEmbedder()})


@pytest.fixture
def server(db_url: str, tmp_path: Path):
    admin, reader = (
        ApiKey("admin-key", "admin", frozenset({"admin"})),
        ApiKey("read-key", "reader", frozenset({"read"})),
    )
    with running(review_app(db_url, tmp_path, admin, reader)) as url:
        yield url


def upload(url: str, path: str, field: str, image: bytes, headers: dict = ADMIN) -> dict:
    """POST one body image as multipart ``field`` and return the JSON of a 200 answer."""
    r = httpx.post(
        f"{url}{path}", headers=headers, data={"modality": "body"}, files={field: ("p.png", image)}
    )
    assert r.status_code == 200, r.text
    return r.json()


def enroll(url: str, name: str, image: bytes) -> int:
    pid = httpx.post(f"{url}/persons", json={"display_name": name}, headers=ADMIN).json()["id"]
    upload(url, f"/persons/{pid}/enroll", "images", image)
    return pid


def identify_or_enroll(url: str, image: bytes) -> dict:
    return upload(url, "/identify-or-enroll", "image", image)


def identify(url: str, image: bytes) -> dict:
    return upload(url, "/identify", "image", image, READ)


def test_confirm_merges_reject_keeps_apart_audited_and_counted(server: str) -> None:
    url = server
    red, blue = enroll(url, "Red", photo(RED)), enroll(url, "Blue", photo(BLUE))
    new = {}
    for name, image in (("red", NEAR_RED), ("blue", NEAR_BLUE)):
        r = identify_or_enroll(url, image)
        t = r["decision"]["threshold"]
        assert r["created"] and t - 0.05 <= r["normalised_score"] < t, r  # a near miss: a new person
        new[name] = r["person_id"]
    far = identify_or_enroll(url, photo(GREEN))  # nobody close: a new person, nothing to review
    assert far["created"] and far["normalised_score"] < far["decision"]["threshold"] - 0.05

    pairs = httpx.get(f"{url}/review", headers=READ).json()
    assert [(p["person_id"], p["candidate_id"]) for p in pairs] == [(new["blue"], blue), (new["red"], red)]
    assert all(
        p["status"] == "open" and p["source"] == "api" and p["modality"] == "body"
        and p["threshold"] - 0.05 <= p["normalised"] < p["threshold"]
        for p in pairs
    )  # fmt: skip
    by = {p["candidate_id"]: p["id"] for p in pairs}
    assert httpx.get(f"{url}/review/counts", headers=READ).json() == {
        "open": 2, "confirmed": 0, "rejected": 0, "right_near_threshold": None,
    }  # fmt: skip

    # the person identify-or-enroll created keeps the crop it was made from (both sides show a picture)
    (t,) = httpx.get(f"{url}/persons/{new['red']}/templates", headers=READ).json()
    assert (
        t["image"]
        and httpx.get(f"{url}/persons/{new['red']}/templates/{t['id']}/image", headers=READ).status_code
        == 200
    )
    before = identify(url, NEAR_RED)
    assert before["known"] and before["person"]["person_id"] == new["red"]
    assert before["matches"][0]["template_id"] == t["id"]  # the best template, whose crop the page shows

    # deciding needs the delete scope: a reader cannot merge people
    assert httpx.post(f"{url}/review/{by[red]}/confirm", headers=READ).status_code == 403

    r = httpx.post(f"{url}/review/{by[red]}/confirm", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "confirmed" and r.json()["decided_by"] == "admin"
    assert httpx.get(f"{url}/persons/{new['red']}", headers=READ).status_code == 404  # merged away
    assert httpx.get(f"{url}/persons/{red}", headers=READ).json()["templates"] == {"body/colour-hist-8": 2}
    after = identify(url, NEAR_RED)
    assert after["known"] and after["person"]["person_id"] == red  # the answer changed
    assert after["person"]["display_name"] == "Red"

    r = httpx.post(f"{url}/review/{by[blue]}/reject", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    for pid in (blue, new["blue"]):  # kept apart
        assert httpx.get(f"{url}/persons/{pid}", headers=READ).status_code == 200
    assert identify(url, NEAR_BLUE)["person"]["person_id"] == new["blue"]

    # decided once: a second decision is refused, saying by whom and when; an unknown pair is 404
    for pid, verdict, was in ((by[red], "reject", "confirmed"), (by[blue], "confirm", "rejected"),
                              (by[blue], "reject", "rejected")):  # fmt: skip
        r = httpx.post(f"{url}/review/{pid}/{verdict}", headers=ADMIN)
        detail = r.json()["detail"]
        assert r.status_code == 409 and f"review pair {pid} is already {was} by admin at 20" in detail, r.text
    assert httpx.post(f"{url}/review/999999/confirm", headers=ADMIN).status_code == 404

    # the same photos again: named now, nothing new to judge (the rejected pair is not offered again)
    for image in (NEAR_RED, NEAR_BLUE):
        assert identify_or_enroll(url, image)["created"] is False
    assert httpx.get(f"{url}/review", headers=READ).json() == []
    assert [p["id"] for p in httpx.get(f"{url}/review?status=rejected", headers=READ).json()] == [by[blue]]
    assert [p["id"] for p in httpx.get(f"{url}/review?status=confirmed", headers=READ).json()] == [by[red]]
    assert httpx.get(f"{url}/review/counts", headers=READ).json() == {
        "open": 0, "confirmed": 1, "rejected": 1, "right_near_threshold": 0.5,
    }  # fmt: skip

    audit = httpx.get(f"{url}/audit", headers=ADMIN).json()
    decisions = [
        (a["action"], a["subject"], a["key_id"], a["outcome"])
        for a in audit
        if a["action"].startswith("review")
    ]
    assert ("review-confirm", f"person:{red}", "admin", "ok") in decisions
    assert ("review-reject", f"person:{new['blue']}", "admin", "ok") in decisions
    assert sum(d[3] == "error 409" for d in decisions) == 3  # refused decisions are audited too


def test_two_operators_confirming_one_pair_at_once_one_merges_the_other_is_told_who_did(
    db_url: str, tmp_path: Path
) -> None:
    """Both requests read the pair open before either merges (held at a barrier inside the real merge): one
    merges, the other gets 409 (who confirmed it and when, or, before that is written, that a person went
    meanwhile), not a 404 about the person merged away."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    app = review_app(
        db_url,
        tmp_path,
        ApiKey("admin-key", "ann", frozenset({"admin"})),
        ApiKey("other-admin-key", "bob", frozenset({"admin"})),
    )
    with running(app) as url:
        red = enroll(url, "Red", photo(RED))
        created = identify_or_enroll(url, NEAR_RED)["person_id"]
        (pair,) = httpx.get(f"{url}/review", headers=ADMIN).json()
        gallery = app.state.svc.gallery
        merge, both_read = gallery.merge, threading.Barrier(2, timeout=10)
        one_at_a_time = threading.Lock()  # the loser's merge starts after the winner's has removed the person

        def held_merge(keep: int, remove: int):
            both_read.wait()  # both confirmations have read the pair open
            with one_at_a_time:
                return merge(keep, remove)

        gallery.merge = held_merge
        try:
            with ThreadPoolExecutor(2) as pool:
                answers = list(
                    pool.map(
                        lambda key: httpx.post(
                            f"{url}/review/{pair['id']}/confirm", headers={"X-API-Key": key}, timeout=20
                        ),
                        ("admin-key", "other-admin-key"),
                    )
                )
        finally:
            gallery.merge = merge
        codes = sorted(r.status_code for r in answers)
        assert codes == [200, 409], [r.text for r in answers]
        won = next(r for r in answers if r.status_code == 200).json()
        lost = next(r for r in answers if r.status_code == 409).json()["detail"]
        assert won["status"] == "confirmed" and won["decided_by"] in ("ann", "bob")
        # who decided, once the winner has written it; until then, that a person went meanwhile
        assert (
            f"review pair {pair['id']} is already confirmed by {won['decided_by']} at " in lost
            or f"review pair {pair['id']}: one of its persons was merged away or erased meanwhile" in lost
        ), lost
        assert lost.endswith("; nothing was changed"), lost
        assert httpx.get(f"{url}/persons/{created}", headers=ADMIN).status_code == 404  # merged once
        assert httpx.get(f"{url}/persons/{red}", headers=ADMIN).json()["templates"] == {
            "body/colour-hist-8": 2
        }
