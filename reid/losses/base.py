"""Loss base class: ``loss(embeddings, labels, indices_tuple=None) -> scalar`` (pytorch-metric-learning's shape)."""

from __future__ import annotations

import torch
from torch import nn

from reid.errors import ConfigError
from reid.utils.checks import check_embeddings_labels
from reid.utils.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")

REDUCTIONS = ("mean", "mean_nonzero", "sum")


def reduce(losses: torch.Tensor, reduction: str, anchor: torch.Tensor) -> torch.Tensor:
    """``mean`` over all terms, ``mean_nonzero`` over terms > 0 (pytorch-metric-learning's AvgNonZeroReducer),
    or ``sum``. With no terms the result is a zero that still carries a gradient path (``anchor.sum() * 0``)."""
    if losses.numel() == 0:
        return anchor.sum() * 0.0
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    nonzero = losses > 0
    if not nonzero.any():
        return losses.sum() * 0.0
    return losses[nonzero].mean()


class BaseLoss(nn.Module):
    """Checks inputs, computes in float32 (safe under fp16/bf16 autocast), keeps ``stats`` of the last call."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.stats: dict[str, float] = {}

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor:
        check_embeddings_labels(embeddings, labels, type(self).__name__)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self.compute(embeddings.float(), labels, indices_tuple)

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple[torch.Tensor, ...] | None
    ) -> torch.Tensor:
        raise NotImplementedError
