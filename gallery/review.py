"""The review queue: near misses an operator judges.

When identify-or-enroll (the API, the cameras) creates a new person although its best candidate scored only
just under the accept threshold (within ``band`` of it, in the decision's normalised units), the pair is
offered for review. Confirming merges the new person into the candidate; rejecting keeps them apart, and the
same two persons are never offered again. Both are audited by the caller and counted here: the share of
rejections is how often the system was right near its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import sessionmaker

from gallery.errors import GalleryError
from gallery.models import ReviewPair, utcnow

STATUSES = ("open", "confirmed", "rejected")


class UnknownReviewError(GalleryError):
    """No review pair with that id."""


class ReviewDecidedError(GalleryError):
    """The pair was already confirmed or rejected (or one of its persons is gone)."""


@dataclass
class ReviewRecord:
    id: int
    created_at: datetime
    person_id: int | None
    candidate_id: int | None
    modality: str
    model_id: str
    source: str | None
    score: float
    normalised: float
    threshold: float
    status: str
    decided_at: datetime | None
    decided_by: str | None


def in_band(normalised: float, threshold: float, band: float) -> bool:
    """Under the accept threshold by at most ``band`` (the decision's normalised units): worth a look."""
    return threshold - band <= normalised < threshold


def near_miss(identify, band: float) -> bool:
    """An ``IdentifyResult`` whose best person fell under the threshold by at most ``band``."""
    if (
        identify.best is None
        or identify.known
        or identify.normalised_score is None
        or identify.threshold is None
    ):
        return False
    return in_band(identify.normalised_score, identify.threshold, band)


def offer_review(
    queue: ReviewQueue, person_id: int, identify, modality: str, model_id: str, source: str
) -> int | None:
    """Offer ``person_id`` (just created) against ``identify``'s best person, with the decision's numbers."""
    best = identify.best
    return queue.offer(
        person_id, best.person_id, score=best.score, normalised=identify.normalised_score,
        threshold=identify.threshold, modality=modality, model_id=model_id, source=source,
    )  # fmt: skip


class ReviewQueue:
    def __init__(self, session_factory: sessionmaker, clock=utcnow) -> None:
        self.Session, self.clock = session_factory, clock

    def offer(
        self,
        person_id: int,
        candidate_id: int,
        *,
        score: float,
        normalised: float,
        threshold: float,
        modality: str,
        model_id: str,
        source: str | None = None,
    ) -> int | None:
        """Queue the pair unless it is the same person, or the pair is already open or was rejected."""
        if person_id == candidate_id:
            return None
        a, b = person_id, candidate_id
        same = or_(
            and_(ReviewPair.person_id == a, ReviewPair.candidate_id == b),
            and_(ReviewPair.person_id == b, ReviewPair.candidate_id == a),
        )
        with self.Session.begin() as s:
            if s.scalar(
                select(ReviewPair.id).where(same, ReviewPair.status.in_(("open", "rejected"))).limit(1)
            ):
                return None
            row = ReviewPair(
                created_at=self.clock(), person_id=a, candidate_id=b, modality=modality, model_id=model_id,
                source=source, score=float(score), normalised=float(normalised), threshold=float(threshold),
                status="open",
            )  # fmt: skip
            s.add(row)
            s.flush()
            return row.id

    def get(self, pair_id: int) -> ReviewRecord:
        with self.Session() as s:
            row = s.get(ReviewPair, pair_id)
            if row is None:
                raise UnknownReviewError(f"review pair {pair_id} does not exist")
            return _record(row)

    def list(self, status: str = "open", limit: int = 100) -> list[ReviewRecord]:
        """Pairs with this status, newest first; open ones only while both persons exist (one erased or merged
        away can no longer be judged, and is neither right nor wrong)."""
        if status not in STATUSES:
            raise GalleryError(f"review status must be one of {STATUSES}, got {status!r}")
        with self.Session() as s:
            rows = s.scalars(
                select(ReviewPair)
                .where(ReviewPair.status == status, _judgeable())
                .order_by(ReviewPair.id.desc())
                .limit(limit)
            )
            return [_record(r) for r in rows]

    def close(self, pair_id: int, status: str, by: str | None) -> ReviewRecord:
        """Mark an open pair confirmed or rejected (the caller merges for a confirmation first)."""
        if status not in ("confirmed", "rejected"):
            raise GalleryError(f"a review ends confirmed or rejected, not {status!r}")
        with self.Session.begin() as s:
            row = s.get(ReviewPair, pair_id, with_for_update=True)
            if row is None:
                raise UnknownReviewError(f"review pair {pair_id} does not exist")
            if row.status != "open":
                raise ReviewDecidedError(already_decided(_record(row)))
            # a confirmation merges first (its created person is gone by now); a rejection needs both persons,
            # or it would count as "the system was right" about a pair nobody can judge any more
            if status == "rejected" and (row.person_id is None or row.candidate_id is None):
                raise ReviewDecidedError(persons_gone(pair_id))
            row.status, row.decided_at, row.decided_by = status, self.clock(), by
            s.flush()
            return _record(row)

    def counts(self) -> dict[str, int]:
        with self.Session() as s:
            got = dict(
                s.execute(
                    select(ReviewPair.status, func.count()).where(_judgeable()).group_by(ReviewPair.status)
                ).all()
            )
        return {k: int(got.get(k, 0)) for k in STATUSES}


def _judgeable():
    """Decided pairs, and open ones while both their persons exist."""
    return or_(
        ReviewPair.status != "open",
        and_(ReviewPair.person_id.is_not(None), ReviewPair.candidate_id.is_not(None)),
    )


def persons_gone(pair_id: int) -> str:
    """Why a pair that lost one of its persons (erased, or merged away) can no longer be decided."""
    return f"review pair {pair_id}: one of its persons was erased or merged away"


def already_decided(r: ReviewRecord) -> str:
    """Why a decided pair cannot be decided again: who decided it and when (another operator, usually)."""
    when = f" at {r.decided_at:%Y-%m-%d %H:%M:%S} UTC" if r.decided_at else ""
    who = f" by {r.decided_by}" if r.decided_by else ""
    return f"review pair {r.id} is already {r.status}{who}{when}; nothing was changed"


def _record(r: ReviewPair) -> ReviewRecord:
    return ReviewRecord(
        r.id, r.created_at, r.person_id, r.candidate_id, r.modality, r.model_id, r.source, r.score,
        r.normalised, r.threshold, r.status, r.decided_at, r.decided_by,
    )  # fmt: skip
