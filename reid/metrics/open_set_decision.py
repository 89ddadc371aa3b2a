"""The open-set decision: "is the best-ranked person really this person, or a stranger?"

The raw best score cannot tell "first and right" from "first among strangers": a stranger's best score is the
maximum over every enrolled person, and it grows with the gallery. What separates them is how the best score
stands against its competitors. The decision here scores a query by

    normalised = best - beta * runner_up

where ``runner_up`` is the best competitor: the second-best *person* of the gallery, or the best of a fixed
*cohort* of never-enrolled people that ships with the model, whichever is higher. ``beta = 0`` is the plain raw
score; ``beta = 1`` is the margin over the runner-up. The cohort keeps the rule meaningful for a gallery of one
person, and ties the stranger's competitor pool to the model rather than to how many people are enrolled.

``calibrate_decision`` sets ``beta`` and the threshold on labelled validation identities, simulating the
gallery as it will be used: every identity with more than ``enroll_per_id`` images enrolled with one template
set (its first ``enroll_per_id``), its other images asked as mated probes against everyone, and every
identity's images asked as a stranger against the rest (leave one identity out). So the strangers' best scores
are measured, not modelled, up to a gallery of all the validation identities but one; past that the size table
extrapolates. (Until 2026-11-30 the identities were split in two halves that swapped roles: that measured
galleries half as big, and which half an identity fell in moved the threshold.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from reid.metrics.aggregation import person_scores
from reid.metrics.open_set import threshold_at_far
from reid.metrics.rank import EvaluationError

NO_COMPETITOR = -1.0  # cosine floor: the runner-up when there is no other person and no cohort


@dataclass(frozen=True)
class OpenSetScores:
    best: np.ndarray  # (P,) index of the best gallery identity
    score: np.ndarray  # (P,) its raw similarity
    runner_up: np.ndarray  # (P,) the best competitor: second gallery identity or cohort, whichever is higher
    normalised: np.ndarray  # (P,) score - beta * runner_up


def open_set_scores(
    similarity: np.ndarray, beta: float = 1.0, cohort_best: np.ndarray | None = None
) -> OpenSetScores:
    """``similarity``: probes x gallery identities (templates already aggregated per person).
    ``cohort_best``: (P,) each probe's best similarity to the cohort (or None)."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[1] == 0:
        raise EvaluationError(f"similarity must be (probes, identities) with identities > 0, got {sim.shape}")
    rows = np.arange(sim.shape[0])
    if sim.shape[1] >= 2:
        top2 = np.argpartition(-sim, 1, axis=1)[:, :2]
        a, b = sim[rows, top2[:, 0]], sim[rows, top2[:, 1]]
        best = np.where(a >= b, top2[:, 0], top2[:, 1])
        second = np.minimum(a, b)
    else:
        best = np.zeros(sim.shape[0], dtype=np.int64)
        second = np.full(sim.shape[0], NO_COMPETITOR)
    score = sim[rows, best]
    runner = second if cohort_best is None else np.maximum(second, np.asarray(cohort_best, np.float64))
    return OpenSetScores(best, score, runner, score - beta * runner)


def cohort_best(queries: np.ndarray, cohort: np.ndarray | None) -> np.ndarray | None:
    """Each query's best cosine similarity to the cohort (None without a cohort)."""
    if cohort is None or len(cohort) == 0:
        return None
    return (np.asarray(queries, np.float32) @ np.asarray(cohort, np.float32).T).max(axis=1).astype(np.float64)


@dataclass
class DecisionCalibration:
    rule: str  # "margin" (beta = 0 is the raw score)
    beta: float
    threshold: float
    target_far: float
    measured_far: float  # strangers accepted, on the validation simulation
    measured_dir: float  # mated probes named correctly and accepted
    rank1: float  # mated probes whose best identity is right (no threshold)
    n_mated: int
    n_strangers: int
    n_identities: int
    enroll_per_id: int
    by_beta: dict[float, float] = field(default_factory=dict)  # DIR at the target FAR for every beta tried
    # the threshold for each gallery size (persons), from the same validation strangers (both rules)
    by_size: dict[int, float] = field(default_factory=dict)
    gallery_size: int = 0  # persons a validation stranger was asked against (what ``threshold`` is for)
    # how far past the validation galleries' size the ``by_size`` table can be trusted (``size_check``)
    size_check: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["by_beta"] = {str(k): v for k, v in self.by_beta.items()}
        d["by_size"] = {str(k): v for k, v in self.by_size.items()}
        return d


