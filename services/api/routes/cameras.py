"""What the cameras are doing: one tile per camera (latest annotated frame, tracks in view with their global
ids, frames/s) from the camera commands' status folder, and a live stream of sightings (server-sent events)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from gallery.models import Sighting
from services.api.deps import Read, State
from services.api.schemas import CameraOut, ErrorOut, SightingOut
from services.camera.status import frame_path, read_statuses

router = APIRouter(tags=["cameras"])
CameraId = Annotated[str, Path(min_length=1, max_length=100, description="camera id")]
POLL_SECONDS, HEARTBEAT_SECONDS = 0.5, 15.0


def _folder(state) -> str:
    folder = state.settings.camera_status_dir
    if not folder:
        raise HTTPException(404, "no camera status folder is configured (REID_CAMERA_STATUS_DIR)")
    return folder


@router.get("/cameras")
def cameras(_: Read, state: State) -> list[CameraOut]:
    """Every camera that wrote a status (none when no status folder is configured)."""
    folder = state.settings.camera_status_dir
    return [CameraOut.model_validate(s) for s in read_statuses(folder)] if folder else []


@router.get(
    "/cameras/{camera_id}/frame",
    response_class=Response,
    responses={404: {"model": ErrorOut}, 200: {"content": {"image/jpeg": {}}}},
)
def camera_frame(camera_id: CameraId, _: Read, state: State) -> Response:
    """The camera's latest annotated frame (heads of people without consent blurred)."""
    path = frame_path(_folder(state), camera_id)
    if path is None:
        raise HTTPException(404, f"camera {camera_id!r} has no frame")
    return Response(path.read_bytes(), media_type="image/jpeg", headers={"Cache-Control": "no-store"})


def _after(state, last: int) -> list[Sighting]:
    with state.gallery.Session() as s:
        rows = s.scalars(select(Sighting).where(Sighting.id > last).order_by(Sighting.id).limit(200)).all()
        s.expunge_all()
        return list(rows)


def _newest(state) -> int:
    with state.gallery.Session() as s:
        return int(s.scalar(select(func.max(Sighting.id))) or 0)


@router.get("/sightings/stream", response_class=StreamingResponse)
async def sightings_stream(
    _: Read, state: State, request: Request, after: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None
) -> StreamingResponse:
    """Server-sent events, one ``sighting`` per new sighting (from ``after``, else from now on), oldest first;
    a comment line every 15 s keeps proxies from closing a quiet stream."""

    async def events():
        last = after if after is not None else await run_in_threadpool(_newest, state)
        quiet = 0.0
        while not await request.is_disconnected():
            rows = await run_in_threadpool(_after, state, last)
            for r in rows:
                last = r.id
                data = SightingOut.model_validate(r).model_dump(mode="json")
                yield f"id: {r.id}\nevent: sighting\ndata: {json.dumps(data)}\n\n"
            quiet = 0.0 if rows else quiet + POLL_SECONDS
            if quiet >= HEARTBEAT_SECONDS:
                quiet = 0.0
                yield ": still here\n\n"
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})
