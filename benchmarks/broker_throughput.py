"""Sightings per second through NATS JetStream: camera-worker publishes (acked by the broker) and the
matcher's consume -> identify-or-enroll -> idempotent sighting -> ack loop, on a fresh stream and gallery.

Events are synthetic track segments (random 256-d embeddings, ``--per-track`` segments per track) so the
broker and the matcher are measured, not the detector or the body model.

Examples:
    python benchmarks/broker_throughput.py --events 3000
    python benchmarks/broker_throughput.py --db postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from gallery import Gallery
from services.broker import NatsPublisher, TrackEvent, consume
from services.matcher import Matcher


def events(n: int, per_track: int) -> list[TrackEvent]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        track, seg = divmod(i, per_track)
        v = rng.standard_normal(256).astype(np.float32)
        out.append(
            TrackEvent(
                f"cam{track % 4}:{track}:{seg}",
                f"cam{track % 4}",
                track,
                seg,
                0,
                seg,
                seg + 1,
                [0, 0, 10, 10],
                "body",
                "bench",
                TrackEvent.encode_vector(v / np.linalg.norm(v)),
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nats", default="nats://127.0.0.1:4222")
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--per-track", type=int, default=5)
    p.add_argument("--db", default=None, help="gallery URL (default: a new SQLite file in /tmp)")
    args = p.parse_args()
    print(describe())
    tag = uuid.uuid4().hex[:8]
    stream, prefix = f"BENCH{tag.upper()}", f"bench{tag}"
    evs = events(args.events, args.per_track)

    async def publish() -> float:
        pub = await NatsPublisher(args.nats, stream, prefix).connect()
        t = time.perf_counter()
        await asyncio.gather(*(pub.publish(e) for e in evs))
        dt = time.perf_counter() - t
        await pub.close()
        return dt

    pub_s = asyncio.run(publish())
    db = args.db or f"/tmp/broker_bench_{tag}.db"
    with Gallery(db) as g:
        m = Matcher(g, threshold=0.8)
        t = time.perf_counter()
        n = asyncio.run(
            consume(args.nats, m.handle, durable="bench", idle_exit=2.0, stream=stream, prefix=prefix)
        )
        match_s = time.perf_counter() - t - 2.0  # minus the idle wait that ends the run
        stored = len(g.sightings(limit=10 * args.events))

    async def drop() -> None:
        import nats

        nc = await nats.connect(args.nats)
        await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(drop())
    print(
        f"\ngallery: {'PostgreSQL' if '://' in db else 'SQLite'}; {args.events} events, "
        f"{args.events // args.per_track} tracks"
    )
    print(f"{'stage':<34} {'events':>7} {'seconds':>8} {'per second':>11}")
    print(f"{'publish (JetStream acked)':<34} {args.events:>7} {pub_s:>8.2f} {args.events / pub_s:>11.0f}")
    print(f"{'match + sighting + ack':<34} {n:>7} {match_s:>8.2f} {n / match_s:>11.0f}")
    print(f"sightings stored: {stored} (expected {args.events})")


if __name__ == "__main__":
    main()