# the margin weights a calibration chooses between (``best - beta x runner-up``; 0: the raw best score)
BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _gallery_scores(emb, labels, ids, enroll_per_id, cohort, betas, aggregation="max"):
    """One simulated gallery holding every identity with more than ``enroll_per_id`` images (its first
    ``enroll_per_id`` as templates, scored by ``aggregation`` as the gallery will): their other images ask as
    mated probes against everyone; every identity's images ask as strangers against the rest (the gallery with
    their own person left out). Returns the probes' (mated, correct, stranger) values per beta, the strangers'
    scores against the persons they saw (a list of strangers x persons arrays) and their cohort best."""
    counts = {pid: int((labels == pid).sum()) for pid in ids}
    enrolled = np.array(sorted(p for p in ids if counts[p] > enroll_per_id))
    if len(enrolled) < 2:
        raise EvaluationError(
            f"calibrate: {len(enrolled)} identities have more than {enroll_per_id} images to enroll and probe; "
            "needs at least 2"
        )
    templates, owners, mated_q, mated_y = [], [], [], []
    for j, pid in enumerate(enrolled):
        ix = np.flatnonzero(labels == pid)
        templates.append(ix[:enroll_per_id])
        owners += [j] * enroll_per_id
        mated_q.append(ix[enroll_per_id:])
        mated_y += [j] * (len(ix) - enroll_per_id)
    t, owners = np.concatenate(templates), np.asarray(owners)
    mated = np.concatenate(mated_q)
    sim_m = person_scores(emb[mated], emb[t], owners, aggregation)
    cb_m = cohort_best(emb[mated], cohort)
    # strangers: an enrolled identity's images against the others (its own column dropped, M = N - 1 persons);
    # an identity never enrolled (too few images) against all N
    sims, cbs = [], []
    is_enrolled = np.isin(labels, enrolled)
    if is_enrolled.any():
        ix = np.flatnonzero(is_enrolled)
        full = person_scores(emb[ix], emb[t], owners, aggregation)
        keep = np.ones(full.shape, bool)
        keep[np.arange(len(ix)), np.searchsorted(enrolled, labels[ix])] = False
        sims.append(full[keep].reshape(len(ix), len(enrolled) - 1))
        cbs.append(cohort_best(emb[ix], cohort))
    if not is_enrolled.all():
        ix = np.flatnonzero(~is_enrolled)
        sims.append(person_scores(emb[ix], emb[t], owners, aggregation))
        cbs.append(cohort_best(emb[ix], cohort))
    out = {}
    for beta in betas:
        m = open_set_scores(sim_m, beta, cb_m)
        stranger = np.concatenate([open_set_scores(x, beta, cb).normalised for x, cb in zip(sims, cbs)])
        out[beta] = (m.normalised, m.best == np.asarray(mated_y), stranger)
    return out, sims, cbs


# gallery sizes (persons) at which a raw-score decision's threshold is tabulated; identify interpolates in log N
GALLERY_SIZES = (
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    1_000_000,
)


