"""Embedders: images -> L2-normalised float32 vectors tagged with a ``model_id``.

``BaseEmbedder`` is the contract every backend keeps (the torch checkpoint ``Embedder`` here, the dlib face
embedder in ``reid.face``). The gallery only ever sees this contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from reid.images import ImageLike


class BaseEmbedder(ABC):
    """Turns images into ``(N, D)`` float32 unit vectors.

    Attributes:
        model_id: identity string of the model; vectors of different ``model_id`` are never compared.
        dim: embedding dimension ``D``.
        modality: ``"body"`` or ``"face"``.
    """

    model_id: str
    dim: int
    modality: str

    @abstractmethod
    def embed(self, images: Sequence[ImageLike] | ImageLike, batch_size: int = 64) -> np.ndarray:
        """Return L2-normalised float32 embeddings, one row per image, in input order."""


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, eps)).astype(np.float32)
