"""Torch dataset over image records, and a checker that decodes every image up front."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from reid.data.records import ImageRecord, relabel
from reid.errors import ImageReadError
from reid.images import read_image

logger = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """Returns ``(image, label, camid, index)``; labels are 0..C-1 when ``relabel`` (for classifier losses)."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[np.ndarray], torch.Tensor] | None = None,
        relabel_ids: bool = True,
    ) -> None:
        self.records = list(records)
        self.pid_map: dict[int, int] | None = None
        if relabel_ids:
            self.records, self.pid_map = relabel(self.records)
        self.transform = transform

    @property
    def labels(self) -> list[int]:
        return [r.pid for r in self.records]

    @property
    def num_classes(self) -> int:
        return len({r.pid for r in self.records})

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        r = self.records[index]
        img = read_image(r.path)
        x = self.transform(img) if self.transform is not None else torch.from_numpy(img)
        return x, r.pid, r.camid, index


def verify_images(records: Sequence[ImageRecord], progress: bool = True) -> list[tuple[str, str]]:
    """Decode every image; return ``[(path, reason), ...]`` for all bad files (empty when all are good)."""
    bad: list[tuple[str, str]] = []
    for r in tqdm(records, desc="checking images", disable=not progress, unit="img"):
        try:
            read_image(r.path)
        except ImageReadError as e:
            bad.append((r.path, str(e)))
    if bad:
        logger.error("%d of %d images cannot be read", len(bad), len(records))
    return bad