def far_at_size(stranger_sims: list[np.ndarray], t: float, n: int, tail: str = "empirical") -> float:
    """Strangers accepted by ``best >= t`` in a gallery of ``n`` persons, from each stranger probe's scores
    against the ``M`` enrolled validation persons: the probe's share ``p(t)`` of persons scoring ``>= t``
    (``tail="empirical"``; for ``n <= M`` exactly the chance that a random ``n`` of them hold one, drawn
    without replacement) or a normal fitted to its Fisher-z scores
    (``tail="normal"``, extends past the ``M`` seen); one of ``n`` persons drawn like them passes with
    ``1 - (1 - p(t)) ** n``. Per probe, so a probe's hubness (high scores against everyone) is kept."""
    from scipy.special import gammaln
    from scipy.stats import norm

    far, count = 0.0, 0
    for sims in stranger_sims:
        m = sims.shape[1]
        if tail == "empirical" and n <= m:  # n of the M persons drawn without replacement: exact
            k = (sims >= t).sum(axis=1)
            free = m - k  # persons below t
            log_none = (
                gammaln(free + 1) - gammaln(np.maximum(free - n, 0) + 1) - gammaln(m + 1) + gammaln(m - n + 1)
            )
            far += float(np.where(free >= n, -np.expm1(log_none), 1.0).sum())
            count += len(k)
            continue
        if tail == "empirical":
            p = (sims >= t).mean(axis=1)
        else:
            z = np.arctanh(np.clip(sims, -0.999999, 0.999999))  # Fisher z: a normal there respects |s| < 1
            p = norm.sf(
                (np.arctanh(min(max(t, -0.999999), 0.999999)) - z.mean(axis=1))
                / np.maximum(z.std(axis=1), 1e-6)
            )
        far += float((-np.expm1(n * np.log1p(-np.minimum(p, 1 - 1e-15)))).sum())
        count += len(p)
    return far / max(count, 1)


def _solve(stranger_sims: list[np.ndarray], target_far: float, n: int, tail: str) -> float:
    lo, hi = -1.0, 1.0 + 1e-6  # far_at_size falls as t rises
    for _ in range(40):
        mid = (lo + hi) / 2
        if far_at_size(stranger_sims, mid, n, tail) <= target_far:
            hi = mid
        else:
            lo = mid
    return hi


def thresholds_by_gallery_size(
    stranger_sims: list[np.ndarray], target_far: float, sizes: tuple[int, ...] = GALLERY_SIZES
) -> dict[int, float]:
    """For each gallery size, the raw threshold at which ``target_far`` of the validation strangers are
    accepted, "as the gallery sees them" at that size (a stranger's best score is a maximum over every
    enrolled person, so the threshold rises with the gallery). Up to the ``M`` persons the validation
    galleries held, the empirical model; past it, the normal model's rise added to the empirical value at
    ``M`` (an extrapolation, anchored where it was measured)."""
    m = min(x.shape[1] for x in stranger_sims)
    anchor = _solve(stranger_sims, target_far, m, "empirical")
    base = _solve(stranger_sims, target_far, m, "normal")
    out = {}
    for n in sizes:
        if n <= m:
            # never below the value measured at the validation galleries' size: below it the model rests on one
            # pair at a time, and a new scene (one room, one light) makes strangers look more alike than the
            # validation set does; a small gallery then accepts fewer strangers than the target, not more
            out[n] = max(_solve(stranger_sims, target_far, n, "empirical"), anchor)
        else:
            out[n] = min(1.0, anchor + _solve(stranger_sims, target_far, n, "normal") - base)
    return out


