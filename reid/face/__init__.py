"""Faces: detection (dlib HOG / CNN, OpenCV Haar, MTCNN), 5-point alignment, and two embedders: dlib's 128-d
ResNet (the default; its network on ONNX Runtime: ``reid.face.dlib_onnx``) and InsightFace's 512-d ``w600k_mbf``
(``reid.face.insightface_mbf``: more accurate, non-commercial licence, chosen explicitly)."""

import logging
from collections.abc import Collection

from reid.face.dlib_backend import (
    FACE_EMBEDDERS,
    FACE_FLIP_CHOICES,
    DlibFaceEmbedder,
    Face,
    FaceDetector,
    FaceEmbedderBase,
    FaceNotFoundError,
    MultipleFacesError,
    align,
    dlib_model_path,
    face_flip,
)
from reid.face.insightface_mbf import InsightFaceMbfEmbedder

DEFAULT_FACE_MODEL = "dlib"
logger = logging.getLogger(__name__)


def build_face_embedder(
    model: str = DEFAULT_FACE_MODEL,
    flip: str = "auto",
    stored_model_ids: Collection[str] = (),
    detector: FaceDetector | None = None,
    **kwargs,
) -> FaceEmbedderBase:
    """The face embedder named ``model`` (``FACE_EMBEDDERS``: ``dlib``, ``insightface-w600k-mbf``), flip-averaged
    as ``face_flip(flip, stored_model_ids)`` decides for that model; other arguments go to its class. A gallery
    whose face templates all belong to another model gets a warning: nobody enrolled there can be found."""
    cls = FACE_EMBEDDERS.get(model)
    own = {cls.plain_model_id, f"{cls.plain_model_id}-flip"}
    stored = set(stored_model_ids)
    if stored and not stored & own:
        logger.warning(
            "this gallery's face templates are %s embeddings, not %s: no face enrolled before will be found (set "
            "REID_FACE_MODEL / --face-model back, or re-enrol the faces with %s)",
            ", ".join(sorted(stored)), cls.plain_model_id, model,
        )  # fmt: skip
    return cls(detector=detector, flip=face_flip(flip, stored_model_ids, cls.plain_model_id), **kwargs)


__all__ = [
    "DEFAULT_FACE_MODEL",
    "FACE_EMBEDDERS",
    "FACE_FLIP_CHOICES",
    "DlibFaceEmbedder",
    "Face",
    "FaceDetector",
    "FaceEmbedderBase",
    "FaceNotFoundError",
    "InsightFaceMbfEmbedder",
    "MultipleFacesError",
    "align",
    "build_face_embedder",
    "dlib_model_path",
    "face_flip",
]
