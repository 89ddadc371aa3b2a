"""Contrastive loss on pairs with a positive and a negative margin (Hadsell et al., 2006)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reid.distances import build_distance
from reid.losses.base import LOSSES, BaseLoss, reduce
from reid.miners import as_pairs


@LOSSES.register("contrastive")
class ContrastiveLoss(BaseLoss):
    """Positive pairs pay ``max(0, d - pos_margin)``, negative pairs ``max(0, neg_margin - d)`` (for similarities:
    ``max(0, pos_margin - s)`` and ``max(0, s - neg_margin)``). Each side is reduced on its own, then summed,
    as pytorch-metric-learning. Triplets from a triplet miner become their (a, p) and (a, n) pairs."""

    def __init__(
        self,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        distance=None,
        reduction: str = "mean_nonzero",
        miner=None,
    ) -> None:
        super().__init__(reduction)
        self.pos_margin, self.neg_margin = pos_margin, neg_margin
        self.distance = build_distance(distance)
        self.miner = miner

    def compute(self, embeddings, labels, indices_tuple):
        if indices_tuple is None and self.miner is not None:
            indices_tuple = self.miner(embeddings, labels)
        a1, p, a2, n = as_pairs(indices_tuple, labels)
        mat = self.distance(embeddings)
        pd, nd = mat[a1, p], mat[a2, n]
        pos_loss = F.relu(self.distance.margin(pd, torch.full_like(pd, self.pos_margin)))
        neg_loss = F.relu(self.distance.margin(torch.full_like(nd, self.neg_margin), nd))
        with torch.no_grad():
            self.stats = {
                "num_pos_pairs": float(pd.numel()),
                "num_neg_pairs": float(nd.numel()),
                "pos_dist_mean": float(pd.mean()) if pd.numel() else 0.0,
                "neg_dist_mean": float(nd.mean()) if nd.numel() else 0.0,
                "active_fraction": float(torch.cat([pos_loss, neg_loss]).gt(0).float().mean())
                if pd.numel() + nd.numel()
                else 0.0,
            }
        return reduce(pos_loss, self.reduction, embeddings) + reduce(neg_loss, self.reduction, embeddings)
