"""reid.metrics against oracles: torchreid (test extra), scikit-learn, and slow references from the definitions."""

from __future__ import annotations

import importlib.util
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from reid.metrics import (
    EvaluationError,
    compute_distance_matrix,
    evaluate_rank,
    k_reciprocal_rerank,
    kfold_verification,
    open_set_identification,
    query_expansion,
    roc_auc,
    tar_at_far,
    threshold_at_far,
)
from tests.conftest import missing


def _torchreid_module(relative: str, name: str):
    """Load one torchreid source file without importing the package (its __init__ pulls in training code)."""
    spec = importlib.util.find_spec("torchreid")
    if spec is None:
        missing("torchreid", "the rank-evaluation oracle is a test extra (pip install -e '.[test]')")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    s = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Cython evaluation is unavailable": the Python path is the oracle
        s.loader.exec_module(mod)
    return mod


def slow_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Straight from the Market-1501 protocol definition, one query at a time."""
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        order = sorted(range(distmat.shape[1]), key=lambda j: (distmat[i, j], j))
        ranked = [j for j in order if not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
        rel = [g_pids[j] == q_pids[i] for j in ranked]
        if not any(rel):
            continue
        hits, precs = 0, []
        for r, is_rel in enumerate(rel, start=1):
            if is_rel:
                hits += 1
                precs.append(hits / r)
        aps.append(np.mean(precs))
        first = rel.index(True)
        cmcs.append([1.0 if r >= first else 0.0 for r in range(max_rank)])
        last = len(rel) - 1 - rel[::-1].index(True)
        inps.append(sum(rel) / (last + 1))
    return np.mean(cmcs, axis=0), np.mean(aps), np.mean(inps), len(aps)


def random_problem(seed, nq, ng, nid, ncam, ties=False):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, nid, nq)
    g_pids = rng.integers(0, nid, ng)
    q_cams = rng.integers(0, ncam, nq)
    g_cams = rng.integers(0, ncam, ng)
    d = rng.random((nq, ng)).astype(np.float32)
    if ties:
        d = np.round(d * 5) / 5
    return d, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed,nq,ng,nid,ncam", [(0, 30, 80, 10, 2), (1, 50, 200, 40, 6), (2, 7, 9, 3, 2)])
def test_rank_equals_slow_reference(seed, nq, ng, nid, ncam) -> None:
    d, qp, gp, qc, gc = random_problem(seed, nq, ng, nid, ncam)
    res = evaluate_rank(d, qp, gp, qc, gc, max_rank=20, chunk=8)
    cmc, mAP, mINP, n = slow_rank(d, qp, gp, qc, gc, min(20, ng))
    np.testing.assert_allclose(res.cmc, cmc, atol=1e-6)
    assert res.mAP == pytest.approx(mAP, abs=1e-9)
    assert res.mINP == pytest.approx(mINP, abs=1e-9)
    assert res.num_valid_queries == n


def test_rank_with_ties_equals_slow_reference_with_gallery_order_tiebreak() -> None:
    d, qp, gp, qc, gc = random_problem(5, 40, 120, 15, 3, ties=True)
    res = evaluate_rank(d, qp, gp, qc, gc, max_rank=10)
    cmc, mAP, mINP, _ = slow_rank(d, qp, gp, qc, gc, 10)
    np.testing.assert_allclose(res.cmc, cmc, atol=1e-6)
    assert res.mAP == pytest.approx(mAP, abs=1e-9)
    assert res.mINP == pytest.approx(mINP, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_equals_torchreid(seed: int) -> None:
    tr = _torchreid_module("reid/metrics/rank.py", "torchreid_rank")
    d, qp, gp, qc, gc = random_problem(seed, 100, 600, 60, 6)
    cmc_ref, map_ref = tr.evaluate_rank(d, qp, gp, qc, gc, max_rank=50, use_cython=False)
    res = evaluate_rank(d, qp, gp, qc, gc, max_rank=50)
    np.testing.assert_allclose(res.cmc, cmc_ref, atol=1e-6)
    assert res.mAP == pytest.approx(map_ref, abs=1e-9)


def test_rank_skips_queries_without_match_and_errors() -> None:
    d = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    # query 0 (pid 1, cam 0): its only same-pid gallery item is in the same camera -> junk -> skipped
    res = evaluate_rank(d, [1, 2], [1, 2, 3], [0, 0], [0, 1, 1], max_rank=3)
    assert res.num_valid_queries == 1 and res.num_queries == 2
    np.testing.assert_allclose(res.cmc, [0.0, 1.0, 1.0])  # query 1's match at rank 2
    assert res.mAP == pytest.approx(0.5) and res.mINP == pytest.approx(0.5)
    with pytest.raises(EvaluationError, match="no query has a true match"):
        evaluate_rank(d, [1, 9], [1, 2, 3], [0, 0], [0, 1, 1])
    with pytest.raises(EvaluationError, match="g_pids has 2 entries"):
        evaluate_rank(d, [1, 2], [1, 2], [0, 0], [0, 1, 1])


def slow_rank_unknown_cameras(distmat, q_pids, g_pids, q_camids, g_camids, q_items, g_items, max_rank):
    """From the definition: a gallery item is removed for a query when it is the query's own image, or the same
    person in the same camera with both cameras known (-1 = unknown never matches)."""
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        order = sorted(range(distmat.shape[1]), key=lambda j: (distmat[i, j], j))
        ranked = []
        for j in order:
            own_image = g_items[j] == q_items[i]
            known = q_camids[i] != -1 and g_camids[j] != -1
            if own_image or (known and g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i]):
                continue
            ranked.append(j)
        rel = [g_pids[j] == q_pids[i] for j in ranked]
        if not any(rel):
            continue
        hits, precs = 0, []
        for r, is_rel in enumerate(rel, start=1):
            if is_rel:
                hits += 1
                precs.append(hits / r)
        aps.append(np.mean(precs))
        cmcs.append([1.0 if r >= rel.index(True) else 0.0 for r in range(max_rank)])
        inps.append(sum(rel) / (len(rel) - rel[::-1].index(True)))
    return np.mean(cmcs, axis=0), np.mean(aps), len(aps), np.mean(inps)


@pytest.mark.parametrize("seed,unknown_share", [(0, 1.0), (1, 0.5), (2, 0.2)])
def test_rank_with_unknown_cameras_equals_slow_reference(seed: int, unknown_share: float) -> None:
    # all-vs-all retrieval (the queries are part of the gallery), some or all cameras unknown
    rng = np.random.default_rng(seed)
    ng, nq = 120, 40
    g_pids = rng.integers(0, 25, ng)
    g_cams = np.where(rng.random(ng) < unknown_share, -1, rng.integers(0, 3, ng))
    qsel = rng.choice(ng, nq, replace=False)
    items = np.array([f"img/{j}.jpg" for j in range(ng)])
    d = rng.random((nq, ng)).astype(np.float32)
    d[np.arange(nq), qsel] = 0.0  # each query's own image is its nearest item: it must be removed
    args = (d, g_pids[qsel], g_pids, g_cams[qsel], g_cams)
    res = evaluate_rank(*args, max_rank=20, chunk=7, q_items=items[qsel], g_items=items)
    cmc, mAP, n, _ = slow_rank_unknown_cameras(*args, items[qsel], items, 20)
    np.testing.assert_allclose(res.cmc, cmc, atol=1e-6)
    assert res.mAP == pytest.approx(mAP, abs=1e-9)
    assert res.num_valid_queries == n
    assert res.rank1 < 0.5  # the own image (distance 0) never counts as a hit


def test_rank_unknown_cameras_with_disjoint_query_and_gallery_removes_nothing() -> None:
    # identity folders split by identity: one query per person, the person's other images in the gallery
    d = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.1, 0.2]])
    res = evaluate_rank(d, [0, 1], [0, 0, 1, 1], [-1, -1], [-1, -1, -1, -1])
    assert res.num_valid_queries == 2
    np.testing.assert_allclose(res.cmc, [1.0, 1.0, 1.0, 1.0])
    assert res.mAP == pytest.approx(1.0)
    # a known camera on one side only: the same-camera rule needs both, so the match stays
    res = evaluate_rank(d, [0, 1], [0, 0, 1, 1], [0, 0], [-1, -1, 0, 0])
    assert res.num_valid_queries == 1 and res.mAP == pytest.approx(1.0)  # query 1 lost both (camera 0)
    with pytest.raises(EvaluationError, match="given together"):
        evaluate_rank(d, [0, 1], [0, 0, 1, 1], [-1, -1], [-1] * 4, q_items=["a", "b"])
    with pytest.raises(EvaluationError, match="q_items/g_items have 2/3 entries"):
        evaluate_rank(
            d, [0, 1], [0, 0, 1, 1], [-1, -1], [-1] * 4, q_items=["a", "b"], g_items=["a", "b", "c"]
        )

    from reid.data import UNKNOWN_CAMERA
    from reid.metrics.rank import UNKNOWN_CAMERA as METRIC_UNKNOWN

    assert METRIC_UNKNOWN == UNKNOWN_CAMERA  # what readers write is what the metric understands


def _torchreid_stable(tr):
    """torchreid's evaluator with its np.argsort made stable: numpy's default sort leaves the order of tied
    distances unspecified, the protocol here breaks ties by gallery order."""

    class StableNumpy:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def argsort(a, axis=-1):
            return np.argsort(a, axis=axis, kind="stable")

    tr.np = StableNumpy()
    return tr


@pytest.mark.parametrize(
    "seed,nq,ng,nid,ncam,levels,unknown,max_rank",
    [
        (0, 60, 400, 40, 6, 0, 0.0, 50),  # no ties
        (1, 60, 400, 40, 6, 7, 0.0, 50),  # heavy ties (7 distinct distances)
        (2, 50, 300, 30, 3, 50, 0.3, 20),  # ties, 30 % unknown cameras
        # max_rank larger than the gallery, many queries without a match; cameras unknown so that nothing is
        # removed: torchreid's Python evaluator fails when fewer than max_rank items are kept
        (3, 40, 30, 25, 2, 4, 1.0, 100),
        (4, 37, 211, 60, 4, 0, 1.0, 50),  # all cameras unknown
    ],
)
def test_fast_rank_equals_torchreid_with_ties_unknown_cameras_and_missing_matches(
    seed, nq, ng, nid, ncam, levels, unknown, max_rank
) -> None:
    tr = _torchreid_stable(_torchreid_module("reid/metrics/rank.py", "torchreid_rank_stable"))
    rng = np.random.default_rng(seed)
    d, qp, gp, qc, gc = random_problem(seed, nq, ng, nid, ncam)
    if levels:
        d = (np.floor(d * levels) / levels).astype(np.float32)
    qc = np.where(rng.random(nq) < unknown, -1, qc)
    gc = np.where(rng.random(ng) < unknown, -1, gc)
    # torchreid has no unknown camera: give each unknown one a camera id of its own, so it never matches
    tq = np.where(qc == -1, -1000 - np.arange(nq), qc)
    tg = np.where(gc == -1, -100000 - np.arange(ng), gc)
    cmc_ref, map_ref = tr.evaluate_rank(d, qp, gp, tq, tg, max_rank=max_rank, use_cython=False)
    cmc, mAP, n, mINP = slow_rank_unknown_cameras(
        d, qp, gp, qc, gc, -np.ones(nq), np.arange(ng), min(max_rank, ng)
    )
    np.testing.assert_allclose(cmc, cmc_ref, atol=1e-6)  # the two oracles agree on the protocol
    assert mAP == pytest.approx(map_ref, abs=1e-6)
    assert n < nq or seed != 3  # the small gallery leaves queries without a true match
    for workers, chunk in ((1, 64), (2, 7), (3, 1)):
        res = evaluate_rank(d, qp, gp, qc, gc, max_rank=max_rank, chunk=chunk, workers=workers)
        assert len(res.cmc) == min(max_rank, ng)
        np.testing.assert_allclose(res.cmc, cmc_ref, atol=1e-6)
        assert res.mAP == pytest.approx(map_ref, abs=1e-6)
        assert res.mINP == pytest.approx(mINP, abs=1e-9)
        assert res.num_valid_queries == n


def test_fast_rank_float64_infinite_and_constant_rows_equal_slow_reference() -> None:
    """Rows the binning cannot spread (inf, -inf, all equal, 1e-300 apart) still rank exactly."""
    d, qp, gp, qc, gc = random_problem(9, 20, 90, 12, 3)
    d = d.astype(np.float64)
    d[0, ::3] = np.inf
    d[1, ::4] = -np.inf
    d[2] = 0.5
    d[3] = 1e-300 * (np.arange(90) % 5)
    d[4, 5] = -0.0
    d[4, 6] = 0.0
    res = evaluate_rank(d, qp, gp, qc, gc, max_rank=30, chunk=3)
    cmc, mAP, mINP, n = slow_rank(d, qp, gp, qc, gc, 30)
    np.testing.assert_allclose(res.cmc, cmc, atol=1e-6)
    assert res.mAP == pytest.approx(mAP, abs=1e-9)
    assert res.mINP == pytest.approx(mINP, abs=1e-9)
    assert res.num_valid_queries == n


def test_distance_matrix() -> None:
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    ref = ((q[:, None, :] - g[None]) ** 2).sum(-1)
    np.testing.assert_allclose(compute_distance_matrix(q, g), ref, rtol=1e-4, atol=1e-4)
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(compute_distance_matrix(q, g, "cosine"), 1 - qn @ gn.T, atol=1e-5)


def test_reranking_equals_torchreid() -> None:
    rr = _torchreid_module("reid/utils/rerank.py", "torchreid_rerank")
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(12, 16)), rng.normal(size=(40, 16))
    qg, qq, gg = (compute_distance_matrix(a, b) for a, b in ((q, g), (q, q), (g, g)))
    ours = k_reciprocal_rerank(qg, qq, gg, k1=8, k2=3, lambda_value=0.3)
    ref = rr.re_ranking(qg, qq, gg, k1=8, k2=3, lambda_value=0.3)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_query_expansion_moves_query_towards_neighbours() -> None:
    q = np.array([[1.0, 0.0, 0.0]])
    g = np.array([[0.0, 1.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    eq, _ = query_expansion(q, g, top_k=1)
    expected = (q[0] + g[1]) / np.linalg.norm(q[0] + g[1])
    np.testing.assert_allclose(eq[0], expected, atol=1e-6)


def test_auc_and_tar_against_oracles() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.5
    s = rng.normal(size=2000) + 1.5 * y
    s[:50] = np.round(s[:50])  # some ties
    assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    for far in (1e-2, 1e-3, 0.1):
        tar, thr = tar_at_far(s, y, far)
        imp = s[~y]
        assert (imp >= thr).mean() <= far + 1e-12
        # the definition: among all thresholds with FAR <= target, the one with the highest TAR
        best = max((s[y] >= t).mean() for t in np.r_[s, np.inf] if (imp >= t).mean() <= far)
        assert tar == pytest.approx(best)


def test_kfold_verification() -> None:
    rng = np.random.default_rng(1)
    y = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)
    folds = np.repeat(np.arange(10), 60)
    separable = np.where(y, 0.8, 0.2) + rng.normal(scale=0.05, size=y.size)
    res = kfold_verification(separable, y, folds)
    assert res.accuracy_mean == 1.0 and res.accuracy_std == 0.0 and res.auc == 1.0
    noisy = np.where(y, 0.6, 0.4) + rng.normal(scale=0.2, size=y.size)
    res = kfold_verification(noisy, y, folds)
    # oracle: for each fold, brute-force the best threshold on the other folds
    accs = []
    for k in range(10):
        tr, te = folds != k, folds == k
        cands = np.sort(noisy[tr])
        mids = np.r_[cands[0] - 1e-6, (cands[1:] + cands[:-1]) / 2, cands[-1] + 1e-6]
        train_acc = [((noisy[tr] >= t) == y[tr]).mean() for t in mids]
        t = mids[int(np.argmax(train_acc))]
        accs.append(((noisy[te] >= t) == y[te]).mean())
    assert res.accuracy_mean == pytest.approx(np.mean(accs))
    assert 0.6 < res.accuracy_mean < 0.9


def test_open_set_identification_against_slow_reference() -> None:
    rng = np.random.default_rng(2)
    gallery = np.arange(20)
    probes = np.r_[rng.integers(0, 20, 150), np.arange(100, 150)]  # 150 mated, 50 strangers
    sim = rng.normal(size=(200, 20))
    sim[np.arange(150), probes[:150]] += 2.0
    res = open_set_identification(sim, probes, gallery, fars=(0.02, 0.1, 0.5))
    for far, t, d in zip(res.far_targets, res.thresholds, res.dir):
        best = sim.max(axis=1)
        stranger_best = best[150:]
        assert (stranger_best >= t).mean() <= far
        assert t == threshold_at_far(stranger_best, far)
        hits = [sim[i].argmax() == probes[i] and best[i] >= t for i in range(150)]
        assert d == pytest.approx(np.mean(hits))
    assert res.dir[0] <= res.dir[1] <= res.dir[2] <= res.rank1


@pytest.mark.slow
def test_market_sized_problem_runs() -> None:
    d, qp, gp, qc, gc = random_problem(0, 3368, 15913, 751, 6)
    t = time.perf_counter()
    res = evaluate_rank(d, qp, gp, qc, gc)
    assert time.perf_counter() - t < 60  # sanity only; speed is measured in benchmarks/eval_speed.py
    assert 0 < res.mAP < 0.05


def _slow_decision(emb, labels, far, enroll, cohort, beta):
    """calibrate_decision's simulation written straight from its definition, one probe at a time: every
    identity with more than ``enroll`` images enrolled, their other images mated probes against everyone, every
    identity's images strangers against everyone but their own person."""
    ids = [p for p in np.unique(labels) if (labels == p).sum() > enroll]
    templates = {p: [i for i in range(len(labels)) if labels[i] == p][:enroll] for p in ids}
    probes = [(i, True) for p in ids for i in np.flatnonzero(labels == p)[enroll:]]
    probes += [(i, False) for i in range(len(labels))]
    mated, correct, strangers = [], [], []
    for i, is_mated in probes:
        person = {
            p: max(float(emb[i] @ emb[t]) for t in ts)
            for p, ts in templates.items()
            if is_mated or p != labels[i]
        }
        order = sorted(person, key=lambda p: -person[p])
        runner = person[order[1]] if len(order) > 1 else -1.0
        if cohort is not None:
            runner = max(runner, max(float(emb[i] @ c) for c in cohort))
        value = person[order[0]] - beta * runner
        if is_mated:
            mated.append(value)
            correct.append(order[0] == labels[i])
        else:
            strangers.append(value)
    s = sorted(strangers, reverse=True)
    allowed = int(np.floor(far * len(s) + 1e-9))
    thr = np.nextafter(s[allowed], np.inf)
    return thr, np.mean([c and m >= thr for c, m in zip(correct, mated)]), np.mean([v >= thr for v in s])


