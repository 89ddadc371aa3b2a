"""A model card's threshold re-read on this gallery's own persons: "leave one out".

A card is calibrated on other people than the store's (CelebA for faces, held-out CUHK03 identities for bodies),
and strangers of another domain score differently: on LFW the CelebA face card accepted no stranger but named
only a fifth of the people it knew. The gallery itself holds the missing data: each enrolled person, asked
against every *other* enrolled person, is a stranger to them, photographed as this store photographs people, in
a gallery of this size. The ``target_far`` quantile of those leave-one-out scores (under the card's own rule:
raw, or margin with its beta and cohort) is the threshold at which that share of such strangers is accepted.
No query and no label is used, only who is enrolled.

**A promise kept, not kept on average.** That quantile is an estimate from a gallery's own persons: at 1 % of
1,500 one-photo persons it rests on 15 of them, and the threshold it gives accepts more than 1 % of strangers in
about half the galleries (on LFW, which only reports: 1.40 % and 1.32 % for dlib's model, 1.14 % for
InsightFace's with three photos). So the threshold is set where an upper confidence bound (0.9) on the rate
it accepts is the card's rate (``far_threshold``: Clopper-Pearson, a person's photos counted by their design
effect). It costs the known people a little: at 1,500 persons the threshold sits where about 0.7 % of
strangers score, not 1 %.

Every template is one such stranger photo (a person enrolled with three photos asks three times). It replaces
the card's threshold when the quantile rests on at least ``min_above`` of them (``min_above / target_far``
templates: 1,000 at 1 %) from at least ``min_persons_above / target_far`` persons (400 at 1 %), or below a 10 %
target on an extrapolated tail (below), or, the bound accounting for how few they are, from
``certifiable(target_far)`` persons (230 at 1 %, where the largest of as many independent strangers bounds the
rate; two look-alike persons count once, so one photo each usually takes about twice that, and a rule the
bound cannot certify keeps the card). So a store of a few hundred people gets its own threshold, not only a
card made on another domain (on LFW that card named far fewer of the known at such sizes: issue 12's closing
note). Only for a
card's decision: a calibration stored in the database or an operator's setting is never overridden. It is
computed in a background thread (templates of at most ``max_probes`` templates' worth of persons, sampled)
and recomputed when the number of persons has moved by more than ``tolerance`` since; until then identify
uses the card, then the last value.

**The rule, where the gallery has the photos to choose it.** A card's margin weight ``beta`` (in
``best - beta x runner-up``; 0 is the raw best score) was chosen on the card's people too, and the best weight
moves with the domain (CelebA chose 1.0 for dlib faces, LFW's people prefer 0.5). A person enrolled with two
or more photos gives *mated* leave-one-out probes: each photo asked against the gallery with that photo left
out should name its own person. When at least ``min_mated`` such probes exist, every ``beta`` in
``BETAS`` gets its own leave-one-out threshold, and the one naming the most mated probes at it wins; the
card's own weight is kept unless another names at least ``min_gain`` more. Again only enrolled photos and who
they belong to are used: no query, no stranger.
"""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from gallery.cache import IndexCache
from gallery.decision import Decision
from gallery.store import Key
from reid.metrics.aggregation import aggregate
from reid.metrics.open_set import design_effect, threshold_at_far
from reid.metrics.open_set_decision import BETAS, NO_COMPETITOR, cohort_best

logger = logging.getLogger(__name__)

SOURCE = "model card, re-read on this gallery's persons (leave one out)"
TAIL_FROM = 0.1  # below this target rate, a gallery too small for the empirical quantile extrapolates a tail
# the share of galleries whose threshold accepts at most the target rate of their strangers; a point estimate
# keeps that promise about half the time
CONFIDENCE = 0.9
DESIGN_FROM = 20  # the design effect is read over at least this many top values
# ... and over at least this share of them (simulated galleries of 1 to 20 photos a person: 0.9 bounds at
# 1 % missed in 10 to 16 % of them when read over the top 1 %, 5 to 9 % over the top 3 %)
DESIGN_SHARE = 0.03


def _tail_threshold(values: np.ndarray, far: float) -> float:
    """An exponential tail fitted to the top ``TAIL_FROM`` of ``values``, solved for ``far``."""
    top = np.sort(values)[::-1]
    k = int(TAIL_FROM * len(top))
    u = top[k]
    return float(u + (top[:k] - u).mean() * np.log(TAIL_FROM / far))


