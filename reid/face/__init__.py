"""Faces: detection (dlib HOG / CNN, OpenCV Haar, MTCNN), 5-point alignment, and dlib's 128-d embedder as an
Embedder (its network on ONNX Runtime by default: ``reid.face.dlib_onnx``)."""

from reid.face.dlib_backend import (
    FACE_EMBEDDERS,
    FACE_FLIP_CHOICES,
    DlibFaceEmbedder,
    Face,
    FaceDetector,
    FaceNotFoundError,
    MultipleFacesError,
    align,
    dlib_model_path,
    face_flip,
)

__all__ = [
    "FACE_EMBEDDERS",
    "FACE_FLIP_CHOICES",
    "DlibFaceEmbedder",
    "Face",
    "FaceDetector",
    "FaceNotFoundError",
    "MultipleFacesError",
    "align",
    "dlib_model_path",
    "face_flip",
]
