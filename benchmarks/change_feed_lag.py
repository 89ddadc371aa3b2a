"""Change-feed lag between gallery processes on PostgreSQL: a writer process enrolls at a steady rate, this
process follows the feed (LISTEN/NOTIFY + catch-up) and records when each template becomes searchable here.

lag = time the follower applied the template - time the writer's enroll returned (both on this machine's clock).

Examples:
    python benchmarks/change_feed_lag.py --rate 200 --duration 20
    python benchmarks/change_feed_lag.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/test --rate 50
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from gallery import Gallery


def writer(db: str, rate: float, duration: float, out: str) -> None:
    rng = np.random.default_rng(1)
    acks = []
    with Gallery(db) as g:
        n = int(rate * duration)
        t0 = time.perf_counter()
        for i in range(n):
            wait = t0 + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            v = rng.standard_normal((1, 128), dtype=np.float32)
            v /= np.linalg.norm(v)
            r = g.enroll(embeddings=v, modality="body", model_id="lag-bench")
            acks.append((r.template_ids[0], time.time()))
        achieved = n / (time.perf_counter() - t0)
    Path(out).write_text(json.dumps({"acks": acks, "achieved": achieved}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--pg",
        default=os.environ.get("REID_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    )
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--poll", type=float, default=0.5, help="follower catch-up poll interval (s)")
    p.add_argument("--writer", nargs=2, metavar=("DB", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.writer:
        writer(args.writer[0], args.rate, args.duration, args.writer[1])
        return
    print(describe())
    from sqlalchemy import create_engine, text

    name = f"reid_lag_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    db = args.pg.rsplit("/", 1)[0] + "/" + name
    out = f"/tmp/{name}.json"
    try:
        follower = Gallery(db)
        arrived: dict[int, float] = {}
        apply = follower.cache.apply

        def recording(change, rows) -> None:
            apply(change, rows)
            now = time.time()
            for t in change.template_ids:
                arrived.setdefault(int(t), now)

        follower.cache.apply = recording  # measure when each template becomes searchable here
        feed = follower.follow(args.poll)
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--rate",
                str(args.rate),
                "--duration",
                str(args.duration),
                "--writer",
                db,
                out,
            ],
            check=True,
        )
        time.sleep(max(2.0, 2 * args.poll))
        result = json.loads(Path(out).read_text())
        follower.close()
        lags = np.array([arrived[t] - at for t, at in result["acks"] if t in arrived]) * 1000
        missing = sum(t not in arrived for t, _ in result["acks"])
        print(
            f"\n{'target/s':>9} {'achieved/s':>10} {'enrolls':>8} {'missing':>8} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'max ms':>8} {'wakeups':>8}"
        )
        print(
            f"{args.rate:>9.0f} {result['achieved']:>10.1f} {len(result['acks']):>8} {missing:>8} "
            f"{np.percentile(lags, 50):>8.1f} {np.percentile(lags, 99):>8.1f} {lags.max():>8.1f} {feed.wakeups:>8}"
        )
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        Path(out).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
