"""Miner base class: ``miner(embeddings, labels, ref_emb=None, ref_labels=None) -> indices_tuple``."""

from __future__ import annotations

import torch
from torch import nn

from reid.distances import BaseDistance, build_distance
from reid.utils.checks import check_embeddings_labels


class BaseMiner(nn.Module):
    """Mines index tuples without gradients; ``stats`` holds numbers of the last call for logging."""

    def __init__(self, distance: BaseDistance | str | dict | None = None) -> None:
        super().__init__()
        self.distance = build_distance(distance)
        self.stats: dict[str, float] = {}

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        where = type(self).__name__
        check_embeddings_labels(embeddings, labels, where)
        if ref_emb is not None:
            check_embeddings_labels(ref_emb, ref_labels, f"{where} (ref)")
        with torch.no_grad():
            mat = self.distance(embeddings.detach(), None if ref_emb is None else ref_emb.detach())
            return self.mine(mat, labels, ref_labels)

    def mine(
        self, mat: torch.Tensor, labels: torch.Tensor, ref_labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _pair_stats(self, pos: torch.Tensor, neg: torch.Tensor) -> None:
        self.stats["pos_dist_mean"] = float(pos.mean()) if pos.numel() else 0.0
        self.stats["neg_dist_mean"] = float(neg.mean()) if neg.numel() else 0.0
