"""Train / test transforms built with albumentations from a config dict.

Config keys (all optional; defaults are the Bag-of-Tricks re-ID recipe):

    input_size: [256, 128]        # (height, width)
    mean: [0.485, 0.456, 0.406]   # ImageNet
    std:  [0.229, 0.224, 0.225]
    hflip: 0.5                    # probability
    pad: 10                       # pixels of zero padding before a random crop back to input_size (0: off)
    color_jitter: 0.0             # probability (0: off); strengths in color_jitter_strength
    color_jitter_strength: [0.2, 0.15, 0.0, 0.0]   # brightness, contrast, saturation, hue
    random_erasing: 0.5           # probability (0: off); done after normalisation, filled with the mean (0)
    affine: 0.0                   # probability of a random scale / shift / rotation (framing jitter of crops)
    affine_scale: 0.1             # scale in [1 - s, 1 + s]
    affine_shift: 0.05            # shift up to this fraction of the size
    affine_rotate: 10             # degrees, +-
    grayscale: 0.0                # probability of a grey copy (3 channels)
    seed: null                    # albumentations' own seed, for reproducible augmentation
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from reid.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULTS: dict[str, Any] = {
    "input_size": [256, 128],
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "hflip": 0.5,
    "pad": 10,
    "color_jitter": 0.0,
    "color_jitter_strength": [0.2, 0.15, 0.0, 0.0],
    "random_erasing": 0.5,
    "affine": 0.0,
    "affine_scale": 0.1,
    "affine_shift": 0.05,
    "affine_rotate": 10,
    "grayscale": 0.0,
    "seed": None,
}


def _check(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"transforms: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(DEFAULTS))}"
        )
    out = {**DEFAULTS, **cfg}
    size = out["input_size"]
    if not (
        isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
    ):
        raise ConfigError(f"transforms.input_size must be [height, width] positive integers, got {size!r}")
    for key in ("hflip", "color_jitter", "random_erasing", "affine", "grayscale"):
        if not 0.0 <= float(out[key]) <= 1.0:
            raise ConfigError(f"transforms.{key} is a probability in [0, 1], got {out[key]!r}")
    for key in ("mean", "std"):
        if len(out[key]) != 3:
            raise ConfigError(f"transforms.{key} needs 3 values (R, G, B), got {out[key]!r}")
    if int(out["pad"]) < 0:
        raise ConfigError(f"transforms.pad must be >= 0, got {out['pad']!r}")
    return out


def build_transforms(
    cfg: Mapping[str, Any] | None = None, train: bool = True
) -> Callable[[np.ndarray], torch.Tensor]:
    """RGB uint8 ``(H, W, 3)`` -> normalised float tensor ``(3, H, W)``. Test transform: resize + normalise."""
    c = _check(cfg)
    h, w = c["input_size"]
    ops: list[Any] = [A.Resize(height=h, width=w, interpolation=cv2.INTER_LINEAR)]
    if train:
        if c["hflip"] > 0:
            ops.append(A.HorizontalFlip(p=c["hflip"]))
        if c["pad"] > 0:
            pad = int(c["pad"])
            ops += [
                A.PadIfNeeded(
                    min_height=h + 2 * pad, min_width=w + 2 * pad, border_mode=cv2.BORDER_CONSTANT, fill=0
                ),
                A.RandomCrop(height=h, width=w),
            ]
        if c["affine"] > 0:
            sc, sh, rot = float(c["affine_scale"]), float(c["affine_shift"]), float(c["affine_rotate"])
            ops.append(
                A.Affine(
                    scale=(1 - sc, 1 + sc),
                    translate_percent=(-sh, sh),
                    rotate=(-rot, rot),
                    border_mode=cv2.BORDER_REFLECT_101,
                    p=c["affine"],
                )
            )
        if c["grayscale"] > 0:
            ops.append(A.ToGray(p=c["grayscale"]))
        if c["color_jitter"] > 0:
            b, ct, s, hue = c["color_jitter_strength"]
            ops.append(A.ColorJitter(brightness=b, contrast=ct, saturation=s, hue=hue, p=c["color_jitter"]))
    ops.append(A.Normalize(mean=c["mean"], std=c["std"], max_pixel_value=255.0))
    if train and c["random_erasing"] > 0:
        ops.append(A.Erasing(scale=(0.02, 0.4), ratio=(0.3, 3.3), fill=0, p=c["random_erasing"]))
    ops.append(ToTensorV2())
    pipeline = A.Compose(ops, seed=c["seed"]) if c["seed"] is not None else A.Compose(ops)

    def apply(image: np.ndarray) -> torch.Tensor:
        return pipeline(image=image)["image"]

    apply.pipeline = pipeline  # type: ignore[attr-defined]
    return apply
