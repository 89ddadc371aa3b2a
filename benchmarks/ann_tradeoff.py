"""FAISS alone: exact vs IVF-Flat (nprobe sweep) on random unit vectors with "re-take" queries — the speed /
recall trade-off behind the gallery's index choice at large sizes.

Examples:
    python benchmarks/ann_tradeoff.py                       # 1M x 512, nlist 1024
    python benchmarks/ann_tradeoff.py --n 200000 --nlist 512 --nprobe 8 16 32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pick = rng.choice(args.n, args.queries, replace=False)
    q = x[pick] + 0.034 * rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(x)

    def timed(index) -> tuple[float, float, np.ndarray]:
        lat, got = [], []
        for i in range(len(q)):
            t = time.perf_counter()
            _, ids = index.search(q[i : i + 1], 1)
            lat.append((time.perf_counter() - t) * 1000)
            got.append(ids[0, 0])
        return float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), np.array(got)

    p50, p99, truth = timed(exact)
    rows = [("exact IndexFlatIP", 0.0, p50, p99, 1.0)]
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(args.dim), args.dim, args.nlist, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    ivf.train(x[rng.choice(args.n, min(args.n, 40 * args.nlist), replace=False)])
    ivf.add(x)
    build = time.perf_counter() - t
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        p50, p99, got = timed(ivf)
        rows.append(
            (f"IVF-Flat nlist {args.nlist} nprobe {nprobe}", build, p50, p99, float((got == truth).mean()))
        )
    print(describe() + f", faiss {faiss.__version__}, faiss threads {faiss.omp_get_max_threads()}")
    print(f"{args.n} random unit vectors x {args.dim}; {args.queries} queries = noisy copies (cos ~0.79)")
    print(f"{'index':<34} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@1':>9}")
    for name, b, p50, p99, rec in rows:
        print(f"{name:<34} {b:8.1f} {p50:8.2f} {p99:8.2f} {rec:9.4f}")


if __name__ == "__main__":
    main()
