"""How a person's several templates score a query: ``centroid`` (cosine to their normalised mean template),
``max`` (the best template) or ``mean`` (the mean similarity). One template: all three are its similarity.

The gallery ranks persons with these (``gallery.cache``), and the calibration that sets a model's decision on
validation identities scores its simulated persons the same way (``open_set_decision``), so a threshold is
measured under the aggregation it is used with.
"""

from __future__ import annotations

import numpy as np

from reid.metrics.rank import EvaluationError

AGGREGATIONS = ("centroid", "max", "mean")
# Faces: the centroid, chosen on validation identities (CelebA, dlib flip embeddings, 3 photos per person,
# 1 % strangers: 87.3 % named against 81.6 % for the best photo). Bodies: the best template, because a person's
# body templates may hold different clothes (camera tracks, bodies linked by a face) whose mean matches none
# of them; cuhk03-np's validation identities favoured the centroid too (32.3 vs 29.8 % named with 3 images),
# but each wears one outfit there, so that data cannot speak for a store's. benchmarks/aggregation_choice.py.
DEFAULT_AGGREGATION = {"face": "centroid", "body": "max"}


def _check(how: str) -> None:
    if how not in AGGREGATIONS:
        raise EvaluationError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")


def aggregate(vectors: np.ndarray, q: np.ndarray, how: str) -> float:
    """One person's score for the unit query ``q`` (D,) from their unit templates ``vectors`` (n, D)."""
    _check(how)
    if how == "centroid":
        c = vectors.sum(axis=0)
        return float(c @ q / max(float(np.linalg.norm(c)), 1e-12))
    sims = vectors @ q
    return float(sims.mean() if how == "mean" else sims.max())


def person_scores(queries: np.ndarray, templates: np.ndarray, owner: np.ndarray, how: str) -> np.ndarray:
    """(queries, persons) scores, vectorised: person ``j`` owns the templates where ``owner == j``
    (``owner`` holds 0..P-1); equal to :func:`aggregate` per person."""
    _check(how)
    persons = int(owner.max()) + 1 if len(owner) else 0
    if how == "centroid":
        c = np.zeros((persons, templates.shape[1]), np.float64)
        np.add.at(c, owner, templates)
        c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        return queries @ c.T.astype(queries.dtype)
    sims = queries @ templates.T
    out = np.full((len(queries), persons), -np.inf)
    for j in range(persons):
        cols = sims[:, owner == j]
        out[:, j] = cols.mean(axis=1) if how == "mean" else cols.max(axis=1)
    return out
