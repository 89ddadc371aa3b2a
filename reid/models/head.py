"""Embedding head: pooling (GeM or average), optional projection, BNNeck."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ConfigError


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al. 2018): ``(mean x^p)^(1/p)``; p=1 is average pooling.

    ``p`` is learnable unless ``learn_p=False``.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class AvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class EmbeddingHead(nn.Module):
    """Feature map ``(N, C, h, w)`` -> ``features`` (pooled, projected) and ``bn_features`` (after BNNeck).

    BNNeck (Luo et al., "Bag of Tricks", 2019) is a BatchNorm1d whose bias is frozen at 0, so the ID loss sees a
    normalised feature while the metric loss sees the raw one; inference uses ``bn_features``.
    """

    def __init__(
        self,
        in_channels: int,
        embedding_dim: int | None = None,
        pooling: str = "avg",
        gem_p: float = 3.0,
        bnneck: bool = True,
    ) -> None:
        super().__init__()
        if pooling == "gem":
            self.pool: nn.Module = GeM(gem_p)
        elif pooling == "avg":
            self.pool = AvgPool()
        else:
            raise ConfigError(f"model.pooling must be 'gem' or 'avg', got {pooling!r}")
        self.projection: nn.Module = nn.Identity()
        dim = in_channels
        if embedding_dim and embedding_dim != in_channels:
            lin = nn.Linear(in_channels, embedding_dim, bias=False)
            nn.init.kaiming_normal_(lin.weight, mode="fan_out")
            self.projection = lin
            dim = embedding_dim
        self.embedding_dim = dim
        self.bnneck: nn.Module = nn.Identity()
        if bnneck:
            bn = nn.BatchNorm1d(dim)
            bn.bias.requires_grad_(False)
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)
            self.bnneck = bn

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.projection(self.pool(fmap))
        return f, self.bnneck(f)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)
