"""A model card's threshold re-read on this gallery's own persons: "leave one out".

A card is calibrated on other people than the store's (CelebA for faces, held-out CUHK03 identities for bodies),
and strangers of another domain score differently: on LFW the CelebA face card accepted no stranger but named
only a fifth of the people it knew. The gallery itself holds the missing data: each enrolled person, asked
against every *other* enrolled person, is a stranger to them, photographed as this store photographs people, in
a gallery of this size. The ``target_far`` quantile of those leave-one-out scores (under the card's own rule:
raw, or margin with its beta and cohort) is the threshold at which that share of such strangers is accepted.
No query and no label is used, only who is enrolled.

Every template is one such stranger photo (a person enrolled with three photos asks three times). It replaces
the card's threshold only when the quantile rests on at least ``min_above`` of them (``min_above / target_far``
templates: 1,000 at 1 %) from at least ``min_persons_above / target_far`` persons (400 at 1 %), and only for a
card's decision: a calibration stored in the database or an operator's setting is never overridden. It is
computed in a background thread (templates of at most ``max_probes`` templates' worth of persons, sampled)
and recomputed when the number of persons has moved by more than ``tolerance`` since; until then identify
uses the card, then the last value.
"""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from gallery.cache import IndexCache
from gallery.decision import Decision
from gallery.store import Key
from reid.metrics.open_set import threshold_at_far

logger = logging.getLogger(__name__)

SOURCE = "model card, threshold from this gallery's persons (leave one out)"


def _card_of(d: Decision) -> tuple:
    return (d.rule, d.beta, d.threshold, d.target_far, d.by_size)


class SelfCalibration:
    """Leave-one-out thresholds of card decisions, per (modality, model_id).

    Args:
        cache: the gallery's index cache (persons, templates, search).
        min_above: stranger photos the ``target_far`` quantile must rest on (``min_above / target_far``
            templates).
        min_persons_above: distinct persons it must rest on (a person's photos are alike: with k persons above
            it, the rate accepted moves by about 1/sqrt(k) of the target).
        max_probes: about this many templates are asked (whole persons, sampled, seeded) per computation.
        tolerance: recompute once the number of persons has moved by more than this fraction.
    """

    def __init__(
        self,
        cache: IndexCache,
        min_above: int = 10,
        min_persons_above: int = 4,
        max_probes: int = 2000,
        tolerance: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.cache = cache
        self.min_above, self.max_probes, self.tolerance, self.seed = min_above, max_probes, tolerance, seed
        self.min_persons_above = min_persons_above
        # key -> (persons when computed, threshold, the card it was computed for)
        self._done: dict[Key, tuple[int, float, tuple]] = {}
        self._pending: dict[Key, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="selfcal")

    def refine(self, key: Key, decision: Decision | None) -> Decision | None:
        """The card's decision with this gallery's leave-one-out threshold, once there is one."""
        if decision is None or decision.source != "model card" or not decision.target_far:
            return decision
        persons = self.cache.persons_count(key)
        if not self._enough(key, persons, decision.target_far):
            return decision
        with self._lock:
            done = self._done.get(key)
            if done is not None and done[2] != _card_of(decision):  # another card registered since
                del self._done[key]
                done = None
            stale = done is None or abs(persons - done[0]) > self.tolerance * done[0]
            if stale and key not in self._pending:
                self._pending[key] = self._pool.submit(self._compute, key, decision)
        if done is None:
            return decision  # until the first computation ends: the card as shipped
        return replace(decision, threshold=done[1], by_size=(), source=SOURCE)

    def _enough(self, key: Key, persons: int, target_far: float) -> bool:
        """Photos and persons for the quantile to rest on; the photos are summed only in the narrow range of
        sizes where the persons alone do not decide (identify calls this, so no pass over a large gallery)."""
        photos = math.ceil(self.min_above / target_far)
        if persons < math.ceil(self.min_persons_above / target_far) or persons >= photos:
            return persons >= photos
        with self.cache.lock:
            return sum(self.cache.key_persons.get(key, {}).values()) >= photos

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the computations under way (tests, benchmarks)."""
        with self._lock:
            pending = list(self._pending.values())
        for f in pending:
            f.result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _compute(self, key: Key, decision: Decision) -> None:
        try:
            value = self._leave_one_out(key, decision)
            if value is not None:
                with self._lock:
                    self._done[key] = (*value, _card_of(decision))
                logger.info(
                    "%s/%s: leave-one-out threshold %.4f over %d persons (card %.4f)",
                    key[0], key[1], value[1], value[0], decision.threshold_at(value[0]),
                )  # fmt: skip
        except Exception:  # a background thread must not die silently; identify keeps the card meanwhile
            logger.exception("%s/%s: leave-one-out threshold failed; the card's threshold stays", *key)
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def _leave_one_out(self, key: Key, decision: Decision) -> tuple[int, float] | None:
        cache = self.cache
        with cache.lock:
            index = cache.indexes.get(key)
            if index is None:
                return None
            counts = cache.key_persons.get(key, {})
            n = len(counts)
            needed = math.ceil(self.min_above / decision.target_far)
            ask = max(self.max_probes, needed)  # the quantile never rests on fewer than min_above
            persons = sorted(counts)
            np.random.default_rng(self.seed).shuffle(persons)
            probes = []  # (person, template): every photo of a sampled person asks once
            for pid in persons:
                if len(probes) >= ask:
                    break
                tids = [t for t in cache.templates_of.get(pid, ()) if cache.key_of.get(t) == key]
                probes += [(pid, t) for t in sorted(tids) if t not in index.tombstones]
            if not probes:
                return None
            vecs = index.reconstruct([t for _, t in probes])
        values = []
        for (pid, _), v in zip(probes, vecs):
            q = np.asarray(v, np.float32).reshape(1, -1)
            # the person itself plus the two best others (more when it has templates the search ranks apart)
            ranked = cache.rank_persons(index, q, 3)
            others = [score for p, score, _ in ranked if p != pid][:2]
            verdict = decision.verdict(q[0], others, n - 1)
            if verdict is not None:
                values.append(verdict.normalised)
        if len(values) < needed:
            return None
        return n, threshold_at_far(np.asarray(values), decision.target_far)
