"""Ranking metrics for re-ID: CMC, mAP and mINP under the Market-1501 protocol, vectorised.

Protocol (as torchreid's ``evaluate_rank``): gallery items sorted by ascending distance; for each query the
gallery items with the same person id *and* the same camera are removed (junk); queries left with no true
match are skipped. A camera id of ``UNKNOWN_CAMERA`` (-1, identity folders without cameras) never counts as
"the same camera": for such pairs only the query's own image is removed, recognised by ``q_items`` /
``g_items`` when given (and nothing when they are not: query and gallery are then disjoint sets).
CMC is averaged over valid queries, AP is the mean of precision at each true match, and INP (Ye et al., 2021)
is ``num_matches / (rank of the last match)``. Ties are broken by gallery order (stable sort). Queries are
processed in chunks so memory stays at a few hundred MB for Market-sized problems.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from reid.errors import ReidError

logger = logging.getLogger(__name__)

# Same value as reid.data.records.UNKNOWN_CAMERA (tests check it); defined here so that metrics need no data code.
UNKNOWN_CAMERA = -1


class EvaluationError(ReidError):
    """Inputs to an evaluation do not fit together (shapes, no valid query, ...)."""


@dataclass
class RankResult:
    cmc: np.ndarray  # (max_rank,) fraction of valid queries with a true match within rank r+1
    mAP: float
    mINP: float
    num_valid_queries: int
    num_queries: int
    extra: dict = field(default_factory=dict)

    def rank(self, r: int) -> float:
        return float(self.cmc[min(r, len(self.cmc)) - 1])

    @property
    def rank1(self) -> float:
        return self.rank(1)

    def as_dict(self, ranks: tuple[int, ...] = (1, 5, 10, 20)) -> dict[str, float]:
        out = {f"rank{r}": self.rank(r) for r in ranks if r <= len(self.cmc)}
        out.update(mAP=float(self.mAP), mINP=float(self.mINP), valid_queries=self.num_valid_queries)
        return out

    def __str__(self) -> str:
        parts = [f"mAP {self.mAP:.2%}", f"mINP {self.mINP:.2%}"]
        parts += [f"R{r} {self.rank(r):.2%}" for r in (1, 5, 10, 20) if r <= len(self.cmc)]
        return " | ".join(parts)


def junk_mask(
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    gp: np.ndarray,
    gc: np.ndarray,
    q_items: np.ndarray | None = None,
    gi: np.ndarray | None = None,
) -> np.ndarray:
    """(queries x gallery) True where a gallery item is removed for a query: same person in the same *known*
    camera, or the query's own image (same item id). ``gp``/``gc``/``gi`` are gallery pids/cameras/items,
    already indexed per query (2-D, e.g. in ranked order)."""
    q_pids, q_camids = q_pids[:, None], q_camids[:, None]
    known = (q_camids != UNKNOWN_CAMERA) & (gc != UNKNOWN_CAMERA)
    junk = (gp == q_pids) & (gc == q_camids) & known
    if q_items is not None and gi is not None:
        junk |= gi == q_items[:, None]
    return junk


def _check(distmat, q_pids, g_pids, q_camids, g_camids) -> tuple[np.ndarray, ...]:
    d = distmat.detach().cpu().numpy() if isinstance(distmat, torch.Tensor) else np.asarray(distmat)
    if d.ndim != 2:
        raise EvaluationError(f"distmat must be 2-D (queries x gallery), got shape {d.shape}")
    arrays = [np.asarray(a).reshape(-1) for a in (q_pids, g_pids, q_camids, g_camids)]
    names = ("q_pids", "g_pids", "q_camids", "g_camids")
    expected = (d.shape[0], d.shape[1], d.shape[0], d.shape[1])
    for name, a, n in zip(names, arrays, expected):
        if len(a) != n:
            raise EvaluationError(
                f"{name} has {len(a)} entries but distmat has shape {d.shape} (expected {n})"
            )
    if np.isnan(d).any():
        raise EvaluationError("distmat contains NaN")
    return (d, *arrays)


def evaluate_rank(
    distmat: np.ndarray | torch.Tensor,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    chunk: int = 256,
    q_items: np.ndarray | list | None = None,
    g_items: np.ndarray | list | None = None,
) -> RankResult:
    """CMC / mAP / mINP of a query x gallery *distance* matrix (smaller = more similar).

    ``q_items`` / ``g_items``: optional ids of the images (e.g. paths), so that a query's own image is removed
    from a gallery that holds it even when its camera is unknown (the same-camera rule removes it otherwise).
    """
    d, q_pids, g_pids, q_camids, g_camids = _check(distmat, q_pids, g_pids, q_camids, g_camids)
    if (q_items is None) != (g_items is None):
        raise EvaluationError(
            "q_items and g_items must be given together (ids of the query and gallery images)"
        )
    if q_items is not None:
        q_items, g_items = np.asarray(q_items).reshape(-1), np.asarray(g_items).reshape(-1)
        if len(q_items) != d.shape[0] or len(g_items) != d.shape[1]:
            raise EvaluationError(
                f"q_items/g_items have {len(q_items)}/{len(g_items)} entries but distmat has shape {d.shape}"
            )
    num_q, num_g = d.shape
    if num_g < max_rank:
        logger.info("gallery has only %d items; CMC is cut at that rank", num_g)
        max_rank = num_g
    dt = torch.from_numpy(np.ascontiguousarray(d))
    first_hit = np.full(num_q, -1, dtype=np.int64)
    ap = np.zeros(num_q, dtype=np.float64)
    inp = np.zeros(num_q, dtype=np.float64)
    for s in range(0, num_q, chunk):
        e = min(s + chunk, num_q)
        order = torch.sort(dt[s:e], dim=1, stable=True).indices.numpy()
        gp, gc = g_pids[order], g_camids[order]
        same_pid = gp == q_pids[s:e, None]
        gi = None if g_items is None else g_items[order]
        qi = None if q_items is None else q_items[s:e]
        keep = ~junk_mask(q_pids[s:e], q_camids[s:e], gp, gc, qi, gi)
        match = same_pid & keep
        kept_rank = np.cumsum(keep, axis=1)  # 1-based rank among kept items (valid where keep)
        n_rel = match.sum(axis=1)
        hits_so_far = np.cumsum(match, axis=1)
        valid = n_rel > 0
        # AP: mean over true matches of (matches so far) / (kept rank)
        prec = np.where(match, hits_so_far / np.maximum(kept_rank, 1), 0.0)
        ap[s:e] = np.where(valid, prec.sum(axis=1) / np.maximum(n_rel, 1), 0.0)
        first = np.argmax(match, axis=1)  # column of the first true match
        first_hit[s:e] = np.where(valid, kept_rank[np.arange(e - s), first] - 1, -1)
        last = num_g - 1 - np.argmax(match[:, ::-1], axis=1)
        inp[s:e] = np.where(valid, n_rel / np.maximum(kept_rank[np.arange(e - s), last], 1), 0.0)
    valid = first_hit >= 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise EvaluationError(
            "no query has a true match in the gallery"
            " (after removing same-camera matches and the queries' own images)"
        )
    hist = np.bincount(first_hit[valid], minlength=num_g)[:max_rank]
    cmc = (np.cumsum(hist) / n_valid).astype(np.float32)
    return RankResult(cmc, float(ap[valid].mean()), float(inp[valid].mean()), n_valid, num_q)
