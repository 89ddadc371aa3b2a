"""Load test: identify at a steady rate against the real service (reid-serve) with a large body gallery.

1. Fills a gallery database with ``--templates`` body templates of the served body model: the real embeddings
   of ``--real`` CUHK03-NP gallery crops (so queries have true matches) plus random unit vectors for the rest
   (reused on re-runs: the database and its index snapshot stay in ``--workdir``).
2. Starts ``reid-serve`` on loopback as a separate process (the index is built, or loaded from its snapshot).
3. Sends ``POST /identify`` with real query crops (JPEG uploads, embedded by the server) at ``--rate``
   requests/s for ``--duration`` s, open loop (a request is sent on schedule even if earlier ones are slow),
   and prints requests/s, latency percentiles, errors (503 = shed) and the mean micro-batch size, for each
   ``--batch-max`` (a server run each) and ``--rates`` (one after the other on that server).

Examples:
    python benchmarks/load_identify.py                                   # 100k templates, 50 rps, 60 s
    python benchmarks/load_identify.py --templates 10000 --rate 20 --duration 10
    # micro-batching off and on, side by side, at several rates (where does p99 cross 200 ms?)
    python benchmarks/load_identify.py --batch-max 1 32 --rates 20 30 40 50 60 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def identify_request(url: str, image: bytes, name: str) -> bytes:
    """One ``POST /identify`` as bytes on the wire (multipart, ``Connection: close``), encoded once."""
    boundary = "reidloadtestboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="modality"\r\n\r\nbody\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    host = httpx.URL(url).netloc.decode()
    head = (
        f"POST /identify HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEY}\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def load(
    url: str, images: list[bytes], rate: float, duration: float, client: str = "raw"
) -> tuple[list[float], list[str], float]:
    """Open loop: request i is sent at t0 + i / rate whatever happened to earlier ones.

    ``client``: ``raw`` writes requests encoded once beforehand on a new loopback connection each (a few
    percent of a core at 200 rps, so the server has the machine); ``httpx`` is a full HTTP client (several
    times that: beyond ~150 rps it competes with the server for the same 2 cores)."""
    n = int(rate * duration)
    lat: list[float] = []
    errors: list[str] = []
    u = httpx.URL(url)
    wire = [identify_request(url, im, f"q{i}.jpg") for i, im in enumerate(images)]

    async def raw(i: int) -> None:
        reader, writer = await asyncio.open_connection(u.host, u.port or 80)
        try:
            writer.write(wire[i % len(wire)])
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        status = int(reply[9:12]) if reply[:5] == b"HTTP/" and reply[9:12].isdigit() else 0
        if status != 200:
            body = reply.partition(b"\r\n\r\n")[2][:100].decode(errors="replace")
            errors.append(f"{status}: {body}")

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as session:

        async def full(i: int) -> None:
            r = await session.post(
                f"{url}/identify",
                headers={"X-API-Key": KEY},
                data={"modality": "body"},
                files={"image": (f"q{i}.jpg", images[i % len(images)], "image/jpeg")},
            )
            if r.status_code != 200:
                errors.append(f"{r.status_code}: {r.text[:100]}")

        async def one(i: int, at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            t = time.perf_counter()
            try:
                await (raw(i) if client == "raw" else full(i))
            except (TimeoutError, OSError, httpx.HTTPError) as e:
                errors.append(repr(e))
            lat.append(time.perf_counter() - t)

        t0 = time.perf_counter() + 0.5
        await asyncio.gather(*(one(i, t0 + i / rate) for i in range(n)))
        wall = time.perf_counter() - t0
    return lat, errors, wall


def batch_counts(url: str) -> tuple[float, float]:
    """(model calls, images) of the server's micro-batcher so far, from /metrics (0, 0 when it is off)."""
    text = httpx.get(f"{url}/metrics", headers={"X-API-Key": KEY}, timeout=10).text
    vals = {}
    for line in text.splitlines():
        if line.startswith(("reid_embed_batch_size_count", "reid_embed_batch_size_sum")):
            name, value = line.split()
            vals[name] = float(value)
    return vals.get("reid_embed_batch_size_count", 0.0), vals.get("reid_embed_batch_size_sum", 0.0)


