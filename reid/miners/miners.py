"""Miners: batch-hard, triplet-margin (all / hard / semi-hard / easy), all triplets, pair margins,
distance-weighted sampling. Each returns triplets ``(a, p, n)`` or pairs ``(a1, p, a2, n)``."""

from __future__ import annotations

import math

import torch

from reid.distances import BaseDistance
from reid.miners.base import BaseMiner
from reid.miners.tuples import all_pairs, all_triplets, label_masks
from reid.utils.registry import Registry

MINERS: Registry[BaseMiner] = Registry("miner")


@MINERS.register("batch_hard")
class BatchHardMiner(BaseMiner):
    """For each anchor, its farthest positive and closest negative (Hermans et al., 2017).

    Anchors without a positive (a single image of their identity) or without a negative are left out.
    """

    def mine(self, mat, labels, ref_labels):
        pos, neg = label_masks(labels, ref_labels)
        p_val, p_idx = self.distance.farthest(mat, pos)
        n_val, n_idx = self.distance.closest(mat, neg)
        keep = (p_idx >= 0) & (n_idx >= 0)
        a = torch.arange(len(labels), device=mat.device)[keep]
        self._pair_stats(p_val[keep], n_val[keep])
        self.stats["num_triplets"] = float(keep.sum())
        if keep.any():
            self.stats["fraction_hard"] = float(
                (self.distance.margin(p_val[keep], n_val[keep]) > 0).float().mean()
            )
        return a, p_idx[keep], n_idx[keep]


@MINERS.register("triplet_margin")
class TripletMarginMiner(BaseMiner):
    """Triplets by their margin ``m = d(a, n) - d(a, p)`` (similarities: the other way round):

    ``all``: m <= margin (violating); ``hard``: m <= 0; ``semihard``: 0 < m <= margin; ``easy``: m > margin.
    """

    TYPES = ("all", "hard", "semihard", "easy")

    def __init__(self, margin: float = 0.2, type_of_triplets: str = "all", distance=None) -> None:
        super().__init__(distance)
        from reid.errors import ConfigError

        if type_of_triplets not in self.TYPES:
            raise ConfigError(f"type_of_triplets must be one of {self.TYPES}, got {type_of_triplets!r}")
        self.margin, self.type_of_triplets = margin, type_of_triplets

    def mine(self, mat, labels, ref_labels):
        a, p, n = all_triplets(labels, ref_labels)
        ap, an = mat[a, p], mat[a, n]
        m = self.distance.margin(an, ap)
        if self.type_of_triplets == "easy":
            keep = m > self.margin
        else:
            keep = m <= self.margin
            if self.type_of_triplets == "hard":
                keep &= m <= 0
            elif self.type_of_triplets == "semihard":
                keep &= m > 0
        self._pair_stats(ap, an)
        self.stats["num_triplets"] = float(keep.sum())
        self.stats["fraction_kept"] = float(keep.float().mean()) if keep.numel() else 0.0
        return a[keep], p[keep], n[keep]


@MINERS.register("semihard")
class SemiHardMiner(TripletMarginMiner):
    def __init__(self, margin: float = 0.2, distance=None) -> None:
        super().__init__(margin, "semihard", distance)


@MINERS.register("all_triplets")
class AllTripletsMiner(BaseMiner):
    def mine(self, mat, labels, ref_labels):
        a, p, n = all_triplets(labels, ref_labels)
        self._pair_stats(mat[a, p], mat[a, n])
        self.stats["num_triplets"] = float(a.numel())
        return a, p, n


@MINERS.register("pair_margin")
class PairMarginMiner(BaseMiner):
    """Positive pairs farther than ``pos_margin`` and negative pairs closer than ``neg_margin``."""

    def __init__(self, pos_margin: float = 0.2, neg_margin: float = 0.8, distance=None) -> None:
        super().__init__(distance)
        self.pos_margin, self.neg_margin = pos_margin, neg_margin

    def mine(self, mat, labels, ref_labels):
        a1, p, a2, n = all_pairs(labels, ref_labels)
        pd, nd = mat[a1, p], mat[a2, n]
        if self.distance.is_inverted:
            pk, nk = pd < self.pos_margin, nd > self.neg_margin
        else:
            pk, nk = pd > self.pos_margin, nd < self.neg_margin
        self._pair_stats(pd, nd)
        self.stats["num_pos_pairs"], self.stats["num_neg_pairs"] = float(pk.sum()), float(nk.sum())
        return a1[pk], p[pk], a2[nk], n[nk]


@MINERS.register("distance_weighted")
class DistanceWeightedMiner(BaseMiner):
    """Distance-weighted sampling (Wu et al., "Sampling Matters in Deep Embedding Learning", ICCV 2017).

    On the unit sphere in R^D, pairwise distances follow ``q(d) ∝ d^(D-2) (1 - d²/4)^((D-3)/2)``; sampling
    negatives with weight ``1/q(d)`` (d clipped below at ``cutoff``, zero weight from ``nonzero_loss_cutoff``
    on, where the loss would be zero anyway) spreads them over all distances. One negative is drawn for every
    positive pair; an anchor whose weights are all zero draws uniformly among its negatives. Needs normalised
    Euclidean distance.
    """

    def __init__(
        self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4, distance=None, seed: int | None = None
    ):
        super().__init__(distance)
        from reid.errors import ConfigError

        if self.distance.is_inverted or not self.distance.normalize_embeddings:
            raise ConfigError("distance_weighted miner needs normalised euclidean distance")
        self.cutoff, self.nonzero_loss_cutoff = cutoff, nonzero_loss_cutoff
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def weights(self, mat: torch.Tensor, neg: torch.Tensor, dim: int) -> torch.Tensor:
        d = mat.clamp(min=self.cutoff)
        log_w = (2.0 - dim) * torch.log(d) - ((dim - 3) / 2.0) * torch.log(
            (1.0 - 0.25 * d * d).clamp(min=1e-8)
        )
        allowed = neg & (mat < self.nonzero_loss_cutoff)
        log_w = log_w.masked_fill(~allowed, -math.inf)
        row_max = log_w.max(dim=1, keepdim=True).values
        w = torch.exp(log_w - torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)))
        w = torch.nan_to_num(w, nan=0.0) * allowed
        empty = w.sum(1) == 0
        w[empty] = neg[empty].float()  # uniform fallback
        return w

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        self._dim = embeddings.shape[1]
        return super().forward(embeddings, labels, ref_emb, ref_labels)

    def mine(self, mat, labels, ref_labels):
        pos, neg = label_masks(labels, ref_labels)
        w = self.weights(mat, neg, self._dim)
        a, p = pos.nonzero(as_tuple=True)
        has_neg = w[a].sum(1) > 0
        a, p = a[has_neg], p[has_neg]
        if a.numel() == 0:
            e = a.new_empty(0)
            return e, e, e
        n = torch.multinomial(w[a], 1, generator=self.generator).squeeze(1)
        self._pair_stats(mat[a, p], mat[a, n])
        self.stats["num_triplets"] = float(a.numel())
        return a, p, n


def build_miner(spec: str | dict | None, distance: BaseDistance | None = None) -> BaseMiner | None:
    """``"batch_hard"`` or ``{"name": "triplet_margin", "margin": 0.1, "type_of_triplets": "semihard"}``."""
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name")
    if distance is not None and "distance" not in spec:
        spec["distance"] = distance
    return MINERS.build(name, **spec)
