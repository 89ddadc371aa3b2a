"""What an outsider tries against a running server: bombs, wrong shapes, huge and deep bodies, phone photos,
server faults, readiness detail and the page's security headers. Each answer is a 4xx with a message (or an
audited 500 for a fault of ours), never a dropped connection."""

from __future__ import annotations

import io
import json
import socket
import struct
import time
import zlib
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
from PIL import Image

from services.api import create_app
from services.settings import ApiKey, Settings
from tests.servers import ColourEmbedder, running

ADMIN = {"X-API-Key": "admin-key-123"}
FAULT_RGB = (1, 2, 3)


class FaultyEmbedder(ColourEmbedder):
    """A body embedder with a bug that one colour triggers: stands for any fault of ours inside a route."""

    def embed(self, images, batch_size: int = 64) -> np.ndarray:
        for a in images:
            if tuple(np.asarray(a)[0, 0]) == FAULT_RGB:
                raise RuntimeError("simulated fault inside the embedder")
        return super().embed(images, batch_size)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from reid.face import DlibFaceEmbedder

    d = tmp_path_factory.mktemp("hardening")
    settings = Settings(
        database_url=str(d / "g.db"),
        api_keys=[ApiKey("admin-key-123", "admin", frozenset({"admin"}))],
        max_upload_bytes=300_000,
        max_request_bytes=1_000_000,
        max_images_per_request=4,
        body_threshold=0.99,
    )
    app = create_app(settings, embedders={"face": DlibFaceEmbedder(), "body": FaultyEmbedder()})
    with running(app) as url:
        yield url


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def colour(rgb, size=(40, 20)) -> bytes:
    return png_bytes(np.tile(np.array(rgb, np.uint8), (*size, 1)))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG file of a few hundred bytes whose header declares ``width`` x ``height`` grey pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x80" * width
    compressor = zlib.compressobj(9)
    idat = compressor.compress(row * 4) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_413_naming_the_file(server: str) -> None:
    bomb = png_claiming(20000, 20000)
    assert len(bomb) < 5000
    for path, field, data in (
        ("/identify", "image", {"modality": "body"}),
        ("/identify", "image", {"modality": "face"}),
        ("/identify-or-enroll", "image", {"modality": "body"}),
    ):
        r = httpx.post(
            f"{server}{path}", headers=ADMIN, data=data, files={field: ("bomb.png", bomb, "image/png")}
        )
        assert r.status_code == 413, (path, r.status_code, r.text)
        assert "bomb.png" in r.json()["detail"] and "pixels" in r.json()["detail"]
    p = httpx.post(f"{server}/persons", json={}, headers=ADMIN).json()
    r = httpx.post(
        f"{server}/persons/{p['id']}/enroll",
        headers=ADMIN,
        data={"modality": "body"},
        files={"images": ("bomb.png", bomb, "image/png")},
    )
    assert r.status_code == 413 and "images[0] (bomb.png)" in r.json()["detail"]


def test_phone_mpo_jpegs_are_read_as_their_first_frame(server: str) -> None:
    first = Image.fromarray(np.tile(np.array([200, 30, 30], np.uint8), (64, 32, 1)))
    second = Image.fromarray(np.tile(np.array([30, 30, 200], np.uint8), (64, 32, 1)))
    buf = io.BytesIO()
    first.save(buf, format="MPO", save_all=True, append_images=[second], quality=95)
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    p = httpx.post(f"{server}/persons", json={"display_name": "mpo"}, headers=ADMIN).json()
    r = httpx.post(
        f"{server}/persons/{p['id']}/enroll",
        headers=ADMIN,
        data={"modality": "body"},
        files={"images": ("phone.jpg", buf.getvalue(), "image/jpeg")},
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{server}/identify",
        headers=ADMIN,
        data={"modality": "body"},
        files={"image": ("q.png", colour((200, 30, 30)), "image/png")},
    ).json()
    assert r["known"] is True and r["person"]["person_id"] == p["id"]  # the first (red) frame was enrolled


def test_wrong_shaped_requests_are_4xx_with_a_message(server: str) -> None:
    # a newcomer's first try: a photo posted to /persons
    r = httpx.post(
        f"{server}/persons", headers=ADMIN, files={"image": ("a.png", colour((9, 9, 9)), "image/png")}
    )
    assert r.status_code == 422, r.text
    assert "POST /persons/{person_id}/enroll" in r.json()["detail"]
    # non-UTF-8 bytes where JSON is expected
    r = httpx.post(
        f"{server}/persons", headers={**ADMIN, "Content-Type": "application/json"}, content=b"\xff\xfe{\x00"
    )
    assert r.status_code == 422 and r.json()["detail"]
    for q in ("offset=10000000000000000000", "offset=-1", "limit=0", "offset=1e3"):
        r = httpx.get(f"{server}/persons?{q}", headers=ADMIN)
        assert r.status_code == 422, (q, r.status_code, r.text)
        assert "query." in r.json()["detail"]