@contextmanager
def serve(db: Path, checkpoint: str, port: int, batch_max: int) -> Iterator[str]:
    """``reid-serve`` of ``db`` with the defaults a user runs, but for ``REID_EMBED_BATCH_MAX``."""
    env = {
        **os.environ,
        "REID_API_KEYS": json.dumps([{"key": KEY, "name": "load", "scopes": ["read", "admin"]}]),
        "REID_EMBED_BATCH_MAX": str(batch_max),
    }
    cmd = [str(Path(sys.executable).parent / "reid-serve"), "--db", str(db), "--port", str(port),
           "--body-checkpoint", checkpoint]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
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
        print(f"server (REID_EMBED_BATCH_MAX={batch_max}) ready in {time.perf_counter() - t:.1f} s: "
              f"{ready['indexes']}", flush=True)  # fmt: skip
        yield url
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--templates", type=int, default=100_000)
    p.add_argument("--real", type=int, default=200, help="CUHK03-NP identities enrolled with real crops")
    p.add_argument("--rates", type=float, nargs="+", default=[50.0], help="requests/s, one run each")
    p.add_argument("--rate", type=float, help="one rate (same as --rates R)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per rate")
    p.add_argument(
        "--batch-max",
        type=int,
        nargs="+",
        default=[32],
        help="REID_EMBED_BATCH_MAX of each server run (1 = micro-batching off; the default 32 is the service's)",
    )
    p.add_argument("--checkpoint", default=str(ROOT / "models" / "body" / "mobilenetv2_cuhk03.pt"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cuhk03-np"))
    p.add_argument("--workdir", default="/tmp/load_identify")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="raw: requests encoded once, one loopback connection each (little CPU); httpx: a full client",
    )
    args = p.parse_args()
    rates = [args.rate] if args.rate else args.rates
    print(describe())
    print(f"client: {args.client} (asyncio) in this process, on the same 2 cores as the server")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    db = work / f"g{args.templates}.db"
    images = prepare(db, args.checkpoint, Path(args.data), args.templates, args.real)
    rows = []
    for batch_max in args.batch_max:
        with serve(db, args.checkpoint, args.port, batch_max) as url:
            asyncio.run(load(url, images, 5, 2))  # warm-up (first requests load lazy parts)
            for rate in rates:
                calls0, imgs0 = batch_counts(url)
                lat, errors, wall = asyncio.run(load(url, images, rate, args.duration, args.client))
                calls1, imgs1 = batch_counts(url)
                mean_batch = (imgs1 - imgs0) / (calls1 - calls0) if calls1 > calls0 else float("nan")
                rows.append((batch_max, rate, lat, errors, wall, mean_batch))
                ms = np.array(lat) * 1000
                print(f"  batch_max {batch_max} at {rate:g} rps: p99 {np.percentile(ms, 99):.0f} ms, "
                      f"{len(errors)} errors", flush=True)  # fmt: skip
                time.sleep(2)  # let the queue drain before the next rate
    print(
        f"\n{'templates':>10} {'batch max':>9} {'target rps':>10} {'achieved':>9} {'requests':>9} {'errors':>7} "
        f"{'503':>5} {'mean batch':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for batch_max, rate, lat, errors, wall, mean_batch in rows:
        ms = np.array(lat) * 1000
        shed = sum(e.startswith("503") for e in errors)
        print(
            f"{args.templates:>10,} {batch_max:>9} {rate:>10g} {len(lat) / wall:>9.1f} {len(lat):>9} "
            f"{len(errors):>7} {shed:>5} {mean_batch:>10.2f} {np.percentile(ms, 50):>8.1f} "
            f"{np.percentile(ms, 90):>8.1f} {np.percentile(ms, 99):>8.1f} {ms.max():>8.1f}"
        )
    for batch_max in args.batch_max:
        ok = [r for b, r, lat, errs, _, _ in rows if b == batch_max and not errs
              and np.percentile(np.array(lat) * 1000, 99) < 200]  # fmt: skip
        over = [r for b, r, lat, errs, _, _ in rows if b == batch_max and r not in ok]
        print(f"batch max {batch_max}: p99 < 200 ms with no errors up to {max(ok, default=0):g} rps; "
              f"not at {', '.join(f'{r:g}' for r in sorted(over)) or '-'} rps")  # fmt: skip
    errors = [e for row in rows for e in row[3]]
    for e in sorted(set(errors))[:5]:
        print("error:", e)


if __name__ == "__main__":
    main()
