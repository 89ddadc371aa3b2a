"""Embedders: images -> L2-normalised float32 vectors tagged with a ``model_id``.

``BaseEmbedder`` is the contract every backend keeps (the torch checkpoint ``Embedder`` here, the dlib face
embedder in ``reid.face``). The gallery only ever sees this contract.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from reid.decision_card import card_from_checkpoint_extra, flip_model_id
from reid.images import ImageLike

logger = logging.getLogger(__name__)

# where a checkpoint's forward pass runs: "onnx" (ONNX Runtime, reid.onnx_embedder) or "torch" (PyTorch eager)
RUNTIMES = ("onnx", "torch")


class BaseEmbedder(ABC):
    """Turns images into ``(N, D)`` float32 unit vectors.

    Attributes:
        model_id: identity string of the model; vectors of different ``model_id`` are never compared.
        dim: embedding dimension ``D``.
        modality: ``"body"`` or ``"face"``.
        decision: the model card's open-set decision calibrated on validation identities
            (``{"rule", "beta", "threshold", "cohort", ...}``, see ``reid.metrics.open_set_decision``), or None.
    """

    model_id: str
    dim: int
    modality: str
    decision: dict | None = None

    @abstractmethod
    def embed(self, images: Sequence[ImageLike] | ImageLike, batch_size: int = 64) -> np.ndarray:
        """Return L2-normalised float32 embeddings, one row per image, in input order."""


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, eps)).astype(np.float32)


def _resolve_device(device: str | None):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Embedder(BaseEmbedder):
    """A torch checkpoint as an embedder.

    Images (paths, PIL images or RGB arrays) are resized to the checkpoint's input size with OpenCV's bilinear
    interpolation (``INTER_LINEAR``, as the test transform), normalised with its mean/std, and embedded in
    batches under ``torch.inference_mode``. With ``flip`` the features of the image and its mirror are averaged
    before L2 normalisation.
    """

    runtime = "torch"  # where the forward pass runs (``OnnxEmbedder``: "onnx")

    def __init__(self, model, meta, device: str | None = None, flip: bool = False) -> None:
        import torch

        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.dim = int(meta.embedding_dim)
        self.modality = meta.modality
        self.input_size = tuple(meta.input_size)
        self.flip = flip  # sets model_id and decision
        self._mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0

    @property
    def flip(self) -> bool:
        return self._flip

    @flip.setter
    def flip(self, value: bool) -> None:
        # flip-averaged vectors are another embedding space for the gallery: their own model_id (so they never
        # share an index with plain ones) and their own calibrated decision
        self._flip = bool(value)
        self.model_id = flip_model_id(self.meta.model_id, self._flip)
        self.decision = card_from_checkpoint_extra(self.meta.extra, flip=self._flip)

    @classmethod
    def from_checkpoint(cls, path, device: str | None = None, flip: bool = False) -> Embedder:
        from reid.models.checkpoint import load_checkpoint

        model, meta = load_checkpoint(path)
        return cls(model, meta, device=device, flip=flip)

    @classmethod
    def from_model(
        cls,
        model,
        input_size: tuple[int, int] = (256, 128),
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        modality: str = "body",
        device: str | None = None,
        flip: bool = False,
    ) -> Embedder:
        """Wrap an in-memory ``ReIDModel`` (e.g. an ImageNet-initialised backbone); its ``model_id`` is derived
        from the weights exactly as a saved checkpoint's would be."""
        from reid.models.checkpoint import CheckpointMeta, make_model_id

        meta = CheckpointMeta(
            model.arch,
            dict(model.config),
            tuple(input_size),
            tuple(mean),
            tuple(std),
            model.embedding_dim,
            modality,
            make_model_id(model.arch, model.embedding_dim, model.state_dict()),
        )
        return cls(model.eval(), meta, device=device, flip=flip)

    def resized(self, images: Sequence[ImageLike], offset: int = 0) -> np.ndarray:
        """RGB images -> uint8 ``(N, H, W, 3)`` at the input size (OpenCV ``INTER_LINEAR``)."""
        import cv2

        from reid.images import to_rgb_array

        h, w = self.input_size
        return np.stack(
            [
                cv2.resize(
                    to_rgb_array(im, where=f"images[{offset + i}]"), (w, h), interpolation=cv2.INTER_LINEAR
                )
                for i, im in enumerate(images)
            ]
        )

    def preprocess(self, images: Sequence[ImageLike], offset: int = 0):
        """RGB images -> normalised float tensor ``(N, 3, H, W)`` on the CPU."""
        import torch

        x = torch.from_numpy(self.resized(images, offset)).permute(0, 3, 1, 2).float()
        return (x - self._mean) / self._std

    def _features(self, x):
        """Raw ``(N, D)`` float features of a preprocessed batch."""
        return self.model(x.to(self.device)).float()

    def _embed_batch(self, images: Sequence[ImageLike], offset: int, flip: bool) -> np.ndarray:
        """L2-normalised ``(n, D)`` embeddings of one batch."""
        return self.embed_resized(self.resized(images, offset), flip)

    def embed_resized(self, x: np.ndarray, flip: bool | None = None) -> np.ndarray:
        """L2-normalised ``(N, D)`` embeddings of images already at the input size (uint8 ``(N, H, W, 3)``, as
        :meth:`resized` gives): the forward pass alone, so a caller can resize in its own thread and batch the
        forward passes of many callers (``services.batching``). Other runtimes override this."""
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()
            t = (t - self._mean) / self._std
            f = self._features(t)
            if self.flip if flip is None else flip:
                f = f + self._features(torch.flip(t, dims=[3]))
            return torch.nn.functional.normalize(f, dim=1).cpu().numpy()

    def embed(
        self, images, batch_size: int = 64, flip: bool | None = None, progress: bool | str = False
    ) -> np.ndarray:
        """``progress``: show a progress bar over batches (a string is used as its label)."""
        from tqdm import tqdm

        if not isinstance(images, (list, tuple)):
            images = [images]
        flip = self.flip if flip is None else flip
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.empty((len(images), self.dim), dtype=np.float32)
        starts = range(0, len(images), batch_size)
        if progress:
            starts = tqdm(starts, desc=progress if isinstance(progress, str) else "embedding", unit="batch")
        for start in starts:
            batch = images[start : start + batch_size]
            out[start : start + len(batch)] = self._embed_batch(batch, start, flip)
        return out


