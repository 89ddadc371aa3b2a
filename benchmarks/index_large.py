"""The 10M-template index configuration (IVF + product quantisation): memory per template, latency, recall@1.

Templates are streamed in chunks (never all in memory as float32): each synthetic person has
``--per-person`` templates around a random centre (cosine ~0.7 between a person's templates, like several
photos of one person). Queries are new samples of random persons. Exact search over every template is computed
chunk by chunk alongside, so recall@1 (the ivfpq index's best template / best person equals exact search's) is
measured against the truth, not estimated. The index is built by ``gallery.index.VectorIndex.trained_ivf``,
the code path the gallery uses for ``IndexConfig(kind="ivfpq")``.

Memory per template = PQ code (``--pq-m`` bytes) + the template id (8 bytes) in the inverted lists; the
coarse quantiser adds nlist x dim x 4 bytes in total. Measured from the serialised index and the process RSS.

Examples:
    python benchmarks/index_large.py --n 10000000               # the full size (~15 min on 2 cores)
    python benchmarks/index_large.py --n 200000 --nlist 256     # a quick look
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from gallery.index import IndexConfig, VectorIndex


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def chunk_data(c: int, chunk: int, dim: int, per: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Templates of chunk ``c`` (persons never span chunks) and the centres of its persons."""
    rng = np.random.default_rng(1000 + c)
    centres = unit(rng.standard_normal((chunk // per, dim), dtype=np.float32))
    t = np.repeat(centres, per, axis=0) + noise * rng.standard_normal(
        (chunk, dim), dtype=np.float32
    ) / np.sqrt(dim)
    return unit(t), centres


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--per-person", type=int, default=5)
    p.add_argument("--chunk", type=int, default=500_000)
    p.add_argument("--nlist", type=int, default=4096)
    p.add_argument("--pq-m", type=int, default=64)
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--noise", type=float, default=0.9, help="template noise (0.9 gives cosine ~0.6-0.7)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(describe())
    chunk = min(args.chunk, args.n)
    chunk -= chunk % args.per_person
    n_chunks = args.n // chunk
    n = n_chunks * chunk
    rng = np.random.default_rng(7)
    # queries: a new sample of a random person of each chunk (its id range is known)
    q_chunk = rng.integers(0, n_chunks, args.queries)
    q_person = rng.integers(0, chunk // args.per_person, args.queries)
    queries = np.zeros((args.queries, args.dim), np.float32)
    for c in np.unique(q_chunk):  # centres are the first draw of a chunk's generator: no templates needed
        centres = unit(
            np.random.default_rng(1000 + c).standard_normal(
                (chunk // args.per_person, args.dim), dtype=np.float32
            )
        )
        sel = np.flatnonzero(q_chunk == c)
        noise = np.random.default_rng(5000 + c).standard_normal((len(sel), args.dim), dtype=np.float32)
        queries[sel] = unit(centres[q_person[sel]] + args.noise * noise / np.sqrt(args.dim))
    best_sim = np.full(args.queries, -np.inf, np.float32)
    best_id = np.full(args.queries, -1, np.int64)
    rss0 = rss_mb()
    vi = VectorIndex(
        "body", "bench", args.dim, IndexConfig(kind="ivfpq", pq_m=args.pq_m, ivf_nlist=args.nlist)
    )
    t_train = t_add = 0.0
    index = None
    for c in tqdm(range(n_chunks), desc="build index + exact search", unit="chunk"):
        vecs, _ = chunk_data(c, chunk, args.dim, args.per_person, args.noise)
        ids = np.arange(c * chunk, (c + 1) * chunk, dtype=np.int64) + 1
        if index is None:
            t = time.perf_counter()
            index = vi.trained_ivf("ivfpq", vecs, n)
            t_train = time.perf_counter() - t
        t = time.perf_counter()
        index.add_with_ids(vecs, ids)
        t_add += time.perf_counter() - t
        sims = queries @ vecs.T  # the truth, chunk by chunk
        j = sims.argmax(1)
        s_best = sims[np.arange(len(j)), j]
        better = s_best > best_sim
        best_sim[better], best_id[better] = s_best[better], ids[j[better]]
        del vecs, sims
    vi.index, vi.kind = index, "ivfpq"
    index_bytes = len(faiss.serialize_index(index))
    rss = rss_mb()
    true_person = (best_id - 1) // args.per_person
    print(
        f"\n{n:,} templates, dim {args.dim}, IVF{args.nlist},PQ{args.pq_m}; train {t_train:.0f} s, add {t_add:.0f} s"
    )
    print(
        f"index size {index_bytes / 2**20:,.0f} MiB = {index_bytes / n:.1f} bytes/template "
        f"(codes {args.pq_m} + id 8; coarse quantiser {args.nlist * args.dim * 4 / 2**20:.1f} MiB); "
        f"process RSS {rss:,.0f} MiB (start {rss0:,.0f} MiB)"
    )
    print(
        f"10M projection: {index_bytes / n * 10_000_000 / 2**30:.2f} GiB "
        f"(flat float32 would be {10_000_000 * args.dim * 4 / 2**30:.1f} GiB)"
    )
    print(f"\n{'nprobe':>7} {'p50 ms':>8} {'p99 ms':>8} {'recall@1 template':>18} {'recall@1 person':>16}")
    for nprobe in args.nprobe:
        faiss.extract_index_ivf(index).nprobe = nprobe
        lat, got = [], []
        for q in queries:
            t = time.perf_counter()
            _, ids = vi.search(q[None], 1)
            lat.append(time.perf_counter() - t)
            got.append(int(ids[0, 0]))
        got = np.array(got)
        lat_ms = np.array(lat) * 1000
        print(
            f"{nprobe:>7} {np.percentile(lat_ms, 50):>8.2f} {np.percentile(lat_ms, 99):>8.2f} "
            f"{(got == best_id).mean():>18.3f} {((got - 1) // args.per_person == true_person).mean():>16.3f}"
        )


if __name__ == "__main__":
    main()
