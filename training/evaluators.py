"""Evaluators chosen by ``eval.type`` (a registry, as detectron2's): each turns an embedder and a split into the
metrics that are logged and that choose ``best.pt`` (``eval.metric``).

- ``rank``: re-ID CMC / mAP / mINP of the split's query against its gallery (optionally re-ranked).
- ``lfw``: LFW 10-fold verification (accuracy, AUC, TAR at FAR 1e-3); the split is not used.

Validation identities are always ranked (``rank``), whatever ``eval.type`` is: they are a query/gallery split
of training identities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from reid.data import ReidDataset, read_lfw
from reid.embedder import Embedder
from reid.errors import ConfigError
from reid.images import center_crop, read_image
from reid.metrics import evaluate_rank, kfold_verification, pair_scores, query_gallery_distances
from reid.utils.registry import Registry


class Evaluator(Protocol):
    def __call__(self, embedder: Embedder, split: ReidDataset) -> dict[str, float]: ...


EVALUATORS: Registry[Evaluator] = Registry("evaluator (eval.type)")


@EVALUATORS.register("rank")
class RankEvaluator:
    def __init__(self, ev: Mapping[str, Any], batch_size: int = 128) -> None:
        self.distance, self.rerank = ev["distance"], bool(ev["rerank"])
        self.max_queries, self.batch_size = ev.get("max_queries"), batch_size

    def __call__(self, embedder: Embedder, split: ReidDataset) -> dict[str, float]:
        q, g = split.query, split.gallery
        if self.max_queries:
            q = q[: int(self.max_queries)]
        if not q or not g:
            return {}
        qf = embedder.embed([r.path for r in q], batch_size=self.batch_size)
        gf = embedder.embed([r.path for r in g], batch_size=self.batch_size)
        dm = query_gallery_distances(qf, gf, self.distance, self.rerank)
        res = evaluate_rank(
            dm,
            np.array([r.pid for r in q]),
            np.array([r.pid for r in g]),
            np.array([r.camid for r in q]),
            np.array([r.camid for r in g]),
        )
        return {k: float(v) for k, v in res.as_dict().items() if k != "valid_queries"}


@EVALUATORS.register("lfw")
class LfwEvaluator:
    def __init__(self, ev: Mapping[str, Any], batch_size: int = 128) -> None:
        if not ev.get("lfw_root"):
            raise ConfigError("eval.type is 'lfw' but eval.lfw_root is not set")
        self.root, self.center_crop, self.batch_size = ev["lfw_root"], ev.get("lfw_center_crop"), batch_size

    def __call__(self, embedder: Embedder, split: ReidDataset) -> dict[str, float]:
        pairs = read_lfw(self.root)
        paths = pairs.image_paths()
        pos = {p: i for i, p in enumerate(paths)}
        images = (
            [center_crop(read_image(p), float(self.center_crop)) for p in paths]
            if self.center_crop
            else paths
        )
        emb = embedder.embed(images, batch_size=self.batch_size)
        scores = pair_scores(
            emb,
            np.array([pos[p.path_a] for p in pairs.pairs]),
            np.array([pos[p.path_b] for p in pairs.pairs]),
        )
        r = kfold_verification(scores, pairs.labels, pairs.folds)
        return {
            "accuracy": r.accuracy_mean,
            "accuracy_std": r.accuracy_std,
            "auc": r.auc,
            "tar@far1e-3": r.tar_at_far[1e-3],
        }


def build_evaluator(ev: Mapping[str, Any], batch_size: int, kind: str | None = None) -> Evaluator:
    return EVALUATORS.build(kind or ev["type"], ev=ev, batch_size=batch_size)
