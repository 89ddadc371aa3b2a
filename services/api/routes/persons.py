"""Persons: create, list, read, update (name, consent, purpose), thumbnail, templates and their crops, enroll
photos, merge, erase."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as FastPath
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
    PersonRecordOut,
    PersonUpdate,
    TemplateOut,
)
from services.api.uploads import embed_located, read_upload, save_template_image, save_thumbnail
from services.erasure import scrub_event_logs

router = APIRouter(prefix="/persons", tags=["persons"])
TemplateId = Annotated[int, FastPath(ge=1, le=2**63 - 1, description="template id")]
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


@router.get("/{person_id}/record", responses={404: {"model": ErrorOut}})
def get_record(person_id: PersonId, _: Read, state: State) -> PersonRecordOut:
    """The person with the consent record and purpose (the person page)."""
    return PersonRecordOut.model_validate(state.gallery.get_person(person_id))


@router.patch("/{person_id}", responses={404: {"model": ErrorOut}})
@audited("update-person")
def update_person(person_id: PersonId, body: PersonUpdate, _: Enroll, state: State) -> PersonRecordOut:
    """Change the name, the consent record or the purpose (only the fields sent)."""
    s = state.settings
    fields = body.model_dump(exclude_unset=True)
    check_json_field(fields.get("consent"), "consent", s.max_json_bytes, s.max_json_depth)
    return PersonRecordOut.model_validate(state.gallery.update_person(person_id, **fields))


@router.get("/{person_id}/templates", responses={404: {"model": ErrorOut}})
def templates(person_id: PersonId, _: Read, state: State) -> list[TemplateOut]:
    return [TemplateOut.model_validate(t) for t in state.gallery.templates(person_id)]


@router.get(
    "/{person_id}/templates/{template_id}/image",
    response_class=Response,
    responses={404: {"model": ErrorOut}, 200: {"content": {"image/jpeg": {}}}},
)
def template_image(person_id: PersonId, template_id: TemplateId, _: Read, state: State) -> Response:
    """The crop a template was made from (blurred when the person had not consented at enrolment)."""
    data = state.gallery.template_image(person_id, template_id)
    if data is None:
        raise HTTPException(404, f"person {person_id} has no image for template {template_id}")
    return Response(data, media_type="image/jpeg")


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
    vecs, model_id, hashes, first, crops = [], None, [], None, []
    for i, up in enumerate(images):
        img = read_upload(state, up, f"images[{i}]", hashes)
        v, model_id, box = embed_located(state, modality, img, f"images[{i}] ({up.filename})")
        vecs.append(v)
        crops.append((img, box))
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
        dup = {d.index for d in r.duplicates}
        kept = [c for i, c in enumerate(crops) if i not in dup]
        for tid, (img, box) in zip(r.template_ids, kept):
            save_template_image(state, person_id, tid, img, box)
    return EnrollOut(
        person_id=r.person_id,
        created_person=r.created_person,
        model_id=r.model_id,
        template_ids=r.template_ids,
        duplicates=[d.index for d in r.duplicates],
    )
