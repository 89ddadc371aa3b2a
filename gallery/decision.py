"""The open-set decision of one (modality, model_id): which rule, which threshold, from where.

Sources, first found wins: a calibration stored in the database (the user's own, ``Gallery.calibrate_threshold``
or ``set_threshold``) > the operator's per-modality setting (a raw score) > the model card's calibrated decision
(shipped with the model, made on validation identities). An explicit ``threshold=`` argument is a raw-score
threshold for that call.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from gallery.errors import GalleryError
from reid.metrics.open_set_decision import NO_COMPETITOR, cohort_best

RULES = ("raw", "margin")


@dataclass(frozen=True)
class Verdict:
    known: bool
    score: float  # the best person's raw similarity
    runner_up: float | None  # the best competitor (second person, or the cohort under "margin")
    normalised: float  # what the threshold is compared with
    threshold: float  # the threshold applied (for this gallery's size when the decision has a size table)


@dataclass(frozen=True, eq=False)
class Decision:
    threshold: float
    rule: str = "raw"
    beta: float = 1.0
    cohort: np.ndarray | None = None  # (M, D) float32 unit rows of people never enrolled
    source: str = "argument"  # "calibrated", "model card", "setting" or "argument"
    # thresholds by gallery size (persons), calibrated on the same validation strangers (raw: rising with the
    # gallery, margin: falling); identify interpolates in log(persons) so the false-accept rate holds as the
    # gallery grows. Empty: ``threshold``.
    by_size: tuple[tuple[int, float], ...] = ()
    # the share of strangers the threshold was set to accept (a card's; what ``gallery.selfcal`` re-reads)
    target_far: float | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise GalleryError(f"decision rule must be one of {RULES}, got {self.rule!r}")
        if not np.isfinite(self.threshold):
            raise GalleryError(f"decision threshold must be a finite number, got {self.threshold}")

    def threshold_at(self, persons: int | None) -> float:
        """The threshold for a gallery of ``persons`` (the calibrated one when no size table exists)."""
        if not self.by_size or not persons:
            return self.threshold
        sizes = np.log([n for n, _ in self.by_size])
        return float(np.interp(np.log(max(persons, 1)), sizes, [t for _, t in self.by_size]))

    def verdict(
        self, query: np.ndarray, person_scores: list[float], persons: int | None = None
    ) -> Verdict | None:
        """``person_scores``: the ranked persons' scores, best first (at least the best two when there are);
        ``persons``: how many persons the gallery holds for this model (for a size-aware threshold)."""
        if not person_scores:
            return None
        score = float(person_scores[0])
        second = float(person_scores[1]) if len(person_scores) > 1 else None
        thr = self.threshold_at(persons)
        if self.rule == "raw":
            return Verdict(score >= thr, score, second, score, thr)
        runner = NO_COMPETITOR if second is None else second
        cb = cohort_best(query.reshape(1, -1), self.cohort)
        if cb is not None:
            runner = max(runner, float(cb[0]))
        normalised = score - self.beta * runner
        return Verdict(normalised >= thr, score, runner, normalised, thr)

    @classmethod
    def from_card(cls, card: dict[str, Any], source: str = "model card") -> Decision:
        """A model card's ``decision`` entry: ``{"rule", "beta", "threshold", "cohort": (M, D) array}``."""
        try:
            cohort = card.get("cohort")
            if cohort is not None:
                cohort = np.asarray(cohort, dtype=np.float32)
                cohort /= np.maximum(np.linalg.norm(cohort, axis=1, keepdims=True), 1e-12)
            return cls(
                float(card["threshold"]),
                str(card.get("rule", "raw")),
                float(card.get("beta", 1.0)),
                cohort,
                source,
                size_table(card.get("by_size")),
                None if card.get("target_far") is None else float(card["target_far"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise GalleryError(f"model card decision is malformed ({type(e).__name__}: {e})") from e

    def describe(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "threshold": self.threshold,
            "beta": self.beta if self.rule == "margin" else None,
            "cohort_size": 0 if self.cohort is None else len(self.cohort),
            "source": self.source,
            "size_aware": bool(self.by_size),
        }


def size_table(by_size: dict | None) -> tuple[tuple[int, float], ...]:
    """``{"100": 0.71, ...}`` (JSON keys are strings) -> sorted ((100, 0.71), ...)."""
    return tuple(sorted((int(k), float(v)) for k, v in (by_size or {}).items()))


def encode_cohort(cohort: np.ndarray | None) -> bytes | None:
    if cohort is None:
        return None
    buf = io.BytesIO()
    np.save(buf, np.asarray(cohort, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def decode_cohort(blob: bytes | None) -> np.ndarray | None:
    return None if not blob else np.load(io.BytesIO(blob), allow_pickle=False)
