"""Fuzzing the REST API with hypothesis: random bodies, uploads, ids and query strings never cause a 5xx."""

from __future__ import annotations

import io
import string

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from services.api import create_app
from services.settings import ApiKey, Settings
from tests.servers import ColourEmbedder, running

KEY = {"X-API-Key": "fuzz"}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from reid.face import DlibFaceEmbedder

    d = tmp_path_factory.mktemp("fuzz")
    s = Settings(
        database_url=str(d / "g.db"),
        api_keys=[ApiKey("fuzz", "fuzz", frozenset({"admin"}))],
        max_upload_bytes=100_000,
        body_threshold=0.9,
    )
    app = create_app(s, embedders={"face": DlibFaceEmbedder(), "body": ColourEmbedder()})
    with running(app) as url, httpx.Client(base_url=url, headers=KEY, timeout=30) as client:
        client.post("/persons", json={"display_name": "seed"})
        yield client


def image_bytes(draw_size, fmt: str, data: bytes) -> bytes:
    w, h = draw_size
    arr = np.frombuffer((data * (w * h * 3 // max(len(data), 1) + 1))[: w * h * 3], dtype=np.uint8).reshape(
        h, w, 3
    )
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


uploads = st.one_of(
    st.binary(max_size=2000),
    st.builds(
        image_bytes,
        st.tuples(st.integers(1, 120), st.integers(1, 120)),
        st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF"]),
        st.binary(min_size=1, max_size=64),
    ),
)
text = st.text(max_size=40)
# path segments: anything a client can put in a URL path (the server must still answer 4xx, not 5xx)
segment = st.text(
    alphabet=string.ascii_letters + string.digits + "-_.~%!$&'()*+,;=:@", min_size=1, max_size=30
)


@FUZZ
@given(
    body=st.one_of(
        st.dictionaries(text, st.one_of(text, st.integers(), st.none(), st.lists(st.integers()))),
        st.lists(st.integers()),
        text,
        st.integers(),
    )
)
def test_create_person_bodies(server: httpx.Client, body) -> None:
    assert server.post("/persons", json=body).status_code < 500


@FUZZ
@given(
    data=uploads,
    modality=st.one_of(st.sampled_from(["face", "body"]), text),
    k=st.one_of(st.integers(-5, 500), text),
)
def test_identify_uploads(server: httpx.Client, data: bytes, modality, k) -> None:
    r = server.post(
        "/identify",
        files={"image": ("x", data, "application/octet-stream")},
        data={"modality": str(modality), "k": str(k)},
    )
    assert r.status_code < 500, r.text


@FUZZ
@given(data=st.lists(uploads, min_size=0, max_size=3), person=st.one_of(st.integers(-2, 10**12), segment))
def test_enroll_uploads(server: httpx.Client, data: list[bytes], person) -> None:
    files = [("images", (f"f{i}", d, "image/png")) for i, d in enumerate(data)]
    r = server.post(f"/persons/{person}/enroll", files=files or None, data={"modality": "body"})
    assert r.status_code < 500, r.text


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["person_id", "camera_id", "since", "until", "limit"]), text))
def test_sightings_queries(server: httpx.Client, params) -> None:
    assert server.get("/sightings", params=params).status_code < 500


@FUZZ
@given(
    path=st.sampled_from(["/persons/{}", "/persons/{}/thumbnail", "/persons/{}/merge"]),
    pid=st.one_of(st.integers(-(2**70), 2**70), segment),
    body=st.one_of(st.none(), st.dictionaries(text, st.integers())),
)
def test_person_paths(server: httpx.Client, path: str, pid, body) -> None:
    url = path.format(pid)
    r = server.post(url, json=body) if url.endswith("merge") else server.get(url)
    assert r.status_code < 500, r.text
