"""Losses with one call shape, ``loss(embeddings, labels, indices_tuple=None)``, and their weighted sums."""

from reid.losses.base import LOSSES, BaseLoss
from reid.losses.center import CenterLoss
from reid.losses.classification import (
    ArcFaceLoss,
    CosFaceLoss,
    CrossEntropyLoss,
    NormalizedSoftmaxLoss,
)
from reid.losses.combined import CombinedLoss, LossTerm, build_combined_loss, build_loss
from reid.losses.contrastive import ContrastiveLoss
from reid.losses.triplet import (
    BatchAllTripletLoss,
    BatchHardTripletLoss,
    SemiHardTripletLoss,
    TripletMarginLoss,
)

__all__ = [
    "LOSSES",
    "ArcFaceLoss",
    "BaseLoss",
    "BatchAllTripletLoss",
    "BatchHardTripletLoss",
    "CenterLoss",
    "CombinedLoss",
    "ContrastiveLoss",
    "CosFaceLoss",
    "CrossEntropyLoss",
    "LossTerm",
    "NormalizedSoftmaxLoss",
    "SemiHardTripletLoss",
    "TripletMarginLoss",
    "build_combined_loss",
    "build_loss",
]
