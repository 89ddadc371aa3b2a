"""Identify latency (p50/p99) and recall@1 against exact search, at 10k / 100k / 1M templates of dimension 512.

The database is filled with random unit vectors (one person per 2 templates) by bulk insert, then a Gallery is
opened the normal way (index built from the database, or loaded from its snapshot on a re-run) and
``Gallery.identify`` is timed end to end: FAISS search, per-person aggregation and the person lookup in SQL.

Two query sets: "re-take" queries are noisy copies of stored templates (cosine ~0.7 to their source, like a new
photo of an enrolled person); "random" queries are fresh random vectors (no true match, the hardest case for an
approximate index). recall@1 = the approximate index's best person equals exact search's best person.

``--threads`` instead measures single-query identify at ``--threads-size`` templates (default 20k, flat index)
with the small-search setting ``IndexConfig.search_threads`` at 1 and at 0 (= all OpenMP threads), on an
otherwise idle process and with a second process spinning on one core (what a busy neighbour does to a server).
The rows alternate settings in rounds so that drifting load from elsewhere hits both alike; the load average
is printed because the machine may be shared.

Examples:
    python benchmarks/gallery_search.py --sizes 10000 100000
    python benchmarks/gallery_search.py --sizes 1000000 --workdir /tmp/gallery_bench   # about 2 GB per copy
    python benchmarks/gallery_search.py --threads --queries 500
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from gallery import Gallery, IndexConfig
from gallery.models import Person, Template

DIM = 512


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def populate(db: Path, n: int, seed: int = 0, model_id: str = "bench-512", dim: int = DIM) -> None:
    """``n`` random unit templates, two per new person, by bulk insert (the fill is not what is measured)."""
    from sqlalchemy import func, insert, select
    from tqdm import tqdm

    g = Gallery(str(db), index_dir=None)
    rng = np.random.default_rng(seed)
    chunk = 20_000
    with g.engine.begin() as conn:
        first = (conn.scalar(select(func.max(Person.id))) or 0) + 1
        conn.execute(
            insert(Person), [{"kind": "enrolled", "display_name": f"p{i}"} for i in range((n + 1) // 2)]
        )
    for s in tqdm(range(0, n, chunk), desc="random templates", unit="batch"):
        v = unit_rows(rng, min(chunk, n - s), dim)
        rows = [
            {
                "person_id": first + (s + i) // 2,
                "modality": "body",
                "model_id": model_id,
                "dim": dim,
                "vector": v[i].astype("<f4").tobytes(),
                "image_sha256": None,
            }
            for i in range(len(v))
        ]
        with g.engine.begin() as conn:
            conn.execute(insert(Template), rows)
    g.engine.dispose()


def run_size(n: int, workdir: Path, queries: int, cfg: IndexConfig) -> list[tuple]:
    db = workdir / f"g{n}.db"
    if not db.exists():
        t = time.perf_counter()
        populate(db, n)
        logging.info("populated %d templates in %.0f s", n, time.perf_counter() - t)
    t = time.perf_counter()
    g = Gallery(str(db), index_config=cfg)
    open_s = time.perf_counter() - t
    index = g.indexes[("body", "bench-512")]
    ids, vecs = index.export()
    exact = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    exact.add_with_ids(vecs, ids)
    rng = np.random.default_rng(1)
    pick = rng.choice(len(ids), queries, replace=False)
    noisy = vecs[pick] + 0.034 * rng.standard_normal((queries, DIM), dtype=np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    rows = []
    for name, qs in (("re-take", noisy), ("random", unit_rows(rng, queries))):
        g.identify(embedding=qs[0], modality="body", model_id="bench-512", k=5)  # warm-up
        lat, hits = [], 0
        _, ex = exact.search(qs, 1)
        for i, q in enumerate(qs):
            t = time.perf_counter()
            res = g.identify(embedding=q, modality="body", model_id="bench-512", k=5)
            lat.append((time.perf_counter() - t) * 1000)
            hits += res.matches[0].person_id == g.person_of[int(ex[i, 0])]
        lat = np.array(lat)
        rows.append(
            (n, index.kind, name, np.percentile(lat, 50), np.percentile(lat, 99), hits / len(qs), open_s)
        )
    del vecs, exact
    g.close()
    return rows


def run_threads(n: int, workdir: Path, queries: int, rounds: int = 3) -> None:
    """Single-query identify p50/p99 with 1 vs all OpenMP threads, without and with a busy second process."""
    db = workdir / f"g{n}.db"
    if not db.exists():
        populate(db, n)
    g = Gallery(str(db), index_config=IndexConfig(kind="flat"))
    index = g.indexes[("body", "bench-512")]
    all_threads = faiss.omp_get_max_threads()
    rng = np.random.default_rng(2)
    qs = unit_rows(rng, queries)
    print(describe() + f", faiss {faiss.__version__}, OpenMP max threads {all_threads}")
    print(
        f"Gallery.identify, one query per call, {n} templates (flat, dim {DIM}, SQLite), k=5; "
        f"{rounds} rounds x {queries} queries per row; busy = one other process spinning on a core"
    )
    print(f"{'busy':>5} {'search threads':>15} {'p50 ms':>8} {'p99 ms':>8} {'load avg 1m':>12}")
    settings = [(1, "1"), (0, f"all ({all_threads})")]
    for busy in (False, True):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            time.sleep(0.5)
            lat: dict[int, list[float]] = {t: [] for t, _ in settings}
            for _ in range(rounds):  # alternate the settings: load from elsewhere drifts over minutes
                for threads, _ in settings:
                    index.config.search_threads = threads
                    g.identify(embedding=qs[0], modality="body", model_id="bench-512", k=5)  # warm-up
                    for q in qs:
                        t = time.perf_counter()
                        g.identify(embedding=q, modality="body", model_id="bench-512", k=5)
                        lat[threads].append((time.perf_counter() - t) * 1000)
            load = os.getloadavg()[0]
            for threads, label in settings:
                a = np.array(lat[threads])
                print(
                    f"{'yes' if busy else 'no':>5} {label:>15} {np.percentile(a, 50):8.2f} "
                    f"{np.percentile(a, 99):8.2f} {load:12.2f}",
                    flush=True,
                )
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    g.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--workdir", default="/tmp/gallery_bench")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--threads", action="store_true", help="1 vs all OpenMP threads for single queries")
    ap.add_argument("--threads-size", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.threads:
        run_threads(args.threads_size, workdir, args.queries, args.rounds)
        return
    cfg = IndexConfig(hnsw_m=args.hnsw_m, ef_search=args.ef_search, ef_construction=args.ef_construction)
    print(describe() + f", faiss {faiss.__version__}")
    print(
        f"Gallery.identify end to end (k=5 persons, max aggregation, SQLite), dim {DIM}, {args.queries} queries; "
        f"HNSW M={args.hnsw_m} efSearch={args.ef_search} efConstruction={args.ef_construction}"
    )
    print(
        f"{'templates':>10} {'index':>6} {'queries':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@1':>9} {'open s':>8}"
    )
    for n in args.sizes:  # each size's rows are printed as soon as they are measured
        for row in run_size(n, workdir, args.queries, cfg):
            n_, kind, name, p50, p99, rec, open_s = row
            print(f"{n_:>10} {kind:>6} {name:>8} {p50:8.2f} {p99:8.2f} {rec:9.4f} {open_s:8.1f}", flush=True)


if __name__ == "__main__":
    main()