@pytest.mark.parametrize("enroll", [1, 2])
def test_calibrate_decision_against_slow_reference(enroll: int) -> None:
    from reid.metrics.open_set_decision import calibrate_decision, split_cohort

    rng = np.random.default_rng(11)
    centers = rng.normal(size=(40, 16))
    labels = np.repeat(np.arange(40), np.tile([2, 3, 5, 6], 10))  # with 2 enrolled, a quarter never are
    emb = centers[labels] + 0.9 * rng.normal(size=(len(labels), 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float64)
    cohort, keep = split_cohort(emb, labels, 0.25, seed=3)
    assert len(cohort) == 10 and len(np.unique(labels[keep])) == 30
    e, y = emb[keep], labels[keep]
    cal = calibrate_decision(e, y, 0.05, enroll, cohort, betas=(0.0, 0.5, 1.0), seed=4)
    for beta in (0.0, 0.5, 1.0):
        thr, dir_, far = _slow_decision(e, y, 0.05, enroll, cohort, beta)
        assert cal.by_beta[beta] == pytest.approx(dir_, abs=1e-9)
        if beta == cal.beta:
            assert cal.threshold == pytest.approx(thr, abs=1e-6)  # float32 products in calibrate_decision
            assert cal.measured_far == pytest.approx(far) and far <= 0.05
    assert cal.by_beta[cal.beta] == max(cal.by_beta.values())
    enrolled = sum((y == p).sum() > enroll for p in np.unique(y))
    assert cal.n_identities == 30 and cal.n_strangers == len(y)  # every image asks once as a stranger
    assert cal.gallery_size == enrolled - 1  # a stranger saw everyone enrolled but itself
    assert cal.n_mated == sum(max((y == p).sum() - enroll, 0) for p in np.unique(y))


def test_margin_names_more_known_people_than_the_raw_score_when_queries_differ_in_scale() -> None:
    """Queries whose similarity to everyone is shifted (hubs, poor photos): the raw best score mixes them up
    with strangers; the margin over the runner-up does not. The calibration must find that."""
    from reid.metrics.open_set_decision import calibrate_decision, open_set_scores

    rng = np.random.default_rng(5)
    n_id, per = 60, 4
    labels = np.repeat(np.arange(n_id), per)
    centers = rng.normal(size=(n_id, 64))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    emb = (
        centers[labels] * rng.uniform(0.35, 1.0, size=(len(labels), 1))
        + 0.5 * rng.normal(size=(len(labels), 64)) / 8.0
    )
    emb += 0.6 * rng.normal(size=(1, 64)) * rng.uniform(0, 1, size=(len(labels), 1))  # query-dependent shift
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cal = calibrate_decision(emb, labels, 0.05, 1, None, betas=(0.0, 1.0))
    assert cal.by_beta[1.0] > cal.by_beta[0.0] + 0.05, cal.by_beta
    s = open_set_scores(
        np.array([[0.9, 0.2, 0.1], [0.5, 0.49, 0.1]]), beta=1.0, cohort_best=np.array([0.3, 0.0])
    )
    assert s.best.tolist() == [0, 0]
    assert s.runner_up.tolist() == pytest.approx([0.3, 0.49]) and s.normalised.tolist() == pytest.approx(
        [0.6, 0.01]
    )


def test_margin_thresholds_by_gallery_size_hold_the_false_accept_rate_of_bigger_galleries() -> None:
    """The margin rule's size model against brute force: strangers whose scores against persons are drawn
    from a known per-probe distribution; galleries of n persons drawn fresh from it, each probe's
    ``best - beta * max(second, cohort)`` counted directly; the table's threshold must give the target rate
    at every n, and it falls as the gallery grows (a fixed one would be ever stricter)."""
    from reid.metrics.open_set_decision import margin_thresholds_by_gallery_size

    rng = np.random.default_rng(3)
    probes, m, beta, far = 300, 80, 1.0, 0.05
    mu = rng.normal(0.15, 0.08, size=(probes, 1))  # per-probe hubness in Fisher-z space
    sd = rng.uniform(0.1, 0.2, size=(probes, 1))
    cb = np.tanh(mu[:, 0] + sd[:, 0] * 1.5)  # each probe's best cohort score: a fixed competitor

    def scores(n: int) -> np.ndarray:
        return np.tanh(mu + sd * rng.standard_normal((probes, n)))

    def normalised(sims: np.ndarray) -> np.ndarray:
        top = -np.sort(-sims, axis=1)[:, :2]
        return top[:, 0] - beta * np.maximum(top[:, 1], cb)

    seen = scores(m)  # what calibration saw: the strangers against M validation persons
    anchor = float(np.quantile(normalised(seen), 1 - far))
    sizes = (2, 10, 80, 1000, 4000)
    table = margin_thresholds_by_gallery_size([seen], [cb], beta, far, anchor, sizes=sizes, draws=512)
    assert table[80] == pytest.approx(anchor)
    # past the validation size the margin shrinks, and so does the threshold that holds the rate
    assert table[80] > table[1000] > table[4000]
    # below it the cohort is the competitor that binds and a stranger's margin is smaller still; the table is
    # floored at the measured threshold there (fewer strangers accepted than the target, never more)
    assert table[2] == table[10] == anchor
    for n in sizes:
        brute = np.mean([(normalised(scores(n)) >= table[n]).mean() for _ in range(max(2, 20_000 // n))])
        if n < m:
            assert brute <= far, (n, brute)
        else:
            assert brute == pytest.approx(far, abs=0.025), (n, brute)


def test_thresholds_by_gallery_size_hold_the_false_accept_rate_of_random_galleries() -> None:
    """The size model against brute force: galleries of n persons drawn from the M validation persons, each
    stranger probe's best score counted directly; the modelled threshold must give the target rate."""
    from reid.metrics.open_set_decision import _solve, thresholds_by_gallery_size

    rng = np.random.default_rng(7)
    hub = rng.uniform(0, 0.4, size=(400, 1))  # probes that score high against everyone
    sims = np.tanh(rng.normal(0.2, 0.15, size=(400, 60)) + hub)
    for n in (5, 20, 60):
        t = _solve([sims], 0.05, n, "empirical")
        brute = np.mean(
            [(sims[:, rng.choice(60, n, replace=False)].max(axis=1) >= t).mean() for _ in range(300)]
        )
        assert brute == pytest.approx(0.05, abs=0.012), (n, brute)
    table = thresholds_by_gallery_size([sims], 0.05, sizes=(1, 5, 20, 60, 500, 5000))
    assert table[60] == pytest.approx(_solve([sims], 0.05, 60, "empirical"))
    assert table[1] == table[5] == table[20] == table[60]  # below the validation size: floored at its value
    assert table[60] < table[500] < table[5000] < 1.0  # past it: rising with the gallery


@pytest.mark.parametrize("how", ["centroid", "max", "mean"])
def test_person_scores_equal_the_per_person_aggregation_and_its_definition(how: str) -> None:
    from reid.metrics.aggregation import aggregate, person_scores

    rng = np.random.default_rng(3)
    t = rng.normal(size=(9, 8))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    owner = np.array([0, 0, 1, 2, 2, 2, 3, 1, 0])
    q = rng.normal(size=(5, 8))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    got = person_scores(q, t, owner, how)
    for i in range(len(q)):
        for j in range(4):
            mine = t[owner == j]
            c = mine.mean(axis=0)
            want = {
                "centroid": c @ q[i] / np.linalg.norm(c),
                "max": (mine @ q[i]).max(),
                "mean": (mine @ q[i]).mean(),
            }
            assert got[i, j] == pytest.approx(want[how]) == aggregate(mine, q[i], how)


def test_an_unknown_aggregation_is_refused_by_name() -> None:
    from reid.metrics.aggregation import aggregate

    with pytest.raises(EvaluationError, match="aggregation must be one of centroid, max, mean, got 'median'"):
        aggregate(np.ones((1, 2)), np.ones(2), "median")


def test_the_size_table_past_the_validation_galleries_is_corrected_by_its_own_check() -> None:
    """``sized_table`` against brute force: stranger probes with heavy-tailed scores (Student-t, where the per-probe
    normal model underestimates the best of many) against 400 persons, of which validation sees 30. The rate each
    table really accepts in galleries of 100 and 400 of those persons is counted directly (each probe's best
    over them): on average over seeds the plain table overshoots the target and the corrected one does not.
    The gallery reads the measured threshold at the validation size itself, not a blend with the part past it."""
    from gallery.decision import Decision, size_table
    from reid.metrics.open_set_decision import GALLERY_SIZES, sized_table, thresholds_by_gallery_size

    plain_far, fixed_far = [], []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        hub = rng.uniform(0, 0.3, size=(600, 1))
        sims = np.tanh(0.2 + hub + 0.08 * rng.standard_t(3, size=(600, 400)))
        val = sims[:, :30]
        plain = thresholds_by_gallery_size([val], 0.01, sizes=(10, 30, 100, 400))
        table, check = sized_table([val], [None], 0.0, 0.01, sizes=(10, 100, 400))
        assert check["check_mean"] > 0.01 and check["solved_for"] < 0.01  # the model overshot its own check
        assert check["fitted_mean"] < check["check_mean"]
        for n in (100, 400):
            plain_far.append((sims[:, :n].max(axis=1) >= plain[n]).mean())
            fixed_far.append((sims[:, :n].max(axis=1) >= table[n]).mean())
        if seed == 0:
            d = Decision(
                table[30], by_size=size_table(sized_table([val], [None], 0.0, 0.01, GALLERY_SIZES)[0])
            )
            assert d.threshold_at(30) == pytest.approx(plain[30]) and d.threshold_at(20) == pytest.approx(
                plain[30]
            )
            assert d.threshold_at(31) > plain[30]  # past it, solved for the lower rate
            # ... growing in over the doubling the check measured: no jump at 31, whole from 60 on
            near, _ = sized_table([val], [None], 0.0, 0.01, sizes=(31, 60, 120))
            far_plain = thresholds_by_gallery_size([val], 0.01, sizes=(31, 60, 120))
            assert 0 < near[31] - far_plain[31] < 0.2 * (near[60] - far_plain[60])
            solved = thresholds_by_gallery_size([val], check["solved_for"], sizes=(30, 60, 120))
            assert near[120] == pytest.approx(solved[120])
    assert np.mean(plain_far) > 0.015  # the failure the correction is for, as the brute force counts it
    assert np.mean(fixed_far) <= 0.01  # corrected: the promise holds on average over the seeds


def test_a_correction_that_cannot_help_is_not_made() -> None:
    """Halves of fewer than ``MIN_FITTED`` persons are not checked; and where so few strangers were seen that a
    lower rate only lowers the threshold (below one stranger the empirical quantile stops at the highest score
    while the model's rise goes on), the uncorrected table stays."""
    from reid.metrics.open_set_decision import sized_table, thresholds_by_gallery_size

    rng = np.random.default_rng(2)
    small = np.tanh(0.3 + 0.1 * rng.standard_t(3, size=(200, 12)))
    table, check = sized_table([small], [None], 0.0, 0.01, sizes=(12, 100))
    assert check == {} and table == thresholds_by_gallery_size([small], 0.01, sizes=(12, 100))
    overshot = 0
    for seed in range(4):
        rng = np.random.default_rng(seed)
        # 40 strangers: one of them is 2.5 %, so a rate under the 1 % target cannot be resolved
        few = np.tanh(0.3 + rng.uniform(0, 0.3, size=(40, 1)) + 0.1 * rng.standard_t(3, size=(40, 20)))
        table, check = sized_table([few], [None], 0.0, 0.01, sizes=(20, 100))
        assert check["fitted_persons"] == 10 and check["solved_for"] == 0.01
        assert table == thresholds_by_gallery_size([few], 0.01, sizes=(20, 100))
        overshot += check["check_mean"] > 0.01
    assert overshot >= 3  # the check did overshoot: it is the correction that was refused


def _clopper_pearson_from_the_definition(k: int, n: int, confidence: float) -> tuple[float, float]:
    """The rates at which seeing k or more (lower end) / k or fewer (upper end) of n has probability
    (1 - confidence) / 2, solved on the binomial itself."""
    from scipy.optimize import brentq
    from scipy.stats import binom

    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else brentq(lambda p: binom.sf(k - 1, n, p) - a, 1e-12, 1 - 1e-12, xtol=1e-14)
    hi = 1.0 if k == n else brentq(lambda p: binom.cdf(k, n, p) - a, 1e-12, 1 - 1e-12, xtol=1e-14)
    return lo, hi


@pytest.mark.parametrize(("k", "n", "confidence"), [(0, 50, 0.95), (1, 50, 0.95), (32, 2722, 0.95),
                                                    (5, 416, 0.9), (416, 416, 0.95), (200, 300, 0.99)])  # fmt: skip
def test_rate_interval_is_clopper_pearson_from_the_binomial(k: int, n: int, confidence: float) -> None:
    from reid.metrics import rate_interval

    assert rate_interval(k, n, confidence) == pytest.approx(
        _clopper_pearson_from_the_definition(k, n, confidence), abs=1e-9
    )


def test_rate_interval_with_a_design_effect_is_that_of_the_effective_sample() -> None:
    from reid.metrics import design_effect, rate_interval

    assert rate_interval(10, 100, design=2.0) == pytest.approx(
        _clopper_pearson_from_the_definition(5, 50, 0.95)
    )
    # 8 hits in 40 values of 20 groups of two: as hits come in pairs the count varies twice as much
    groups = np.repeat(np.arange(20), 2)
    paired = groups[:8]  # 4 groups, both values each
    d = design_effect(paired, 20, 40)
    counts = np.bincount(paired, minlength=20)
    assert d == pytest.approx(20 * counts.var() / (8 * (1 - 8 / 40)))
    assert d > 1.9
    lo, hi = rate_interval(8, 40, design=d)
    plain = rate_interval(8, 40)
    assert lo < plain[0] and hi > plain[1]  # wider: fewer independent values than it seems
    assert design_effect(np.arange(8), 40, 40) == pytest.approx(1.0)  # one value per group: independent


def test_the_design_effect_of_unequal_groups_is_the_variance_of_resampling_them() -> None:
    """Persons with 1 to 30 probes each, each person named with their own probability: the rate's variance when
    whole persons are drawn again (the definition, by bootstrap) over the binomial's is the design effect."""
    from reid.metrics import design_effect

    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 31, 300)
    hits = rng.binomial(sizes, rng.beta(2, 1, sizes.size))  # alike within a person
    n, k = int(sizes.sum()), int(hits.sum())
    hit_groups = np.repeat(np.arange(sizes.size), hits)
    d = design_effect(hit_groups, sizes.size, n, sizes=sizes)
    draws = rng.integers(0, sizes.size, (20_000, sizes.size))
    rates = hits[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    p = k / n
    assert d == pytest.approx(rates.var() / (p * (1 - p) / n), rel=0.05)
    assert d > 3  # far from independent
    # the evenly spread default ignores the sizes: here it would count the big persons' hits as clustering
    assert design_effect(hit_groups, sizes.size, n) != pytest.approx(d, rel=0.05)
    with pytest.raises(EvaluationError, match="group sizes"):
        design_effect(hit_groups, sizes.size, n + 1, sizes=sizes)
    with pytest.raises(EvaluationError, match="group ids must be in 0 .. 2"):
        design_effect([0, 3], 3, 10)


@pytest.mark.parametrize(("k", "n", "confidence", "design"), [(3, 2, 0.95, 1), (-1, 5, 0.95, 1), (0, 0, 0.95, 1),
                                                              (1, 5, 1.0, 1), (1, 5, 0.95, 0.5)])  # fmt: skip
def test_rate_interval_refuses_what_is_not_a_rate(k: int, n: int, confidence: float, design: float) -> None:
    from reid.metrics import EvaluationError, rate_interval

    with pytest.raises(EvaluationError, match="rate_interval|0 <= k <= n|confidence"):
        rate_interval(k, n, confidence, design)


def test_benchmark_outcomes_print_each_rate_with_the_interval_of_its_effective_sample() -> None:
    from benchmarks.outcome import Outcome
    from reid.metrics import rate_interval

    # person 0's four queries all named, person 1's four all missed: the rate rests on two persons, not eight
    fold = Outcome.of([0] * 4 + [1] * 4, [1] * 4 + [0] * 4, [0] * 8, [1] * 8, [1, 0, 0, 0], [0, 1, 2, 3])
    pooled = fold + fold
    assert pooled.person.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4  # the second fold's persons apart
    assert pooled.stranger.tolist() == list(range(8))
    cols = pooled.columns().split()
    assert cols[0] == "50.00%" and cols[3] == "25.00%"
    d = 4 * np.var([4, 0, 4, 0]) / (8 * (1 - 8 / 16))  # clustered: a person's queries move together
    assert d == 4.0
    lo, hi = rate_interval(8, 16, design=d)
    assert cols[1] == f"{lo:.1%}-{hi:.1%}"
    lo, hi = rate_interval(2, 8)  # strangers one query each: independent
    assert cols[4] == f"{lo:.2%}-{hi:.2%}"


def test_benchmark_queries_go_through_the_gallerys_decision(tmp_path) -> None:
    """``benchmarks.outcome.ask`` on a real gallery: a known query is named right only when its own person is
    first and clears the threshold, named wrong when another person is, and a stranger is accepted when its
    best score clears it."""
    from benchmarks.outcome import ask
    from gallery import Gallery

    eye = np.eye(8, dtype=np.float32)
    g = Gallery(f"{tmp_path}/g.db", index_dir=None)
    try:
        a, b = (g.enroll(embeddings=eye[i][None], modality="body", model_id="m").person_id for i in (0, 1))

        # a unit vector at cosine ``cos`` to axis i, toward axis j
        def near(i: int, j: int, cos: float) -> np.ndarray:
            return (cos * eye[i] + np.sqrt(1 - cos**2) * eye[j]).astype(np.float32)

        known = [(near(0, 5, 0.9), a), (near(1, 5, 0.6), b), (near(1, 6, 0.9), a)]  # right, too far, wrong
        strangers = [(near(0, 7, 0.8), 0), (eye[4], 1), (near(1, 7, 0.2), 1)]
        out = ask(g, "body", "m", known, strangers, threshold=0.7)
    finally:
        g.close()
    assert out.right.tolist() == [True, False, False]
    assert out.wrong.tolist() == [False, False, True]
    assert out.top1.tolist() == [True, True, False]
    assert out.accepted.tolist() == [True, False, False]
    assert out.person.tolist() == [a, b, a] and out.stranger.tolist() == [0, 1, 1]
