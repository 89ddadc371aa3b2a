"""The review queue: near misses an operator confirms (the two persons are merged) or rejects (kept apart,
never offered again); every decision is audited and counted."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi import Path as FastPath

from gallery import UnknownPersonError
from gallery.review import ReviewDecidedError, already_decided, persons_gone
from services.api.deps import Delete, Read, State, audited
from services.api.schemas import ErrorOut, ReviewCounts, ReviewOut

router = APIRouter(prefix="/review", tags=["review"])
ReviewId = Annotated[int, FastPath(ge=1, le=2**63 - 1, description="review pair id")]
NOT_FOUND = {404: {"model": ErrorOut}, 409: {"model": ErrorOut}}


@router.get("")
def list_reviews(
    _: Read,
    state: State,
    status: Literal["open", "confirmed", "rejected"] = "open",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ReviewOut]:
    """Pairs to judge (newest first): a person the system created and the candidate it just missed."""
    return [ReviewOut.model_validate(r) for r in state.review.list(status, limit)]


@router.get("/counts")
def counts(_: Read, state: State) -> ReviewCounts:
    """How the operators judged the near misses: rejected = the system was right to keep them apart."""
    c = state.review.counts()
    decided = c["confirmed"] + c["rejected"]
    return ReviewCounts(**c, right_near_threshold=c["rejected"] / decided if decided else None)


@router.post("/{pair_id}/confirm", responses=NOT_FOUND)
@audited("review-confirm")
def confirm(pair_id: ReviewId, request: Request, key: Delete, state: State) -> ReviewOut:
    """The same person: the created person is merged into the candidate. 409 when the pair is decided already
    (by whom and when) or one of its persons went meanwhile: two operators confirming at once merge once."""
    pair = state.review.get(pair_id)
    request.state.audit_subject = f"person:{pair.candidate_id}"
    if pair.status == "open":
        if pair.person_id is None or pair.candidate_id is None:
            raise ReviewDecidedError(persons_gone(pair_id))
        try:
            state.gallery.merge(pair.candidate_id, pair.person_id)
        except UnknownPersonError:
            # read open, then a person went: another operator's confirmation (or an erasure) got there first.
            # A conflict over the pair, not a missing resource: 409 saying who decided, once that is written
            now = state.review.get(pair_id)
            if now.status != "open":
                raise ReviewDecidedError(already_decided(now)) from None
            raise ReviewDecidedError(
                f"review pair {pair_id}: one of its persons was merged away or erased meanwhile (another "
                "operator is confirming it, usually); nothing was changed"
            ) from None
    return ReviewOut.model_validate(state.review.close(pair_id, "confirmed", key.name))


@router.post("/{pair_id}/reject", responses=NOT_FOUND)
@audited("review-reject")
def reject(pair_id: ReviewId, request: Request, key: Delete, state: State) -> ReviewOut:
    """Different people: both stay, and this pair is not offered again. 409 when it is decided already."""
    pair = state.review.get(pair_id)
    request.state.audit_subject = f"person:{pair.person_id}"
    return ReviewOut.model_validate(state.review.close(pair_id, "rejected", key.name))
