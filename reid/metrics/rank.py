"""Ranking metrics for re-ID: CMC, mAP and mINP under the Market-1501 protocol, without sorting the gallery.

Protocol (as torchreid's ``evaluate_rank``): gallery items sorted by ascending distance; for each query the
gallery items with the same person id *and* the same camera are removed (junk); queries left with no true
match are skipped. A camera id of ``UNKNOWN_CAMERA`` (-1, identity folders without cameras) never counts as
"the same camera": for such pairs only the query's own image is removed, recognised by ``q_items`` /
``g_items`` when given (and nothing when they are not: query and gallery are then disjoint sets).
CMC is averaged over valid queries, AP is the mean of precision at each true match, and INP (Ye et al., 2021)
is ``num_matches / (rank of the last match)``. Ties are broken by gallery order (as a stable sort would).

How: every metric only needs the rank of each true match among the kept items, so no row is sorted. Each
query's distances are cut into ``num_gallery / 4`` equal-width bins between the row's min and max (a monotone
map, so an item in a lower bin is always ranked before one in a higher bin); one histogram per row gives, for
every true match, the number of items in lower bins; the few items sharing a bin with a true match are
ordered exactly by (distance, gallery index), and the junk items ranked before each match are subtracted.
The true matches and junk of a query come from grouping the gallery by person (and image id), not from a
queries x gallery comparison. Work is O(gallery) per query with a handful of vectorised passes; blocks of
queries run on a thread pool (numpy releases the GIL in its array loops).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
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


def _group(codes: np.ndarray, n_codes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gallery positions grouped by code: (positions sorted by code, start and end of each code's run)."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    all_codes = np.arange(n_codes)
    return (
        order,
        np.searchsorted(sorted_codes, all_codes, "left"),
        np.searchsorted(sorted_codes, all_codes, "right"),
    )


def _pairs(q_codes: np.ndarray, groups: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(row, gallery position) of every gallery item whose code equals the row's query code."""
    order, starts, ends = groups
    first, count = starts[q_codes], ends[q_codes] - starts[q_codes]
    rows = np.repeat(np.arange(len(q_codes)), count)
    offset = np.arange(rows.size) - np.repeat(np.cumsum(count) - count, count)
    return rows, order[np.repeat(first, count) + offset]


