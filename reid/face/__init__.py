"""Faces: detection (dlib HOG / CNN, OpenCV Haar), 5-point alignment, and dlib's 128-d embedder as an Embedder."""

from reid.face.dlib_backend import (
    FACE_EMBEDDERS,
    DlibFaceEmbedder,
    Face,
    FaceDetector,
    FaceNotFoundError,
    MultipleFacesError,
    align,
    dlib_model_path,
)

__all__ = [
    "FACE_EMBEDDERS",
    "DlibFaceEmbedder",
    "Face",
    "FaceDetector",
    "FaceNotFoundError",
    "MultipleFacesError",
    "align",
    "dlib_model_path",
]
