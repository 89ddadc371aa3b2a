"""Open-set body identification on cuhk03-np test through the Gallery: named right, and strangers accepted.

Protocol (issue 12): half the test identities (seeded) are enrolled from one gallery image each (seeded); their
query images are asked; the other half's query images are strangers. Every identify goes through a real
``Gallery`` (SQLite + FAISS) and its decision path. Decisions compared, each at each target FAR:

- ``card``: the decision ``reid-calibrate`` makes on the checkpoint's validation identities (held out of
  training), same code and seed (at the card's own FAR this is the decision shipped in the checkpoint): the rule
  validation chose (raw, or best - beta x runner-up), and for the raw rule the threshold for this gallery's size;
- ``raw at val. size``: the raw threshold calibrated on the same validation galleries, applied as it is (what a
  size-blind calibration gives: validation galleries hold a few dozen persons, this one hundreds);
- ``raw (test strangers)``: threshold set on these test strangers themselves: not deployable (test data choosing),
  shown as the best the raw score could do and as the issue's baseline protocol.
The test split only reports. ``--compare`` adds checkpoints without validation identities (raw, strangers-set).

Examples:
    python benchmarks/open_set_cuhk03.py --checkpoint models/body/mobilenetv2_cuhk03.pt
    python benchmarks/open_set_cuhk03.py --checkpoint models/body/mobilenetv2_cuhk03.pt --flip
    python benchmarks/open_set_cuhk03.py --checkpoint runs/cpu_val_mobilenetv2/best.pt --compare old.pt --far 0.01 0.05
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from benchmarks.outcome import HEADER, Outcome, ask
from gallery import Gallery
from reid.cli.calibrate import validation_records
from reid.data import build_dataset
from reid.embedder import Embedder
from reid.metrics.open_set import threshold_at_far
from reid.metrics.open_set_decision import calibrate_with_cohort

SHARED = Path(__file__).resolve().parents[2] / "shared/data"


def protocol(ds, seed: int):
    """(enrolled gallery records by pid, known query records, stranger query records)."""
    test_ids = sorted({r.pid for r in ds.query})
    rng = random.Random(seed)
    enrolled = set(rng.sample(test_ids, len(test_ids) // 2))
    by_pid = defaultdict(list)
    for r in ds.gallery:
        by_pid[r.pid].append(r)
    templates = {pid: rng.choice(by_pid[pid]) for pid in sorted(enrolled)}
    known = [r for r in ds.query if r.pid in enrolled]
    strangers = [r for r in ds.query if r.pid not in enrolled]
    return templates, known, strangers


def run(g: Gallery, model_id: str, vec: dict, pid_of: dict, known, strangers, threshold=None) -> Outcome:
    """Every known query and stranger query through the gallery's decision (a stranger's two queries alike)."""
    asked = [(vec[r.path], pid_of[r.pid]) for r in known]
    return ask(g, "body", model_id, asked, [(vec[r.path], r.pid) for r in strangers], threshold)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "cuhk03-np"))
    ap.add_argument("--checkpoint", nargs="+", required=True, help="checkpoints with validation identities")
    ap.add_argument(
        "--compare", nargs="*", default=[], help="checkpoints without (strangers-set threshold only)"
    )
    ap.add_argument("--far", type=float, nargs="+", default=[0.01, 0.05])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flip", action="store_true", help="flip-averaged embeddings (model_id <id>-flip)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ds = build_dataset("cuhk03-np", args.data)
    templates, known, strangers = protocol(ds, args.seed)
    print(describe())
    print(f"cuhk03-np test: {len(templates)} identities enrolled (1 gallery image each), {len(known)} known "
          f"queries, {len(strangers)} stranger queries (seed {args.seed})")  # fmt: skip
    print(f"{'model':<32} {'rule':<22} {'target FAR':>10} {'beta':>5} {'threshold':>9} {HEADER}")
    for path in args.checkpoint + args.compare:
        e = Embedder.from_checkpoint(path, device="cpu", flip=args.flip)
        recs = list(templates.values()) + known + strangers
        vec = dict(zip([r.path for r in recs], e.embed([r.path for r in recs], progress="test images")))
        val = None
        if path in args.checkpoint:
            vpaths, vlabels = validation_records(e.meta.extra["config"])
            val = (e.embed(vpaths, progress="validation images"), np.asarray(vlabels))
        with tempfile.TemporaryDirectory() as d:
            g = Gallery(f"{d}/g.db", index_dir=None)
            pid_of = {
                pid: g.enroll(embeddings=vec[r.path][None], modality="body", model_id=e.model_id).person_id
                for pid, r in templates.items()
            }
            raw_strangers = np.array(
                [
                    g.identify(embedding=vec[r.path], modality="body", model_id=e.model_id, k=1).best.score
                    for r in strangers
                ]
            )
            for far in args.far:
                rows = []
                if val is not None:
                    cal, cohort = calibrate_with_cohort(val[0], val[1], far)  # as reid-calibrate
                    g.set_threshold("body", e.model_id, cal.threshold, rule=cal.rule, beta=cal.beta, cohort=cohort,
                                    by_size=cal.by_size)  # fmt: skip
                    thr = g.decision_for("body", e.model_id).threshold_at(len(templates))
                    rows.append(
                        (f"card: {cal.rule}" + (" by size" if cal.by_size else ""), cal.beta, thr, None)
                    )
                    raw, _ = calibrate_with_cohort(val[0], val[1], far, betas=(0.0,))
                    if cal.rule != "raw":  # the raw rule's size table, read here, beside the card's margin
                        g.set_threshold("body", e.model_id, raw.threshold, rule="raw", by_size=raw.by_size)
                        at = g.decision_for("body", e.model_id).threshold_at(len(templates))
                        rows.append(("raw by size", 0.0, at, at))
                        # the card decides again
                        g.set_threshold("body", e.model_id, cal.threshold, rule=cal.rule, beta=cal.beta,
                                        cohort=cohort, by_size=cal.by_size)  # fmt: skip
                    rows.append((f"raw at val. size {raw.gallery_size}", 0.0, raw.threshold, raw.threshold))
                t = threshold_at_far(raw_strangers, far)
                rows.append(("raw (test strangers)", 0.0, t, t))
                for rule, beta, thr, explicit in rows:
                    out = run(g, e.model_id, vec, pid_of, known, strangers, explicit)
                    print(f"{e.model_id:<32} {rule:<22} {far:>10g} {beta:>5.2f} {thr:>9.4f} {out.columns()}")
            g.close()


if __name__ == "__main__":
    main()
