"""Three gallery API processes (replicas) on one PostgreSQL database, following its change feed.

Real processes, real uvicorn, real PostgreSQL: an enroll acknowledged by one replica is identifiable on the
others within 1 s, a delete is gone within 1 s, a killed replica catches up after its restart, and 1,000
concurrent identify-or-enroll requests of the same new person over the 3 replicas create exactly one person.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]
H = {"X-API-Key": "admin-key"}


def image(rgb) -> bytes:
    import io

    from PIL import Image

    a = np.zeros((40, 20, 3), np.uint8)
    a[...] = rgb
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


class Replica:
    def __init__(self, db: str, follow: bool = True) -> None:
        self.db, self.port, self.proc, self.follow = db, free_port(), None, follow
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Replica:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.replica",
                "--db",
                self.db,
                "--port",
                str(self.port),
                "--poll",
                "0.5",
            ],
            cwd=REPO,
            env=env,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica on port {self.port} exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"replica on port {self.port} did not start in 60 s")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@contextmanager
def replicas(db: str, n: int = 3, follow: bool = True):
    rs = [Replica(db, follow) for _ in range(n)]
    try:
        rs[0].start()  # the first runs the migrations; the others then start in parallel
        for r in rs[1:]:
            r.start()
        yield rs
    finally:
        for r in rs:
            r.kill()


def identify(r: Replica, img: bytes) -> int | None:
    j = httpx.post(
        f"{r.url}/identify", headers=H, data={"modality": "body"}, files={"image": ("q.png", img)}
    ).json()
    return j["person"]["person_id"] if j["known"] else None


def until(cond, timeout: float = 1.0) -> float:
    t0 = time.perf_counter()
    while not cond():
        assert time.perf_counter() - t0 < timeout, f"not within {timeout} s"
        time.sleep(0.01)
    return time.perf_counter() - t0


@pytest.mark.timeout(300)
def test_three_replicas_share_enrolls_deletes_and_restarts(pg_database: str) -> None:
    with replicas(pg_database) as (a, b, c):
        red = image((200, 10, 10))
        pid = httpx.post(f"{a.url}/persons", json={"display_name": "red"}, headers=H).json()["id"]
        r = httpx.post(
            f"{a.url}/persons/{pid}/enroll",
            headers=H,
            data={"modality": "body"},
            files=[("images", ("r.png", red, "image/png"))],
        )
        assert r.status_code == 200
        lags = [until(lambda r=r_: identify(r, red) == pid) for r_ in (b, c)]
        assert max(lags) < 1.0
        assert httpx.delete(f"{a.url}/persons/{pid}", headers=H).status_code == 200
        lags += [until(lambda r=r_: identify(r, red) is None) for r_ in (b, c)]
        assert max(lags) < 1.0
        # a replica killed mid-service misses changes; on restart it catches up from the database
        c.kill()
        blue = image((10, 10, 200))
        pid2 = httpx.post(f"{b.url}/persons", json={}, headers=H).json()["id"]
        httpx.post(
            f"{b.url}/persons/{pid2}/enroll",
            headers=H,
            data={"modality": "body"},
            files=[("images", ("b.png", blue, "image/png"))],
        )
        c.start()
        assert identify(c, blue) == pid2
        ready = httpx.get(f"{c.url}/ready", headers=H).json()["indexes"]
        assert ready == httpx.get(f"{a.url}/ready", headers=H).json()["indexes"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("follow", [True, False], ids=["following", "not-following"])
def test_a_thousand_concurrent_identify_or_enroll_races_create_one_person(
    pg_database: str, follow: bool
) -> None:
    """Not following the feed in the background leaves only the catch-up under the lock to prevent doubles."""
    with replicas(pg_database, follow=follow) as rs:
        face = image((30, 160, 90))

        async def race() -> list[dict]:
            # idle connections are dropped by the client (1 s) before the server's keep-alive timeout (5 s) can
            # close one under a request being sent on it (a transport race, seen once on a loaded machine)
            limits = httpx.Limits(max_connections=64, keepalive_expiry=1.0)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                sem = asyncio.Semaphore(60)

                async def one(i: int) -> dict:
                    # 60 in flight over 3 replicas can put more than REID_MAX_INFLIGHT (32) on one of them;
                    # a shed request is answered 503 with Retry-After, and a well-behaved client retries
                    async with sem:
                        for _ in range(50):
                            try:
                                r = await client.post(
                                    f"{rs[i % 3].url}/identify-or-enroll",
                                    headers=H,
                                    data={"modality": "body"},
                                    files={"image": ("f.png", face)},
                                )
                            except (httpx.ReadError, httpx.RemoteProtocolError):
                                # the connection closed under the request: the same face asked again is
                                # answered with the same person (identify-or-enroll creates one at most)
                                await asyncio.sleep(0.05)
                                continue
                            if r.status_code != 503:
                                break
                            assert "Retry-After" in r.headers, r.headers
                            await asyncio.sleep(0.05)
                        assert r.status_code == 200, r.text
                        return r.json()

                return await asyncio.gather(*(one(i) for i in range(1000)))

        results = asyncio.run(race())
        assert len({r["person_id"] for r in results}) == 1
        assert sum(r["created"] for r in results) == 1
        persons = httpx.get(f"{rs[0].url}/persons", headers=H).json()
        assert len(persons) == 1 and persons[0]["templates"] == {"body/colour-hist-8": 1}
