"""Enroll throughput (templates/second) including the database commit, SQLite and PostgreSQL.

Each call is ``Gallery.enroll(person, embeddings=batch)``: one transaction, committed (SQLite with
synchronous=FULL), then added to the FAISS index.

Examples:
    python benchmarks/gallery_enroll.py
    python benchmarks/gallery_enroll.py --batch 100 --batches 50 --postgres postgresql://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from gallery import Gallery


def bench(url: str, batch: int, batches: int, dim: int) -> float:
    rng = np.random.default_rng(0)
    g = Gallery(url, index_dir=None)
    pid = g.create_person("bench")
    data = rng.standard_normal((batches, batch, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=2, keepdims=True)
    g.enroll(pid, embeddings=data[0][:1], modality="body", model_id="bench")  # create the index
    t = time.perf_counter()
    for b in data:
        g.enroll(pid, embeddings=b, modality="body", model_id="bench")
    rate = batch * batches / (time.perf_counter() - t)
    g.engine.dispose()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--templates", type=int, default=20000, help="templates per measurement")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument(
        "--postgres",
        default=os.environ.get("REID_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from sqlalchemy import create_engine, text

    rows = []
    for batch in args.batch:
        n = max(1, min(args.templates, 2000 if batch == 1 else args.templates) // batch)
        with tempfile.TemporaryDirectory() as d:
            rows.append(
                ("SQLite (WAL, synchronous=FULL)", batch, n * batch, bench(f"{d}/g.db", batch, n, args.dim))
            )
        name = f"reid_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            url = args.postgres.rsplit("/", 1)[0] + "/" + name
            rows.append(("PostgreSQL 127.0.0.1", batch, n * batch, bench(url, batch, n, args.dim)))
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(describe())
    print(f"Gallery.enroll, dim {args.dim}, one transaction + commit per call, then FAISS add")
    print(f"{'database':<32} {'batch':>6} {'templates':>10} {'templates/s':>12}")
    for db, batch, n, rate in rows:
        print(f"{db:<32} {batch:>6} {n:>10} {rate:12.0f}")


if __name__ == "__main__":
    main()