def test_metadata_and_consent_json_is_bounded_in_size_and_depth(server: str) -> None:
    deep: object = "leaf"
    for _ in range(900):
        deep = {"k": deep}
    r = httpx.post(f"{server}/persons", headers=ADMIN, json={"display_name": "deep", "metadata": deep})
    assert r.status_code == 422 and "metadata" in r.json()["detail"], r.text
    r = httpx.post(f"{server}/persons", headers=ADMIN, json={"consent": {"a": [[[[[[[[[1]]]]]]]]]}})
    assert r.status_code == 422 and r.json()["detail"].startswith("consent: nested 10 levels deep")
    r = httpx.post(f"{server}/persons", headers=ADMIN, json={"metadata": {"notes": "x" * 20_000}})
    assert r.status_code == 422 and "metadata" in r.json()["detail"] and "16384" in r.json()["detail"]
    r = httpx.post(f"{server}/persons", headers=ADMIN, json={"metadata": {"notes": "x" * 5_000_000}})
    assert r.status_code == 413 and "request body" in r.json()["detail"]
    names = [p["display_name"] for p in httpx.get(f"{server}/persons?limit=1000", headers=ADMIN).json()]
    assert "deep" not in names  # nothing of a refused request was stored
    ok = {"store": "7", "tags": [{"a": 1}]}
    r = httpx.post(f"{server}/persons", headers=ADMIN, json={"display_name": "fine", "metadata": ok})
    assert r.status_code == 201
    # a consent record changed later is held to the same bounds
    pid = r.json()["id"]
    r = httpx.patch(f"{server}/persons/{pid}", headers=ADMIN, json={"consent": {"a": [[[[[[[[[1]]]]]]]]]}})
    assert r.status_code == 422 and r.json()["detail"].startswith("consent: nested 10 levels deep"), r.text
    r = httpx.patch(f"{server}/persons/{pid}", headers=ADMIN, json={"consent": {"notes": "x" * 20_000}})
    assert r.status_code == 422 and "consent" in r.json()["detail"] and "16384" in r.json()["detail"]
    assert httpx.get(f"{server}/persons/{pid}/record", headers=ADMIN).json()["consent"] is None


