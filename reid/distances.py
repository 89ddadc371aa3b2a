"""Distances between embeddings, with one convention for miners and losses.

``is_inverted`` tells the direction: False for distances (smaller = closer), True for similarities
(larger = closer). ``margin(x, y)`` is how much farther ``x`` is than ``y`` in that convention. Computation is in
float32 even under autocast, so fp16/bf16 training cannot overflow or NaN here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reid.utils.registry import Registry

DISTANCES: Registry[nn.Module] = Registry("distance")


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with zero gradient at 0 (identical embeddings) instead of inf/NaN."""
    positive = x > 0
    return torch.where(positive, x, torch.ones_like(x)).sqrt() * positive


class BaseDistance(nn.Module):
    is_inverted = False

    def __init__(self, normalize_embeddings: bool = True) -> None:
        super().__init__()
        self.normalize_embeddings = normalize_embeddings

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return F.normalize(x, dim=1) if self.normalize_embeddings else x

    def forward(self, query: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        q = self.prepare(query)
        r = q if ref is None else self.prepare(ref)
        return self.matrix(q, r)

    def matrix(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """How much farther ``x`` is than ``y`` (positive when ``x`` is the farther one)."""
        return y - x if self.is_inverted else x - y

    def closest(
        self, values: torch.Tensor, mask: torch.Tensor, dim: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Closest entries along ``dim`` among ``mask`` (value, index); rows with no entry get index -1."""
        fill = -torch.inf if self.is_inverted else torch.inf
        masked = values.masked_fill(~mask, fill)
        v, i = masked.max(dim) if self.is_inverted else masked.min(dim)
        return v, torch.where(mask.any(dim), i, torch.full_like(i, -1))

    def farthest(
        self, values: torch.Tensor, mask: torch.Tensor, dim: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fill = torch.inf if self.is_inverted else -torch.inf
        masked = values.masked_fill(~mask, fill)
        v, i = masked.min(dim) if self.is_inverted else masked.max(dim)
        return v, torch.where(mask.any(dim), i, torch.full_like(i, -1))


@DISTANCES.register("euclidean")
class LpDistance(BaseDistance):
    """``(sum |x - y|^p)^(1/p)`` raised to ``power`` (p=2, power=1: Euclidean; power=2: squared)."""

    def __init__(self, normalize_embeddings: bool = True, p: float = 2, power: float = 1) -> None:
        super().__init__(normalize_embeddings)
        self.p, self.power = p, power

    def matrix(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if self.p == 2:
            sq = (q * q).sum(1, keepdim=True) + (r * r).sum(1)[None] - 2.0 * q @ r.T
            sq = sq.clamp(min=0.0)
            return sq if self.power == 2 else _safe_sqrt(sq) ** self.power
        return torch.cdist(q, r, p=self.p) ** self.power


@DISTANCES.register("cosine")
class CosineSimilarity(BaseDistance):
    """Cosine similarity (larger = closer); embeddings are always normalised."""

    is_inverted = True

    def __init__(self, normalize_embeddings: bool = True) -> None:
        super().__init__(True)

    def matrix(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return q @ r.T


def build_distance(spec: str | dict | BaseDistance | None) -> BaseDistance:
    """``"euclidean"``, ``"cosine"``, ``{"name": "euclidean", "normalize_embeddings": False}`` or an instance."""
    if spec is None:
        return LpDistance()
    if isinstance(spec, BaseDistance):
        return spec
    if isinstance(spec, str):
        return DISTANCES.build(spec)
    spec = dict(spec)
    return DISTANCES.build(spec.pop("name"), **spec)
