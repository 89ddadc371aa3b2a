"""Triplet losses: margin and soft margin, on any triplets (batch-hard, batch-all, semi-hard via miners)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reid.distances import build_distance
from reid.losses.base import LOSSES, BaseLoss, reduce
from reid.miners import BatchHardMiner, TripletMarginMiner, as_triplets


@LOSSES.register("triplet")
class TripletMarginLoss(BaseLoss):
    """``max(0, d(a,p) - d(a,n) + margin)`` per triplet, or with ``soft_margin`` ``softplus(d(a,p) - d(a,n) + margin)``
    (Hermans et al.'s soft margin is ``margin=0``).

    ``stats["active_fraction"]`` is the fraction of triplets that violate the margin (d_ap - d_an + margin > 0).
    Without ``indices_tuple`` every valid triplet of the batch is used (batch-all). Pairs from a pair miner are
    turned into triplets sharing the anchor. Default reduction ``mean_nonzero`` (mean over active triplets) as
    pytorch-metric-learning; ``mean`` averages over all mined triplets as torchreid/BoT.
    """

    def __init__(
        self,
        margin: float = 0.05,
        soft_margin: bool = False,
        distance=None,
        reduction: str = "mean_nonzero",
        miner=None,
    ) -> None:
        super().__init__(reduction)
        self.margin, self.soft_margin = margin, soft_margin
        self.distance = build_distance(distance)
        self.miner = miner

    def compute(self, embeddings, labels, indices_tuple):
        if indices_tuple is None and self.miner is not None:
            indices_tuple = self.miner(embeddings, labels)
        a, p, n = as_triplets(indices_tuple, labels)
        mat = self.distance(embeddings)
        ap, an = mat[a, p], mat[a, n]
        violation = self.distance.margin(ap, an) + self.margin
        losses = F.softplus(violation) if self.soft_margin else F.relu(violation)
        with torch.no_grad():
            self.stats = {
                "num_triplets": float(a.numel()),
                "active_fraction": float((violation > 0).float().mean()) if a.numel() else 0.0,
                "pos_dist_mean": float(ap.mean()) if a.numel() else 0.0,
                "neg_dist_mean": float(an.mean()) if a.numel() else 0.0,
            }
        return reduce(losses, self.reduction, embeddings)


@LOSSES.register("triplet_batch_hard")
class BatchHardTripletLoss(TripletMarginLoss):
    """Triplet loss on each anchor's hardest positive and negative (the re-ID default, margin 0.3)."""

    def __init__(
        self, margin: float = 0.3, soft_margin: bool = False, distance=None, reduction: str = "mean"
    ):
        distance = build_distance(distance)
        super().__init__(margin, soft_margin, distance, reduction, miner=BatchHardMiner(distance=distance))


@LOSSES.register("triplet_batch_all")
class BatchAllTripletLoss(TripletMarginLoss):
    """Triplet loss averaged over all active triplets of the batch."""

    def __init__(
        self, margin: float = 0.3, soft_margin: bool = False, distance=None, reduction="mean_nonzero"
    ):
        super().__init__(margin, soft_margin, distance, reduction)


@LOSSES.register("triplet_semihard")
class SemiHardTripletLoss(TripletMarginLoss):
    """Triplet loss on semi-hard triplets (negative farther than the positive but within the margin)."""

    def __init__(
        self, margin: float = 0.2, soft_margin: bool = False, distance=None, reduction="mean_nonzero"
    ):
        distance = build_distance(distance)
        miner = TripletMarginMiner(margin, "semihard", distance=distance)
        super().__init__(margin, soft_margin, distance, reduction, miner=miner)
