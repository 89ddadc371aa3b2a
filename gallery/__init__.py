"""Layer 2: the identity store (SQL is the truth, FAISS is derived). Imports reid only."""

from gallery.errors import (
    DuplicatePersonError,
    EmbeddingError,
    GalleryError,
    IndexMismatchError,
    NoEmbedderError,
    UnknownPersonError,
)
from gallery.index import IndexConfig, VectorIndex
from gallery.results import (
    CalibrationResult,
    EnrollResult,
    IdentifyOrEnrollResult,
    IdentifyResult,
    PersonInfo,
    PersonMatch,
    SightingInfo,
)
from gallery.service import Gallery

__all__ = [
    "CalibrationResult",
    "DuplicatePersonError",
    "EmbeddingError",
    "EnrollResult",
    "Gallery",
    "GalleryError",
    "IdentifyOrEnrollResult",
    "IdentifyResult",
    "IndexConfig",
    "IndexMismatchError",
    "NoEmbedderError",
    "PersonInfo",
    "PersonMatch",
    "SightingInfo",
    "UnknownPersonError",
    "VectorIndex",
]
