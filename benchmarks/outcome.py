"""Per-probe outcomes of an open-set decision, printed as rates with their 95 % intervals.

A benchmark's "strangers accepted" is an estimate from a few hundred or thousand strangers: 32 of 2,722 (1.18 %)
is [0.81 %, 1.66 %], consistent with a 1 % promise kept. The intervals say how far a measured rate can be
read. Probes of one person are alike (a person's queries are named or missed together), so each rate's
Clopper-Pearson interval is taken on its effective sample (``reid.metrics.design_effect``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from reid.metrics.open_set import design_effect, rate_interval

HEADER = (f"{'named right':>11} {'(95 % int.)':>13} {'wrong name':>10} {'strangers acc.':>14} {'(95 % int.)':>13} "
          f"{'rank-1':>7}")  # fmt: skip


def _interval(hits: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    _, g = np.unique(groups, return_inverse=True)
    sizes = np.bincount(g)  # persons have different numbers of probes (LFW: 1 to over 500)
    d = design_effect(g[hits], sizes.size, hits.size, sizes=sizes)
    return rate_interval(int(hits.sum()), hits.size, design=d)


@dataclass
class Outcome:
    """Each known query (its person, named right, named wrong, right person first) and each stranger query
    (its person, accepted). Folds pool with ``+``."""

    person: np.ndarray
    right: np.ndarray
    wrong: np.ndarray
    top1: np.ndarray
    accepted: np.ndarray
    stranger: np.ndarray

    @classmethod
    def of(cls, person, right, wrong, top1, accepted, stranger) -> Outcome:
        return cls(np.asarray(person, np.int64), np.asarray(right, bool), np.asarray(wrong, bool),
                   np.asarray(top1, bool), np.asarray(accepted, bool), np.asarray(stranger, np.int64))  # fmt: skip

    def __add__(self, o: Outcome) -> Outcome:
        """Pooled: the persons (and strangers) of the two kept apart."""
        out = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(o, f.name)
            if f.name in ("person", "stranger"):
                b = b + (int(a.max()) + 1 if a.size else 0)
            out[f.name] = np.r_[a, b]
        return Outcome(**out)

    def columns(self) -> str:
        """The ``HEADER`` columns: named right and strangers accepted, each with its interval; wrong name;
        rank-1."""
        nl, nh = _interval(self.right, self.person)
        fl, fh = _interval(self.accepted, self.stranger)
        return (f"{self.right.mean():>11.2%} {f'{nl:.1%}-{nh:.1%}':>13} {self.wrong.mean():>10.2%} "
                f"{self.accepted.mean():>14.2%} {f'{fl:.2%}-{fh:.2%}':>13} {self.top1.mean():>7.2%}")  # fmt: skip


def ask(g, modality: str, model_id: str, known, strangers, threshold: float | None = None) -> Outcome:
    """Every known query and stranger through the gallery's decision (``Gallery.identify``, the best two
    persons). ``known``: (vector, enrolled person id) pairs; ``strangers``: (vector, group) pairs, a group's
    queries alike (one stranger's several photos). ``threshold``: an explicit one instead of the gallery's."""

    def identify(vector: np.ndarray):
        return g.identify(embedding=vector, modality=modality, model_id=model_id, k=2, threshold=threshold)

    person, right, wrong, top1 = [], [], [], []
    for vector, pid in known:
        r = identify(vector)
        hit = r.best.person_id == pid
        person.append(pid)
        top1.append(hit)
        right.append(hit and r.known)
        wrong.append((not hit) and r.known)
    accepted = [bool(identify(vector).known) for vector, _ in strangers]
    return Outcome.of(person, right, wrong, top1, accepted, [group for _, group in strangers])
