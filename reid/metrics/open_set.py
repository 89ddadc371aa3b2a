"""Open-set identification: "is this anyone we know, and who?" (the gallery's question).

Given probe x gallery-identity similarities, probes of enrolled people (mated) and of strangers (non-mated):
- FAR (false alarm rate) at threshold t: fraction of non-mated probes whose best score is >= t;
- DIR (detection and identification rate) at t: fraction of mated probes whose best-scoring identity is the
  right one *and* scores >= t (rank-1 DIR, as in NIST FRVT 1:N and Phillips et al.).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reid.metrics.rank import EvaluationError


def threshold_at_far(impostor_scores, far: float) -> float:
    """Smallest threshold ``t`` with at most ``floor(far * N)`` of the N impostor scores ``>= t``."""
    imp = np.sort(np.asarray(impostor_scores, dtype=np.float64).reshape(-1))[::-1]
    if imp.size == 0:
        raise EvaluationError("threshold_at_far needs at least one impostor score")
    if not 0.0 <= far <= 1.0:
        raise EvaluationError(f"far must be in [0, 1], got {far}")
    allowed = int(np.floor(far * imp.size + 1e-9))
    return float(np.nextafter(imp[allowed], np.inf)) if allowed < imp.size else float("-inf")


def design_effect(hit_groups, n_groups: int, n: int, sizes=None) -> float:
    """How much more a rate of ``len(hit_groups)`` hits among ``n`` values varies when whole groups are
    resampled than if the values were independent (at least 1). ``hit_groups`` holds the group (0 ..
    ``n_groups - 1``; a person, whose photos are alike) of each hit; ``sizes`` how many values each group has
    (default: ``n`` spread evenly). It is the ratio estimator's variance over the binomial's,
    ``sum_i (h_i - p m_i)^2 / (k (1 - k / n))`` with ``h_i`` hits of ``m_i`` values in group ``i`` and
    ``p = k / n``: one value per group gives 1; alike values of one group, up to their number. Korn and
    Graubard's effective sample size is ``n`` over it."""
    top = np.asarray(hit_groups, dtype=np.int64).reshape(-1)
    k = top.size
    if k == 0 or k == n:
        return 1.0
    if top.min() < 0 or top.max() >= n_groups:
        raise EvaluationError(
            f"design_effect: group ids must be in 0 .. {n_groups - 1}, got {top.min()} .. {top.max()}"
        )
    counts = np.bincount(top, minlength=n_groups)
    m = np.full(counts.size, n / counts.size) if sizes is None else np.asarray(sizes, np.float64).reshape(-1)
    if m.size != counts.size or not np.isclose(m.sum(), n):
        raise EvaluationError(f"design_effect: {m.size} group sizes summing to {m.sum():g}, expected "
                              f"{counts.size} summing to {n}")  # fmt: skip
    spread = float(((counts - k / n * m) ** 2).sum())
    return max(1.0, spread / (k * (1 - k / n)))


def rate_interval(k: int, n: int, confidence: float = 0.95, design: float = 1.0) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval of a rate measured as ``k`` of ``n`` (a FAR, a DIR): the rates
    for which seeing ``k`` (or fewer, or more) would not be rarer than ``(1 - confidence) / 2`` either way.
    ``design`` (``design_effect``) divides ``k`` and ``n`` when the values come in groups of alike ones
    (Korn and Graubard). A measured 1.18 % of 2,722 strangers is [0.81 %, 1.66 %] at 95 %: a benchmark's
    rate says no more than that about the rate it estimates."""
    from scipy.stats import beta

    if n <= 0 or not 0 <= k <= n:
        raise EvaluationError(f"a rate needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    if not 0 < confidence < 1 or design < 1:
        raise EvaluationError(f"need 0 < confidence < 1 and design >= 1, got {confidence} and {design}")
    a, ke, ne = (1 - confidence) / 2, k / design, n / design
    lo = float(beta.ppf(a, ke, ne - ke + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(1 - a, ke + 1, ne - ke)) if k < n else 1.0
    return lo, hi


@dataclass
class OpenSetResult:
    far_targets: list[float]
    thresholds: list[float]
    dir: list[float]  # detection-and-identification rate at each threshold
    far_actual: list[float]
    rank1: float  # closed-set rank-1 of mated probes (no threshold)

    def as_dict(self) -> dict:
        return {
            "rank1_closed_set": self.rank1,
            "points": [
                {"far_target": f, "threshold": t, "dir": d, "far": a}
                for f, t, d, a in zip(self.far_targets, self.thresholds, self.dir, self.far_actual)
            ],
        }


def open_set_identification(
    similarity: np.ndarray,
    probe_labels: np.ndarray,
    gallery_labels: np.ndarray,
    fars: tuple[float, ...] = (1e-3, 1e-2, 1e-1),
) -> OpenSetResult:
    """``similarity`` is probes x gallery identities (aggregate templates per person first).

    A probe is mated when its label is among ``gallery_labels``; the others are strangers.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    p = np.asarray(probe_labels).reshape(-1)
    g = np.asarray(gallery_labels).reshape(-1)
    if sim.shape != (p.size, g.size):
        raise EvaluationError(f"similarity has shape {sim.shape}, expected ({p.size}, {g.size})")
    if len(np.unique(g)) != g.size:
        raise EvaluationError("gallery_labels must be unique (one column per identity)")
    mated = np.isin(p, g)
    if not mated.any() or mated.all():
        raise EvaluationError("open-set evaluation needs both mated probes and strangers")
    best = sim.argmax(axis=1)
    best_score = sim[np.arange(p.size), best]
    correct = g[best] == p
    thresholds, dirs, actual = [], [], []
    for far in fars:
        t = threshold_at_far(best_score[~mated], far)
        thresholds.append(t)
        dirs.append(float((correct[mated] & (best_score[mated] >= t)).mean()))
        actual.append(float((best_score[~mated] >= t).mean()))
    return OpenSetResult(list(fars), thresholds, dirs, actual, float(correct[mated].mean()))
