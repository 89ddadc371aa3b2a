"""The read path: rank persons for one query (``IndexCache.rank_persons``), name them (``GalleryStore``), apply
the model's decision (``Decisions``); and identify-or-enroll, whose second search and enroll run under one
per-model lock so concurrent calls with the same new face create one person only."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from gallery.cache import IndexCache
from gallery.results import IdentifyOrEnrollResult, IdentifyResult, PersonMatch
from gallery.store import EnrollRequest, GalleryStore, Key
from gallery.thresholds import Decisions


class Identifier:
    """Identify over one gallery's parts: the database, the index cache and the decisions."""

    def __init__(self, store: GalleryStore, cache: IndexCache, decisions: Decisions) -> None:
        self.store, self.cache, self.decisions = store, cache, decisions
        self._key_locks: dict[Key, threading.Lock] = defaultdict(threading.Lock)

    def identify(self, q: np.ndarray, key: Key, k: int, threshold: float | None) -> IdentifyResult:
        """Ranked persons for the query ``q`` (1, D) of model ``key``, and known/unknown."""
        modality, model_id = key
        index = self.cache.index_for(key, q.shape[1], create=False)
        # the runner-up person is evidence of the decision, so at least two are ranked
        ranked = self.cache.rank_persons(index, q, max(k, 2)) if index is not None else []
        decision = self.decisions.decision(modality, model_id, threshold)
        matches = []
        if ranked:
            persons = self.store.persons_by_id([r[0] for r in ranked])
            for pid, score, tid in ranked:
                p = persons.get(pid)
                if p is None:  # deleted by another process meanwhile
                    continue
                matches.append(PersonMatch(pid, score, tid, p.display_name, p.external_id))
        persons = self.cache.persons_count(key)
        verdict = None if decision is None else decision.verdict(q[0], [m.score for m in matches], persons)
        return IdentifyResult(
            modality,
            model_id,
            matches[:k],
            None if decision is None else verdict.threshold if verdict else decision.threshold_at(persons),
            None if decision is None else bool(verdict and verdict.known),
            decision=None if decision is None else decision.describe(),
            score=None if verdict is None else verdict.score,
            runner_up=None if verdict is None else verdict.runner_up,
            normalised_score=None if verdict is None else verdict.normalised,
        )

    def identify_or_enroll(
        self,
        q: np.ndarray,
        hashes: Sequence[str | None],
        key: Key,
        k: int,
        threshold: float | None,
        display_name: str | None,
        kind: str,
    ) -> IdentifyOrEnrollResult:
        """The known person, or a new one with ``q`` as its first template (the caller checked that the model
        has a decision)."""
        first = self.identify(q, key, k, threshold)
        if first.known:
            return IdentifyOrEnrollResult(first.best.person_id, False, first.best.score, first)
        index = self.cache.index_for(key, q.shape[1], create=True)
        with self.store.key_transaction(key, self._key_locks[key]) as s:
            self.cache.sync()  # everything committed before this lock was granted, by any process
            again = self.identify(q, key, k, threshold)
            if again.known:
                return IdentifyOrEnrollResult(again.best.person_id, False, again.best.score, again)
            req = EnrollRequest(key, q, hashes, display_name=display_name, kind=kind)
            result, stored = self.store.enroll_tx(s, req)
        ids = result.template_ids
        self.cache.add(index, ids, [result.person_id] * len(ids), q[stored])
        score = again.best.score if again.best else None
        return IdentifyOrEnrollResult(result.person_id, True, score, again, result)
