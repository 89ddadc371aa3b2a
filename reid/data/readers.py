"""Readers that turn dataset folders into :class:`ImageRecord` lists.

Conventions (as torchreid): camera ids are stored 0-based (``c1`` -> 0); Market-1501's junk id ``-1`` is dropped
from every subset; the distractor id ``0`` is kept in the gallery (it never matches a query) and dropped from
train, where it is not an identity.
"""

from __future__ import annotations

import logging
import random
import re
from collections import defaultdict
from pathlib import Path

from reid.data.records import UNKNOWN_CAMERA, ImageRecord, ReidDataset
from reid.errors import DatasetError
from reid.images import is_image_file
from reid.utils.registry import Registry

logger = logging.getLogger(__name__)

DATASETS: Registry[ReidDataset] = Registry("dataset")

MARKET_PATTERN = re.compile(r"^(-?\d+)_c(\d+)")
MARKET_SUBSETS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def _require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{what} {path} is not a folder")
    return path


def _list_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p.name))
    if not files:
        raise DatasetError(f"{folder} holds no image files ({', '.join(('.jpg', '.png', '...'))})")
    return files


def parse_market_name(path: Path) -> tuple[int, int]:
    """``0002_c1s1_000451_03.jpg`` or ``0003_c1_21.jpg`` -> (pid, 0-based camid)."""
    m = MARKET_PATTERN.match(path.name)
    if not m:
        raise DatasetError(
            f"{path}: file name does not follow the Market-1501 pattern PPPP_cC... (e.g. 0002_c1s1_000451_03.jpg)"
        )
    pid, cam = int(m.group(1)), int(m.group(2))
    if cam < 1:
        raise DatasetError(f"{path}: camera number must start at 1 (c1), got c{cam}")
    return pid, cam - 1


def read_market_folder(folder: Path, subset: str) -> list[ImageRecord]:
    records = []
    junk = distractors = 0
    for f in _list_images(folder):
        pid, camid = parse_market_name(f)
        if pid == -1:
            junk += 1
            continue
        if pid < -1:
            raise DatasetError(f"{f}: person id {pid} is invalid (ids are >= 0, or -1 for junk)")
        if pid == 0 and subset == "train":
            distractors += 1
            continue
        records.append(ImageRecord(str(f), pid, camid))
    if junk or distractors:
        logger.info("%s: dropped %d junk (-1) and %d distractor (0) images", folder, junk, distractors)
    if not records:
        raise DatasetError(f"{folder} holds no usable images (all junk or distractors)")
    return records


@DATASETS.register("market1501")
def read_market1501(root: str | Path, name: str = "market1501") -> ReidDataset:
    """Read a Market-1501-layout folder: ``bounding_box_train/``, ``query/``, ``bounding_box_test/``."""
    root = _require_dir(Path(root), "dataset root")
    missing = [sub for sub in MARKET_SUBSETS.values() if not (root / sub).is_dir()]
    if missing:
        raise DatasetError(f"{root} is not in Market-1501 layout: missing folder(s) {', '.join(missing)}")
    parts = {k: read_market_folder(root / sub, k) for k, sub in MARKET_SUBSETS.items()}
    ds = ReidDataset(name, parts["train"], parts["query"], parts["gallery"], root=str(root))
    train_ids = {r.pid for r in ds.train}
    test_ids = {r.pid for r in ds.query}
    if train_ids & test_ids:
        logger.warning("%s: %d identities appear in both train and query", root, len(train_ids & test_ids))
    return ds


def read_extra_train(folder: str | Path) -> list[ImageRecord]:
    """Extra training views in Market layout: a ``bounding_box_train/`` folder, or a root that holds one."""
    folder = _require_dir(Path(folder), "data.extra_train folder")
    if (folder / MARKET_SUBSETS["train"]).is_dir():
        folder = folder / MARKET_SUBSETS["train"]
    return read_market_folder(folder, "train")


@DATASETS.register("cuhk03-np")
def read_cuhk03_np(root: str | Path) -> ReidDataset:
    """CUHK03-NP in Market-1501 layout (``PPPP_cC_N.jpg``)."""
    return read_market1501(root, name="cuhk03-np")


