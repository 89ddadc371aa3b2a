"""Classification losses that own their class weights: softmax cross-entropy (with label smoothing),
normalised softmax, CosFace and ArcFace margin-softmax heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reid.errors import ConfigError, LossInputError
from reid.losses.base import LOSSES, BaseLoss


class ClassifierLoss(BaseLoss):
    """Holds a class-weight matrix ``W`` (num_classes, embedding_size); per-sample cross-entropy, then mean.

    ``indices_tuple`` is accepted for the common call shape; classification uses every sample of the batch.
    """

    def __init__(self, num_classes: int, embedding_size: int, label_smoothing: float = 0.0) -> None:
        super().__init__("mean")
        if num_classes < 2:
            raise ConfigError(f"{type(self).__name__}: num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.W = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.W, std=0.01)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute(self, embeddings, labels, indices_tuple):
        if embeddings.shape[1] != self.W.shape[1]:
            raise LossInputError(
                f"{type(self).__name__}: embeddings have dim {embeddings.shape[1]}, the classifier expects {self.W.shape[1]}"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)].unique().tolist()
            raise LossInputError(f"{type(self).__name__}: labels {bad} outside [0, {self.num_classes})")
        if labels.numel() == 0:
            return embeddings.sum() * 0.0
        logits = self.logits(embeddings, labels)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            self.stats = {"accuracy": float((logits.argmax(1) == labels).float().mean())}
        return loss


@LOSSES.register("cross_entropy")
class CrossEntropyLoss(ClassifierLoss):
    """Linear classifier + softmax cross-entropy with label smoothing (the re-ID "ID loss"; BoT uses eps=0.1)."""

    def __init__(
        self, num_classes: int, embedding_size: int, label_smoothing: float = 0.1, bias: bool = False
    ):
        super().__init__(num_classes, embedding_size, label_smoothing)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

    def logits(self, embeddings, labels):
        return F.linear(embeddings, self.W, self.bias)


@LOSSES.register("normalized_softmax")
class NormalizedSoftmaxLoss(ClassifierLoss):
    """Cosine between normalised embeddings and class weights, divided by ``temperature`` (Zhai & Wu, 2018)."""

    def __init__(
        self, num_classes: int, embedding_size: int, temperature: float = 0.05, label_smoothing: float = 0.0
    ):
        super().__init__(num_classes, embedding_size, label_smoothing)
        self.temperature = temperature

    def logits(self, embeddings, labels):
        return F.normalize(embeddings, dim=1) @ F.normalize(self.W, dim=1).T / self.temperature


class MarginSoftmaxLoss(ClassifierLoss):
    """``scale * cos`` logits with a margin applied to the target class only."""

    def __init__(
        self, num_classes: int, embedding_size: int, margin: float, scale: float, label_smoothing=0.0
    ):
        super().__init__(num_classes, embedding_size, label_smoothing)
        self.margin, self.scale = margin, scale

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, embeddings, labels):
        cos = F.normalize(embeddings, dim=1) @ F.normalize(self.W, dim=1).T
        rows = torch.arange(len(labels), device=labels.device)
        target = cos[rows, labels]
        with torch.no_grad():
            self.stats["mean_target_angle_deg"] = float(torch.rad2deg(torch.acos(target.clamp(-1, 1))).mean())
        out = cos.clone()
        out[rows, labels] = self.target_logit(target)
        return out * self.scale

    def compute(self, embeddings, labels, indices_tuple):
        self.stats = {}
        loss = super().compute(embeddings, labels, indices_tuple)
        return loss


@LOSSES.register("cosface")
class CosFaceLoss(MarginSoftmaxLoss):
    """CosFace / large-margin cosine loss (Wang et al., 2018): target logit ``s * (cos - m)``."""

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 0.35,
        scale: float = 64.0,
        label_smoothing=0.0,
    ):
        super().__init__(num_classes, embedding_size, margin, scale, label_smoothing)

    def target_logit(self, cos):
        return cos - self.margin


@LOSSES.register("arcface")
class ArcFaceLoss(MarginSoftmaxLoss):
    """ArcFace / additive angular margin (Deng et al., CVPR 2019): target logit ``s * cos(theta + m)``; ``m`` in
    radians (0.5 = 28.6 degrees).

    ``cos(theta + m)`` is computed as ``cos*cos(m) - sin*sin(m)`` with ``sin = sqrt(1 - cos^2)`` clamped, which
    avoids ``acos``'s infinite gradient at ``cos = ±1`` (the numerically stable form). Beyond ``theta > pi - m`` the
    curve would rise again, so there it is replaced by ``cos - m*sin(m)`` (monotonic, as insightface). With
    ``easy_margin`` the margin is only applied where ``cos > 0``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 0.5,
        scale: float = 64.0,
        easy_margin: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(num_classes, embedding_size, margin, scale, label_smoothing)
        if not 0.0 <= margin < math.pi / 2:
            raise ConfigError(f"arcface margin is in radians and must be in [0, pi/2), got {margin}")
        self.easy_margin = easy_margin
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        self.threshold = math.cos(math.pi - margin)
        self.fallback = math.sin(math.pi - margin) * margin

    def target_logit(self, cos):
        sin = torch.sqrt((1.0 - cos * cos).clamp(min=1e-12))
        with_margin = cos * self.cos_m - sin * self.sin_m
        if self.easy_margin:
            return torch.where(cos > 0, with_margin, cos)
        return torch.where(cos > self.threshold, with_margin, cos - self.fallback)
