"""Which open-set decision each (modality, model_id) uses, and calibrating one.

First found wins: calibrated in the database (``set_threshold``/``calibrate_threshold``; cached for
``ttl`` seconds because other processes may change it) > the operator's raw per-modality setting
(``default_thresholds``) > the model card's decision (``register_card``; its threshold re-read on the gallery's
own persons once there are enough, ``gallery.selfcal``) > none. ``gallery.decision`` holds the
decision itself (rules, verdicts).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gallery.decision import RULES, Decision, Verdict, decode_cohort, encode_cohort, size_table
from gallery.errors import GalleryError
from gallery.index import check_vectors
from gallery.models import Threshold
from gallery.results import CalibrationResult
from gallery.store import GalleryStore, Key
from gallery.vectors import check_modality
from reid.metrics.rank import EvaluationError


def decision_of(t: Threshold) -> Decision:
    """The decision a stored threshold row describes."""
    return Decision(
        float(t.value), t.rule or "raw", 1.0 if t.beta is None else float(t.beta), decode_cohort(t.cohort),
        "calibrated", size_table(t.by_size),
    )  # fmt: skip


class Decisions:
    """The decisions of one gallery's models.

    Args:
        store: where calibrated decisions are stored (with an audit entry each).
        default_thresholds: the operator's raw thresholds per modality (the dict is used, not copied).
        ttl: seconds a decision read from the database is reused.
    """

    def __init__(self, store: GalleryStore, default_thresholds: dict[str, float], ttl: float = 5.0) -> None:
        self.store = store
        self.default_thresholds = default_thresholds
        self.ttl = ttl
        # model cards' calibrated decisions, by (modality, model_id): the default when nothing is calibrated here
        self.cards: dict[Key, Decision] = {}
        self._cache: dict[Key, tuple[Decision | None, float]] = {}
        # re-reads a card's threshold on the gallery's own persons (``gallery.selfcal``); None: the card as is
        self.refine: Callable[[Key, Decision | None], Decision | None] | None = None

    def register_card(self, modality: str, model_id: str, card: dict | None) -> None:
        """Use a model card's calibrated decision for this model when the database holds none."""
        if card:
            self.cards[(modality, model_id)] = Decision.from_card(card)

    def decision_for(self, modality: str, model_id: str) -> Decision | None:
        """The decision of this model: calibrated in the database > the operator's setting > the model card's
        > None."""
        key = (modality, model_id)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is None or now - cached[1] > self.ttl:
            t = self.store.read_threshold(key)
            cached = (None if t is None else decision_of(t), now)
            self._cache[key] = cached
        if cached[0] is not None:
            return cached[0]
        if self.default_thresholds.get(modality) is not None:  # the operator's explicit setting
            return Decision(float(self.default_thresholds[modality]), source="setting")
        card = self.cards.get(key)
        return self.refine(key, card) if self.refine is not None else card

    def decision(self, modality: str, model_id: str, threshold: float | None) -> Decision | None:
        """A call's ``threshold`` (a raw one) or the model's decision."""
        return Decision(float(threshold)) if threshold is not None else self.decision_for(modality, model_id)

    def decide(
        self,
        modality: str,
        model_id: str,
        query: np.ndarray,
        person_scores: Sequence[float],
        threshold: float | None,
        persons: int,
    ) -> Verdict | None:
        """The verdict on candidate persons' scores (best first) in a gallery of ``persons`` persons."""
        decision = self.decision(modality, model_id, threshold)
        if decision is None:
            return None
        return decision.verdict(np.asarray(query, np.float32).reshape(-1), list(person_scores), persons)

    def set_threshold(
        self,
        modality: str,
        model_id: str,
        value: float,
        actor: str = "local",
        rule: str = "raw",
        beta: float | None = None,
        cohort: np.ndarray | None = None,
        by_size: dict[int, float] | None = None,
        **measured: Any,
    ) -> None:
        """Store the decision of a model (audited, with ``actor``); see ``Gallery.set_threshold``."""
        check_modality(modality)
        table = {str(int(k)): float(v) for k, v in (by_size or {}).items()} or None
        decision = Decision(
            float(value), rule, 1.0 if beta is None else float(beta), cohort, "calibrated", size_table(table)
        )
        detail = {
            "value": float(value),
            "rule": rule,
            "beta": beta,
            **{k: v for k, v in measured.items() if v is None or isinstance(v, (int, float, str))},
        }
        fields = {"value": float(value), "rule": rule, "beta": beta, "cohort": encode_cohort(cohort)}
        fields |= {"by_size": table, **measured}
        self.store.write_threshold((modality, model_id), fields, actor, detail)
        self._cache[(modality, model_id)] = (decision, time.monotonic())

    def calibrate(
        self,
        modality: str,
        model_id: str,
        embeddings: np.ndarray,
        labels: Sequence[int | str],
        target_far: float = 1e-2,
        store: bool = True,
        rule: str = "margin",
        enroll_per_id: int = 1,
        cohort: np.ndarray | None = None,
        cohort_fraction: float = 1 / 3,
        seed: int = 0,
        aggregation: str = "max",
    ) -> CalibrationResult:
        """Calibrate this model's open-set decision on labelled embeddings; see ``Gallery.calibrate_threshold``.
        ``aggregation``: how the gallery scores a person's templates (its ``enroll_per_id`` are scored so too)."""
        from reid.metrics.open_set_decision import BETAS, calibrate_decision, calibrate_with_cohort

        if rule not in RULES:
            raise GalleryError(f"calibrate: rule must be one of {RULES}, got {rule!r}")
        vecs = check_vectors(embeddings, None, "calibrate")
        labels = np.asarray(labels)
        if len(labels) != len(vecs):
            raise GalleryError(f"calibrate: {len(vecs)} embeddings but {len(labels)} labels")
        try:
            if rule == "margin" and cohort is None:  # carved out of the identities given, as a model card's
                cal, cohort = calibrate_with_cohort(
                    vecs, labels, target_far, enroll_per_id, cohort_fraction, seed, aggregation=aggregation
                )
            else:
                if cohort is not None:
                    cohort = check_vectors(cohort, vecs.shape[1], "calibrate cohort")
                cal = calibrate_decision(
                    vecs, labels, target_far, enroll_per_id, cohort if rule == "margin" else None,
                    betas=BETAS if rule == "margin" else (0.0,), seed=seed,
                    aggregation=aggregation,
                )  # fmt: skip
        except EvaluationError as e:
            raise GalleryError(str(e)) from e
        rule = cal.rule  # "raw" when beta 0 named the most
        result = CalibrationResult(
            modality, model_id, cal.threshold, target_far, cal.measured_far, cal.measured_dir,
            cal.n_mated, cal.n_strangers, rule, cal.beta if rule == "margin" else None, cal.measured_dir,
            0 if rule == "raw" or cohort is None else len(cohort), cal.by_size, cal.size_check,
        )  # fmt: skip
        if store:
            self.set_threshold(
                modality,
                model_id,
                cal.threshold,
                rule=rule,
                beta=result.beta,
                cohort=cohort if rule == "margin" else None,
                by_size=cal.by_size,
                target_far=target_far,
                measured_far=cal.measured_far,
                measured_tar=cal.measured_dir,
                measured_dir=cal.measured_dir,
                n_genuine=cal.n_mated,
                n_impostor=cal.n_strangers,
                source=f"calibrate_threshold ({cal.n_identities} identities, {enroll_per_id} enrolled each)",
            )
        return result
