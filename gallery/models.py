"""The data model: persons, templates (one embedding each), sightings, calibrated thresholds.

The database is the source of truth; FAISS indexes are derived from the ``templates`` table and can always be
rebuilt from it. Vectors are stored as little-endian float32 bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

MODALITIES = ("face", "body")


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_utc(t: datetime) -> datetime:
    """``t`` as an aware UTC datetime; a naive ``t`` is taken to be UTC already (the gallery's convention)."""
    if not isinstance(t, datetime):
        raise TypeError(f"expected a datetime, got {type(t).__name__} {t!r}")
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


class UTCDateTime(TypeDecorator):
    """A ``DateTime(timezone=True)`` column that stores UTC and always hands back aware UTC datetimes.

    SQLite has no time zones: SQLAlchemy writes the wall-clock digits and drops the offset, so an aware
    non-UTC value would be stored as the wrong instant and every value comes back naive. Converting to UTC
    before storing (naive input counts as UTC) and tagging results with UTC makes both backends agree.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        utc = to_utc(value)
        # SQLite stores text: keep one (UTC, offset-free) form so that comparisons of the text are correct
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else to_utc(value)


# BigInteger ids on PostgreSQL; SQLite only auto-increments INTEGER PRIMARY KEY, hence the variant.
IdType = BigInteger().with_variant(Integer(), "sqlite")

# Ids of erased rows must never be handed out again: audit rows name "person:N", exports are assembled by id
# and another replica's index may still hold an old template id. PostgreSQL sequences never go back; SQLite's
# plain INTEGER PRIMARY KEY reuses the highest id after it is deleted, unless the table is AUTOINCREMENT.
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class Base(DeclarativeBase):
    pass


class Person(Base):
    __tablename__ = "persons"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(
        String(20), default="enrolled"
    )  # enrolled by staff | anonymous (camera)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    consent: Mapped[dict | None] = mapped_column(JSON)
    meta: Mapped[dict | None] = mapped_column("metadata", JSON)
    # privacy: which store saw/enrolled the person (its retention applies), why they are held, and when they
    # were last seen (anonymous identities expire a retention period after that)
    store_id: Mapped[str | None] = mapped_column(String(100), index=True)
    purpose: Mapped[str | None] = mapped_column(String(200))
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)

    templates: Mapped[list[Template]] = relationship(back_populates="person", passive_deletes=True)


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (
        # the same image is stored once per model (re-enrolling it is a no-op)
        UniqueConstraint("modality", "model_id", "image_sha256", name="uq_template_image"),
        Index("ix_templates_key_id", "modality", "model_id", "id"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(10))
    model_id: Mapped[str] = mapped_column(String(200))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    quality: Mapped[float | None] = mapped_column(Float)
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    person: Mapped[Person] = relationship(back_populates="templates")


class Sighting(Base):
    __tablename__ = "sightings"
    __table_args__ = (
        Index("ix_sightings_person_time", "person_id", "seen_at"),
        UniqueConstraint("event_id", name="uq_sightings_event_id"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"))
    camera_id: Mapped[str] = mapped_column(String(100), index=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    score: Mapped[float | None] = mapped_column(Float)
    modality: Mapped[str | None] = mapped_column(String(10))
    track_id: Mapped[str | None] = mapped_column(String(100))
    # producer-chosen id (camera, frame, track): redelivered events are stored once
    event_id: Mapped[str | None] = mapped_column(String(200))


class Threshold(Base):
    __tablename__ = "thresholds"

    modality: Mapped[str] = mapped_column(String(10), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    target_far: Mapped[float | None] = mapped_column(Float)
    measured_far: Mapped[float | None] = mapped_column(Float)
    measured_tar: Mapped[float | None] = mapped_column(Float)
    n_genuine: Mapped[int | None] = mapped_column(Integer)
    n_impostor: Mapped[int | None] = mapped_column(Integer)
    # the open-set rule the value applies to: "raw" (best score) or "margin" (best - beta * runner-up, the
    # runner-up being the second person or the best of ``cohort``, float32 rows of never-enrolled people)
    rule: Mapped[str] = mapped_column(String(20), default="raw", server_default="raw")
    beta: Mapped[float | None] = mapped_column(Float)
    cohort: Mapped[bytes | None] = mapped_column(LargeBinary)
    measured_dir: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str | None] = mapped_column(String(200))
    by_size: Mapped[dict | None] = mapped_column(JSON)  # {"persons": threshold}, raw or margin rule
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Thumbnail(Base):
    """One small JPEG per person for people-facing pages; erased with the person (cascade)."""

    __tablename__ = "thumbnails"

    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"), primary_key=True)
    jpeg: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Change(Base):
    """The change feed: one row per committed enroll, merge or delete, written in the same transaction.

    ``seq`` order is commit order (writers serialise on a lock before inserting their row), so a replica that
    has applied every change up to ``seq`` knows exactly what it is missing after a restart or a lost
    notification.
    """

    __tablename__ = "changes"

    seq: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    op: Mapped[str] = mapped_column(String(20))  # enroll | merge | delete
    person_id: Mapped[int] = mapped_column(IdType)
    other_person_id: Mapped[int | None] = mapped_column(IdType)  # merge: the person merged away
    template_ids: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class AuditEntry(Base):
    """Append-only audit log (UPDATE and DELETE are refused by a trigger): who did what to whom, and how it ended."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    key_id: Mapped[str | None] = mapped_column(String(100))  # API key id (never the secret), or "system"
    action: Mapped[str] = mapped_column(String(50))
    subject: Mapped[str | None] = mapped_column(String(200), index=True)  # e.g. "person:12"
    outcome: Mapped[str] = mapped_column(String(50))
    detail: Mapped[dict | None] = mapped_column(JSON)


class ReviewPair(Base):
    """A near miss for an operator to judge: a person the system created (``person_id``) whose best candidate
    (``candidate_id``) scored just under the accept threshold. Confirmed: the two are merged; rejected: they
    stay apart and the pair is not offered again. Rows outlive their persons (ids set to NULL on erasure) so
    the counts of decisions stay."""

    __tablename__ = "review_pairs"
    __table_args__ = (Index("ix_review_pairs_status", "status", "id"), NEVER_REUSE_IDS)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id", ondelete="SET NULL"), index=True)
    candidate_id: Mapped[int | None] = mapped_column(
        ForeignKey("persons.id", ondelete="SET NULL"), index=True
    )
    modality: Mapped[str] = mapped_column(String(10))
    model_id: Mapped[str] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(200))  # "api", "camera:<id>"
    score: Mapped[float] = mapped_column(Float)  # the candidate's raw similarity
    normalised: Mapped[float] = mapped_column(Float)  # what the decision compared
    threshold: Mapped[float] = mapped_column(Float)  # the accept threshold it fell under
    status: Mapped[str] = mapped_column(String(20), default="open")  # open | confirmed | rejected
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    decided_by: Mapped[str | None] = mapped_column(String(100))  # API key name
