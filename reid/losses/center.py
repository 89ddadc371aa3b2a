"""Center loss (Wen et al., ECCV 2016): pulls each embedding towards a learnable center of its class."""

from __future__ import annotations

import torch
from torch import nn

from reid.errors import LossInputError
from reid.losses.base import LOSSES, BaseLoss


@LOSSES.register("center")
class CenterLoss(BaseLoss):
    """``(1/B) * sum_i ||x_i - c_{y_i}||^2`` (the Bag-of-Tricks form; Wen et al. write it with a factor 1/2).

    The centers are parameters: give them their own optimizer parameter group with ``param_groups(lr)``
    (BoT uses SGD with lr 0.5 for centers, and the loss weight 0.0005 beside the ID and triplet losses).
    Usable beside any other loss: it reads the same embeddings.
    """

    def __init__(self, num_classes: int, embedding_size: int, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.num_classes = num_classes
        self.centers = nn.Parameter(torch.randn(num_classes, embedding_size))

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": [self.centers], "lr": lr, "weight_decay": 0.0, "name": "center"}]

    def compute(self, embeddings, labels, indices_tuple):
        if embeddings.shape[1] != self.centers.shape[1]:
            raise LossInputError(
                f"CenterLoss: embeddings have dim {embeddings.shape[1]}, centers {self.centers.shape[1]}"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise LossInputError(
                f"CenterLoss: labels must be in [0, {self.num_classes}), got {labels.tolist()}"
            )
        diff = embeddings - self.centers[labels]
        per_sample = (diff * diff).sum(1)
        with torch.no_grad():
            self.stats = {"center_dist_mean": float(per_sample.sqrt().mean()) if per_sample.numel() else 0.0}
        if per_sample.numel() == 0:
            return embeddings.sum() * 0.0
        return per_sample.sum() if self.reduction == "sum" else per_sample.mean()
