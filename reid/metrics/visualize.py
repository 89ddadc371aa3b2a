"""Pictures of retrieval results: ranked-results grids and activation maps of a query and its match."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from reid.images import read_image
from reid.metrics.rank import junk_mask

GREEN, RED, GREY = (40, 180, 60), (220, 40, 40), (150, 150, 150)


def _tile(
    path: str, size: tuple[int, int], border: tuple[int, int, int] | None, label: str = ""
) -> Image.Image:
    h, w = size
    im = Image.fromarray(read_image(path)).resize((w, h))
    canvas = Image.new("RGB", (w + 8, h + 20), (255, 255, 255))
    if border:
        canvas.paste(Image.new("RGB", (w + 8, h + 8), border), (0, 0))
    canvas.paste(im, (4, 4))
    if label:
        ImageDraw.Draw(canvas).text((4, h + 8), label, fill=(0, 0, 0))
    return canvas


def ranked_grid(
    out: str | Path,
    distmat: np.ndarray,
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    queries: Sequence[int] | None = None,
    topk: int = 10,
    size: tuple[int, int] = (128, 64),
) -> Path:
    """One row per query: the query (grey border), then its top-k gallery items under the evaluation protocol
    (same person + same known camera skipped), green when the person is right, red when wrong."""
    queries = list(range(min(8, len(query_paths)))) if queries is None else list(queries)
    rows = []
    for qi in queries:
        order = np.argsort(distmat[qi], kind="stable")
        keep = ~junk_mask(
            np.asarray(q_pids)[[qi]],
            np.asarray(q_camids)[[qi]],
            np.asarray(g_pids)[order][None],
            np.asarray(g_camids)[order][None],
            np.array([query_paths[qi]]),
            np.asarray(gallery_paths)[order][None],
        )[0]
        order = order[keep][:topk]
        tiles = [_tile(query_paths[qi], size, GREY, f"q {q_pids[qi]}")]
        tiles += [
            _tile(
                gallery_paths[g],
                size,
                GREEN if g_pids[g] == q_pids[qi] else RED,
                f"{r + 1}: {distmat[qi, g]:.3f}",
            )
            for r, g in enumerate(order)
        ]
        row = Image.new("RGB", (sum(t.width for t in tiles) + 12, tiles[0].height), (255, 255, 255))
        x = 0
        for i, t in enumerate(tiles):
            row.paste(t, (x, 0))
            x += t.width + (12 if i == 0 else 0)
        rows.append(row)
    grid = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def similarity_cam(
    model: torch.nn.Module, x_query: torch.Tensor, x_match: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of the cosine similarity between two images: for each image, the backbone feature map weighted
    by the gradient of the similarity (averaged over space), summed over channels, ReLU, normalised to [0, 1].
    Bright regions are those that raised the score. ``model`` is a ``ReIDModel``."""
    model.eval()
    maps = []
    fq = model.backbone(x_query)
    fg = model.backbone(x_match)
    fq.retain_grad()
    fg.retain_grad()
    eq = F.normalize(model.head(fq)[1], dim=1)
    eg = F.normalize(model.head(fg)[1], dim=1)
    (eq * eg).sum().backward()
    for f, x in ((fq, x_query), (fg, x_match)):
        w = f.grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((w * f).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].detach()
        cam = cam / cam.max() if cam.max() > 0 else cam
        maps.append(cam.numpy())
    return maps[0], maps[1]


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Heat map (red = high) over an RGB image resized to the map's size."""
    h, w = cam.shape
    base = np.asarray(Image.fromarray(image).resize((w, h)), dtype=np.float32)
    heat = np.stack([cam, np.zeros_like(cam), 1.0 - cam], axis=-1) * 255.0
    return np.clip((1 - alpha) * base + alpha * heat, 0, 255).astype(np.uint8)


def activation_pair_png(out: str | Path, embedder, query_path: str, match_path: str) -> Path:
    """Query and match side by side, each with its activation map, for an ``Embedder`` over a ``ReIDModel``."""
    x = embedder.preprocess([query_path, match_path])
    with torch.enable_grad():
        cq, cm = similarity_cam(embedder.model.cpu(), x[:1].clone(), x[1:].clone())
    h, w = embedder.input_size
    q = np.asarray(Image.fromarray(read_image(query_path)).resize((w, h)))
    m = np.asarray(Image.fromarray(read_image(match_path)).resize((w, h)))
    panel = np.concatenate([q, overlay(q, cq), np.full((h, 8, 3), 255, np.uint8), m, overlay(m, cm)], axis=1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(panel).save(out)
    return out
