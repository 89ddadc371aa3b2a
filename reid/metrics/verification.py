"""Pair verification: LFW 10-fold accuracy, ROC, AUC and TAR at fixed FAR.

Scores are similarities (higher = more likely the same person). Flip-averaged embeddings are an Embedder
option (``flip=True``); nothing here depends on how the scores were made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reid.metrics.open_set import threshold_at_far
from reid.metrics.rank import EvaluationError


def _check_pairs(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).astype(bool).reshape(-1)
    if s.shape != y.shape:
        raise EvaluationError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if np.isnan(s).any():
        raise EvaluationError("scores contain NaN")
    if y.all() or not y.any():
        raise EvaluationError("verification needs both genuine (same) and impostor (different) pairs")
    return s, y


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, TAR, thresholds) for every distinct threshold ``score >= t``, from the strictest down."""
    s, y = _check_pairs(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    distinct = np.r_[np.where(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    far = np.r_[0.0, fp / (~y).sum()]
    tar = np.r_[0.0, tp / y.sum()]
    thr = np.r_[np.inf, s[distinct]]
    return far, tar, thr


def roc_auc(scores, labels) -> float:
    far, tar, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tar, far))


def tar_at_far(scores, labels, far: float) -> tuple[float, float]:
    """TAR at the largest false-accept rate not above ``far``, and the threshold giving it.

    With N impostor pairs the reachable FARs are multiples of 1/N: the threshold is the smallest score
    ``t`` such that at most ``floor(far * N)`` impostors score ``>= t`` (so FAR <= target, never above).
    """
    s, y = _check_pairs(scores, labels)
    thr = threshold_at_far(s[~y], far)
    return float((s[y] >= thr).mean()), thr


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising accuracy of ``score >= t`` (midpoint between neighbouring scores)."""
    s, y = _check_pairs(scores, labels)
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    # accept everything from index i on: correct = impostors below i + genuines from i
    neg_below = np.r_[0, np.cumsum(~y)]
    pos_from = np.r_[np.cumsum(y[::-1])[::-1], 0]
    correct = neg_below + pos_from
    valid = np.r_[True, s[1:] != s[:-1], True]  # can only cut between distinct scores
    correct = np.where(valid, correct, -1)
    i = int(np.argmax(correct))
    if i == 0:
        return float(s[0] - 1e-6)
    if i == s.size:
        return float(s[-1] + 1e-6)
    return float((s[i - 1] + s[i]) / 2.0)


@dataclass
class VerificationResult:
    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    auc: float
    tar_at_far: dict[float, float] = field(default_factory=dict)
    threshold_at_far: dict[float, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "accuracy_mean": self.accuracy_mean,
            "accuracy_std": self.accuracy_std,
            "fold_accuracies": self.fold_accuracies,
            "fold_thresholds": self.fold_thresholds,
            "auc": self.auc,
            "tar_at_far": {str(k): v for k, v in self.tar_at_far.items()},
            "threshold_at_far": {str(k): v for k, v in self.threshold_at_far.items()},
        }

    def __str__(self) -> str:
        tars = ", ".join(f"TAR@FAR={k:g}: {v:.2%}" for k, v in self.tar_at_far.items())
        return f"accuracy {self.accuracy_mean:.2%} ± {self.accuracy_std:.2%} | AUC {self.auc:.4f} | {tars}"


def kfold_verification(scores, labels, folds, fars: tuple[float, ...] = (1e-2, 1e-3)) -> VerificationResult:
    """LFW protocol: for each fold, the threshold that maximises accuracy on the other folds is applied to it.

    Accuracy std is the population std over folds (numpy default), as most LFW reports.
    """
    s, y = _check_pairs(scores, labels)
    f = np.asarray(folds).reshape(-1)
    if f.shape != s.shape:
        raise EvaluationError(f"folds ({f.size}) and scores ({s.size}) differ in length")
    accs, thrs = [], []
    for k in np.unique(f):
        test = f == k
        t = best_threshold(s[~test], y[~test])
        accs.append(float(((s[test] >= t) == y[test]).mean()))
        thrs.append(t)
    tars, tthr = {}, {}
    for far in fars:
        tars[far], tthr[far] = tar_at_far(s, y, far)
    return VerificationResult(
        float(np.mean(accs)), float(np.std(accs)), accs, thrs, roc_auc(s, y), tars, tthr
    )


def pair_scores(embeddings: np.ndarray, index_a: np.ndarray, index_b: np.ndarray) -> np.ndarray:
    """Cosine similarity of pairs of rows of an L2-normalised embedding matrix."""
    e = np.asarray(embeddings, dtype=np.float32)
    return np.einsum("nd,nd->n", e[index_a], e[index_b]).astype(np.float64)
