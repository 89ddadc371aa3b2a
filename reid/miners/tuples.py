"""Index tuples: triplets ``(a, p, n)`` and pairs ``(a1, p, a2, n)``, and conversions so any miner feeds any loss."""

from __future__ import annotations

import torch

from reid.errors import LossInputError

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Pairs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def label_masks(
    labels: torch.Tensor, ref_labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive mask, negative mask) of shape (N, M); without ``ref_labels`` the diagonal is not positive."""
    ref = labels if ref_labels is None else ref_labels
    same = labels[:, None] == ref[None, :]
    pos = same.clone()
    if ref_labels is None:
        pos.fill_diagonal_(False)
    return pos, ~same


def all_pairs(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> Pairs:
    pos, neg = label_masks(labels, ref_labels)
    a1, p = pos.nonzero(as_tuple=True)
    a2, n = neg.nonzero(as_tuple=True)
    return a1, p, a2, n


def all_triplets(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> Triplets:
    pos, neg = label_masks(labels, ref_labels)
    valid = pos[:, :, None] & neg[:, None, :]
    a, p, n = valid.nonzero(as_tuple=True)
    return a, p, n


def pairs_to_triplets(pairs: Pairs) -> Triplets:
    """Every (a, p) with every (a, n) that shares its anchor."""
    a1, p, a2, n = pairs
    if a1.numel() == 0 or a2.numel() == 0:
        empty = a1.new_empty(0)
        return empty, empty, empty
    match = a1[:, None] == a2[None, :]
    i, j = match.nonzero(as_tuple=True)
    return a1[i], p[i], n[j]


def triplets_to_pairs(triplets: Triplets) -> Pairs:
    """Distinct (a, p) and (a, n) pairs of the triplets."""
    a, p, n = triplets
    ap = torch.unique(torch.stack([a, p], 1), dim=0) if a.numel() else a.new_empty(0, 2)
    an = torch.unique(torch.stack([a, n], 1), dim=0) if a.numel() else a.new_empty(0, 2)
    return ap[:, 0], ap[:, 1], an[:, 0], an[:, 1]


def as_triplets(indices_tuple, labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> Triplets:
    if indices_tuple is None:
        return all_triplets(labels, ref_labels)
    if len(indices_tuple) == 3:
        return tuple(indices_tuple)  # type: ignore[return-value]
    if len(indices_tuple) == 4:
        return pairs_to_triplets(indices_tuple)
    raise LossInputError(
        f"indices_tuple must have 3 (a, p, n) or 4 (a1, p, a2, n) tensors, got {len(indices_tuple)}"
    )


def as_pairs(indices_tuple, labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> Pairs:
    if indices_tuple is None:
        return all_pairs(labels, ref_labels)
    if len(indices_tuple) == 4:
        return tuple(indices_tuple)  # type: ignore[return-value]
    if len(indices_tuple) == 3:
        return triplets_to_pairs(indices_tuple)
    raise LossInputError(
        f"indices_tuple must have 3 (a, p, n) or 4 (a1, p, a2, n) tensors, got {len(indices_tuple)}"
    )
