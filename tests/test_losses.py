"""Losses and miners against pytorch-metric-learning (test-only oracle) and hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import distances as pml_d
from pytorch_metric_learning import losses as pml_l
from pytorch_metric_learning import miners as pml_m

from reid.distances import CosineSimilarity, LpDistance
from reid.errors import ConfigError, LossInputError
from reid.losses import (
    ArcFaceLoss,
    BatchHardTripletLoss,
    CenterLoss,
    ContrastiveLoss,
    CosFaceLoss,
    CrossEntropyLoss,
    NormalizedSoftmaxLoss,
    TripletMarginLoss,
    build_combined_loss,
)
from reid.miners import (
    BatchHardMiner,
    DistanceWeightedMiner,
    PairMarginMiner,
    TripletMarginMiner,
)

SEEDS = [0, 1, 2]


def batch(seed: int, n_ids: int = 6, k: int = 4, dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_ids).repeat_interleave(k)
    emb = torch.randn(n_ids * k, dim, generator=g) + 0.5 * torch.randn(n_ids, dim, generator=g)[labels]
    return emb.double(), labels


def agree(ours, theirs, emb: torch.Tensor, labels: torch.Tensor, ours_idx=None, theirs_idx=None) -> None:
    """Same value within 1e-5 and same gradient w.r.t. the embeddings."""
    e1 = emb.clone().requires_grad_(True)
    e2 = emb.clone().requires_grad_(True)
    v1 = ours(e1, labels, ours_idx)
    v2 = theirs(e2, labels, theirs_idx)
    v1.backward()
    v2.backward()
    assert float(v1.detach()) == pytest.approx(float(v2.detach()), abs=1e-5)
    torch.testing.assert_close(e1.grad.double(), e2.grad.double(), atol=1e-5, rtol=1e-4)


def pml_distance(cosine: bool):
    return pml_d.CosineSimilarity() if cosine else pml_d.LpDistance()


def our_distance(cosine: bool):
    return CosineSimilarity() if cosine else LpDistance()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_batch_all_matches_pml(seed, cosine, soft) -> None:
    emb, labels = batch(seed)
    margin = 0.1 if cosine else 0.2
    ours = TripletMarginLoss(margin, soft_margin=soft, distance=our_distance(cosine))
    theirs = pml_l.TripletMarginLoss(
        margin, smooth_loss=soft, distance=pml_distance(cosine), triplets_per_anchor="all"
    )
    agree(ours, theirs, emb, labels)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cosine", [False, True])
def test_batch_hard_miner_and_triplet_match_pml(seed, cosine) -> None:
    emb, labels = batch(seed)
    ours_m, theirs_m = (
        BatchHardMiner(distance=our_distance(cosine)),
        pml_m.BatchHardMiner(distance=pml_distance(cosine)),
    )
    a1 = ours_m(emb, labels)
    a2 = theirs_m(emb, labels)
    for x, y in zip(a1, a2):
        assert torch.equal(x, y)
    ours = TripletMarginLoss(0.3, distance=our_distance(cosine))
    theirs = pml_l.TripletMarginLoss(0.3, distance=pml_distance(cosine))
    agree(ours, theirs, emb, labels, a1, a2)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
@pytest.mark.parametrize("cosine", [False, True])
def test_triplet_margin_miner_matches_pml(seed, kind, cosine) -> None:
    emb, labels = batch(seed)
    ours = TripletMarginMiner(0.2, kind, distance=our_distance(cosine))(emb, labels)
    theirs = pml_m.TripletMarginMiner(0.2, kind, distance=pml_distance(cosine))(emb, labels)
    assert {tuple(t) for t in torch.stack(ours, 1).tolist()} == {
        tuple(t) for t in torch.stack(theirs, 1).tolist()
    }
    agree(
        TripletMarginLoss(0.2, distance=our_distance(cosine)),
        pml_l.TripletMarginLoss(0.2, distance=pml_distance(cosine)),
        emb,
        labels,
        ours,
        theirs,
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cosine", [False, True])
def test_contrastive_and_pair_miner_match_pml(seed, cosine) -> None:
    emb, labels = batch(seed)
    pm, nm = (0.8, 0.3) if cosine else (0.2, 1.0)
    agree(
        ContrastiveLoss(pm, nm, distance=our_distance(cosine)),
        pml_l.ContrastiveLoss(pm, nm, distance=pml_distance(cosine)),
        emb,
        labels,
    )
    ours_pairs = PairMarginMiner(
        0.6 if not cosine else 0.5, 0.9 if not cosine else 0.2, distance=our_distance(cosine)
    )(emb, labels)
    theirs_pairs = pml_m.PairMarginMiner(
        0.6 if not cosine else 0.5, 0.9 if not cosine else 0.2, distance=pml_distance(cosine)
    )(emb, labels)
    for x, y in zip(ours_pairs, theirs_pairs):
        assert torch.equal(x, y)
    agree(
        ContrastiveLoss(pm, nm, distance=our_distance(cosine)),
        pml_l.ContrastiveLoss(pm, nm, distance=pml_distance(cosine)),
        emb,
        labels,
        ours_pairs,
        theirs_pairs,
    )
    # a pair miner feeds a triplet loss, a triplet miner feeds a pair loss
    agree(
        TripletMarginLoss(0.2, distance=our_distance(cosine)),
        pml_l.TripletMarginLoss(0.2, distance=pml_distance(cosine)),
        emb,
        labels,
        ours_pairs,
        theirs_pairs,
    )
    trip = BatchHardMiner(distance=our_distance(cosine))(emb, labels)
    agree(
        ContrastiveLoss(pm, nm, distance=our_distance(cosine)),
        pml_l.ContrastiveLoss(pm, nm, distance=pml_distance(cosine)),
        emb,
        labels,
        trip,
        trip,
    )


def _copy_weights(ours, theirs) -> None:
    with torch.no_grad():
        theirs.W.copy_(ours.W.T.to(theirs.W.dtype))


@pytest.mark.parametrize("seed", SEEDS)
def test_arcface_cosface_normsoftmax_match_pml(seed) -> None:
    emb, labels = batch(seed, dim=8)
    emb = emb.float()
    torch.manual_seed(seed)
    pairs = [
        (
            ArcFaceLoss(6, 8, margin=math.radians(28.6), scale=64),
            pml_l.ArcFaceLoss(6, 8, margin=28.6, scale=64),
        ),
        (
            ArcFaceLoss(6, 8, margin=0.3, scale=30),
            pml_l.ArcFaceLoss(6, 8, margin=math.degrees(0.3), scale=30),
        ),
        (CosFaceLoss(6, 8, margin=0.35, scale=64), pml_l.CosFaceLoss(6, 8, margin=0.35, scale=64)),
        (NormalizedSoftmaxLoss(6, 8, temperature=0.05), pml_l.NormalizedSoftmaxLoss(6, 8, temperature=0.05)),
    ]
    for ours, theirs in pairs:
        with torch.no_grad():
            ours.W.normal_()
        _copy_weights(ours, theirs)
        e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
        v1, v2 = ours(e1, labels), theirs(e2, labels)
        v1.backward()
        v2.backward()
        assert float(v1.detach()) == pytest.approx(float(v2.detach()), rel=1e-5, abs=1e-4)
        torch.testing.assert_close(e1.grad, e2.grad, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(ours.W.grad, theirs.W.grad.T, atol=1e-4, rtol=1e-3)


def test_arcface_easy_margin_and_monotonic_fallback() -> None:
    loss = ArcFaceLoss(3, 2, margin=0.5, scale=1.0)
    cos = torch.tensor([0.99, 0.2, -0.5, -0.95])
    theta = torch.acos(cos)
    expected = torch.where(theta <= math.pi - 0.5, torch.cos(theta + 0.5), cos - 0.5 * math.sin(0.5))
    torch.testing.assert_close(loss.target_logit(cos), expected)
    easy = ArcFaceLoss(3, 2, margin=0.5, scale=1.0, easy_margin=True)
    torch.testing.assert_close(easy.target_logit(cos), torch.where(cos > 0, torch.cos(theta + 0.5), cos))
    # the stable form has finite gradients at cos = 1
    c = torch.tensor([1.0], requires_grad=True)
    loss.target_logit(c).sum().backward()
    assert torch.isfinite(c.grad).all()


def test_cross_entropy_with_label_smoothing_by_hand() -> None:
    loss = CrossEntropyLoss(3, 2, label_smoothing=0.1)
    with torch.no_grad():
        loss.W.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    emb = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 2])
    logits = torch.tensor([[2.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
    logp = torch.log_softmax(logits, 1)
    target = torch.full((2, 3), 0.1 / 3)
    target[0, 0] += 0.9
    target[1, 2] += 0.9
    expected = -(target * logp).sum(1).mean()
    assert float(loss(emb, labels)) == pytest.approx(float(expected), abs=1e-6)


def test_center_loss_by_hand_and_param_group() -> None:
    loss = CenterLoss(2, 2)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    emb = torch.tensor([[1.0, 0.0], [1.0, 3.0], [0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 1])
    value = loss(emb, labels)
    # squared distances: 1, 4, 2 -> mean 7/3
    assert float(value) == pytest.approx(7 / 3)
    value.backward()
    torch.testing.assert_close(emb.grad, torch.tensor([[2 / 3, 0.0], [0.0, 4 / 3], [-2 / 3, -2 / 3]]))
    torch.testing.assert_close(loss.centers.grad, torch.tensor([[-2 / 3, 0.0], [2 / 3, -2 / 3]]))
    (group,) = loss.param_groups(0.5)
    assert group["lr"] == 0.5 and group["params"][0] is loss.centers


def test_batch_hard_soft_margin_by_hand() -> None:
    # 1-D embeddings (not normalised): a=0 (id 0), 1 (id 0), 3 (id 1), 3.5 (id 1)
    emb = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
    labels = torch.tensor([0, 0, 1, 1])
    loss = BatchHardTripletLoss(margin=0.0, soft_margin=True, distance=LpDistance(normalize_embeddings=False))
    # hardest pos / neg per anchor: (1, 3), (1, 2), (0.5, 2), (0.5, 2.5)
    expected = sum(math.log1p(math.exp(p - n)) for p, n in [(1, 3), (1, 2), (0.5, 2), (0.5, 2.5)]) / 4
    assert float(loss(emb, labels)) == pytest.approx(expected, abs=1e-6)
    # "active" = margin violated (d_ap - d_an + margin > 0): none here, although softplus never reaches 0
    assert loss.stats["num_triplets"] == 4 and loss.stats["active_fraction"] == 0.0
    hinge = BatchHardTripletLoss(margin=1.6, distance=LpDistance(normalize_embeddings=False))
    assert float(hinge(emb, labels)) == pytest.approx((0 + 0.6 + 0.1 + 0) / 4)
    assert hinge.stats["active_fraction"] == 0.5


def test_distance_weighted_miner_samples_by_inverse_density() -> None:
    emb, labels = batch(0, n_ids=4, k=4, dim=32)
    miner = DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4, seed=0)
    a, p, n = miner(emb, labels)
    assert torch.all(labels[a] == labels[p]) and torch.all(labels[a] != labels[n]) and torch.all(a != p)
    assert len(a) == 4 * 4 * 3  # one negative per positive pair
    # weights equal the formula (slow reference) for one anchor
    d = LpDistance()(emb)
    neg = labels[:, None] != labels[None]
    w = miner.weights(d, neg, 32)[0]
    ref = []
    for j in range(len(labels)):
        dj = max(float(d[0, j]), 0.5)
        ok = bool(neg[0, j]) and float(d[0, j]) < 1.4
        ref.append(math.exp((2 - 32) * math.log(dj) - (29 / 2) * math.log(1 - dj * dj / 4)) if ok else 0.0)
    ref = torch.tensor(ref, dtype=torch.float64)
    torch.testing.assert_close((w / w.sum()).double(), ref / ref.sum(), rtol=1e-4, atol=1e-8)
    with pytest.raises(ConfigError):
        DistanceWeightedMiner(distance=CosineSimilarity())


@pytest.mark.parametrize(
    "make",
    [
        lambda: TripletMarginLoss(0.2),
        lambda: BatchHardTripletLoss(0.3),
        lambda: ContrastiveLoss(),
        lambda: CenterLoss(3, 8),
        lambda: ArcFaceLoss(3, 8),
        lambda: CosFaceLoss(3, 8),
        lambda: CrossEntropyLoss(3, 8),
    ],
)
def test_edge_cases_never_nan(make) -> None:
    loss = make()
    cases = [
        (torch.randn(4, 8), torch.tensor([0, 0, 0, 0])),  # one identity
        (torch.randn(4, 8), torch.tensor([0, 1, 2, 2])),  # identities with one image
        (torch.ones(4, 8), torch.tensor([0, 0, 1, 1])),  # all-equal embeddings
        (torch.zeros(4, 8), torch.tensor([0, 0, 1, 1])),  # all-zero embeddings
    ]
    for emb, labels in cases:
        emb = emb.clone().requires_grad_(True)
        value = loss(emb, labels)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(emb.grad).all()
    emb = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(emb.to(torch.bfloat16), torch.tensor([0, 0, 1, 1]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all()
    with pytest.raises(LossInputError, match="4 embeddings but 3 labels"):
        loss(torch.randn(4, 8), torch.tensor([0, 1, 2]))
    with pytest.raises(LossInputError, match="2-D"):
        loss(torch.randn(8), torch.tensor([0]))


def test_classifier_label_range_error() -> None:
    with pytest.raises(LossInputError, match=r"labels \[5\] outside \[0, 3\)"):
        CrossEntropyLoss(3, 4)(torch.randn(2, 4), torch.tensor([0, 5]))


def test_combined_bot_recipe_from_config() -> None:
    terms = [
        {"name": "cross_entropy", "weight": 1.0, "label_smoothing": 0.1, "input": "bn_features"},
        {
            "name": "triplet",
            "weight": 1.0,
            "margin": 0.3,
            "reduction": "mean",
            "miner": "batch_hard",
            "distance": {"name": "euclidean", "normalize_embeddings": False},
            "input": "features",
        },
        {"name": "center", "weight": 0.0005, "input": "features", "lr": 0.5},
    ]
    combined = build_combined_loss(terms, num_classes=4, embedding_size=8)
    emb, labels = batch(0, n_ids=4, k=4, dim=8)
    out = {
        "features": emb.float().requires_grad_(True),
        "bn_features": (emb.float() * 2).requires_grad_(True),
    }
    total, values = combined(out, labels)
    expected = values["loss/cross_entropy"] + values["loss/triplet"] + 0.0005 * values["loss/center"]
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert "stats/triplet/miner_pos_dist_mean" in values and "stats/triplet/active_fraction" in values
    total.backward()
    groups = combined.param_groups(3.5e-4)
    assert [g["lr"] for g in groups] == [3.5e-4, 0.5]
    with pytest.raises(ConfigError, match="unknown option"):
        build_combined_loss([{"name": "triplet", "marginn": 0.3}])
    with pytest.raises(ConfigError, match="unknown loss 'tripplet'"):
        build_combined_loss([{"name": "tripplet"}])
    with pytest.raises(ConfigError, match="input must be one of"):
        build_combined_loss([{"name": "triplet", "input": "logits"}])
