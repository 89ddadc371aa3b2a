"""Sightings: where and when a person was seen (rows only; they never touch the indexes)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from gallery.errors import GalleryError
from gallery.models import Sighting, to_utc
from gallery.results import SightingInfo
from gallery.store import GalleryStore, require_person


class Sightings:
    """Writes and reads the sightings of one gallery's database."""

    def __init__(self, store: GalleryStore) -> None:
        self.store = store

    def record(
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
        if not camera_id:
            raise GalleryError("record_sighting: camera_id is required")
        # compared below with the stored (aware UTC) last_seen_at
        seen_at = to_utc(seen_at or self.store.clock())
        try:
            with self.store.Session.begin() as s:
                p = require_person(s, person_id)
                row = Sighting(
                    person_id=person_id,
                    camera_id=camera_id,
                    score=score,
                    modality=modality,
                    seen_at=seen_at,
                    track_id=track_id,
                    event_id=event_id,
                )
                s.add(row)
                last = p.last_seen_at
                if last is None or last < seen_at:
                    p.last_seen_at = seen_at
                s.flush()
                return row.id
        except IntegrityError:
            if event_id is None:
                raise
            with self.store.Session() as s:
                existing = s.scalar(select(Sighting.id).where(Sighting.event_id == event_id))
            if existing is None:
                raise
            return int(existing)

    def find(
        self,
        person_id: int | None = None,
        camera_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
        after_id: int | None = None,
    ) -> list[SightingInfo]:
        """Sightings by time; with ``after_id`` the ones stored after that sighting, by id (a feed to follow:
        ids grow, times need not)."""
        with self.store.Session() as s:
            order = (Sighting.id,) if after_id is not None else (Sighting.seen_at, Sighting.id)
            q = select(Sighting).order_by(*order).limit(limit)
            if after_id is not None:
                q = q.where(Sighting.id > after_id)
            if person_id is not None:
                q = q.where(Sighting.person_id == person_id)
            if camera_id is not None:
                q = q.where(Sighting.camera_id == camera_id)
            if since is not None:
                q = q.where(Sighting.seen_at >= since)
            if until is not None:
                q = q.where(Sighting.seen_at < until)
            return [
                SightingInfo(r.id, r.person_id, r.camera_id, r.seen_at, r.score, r.modality, r.track_id)
                for r in s.scalars(q)
            ]

    def person_of_track(self, track_id: str) -> int | None:
        """The person the latest sighting of this track was recorded for (None: the track has none yet): a track
        renamed while in view (two people seen together) keeps its new name after a restart."""
        with self.store.Session() as s:
            q = select(Sighting.person_id).where(Sighting.track_id == track_id)
            return s.scalar(q.order_by(Sighting.id.desc()).limit(1))

    def newest_id(self) -> int:
        """The id of the newest sighting (0 when there is none)."""
        with self.store.Session() as s:
            return int(s.scalar(select(func.max(Sighting.id))) or 0)
