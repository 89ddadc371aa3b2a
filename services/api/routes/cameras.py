"""What the cameras are doing: one tile per camera (latest annotated frame, tracks in view with their global
ids, frames/s) from the camera commands' status folder, and a live stream of sightings (server-sent events)."""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

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


@router.get("/sightings/stream", response_class=StreamingResponse)
async def sightings_stream(
    _: Read, state: State, request: Request, after: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None
) -> StreamingResponse:
    """Server-sent events, one ``sighting`` per new sighting (from ``after``, else from now on), oldest first;
    a comment line every 15 s keeps proxies from closing a quiet stream."""

    async def events():
        g = state.gallery
        last = after if after is not None else await run_in_threadpool(g.newest_sighting_id)
        quiet = 0.0
        while not await request.is_disconnected():
            rows = await run_in_threadpool(partial(g.sightings, limit=200, after_id=last))
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
