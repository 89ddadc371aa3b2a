"""The score normalisations compared by benchmarks.score_norm.py, against their definitions."""

from __future__ import annotations

import numpy as np

from benchmarks.score_norm import adaptive_snorm, scores, unit, whitening


def _snorm_by_hand(sim, probe_cohort, person_cohort, k, skip_person_first=False):
    out = np.zeros_like(sim)
    for i in range(sim.shape[0]):
        q = sorted(probe_cohort[i], reverse=True)[:k]
        for j in range(sim.shape[1]):
            row = sorted(person_cohort[j], reverse=True)
            p = row[1 : k + 1] if skip_person_first else row[:k]
            zq = (sim[i, j] - np.mean(q)) / np.std(q)
            zp = (sim[i, j] - np.mean(p)) / np.std(p)
            out[i, j] = (zq + zp) / 2
    return out


def test_adaptive_snorm_is_the_mean_of_both_sides_z_scores_over_their_top_k() -> None:
    rng = np.random.default_rng(0)
    sim = rng.uniform(-1, 1, (7, 5))
    probe_cohort, person_cohort = rng.uniform(-1, 1, (7, 40)), rng.uniform(-1, 1, (5, 40))
    for k, skip in ((2, False), (10, False), (10, True), (40, False)):
        got = adaptive_snorm(sim, probe_cohort, person_cohort, k, skip)
        np.testing.assert_allclose(got, _snorm_by_hand(sim, probe_cohort, person_cohort, k, skip), rtol=1e-10)


def test_whitening_makes_the_within_class_covariance_the_identity() -> None:
    rng = np.random.default_rng(1)
    centres = unit(rng.normal(size=(30, 8)))
    labels = np.repeat(np.arange(30), 12)
    # anisotropic within-class spread: the thing whitening removes
    x = unit(centres[labels] + rng.normal(size=(360, 8)) * np.linspace(0.02, 0.3, 8))
    mean, w = whitening(x, labels, shrink=0.0)
    np.testing.assert_allclose(mean, x.mean(axis=0))
    y = x @ w  # the class means are subtracted below, so the global mean does not matter here
    d = np.concatenate([y[labels == c] - y[labels == c].mean(axis=0) for c in range(30)])
    np.testing.assert_allclose(d.T @ d / len(d), np.eye(8), atol=1e-8)
    # shrunk all the way, it is a multiple of the identity: cosines are unchanged up to the centring
    _, w1 = whitening(x, labels, shrink=1.0)
    np.testing.assert_allclose(w1 / w1[0, 0], np.eye(8), atol=1e-10)


def test_margin_rule_names_the_best_person_and_subtracts_beta_times_the_runner_up() -> None:
    persons = unit(np.eye(3, 4))
    probes = unit(np.array([[1.0, 0.2, 0.0, 0.0], [0.0, 0.1, 1.0, 0.3]]))
    cohort = unit(np.array([[0.0, 0.0, 0.0, 1.0]]))
    best, s = scores(("margin", 0.5), persons, probes, cohort, cohort, None)
    sim = probes @ persons.T
    runner = np.maximum(np.sort(sim, axis=1)[:, -2], (probes @ cohort.T)[:, 0])
    assert best.tolist() == [0, 2]
    np.testing.assert_allclose(s, sim.max(axis=1) - 0.5 * runner)
