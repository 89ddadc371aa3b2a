"""reid.data: readers, errors, sampler, transforms, dataset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reid.data import (
    ImageDataset,
    PKSampler,
    build_dataset,
    build_transforms,
    read_identity_folders,
    read_image_folder,
    read_lfw,
    read_market1501,
    split_by_identity,
    verify_images,
)
from reid.errors import ConfigError, DatasetError, ImageReadError


def _img(path: Path, color=(120, 60, 30), size=(16, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture
def market(tmp_path: Path) -> Path:
    root = tmp_path / "market"
    for pid in (1, 2, 3):
        for cam in (1, 2):
            _img(root / "bounding_box_train" / f"{pid:04d}_c{cam}s1_000{pid}01_00.jpg")
    _img(root / "bounding_box_train" / "0000_c1s1_000001_00.jpg")  # distractor: not an identity in train
    _img(root / "bounding_box_train" / "-1_c1s1_000001_00.jpg")  # junk
    for pid in (7, 8):
        _img(root / "query" / f"{pid:04d}_c1s1_000001_00.jpg")
        _img(root / "bounding_box_test" / f"{pid:04d}_c2s1_000001_00.jpg")
        _img(root / "bounding_box_test" / f"{pid:04d}_c1s1_000002_00.jpg")
    _img(root / "bounding_box_test" / "0000_c3s1_000001_00.jpg")  # distractor stays in the gallery
    _img(root / "bounding_box_test" / "-1_c3s1_000001_00.jpg")  # junk is dropped
    return root


def test_market_reader_counts_junk_and_distractors(market: Path) -> None:
    ds = read_market1501(market)
    assert len(ds.train) == 6 and ds.num_train_pids == 3
    assert {r.pid for r in ds.train} == {1, 2, 3}
    assert len(ds.query) == 2
    assert sorted(r.pid for r in ds.gallery) == [0, 7, 7, 8, 8]
    assert {r.camid for r in ds.gallery} == {0, 1, 2}  # c1..c3 stored 0-based
    table = ds.summary()
    assert "train    |     3 |        6 |         2" in table
    assert "gallery  |     3 |        5 |         3" in table


def test_cuhk03_style_names(tmp_path: Path) -> None:
    root = tmp_path / "c"
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        _img(root / sub / "0003_c1_21.jpg")
        _img(root / sub / "0003_c2_27.jpg")
    ds = build_dataset("cuhk03-np", root)
    assert ds.name == "cuhk03-np"
    assert [(r.pid, r.camid) for r in ds.query] == [(3, 0), (3, 1)]


def test_market_errors_name_the_problem(tmp_path: Path, market: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_market1501(tmp_path / "nope")
    (tmp_path / "half" / "query").mkdir(parents=True)
    with pytest.raises(DatasetError, match="missing folder.*bounding_box_train"):
        read_market1501(tmp_path / "half")
    _img(market / "query" / "person7.jpg")
    with pytest.raises(DatasetError, match=r"person7\.jpg: file name does not follow"):
        read_market1501(market)


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        (tmp_path / "e" / sub).mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no image files"):
        read_market1501(tmp_path / "e")
    (tmp_path / "f").mkdir()
    with pytest.raises(DatasetError, match="no person folders"):
        read_identity_folders(tmp_path / "f")


def test_identity_folders_without_and_with_cameras(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    for person in ("bob", "alice", "carol"):
        for i in range(3):
            _img(root / person / f"{person}_c{i + 1}_{i}.png")
    _img(root / "dave" / "only.jpg")
    recs = read_identity_folders(root)
    assert [r.pid for r in recs[:3]] == [0, 0, 0]  # alice first (sorted)
    assert all(r.camid == -1 for r in recs)
    assert len(read_identity_folders(root, min_images=2)) == 9
    cams = read_identity_folders(root, camera_pattern=r"_c(\d+)_", min_images=2)
    assert sorted({r.camid for r in cams}) == [1, 2, 3]
    with pytest.raises(DatasetError, match=r"only\.jpg: camera pattern"):
        read_identity_folders(root, camera_pattern=r"_c(\d+)_")
    ds = read_image_folder(root)  # no cameras: still a training set
    assert ds.num_train_pids == 4 and not ds.query


def test_split_by_identity_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    root = tmp_path / "ids"
    for p in range(10):
        for i in range(4):
            _img(root / f"p{p}" / f"{i}.jpg")
    recs = read_identity_folders(root)
    a = split_by_identity(recs, 0.4, seed=3)
    b = split_by_identity(recs, 0.4, seed=3)
    assert a.query == b.query and a.gallery == b.gallery
    train_ids, test_ids = {r.pid for r in a.train}, {r.pid for r in a.query}
    assert len(test_ids) == 4 and not train_ids & test_ids
    assert len(a.query) == 4 and len(a.gallery) == 12
    assert {r.path for r in a.query}.isdisjoint({r.path for r in a.gallery})


def _lfw(root: Path, lines: list[str]) -> Path:
    for name, n in (("Ann_A", 2), ("Bo_B", 1)):
        for i in range(1, n + 1):
            _img(root / name / f"{name}_{i:04d}.jpg")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def test_lfw_pairs(tmp_path: Path) -> None:
    root = _lfw(
        tmp_path / "lfw", ["2\t1", "Ann_A\t1\t2", "Ann_A\t1\tBo_B\t1", "Ann_A\t2\t1", "Bo_B\t1\tAnn_A\t2"]
    )
    pairs = read_lfw(root)
    assert pairs.num_folds == 2
    assert pairs.labels.tolist() == [True, False, True, False]
    assert pairs.folds.tolist() == [0, 0, 1, 1]
    assert len(pairs.image_paths()) == 3


def test_lfw_errors_name_the_line(tmp_path: Path) -> None:
    root = _lfw(tmp_path / "lfw", ["1\t1", "Ann_A\t1\t3", "Ann_A\t1\tBo_B\t1"])
    with pytest.raises(DatasetError, match=r"pairs\.txt:2: image .*Ann_A_0003\.jpg does not exist"):
        read_lfw(root)
    (root / "pairs.txt").write_text("1\t1\nAnn_A\t1\t2\n")
    with pytest.raises(DatasetError, match="promises 2 pairs, file has 1"):
        read_lfw(root)


def test_pk_sampler_structure_determinism_and_resume() -> None:
    labels = [i // 5 for i in range(40)] + [8, 8]  # 8 ids x 5 images, one id with 2 images
    s = PKSampler(labels, p=4, k=3, seed=7)
    batches = np.array(list(s)).reshape(-1, 12)
    assert len(batches) == s.num_batches() > 0
    for b in batches:
        counts = Counter(labels[i] for i in b)
        assert len(counts) == 4 and set(counts.values()) == {3}
    again = np.array(list(PKSampler(labels, p=4, k=3, seed=7))).reshape(-1, 12)
    np.testing.assert_array_equal(batches, again)
    s.set_epoch(1)
    assert not np.array_equal(np.array(list(s)).reshape(-1, 12)[: len(batches)], batches)
    # resume in the middle of epoch 1: the remaining batches are the same
    s2 = PKSampler(labels, p=4, k=3, seed=7)
    s2.set_epoch(1)
    full = np.array(list(s2)).reshape(-1, 12)
    s3 = PKSampler(labels, p=4, k=3, seed=0)
    s3.load_state_dict({"seed": 7, "epoch": 1, "batches_done": 2})
    np.testing.assert_array_equal(np.array(list(s3)).reshape(-1, 12), full[2:])


def test_pk_sampler_ddp_shards_are_disjoint() -> None:
    labels = [i // 4 for i in range(64)]
    r0 = np.array(list(PKSampler(labels, 4, 4, seed=1, num_replicas=2, rank=0))).reshape(-1, 16)
    r1 = np.array(list(PKSampler(labels, 4, 4, seed=1, num_replicas=2, rank=1))).reshape(-1, 16)
    allb = np.array(list(PKSampler(labels, 4, 4, seed=1))).reshape(-1, 16)
    usable = len(allb) - len(allb) % 2
    assert len(r0) == len(r1) == usable // 2  # equal step counts, or DDP would hang
    np.testing.assert_array_equal(r0, allb[:usable][0::2])
    np.testing.assert_array_equal(r1, allb[:usable][1::2])


def test_pk_sampler_errors() -> None:
    with pytest.raises(DatasetError, match="only 2"):
        PKSampler([0, 0, 1, 1], p=3, k=2)
    with pytest.raises(ConfigError):
        PKSampler([0, 1], p=0, k=2)


def test_transforms_shape_normalisation_and_errors() -> None:
    img = np.full((100, 50, 3), 255, np.uint8)
    test_t = build_transforms({"input_size": [64, 32]}, train=False)
    x = test_t(img)
    assert x.shape == (3, 64, 32) and x.dtype == torch.float32
    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[:, 10, 10].numpy(), expected, rtol=1e-5)
    torch.testing.assert_close(test_t(img), x)  # test transform is deterministic
    train_t = build_transforms({"input_size": [64, 32], "color_jitter": 0.5, "seed": 1}, train=True)
    assert train_t(img).shape == (3, 64, 32)
    with pytest.raises(ConfigError, match="unknown key.*rotate"):
        build_transforms({"rotate": 10})
    with pytest.raises(ConfigError, match="hflip is a probability"):
        build_transforms({"hflip": 2})


def test_image_dataset_and_verify(tmp_path: Path) -> None:
    root = tmp_path / "ids"
    for p in ("x", "y"):
        for i in range(2):
            _img(root / p / f"{i}.jpg", size=(20, 40))
    bad = root / "y" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    recs = read_identity_folders(root)
    ds = ImageDataset(recs, build_transforms({"input_size": [32, 16]}, train=False))
    x, label, camid, index = ds[0]
    assert x.shape == (3, 32, 16) and label == 0 and camid == -1 and index == 0
    assert ds.num_classes == 2
    problems = verify_images(recs, progress=False)
    assert [p for p, _ in problems] == [str(bad)]
    bad_index = [r.path for r in ds.records].index(str(bad))
    with pytest.raises(ImageReadError, match=r"bad\.jpg"):
        ds[bad_index]


@pytest.mark.realdata
def test_real_cuhk03_np(cuhk03_root: Path) -> None:
    ds = build_dataset("cuhk03-np", cuhk03_root)
    assert (len(ds.train), ds.num_train_pids) == (4145, 427)
    assert (len(ds.query), len({r.pid for r in ds.query})) == (832, 416)
    assert (len(ds.gallery), len({r.pid for r in ds.gallery})) == (3200, 416)
    assert {r.camid for r in ds.train + ds.query + ds.gallery} == {0, 1}
    x, *_ = ImageDataset(ds.query[:1], build_transforms({}, train=False))[0]
    assert x.shape == (3, 256, 128)


@pytest.mark.realdata
def test_real_lfw_pairs(lfw_root: Path) -> None:
    pairs = read_lfw(lfw_root)
    assert len(pairs.pairs) == 6000 and pairs.num_folds == 10
    assert int(pairs.labels.sum()) == 3000
    assert np.bincount(pairs.folds).tolist() == [600] * 10
    assert len(pairs.image_paths()) == 7701


def test_affine_and_grayscale_augmentations() -> None:
    from reid.data.transforms import build_transforms

    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)
    plain = {
        "input_size": [64, 48],
        "hflip": 0,
        "pad": 0,
        "random_erasing": 0,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
        "seed": 1,
    }
    base = build_transforms(plain)(img)
    np.testing.assert_allclose(base.numpy().transpose(1, 2, 0), img / 255.0, atol=1e-6)  # nothing random on
    grey = build_transforms({**plain, "grayscale": 1.0})(img)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    moved = build_transforms({**plain, "affine": 1.0, "affine_rotate": 20, "affine_scale": 0.2})(img)
    assert moved.shape == base.shape and (moved - base).abs().mean() > 0.05
    with pytest.raises(ConfigError, match="affine"):
        build_transforms({"affine": 2.0})


def test_holdout_identities_carves_validation_out_of_train_and_extra_views() -> None:
    from reid.data import ImageRecord, holdout_identities

    train = [ImageRecord(f"t/{p}_{c}_{k}.jpg", p, c) for p in range(1, 21) for c in (0, 1) for k in range(3)]
    extra = [ImageRecord(f"x/{p}_{k}.jpg", p, 0) for p in range(1, 21) for k in range(2)]
    kept, val = holdout_identities(train, 5, seed=1, extra_train=extra)
    held = {r.pid for r in val.query}
    assert len(held) == 5 and {r.pid for r in val.gallery} == held
    assert not held & {r.pid for r in kept}  # no validation identity trains, from either folder
    assert len(kept) == 15 * 6 + 15 * 2
    for pid in held:  # one query per camera, each with a true match in the other camera
        q = [r for r in val.query if r.pid == pid]
        assert sorted(r.camid for r in q) == [0, 1]
        assert {r.camid for r in val.gallery if r.pid == pid} == {0, 1}
    assert not {r.path for r in val.query} & {r.path for r in val.gallery}
    again, val2 = holdout_identities(train, 5, seed=1, extra_train=extra)
    assert (again, val2.query, val2.gallery) == (kept, val.query, val.gallery)  # deterministic under the seed
    assert len({r.pid for r in holdout_identities(train, 0.25, seed=2)[1].query}) == 5  # a fraction
    # identity folders without cameras: the query alone is removed at evaluation, never a true match
    nocam = [ImageRecord(f"n/{p}_{k}.jpg", p) for p in range(10) for k in range(4)]
    _, v = holdout_identities(nocam, 3, seed=0)
    assert len(v.query) == 3 and {r.camid for r in v.query} == {0} and {r.camid for r in v.gallery} == {1}
    from reid.metrics import evaluate_rank

    res = evaluate_rank(
        np.zeros((3, 9)),
        np.array([r.pid for r in v.query]),
        np.array([r.pid for r in v.gallery]),
        np.array([r.camid for r in v.query]),
        np.array([r.camid for r in v.gallery]),
    )
    assert res.as_dict()["valid_queries"] == 3
    with pytest.raises(DatasetError, match="at least 2"):
        holdout_identities(train, 1)
    with pytest.raises(DatasetError, match="leaves no training identity"):
        holdout_identities(train, 20)


def test_holdout_identities_can_extend_an_earlier_split() -> None:
    """``extends``: a model holding out more identities still leaves out every one an earlier model held out,
    so the two compare on identities neither trained on; any seed, and a fraction too."""
    from reid.data import ImageRecord, holdout_identities

    train = [ImageRecord(f"t/{p}_{c}.jpg", p, c) for p in range(300) for c in (0, 1)]
    afresh = 0
    for seed in range(10):
        small = {r.pid for r in holdout_identities(train, 20, seed=seed)[1].query}
        kept, big = holdout_identities(train, 100, seed=seed, extends=20)
        held = {r.pid for r in big.query}
        assert len(held) == 100 and small < held and not held & {r.pid for r in kept}
        afresh += not small <= {r.pid for r in holdout_identities(train, 100, seed=seed)[1].query}
    assert afresh >= 3  # without it, 100 are drawn afresh (Python's sampler changes method with the count)
    assert {r.pid for r in holdout_identities(train, 0.1, seed=0)[1].query} < {
        r.pid for r in holdout_identities(train, 0.3, seed=0, extends=0.1)[1].query
    }
    with pytest.raises(DatasetError, match="val_extends"):
        holdout_identities(train, 20, extends=20)
