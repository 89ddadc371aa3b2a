"""Which score separates known people from strangers? The shipped rule against cohort score normalisation and
a learned whitening, for a face model or a body checkpoint (issue 12's "cohort or per-person normalisation").

Rules, each scoring a probe against every enrolled person (one vector per person: a face person's centroid, a
body person's one gallery image):
- ``margin b``: the shipped rule family, ``best - b x runner-up`` (runner-up: the second person or the best of a
  cohort of one image per never-enrolled identity, whichever is higher); ``b = 0`` is the raw best score;
- ``s-norm k``: adaptive symmetric normalisation (Matejka et al., Interspeech 2017), the standard of speaker
  verification: ``(s - m_q) / d_q`` and ``(s - m_p) / d_p`` averaged, where ``m``/``d`` are the mean and spread
  of the ``k`` highest cosines of the probe (``q``) and of the person (``p``) to every image of the cohort
  identities; the best-scoring person is named;
- ``gallery-norm k``: the same with the gallery's own other persons as the cohort (what a store has without a
  shipped cohort);
- ``whitened + margin b``: within-class whitening (WCCN) fitted on the cohort identities' images, shrunk halfway
  to the identity, then the margin rule.

Choice, on the data the model's decision card is made from (faces: CelebA; bodies: the checkpoint's validation
identities, held out of training): ``--splits`` seeded splits of the identities in thirds (cohort; enrolled
with their first image, the others asked; strangers: every image of the last third). Named right = the right
person is best and its score passes the threshold that accepts ``--far`` of that split's strangers. That
threshold is set on each split's own strangers for every rule alike: this compares how well the rules separate,
not how well a threshold is calibrated (that is ``gallery_lfw_e2e.py`` / ``open_set_cuhk03.py``). "vs card"
is each rule's paired difference to the card's rule over the splits.

Reported only (test data, which chose nothing), every rule with its threshold set on the test strangers, so no
row is deployable; it shows whether what the choice data say holds on other data:
- faces: LFW as in ``gallery_lfw_e2e.py`` (persons with more than ``n`` photos enrolled with their first ``n``,
  the others asked, single-photo people the strangers), all of CelebA the cohort and the whitening's data;
- bodies: cuhk03-np test as in ``open_set_cuhk03.py`` (half the identities enrolled from one gallery image, their
  queries asked, the other half's queries strangers), all validation identities the cohort.

Examples:
    python benchmarks/score_norm.py --flip
    python benchmarks/score_norm.py --face-model insightface-w600k-mbf --flip --far 0.01 0.001
    python benchmarks/score_norm.py --checkpoint models/body/mobilenetv2_cuhk03.pt --far 0.01 0.05
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.lfw_verification import embed_all
from benchmarks.machine import describe
from reid.data import read_identity_folders, read_lfw
from reid.decision_card import flip_model_id, read_card
from reid.face import FACE_EMBEDDERS
from reid.metrics.open_set import threshold_at_far
from reid.metrics.open_set_decision import BETAS, cohort_best, open_set_scores

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
KS = (20, 100)  # top cohort scores an adaptive normalisation reads (the literature uses 10s to 100s)
SHRINK = 0.5  # how far the within-class covariance is pulled towards a multiple of the identity


def unit(x: np.ndarray) -> np.ndarray:
    """Rows to unit length in float64 (``reid.embedder.l2_normalize`` gives float32; the whitening's inverse
    square root and the tests' oracles want the precision)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def top_k_stats(sim: np.ndarray, k: int, skip_first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each row's ``k`` highest values (after its highest, with
    ``skip_first``: a person against the gallery holding itself)."""
    s = -np.sort(-sim, axis=1)
    top = s[:, 1 : k + 1] if skip_first else s[:, :k]
    return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-6)


def adaptive_snorm(
    sim: np.ndarray,
    probe_cohort: np.ndarray,
    person_cohort: np.ndarray,
    k: int,
    skip_person_first: bool = False,
) -> np.ndarray:
    """(probes, persons) S-norm scores from the raw ``sim`` and each side's cosines to the cohort."""
    mq, dq = top_k_stats(probe_cohort, k)
    mp, dp = top_k_stats(person_cohort, k, skip_person_first)
    return 0.5 * ((sim - mq[:, None]) / dq[:, None] + (sim - mp[None, :]) / dp[None, :])


def whitening(emb: np.ndarray, labels: np.ndarray, shrink: float = SHRINK) -> tuple[np.ndarray, np.ndarray]:
    """Within-class covariance normalisation: returns (mean, W) so that ``unit((x - mean) @ W)`` has the
    (shrunk) within-class covariance of the fitting data equal to the identity."""
    x = unit(np.asarray(emb, np.float64))
    labels = np.asarray(labels)
    ids, inv = np.unique(labels, return_inverse=True)
    means = np.zeros((len(ids), x.shape[1]))
    np.add.at(means, inv, x)
    means /= np.bincount(inv)[:, None]
    d = x - means[inv]
    sw = d.T @ d / len(x)
    sw = (1 - shrink) * sw + shrink * np.trace(sw) / len(sw) * np.eye(len(sw))
    w, v = np.linalg.eigh(sw)
    return x.mean(axis=0), v @ np.diag(w**-0.5) @ v.T


def scores(
    rule: tuple[str, float], persons, probes, cohort_one, cohort_all, whiten
) -> tuple[np.ndarray, np.ndarray]:
    """(best person, score) of every probe under ``rule``."""
    kind, p = rule
    if kind == "whitened":
        mean, w = whiten
        persons, probes, cohort_one = (unit((unit(x) - mean) @ w) for x in (persons, probes, cohort_one))
        kind = "margin"
    sim = probes @ persons.T
    if kind == "margin":
        s = open_set_scores(sim, p, cohort_best(probes, cohort_one))
        return s.best, s.normalised
    if kind == "s-norm":
        z = adaptive_snorm(sim, probes @ cohort_all.T, persons @ cohort_all.T, int(p))
    else:  # gallery-norm: the other enrolled persons are the cohort
        z = adaptive_snorm(sim, sim, persons @ persons.T, int(p), skip_person_first=True)
    return z.argmax(axis=1), z.max(axis=1)


def named_at(rule, far, persons, known, truth, strangers, cohort_one, cohort_all, whiten) -> float:
    best_k, s_k = scores(rule, persons, known, cohort_one, cohort_all, whiten)
    _, s_s = scores(rule, persons, strangers, cohort_one, cohort_all, whiten)
    t = threshold_at_far(s_s, far)
    return float(np.mean((best_k == truth) & (s_k >= t)))


def rules() -> list[tuple[str, float]]:
    return (
        [("margin", b) for b in BETAS]
        + [("s-norm", k) for k in KS]
        + [("gallery-norm", k) for k in KS]
        + [("whitened", b) for b in BETAS]
    )


def label(rule: tuple[str, float]) -> str:
    kind, p = rule
    if kind in ("margin", "whitened"):
        name = "raw (margin 0)" if p == 0 else f"margin {p:g}"
        return name if kind == "margin" else f"whitened + {name}"
    return f"{kind} {int(p)}"


def choice_split(emb: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """Thirds of the identities: cohort (all images), enrolled (first image; the others asked), strangers."""
    ids = np.random.default_rng(seed).permutation(np.unique(labels))
    third = len(ids) // 3
    coh, enr, strg = ids[:third], ids[third : 2 * third], ids[2 * third :]
    enrolled = firsts(labels, enr)
    known = np.setdiff1d(np.flatnonzero(np.isin(labels, enr)), enrolled)
    order = {pid: j for j, pid in enumerate(enr)}
    return dict(
        persons=emb[enrolled],
        known=emb[known],
        truth=np.array([order[labels[i]] for i in known]),
        strangers=emb[np.isin(labels, strg)],
        **as_cohort(emb, labels, coh),
    )


def firsts(labels: np.ndarray, ids) -> list[int]:
    """The first image of each of ``ids`` (what a gallery enrolls with one image, and a cohort holds)."""
    return [int(np.flatnonzero(labels == pid)[0]) for pid in ids]


def as_cohort(emb: np.ndarray, labels: np.ndarray, ids=None) -> dict:
    """Identities ``ids`` (default: all) as the cohort: one image each for the margin rule, every image for
    S-norm and the whitening's fit."""
    ids = np.unique(labels) if ids is None else ids
    mine = np.isin(labels, ids)
    return dict(
        cohort_one=emb[firsts(labels, ids)], cohort_all=emb[mine], whiten=whitening(emb[mine], labels[mine])
    )


def lfw_gallery(emb: np.ndarray, names: list[str], n: int) -> dict:
    by = defaultdict(list)
    for i, p in enumerate(names):
        by[p].append(i)
    enrolled = sorted(p for p, ix in by.items() if len(ix) > n)
    known = [i for p in enrolled for i in by[p][n:]]
    return dict(
        persons=unit(np.stack([emb[by[p][:n]].sum(axis=0) for p in enrolled])),  # a face person's centroid
        known=emb[known],
        truth=np.array([j for j, p in enumerate(enrolled) for _ in by[p][n:]]),
        strangers=emb[[ix[0] for ix in by.values() if len(ix) == 1]],
    )


def faces(args) -> tuple[str, np.ndarray, np.ndarray, dict[str, dict], tuple[str, float] | None]:
    """(what, CelebA embeddings, labels, LFW report sets, the card's rule)."""
    pick = 1 if args.flip else 0
    paths = read_lfw(args.lfw).image_paths()
    lfw_cache = Path(args.cache or f"/tmp/lfw_{args.face_model}_embeddings.npz")
    lfw = unit(embed_all(paths, lfw_cache, model=args.face_model)[pick].astype(np.float64))
    recs = read_identity_folders(args.celeba)
    celeba_cache = Path(args.celeba_cache or f"/tmp/celeba_{args.face_model}_embeddings.npz")
    emb = unit(
        embed_all([r.path for r in recs], celeba_cache, model=args.face_model)[pick].astype(np.float64)
    )
    labels = np.array([r.pid for r in recs])
    names = [Path(p).parent.name for p in paths]
    model_id = flip_model_id(FACE_EMBEDDERS.get(args.face_model).plain_model_id, args.flip)
    card = read_card(model_id)
    reports = {f"LFW {n} photo{'s' if n > 1 else ''}": lfw_gallery(lfw, names, n) for n in args.enroll}
    what = f"{model_id}; CelebA chose, LFW only reports"
    return what, emb, labels, reports, ("margin", float(card["beta"])) if card else None


def bodies(args) -> tuple[str, np.ndarray, np.ndarray, dict[str, dict], tuple[str, float] | None]:
    """(what, validation embeddings, labels, the cuhk03-np test report, the checkpoint's rule)."""
    from benchmarks.open_set_cuhk03 import protocol
    from reid.cli.calibrate import validation_records
    from reid.data import build_dataset
    from reid.decision_card import card_from_checkpoint_extra
    from reid.embedder import Embedder

    e = Embedder.from_checkpoint(args.checkpoint, device="cpu", flip=args.flip)
    vpaths, vlabels = validation_records(e.meta.extra["config"])
    emb = unit(np.asarray(e.embed(vpaths, progress="validation images"), np.float64))
    templates, known, strangers = protocol(build_dataset("cuhk03-np", args.data), args.seed)
    recs = list(templates.values()) + known + strangers
    vec = unit(np.asarray(e.embed([r.path for r in recs], progress="test images"), np.float64))
    t, k = len(templates), len(known)
    order = {pid: j for j, pid in enumerate(templates)}
    test = dict(
        persons=vec[:t],
        known=vec[t : t + k],
        truth=np.array([order[r.pid] for r in known]),
        strangers=vec[t + k :],
    )
    card = card_from_checkpoint_extra(e.meta.extra, args.flip)
    what = f"{e.model_id}; its validation identities chose, cuhk03-np test only reports"
    return (
        what,
        emb,
        np.asarray(vlabels),
        {"cuhk03-np test": test},
        ("margin", float(card["beta"])) if card else None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--face-model", default="dlib", help="dlib (default) or insightface-w600k-mbf")
    ap.add_argument("--checkpoint", default=None, help="a body checkpoint with validation identities instead")
    ap.add_argument(
        "--flip", action="store_true", help="flip-averaged embeddings (faces: the services' default)"
    )
    ap.add_argument("--far", type=float, nargs="+", default=[0.01], help="strangers accepted")
    ap.add_argument("--splits", type=int, default=20, help="seeded splits of the choice data")
    ap.add_argument("--enroll", type=int, nargs="+", default=[1, 3], help="LFW photos per enrolled person")
    ap.add_argument("--lfw", default=str(SHARED / "lfw"))
    ap.add_argument("--celeba", default=str(SHARED / "celeba-faces"))
    ap.add_argument("--data", default=str(SHARED / "cuhk03-np"), help="cuhk03-np (bodies)")
    ap.add_argument("--seed", type=int, default=0, help="the body test protocol's seed")
    ap.add_argument("--cache", default=None, help="default /tmp/lfw_<face model>_embeddings.npz")
    ap.add_argument("--celeba-cache", default=None, help="default /tmp/celeba_<face model>_embeddings.npz")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    what, emb, labels, reports, shipped = (bodies if args.checkpoint else faces)(args)
    splits = [choice_split(emb, labels, seed) for seed in range(args.splits)]
    cohort = as_cohort(emb, labels)

    print(describe())
    print(f"{what} ({'flip' if args.flip else 'plain'}); {len(np.unique(labels))} choice identities in "
          f"{args.splits} splits of thirds; the card's rule: {label(shipped) if shipped else 'none'}")  # fmt: skip
    head = f"{'rule':<26} {'FAR':>6} {'choice: named (sd)':>19} {'vs card (SE)':>16}"
    print(head + "".join(f" {name:>15}" for name in reports))
    for far in args.far:
        base = np.array([named_at(shipped, far, **s) for s in splits]) if shipped else None
        for rule in rules():
            got = base if rule == shipped else np.array([named_at(rule, far, **s) for s in splits])
            row = f"{label(rule):<26} {far:>6.2%} {got.mean():>10.2%} ({got.std():.2%})"
            if base is not None:
                d = got - base
                row += f" {d.mean():>+8.2%} ({d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0:.2%})"
            for report in reports.values():
                row += f" {named_at(rule, far, **report, **cohort):>15.2%}"
            print(row)
    print("named = right person first and its score passing the threshold that accepts the FAR of the strangers, "
          "set on each set's own strangers for every rule alike: a comparison of separation, not a deployable "
          "threshold")  # fmt: skip


if __name__ == "__main__":
    main()
