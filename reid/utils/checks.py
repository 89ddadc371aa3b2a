"""Input checks shared by losses and miners (shapes, dtypes), with messages that name the argument."""

from __future__ import annotations

import torch

from reid.errors import LossInputError


def check_embeddings_labels(
    embeddings: torch.Tensor, labels: torch.Tensor | None, where: str, labels_required: bool = True
) -> None:
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise LossInputError(f"{where}: embeddings must be a 2-D tensor (batch, dim), got {shape}")
    if labels is None:
        if labels_required:
            raise LossInputError(f"{where}: labels are required")
        return
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise LossInputError(f"{where}: labels must be a 1-D tensor, got {shape}")
    if labels.shape[0] != embeddings.shape[0]:
        raise LossInputError(
            f"{where}: {embeddings.shape[0]} embeddings but {labels.shape[0]} labels (sizes must match)"
        )
    if labels.dtype.is_floating_point:
        raise LossInputError(f"{where}: labels must be integers, got {labels.dtype}")
