"""Who is this: identify, identify-or-enroll (a stranger becomes a new identity), verify two photos."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from gallery.review import near_miss, offer_review
from services.api.deps import Enroll, Read, State, audited
from services.api.schemas import IdentifyOrEnrollOut, IdentifyOut, MatchOut, Modality, VerifyOut, evidence
from services.api.uploads import embed_located, embed_one, read_upload, save_template_image, save_thumbnail

router = APIRouter(tags=["identify"])


@router.post("/identify")
@audited("identify")
def identify(
    _: Read,
    state: State,
    request: Request,
    image: Annotated[UploadFile, File()],
    modality: Annotated[Modality, Form()] = "face",
    k: Annotated[int, Form(ge=1, le=100)] = 5,
) -> IdentifyOut:
    img = read_upload(state, image, "image")
    vec, model_id, box = embed_located(state, modality, img, f"image ({image.filename})")
    r = state.gallery.identify(embedding=vec, modality=modality, model_id=model_id, k=k)
    matches = [MatchOut.model_validate(m) for m in r.matches]
    if r.known:
        request.state.audit_subject = f"person:{r.best.person_id}"
    return IdentifyOut(
        modality=modality,
        model_id=model_id,
        known=r.known,
        threshold=r.threshold,
        person=matches[0] if r.known else None,
        matches=matches,
        box=None if box is None else [round(float(v), 1) for v in box],
        **evidence(r),
    )


@router.post("/identify-or-enroll")
@audited("identify-or-enroll")
def identify_or_enroll(
    _: Enroll,
    state: State,
    request: Request,
    image: Annotated[UploadFile, File()],
    modality: Annotated[Modality, Form()] = "face",
) -> IdentifyOrEnrollOut:
    img = read_upload(state, image, "image")
    vec, model_id, box = embed_located(state, modality, img, f"image ({image.filename})")
    r = state.gallery.identify_or_enroll(embedding=vec, modality=modality, model_id=model_id)
    if r.created:
        save_thumbnail(state, r.person_id, img, box)
        for tid in r.enroll.template_ids if r.enroll is not None else []:  # the crop the person page shows
            save_template_image(state, r.person_id, tid, img, box)
        if near_miss(r.identify, state.settings.review_band):
            offer_review(state.review, r.person_id, r.identify, modality, model_id, "api")
    request.state.audit_subject = f"person:{r.person_id}"
    return IdentifyOrEnrollOut(
        person_id=r.person_id, created=r.created, threshold=r.identify.threshold, **evidence(r.identify)
    )


@router.post("/verify")
@audited("verify")
def verify(
    _: Read,
    state: State,
    image_a: Annotated[UploadFile, File()],
    image_b: Annotated[UploadFile, File()],
    modality: Annotated[Modality, Form()] = "face",
) -> VerifyOut:
    va, model_id = embed_one(
        state, modality, read_upload(state, image_a, "image_a"), f"image_a ({image_a.filename})"
    )
    vb, _ = embed_one(
        state, modality, read_upload(state, image_b, "image_b"), f"image_b ({image_b.filename})"
    )
    score = float(va @ vb)
    decision = state.gallery.decision_for(modality, model_id)
    # image_b as a gallery of one person: under the margin rule it is weighed against the cohort
    v = None if decision is None else decision.verdict(va, [score])
    return VerifyOut(
        same_person=None if v is None else v.known,
        score=score,
        threshold=None if decision is None else decision.threshold,
        model_id=model_id,
        decision=None if decision is None else decision.describe(),
        runner_up=None if v is None else v.runner_up,
        normalised_score=None if v is None else v.normalised,
    )
