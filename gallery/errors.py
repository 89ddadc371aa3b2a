"""Gallery errors: each names the person, template, model or field at fault."""

from __future__ import annotations

from reid.errors import ModelMismatchError, ReidError


class GalleryError(ReidError):
    """Base class of gallery errors caused by the caller."""


class UnknownPersonError(GalleryError):
    def __init__(self, person_id: int | str) -> None:
        super().__init__(f"person {person_id!r} does not exist")
        self.person_id = person_id


class DuplicatePersonError(GalleryError):
    """An external id that is already taken."""


class EmbeddingError(GalleryError):
    """A vector that cannot be stored or searched: wrong shape, NaN, not unit length."""


class IndexMismatchError(GalleryError, ModelMismatchError):
    """A vector of another model or dimension was offered to an index."""


class NoEmbedderError(GalleryError):
    """Images were given for a modality that has no embedder configured."""
