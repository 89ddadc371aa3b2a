"""Privacy duties of the identity store: retention of anonymous people, subject access export.

Erasure itself is ``Gallery.delete_person`` (rows, index entries on every replica through the change feed,
per-person files); the audit log records that it happened.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from gallery.audit import AuditLog
from gallery.errors import GalleryError
from gallery.models import Person, Sighting, Template, Thumbnail

if TYPE_CHECKING:
    from gallery.service import Gallery

logger = logging.getLogger(__name__)


@dataclass
class RetentionPolicy:
    """How long anonymous identities (created by cameras, no consent) are kept after they were last seen.

    ``per_store`` overrides ``default_days`` for a store id; persons enrolled by staff are never swept.
    """

    default_days: float = 30.0
    per_store: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, days in [("default_days", self.default_days), *self.per_store.items()]:
            if not days > 0:
                raise GalleryError(f"retention {name}: days must be > 0, got {days}")

    def days_for(self, store_id: str | None) -> float:
        return self.per_store.get(store_id, self.default_days) if store_id is not None else self.default_days


@dataclass
class SweepResult:
    deleted: list[int]
    templates_removed: int
    checked_at: datetime


def sweep_expired(
    gallery: Gallery, policy: RetentionPolicy | None = None, now: datetime | None = None
) -> SweepResult:
    """Erase every anonymous person not seen within their store's retention (rows, index entries on every
    replica, files); each erasure is audited as ``retention-erase`` by ``system``."""
    policy = policy or RetentionPolicy()
    now = now or gallery.clock()
    audit = AuditLog(gallery.Session, gallery.clock)
    with gallery.Session() as s:
        stores = [
            r[0] for r in s.execute(select(Person.store_id).where(Person.kind == "anonymous").distinct())
        ]
        expired: list[int] = []
        for store in stores:
            cutoff = now - timedelta(days=policy.days_for(store))
            seen = func.coalesce(Person.last_seen_at, Person.created_at)
            q = select(Person.id).where(Person.kind == "anonymous", seen < cutoff)
            q = q.where(Person.store_id.is_(None) if store is None else Person.store_id == store)
            expired += list(s.scalars(q))
    removed = 0
    for pid in sorted(expired):
        try:
            removed += gallery.delete_person(pid)
        except GalleryError as e:  # erased meanwhile by someone else: nothing left to do
            logger.info("retention: person %d already gone (%s)", pid, e)
            continue
        audit.write("retention-erase", "ok", key_id="system", subject=f"person:{pid}")
    if expired:
        logger.info("retention sweep: erased %d anonymous persons (%d templates)", len(expired), removed)
    return SweepResult(sorted(expired), removed, now)


def export_person(gallery: Gallery, person_id: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Everything held about one person (subject access request): a JSON-able record and the files
    (``thumbnail.jpg`` and per-person media) by name."""
    info = gallery.get_person(person_id)  # raises UnknownPersonError
    files: dict[str, bytes] = {}
    with gallery.Session() as s:
        templates = [
            {
                "id": t.id,
                "modality": t.modality,
                "model_id": t.model_id,
                "created_at": t.created_at.isoformat(),
                "quality": t.quality,
                "source": t.source,
                "image_sha256": t.image_sha256,
                "embedding_float32_base64": base64.b64encode(t.vector).decode(),
            }
            for t in s.scalars(select(Template).where(Template.person_id == person_id).order_by(Template.id))
        ]
        sightings = [
            {
                "id": r.id,
                "camera_id": r.camera_id,
                "seen_at": r.seen_at.isoformat(),
                "score": r.score,
                "modality": r.modality,
                "track_id": r.track_id,
            }
            for r in s.scalars(select(Sighting).where(Sighting.person_id == person_id).order_by(Sighting.id))
        ]
        thumb = s.get(Thumbnail, person_id)
        if thumb is not None:
            files["thumbnail.jpg"] = bytes(thumb.jpeg)
    folder = gallery.person_media_dir(person_id)
    if folder is not None and folder.is_dir():
        for f in sorted(folder.iterdir()):
            if f.is_file():
                files[f"media/{f.name}"] = f.read_bytes()
    audit = [
        {"at": a.at.isoformat(), "action": a.action, "outcome": a.outcome, "key_id": a.key_id}
        for a in AuditLog(gallery.Session).read(subject=f"person:{person_id}")
    ]
    record = {
        "person": {
            "id": info.id,
            "external_id": info.external_id,
            "display_name": info.display_name,
            "kind": info.kind,
            "store_id": info.store_id,
            "purpose": info.purpose,
            "consent": info.consent,
            "metadata": info.metadata,
            "created_at": info.created_at.isoformat(),
            "last_seen_at": None if info.last_seen_at is None else info.last_seen_at.isoformat(),
        },
        "templates": templates,
        "sightings": sightings,
        "audit": audit,
        "files": sorted(files),
        "exported_at": gallery.clock().isoformat(),
    }
    return record, files
