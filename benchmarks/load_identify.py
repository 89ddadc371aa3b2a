"""Load test: identify at a steady rate against the real service (reid-serve) with a large body gallery.

1. Fills a gallery database with ``--templates`` body templates of the served body model: the real embeddings
   of ``--real`` CUHK03-NP gallery crops (so queries have true matches) plus random unit vectors for the rest
   (reused on re-runs: the database and its index snapshot stay in ``--workdir``).
2. Starts ``reid-serve`` on loopback as a separate process (the index is built, or loaded from its snapshot).
3. Sends ``POST /identify`` with real query crops (JPEG uploads, embedded by the server) at ``--rate``
   requests/s for ``--duration`` s, open loop (a request is sent on schedule even if earlier ones are slow),
   and prints requests/s, latency percentiles and errors.

Examples:
    python benchmarks/load_identify.py                                   # 100k templates, 50 rps, 60 s
    python benchmarks/load_identify.py --templates 10000 --rate 20 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.gallery_search import populate
from benchmarks.machine import describe

ROOT = Path(__file__).resolve().parents[1]

KEY = "load-test-key"


def prepare(db: Path, checkpoint: str, data: Path, n_templates: int, n_real: int) -> list[bytes]:
    from gallery import Gallery
    from reid.data import build_dataset
    from reid.embedder import Embedder

    emb = Embedder.from_checkpoint(checkpoint, device="cpu")
    ds = build_dataset("cuhk03-np", str(data))
    by_pid: dict[int, list] = {}
    for r in ds.gallery:
        by_pid.setdefault(r.pid, []).append(r)
    pids = sorted(by_pid)[:n_real]
    queries = [q for q in ds.query if q.pid in set(pids)]
    if not db.exists():
        with Gallery(str(db)) as g:
            paths = [by_pid[p][0].path for p in pids]
            vecs = emb.embed(paths, progress=True)
            for p, path, v in zip(pids, paths, vecs):
                g.enroll(
                    embeddings=v[None],
                    modality="body",
                    model_id=emb.model_id,
                    display_name=f"cuhk03-{p}",
                    sources=[Path(path).name],
                )
            g.set_threshold("body", emb.model_id, 0.6)
        populate(db, n_templates - len(pids), model_id=emb.model_id, dim=emb.dim)
    return [Path(q.path).read_bytes() for q in queries]


async def load(
    url: str, images: list[bytes], rate: float, duration: float
) -> tuple[list[float], list[str], float]:
    n = int(rate * duration)
    lat: list[float] = []
    errors: list[str] = []
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:

        async def one(i: int, at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            t = time.perf_counter()
            try:
                r = await client.post(
                    f"{url}/identify",
                    headers={"X-API-Key": KEY},
                    data={"modality": "body"},
                    files={"image": (f"q{i}.jpg", images[i % len(images)], "image/jpeg")},
                )
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:100]}")
            except httpx.HTTPError as e:
                errors.append(repr(e))
            lat.append(time.perf_counter() - t)

        t0 = time.perf_counter() + 0.5
        await asyncio.gather(*(one(i, t0 + i / rate) for i in range(n)))
        wall = time.perf_counter() - t0
    return lat, errors, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--templates", type=int, default=100_000)
    p.add_argument("--real", type=int, default=200, help="CUHK03-NP identities enrolled with real crops")
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--checkpoint", default=str(ROOT / "models" / "body" / "mobilenetv2_cuhk03.pt"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cuhk03-np"))
    p.add_argument("--workdir", default="/tmp/load_identify")
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args()
    print(describe())
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    db = work / f"g{args.templates}.db"
    images = prepare(db, args.checkpoint, Path(args.data), args.templates, args.real)
    env = {
        **os.environ,
        "REID_API_KEYS": json.dumps([{"key": KEY, "name": "load", "scopes": ["read"]}]),
    }
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "reid-serve"),
            "--db",
            str(db),
            "--port",
            str(args.port),
            "--body-checkpoint",
            args.checkpoint,
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{args.port}"
    try:
        t = time.perf_counter()
        while True:
            try:
                ready = httpx.get(f"{url}/ready", headers={"X-API-Key": KEY}, timeout=2).json()
                break
            except httpx.HTTPError:
                if server.poll() is not None:
                    raise SystemExit("reid-serve exited during start-up") from None
                time.sleep(0.5)
        print(f"server ready in {time.perf_counter() - t:.1f} s: {ready['indexes']}")
        # warm-up (first requests load lazy parts)
        asyncio.run(load(url, images, 5, 2))
        lat, errors, wall = asyncio.run(load(url, images, args.rate, args.duration))
    finally:
        server.terminate()
        server.wait(30)
    ms = np.array(lat) * 1000
    print(
        f"\n{'templates':>10} {'target rps':>10} {'achieved':>9} {'requests':>9} {'errors':>7} "
        f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    print(
        f"{args.templates:>10,} {args.rate:>10.0f} {len(lat) / wall:>9.1f} {len(lat):>9} {len(errors):>7} "
        f"{np.percentile(ms, 50):>8.1f} {np.percentile(ms, 90):>8.1f} {np.percentile(ms, 99):>8.1f} "
        f"{ms.max():>8.1f}"
    )
    for e in errors[:5]:
        print("error:", e)


if __name__ == "__main__":
    main()
