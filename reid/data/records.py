"""Records and dataset bundles shared by every reader."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

UNKNOWN_CAMERA = -1


@dataclass(frozen=True)
class ImageRecord:
    """One image: its path, person id and camera id (0-based; ``-1`` when the camera is unknown)."""

    path: str
    pid: int
    camid: int = UNKNOWN_CAMERA


def count(records: Sequence[ImageRecord]) -> tuple[int, int, int]:
    """(number of identities, number of images, number of known cameras)."""
    pids = {r.pid for r in records}
    cams = {r.camid for r in records if r.camid != UNKNOWN_CAMERA}
    return len(pids), len(records), len(cams)


def relabel(records: Iterable[ImageRecord]) -> tuple[list[ImageRecord], dict[int, int]]:
    """Map person ids to contiguous labels 0..C-1 in sorted-id order (what classifier losses need)."""
    records = list(records)
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [ImageRecord(r.path, mapping[r.pid], r.camid) for r in records], mapping


@dataclass
class ReidDataset:
    """A train / query / gallery split. ``query`` and ``gallery`` may be empty for train-only data."""

    name: str
    train: list[ImageRecord]
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)
    root: str = ""

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        return count(self.train)[2]

    @property
    def has_cameras(self) -> bool:
        return all(r.camid != UNKNOWN_CAMERA for r in self.query + self.gallery)

    def summary(self) -> str:
        """A torchreid-style table: subset | # ids | # images | # cameras."""
        lines = [
            f"=> {self.name} loaded" + (f" from {self.root}" if self.root else ""),
            "  ----------------------------------------",
            "  subset   | # ids | # images | # cameras",
            "  ----------------------------------------",
        ]
        for label, recs in (("train", self.train), ("query", self.query), ("gallery", self.gallery)):
            ids, imgs, cams = count(recs)
            cam_s = str(cams) if cams or not recs else "n/a"
            lines.append(f"  {label:<8} | {ids:5d} | {imgs:8d} | {cam_s:>9}")
        lines.append("  ----------------------------------------")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