def _raw_request(url: str, head: str, body: bytes = b"") -> tuple[int, bytes, float]:
    """Send a hand-written request; return (status, response body, seconds until the answer)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        t = time.perf_counter()
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            part = s.recv(65536)
            if not part:
                break
            data += part
        elapsed = time.perf_counter() - t
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[1], elapsed


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_an_oversized_upload_is_refused_before_its_body_is_read(server: str) -> None:
    # a declared 10 GB upload: answered from the headers alone, without waiting for (or reading) the body
    head = (
        "POST /identify HTTP/1.1\r\nHost: x\r\nX-API-Key: admin-key-123\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000000\r\n\r\n"
    )
    status, body, elapsed = _raw_request(server, head)
    assert status == 413 and b"Content-Length 10000000000" in body and elapsed < 1.0
    # no Content-Length (chunked): refused once the running count passes the limit, and the connection is
    # closed so the client stops sending (instead of the server draining a body of any size)
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /identify HTTP/1.1\r\nHost: x\r\nX-API-Key: admin-key-123\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        s.settimeout(0.05)
        sent, answer, closed = 0, b"", False
        try:
            while sent < 20_000_000 and not closed:
                s.sendall(b"%x\r\n%s\r\n" % (100_000, b"\0" * 100_000))
                sent += 100_000
                try:
                    part = s.recv(65536)
                    answer, closed = answer + part, not part
                except TimeoutError:
                    pass
        except OSError:  # reset by the server while sending
            closed = True
    assert answer.startswith(b"HTTP/1.1 413") and b"over the limit of 1000000 bytes" in answer
    assert closed and sent < 3_000_000, sent
    r = httpx.post(
        f"{server}/persons/1/enroll",
        headers=ADMIN,
        data={"modality": "body"},
        files=[("images", (f"{i}.png", colour((i, 5, 5)), "image/png")) for i in range(5)],
    )
    assert r.status_code == 413 and "at most 4 per request" in r.json()["detail"]


def test_a_fault_of_ours_is_a_json_500_and_is_audited(server: str) -> None:
    r = httpx.post(
        f"{server}/identify",
        headers=ADMIN,
        data={"modality": "body"},
        files={"image": ("fault.png", colour(FAULT_RGB), "image/png")},
    )
    assert r.status_code == 500 and r.json() == {"detail": "internal server error (logged on the server)"}
    assert "simulated fault" not in r.text  # internals stay in the server log
    rows = httpx.get(f"{server}/audit?action=identify", headers=ADMIN).json()
    assert rows[0]["outcome"] == "error 500" and rows[0]["key_id"] == "admin"
    # the server goes on answering
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}


def test_readiness_detail_needs_a_key_and_the_page_has_a_strict_csp(server: str) -> None:
    assert httpx.get(f"{server}/ready").json() == {"status": "ready"}
    assert httpx.get(f"{server}/ready", headers={"X-API-Key": "wrong"}).json() == {"status": "ready"}
    detail = httpx.get(f"{server}/ready", headers=ADMIN).json()
    assert set(detail) == {"status", "indexes", "modalities"} and detail["modalities"] == ["body", "face"]
    page = httpx.get(f"{server}/ui/index.html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert json.loads(httpx.get(f"{server}/health").text) == {"status": "ok"}


class SlowEmbedder(ColourEmbedder):
    """A body model that takes 0.5 s a call: stands for a server at its capacity."""

    def embed(self, images, batch_size: int = 64) -> np.ndarray:
        time.sleep(0.5)
        return super().embed(images, batch_size)


def test_beyond_its_bound_the_server_sheds_load_with_retry_after(tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    settings = Settings(
        database_url=str(tmp_path / "g.db"),
        api_keys=[ApiKey("admin-key-123", "admin", frozenset({"admin"}))],
        body_threshold=0.99,
        max_inflight=2,
    )
    with running(create_app(settings, embedders={"body": SlowEmbedder()})) as url:

        def ask(_):
            return httpx.post(
                f"{url}/identify", headers=ADMIN, data={"modality": "body"},
                files={"image": ("q.png", colour((200, 30, 30)), "image/png")}, timeout=30,
            )  # fmt: skip

        with ThreadPoolExecutor(6) as pool:
            pending = [pool.submit(ask, i) for i in range(6)]
            time.sleep(0.2)  # all six are in: two are being worked on
            t = time.perf_counter()
            assert httpx.get(f"{url}/health").status_code == 200  # never shed, answered at once
            assert time.perf_counter() - t < 0.3
            answers = [f.result() for f in pending]
        codes = sorted(r.status_code for r in answers)
        assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
        shed = next(r for r in answers if r.status_code == 503)
        assert shed.headers["retry-after"] == "1" and "at most 2" in shed.json()["detail"]
        assert ask(0).status_code == 200  # once the load has passed


def test_a_database_outage_is_answered_503_and_the_server_recovers_with_it(pg_database: str, caplog) -> None:
    """PostgreSQL refusing this database's connections (its sessions ended) stands for a database outage: every
    route that needs it answers 503 with Retry-After and a message, readiness tells the load balancer, health
    still answers; once the database is back the same server answers again, nothing lost, and the audit rows
    of what was refused meanwhile are written then, at their own time."""
    from sqlalchemy import create_engine, text

    name = pg_database.rsplit("/", 1)[1]
    admin = create_engine(pg_database.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")

    def allow(yes: bool) -> None:
        with admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(yes).lower()}'))
            if not yes:
                c.execute(
                    text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
                )

    settings = Settings(
        database_url=pg_database,
        api_keys=[ApiKey("admin-key-123", "admin", frozenset({"admin"}))],
        body_threshold=0.99,
    )
    try:
        with running(create_app(settings, embedders={"body": ColourEmbedder()})) as url:
            person = httpx.post(f"{url}/persons", headers=ADMIN, json={"display_name": "Ann"}).json()["id"]
            assert httpx.get(f"{url}/ready").status_code == 200
            allow(False)
            for r in (
                httpx.get(f"{url}/ready", timeout=10),
                httpx.get(f"{url}/persons/{person}", headers=ADMIN, timeout=10),
                httpx.post(f"{url}/persons", headers=ADMIN, json={"display_name": "Bo"}, timeout=10),
            ):
                assert r.status_code == 503, (r.status_code, r.text)
                assert "database" in r.json()["detail"] and r.headers["retry-after"]
            assert httpx.get(f"{url}/health").status_code == 200
            # the refused create is in no database, but its audit row is held for when the database returns
            metrics = httpx.get(f"{url}/metrics", headers=ADMIN).text
            assert "reid_audit_held 1.0" in metrics, [m for m in metrics.splitlines() if "audit" in m]
            back = datetime.now(UTC)
            allow(True)
            assert httpx.get(f"{url}/ready").status_code == 200
            assert httpx.get(f"{url}/persons/{person}", headers=ADMIN).json()["display_name"] == "Ann"
            cy = httpx.post(f"{url}/persons", headers=ADMIN, json={"display_name": "Cy"}).json()["id"]
            assert cy > person  # Bo was never made
            audit = httpx.get(f"{url}/audit?action=create-person", headers=ADMIN).json()
            # newest first: Cy's, then the held row of Bo's refused create (written first, at its own time)
            assert [(r["outcome"], r["subject"]) for r in audit] == [
                ("ok", f"person:{cy}"), ("error 503", None), ("ok", f"person:{person}"),
            ]  # fmt: skip
            assert datetime.fromisoformat(audit[1]["at"]).astimezone(UTC) < back
            assert audit[1]["id"] < audit[0]["id"]
            assert "reid_audit_held 0.0" in httpx.get(f"{url}/metrics", headers=ADMIN).text
    finally:
        allow(True)
        admin.dispose()
