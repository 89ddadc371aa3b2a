"""Print the validation curve (metric against training minutes) of a training run from its metrics.csv.

Examples:
    python benchmarks/train_curve.py runs/cuhk03_light/metrics.csv
    python benchmarks/train_curve.py runs/face_arcface/metrics.csv --metrics accuracy auc
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--metrics", nargs="+", default=["rank1", "mAP", "mINP"])
    args = ap.parse_args()
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    print(describe())
    print(f"{'epoch':>5} {'train min':>9} " + " ".join(f"{m:>8}" for m in args.metrics) + f" {'loss':>8}")
    for r in rows:
        vals = [r.get(f"eval/{m}", "") for m in args.metrics]
        if not any(vals):
            continue
        shown = " ".join(f"{float(v):8.2%}" if v else f"{'':>8}" for v in vals)
        print(
            f"{int(r['epoch']):>5} {float(r['minutes']):9.1f} {shown} {float(r.get('loss/total', 'nan')):8.3f}"
        )


if __name__ == "__main__":
    main()