def _ranks(
    v: np.ndarray, rows_p: np.ndarray, cols_p: np.ndarray, rows_j: np.ndarray, cols_j: np.ndarray, nbins: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each true match (rows_p, cols_p) of the block ``v`` (queries x gallery): its 1-based rank among the
    kept items (junk = (rows_j, cols_j) removed) and its index among the row's true matches (0 = best)."""
    b, n = v.shape
    flat = v.reshape(-1)
    pos_p = rows_p * n + cols_p
    # 1. bin = floor((v - row min) * nbins / row span): monotone in v, so lower bin => ranked earlier
    lo, hi = v.min(axis=1), v.max(axis=1)
    span = hi.astype(np.float64) - lo
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = nbins / span
    ok = np.isfinite(span) & (span > 0) & (scale < np.finfo(v.dtype).max / 4)
    with np.errstate(invalid="ignore"):  # rows with inf/-inf or a zero span: all in bin 0, set below
        t = np.subtract(v, lo[:, None])
        t *= np.where(ok, scale, 0).astype(v.dtype)[:, None]
        np.minimum(t, nbins - 1, out=t)
        bins = t.astype(np.intp)
    del t
    if not ok.all():
        bins[~ok] = 0
    bins += (np.arange(b) * nbins)[:, None]  # one histogram per row in one bincount
    bins = bins.reshape(-1)
    hist = np.bincount(bins, minlength=b * nbins)
    before_bin = np.cumsum(hist) - hist  # items in earlier rows and in lower bins of this row
    bin_p = bins[pos_p]
    # 2. items sharing a bin with a true match: order them exactly by (row, bin, distance, gallery index)
    shared = np.zeros(b * nbins, dtype=bool)
    shared[bin_p] = True
    cand = np.flatnonzero(shared[bins])
    cand_bin = bins[cand]
    perm = np.lexsort((cand, flat[cand], cand_bin))
    where = np.empty_like(perm)
    where[perm] = np.arange(perm.size)
    at = where[np.searchsorted(cand, pos_p)]
    in_bin_before = at - np.searchsorted(cand_bin[perm], bin_p, "left")
    before = before_bin[bin_p] - rows_p * n + in_bin_before  # all items ranked before the match
    # 3. junk ranked before each match, and the match's index among the row's matches
    pos_u = np.concatenate([pos_p, rows_j * n + cols_j])
    rows_u = np.concatenate([rows_p, rows_j])
    is_junk = np.concatenate([np.zeros(pos_p.size, np.intp), np.ones(rows_j.size, np.intp)])
    perm = np.lexsort((pos_u, flat[pos_u], rows_u))
    where = np.empty_like(perm)
    where[perm] = np.arange(perm.size)
    junk_so_far = np.cumsum(is_junk[perm]) - is_junk[perm]
    at = where[: pos_p.size]
    row_start = np.searchsorted(rows_u[perm], rows_p, "left")
    junk_before = junk_so_far[at] - junk_so_far[row_start]
    return before - junk_before + 1, at - row_start - junk_before


def _codes(q: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    uniq, inv = np.unique(np.concatenate([q, g]), return_inverse=True)
    inv = inv.reshape(-1)
    return inv[: len(q)], inv[len(q) :], len(uniq)


def default_workers() -> int:
    """CPUs this process may run on (``taskset`` is honoured), at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def evaluate_rank(
    distmat: np.ndarray | torch.Tensor,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    chunk: int = 64,
    q_items: np.ndarray | list | None = None,
    g_items: np.ndarray | list | None = None,
    workers: int | None = None,
) -> RankResult:
    """CMC / mAP / mINP of a query x gallery *distance* matrix (smaller = more similar).

    ``q_items`` / ``g_items``: optional ids of the images (e.g. paths), so that a query's own image is removed
    from a gallery that holds it even when its camera is unknown (the same-camera rule removes it otherwise).
    ``chunk``: queries per block; ``workers``: threads over blocks (default: the CPUs this process may use).
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
    if d.dtype not in (np.float32, np.float64):
        d = d.astype(np.float64)  # exact for integers below 2**53 and for float16
    q_code, g_code, n_codes = _codes(q_pids, g_pids)
    by_pid = _group(g_code, n_codes)
    if q_items is not None:
        q_item, g_item, n_items = _codes(q_items, g_items)
        by_item = _group(g_item, n_items)
    nbins = int(min(max(num_g // 4, 16), 1 << 16))
    first_hit = np.full(num_q, -1, dtype=np.int64)
    ap = np.zeros(num_q, dtype=np.float64)
    inp = np.zeros(num_q, dtype=np.float64)

    def run(s: int) -> None:
        e = min(s + chunk, num_q)
        rows, cols = _pairs(q_code[s:e], by_pid)  # same person
        qc, gc = q_camids[s:e][rows], g_camids[cols]
        junk = (qc == gc) & (qc != UNKNOWN_CAMERA) & (gc != UNKNOWN_CAMERA)
        rows_j, cols_j = rows[junk], cols[junk]
        if q_items is not None:  # the query's own image: junk whatever its camera (and even its person id)
            junk |= g_item[cols] == q_item[s:e][rows]
            own_r, own_c = _pairs(q_item[s:e], by_item)
            other = g_code[own_c] != q_code[s:e][own_r]
            rows_j = np.concatenate([rows[junk], own_r[other]])
            cols_j = np.concatenate([cols[junk], own_c[other]])
        rows_p, cols_p = rows[~junk], cols[~junk]
        if rows_p.size == 0:
            return
        rank, index = _ranks(d[s:e], rows_p, cols_p, rows_j, cols_j, nbins)
        b = e - s
        n_rel = np.bincount(rows_p, minlength=b)
        ap[s:e] = np.bincount(rows_p, weights=(index + 1) / rank, minlength=b) / np.maximum(n_rel, 1)
        first = index == 0
        first_hit[s + rows_p[first]] = rank[first] - 1
        last = index == n_rel[rows_p] - 1
        inp[s + rows_p[last]] = n_rel[rows_p[last]] / rank[last]

    chunk = max(int(chunk), 1)
    starts = range(0, num_q, chunk)
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(starts) == 1:
        for s in starts:
            run(s)
    else:
        with ThreadPoolExecutor(min(workers, len(starts))) as pool:
            list(pool.map(run, starts))
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
