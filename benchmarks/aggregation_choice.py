"""How a person's several templates should score a query: ``centroid``, ``max`` or ``mean`` (``gallery.cache``),
measured on validation identities only (they chose ``DEFAULT_AGGREGATION``; LFW and cuhk03-np's test split
take no part).

Protocol (simpler than the gallery's decision on purpose: it compares aggregations, every other thing equal):
the identities are split in two seeded halves. Each person of one half with more than ``n`` photos
is enrolled with their first ``n``; their other photos are asked (known), and every photo of the other half is
asked as a stranger; then the halves swap and the counts are pooled. A query's decision is ``best - beta x
second-best`` person score (beta 0: the raw best score), its threshold the target share of the strangers'
values (set on those validation strangers), and a known photo counts as named when its own person ranks
first and clears it. Every enrolled person has ``n`` templates and is scored exactly (the gallery ranks the
persons of its best templates only), and the margin rule has no cohort (the model cards' has one).

Data:
- ``--faces``: CelebA's 297 identities (``../shared/data/celeba-faces``), dlib's embeddings (flip-averaged and
  plain; cached in ``--cache``, the format of ``benchmarks/lfw_verification.py``).
- ``--body CHECKPOINT``: the checkpoint's own held-out validation identities (``data.val_identities`` of its
  training config, labeled and detected boxes).

Examples:
    python benchmarks/aggregation_choice.py --faces
    python benchmarks/aggregation_choice.py --body models/body/mobilenetv2_cuhk03.pt --enroll 1 2 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import describe
from reid.metrics.aggregation import AGGREGATIONS, aggregate, person_scores
from reid.metrics.open_set import threshold_at_far

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
BETAS = (0.0, 0.25, 0.5, 0.75)


def study(
    emb: np.ndarray,
    labels: np.ndarray,
    n_enroll: int,
    far: float,
    seed: int = 0,
    enroll_emb: np.ndarray | None = None,
) -> dict:
    """The protocol above at every aggregation and beta. ``enroll_emb`` (default ``emb``): the vectors the
    enrolled photos are stored as, when enrolment embeds differently from a query (row for row with ``emb``)."""
    enroll_emb = emb if enroll_emb is None else enroll_emb
    ids = np.unique(labels)
    ids = ids[np.random.default_rng(seed).permutation(len(ids))]
    halves = (ids[: len(ids) // 2], ids[len(ids) // 2 :])
    out = {}
    for how in AGGREGATIONS:
        per_beta = {b: ([], [], []) for b in BETAS}
        for enrolled, strangers in (halves, halves[::-1]):
            enrolled = [p for p in enrolled if (labels == p).sum() > n_enroll]
            templates, owner, asked, truth = [], [], [], []
            for j, p in enumerate(enrolled):
                ix = np.flatnonzero(labels == p)
                templates.append(enroll_emb[ix[:n_enroll]])
                owner += [j] * n_enroll
                asked.append(emb[ix[n_enroll:]])
                truth += [j] * (len(ix) - n_enroll)
            templates, owner = np.concatenate(templates), np.asarray(owner)
            known = person_scores(np.concatenate(asked), templates, owner, how)
            strange = person_scores(emb[np.isin(labels, strangers)], templates, owner, how)
            # the vectorised scores equal the gallery's per-person aggregation (spot check, first person and query)
            check = aggregate(templates[owner == 0], np.concatenate(asked)[0], how)
            assert abs(check - known[0, 0]) < 1e-4, (how, check, known[0, 0])
            for b in BETAS:
                kv, ok, sv = per_beta[b]
                top = -np.sort(-known, axis=1)[:, :2]
                kv.append(top[:, 0] - b * top[:, 1])
                ok.append(known.argmax(axis=1) == np.asarray(truth))
                top = -np.sort(-strange, axis=1)[:, :2]
                sv.append(top[:, 0] - b * top[:, 1])
        for b, (kv, ok, sv) in per_beta.items():
            kv, ok, sv = (np.concatenate(x) for x in (kv, ok, sv))
            thr = threshold_at_far(sv, far)
            out[(how, b)] = (
                float((ok & (kv >= thr)).mean()),
                float((sv >= thr).mean()),
                float(ok.mean()),
                len(kv),
                len(sv),
            )
    return out


def table(title: str, emb: np.ndarray, labels: np.ndarray, enrolls: list[int], far: float) -> None:
    print(
        f"\n{title}: {len(labels)} images of {len(np.unique(labels))} identities, target {far:.2%} strangers"
    )
    print(
        f"{'enrolled':>8} {'aggregation':>11} {'beta':>5} {'named right':>12} {'strangers':>10} {'rank-1':>8} {'known q.':>8} {'strangers q.':>12}"
    )
    for n in enrolls:
        res = study(emb, labels, n, far)
        best = {
            how: max(b for b in BETAS if res[(how, b)][0] == max(res[(how, x)][0] for x in BETAS))
            for how in AGGREGATIONS
        }
        for (how, b), (named, acc, rank1, nk, ns) in sorted(res.items()):
            mark = " *" if b == best[how] else ""
            print(
                f"{n:>8} {how:>11} {b:>5.2f} {named:>11.2%}{mark:2s}{acc:>9.2%} {rank1:>8.2%} {nk:>8} {ns:>12}"
            )
    print("(* the best beta of each aggregation)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", action="store_true", help="dlib on CelebA's identities")
    ap.add_argument("--body", help="a body checkpoint: its held-out validation identities")
    ap.add_argument("--enroll", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--far", type=float, default=0.01)
    ap.add_argument("--cache", default="/tmp/celeba_dlib_embeddings.npz")
    args = ap.parse_args(argv)
    if not args.faces and not args.body:
        ap.error("give --faces, --body CHECKPOINT, or both")
    print(describe())
    if args.faces:
        from benchmarks.lfw_verification import embed_all
        from reid.data import read_identity_folders

        recs = read_identity_folders(SHARED / "celeba-faces")
        labels = np.asarray([r.pid for r in recs])
        plain, flip, *_ = embed_all([r.path for r in recs], Path(args.cache))
        table("faces, dlib-resnet-v1-128-flip, CelebA", flip, labels, args.enroll, args.far)
        table("faces, dlib-resnet-v1-128 (plain), CelebA", plain, labels, args.enroll, args.far)
    if args.body:
        from reid.cli.calibrate import validation_records
        from reid.embedder import Embedder

        e = Embedder.from_checkpoint(args.body)
        paths, labels = validation_records(e.meta.extra["config"])
        emb = e.embed(paths, progress="embedding validation identities")
        table(
            f"bodies, {e.model_id}, its validation identities", emb, np.asarray(labels), args.enroll, args.far
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
