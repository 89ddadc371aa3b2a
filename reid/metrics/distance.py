"""Distance matrices between query and gallery features."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from reid.errors import ConfigError


def compute_distance_matrix(
    query: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor, metric: str = "euclidean"
) -> np.ndarray:
    """``euclidean``: squared L2 distance (as torchreid); ``cosine``: ``1 - cos``. Returns float32 numpy."""
    q = torch.as_tensor(query, dtype=torch.float32)
    g = torch.as_tensor(gallery, dtype=torch.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ConfigError(f"features must be (N, D) with equal D, got {tuple(q.shape)} and {tuple(g.shape)}")
    if metric == "euclidean":
        d = (q * q).sum(1, keepdim=True) + (g * g).sum(1)[None] - 2.0 * q @ g.T
        d = d.clamp_(min=0.0)
    elif metric == "cosine":
        d = 1.0 - F.normalize(q, dim=1) @ F.normalize(g, dim=1).T
    else:
        raise ConfigError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    return d.numpy()
