"""Validation identities carved out of training data, so that data which chooses never reports.

Checkpoint selection, early stopping, recipe choices and decision thresholds are made on identities held out of
the *training* folders; the test split (e.g. cuhk03-np query/gallery, LFW) is only reported.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from reid.data.records import UNKNOWN_CAMERA, ImageRecord, ReidDataset
from reid.errors import DatasetError


def _n_held(n_ids: int, identities: float) -> int:
    n = round(n_ids * identities) if 0 < identities < 1 else int(identities)
    if n < 2:
        raise DatasetError(f"val_identities must hold out at least 2 identities, got {identities}")
    if n >= n_ids:
        raise DatasetError(
            f"val_identities={identities} leaves no training identity (the train set has {n_ids})"
        )
    return n


def holdout_identities(
    train: Sequence[ImageRecord],
    identities: float,
    seed: int = 0,
    extra_train: Sequence[ImageRecord] = (),
    name: str = "val",
    extends: float = 0,
) -> tuple[list[ImageRecord], ReidDataset]:
    """Split training records into (train, validation) by identity, deterministically under ``seed``.

    ``identities`` is a count (>= 1) or a fraction (< 1) of the training identities with 2+ images.
    ``extra_train`` (other views of the same identities, e.g. detector boxes) joins training, with the
    validation identities removed from it too. The validation split mirrors the Market-1501 protocol: for each
    held-out identity one query per camera, every other image in the gallery. Without camera ids, one query per
    identity, and the query is given camera 0 and the gallery camera 1 so that evaluation removes only the query
    image itself (which is not in the gallery), never a true match.

    ``extends`` (a count or fraction, below ``identities``): first hold out exactly the identities that
    ``identities=extends`` would hold out under this seed, then the rest from the others. So a model that holds
    out more identities can still be compared with an earlier one on the identities neither trained on (that
    earlier split's own query/gallery: ``python -m training evaluate`` with its config).
    """
    by_pid: dict[int, list[ImageRecord]] = defaultdict(list)
    for r in train:
        by_pid[r.pid].append(r)
    eligible = sorted(p for p, rs in by_pid.items() if len(rs) >= 2)
    n = _n_held(len(eligible), identities)
    rng = random.Random(seed)
    if extends:
        try:
            first = _n_held(len(eligible), extends)
        except DatasetError as e:
            raise DatasetError(f"val_extends={extends}: {e}") from e
        if first >= n:
            raise DatasetError(
                f"val_extends={extends} must hold out fewer identities than val_identities={identities}"
            )
        held = set(rng.sample(eligible, first))
        held |= set(rng.sample([p for p in eligible if p not in held], n - first))
    else:
        held = set(rng.sample(eligible, n))
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    for pid in sorted(held):
        rs = by_pid[pid]
        cams = sorted({r.camid for r in rs})
        if cams == [UNKNOWN_CAMERA]:
            q = rng.randrange(len(rs))
            query.append(ImageRecord(rs[q].path, pid, 0))
            gallery += [ImageRecord(r.path, pid, 1) for i, r in enumerate(rs) if i != q]
            continue
        chosen = set()
        for cam in cams:
            idx = [i for i, r in enumerate(rs) if r.camid == cam]
            if len(idx) < len(rs):  # a camera's only query needs a match in another camera
                chosen.add(rng.choice(idx))
        if not chosen:
            chosen.add(rng.randrange(len(rs)))
        query += [rs[i] for i in sorted(chosen)]
        gallery += [r for i, r in enumerate(rs) if i not in chosen]
    kept = [r for r in train if r.pid not in held]
    kept += [r for r in extra_train if r.pid not in held]
    return kept, ReidDataset(name, [], query, gallery)


def holdout_from_config(
    train: Sequence[ImageRecord], data: dict, extra_train: Sequence[ImageRecord] = ()
) -> tuple[list[ImageRecord], ReidDataset]:
    """``holdout_identities`` as a training config's ``data`` section asks (``val_identities``, ``val_seed``,
    ``val_extends``): the one reading of those keys, shared by the trainer, the exporter and ``reid-calibrate``,
    so the identities they hold out are the same."""
    return holdout_identities(
        train,
        data["val_identities"],
        int(data.get("val_seed") or 0),
        extra_train=extra_train,
        extends=data.get("val_extends") or 0,
    )