def far_threshold(
    values: np.ndarray,
    far: float,
    min_above: int,
    groups: np.ndarray | None = None,
    confidence: float | None = CONFIDENCE,
    tail_ok: bool = True,
) -> tuple[float, bool] | None:
    """The threshold accepting at most ``far`` of the strangers ``values`` were drawn from, and whether it was
    extrapolated.

    The point estimate (``confidence=None``) is their empirical quantile when at least ``min_above`` of them lie
    above it, else (below a ``TAIL_FROM`` target, and ``tail_ok``: enough values for it) an exponential tail
    fitted to their top ``TAIL_FROM`` (``u + mean excess over u x ln(TAIL_FROM / far)``, u their
    ``1 - TAIL_FROM`` quantile). It accepts more than ``far`` about half the time. With ``confidence``, it
    accepts at most ``far`` with that confidence:

    - empirical: the most values ``k`` above it whose Clopper-Pearson upper bound on the rate is within ``far``.
      For independent values that is exact (the rate above the ``k+1``-th largest of ``n`` is
      Beta(k+1, n-k)). Values of one group (a person's photos; two persons who are each other's best match)
      are alike, so ``k`` and ``n`` are divided by the largest design effect among the top ``far x n`` (at
      least ``DESIGN_FROM`` and at least ``DESIGN_SHARE`` of all) values (``design_effect``, each group's
      size counted). None when not even the largest value bounds the
      rate (fewer than ``certifiable(far, confidence)`` values, times that design effect);
    - tail: the exponential's scale and the rate above ``u`` each at its upper bound, missing half as often
      (the mean excess over ``k`` values is Gamma(k) / k times the scale; the rate above the ``k+1``-th largest
      is Beta(k+1, n-k); ``k`` and ``n`` divided by the design effect at ``u``)."""
    from scipy.stats import beta, gamma

    values = np.asarray(values, np.float64)
    n = len(values)
    if not 0 < far < 1 or n == 0:
        raise ValueError(f"far_threshold: far must be in (0, 1) and values non-empty, got {far}, {n} values")
    tail = tail_ok and not (far * n >= min_above or far >= TAIL_FROM or int(TAIL_FROM * n) < 1)
    if confidence is None:
        return (_tail_threshold(values, far) if tail else threshold_at_far(values, far)), tail
    _, who = np.unique(np.arange(n) if groups is None else np.asarray(groups), return_inverse=True)
    persons = int(who.max()) + 1
    order = np.argsort(-values, kind="stable")
    ranked, who = values[order], who[order]
    sizes = np.bincount(who, minlength=persons)  # a person's photos, or a look-alike pair's
    if tail:
        k = int(TAIL_FROM * n)
        d = design_effect(who[:k], persons, n, sizes)
        each = 1 - (1 - confidence) / 2  # two bounds, each failing half as often (Bonferroni)
        scale = (ranked[:k] - ranked[k]).mean() * (k / d) / gamma.ppf(1 - each, k / d)
        base = beta.ppf(each, k / d + 1, (n - k) / d)  # the rate above u, also an estimate
        return float(ranked[k] + scale * np.log(base / far)), True
    most = int(far * n)
    # the worst clustering among the top values, at least DESIGN_FROM of them: among the one or two that may
    # lie above it none can be seen, and leave-one-out strangers come in pairs (two persons alike are each the
    # other's best match), so a gallery whose top two happen to be no pair is not taken for independent. And
    # over the top DESIGN_SHARE at least: a gallery whose large groups of alike photos happen to lie just
    # below its top 1 % reads as independent there, which is exactly when its quantile is too low
    seen = min(n - 1, max(most, DESIGN_FROM, int(DESIGN_SHARE * n)))
    d = max((design_effect(who[:k], persons, n, sizes) for k in range(1, seen + 1)), default=1.0)
    if beta.ppf(confidence, 1, n / d) > far:
        return None  # not even the largest bounds the rate
    kept = 0
    for k in range(1, most + 1):  # the bound grows with k (d fixed): the first k past it ends the search
        if beta.ppf(confidence, k / d + 1, (n - k) / d) > far:
            break
        kept = k
    return float(np.nextafter(ranked[kept], np.inf)), False


def _look_alikes(edges: list[tuple[int, int]]) -> np.ndarray:
    """Per (person, best-matching other person) edge, a group label: persons are joined when they are each
    other's best match (some photo of each), the pair whose one likeness both leave-one-out scores measure.
    A person many others match best (a hub) is not joined to them: each of those is a stranger of its own."""
    linked = set(edges)
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in linked:
        if (b, a) in linked:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[ra] = rb
    return np.asarray([root(a) for a, _ in edges], dtype=np.int64)


def certifiable(far: float, confidence: float) -> int:
    """The fewest independent strangers whose largest score bounds the rate above it within ``far``: the
    Clopper-Pearson bound with none above, ``1 - (1 - confidence)^(1/n)``, is at most ``far`` (230 at 1 % with
    0.9 confidence, 45 at 5 %)."""
    return math.ceil(math.log(1 - confidence) / math.log(1 - far) - 1e-9)


