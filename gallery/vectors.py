"""The vectors of a call: from images (embedded with the gallery's embedder of that modality) or from
embeddings given by the caller (then the model that made them must be known)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from gallery.errors import GalleryError, IndexMismatchError, NoEmbedderError
from gallery.index import check_vectors
from gallery.models import MODALITIES
from reid.embedder import BaseEmbedder
from reid.images import ImageLike


def image_hash(image: ImageLike) -> str:
    """SHA-256 of the file bytes for paths, of the pixels (with shape) for arrays and PIL images."""
    if isinstance(image, (str, os.PathLike)):
        return hashlib.sha256(Path(image).read_bytes()).hexdigest()
    arr = np.ascontiguousarray(np.asarray(image))
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise GalleryError(f"modality must be one of {MODALITIES}, got {modality!r}")


def call_vectors(
    embedders: Mapping[str, BaseEmbedder],
    modality: str,
    images: Sequence[ImageLike] | None,
    embeddings: np.ndarray | None,
    model_id: str | None,
    where: str,
) -> tuple[np.ndarray, str, list[str | None]]:
    """(unit vectors, model_id, image hashes) from either images (embedded here) or embeddings."""
    check_modality(modality)
    if (images is None) == (embeddings is None):
        raise GalleryError(f"{where}: give either images or embeddings (exactly one)")
    embedder = embedders.get(modality)
    if images is not None:
        if isinstance(images, (str, os.PathLike, np.ndarray)) and not (
            isinstance(images, np.ndarray) and images.ndim == 4
        ):
            images = [images]
        images = list(images)
        if not images:
            raise GalleryError(f"{where}: the image list is empty")
        if embedder is None:
            raise NoEmbedderError(f"{where}: no {modality} embedder is configured; pass embeddings instead")
        if model_id is not None and model_id != embedder.model_id:
            raise IndexMismatchError(
                f"{where}: model_id {model_id!r} differs from the {modality} embedder's {embedder.model_id!r}"
            )
        vecs = embedder.embed(images)
        hashes: list[str | None] = [image_hash(im) for im in images]
        return check_vectors(vecs, embedder.dim, where), embedder.model_id, hashes
    if model_id is None:
        if embedder is None:
            raise GalleryError(f"{where}: model_id is required with raw embeddings (which model made them?)")
        model_id = embedder.model_id
    vecs = check_vectors(embeddings, None, where)
    return vecs, model_id, [None] * len(vecs)
