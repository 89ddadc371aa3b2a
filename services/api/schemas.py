"""Request and response bodies of the API (pydantic), read straight from the gallery's result dataclasses."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Path as FastPath
from pydantic import BaseModel, ConfigDict, Field

Modality = Literal["face", "body"]
PersonId = Annotated[int, FastPath(ge=1, le=2**63 - 1, description="person id")]
# past this, SQLite's 64-bit OFFSET arithmetic overflows; no gallery holds 2**53 persons
MAX_OFFSET = 2**53


class PersonIn(BaseModel):
    display_name: str | None = Field(None, max_length=200)
    external_id: str | None = Field(None, max_length=200)
    consent: dict | None = Field(None, description="the consent record: who agreed, when, to what")
    purpose: str | None = Field(None, max_length=200, description="why this person is held")
    metadata: dict | None = None


class PersonUpdate(BaseModel):
    """Only the fields sent are changed; ``null`` clears one."""

    model_config = ConfigDict(extra="forbid")
    display_name: str | None = Field(None, max_length=200)
    consent: dict | None = Field(None, description="the consent record: who agreed, when, to what")
    purpose: str | None = Field(None, max_length=200)


class FromResult(BaseModel):
    """Response models read straight from the gallery's result dataclasses (same field names)."""

    model_config = ConfigDict(from_attributes=True)


class PersonOut(FromResult):
    id: int
    display_name: str | None
    external_id: str | None
    kind: str
    created_at: datetime
    templates: dict[str, int]
    sightings: int


class PersonRecordOut(PersonOut):
    consent: dict | None
    purpose: str | None
    last_seen_at: datetime | None


class EnrollOut(BaseModel):
    person_id: int
    created_person: bool
    model_id: str
    template_ids: list[int]
    duplicates: list[int] = Field(description="positions of uploaded images already stored")


class MatchOut(FromResult):
    person_id: int
    score: float
    template_id: int = Field(
        description="the person's most similar template (its crop: /persons/{id}/templates/{tid}/image); "
        "the score aggregates all their templates of this model"
    )
    display_name: str | None
    external_id: str | None


class DecisionOut(BaseModel):
    rule: str = Field(
        description="'raw': best score >= threshold; 'margin': best - beta x runner-up >= threshold"
    )
    threshold: float
    beta: float | None
    cohort_size: int = Field(description="never-enrolled people the runner-up is also taken from")
    source: str = Field(description="'calibrated' (this gallery), 'setting', 'model card' or 'argument'")
    size_aware: bool = Field(
        False, description="the threshold is read for the number of persons enrolled (see `threshold`)"
    )


class Evidence(BaseModel):
    """What the known / unknown answer was decided on."""

    decision: DecisionOut | None = None
    score: float | None = Field(
        None,
        description="the best person's similarity before normalisation: the cosine to their normalised mean "
        "template for faces, to their best template for bodies (the gallery's aggregation)",
    )
    runner_up: float | None = Field(None, description="the best competitor: second person, or the cohort")
    normalised_score: float | None = Field(None, description="the value compared with the threshold")


class IdentifyOut(Evidence):
    modality: Modality
    model_id: str
    known: bool | None
    threshold: float | None
    person: MatchOut | None = Field(None, description="the best match when known")
    matches: list[MatchOut]
    box: list[float] | None = Field(
        None, description="the face found in the query photo (x1, y1, x2, y2 pixels); bodies: the whole photo"
    )


class IdentifyOrEnrollOut(Evidence):
    person_id: int
    created: bool
    threshold: float | None = None


class VerifyOut(Evidence):
    same_person: bool | None
    score: float
    threshold: float | None
    model_id: str


class SightingOut(FromResult):
    id: int
    person_id: int
    camera_id: str
    seen_at: datetime
    score: float | None
    modality: str | None


class MergeIn(BaseModel):
    remove: int = Field(description="the person folded into this one and deleted")


class ErrorOut(BaseModel):
    detail: str


class AuditOut(FromResult):
    id: int
    at: datetime
    key_id: str | None
    action: str
    subject: str | None
    outcome: str
    detail: dict | None


class SweepOut(FromResult):
    deleted: list[int]
    templates_removed: int
    checked_at: datetime


def evidence(r) -> dict:
    """The decision's evidence of an ``IdentifyResult`` as response fields."""
    return {
        "decision": r.decision,
        "score": r.score,
        "runner_up": r.runner_up,
        "normalised_score": r.normalised_score,
    }


class ReviewOut(FromResult):
    id: int
    created_at: datetime
    person_id: int | None = Field(description="the person the system created (None once erased or merged)")
    candidate_id: int | None = Field(
        description="the known person it scored just under the threshold against"
    )
    modality: str
    model_id: str
    source: str | None = Field(description="'api' or 'camera:<id>'")
    score: float
    normalised: float
    threshold: float
    status: str
    decided_at: datetime | None
    decided_by: str | None


class ReviewCounts(BaseModel):
    open: int
    confirmed: int
    rejected: int
    right_near_threshold: float | None = Field(
        description="rejected / decided: how often the system was right to keep a near miss apart"
    )


class CameraTrackOut(BaseModel):
    track_id: int
    global_id: int | None
    box: list[float]


class CameraOut(BaseModel):
    camera_id: str
    frames: int = Field(description="frames processed so far")
    fps: float = Field(description="processed frames per second")
    tracks: list[CameraTrackOut] = Field(description="tracks in view now")
    running: bool
    updated_at: float = Field(description="when the camera last wrote its status (Unix time)")


class TemplateOut(FromResult):
    id: int
    modality: str
    model_id: str
    source: str | None
    created_at: datetime
    image: bool = Field(description="a crop is kept: GET /persons/{id}/templates/{template_id}/image")
