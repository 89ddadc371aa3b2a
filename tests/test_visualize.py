"""Ranked-results grid colours follow the protocol; activation maps are finite, in [0, 1], image-sized."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reid.metrics.visualize import GREEN, GREY, RED, ranked_grid, similarity_cam
from reid.models import build_model


def test_ranked_grid_borders(tmp_path: Path) -> None:
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 10, 3), 60 * i, np.uint8)).save(p)
        paths.append(str(p))
    # query pid 1 cam 0; gallery: [pid 1 cam 0 (junk: skipped), pid 2, pid 1 cam 1]
    d = np.array([[0.1, 0.2, 0.3]])
    out = ranked_grid(
        tmp_path / "g.png",
        d,
        paths[:1],
        paths[1:],
        np.array([1]),
        np.array([1, 2, 1]),
        np.array([0]),
        np.array([0, 1, 1]),
        topk=2,
        size=(20, 10),
    )
    img = np.asarray(Image.open(out))
    tile_w = 10 + 8
    assert tuple(img[1, 1]) == GREY  # the query
    assert tuple(img[1, tile_w + 12 + 1]) == RED  # rank 1: pid 2 (the junk item was skipped)
    assert tuple(img[1, 2 * tile_w + 12 + 1]) == GREEN  # rank 2: pid 1 from the other camera


def test_similarity_cam() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", embedding_dim=16)
    x = torch.randn(1, 3, 64, 32)
    cq, cm = similarity_cam(model, x, x.clone())
    assert cq.shape == (64, 32) and cm.shape == (64, 32)
    assert np.isfinite(cq).all() and cq.min() >= 0 and cq.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(cq, cm, atol=1e-5)  # the same image: symmetric maps