def _card_of(d: Decision) -> tuple:
    return (d.rule, d.beta, d.threshold, d.target_far, d.by_size)


@dataclass(frozen=True)
class LeaveOneOut:
    """One computation's outcome for a (modality, model_id)."""

    persons: int  # persons in the gallery when computed
    threshold: float
    rule: str
    beta: float
    strangers: int  # stranger probes the threshold rests on
    tail: bool  # the threshold is extrapolated (exponential tail), not an empirical quantile
    mated: int  # mated probes the rule was chosen on (0: the card's rule kept, nothing to choose on)
    named: dict[float, float]  # beta -> share of mated probes named right at its own threshold
    confidence: float | None = None  # the threshold's bound on the stranger rate (None: the point estimate)


def _normalised(score: np.ndarray, runner: np.ndarray, cohort: np.ndarray | None, beta: float) -> np.ndarray:
    """``score - beta x max(runner-up person, cohort)`` as ``Decision.verdict`` computes it (beta 0: raw)."""
    if beta == 0.0:
        return score
    comp = runner if cohort is None else np.maximum(runner, cohort)
    return score - beta * comp


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
        min_mated: mated probes (photos of persons enrolled with two or more) needed to choose the margin
            weight; fewer: the card's rule is kept.
        min_gain: share of mated probes another weight must name beyond the card's own to replace it.
        min_tail, min_tail_persons: photos and persons above the tail's base (the top ``TAIL_FROM``) that an
            extrapolated threshold needs.
        confidence: the threshold accepts at most the card's rate of this gallery's leave-one-out strangers with
            this confidence (``far_threshold``); None: the point estimate, which overshoots
            the rate about half the time.
    """

    def __init__(
        self,
        cache: IndexCache,
        min_above: int = 10,
        min_persons_above: int = 4,
        max_probes: int = 2000,
        tolerance: float = 0.1,
        seed: int = 0,
        min_mated: int = 200,
        min_gain: float = 0.01,
        min_tail: int = 100,
        min_tail_persons: int = 40,
        confidence: float | None = CONFIDENCE,
    ) -> None:
        self.cache = cache
        self.min_above, self.max_probes, self.tolerance, self.seed = min_above, max_probes, tolerance, seed
        self.min_persons_above, self.min_mated, self.min_gain = min_persons_above, min_mated, min_gain
        self.min_tail, self.min_tail_persons = min_tail, min_tail_persons
        self.confidence = confidence
        # key -> (the outcome, the card it was computed for)
        self._done: dict[Key, tuple[LeaveOneOut, tuple]] = {}
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
            if done is not None and done[1] != _card_of(decision):  # another card registered since
                del self._done[key]
                done = None
            stale = done is None or abs(persons - done[0].persons) > self.tolerance * done[0].persons
            if stale and key not in self._pending:
                self._pending[key] = self._pool.submit(self._compute, key, decision)
        if done is None:
            return decision  # until the first computation ends: the card as shipped
        r = done[0]
        return replace(decision, threshold=r.threshold, rule=r.rule, beta=r.beta, by_size=(), source=SOURCE)

    def outcome(self, key: Key) -> LeaveOneOut | None:
        """The last computation's outcome for ``key`` (None before the first)."""
        with self._lock:
            done = self._done.get(key)
        return None if done is None else done[0]

    def _enough(self, key: Key, persons: int, target_far: float) -> bool:
        """Photos and persons for the threshold to rest on (any of ``_requirements``); the photos are summed
        only where the persons alone do not decide (identify calls this, so no pass over a large gallery)."""
        options = [(photos, need) for photos, need in self._requirements(target_far) if persons >= need]
        if not options or any(persons >= photos for photos, _ in options):
            return bool(options)  # every person has at least one photo
        with self.cache.lock:
            total = sum(self.cache.key_persons.get(key, {}).values())
        return any(total >= photos for photos, _ in options)

    def _requirements(self, target_far: float) -> list[tuple[int, int]]:
        """The (photos, persons) each way of setting a threshold at ``target_far`` needs: the empirical
        quantile (``min_above`` photos and ``min_persons_above`` persons above it); below ``TAIL_FROM`` the
        extrapolated tail; with a confidence bound, as many persons as can certify the rate at all
        (``certifiable``: fewer bound nothing; a person's photos are alike, so persons count, not photos)."""
        out = [(math.ceil(self.min_above / target_far), math.ceil(self.min_persons_above / target_far))]
        if target_far < TAIL_FROM:
            out.append(self._tail_requirement())
        if self.confidence is not None:
            out.append((certifiable(target_far, self.confidence),) * 2)
        return out

    def _tail_requirement(self) -> tuple[int, int]:
        return math.ceil(self.min_tail / TAIL_FROM), math.ceil(self.min_tail_persons / TAIL_FROM)

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
            r = self._leave_one_out(key, decision)
            if r is not None:
                with self._lock:
                    self._done[key] = (r, _card_of(decision))
                logger.info(
                    "%s/%s: leave-one-out %s beta %g, threshold %.4f (confidence %s) over %d persons, %d stranger "
                    "and %d mated probes (card: %s beta %g, %.4f); named by beta: %s",
                    key[0], key[1], r.rule, r.beta, r.threshold, r.confidence, r.persons, r.strangers, r.mated,
                    decision.rule,
                    decision.beta, decision.threshold_at(r.persons),
                    {b: round(v, 4) for b, v in r.named.items()},
                )  # fmt: skip
        except Exception:  # a background thread must not die silently; identify keeps the card meanwhile
            logger.exception("%s/%s: leave-one-out threshold failed; the card's threshold stays", *key)
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def _leave_one_out(self, key: Key, decision: Decision) -> LeaveOneOut | None:
        cache = self.cache
        with cache.lock:
            index = cache.indexes.get(key)
            if index is None:
                return None
            counts = cache.key_persons.get(key, {})
            n = len(counts)
            needed = min(photos for photos, _ in self._requirements(decision.target_far))
            ask = max(self.max_probes, needed)  # the quantile never rests on fewer than it needs
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
        vecs = np.asarray(vecs, np.float32)
        rows: dict[int, list[int]] = {}  # person -> its probes' rows (every photo of a sampled person asks)
        for i, (pid, _) in enumerate(probes):
            rows.setdefault(pid, []).append(i)
        # per probe: its own person (nan: no other photo of them), the best other person, the second
        own, first, second, match = [], [], [], []
        for i, (pid, tid) in enumerate(probes):
            q = vecs[i : i + 1]
            ranked = cache.rank_persons(index, q, 3, exclude=tid)
            others = [*[score for p, score, _ in ranked if p != pid][:2], NO_COMPETITOR, NO_COMPETITOR]
            match.append(next((p for p, _, _ in ranked if p != pid), pid))
            # its own person with this photo left out, aggregated as identify aggregates
            mine = vecs[[j for j in rows[pid] if j != i]]
            own.append(np.nan if not len(mine) else aggregate(mine, q[0], cache.how(index)))
            first.append(others[0])
            second.append(others[1])
        own, first, second = (np.asarray(x, np.float64) for x in (own, first, second))
        cb = cohort_best(vecs, decision.cohort)  # what verdict uses under "margin"
        stranger = first > NO_COMPETITOR  # someone else is enrolled: a stranger to them
        # a person's photos count together, and so do two persons each matched to the other (the same pair
        # of look-alikes, counted from both sides)
        who = _look_alikes([(pid, m) for (pid, _), m in zip(probes, match)])[stranger]
        if stranger.sum() < needed:
            return None
        # a mated probe names its person when that person ranks first and clears the threshold
        mated = np.isfinite(own)
        card = 0.0 if decision.rule == "raw" else decision.beta
        betas = [card] + [b for b in BETAS if b != card] if mated.sum() >= self.min_mated else [card]
        # a tail extrapolated from fewer than its requirement is not trusted; the confidence bound on the
        # empirical quantile then decides (``_requirements`` let the gallery in on that alone)
        photos, need = self._tail_requirement()
        asking = {pid for (pid, _), is_stranger in zip(probes, stranger) if is_stranger}
        tail_ok = len(who) >= photos and len(asking) >= need
        thresholds, named, tails = {}, {}, {}
        for b in betas:
            got = far_threshold(
                _normalised(first, second, cb, b)[stranger], decision.target_far, self.min_above,
                who, self.confidence, tail_ok,
            )  # fmt: skip
            if got is None:  # too few independent strangers to bound the rate under this weight
                continue
            thresholds[b], tails[b] = got
            if mated.any():
                m_own, m_first = own[mated], first[mated]
                m_cb = None if cb is None else cb[mated]
                ok = (m_own > m_first) & (_normalised(m_own, m_first, m_cb, b) >= thresholds[b])
                named[b] = float(ok.mean())
        if card not in thresholds:  # the card's own rule cannot be bounded here: the card stays
            return None
        best = max(thresholds, key=lambda b: named.get(b, 0.0))
        if named.get(best, 0.0) < named.get(card, 0.0) + self.min_gain:
            best = card
        rule = "margin" if best else "raw"
        return LeaveOneOut(
            n, thresholds[best], rule, best,
            int(stranger.sum()), tails[best], int(mated.sum()) if len(betas) > 1 else 0, named, self.confidence,
        )  # fmt: skip
