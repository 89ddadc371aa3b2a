"""End-to-end identification on LFW through the Gallery with the dlib face embedder.

- enroll: one image each of 1,000 people who have 2+ images (the first image, in name order);
- known queries: every other image of those 1,000 people;
- strangers: 1,000 people with a single image, never enrolled;
- threshold: calibrated (``Gallery.calibrate_threshold``, open-set) on the remaining people with 2+ images,
  disjoint from both, at the target false-accept rate.
Reports the identification rate (right person and accepted) and the false-accept rate (stranger accepted).

Embeddings come from benchmarks/lfw_verification.py's cache when present (same detector, alignment and model),
else they are computed here.

Examples:
    python benchmarks/gallery_lfw_e2e.py
    python benchmarks/gallery_lfw_e2e.py --far 0.01 --db postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from gallery import Gallery
from reid.data import read_lfw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", default=str(Path(__file__).resolve().parents[2] / "shared/data/lfw"))
    ap.add_argument("--cache", default="/tmp/lfw_dlib_embeddings.npz")
    ap.add_argument("--far", type=float, nargs="+", default=[0.01, 0.001])
    ap.add_argument("--enrolled", type=int, default=1000)
    ap.add_argument("--strangers", type=int, default=1000)
    ap.add_argument("--db", default=None, help="database URL (default: a temporary SQLite file)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    paths = read_lfw(args.lfw).image_paths()
    cache = Path(args.cache)
    if cache.exists():
        emb = np.load(cache)["plain"]
    else:
        from reid.face import DlibFaceEmbedder

        emb = DlibFaceEmbedder(on_no_face="center").embed(paths)
    by_person: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        by_person[Path(p).parent.name].append(i)
    multi = sorted(n for n, ix in by_person.items() if len(ix) >= 2)
    single = sorted(n for n, ix in by_person.items() if len(ix) == 1)
    enrolled, calib = multi[: args.enrolled], multi[args.enrolled :]
    strangers = single[: args.strangers]
    model_id = "dlib-resnet-v1-128"
    print(describe())
    print(
        f"LFW: {len(enrolled)} enrolled people (1 image each), "
        f"{sum(len(by_person[n]) - 1 for n in enrolled)} known queries, {len(strangers)} strangers; "
        f"calibration on {len(calib)} other people ({sum(len(by_person[n]) for n in calib)} images)"
    )
    print(
        f"{'target FAR':>10} {'threshold':>10} {'calib TAR':>10} {'ident. rate':>12} {'FAR':>8} {'rank-1':>8}"
    )
    with tempfile.TemporaryDirectory() as d:
        g = Gallery(args.db or f"{d}/lfw.db", index_dir=None)
        pid_of = {}
        for n in enrolled:
            i = by_person[n][0]
            pid_of[n] = g.enroll(
                embeddings=emb[i : i + 1],
                modality="face",
                model_id=model_id,
                display_name=n,
                sources=[paths[i]],
            ).person_id
        cal_idx = [i for n in calib for i in by_person[n]]
        cal_lab = [n for n in calib for _ in by_person[n]]
        for far in args.far:
            cal = g.calibrate_threshold("face", model_id, emb[cal_idx], cal_lab, target_far=far)
            hits = top1 = total = 0
            for n in enrolled:
                for i in by_person[n][1:]:
                    r = g.identify(embedding=emb[i], modality="face", model_id=model_id, k=1)
                    right = r.matches[0].person_id == pid_of[n]
                    top1 += right
                    hits += right and r.known
                    total += 1
            false_accepts = sum(
                bool(
                    g.identify(embedding=emb[by_person[n][0]], modality="face", model_id=model_id, k=1).known
                )
                for n in strangers
            )
            print(
                f"{far:>10g} {cal.threshold:10.4f} {cal.measured_tar:10.2%} {hits / total:12.2%} "
                f"{false_accepts / len(strangers):8.2%} {top1 / total:8.2%}"
            )
        g.close()


if __name__ == "__main__":
    main()
