"""Reading images into RGB uint8 arrays, with errors that name the file and the reason."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from reid.errors import ImageReadError

ImageLike = str | os.PathLike | np.ndarray | Image.Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def image_files_in(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder`` (recursively), sorted."""
    return sorted(f for f in Path(folder).rglob("*") if f.is_file() and is_image_file(f.name))


def _decode(open_fn, source: str) -> np.ndarray:
    try:
        with open_fn() as im:
            im.load()  # force full decode so truncated files fail here, not later in a worker
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{source}: not a recognised image format") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{source}: corrupt or truncated image ({e})") from e


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an RGB ``(H, W, 3)`` uint8 array.

    Raises :class:`ImageReadError` naming the file for a missing, empty, truncated or non-image file.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: no such image file")
    if p.stat().st_size == 0:
        raise ImageReadError(f"{p}: file is empty (0 bytes)")
    return _decode(lambda: Image.open(p), str(p))


def decode_image_bytes(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to RGB uint8; ``source`` names them in errors."""
    import io

    if not data:
        raise ImageReadError(f"{source}: empty image data")
    return _decode(lambda: Image.open(io.BytesIO(data)), source)


def to_rgb_array(image: ImageLike, where: str = "image") -> np.ndarray:
    """Accept a path, a PIL image or an array and return RGB ``(H, W, 3)`` uint8.

    Arrays are taken as RGB (not OpenCV's BGR); grayscale ``(H, W)`` and RGBA are converted.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ImageReadError(f"{where}: expected an (H, W, 3) RGB array, got shape {tuple(image.shape)}")
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ImageReadError(f"{where}: image has zero size {tuple(image.shape)}")
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
                arr = arr * 255.0
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)
    raise ImageReadError(
        f"{where}: unsupported image type {type(image).__name__} (use a path, PIL image or array)"
    )


def center_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    """The centred ``fraction`` (0 < f <= 1) of an HxWxC image, same aspect ratio."""
    if not 0 < fraction <= 1:
        raise ValueError(f"center crop fraction must be in (0, 1], got {fraction}")
    h, w = image.shape[:2]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top : top + ch, left : left + cw]


def blur_boxes(image: np.ndarray, boxes, strength: float = 0.5) -> np.ndarray:
    """A copy of ``image`` with each xyxy box heavily blurred (privacy masking); boxes are clipped to the image.

    ``strength`` sets the Gaussian kernel as a fraction of the box size: 0.5 leaves no recognisable face.
    """
    import cv2

    out = image.copy()
    h, w = image.shape[:2]
    for b in boxes:
        x1, y1, x2, y2 = (round(float(v)) for v in b[:4])
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        k = max(3, int(max(x2 - x1, y2 - y1) * strength) | 1)  # odd kernel
        out[y1:y2, x1:x2] = cv2.GaussianBlur(out[y1:y2, x1:x2], (k, k), 0)
    return out