def _top_two_of_n(
    sims: np.ndarray, n: int, draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``draws`` samples, per stranger probe, of its best and second-best score among ``n`` persons drawn like
    the ``M`` it was scored against: a normal fitted to the probe's Fisher-z scores (kept per probe, as in
    ``far_at_size``), its top two order statistics sampled exactly through uniform order statistics
    (``U(n) = V1^(1/n)``, ``U(n-1) = U(n) V2^(1/(n-1))``), in log space so ``1 - U`` keeps its digits at 1M."""
    from scipy.stats import norm

    z = np.arctanh(np.clip(sims, -0.999999, 0.999999))
    mu, sd = z.mean(axis=1, keepdims=True), np.maximum(z.std(axis=1, keepdims=True), 1e-6)
    log_u1 = np.log(rng.random((len(z), draws))) / n
    best = np.tanh(mu + sd * norm.isf(-np.expm1(log_u1)))
    if n == 1:
        return best, np.full_like(best, NO_COMPETITOR)
    log_u2 = log_u1 + np.log(rng.random((len(z), draws))) / (n - 1)
    return best, np.tanh(mu + sd * norm.isf(-np.expm1(log_u2)))


def margin_thresholds_by_gallery_size(
    stranger_sims: list[np.ndarray],
    cohort_bests: list[np.ndarray | None],
    beta: float,
    target_far: float,
    anchor: float,
    sizes: tuple[int, ...] = GALLERY_SIZES,
    draws: int = 256,
    seed: int = 0,
) -> dict[int, float]:
    """The margin rule's thresholds by gallery size: ``best - beta * max(second, cohort)`` of a stranger
    shrinks as the gallery grows (its best and second-best are both drawn from the far tail, closer together
    the more persons there are), so a threshold fixed at the validation galleries' size accepts ever fewer
    strangers *and* names ever fewer known people. Each stranger probe's top two among ``n`` persons are
    sampled from the normal fitted to its scores (``_top_two_of_n``); the cohort competitor stays the probe's
    own. The table is that model's change from the validation size ``M`` added to ``anchor``, the threshold
    measured there (an extrapolation anchored where it was measured, as for the raw rule), floored at ``anchor``
    up to ``M``."""
    m = min(x.shape[1] for x in stranger_sims)

    def model(n: int) -> float:
        rng = np.random.default_rng(seed)  # the same uniforms at every size: a smooth, monotone table
        values = []
        for sims, cb in zip(stranger_sims, cohort_bests):
            best, second = _top_two_of_n(sims, n, draws, rng)
            runner = second if cb is None else np.maximum(second, np.asarray(cb)[:, None])
            values.append((best - beta * runner).ravel())
        return float(np.quantile(np.concatenate(values), 1 - target_far))

    base = model(m)
    # below the validation size, never under the measured threshold (as for the raw rule): there the cohort is
    # the competitor that binds, and one room under one light makes strangers look more alike than validation
    # strangers do; a small gallery then accepts fewer strangers than the target, not more
    out = {}
    for n in sizes:
        shift = model(n) - base
        out[n] = float(np.clip(anchor + (shift if n > m else max(shift, 0.0)), -2.0, 2.0))
    return out


def _table_at(
    sims, cbs, beta: float, target_far: float, sizes: tuple[int, ...], seed: int
) -> dict[int, float]:
    """The rule's size table from these stranger scores, as ``calibrate_decision`` builds it."""
    if beta == 0.0:
        return thresholds_by_gallery_size(sims, target_far, sizes)
    values = np.concatenate([open_set_scores(x, beta, cb).normalised for x, cb in zip(sims, cbs)])
    anchor = threshold_at_far(values, target_far)
    return margin_thresholds_by_gallery_size(sims, cbs, beta, target_far, anchor, sizes, seed=seed)


