"""Time CMC/mAP/mINP evaluation on a random Market-1501-sized problem (3,368 queries x 15,913 gallery).

Examples:
    python benchmarks/eval_speed.py                     # ours, 3 repeats
    python benchmarks/eval_speed.py --torchreid-python  # also torchreid's Python evaluator (about 80 s)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from reid.metrics import evaluate_rank


def torchreid_rank():
    spec = importlib.util.find_spec("torchreid")
    if spec is None:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "reid/metrics/rank.py"
    s = importlib.util.spec_from_file_location("torchreid_rank", path)
    mod = importlib.util.module_from_spec(s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=3368)
    ap.add_argument("--gallery", type=int, default=15913)
    ap.add_argument("--ids", type=int, default=751)
    ap.add_argument("--cameras", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torchreid-python", action="store_true", help="also time torchreid's Python evaluator")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    d = rng.random((args.queries, args.gallery), dtype=np.float32)
    qp, gp = rng.integers(0, args.ids, args.queries), rng.integers(0, args.ids, args.gallery)
    qc, gc = rng.integers(0, args.cameras, args.queries), rng.integers(0, args.cameras, args.gallery)

    rows = []
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        res = evaluate_rank(d, qp, gp, qc, gc, max_rank=50)
        times.append(time.perf_counter() - t)
    rows.append(("reid.metrics.evaluate_rank", min(times), np.median(times), res.mAP, res.rank1))
    tr = torchreid_rank()
    if args.torchreid_python and tr is not None:
        t = time.perf_counter()
        cmc, mAP = tr.evaluate_rank(d, qp, gp, qc, gc, max_rank=50, use_cython=False)
        dt = time.perf_counter() - t
        rows.append(("torchreid evaluate_rank (Python)", dt, dt, mAP, cmc[0]))

    print(describe())
    print(
        f"problem: {args.queries} x {args.gallery}, {args.ids} ids, {args.cameras} cameras, random distances"
    )
    print(f"{'evaluator':<36} {'best s':>8} {'median s':>9} {'mAP':>9} {'rank-1':>8}")
    for name, best, med, mAP, r1 in rows:
        print(f"{name:<36} {best:8.2f} {med:9.2f} {mAP:9.5f} {r1:8.4f}")
    print("reference (issue): torchreid Cython 2.9 s, torchreid Python 77 s on this CPU")


if __name__ == "__main__":
    main()
