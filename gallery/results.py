"""Typed results of gallery operations."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class Duplicate:
    index: int  # position in the enrolled batch
    template_id: int
    person_id: int


@dataclass
class EnrollResult:
    person_id: int
    modality: str
    model_id: str
    template_ids: list[int] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    created_person: bool = False


@dataclass
class PersonMatch:
    person_id: int
    score: float
    template_id: int  # the most similar template (score aggregates them all: gallery.cache.IndexCache.how)
    display_name: str | None = None
    external_id: str | None = None


@dataclass
class IdentifyResult:
    modality: str
    model_id: str
    matches: list[PersonMatch]
    threshold: float | None
    known: bool | None  # None when no decision (calibration, model card or setting) exists for this model
    # the decision's evidence: its rule and source, the best person's raw score, the runner-up it was weighed
    # against (second person or cohort), and the normalised score compared with the threshold
    decision: dict | None = None
    score: float | None = None
    runner_up: float | None = None
    normalised_score: float | None = None

    @property
    def best(self) -> PersonMatch | None:
        return self.matches[0] if self.matches else None


@dataclass
class IdentifyOrEnrollResult:
    person_id: int
    created: bool
    score: float | None
    identify: IdentifyResult
    enroll: EnrollResult | None = None


@dataclass
class PersonInfo:
    id: int
    external_id: str | None
    display_name: str | None
    kind: str
    created_at: datetime
    consent: dict | None
    metadata: dict | None
    templates: dict[str, int] = field(default_factory=dict)  # "modality/model_id" -> count
    sightings: int = 0
    store_id: str | None = None
    purpose: str | None = None
    last_seen_at: datetime | None = None


@dataclass
class TemplateInfo:
    id: int
    modality: str
    model_id: str
    source: str | None
    created_at: datetime
    image: bool = False  # a crop of what was enrolled is kept (media folder)


@dataclass
class SightingInfo:
    id: int
    person_id: int
    camera_id: str
    seen_at: datetime
    score: float | None
    modality: str | None
    track_id: str | None


@dataclass
class CalibrationResult:
    modality: str
    model_id: str
    threshold: float
    target_far: float
    measured_far: float
    measured_tar: float
    n_genuine: int
    n_impostor: int
    rule: str = "raw"
    beta: float | None = None
    measured_dir: float | None = None  # mated probes named right and accepted (the simulated gallery)
    cohort_size: int = 0
    by_size: dict[int, float] = field(default_factory=dict)  # threshold by gallery size (persons)
    # the size table checked on these identities (built on half of the simulated gallery, read at all of it)
    size_check: dict[str, float] = field(default_factory=dict)