def size_check(
    stranger_sims: list[np.ndarray],
    cohort_bests: list[np.ndarray | None],
    beta: float,
    target_far: float,
    splits: int = 20,
    seed: int = 0,
    table_far: float | None = None,
) -> dict[str, float]:
    """The size table checked where it can be, on validation data alone: built from a random half of each
    simulated gallery's persons (their strangers' scores against those persons only) and read at the whole
    gallery, the share of the same strangers it accepts there (exactly: each probe's best over every person).
    Past the validation galleries the table extrapolates further than this, so the spread over ``splits``
    halves is a floor on how uncertain its promise is at a store's size. ``table_far``: the rate the table past
    the validation size is solved for (default ``target_far``; ``sized_table`` lowers it)."""
    rng = np.random.default_rng(seed)
    full = [x.shape[1] for x in stranger_sims]
    sizes, rate = tuple(sorted(set(full))), target_far if table_far is None else table_far
    got = []
    for _ in range(splits):
        halves = [x[:, rng.choice(x.shape[1], x.shape[1] // 2, replace=False)] for x in stranger_sims]
        table = _table_at(halves, cohort_bests, beta, rate, sizes, seed)
        accepted = [
            open_set_scores(x, beta, cb).normalised >= table[x.shape[1]]
            for x, cb in zip(stranger_sims, cohort_bests)
        ]
        got.append(float(np.concatenate(accepted).mean()))
    return {
        "fitted_persons": min(full) // 2,
        "read_persons": min(full),
        "accepted_mean": float(np.mean(got)),
        "accepted_sd": float(np.std(got)),
        "accepted_max": float(np.max(got)),
        "splits": splits,
    }


MIN_FITTED = 8  # persons half a validation gallery must hold for the size check to say anything


def sized_table(
    stranger_sims: list[np.ndarray],
    cohort_bests: list[np.ndarray | None],
    beta: float,
    target_far: float,
    sizes: tuple[int, ...] = GALLERY_SIZES,
    seed: int = 0,
) -> tuple[dict[int, float], dict[str, float]]:
    """The rule's size table with its extrapolation corrected on validation data, and the check that set it.

    Up to the validation galleries' size ``M`` the table is measured (``M`` is one of its sizes, so reading it
    between two tabulated sizes never mixes in the extrapolated part below ``M``). Past ``M``, its model is
    checked the only way validation allows (``size_check``: built on half of each gallery's persons, read at all
    of them). When that check accepts more strangers than the target, the part past ``M`` is solved for a lower
    rate: the highest whose check lands on the target, by bisection in log rate, down to a 50th of the target or
    one validation stranger, whichever is higher. The result at that rate is fitted on the same strangers, so it
    is on target by construction; it is kept only if it accepts fewer than the uncorrected check did. The check
    spans one doubling of the gallery, so the correction grows in from ``M`` (none) to ``2 M`` (whole, in log
    size); a store's gallery may lie further out, so the correction is a floor."""
    m = min(x.shape[1] for x in stranger_sims)
    sizes = tuple(sorted(set(sizes) | {m}))
    table = _table_at(stranger_sims, cohort_bests, beta, target_far, sizes, seed)
    if m // 2 < MIN_FITTED:  # halves too small to check anything: the table as modelled
        return table, {}
    plain = size_check(stranger_sims, cohort_bests, beta, target_far, seed=seed)
    record = {
        **{k: plain[k] for k in ("fitted_persons", "read_persons", "splits")},
        "check_mean": plain["accepted_mean"],
        "check_sd": plain["accepted_sd"],
        "check_max": plain["accepted_max"],
        "solved_for": target_far,
        "fitted_mean": plain["accepted_mean"],
    }
    if plain["accepted_mean"] <= target_far:
        return table, record

    def check(rate: float) -> float:
        return size_check(stranger_sims, cohort_bests, beta, target_far, seed=seed, table_far=rate)[
            "accepted_mean"
        ]

    floor = max(target_far / 50, 1 / sum(len(x) for x in stranger_sims))
    if floor >= target_far:  # one validation stranger is already more than the target: nothing to resolve
        return table, record
    rate, got = floor, check(floor)
    if got <= target_far:  # invariant: check(exp(lo)) <= target < check(exp(hi))
        lo, hi = np.log(floor), np.log(target_far)
        for _ in range(10):
            mid = (lo + hi) / 2
            at = check(float(np.exp(mid)))
            if at > target_far:
                hi = mid
            else:
                lo, got = mid, at
        rate = float(np.exp(lo))
    if got >= plain["accepted_mean"]:  # lowering the rate did not help (too few strangers to resolve it)
        return table, record
    past = _table_at(stranger_sims, cohort_bests, beta, rate, sizes, seed)
    record.update(solved_for=rate, fitted_mean=got)
    # the correction grows in over the doubling past M that the check measured (fitted at M/2, read at M), so
    # the table does not jump at M + 1, where nothing is extrapolated yet; from 2M on it is whole
    ramp = {n: min(1.0, float(np.log2(n / m))) for n in sizes if n > m}
    return {n: (table[n] if n <= m else table[n] + ramp[n] * (past[n] - table[n])) for n in sizes}, record


def calibrate_decision(
    embeddings: np.ndarray,
    labels,
    target_far: float = 1e-2,
    enroll_per_id: int = 1,
    cohort: np.ndarray | None = None,
    betas: tuple[float, ...] = BETAS,
    seed: int = 0,
    aggregation: str = "max",
    size_table: bool = True,
) -> DecisionCalibration:
    """Choose ``beta`` (the one naming most mated probes at ``target_far``) and the threshold, on validation
    identities that never appear in ``cohort``. Identities with fewer than ``enroll_per_id + 1`` images only
    ever play strangers. ``aggregation``: how a person's ``enroll_per_id`` templates score a probe (the one the
    gallery that uses this decision ranks by; any is the same with one template). ``size_table=False`` leaves
    ``by_size`` and ``size_check`` empty (the table's check is the costly part; choosing beta needs neither)."""
    emb = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels)
    if emb.ndim != 2 or len(emb) != len(labels):
        raise EvaluationError(f"calibrate: {emb.shape} embeddings for {len(labels)} labels")
    if not 0 < target_far < 1:
        raise EvaluationError(f"calibrate: target_far must be in (0, 1), got {target_far}")
    ids = np.unique(labels)
    if len(ids) < 4:
        raise EvaluationError(f"calibrate: needs at least 4 identities, got {len(ids)}")
    fold, stranger_sims, stranger_cb = _gallery_scores(
        emb, labels, ids, enroll_per_id, cohort, betas, aggregation
    )
    by_beta, best = {}, None
    for beta in betas:
        mated, correct, stranger = fold[beta]
        thr = threshold_at_far(stranger, target_far)
        dir_ = float((correct & (mated >= thr)).mean())
        by_beta[float(beta)] = dir_
        if best is None or dir_ > best[1] + 1e-12:
            best = (
                float(beta),
                dir_,
                thr,
                float((stranger >= thr).mean()),
                float(correct.mean()),
                mated,
                stranger,
            )
    beta, dir_, thr, far, rank1, mated, stranger = best
    by_size, checked = (
        sized_table(stranger_sims, stranger_cb, beta, target_far, seed=seed) if size_table else ({}, {})
    )
    return DecisionCalibration(
        "raw" if beta == 0.0 else "margin", beta, float(thr), target_far, far, dir_, rank1, len(mated), len(stranger),
        len(ids), enroll_per_id, by_beta, by_size, min(x.shape[1] for x in stranger_sims), checked,
    )  # fmt: skip


def split_cohort(
    embeddings: np.ndarray, labels, fraction: float = 1 / 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a cohort out of labelled embeddings: ``fraction`` of the identities (seeded), one embedding each
    (their first, as a gallery would enroll them). Returns ``(cohort, keep)`` where ``keep`` masks the
    embeddings of the other identities, left for calibration."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    n = round(len(ids) * fraction)
    if not 0 < n < len(ids) - 3:
        raise EvaluationError(
            f"cohort: {fraction:.2f} of {len(ids)} identities leaves no cohort or too few to calibrate on"
        )
    chosen = np.random.default_rng(seed).permutation(ids)[:n]
    first = [int(np.flatnonzero(labels == pid)[0]) for pid in chosen]
    return np.asarray(embeddings, np.float32)[first], ~np.isin(labels, chosen)


def calibrate_with_cohort(
    embeddings: np.ndarray,
    labels,
    target_far: float = 1e-2,
    enroll_per_id: int = 1,
    cohort_fraction: float = 1 / 3,
    seed: int = 0,
    betas: tuple[float, ...] = BETAS,
    aggregation: str = "max",
) -> tuple[DecisionCalibration, np.ndarray]:
    """How a model card is made (``reid-calibrate``): ``split_cohort`` carves the cohort out of the validation
    identities, the others choose beta. When beta 0 (the raw score, which has no use for a cohort) names the
    most, its threshold and size table are measured again on every identity, cohort included: more strangers
    and a bigger simulated gallery, so less of the table is extrapolated; ``by_beta`` stays what chose the
    rule. Returns the calibration and the cohort it was made with."""
    labels = np.asarray(labels)
    cohort, keep = split_cohort(embeddings, labels, cohort_fraction, seed)
    beta, by_beta = 0.0, None
    # choose beta beside the cohort; the size table is made once, for the rule chosen
    if tuple(betas) != (0.0,):
        emb, y = np.asarray(embeddings)[keep], labels[keep]
        chose = calibrate_decision(emb, y, target_far, enroll_per_id, cohort, betas, seed, aggregation, False)
        beta, by_beta = chose.beta, chose.by_beta
    if beta != 0.0:
        cal = calibrate_decision(emb, y, target_far, enroll_per_id, cohort, (beta,), seed, aggregation)
    else:
        cal = calibrate_decision(
            embeddings, labels, target_far, enroll_per_id, None, (0.0,), seed, aggregation
        )
    if by_beta is not None:
        cal.by_beta = by_beta  # what chose the rule (beside a cohort), not re-measured
    return cal, cohort
