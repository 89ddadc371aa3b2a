"""LFW: people folders plus ``pairs.txt`` (10 folds of 300 matched then 300 mismatched pairs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reid.errors import DatasetError


@dataclass(frozen=True)
class FacePair:
    path_a: str
    path_b: str
    same: bool
    fold: int


@dataclass
class LFWPairs:
    root: str
    pairs: list[FacePair]
    num_folds: int

    @property
    def labels(self) -> np.ndarray:
        return np.array([p.same for p in self.pairs], dtype=bool)

    @property
    def folds(self) -> np.ndarray:
        return np.array([p.fold for p in self.pairs], dtype=np.int64)

    def image_paths(self) -> list[str]:
        """Distinct image paths in first-seen order (embed each once, then look pairs up)."""
        seen: dict[str, None] = {}
        for p in self.pairs:
            seen.setdefault(p.path_a)
            seen.setdefault(p.path_b)
        return list(seen)

    def summary(self) -> str:
        n_same = int(self.labels.sum())
        return (
            f"=> LFW pairs from {self.root}: {len(self.pairs)} pairs in {self.num_folds} folds "
            f"({n_same} matched, {len(self.pairs) - n_same} mismatched), {len(self.image_paths())} images"
        )


def lfw_image_path(root: Path, name: str, index: str, where: str) -> Path:
    try:
        i = int(index)
    except ValueError:
        raise DatasetError(f"{where}: image number {index!r} is not an integer") from None
    path = root / name / f"{name}_{i:04d}.jpg"
    if not path.is_file():
        raise DatasetError(f"{where}: image {path} does not exist")
    return path


def read_lfw(root: str | Path, pairs_file: str | Path | None = None) -> LFWPairs:
    """Parse ``pairs.txt`` (header ``folds pairs_per_half``) and resolve every image, failing on the first bad line."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"LFW root {root} is not a folder")
    pairs_path = Path(pairs_file) if pairs_file else root / "pairs.txt"
    if not pairs_path.is_file():
        raise DatasetError(f"LFW pairs file {pairs_path} does not exist")
    lines = pairs_path.read_text().splitlines()
    if not lines:
        raise DatasetError(f"{pairs_path} is empty")
    head = lines[0].split()
    try:
        num_folds, per_half = int(head[0]), int(head[1])
    except (IndexError, ValueError):
        raise DatasetError(
            f"{pairs_path}:1: header must be '<folds> <pairs per half>', got {lines[0]!r}"
        ) from None
    body = [(n, line) for n, line in enumerate(lines[1:], start=2) if line.strip()]
    expected = num_folds * per_half * 2
    if len(body) != expected:
        raise DatasetError(f"{pairs_path}: header promises {expected} pairs, file has {len(body)}")
    pairs = []
    for k, (n, line) in enumerate(body):
        where = f"{pairs_path}:{n}"
        parts = line.split()
        fold = k // (2 * per_half)
        if len(parts) == 3:
            a = lfw_image_path(root, parts[0], parts[1], where)
            b = lfw_image_path(root, parts[0], parts[2], where)
            same = True
        elif len(parts) == 4:
            a = lfw_image_path(root, parts[0], parts[1], where)
            b = lfw_image_path(root, parts[2], parts[3], where)
            same = False
        else:
            raise DatasetError(f"{where}: expected 'name i j' or 'name1 i name2 j', got {line!r}")
        expect_same = (k % (2 * per_half)) < per_half
        if same != expect_same:
            raise DatasetError(
                f"{where}: a {'matched' if same else 'mismatched'} pair where the fold order expects the other kind"
            )
        pairs.append(FacePair(str(a), str(b), same, fold))
    return LFWPairs(str(root), pairs, num_folds)
