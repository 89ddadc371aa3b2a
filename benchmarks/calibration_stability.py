"""How much a decision's threshold depends on how the validation identities are split, on validation data only.

A model card's raw threshold is the score that ``--far`` of validation strangers reach against a simulated
gallery. Two simulations of the same identities are compared:

- ``halves``: the identities split in two seeded halves, one enrolled (one image each, the first) and the other
  asked as strangers, then swapped and pooled (how cards were made until 2026-11-30); one row per seed;
- ``leave one out``: every identity enrolled, every identity's images asked against the others
  (``reid.metrics.open_set_decision.calibrate_decision``, how cards are made now); no seed.

Both measure the threshold at their own gallery size (the halves: half the identities; leave one out: all but
one), so they differ by design too; what the halves rows show is the spread that only the split causes. The
identity pairs whose stranger scores reach the leave-one-out threshold are listed: with few validation
identities, one look-alike pair can set it.

Data: ``--body CHECKPOINT``: the identities its training config held out (labeled and detected boxes);
``--faces``: CelebA's 297 identities with dlib's flip-averaged embeddings (cache of
``benchmarks/lfw_verification.py``). No test split takes part.

Examples:
    python benchmarks/calibration_stability.py --body models/body/mobilenetv2_cuhk03.pt
    python benchmarks/calibration_stability.py --faces --far 0.01 --seeds 10
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from reid.metrics.open_set import threshold_at_far
from reid.metrics.open_set_decision import calibrate_decision

SHARED = Path(__file__).resolve().parents[2] / "shared/data"


def halves_threshold(emb: np.ndarray, labels: np.ndarray, far: float, seed: int) -> tuple[float, int]:
    """The raw threshold of the two-halves simulation (one template each), and the fewest persons a stranger saw."""
    ids = np.unique(labels)
    ids = ids[np.random.default_rng(seed).permutation(len(ids))]
    halves = (ids[: len(ids) // 2], ids[len(ids) // 2 :])
    best, persons = [], len(labels)
    for enrolled, strangers in (halves, halves[::-1]):
        enrolled = [p for p in enrolled if (labels == p).sum() > 1]
        persons = min(persons, len(enrolled))
        t = np.array([np.flatnonzero(labels == p)[0] for p in enrolled])
        best.append((emb[np.isin(labels, strangers)] @ emb[t].T).max(axis=1))
    return threshold_at_far(np.concatenate(best), far), persons


def pairs_at(emb: np.ndarray, labels: np.ndarray, threshold: float) -> Counter:
    """(stranger identity, enrolled identity) pairs whose best score reaches ``threshold``, leaving one out."""
    ids = np.array(sorted(p for p in np.unique(labels) if (labels == p).sum() > 1))
    t = np.array([np.flatnonzero(labels == p)[0] for p in ids])
    sim = emb @ emb[t].T
    sim[labels[:, None] == ids[None, :]] = -np.inf
    top = sim.argmax(axis=1)
    hit = sim[np.arange(len(sim)), top] >= threshold
    return Counter((labels[i], ids[top[i]]) for i in np.flatnonzero(hit))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--body", help="a body checkpoint trained here with held-out validation identities")
    src.add_argument("--faces", action="store_true", help="CelebA with dlib's flip-averaged embeddings")
    ap.add_argument("--far", type=float, nargs="+", default=[0.01, 0.05])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--celeba", default=str(SHARED / "celeba-faces"))
    ap.add_argument("--cache", default="/tmp/celeba_dlib_embeddings.npz")
    args = ap.parse_args()
    if args.body:
        from reid.cli.calibrate import validation_records
        from reid.embedder import Embedder

        e = Embedder.from_checkpoint(args.body, device="cpu")
        paths, labels = validation_records(e.meta.extra["config"])
        emb, name = e.embed(paths, progress="validation images"), e.model_id
    else:
        from benchmarks.lfw_verification import embed_all
        from reid.data import read_identity_folders

        recs = read_identity_folders(args.celeba)
        paths, labels = [r.path for r in recs], [r.pid for r in recs]
        emb, name = embed_all(paths, Path(args.cache))[1], "dlib-resnet-v1-128-flip"
    emb, labels = np.asarray(emb, np.float32), np.asarray(labels)
    print(describe())
    print(f"model {name}: {len(np.unique(labels))} validation identities, {len(labels)} images; raw rule")
    for far in args.far:
        loo = calibrate_decision(emb, labels, far, 1, None, betas=(0.0,))
        rows = [halves_threshold(emb, labels, far, s) for s in range(args.seeds)]
        thr = np.array([r[0] for r in rows])
        print(f"\ntarget {far:g}: threshold at the simulated gallery's size")
        print(f"{'simulation':<16} {'persons':>7} {'seed':>5} {'threshold':>9}")
        for s, (t, n) in enumerate(rows):
            print(f"{'halves':<16} {n:>7} {s:>5} {t:>9.4f}")
        print(f"{'halves':<16} {rows[0][1]:>7} {'all':>5} min {thr.min():.4f} median {np.median(thr):.4f} "
              f"max {thr.max():.4f}")  # fmt: skip
        print(f"{'leave one out':<16} {loo.gallery_size:>7} {'-':>5} {loo.threshold:>9.4f}")
        pairs = pairs_at(emb, labels, loo.threshold)
        hits = sum(pairs.values())
        print(
            f"stranger images reaching it: {hits} of {loo.n_strangers}; by (stranger, enrolled) identity pair:"
        )
        for (a, b), k in pairs.most_common(6):
            print(f"  {a} -> {b}: {k}")


if __name__ == "__main__":
    main()