def load_embedder(
    checkpoint: str | os.PathLike,
    runtime: str = "onnx",
    *,
    device: str | None = None,
    flip: bool = False,
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Embedder:
    """A checkpoint as an embedder on ``runtime``: ``"onnx"`` (``reid.onnx_embedder.OnnxEmbedder``: the cached
    ONNX export on ONNX Runtime's CPU provider with ``threads`` intra-op threads, ``cache_dir`` for the export)
    or ``"torch"`` (``Embedder``, PyTorch eager on ``device``; its threads are torch's, process-wide). Both
    give the same ``model_id``, decision card and (within float rounding) the same vectors."""
    from reid.errors import ConfigError

    if runtime == "torch":
        import torch

        emb = Embedder.from_checkpoint(checkpoint, device=device, flip=flip)
        logger.info(
            "%s model %s on PyTorch (%s, %d intra-op threads)",
            emb.modality, emb.model_id, emb.device, torch.get_num_threads(),
        )  # fmt: skip
        return emb
    if runtime == "onnx":
        from reid.onnx_embedder import OnnxEmbedder

        emb = OnnxEmbedder.from_checkpoint(
            checkpoint, device=device, flip=flip, threads=threads, cache_dir=cache_dir
        )
        logger.info(
            "%s model %s on ONNX Runtime (CPU, %d intra-op threads, %s)",
            emb.modality, emb.model_id, emb.threads, emb.onnx_path,
        )  # fmt: skip
        return emb
    raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
