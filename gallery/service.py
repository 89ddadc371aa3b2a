"""The ``Gallery`` facade: enroll, identify, identify-or-enroll, merge, delete, calibrate.

Write path: validate -> one database transaction (``gallery.store``, the truth, with its change-feed row) ->
commit -> add to the in-memory FAISS index (``gallery.cache``). A crash between commit and index update loses
nothing: at start-up the index is checked against the database and rebuilt when it does not match. Read path:
FAISS search over templates -> aggregate per person (``IndexCache.rank_persons``) -> decide known/unknown
against the decision of that (modality, model_id) (``gallery.thresholds``). Per-person files:
``gallery.media``; sightings: ``gallery.sightings``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from gallery.cache import IndexCache, aggregation_by_modality
from gallery.decision import Decision, Verdict
from gallery.errors import EmbeddingError, GalleryError
from gallery.feed import ChangeFollower
from gallery.identify import Identifier
from gallery.index import IndexConfig
from gallery.media import MediaFolders, thumbnail_jpeg
from gallery.models import utcnow
from gallery.results import (
    CalibrationResult,
    EnrollResult,
    IdentifyOrEnrollResult,
    IdentifyResult,
    PersonInfo,
    SightingInfo,
    TemplateInfo,
)
from gallery.selfcal import SelfCalibration
from gallery.sightings import Sightings
from gallery.store import EnrollRequest, GalleryStore, Key
from gallery.thresholds import Decisions
from gallery.vectors import call_vectors, image_hash
from reid.embedder import BaseEmbedder
from reid.images import ImageLike

__all__ = ["Gallery", "image_hash"]


class Gallery:
    """Identity store over SQL (truth) and FAISS (derived).

    Args:
        url: SQLAlchemy URL or a file path for SQLite (``"gallery.db"``), or ``postgresql://...``.
        index_dir: folder for index snapshots (default: beside an SQLite file, else no snapshots).
        embedders: ``{"face": BaseEmbedder, "body": BaseEmbedder}`` used when images are given.
        aggregation: how a person's templates score a query: ``"centroid"`` (cosine to their normalised mean
            template), ``"max"`` (the best template) or ``"mean"`` (the mean similarity); one name for every
            modality or ``{modality: name}``. Default ``gallery.cache.DEFAULT_AGGREGATION``: centroid for
            faces, max for bodies (why: beside it). One template: all three are its similarity.
        thresholds: raw-score thresholds per modality set by the operator: used when none is calibrated in the
            database for a model, before the model card's decision.
        media_dir: per-person files (cached crops), removed on erasure (default: beside an SQLite file).
        store_id: the store this process serves (new persons belong to it; retention is per store).
        clock: returns the current UTC time (tests inject a controlled clock).
        self_calibration: re-read a card's threshold on this gallery's own persons (``gallery.selfcal``).
    """

    # seconds a threshold read from the database is reused (other processes may change it)
    THRESHOLD_TTL = 5.0

    def __init__(
        self,
        url: str,
        index_dir: str | os.PathLike | None = None,
        embedders: dict[str, BaseEmbedder] | None = None,
        index_config: IndexConfig | None = None,
        aggregation: str | Mapping[str, str] | None = None,
        thresholds: dict[str, float] | None = None,
        media_dir: str | os.PathLike | None = None,
        store_id: str | None = None,
        clock=utcnow,
        self_calibration: bool = True,
    ) -> None:
        aggregation = aggregation_by_modality(aggregation)  # a bad name fails before anything is opened
        self.store = GalleryStore(url, clock, store_id)
        db_file = self.store.file_path
        if index_dir is None and db_file is not None:
            index_dir = db_file.with_suffix(".indexes")
        if media_dir is None and db_file is not None:
            media_dir = db_file.with_suffix(".media")
        self.media = MediaFolders(Path(media_dir) if media_dir else None)
        self.embedders = dict(embedders or {})
        self.decisions = Decisions(self.store, dict(thresholds or {}), self.THRESHOLD_TTL)
        for e in self.embedders.values():
            self.register_card(e.modality, e.model_id, getattr(e, "decision", None))
        self.sightings_log = Sightings(self.store)
        self.cache = IndexCache(
            self.store, index_config or IndexConfig(), Path(index_dir) if index_dir else None, aggregation
        )
        self.identifier = Identifier(self.store, self.cache, self.decisions)
        self.selfcal = SelfCalibration(self.cache) if self_calibration else None
        self.decisions.refine = self.selfcal.refine if self.selfcal else None
        self._follower: ChangeFollower | None = None
        self.cache.load()

    # the parts' state under the names the gallery always had
    engine = property(lambda self: self.store.engine)
    Session = property(lambda self: self.store.Session)
    is_sqlite = property(lambda self: self.store.is_sqlite)
    clock = property(lambda self: self.store.clock)
    store_id = property(lambda self: self.store.store_id)
    media_dir = property(lambda self: self.media.root)
    default_thresholds = property(lambda self: self.decisions.default_thresholds)
    cards = property(lambda self: self.decisions.cards)
    index_dir = property(lambda self: self.cache.index_dir)
    index_config = property(lambda self: self.cache.config)
    aggregation = property(lambda self: self.cache.aggregation)
    indexes = property(lambda self: self.cache.indexes)
    person_of = property(lambda self: self.cache.person_of)
    key_of = property(lambda self: self.cache.key_of)
    templates_of = property(lambda self: self.cache.templates_of)
    applied_seq = property(lambda self: self.cache.applied_seq)

    @classmethod
    def open(cls, url: str, **kwargs: Any) -> Gallery:
        return cls(url, **kwargs)

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def follow(self, poll_interval: float = 0.5) -> ChangeFollower:
        """Follow the change feed in a background thread (for several processes on one database)."""
        if self._follower is None:
            self._follower = ChangeFollower(self.cache.sync, self.engine, poll_interval).start()
        return self._follower

    def close(self) -> None:
        if self.selfcal is not None:
            self.selfcal.close()
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        self.cache.close()  # a background index rebuild must not outlive the database it may read
        self.snapshot()
        self.store.dispose()

    # ------------------------------------------------------------------------------------------------ index
    def sync(self) -> int:
        """Apply the change-feed rows committed since the last call (by any process); returns how many."""
        return self.cache.sync()

    def rebuild_index(self, modality: str | None = None, model_id: str | None = None) -> list[Key]:
        """Rebuild indexes from the database (all, or those matching the filters)."""
        return self.cache.rebuild(modality, model_id)

    def snapshot(self) -> None:
        """Write every index to ``index_dir`` (atomic, with a manifest checked at the next start)."""
        self.cache.snapshot()

    def check_consistency(self) -> dict[str, dict[str, int]]:
        """Database vs index template counts per key (they must agree)."""
        return self.cache.check_consistency()

    def template_ids(self, person_id: int) -> set[int]:
        """Ids of the person's templates in the indexes (a copy, read under the index lock)."""
        return self.cache.template_ids(person_id)

    def persons_count(self, modality: str, model_id: str) -> int:
        """Persons with templates of this model (what a size-aware threshold is read at)."""
        return self.cache.persons_count((modality, model_id))

    # ---------------------------------------------------------------------------------------------- persons
    def create_person(
        self,
        display_name: str | None = None,
        external_id: str | None = None,
        kind: str = "enrolled",
        consent: dict | None = None,
        metadata: dict | None = None,
        store_id: str | None = None,
        purpose: str | None = None,
    ) -> int:
        """A person without templates. ``consent`` is the consent record (who agreed, when, to what),
        ``purpose`` why they are held, ``store_id`` the store whose retention applies to anonymous people."""
        with self.Session.begin() as s:
            return self.store.create_person(
                s, display_name, external_id, kind,
                consent=consent, metadata=metadata, store_id=store_id, purpose=purpose,
            )  # fmt: skip

    def get_person(self, person_id: int) -> PersonInfo:
        return self.store.get_person(person_id)

    def list_persons(self, offset: int = 0, limit: int = 100, kind: str | None = None) -> list[PersonInfo]:
        return self.store.list_persons(offset, limit, kind)

    def count_persons(self) -> int:
        return self.store.count_persons()

    def update_person(self, person_id: int, **fields: Any) -> PersonInfo:
        """Change ``display_name``, ``consent`` or ``purpose`` (only the ones given; None clears one)."""
        self.store.update_person(person_id, fields)
        return self.get_person(person_id)

    def templates(self, person_id: int) -> list[TemplateInfo]:
        """The person's templates, oldest first, and whether a crop of each is kept."""
        return [
            TemplateInfo(r.id, r.modality, r.model_id, r.source, r.created_at,
                         self.media.template_image(person_id, r.id) is not None)
            for r in self.store.templates(person_id)
        ]  # fmt: skip

    def set_template_image(self, person_id: int, template_id: int, image: ImageLike, size: int = 160) -> bool:
        """Keep a small crop of what a template was made from (False when this gallery keeps no files)."""
        return self.media.put_template_image(person_id, template_id, thumbnail_jpeg(image, size))

    def template_image(self, person_id: int, template_id: int) -> bytes | None:
        path = self.media.template_image(person_id, template_id)
        return None if path is None else path.read_bytes()

    # ----------------------------------------------------------------------------------------------- enroll
    def enroll(
        self,
        person_id: int | None = None,
        *,
        images: Sequence[ImageLike] | None = None,
        embeddings: np.ndarray | None = None,
        modality: str = "face",
        model_id: str | None = None,
        display_name: str | None = None,
        external_id: str | None = None,
        kind: str = "enrolled",
        quality: Sequence[float] | None = None,
        sources: Sequence[str] | None = None,
        image_hashes: Sequence[str | None] | None = None,
    ) -> EnrollResult:
        """Add templates to a person (a new one when ``person_id`` is None). Images already stored for this
        model (same SHA-256) are not stored twice: they come back in ``duplicates``."""
        vecs, model_id, hashes = call_vectors(
            self.embedders, modality, images, embeddings, model_id, "enroll"
        )
        if image_hashes is not None:
            if len(image_hashes) != len(vecs):
                raise GalleryError(f"enroll: {len(image_hashes)} image_hashes for {len(vecs)} embeddings")
            hashes = list(image_hashes)
        for name, seq in (("quality", quality), ("sources", sources)):
            if seq is not None and len(seq) != len(vecs):
                raise GalleryError(f"enroll: {len(seq)} {name} values for {len(vecs)} embeddings")
        key = (modality, model_id)
        index = self.cache.index_for(key, vecs.shape[1], create=True)
        req = EnrollRequest(
            key, vecs, hashes, person_id=person_id, quality=quality, sources=sources,
            display_name=display_name, external_id=external_id, kind=kind,
        )  # fmt: skip
        result, stored = self.store.enroll(req)
        # after the commit: the stored templates become searchable
        ids = result.template_ids
        self.cache.add(index, ids, [result.person_id] * len(ids), vecs[stored])
        return result

    # --------------------------------------------------------------------------------------------- identify
    def identify(
        self,
        image: ImageLike | None = None,
        *,
        embedding: np.ndarray | None = None,
        modality: str = "face",
        model_id: str | None = None,
        k: int = 5,
        threshold: float | None = None,
    ) -> IdentifyResult:
        """Ranked persons for one query, and known/unknown against the threshold of this model."""
        if k < 1:
            raise GalleryError(f"identify: k must be >= 1, got {k}")
        images = None if image is None else [image]
        vecs, model_id, _ = call_vectors(self.embedders, modality, images, embedding, model_id, "identify")
        if len(vecs) != 1:
            raise EmbeddingError(f"identify: expected one embedding, got {len(vecs)}")
        return self.identifier.identify(vecs, (modality, model_id), k, threshold)

    def identify_or_enroll(
        self,
        image: ImageLike | None = None,
        *,
        embedding: np.ndarray | None = None,
        modality: str = "face",
        model_id: str | None = None,
        threshold: float | None = None,
        display_name: str | None = None,
        kind: str = "anonymous",
        k: int = 5,
    ) -> IdentifyOrEnrollResult:
        """Return the known person, or create one with the query as its first template. The search is redone
        under a per-model lock, so concurrent calls with the same new face create one person only."""
        images = None if image is None else [image]
        vecs, model_id, hashes = call_vectors(
            self.embedders, modality, images, embedding, model_id, "identify_or_enroll"
        )
        if self.decisions.decision(modality, model_id, threshold) is None:
            raise GalleryError(
                f"identify_or_enroll: no threshold for {modality}/{model_id} (no calibration in this gallery, "
                "no setting, no model card); calibrate one or pass threshold="
            )
        return self.identifier.identify_or_enroll(
            vecs, hashes, (modality, model_id), k, threshold, display_name, kind
        )

    # --------------------------------------------------------------------------------------- merge, delete
    def merge(self, keep: int, remove: int) -> PersonInfo:
        """Move ``remove``'s templates and sightings to ``keep`` and delete ``remove``."""
        if keep == remove:
            raise GalleryError(f"merge: cannot merge person {keep} into itself")
        moved = self.store.merge(keep, remove)
        self.media.move(remove, keep)
        self.cache.move(moved, keep, remove)
        return self.get_person(keep)

    def delete_person(self, person_id: int) -> int:
        """Erase a person: templates, sightings and index entries. Returns the number of templates removed."""
        tids = self.store.delete_person(person_id)
        self.cache.forget_person(person_id, tids)
        self.media.erase(person_id)
        return len(tids)

    # ------------------------------------------------------------------------------------ media, sightings
    def person_media_dir(self, person_id: int) -> Path | None:
        """The folder for this person's files (crops); erased with the person, moved by merge."""
        return self.media.person_dir(person_id)

    def set_thumbnail(self, person_id: int, image: ImageLike, size: int = 128, replace: bool = True) -> bool:
        """Store a JPEG thumbnail (longest side ``size``) of ``image`` for the person; False if one exists and
        ``replace`` is off."""
        return self.store.set_thumbnail(person_id, thumbnail_jpeg(image, size), replace)

    def get_thumbnail(self, person_id: int) -> bytes | None:
        return self.store.get_thumbnail(person_id)

    def record_sighting(
        self,
        person_id: int,
        camera_id: str,
        score: float | None = None,
        modality: str | None = None,
        seen_at: datetime | None = None,
        track_id: str | None = None,
        event_id: str | None = None,
    ) -> int:
        """Store a sighting (and move the person's ``last_seen_at``). With an ``event_id`` it is idempotent:
        a redelivered event returns the id of the sighting already stored."""
        return self.sightings_log.record(person_id, camera_id, score, modality, seen_at, track_id, event_id)

    def sightings(
        self,
        person_id: int | None = None,
        camera_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
        after_id: int | None = None,
    ) -> list[SightingInfo]:
        """Sightings by time; with ``after_id`` those stored after that one, by id (to follow them live)."""
        return self.sightings_log.find(person_id, camera_id, since, until, limit, after_id)

    def newest_sighting_id(self) -> int:
        return self.sightings_log.newest_id()

    def track_person(self, track_id: str) -> int | None:
        """The person the sightings of this track (``record_sighting(track_id=...)``) name, or None."""
        return self.sightings_log.person_of_track(track_id)

    def add_embedder(self, embedder: Any) -> None:
        """Embed ``embedder.modality``'s images with it from now on (and use its model card, if any): for an
        embedder chosen after looking at the gallery (``model_ids``)."""
        self.embedders[embedder.modality] = embedder
        self.register_card(embedder.modality, embedder.model_id, getattr(embedder, "decision", None))

    def model_ids(self, modality: str) -> set[str]:
        """The models this gallery holds templates of, for ``modality``."""
        with self.cache.lock:
            return {m for (mod, m), persons in self.cache.key_persons.items() if mod == modality and persons}

    # ------------------------------------------------------------------------------------------- decisions
    def register_card(self, modality: str, model_id: str, card: dict | None) -> None:
        """Use a model card's calibrated decision for this model when the database holds none."""
        self.decisions.register_card(modality, model_id, card)

    def decision_for(self, modality: str, model_id: str) -> Decision | None:
        """The decision of this model: calibrated in the database (cached for a few seconds; other processes
        may change it) > the operator's per-modality setting (``thresholds``, a raw score) > the model card's
        (calibrated on validation identities when the model was made) > None."""
        return self.decisions.decision_for(modality, model_id)

    def threshold_for(self, modality: str, model_id: str) -> float | None:
        """The threshold value of this model's decision (see ``decision_for``), or None."""
        d = self.decision_for(modality, model_id)
        return None if d is None else d.threshold

    def decide(
        self,
        modality: str,
        model_id: str,
        query: np.ndarray,
        person_scores: Sequence[float],
        threshold: float | None = None,
    ) -> Verdict | None:
        """This model's decision on candidate persons' scores (best first) for ``query``; e.g. to ask whether a
        track is person B once its own person A is left out. None without a decision or candidates."""
        persons = self.persons_count(modality, model_id)
        return self.decisions.decide(modality, model_id, query, person_scores, threshold, persons)

    def set_threshold(
        self,
        modality: str,
        model_id: str,
        value: float,
        actor: str = "local",
        rule: str = "raw",
        beta: float | None = None,
        cohort: np.ndarray | None = None,
        by_size: dict[int, float] | None = None,
        **measured: Any,
    ) -> None:
        """Store the decision of a model (a configuration change: audited, with ``actor``). It overrides the
        model card's. ``rule="raw"`` compares ``value`` with the best score; ``"margin"`` with
        best - ``beta`` * runner-up (the second person, or the best of ``cohort``)."""
        self.decisions.set_threshold(
            modality, model_id, value, actor, rule, beta, cohort, by_size, **measured
        )

    def calibrate_threshold(
        self,
        modality: str,
        model_id: str,
        embeddings: np.ndarray,
        labels: Sequence[int | str],
        target_far: float = 1e-2,
        store: bool = True,
        rule: str = "margin",
        enroll_per_id: int = 1,
        cohort: np.ndarray | None = None,
        cohort_fraction: float = 1 / 3,
        seed: int = 0,
    ) -> CalibrationResult:
        """Calibrate this model's open-set decision on labelled embeddings of people who are *not* enrolled.

        The gallery is simulated as it is used (``reid.metrics.open_set_decision.calibrate_decision``): each
        identity enrolled with ``enroll_per_id`` images, its other images asked, and other identities asking as
        strangers. ``rule="margin"`` weighs the best score against the runner-up (second person or a cohort of
        never-enrolled people: ``cohort``, else ``cohort_fraction`` of the identities given, one image each) and
        chooses beta; ``rule="raw"`` thresholds the best score alone. The threshold is the smallest value at
        which at most ``target_far`` of the strangers are accepted. A simulated person's templates score a probe
        as this gallery's ``aggregation`` for the modality scores its persons.
        """
        return self.decisions.calibrate(
            modality, model_id, embeddings, labels, target_far, store, rule, enroll_per_id, cohort,
            cohort_fraction, seed, aggregation=self.cache.aggregation.get(modality, "max"),
        )  # fmt: skip