def read_identity_folders(
    root: str | Path, camera_pattern: str | None = None, min_images: int = 1
) -> list[ImageRecord]:
    """Read ``root/<person>/<image>``. Person ids are assigned in sorted folder order (0..C-1).

    ``camera_pattern`` is an optional regex with one group that extracts the camera number from a file name
    (e.g. ``r"_c(\\d+)"``); without it cameras are unknown (-1), which training does not need.
    Folders with fewer than ``min_images`` images are skipped and counted in the log.
    """
    root = _require_dir(Path(root), "dataset root")
    people = sorted(p for p in root.iterdir() if p.is_dir())
    if not people:
        raise DatasetError(f"{root} holds no person folders (expected root/<person>/<image>)")
    cam_re = re.compile(camera_pattern) if camera_pattern else None
    records: list[ImageRecord] = []
    skipped = 0
    pid = 0
    for person in people:
        files = sorted(p for p in person.iterdir() if p.is_file() and is_image_file(p.name))
        if len(files) < max(min_images, 1):
            skipped += 1
            continue
        for f in files:
            camid = UNKNOWN_CAMERA
            if cam_re is not None:
                m = cam_re.search(f.name)
                if not m:
                    raise DatasetError(f"{f}: camera pattern {camera_pattern!r} does not match the file name")
                camid = int(m.group(1))
            records.append(ImageRecord(str(f), pid, camid))
        pid += 1
    if not records:
        raise DatasetError(f"{root} holds no images in its person folders (with at least {min_images} each)")
    if skipped:
        logger.info("%s: skipped %d person folders with fewer than %d images", root, skipped, min_images)
    return records


def split_by_identity(
    records: list[ImageRecord], test_fraction: float = 0.5, seed: int = 0, name: str = "split"
) -> ReidDataset:
    """Split identity-labelled records into train / query / gallery by identity (deterministic under ``seed``).

    For each test identity with 2+ images, one image becomes the query and the rest the gallery. Without
    camera ids the Market-1501 same-camera rule cannot be applied: evaluation then only removes the query
    image itself, because query and gallery hold different images.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}")
    by_pid: dict[int, list[ImageRecord]] = defaultdict(list)
    for r in records:
        by_pid[r.pid].append(r)
    eligible = sorted(p for p, rs in by_pid.items() if len(rs) >= 2)
    rng = random.Random(seed)
    rng.shuffle(eligible)
    n_test = max(1, round(len(eligible) * test_fraction))
    test_ids = set(eligible[:n_test])
    if len(test_ids) == len(by_pid):
        raise DatasetError(f"{name}: too few identities ({len(by_pid)}) to split into train and test")
    train, query, gallery = [], [], []
    for pid in sorted(by_pid):
        rs = by_pid[pid]
        if pid in test_ids:
            q = rng.randrange(len(rs))
            query.append(rs[q])
            gallery.extend(r for i, r in enumerate(rs) if i != q)
        else:
            train.extend(rs)
    return ReidDataset(name, train, query, gallery)


@DATASETS.register("image_folder")
def read_image_folder(
    root: str | Path,
    camera_pattern: str | None = None,
    min_images: int = 1,
    test_fraction: float | None = None,
    seed: int = 0,
) -> ReidDataset:
    """Identity folders as a dataset: all for training, or split by identity when ``test_fraction`` is set."""
    records = read_identity_folders(root, camera_pattern=camera_pattern, min_images=min_images)
    name = Path(root).name or "image_folder"
    if test_fraction:
        ds = split_by_identity(records, test_fraction=test_fraction, seed=seed, name=name)
        ds.root = str(root)
        return ds
    return ReidDataset(name, records, root=str(root))


def build_dataset(name: str, root: str | Path, **kwargs) -> ReidDataset:
    """Build a registered dataset by name, e.g. ``build_dataset("market1501", "data/market")``."""
    ds = DATASETS.get(name)(root, **kwargs)
    logger.info("\n%s", ds.summary())
    return ds
