"""The data model: persons, templates (one embedding each), sightings, calibrated thresholds.

The database is the source of truth; FAISS indexes are derived from the ``templates`` table and can always be
rebuilt from it. Vectors are stored as little-endian float32 bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

MODALITIES = ("face", "body")


def utcnow() -> datetime:
    return datetime.now(UTC)


# BigInteger ids on PostgreSQL; SQLite only auto-increments INTEGER PRIMARY KEY, hence the variant.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Person(Base):
    __tablename__ = "persons"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    external_id: Mapped[str | None] = mapped_column(String(200), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(
        String(20), default="enrolled"
    )  # enrolled by staff | anonymous (camera)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    consent: Mapped[dict | None] = mapped_column(JSON)
    meta: Mapped[dict | None] = mapped_column("metadata", JSON)

    templates: Mapped[list[Template]] = relationship(back_populates="person", passive_deletes=True)


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (
        # the same image is stored once per model (re-enrolling it is a no-op)
        UniqueConstraint("modality", "model_id", "image_sha256", name="uq_template_image"),
        Index("ix_templates_key_id", "modality", "model_id", "id"),
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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    person: Mapped[Person] = relationship(back_populates="templates")


class Sighting(Base):
    __tablename__ = "sightings"
    __table_args__ = (Index("ix_sightings_person_time", "person_id", "seen_at"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"))
    camera_id: Mapped[str] = mapped_column(String(100), index=True)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    score: Mapped[float | None] = mapped_column(Float)
    modality: Mapped[str | None] = mapped_column(String(10))
    track_id: Mapped[str | None] = mapped_column(String(100))


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
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Thumbnail(Base):
    """One small JPEG per person for people-facing pages; erased with the person (cascade)."""

    __tablename__ = "thumbnails"

    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"), primary_key=True)
    jpeg: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
