"""Sightings: where and when the cameras saw a person."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from services.api.deps import Read, State
from services.api.schemas import SightingOut

router = APIRouter(tags=["sightings"])


@router.get("/sightings")
def sightings(
    _: Read,
    state: State,
    person_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    camera_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[SightingOut]:
    found = state.gallery.sightings(person_id, camera_id, since, until, limit)
    return [SightingOut.model_validate(s) for s in found]
