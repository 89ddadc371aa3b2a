"""Metrics: rank (CMC/mAP/mINP), re-ranking and query expansion, verification, open-set identification."""

from reid.metrics.distance import compute_distance_matrix
from reid.metrics.open_set import (
    OpenSetResult,
    design_effect,
    open_set_identification,
    rate_interval,
    threshold_at_far,
)
from reid.metrics.rank import EvaluationError, RankResult, evaluate_rank
from reid.metrics.report import plot_cmc, plot_roc, write_json
from reid.metrics.reranking import k_reciprocal_rerank, query_expansion, query_gallery_distances
from reid.metrics.verification import (
    VerificationResult,
    best_threshold,
    kfold_verification,
    pair_scores,
    roc_auc,
    roc_curve,
    tar_at_far,
)

__all__ = [
    "EvaluationError",
    "OpenSetResult",
    "RankResult",
    "VerificationResult",
    "best_threshold",
    "compute_distance_matrix",
    "design_effect",
    "evaluate_rank",
    "k_reciprocal_rerank",
    "kfold_verification",
    "open_set_identification",
    "pair_scores",
    "plot_cmc",
    "plot_roc",
    "query_expansion",
    "query_gallery_distances",
    "rate_interval",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "threshold_at_far",
    "write_json",
]
