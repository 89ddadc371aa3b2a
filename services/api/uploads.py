"""Uploaded images: checked (size, format, pixels) and decoded, embedded by the modality's model, and kept as a
person's thumbnail (blurred without consent)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from fastapi import HTTPException, UploadFile
from PIL import Image, UnidentifiedImageError

from reid.images import blur_boxes
from services.api.state import ServiceState

# MPO: what many phone cameras write (a JPEG with extra frames); the first frame is the photo
ALLOWED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP"}


def read_upload(
    state: ServiceState, upload: UploadFile, field: str, hashes: list | None = None
) -> np.ndarray:
    """The upload as an RGB array; 413/415/422 naming ``field`` and the file for anything else."""
    settings = state.settings
    where = f"{field} ({upload.filename})"
    limit = settings.max_upload_bytes
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{where}: larger than {limit} bytes")
    if not data:
        raise HTTPException(422, f"{where}: empty file")
    if hashes is not None:
        hashes.append(hashlib.sha256(data).hexdigest())
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise HTTPException(415, f"{where}: not an image (JPEG, PNG, WebP or BMP)") from None
    except Image.DecompressionBombError:  # a few KB that would decode to gigapixels
        raise HTTPException(
            413, f"{where}: its header declares far more than {settings.max_image_pixels} pixels"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise HTTPException(422, f"{where}: unreadable image header ({e})") from None
    if im.format not in ALLOWED_FORMATS:
        raise HTTPException(415, f"{where}: format {im.format} is not accepted")
    w, h = im.size
    if w * h > settings.max_image_pixels:
        raise HTTPException(413, f"{where}: {w}x{h} exceeds {settings.max_image_pixels} pixels")
    if min(w, h) < settings.min_image_side:
        raise HTTPException(422, f"{where}: {w}x{h} is smaller than {settings.min_image_side} px")
    try:
        im.load()
        return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise HTTPException(422, f"{where}: corrupt image ({e})") from None


def embed_located(
    state: ServiceState, modality: str, image: np.ndarray, field: str
) -> tuple[np.ndarray, str, tuple | None]:
    """(embedding, model_id, face box or None for bodies)."""
    embedder = state.embedders.get(modality)
    if embedder is None:
        raise HTTPException(400, f"modality {modality!r} is not enabled on this server")
    if modality == "face":
        face, vec = embedder.embed_single(image, where=field)
        return vec, embedder.model_id, face.box
    return embedder.embed([image])[0], embedder.model_id, None


def embed_one(state: ServiceState, modality: str, image: np.ndarray, field: str) -> tuple[np.ndarray, str]:
    vec, model_id, _ = embed_located(state, modality, image, field)
    return vec, model_id


def _privacy(state: ServiceState, person_id: int, image: np.ndarray, box: tuple | None) -> np.ndarray:
    """The face (or a body's head) blurred unless the person was enrolled with consent."""
    if state.settings.blur_unconsented:
        p = state.gallery.get_person(person_id)
        if not (p.kind == "enrolled" and p.consent):
            h, w = image.shape[:2]
            image = blur_boxes(image, [box if box is not None else (0, 0, w, h * 0.3)])
    return image


def save_thumbnail(state: ServiceState, person_id: int, image: np.ndarray, box: tuple | None) -> None:
    """First thumbnail of a person (blurred without consent)."""
    state.gallery.set_thumbnail(person_id, _privacy(state, person_id, image, box), replace=False)


def save_template_image(
    state: ServiceState, person_id: int, template_id: int, image: np.ndarray, box: tuple | None
) -> None:
    """The crop a template was made from, for the person page: the face with a margin, or the whole body
    image (blurred without consent)."""
    image = _privacy(state, person_id, image, box)
    if box is not None:
        h, w = image.shape[:2]
        x1, y1, x2, y2 = box
        m = 0.25 * max(x2 - x1, y2 - y1)
        image = image[max(0, int(y1 - m)) : min(h, int(y2 + m)), max(0, int(x1 - m)) : min(w, int(x2 + m))]
    state.gallery.set_template_image(person_id, template_id, image)
