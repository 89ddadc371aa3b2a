"""Health (open), readiness (detail behind a key) and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import PlainTextResponse, RedirectResponse
from prometheus_client import generate_latest

from services.api.deps import Read, State

router = APIRouter(tags=["ops"])


@router.get("/", include_in_schema=False)
def index() -> RedirectResponse:
    return RedirectResponse("/ui/index.html")


@router.get("/health")
def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
def ready(state: State, x_api_key: Annotated[str | None, Header()] = None) -> dict:
    """Readiness for a probe (no key needed); the index counts and model ids only for a valid key, unless the
    operator made them public (``REID_PUBLIC_READINESS_DETAIL``)."""
    # asks the database (an outage answers 503); the counts are reported, not compared: a replica's index
    # trails the database by its change feed, and a writer's between its commit and its index update
    counts = state.gallery.check_consistency()
    if not (state.settings.public_readiness_detail or (x_api_key and state.keys.find(x_api_key))):
        return {"status": "ready"}
    return {"status": "ready", "indexes": counts, "modalities": sorted(state.embedders)}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(_: Read, state: State) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(state.registry).decode(), media_type="text/plain; version=0.0.4")
