"""Persons: create, list, read, thumbnail, enroll photos, merge, erase."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response

from services.api.deps import Delete, Enroll, Read, State, audited
from services.api.limits import check_json_field
from services.api.schemas import (
    MAX_OFFSET,
    EnrollOut,
    ErrorOut,
    MergeIn,
    Modality,
    PersonId,
    PersonIn,
    PersonOut,
)
from services.api.uploads import embed_located, read_upload, save_thumbnail
from services.erasure import scrub_event_logs

router = APIRouter(prefix="/persons", tags=["persons"])
person_out = PersonOut.model_validate


@router.post("", status_code=201)
@audited("create-person")
def create_person(body: PersonIn, request: Request, _: Enroll, state: State) -> PersonOut:
    s = state.settings
    for name in ("metadata", "consent"):
        check_json_field(getattr(body, name), name, s.max_json_bytes, s.max_json_depth)
    pid = state.gallery.create_person(
        body.display_name, body.external_id, "enrolled", body.consent, body.metadata, purpose=body.purpose
    )
    request.state.audit_subject = f"person:{pid}"
    return person_out(state.gallery.get_person(pid))


@router.get("")
def list_persons(
    _: Read,
    state: State,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[PersonOut]:
    return [person_out(p) for p in state.gallery.list_persons(offset, limit)]


@router.get("/{person_id}", responses={404: {"model": ErrorOut}})
def get_person(person_id: PersonId, _: Read, state: State) -> PersonOut:
    return person_out(state.gallery.get_person(person_id))


@router.get(
    "/{person_id}/thumbnail",
    response_class=Response,
    responses={404: {"model": ErrorOut}, 200: {"content": {"image/jpeg": {}}}},
)
def thumbnail(person_id: PersonId, _: Read, state: State) -> Response:
    data = state.gallery.get_thumbnail(person_id)
    if data is None:
        raise HTTPException(404, f"person {person_id} has no thumbnail")
    return Response(data, media_type="image/jpeg")


@router.delete("/{person_id}", responses={404: {"model": ErrorOut}})
@audited("delete")
def delete_person(person_id: PersonId, _: Delete, state: State) -> dict:
    """Erase the person: templates, sightings, thumbnail, files, index entries on every replica, and their
    lines in the configured camera event logs."""
    removed = state.gallery.delete_person(person_id)
    lines = scrub_event_logs(state.settings.event_logs, person_id)
    return {"person_id": person_id, "templates_removed": removed, "event_lines_removed": lines}


@router.post("/{person_id}/merge", responses={404: {"model": ErrorOut}})
@audited("merge")
def merge(person_id: PersonId, body: MergeIn, _: Delete, state: State) -> PersonOut:
    return person_out(state.gallery.merge(person_id, body.remove))


@router.post("/{person_id}/enroll", tags=["enroll"], responses={404: {"model": ErrorOut}})
@audited("enroll")
def enroll(
    person_id: PersonId,
    _: Enroll,
    state: State,
    images: Annotated[list[UploadFile], File()],
    modality: Annotated[Modality, Form()] = "face",
) -> EnrollOut:
    gallery = state.gallery
    gallery.get_person(person_id)  # 404 before any embedding work
    most = state.settings.max_images_per_request
    if len(images) > most:
        raise HTTPException(413, f"images: {len(images)} files; at most {most} per request")
    vecs, model_id, hashes, first = [], None, [], None
    for i, up in enumerate(images):
        img = read_upload(state, up, f"images[{i}]", hashes)
        v, model_id, box = embed_located(state, modality, img, f"images[{i}] ({up.filename})")
        vecs.append(v)
        first = (img, box) if first is None else first
    if not vecs:
        raise HTTPException(422, "images: at least one image is required")
    r = gallery.enroll(
        person_id,
        embeddings=np.stack(vecs),
        modality=modality,
        model_id=model_id,
        sources=[up.filename or "" for up in images],
        image_hashes=hashes,
    )
    if r.template_ids:
        save_thumbnail(state, person_id, *first)
    return EnrollOut(
        person_id=r.person_id,
        created_person=r.created_person,
        model_id=r.model_id,
        template_ids=r.template_ids,
        duplicates=[d.index for d in r.duplicates],
    )
